"""Small server-rendered pages for the email touchpoints: no JavaScript, no assets.

Every page is one self-contained HTML document. Values are escaped here, so callers pass
plain text. The headers keep the signed token in the URL from leaking (``no-referrer``),
from being cached, and from being indexed.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping

from fastapi.responses import HTMLResponse

PAGE_HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}
"""Sent with every page, including error pages."""

_STYLE = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:34rem;"
    "margin:3rem auto;padding:0 1rem;color:#1f2933;line-height:1.5}"
    "h1{font-size:1.4rem}fieldset{border:1px solid #cbd2d9;border-radius:6px;margin:1rem 0}"
    "label{display:block;margin:.3rem 0}button{font-size:1rem;padding:.5rem 1.2rem;"
    "border-radius:6px;border:1px solid #3e4c59;background:#3e4c59;color:#fff;cursor:pointer}"
    ".note{color:#52606d;font-size:.9rem}"
)


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def page(title: str, body: str, *, status: int = 200) -> HTMLResponse:
    """A complete page; ``body`` is HTML the caller built from escaped parts."""
    document = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="robots" content="noindex"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status, headers=dict(PAGE_HEADERS))


def problem_page(status: int, title: str, problem: str, fix: str) -> HTMLResponse:
    """What went wrong with a link and what the reader can do about it."""
    return page(title, f"<p>{_e(problem)}</p><p>{_e(fix)}</p>", status=status)


def mask_address(address: str) -> str:
    """``l***@example.cn``: enough to recognise one's own address, not to harvest it."""
    local, at, domain = address.partition("@")
    if not at:
        return address[:1] + "***"
    return f"{local[:1]}***@{domain}"


def _addresses(addresses: Iterable[str]) -> str:
    shown = [mask_address(a) for a in addresses]
    return ", ".join(shown) if shown else "this address"


def unsubscribe_confirm(
    *, channel_label: str, addresses: Iterable[str], preferences_url: str
) -> HTMLResponse:
    """The visible unsubscribe page: one button, which posts the form back to the link."""
    return page(
        "Unsubscribe",
        f"<p>Stop all {_e(channel_label)} to <strong>{_e(_addresses(addresses))}</strong>?</p>"
        '<form method="post">'
        '<input type="hidden" name="confirm" value="unsubscribe">'
        "<button type=submit>Unsubscribe</button></form>"
        f'<p class="note">Only want fewer messages? <a href="{_e(preferences_url)}">'
        "Choose channels and topics</a> instead.</p>",
    )


def unsubscribed(
    *, channel_label: str, addresses: Iterable[str], preferences_url: str
) -> HTMLResponse:
    """After the form's POST: done, and the way back."""
    return page(
        "You are unsubscribed",
        f"<p>We will send no more {_e(channel_label)} to "
        f"<strong>{_e(_addresses(addresses))}</strong>.</p>"
        f'<p class="note">Changed your mind? <a href="{_e(preferences_url)}">'
        "Manage your preferences</a>.</p>",
    )


def preferences_form(
    *,
    channels: Mapping[str, tuple[str, bool]],
    topics: Mapping[str, tuple[str, bool]],
    saved: bool = False,
) -> HTMLResponse:
    """Checkboxes for channels and topics; ``{id: (label, checked)}`` each."""

    def boxes(name: str | None, items: Mapping[str, tuple[str, bool]]) -> str:
        out = []
        for key, (label, checked) in items.items():
            # Channels are one box each (name=email, value=on); topics share name=topic.
            field, value = (name, key) if name else (key, "on")
            mark = " checked" if checked else ""
            out.append(
                f'<label><input type="checkbox" name="{_e(field)}" value="{_e(value)}"{mark}> '
                f"{_e(label)}</label>"
            )
        return "".join(out)

    notice = '<p class="note"><strong>Saved.</strong> Your choices apply from now on.</p>'
    return page(
        "Your preferences",
        (notice if saved else "")
        + '<form method="post"><input type="hidden" name="form" value="preferences">'
        + "<fieldset><legend>Channels</legend>"
        + boxes(None, channels)
        + "</fieldset><fieldset><legend>Topics</legend>"
        + boxes("topic", topics)
        + "</fieldset><button type=submit>Save</button></form>",
    )
