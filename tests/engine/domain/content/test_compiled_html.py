"""Compile-once HTML (CSS inlined at load) gives the same email as the full render path."""

from __future__ import annotations

import html
import re
from datetime import datetime

import css_inline

from stagecoach.engine.domain.content import ContentLibrary, RenderContact

TRICKY = {"first_name": '<b>"Ann\'s"</b> & {{ 7*7 }}', "company": "王工 & Co"}


def full_path(
    library: ContentLibrary,
    content_id: str,
    locale: str,
    attributes: dict[str, str],
    now: datetime,
) -> tuple[str, str]:
    """The message's HTML, and the reference: render the template, then inline its CSS."""
    contact = RenderContact("c", attributes)
    message = library.render(content_id, channel="email", locale=locale, contact=contact, now=now)
    template = library._html_env.get_template(f"{content_id}/email.{locale}.html.j2")
    unsubscribe = "#unsubscribe-link-added-at-send-time"  # what a signer-less render prints
    context = library._context(library.item(content_id), locale, contact, unsubscribe)
    inliner = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True)
    return message.html, inliner.inline(template.render(context))


def test_every_bundled_email_uses_compiled_html_and_matches_the_full_path(library, now):
    for item in library.items:
        for locale in item.locales:
            assert library.uses_compiled_html(item.id, locale), (item.id, locale)
            fast, reference = full_path(library, item.id, locale, TRICKY, now)
            assert html.unescape(fast) == html.unescape(reference), (item.id, locale)
            assert "<b>" not in fast


def test_a_template_with_logic_on_a_contact_value_takes_the_full_path(write_item, now):
    source = (
        "<html><body>{% if first_name == 'there' %}<p>Hello</p>{% else %}"
        "<p>Hi {{ first_name }}</p>{% endif %}"
        '<a href="{{ unsubscribe_url }}">u</a></body></html>'
    )
    library = ContentLibrary.load(write_item(files={"email.en.html.j2": source}))
    assert not library.uses_compiled_html("sample", "en")
    contact = RenderContact("c", {"first_name": "Ana"})
    rendered = library.render("sample", channel="email", locale="en", contact=contact, now=now)
    assert "<p>Hi Ana</p>" in rendered.html


def test_a_personalised_link_is_still_tracked(write_item, now, signer):
    source = (
        "<html><body>"
        '<a href="https://example.com/p?who={{ first_name }}">mine</a>'
        '<a href="{{ unsubscribe_url }}">u</a></body></html>'
    )
    library = ContentLibrary.load(write_item(files={"email.en.html.j2": source}))
    assert library.uses_compiled_html("sample", "en")
    rendered = library.render("sample", channel="email", locale="en",
                              contact=RenderContact("c", {"first_name": "Ana"}),
                              now=now, signer=signer)  # fmt: skip
    clicks = re.findall(r'href="https://mkt\.example\.com/t/c/([^"]+)"', rendered.html)
    assert [signer.verify("click", t, now)["u"] for t in clicks] == [
        "https://example.com/p?who=Ana"
    ]
