"""Shared fixtures for content library tests: the bundled catalog, a signer, and a tiny
catalog writer for broken (and working) fixtures under tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from stagecoach.engine.domain.content import BUNDLED_CONTENT_DIR, ContentLibrary, LinkSigner

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
BASE_URL = "https://mkt.example.com"

HTML = """<!DOCTYPE html><html><head><style>p { color: #123456; }</style></head><body>
<p>Hello {{ first_name }}</p>
<p><a href="{{ asset_url }}">Get it</a> or <a href="https://example.com/docs?a=1&b=2">docs</a></p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
"""
TEXT = "Hello {{ first_name }}\n{{ asset_url }}\nUnsubscribe: {{ unsubscribe_url }}\n"
WECHAT_TEMPLATE = {
    "template_id": "TM-1",
    "url": "{{ asset_url }}",
    "data": {"first": "Hi {{ first_name }}", "keyword1": "Sample guide"},
}

WriteItem = Callable[..., Path]


def front_matter(item_id: str, **overrides: Any) -> dict[str, Any]:
    """A valid front matter for a minimal en-only item; ``None`` values drop a field."""
    data: dict[str, Any] = {
        "id": item_id,
        "kind": "whitepaper",
        "stage": "awareness",
        "title": {"en": f"Title of {item_id}"},
        "locales": ["en"],
        "channels": ["email", "wechat"],
        "topics": ["oee"],
        "tags": [],
        "asset_url": f"https://example.com/assets/{item_id}",
        "priority": 10,
        "variables": {"first_name": {"en": "there"}},
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


@pytest.fixture
def write_item(tmp_path: Path) -> WriteItem:
    """Write one item into ``tmp_path/content``; returns the catalog root.

    Keyword arguments override front matter fields; ``files`` maps file names to text
    (``None`` deletes a default file); ``raw_item_md`` replaces item.md wholesale.
    """
    root = tmp_path / "content"

    def write(
        item_id: str = "sample",
        *,
        files: dict[str, str | None] | None = None,
        raw_item_md: str | None = None,
        **fields: Any,
    ) -> Path:
        directory = root / item_id
        directory.mkdir(parents=True, exist_ok=True)
        fm = front_matter(item_id, **fields)
        item_md = raw_item_md or "---\n" + yaml.safe_dump(fm, allow_unicode=True) + "---\nNotes.\n"
        defaults: dict[str, str | None] = {
            "item.md": item_md,
            "email.en.subject.j2": "News for {{ first_name }}\n",
            "email.en.html.j2": HTML,
            "email.en.txt.j2": TEXT,
            "wechat.en.template.yaml": yaml.safe_dump(WECHAT_TEMPLATE),
        }
        defaults.update(files or {})
        for name, text in defaults.items():
            path = directory / name
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text, encoding="utf-8")
        return root

    return write


@pytest.fixture(scope="session")
def library() -> ContentLibrary:
    """The bundled starter catalog, loaded once."""
    return ContentLibrary.load(BUNDLED_CONTENT_DIR)


@pytest.fixture
def now() -> datetime:
    """A fixed, timezone-aware send time."""
    return NOW


@pytest.fixture
def signer() -> LinkSigner:
    return LinkSigner(b"k" * 32, BASE_URL, timedelta(days=30))
