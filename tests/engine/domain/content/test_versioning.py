"""Versions: a content hash of front matter and templates; edits reach the next send.

Decision: in-flight journeys get template edits. A journey pins its structure (the spec
version); the content library pins wording, and a send renders the current version of an
item and records that version on the delivery.
"""

from __future__ import annotations

from datetime import datetime

from stagecoach.engine.domain.content import ContentLibrary, RenderContact, RenderedMessage


def render_text(library: ContentLibrary, now: datetime) -> RenderedMessage:
    return library.render(
        "sample", channel="email", locale="en", contact=RenderContact("c"), now=now
    )


def test_editing_a_template_changes_the_version_and_the_next_render_uses_it(write_item, now):
    root = write_item()
    before = ContentLibrary.load(root)
    first = render_text(before, now)
    (root / "sample" / "email.en.subject.j2").write_text("Fresh news for {{ first_name }}")
    after = before.reload()
    second = render_text(after, now)
    assert after.item("sample").version != before.item("sample").version
    assert second.content_version == after.item("sample").version
    assert first.subject == "News for there"
    assert second.subject == "Fresh news for there"


def test_the_version_is_stable_across_loads_and_ignores_yaml_formatting(write_item):
    root = write_item()
    version = ContentLibrary.load(root).item("sample").version
    assert ContentLibrary.load(root).item("sample").version == version
    item_md = root / "sample" / "item.md"
    text = item_md.read_text()
    item_md.write_text(text.replace("---\n", "---\n# a comment only\n", 1))
    assert ContentLibrary.load(root).item("sample").version == version
    item_md.write_text(text.replace("priority: 10", "priority: 11"))
    assert ContentLibrary.load(root).item("sample").version != version


def test_editing_a_shared_layout_changes_the_versions_of_items_that_use_it(write_item, now):
    layout_html = (
        "<html><body>{% block body %}{% endblock %}"
        '<a href="{{ unsubscribe_url }}">Unsubscribe</a></body></html>'
    )
    child = '{% extends "_layouts/base.html.j2" %}{% block body %}Hi{% endblock %}'
    root = write_item(files={"email.en.html.j2": child})
    write_item("other")
    (root / "_layouts").mkdir()
    (root / "_layouts" / "base.html.j2").write_text(layout_html)
    before = ContentLibrary.load(root)
    (root / "_layouts" / "base.html.j2").write_text(layout_html.replace("Unsubscribe", "Leave"))
    after = before.reload()
    assert after.item("sample").version != before.item("sample").version
    assert after.item("other").version == before.item("other").version
    assert ">Leave<" in render_text(after, now).html
