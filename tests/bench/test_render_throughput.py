"""Personalised emails per second: the full send path vs a plain Jinja2 render.

The full path is what a delivery does: sandboxed render of subject, HTML and text, CSS
inlined, every link rewritten to a signed click redirect, a signed unsubscribe link and
open pixel, headers. Templates are compiled once (at load). The baseline renders the same
HTML template with a plain, unsandboxed ``jinja2.Environment`` and nothing else.
Run with ``make bench`` or ``pytest tests/bench/test_render_throughput.py --run-bench -s``.
"""

from __future__ import annotations

import os
import platform
import time
from datetime import UTC, datetime, timedelta

import jinja2
import pytest

from stagecoach.engine.domain.content import (
    BUNDLED_CONTENT_DIR,
    ContentLibrary,
    LinkSigner,
    RenderContact,
)

CONTENT_ID = "case-study-manufacturing"
LOCALE = "en"
COUNT = 3000
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def contacts(count: int) -> list[RenderContact]:
    return [
        RenderContact(f"c-{n}", {"first_name": f"Name{n}", "company": f"Plant {n} & Co"})
        for n in range(count)
    ]


def per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("inf")


@pytest.mark.bench
def test_render_throughput() -> None:
    library = ContentLibrary.load(BUNDLED_CONTENT_DIR)
    item = library.item(CONTENT_ID)
    signer = LinkSigner(os.urandom(32), "https://mkt.example.com", timedelta(days=90))
    people = contacts(COUNT)

    # auto_reload off: the baseline compiles once too, and never stats the layout it extends.
    plain_env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(BUNDLED_CONTENT_DIR), autoescape=True, auto_reload=False
    )
    plain = plain_env.get_template(f"{CONTENT_ID}/email.{LOCALE}.html.j2")
    plain_parts = [
        plain_env.get_template(f"{CONTENT_ID}/email.{LOCALE}.{part}.j2")
        for part in ("subject", "html", "txt")
    ]

    # Warm both paths (template caches, css_inline's first parse) before timing.
    for contact in people[:50]:
        library.render(CONTENT_ID, channel="email", locale=LOCALE, contact=contact, now=NOW,
                       signer=signer, idempotency_key=contact.contact_id)  # fmt: skip
        plain.render(_plain_context(item.asset_url, contact))

    started = time.perf_counter()
    messages = [
        library.render(
            CONTENT_ID,
            channel="email",
            locale=LOCALE,
            contact=contact,
            now=NOW,
            signer=signer,
            idempotency_key=contact.contact_id,
        )
        for contact in people
    ]
    full_seconds = time.perf_counter() - started

    started = time.perf_counter()
    baseline = [plain.render(_plain_context(item.asset_url, contact)) for contact in people]
    plain_seconds = time.perf_counter() - started

    started = time.perf_counter()
    for contact in people:
        context = _plain_context(item.asset_url, contact)
        for template in plain_parts:
            template.render(context)
    plain_all_seconds = time.perf_counter() - started

    full_rate = per_second(COUNT, full_seconds)
    plain_rate = per_second(COUNT, plain_seconds)
    plain_all_rate = per_second(COUNT, plain_all_seconds)
    print(
        f"\nrender throughput ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}), {COUNT} emails of "
        f"{CONTENT_ID}/{LOCALE}:\n"
        f"  full send path (sandbox, subject+HTML+text, CSS inlined, links signed): "
        f"{full_rate:,.0f}/s ({full_seconds / COUNT * 1e6:.0f} us each)\n"
        f"  plain jinja2 render of the same HTML template:                          "
        f"{plain_rate:,.0f}/s ({plain_seconds / COUNT * 1e6:.0f} us each)\n"
        f"  plain jinja2 render of subject + HTML + text:                           "
        f"{plain_all_rate:,.0f}/s ({plain_all_seconds / COUNT * 1e6:.0f} us each)\n"
        f"  ratio full/plain HTML: {full_rate / plain_rate:.2f}; "
        f"full/plain all three: {full_rate / plain_all_rate:.2f}\n"
        f"  compiled (pre-inlined) HTML in use: "
        f"{library.uses_compiled_html(CONTENT_ID, LOCALE)}"
    )

    # Correctness only; timings never fail the run.
    last = messages[-1]
    assert f"Hi Name{COUNT - 1}," in last.html
    assert "Plant 2999 &amp; Co" in last.html
    assert 'style="' in last.html
    assert item.asset_url not in last.html
    assert "/t/c/" in last.html
    assert f"Hi Name{COUNT - 1}," in baseline[-1]
    assert len({m.headers["Message-ID"] for m in messages}) == COUNT


def _plain_context(asset_url: str, contact: RenderContact) -> dict[str, object]:
    return {
        **contact.attributes,
        "title": "Case study",
        "asset_url": asset_url,
        "unsubscribe_url": "https://mkt.example.com/u/plain",
        "locale": LOCALE,
        "content_id": CONTENT_ID,
        "kind": "case_study",
    }
