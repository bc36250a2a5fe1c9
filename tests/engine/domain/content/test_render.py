"""Rendering: exactly what is sent, personalised, safe, tracked and unsubscribable."""

from __future__ import annotations

import email
import json
import re
from datetime import timedelta
from email.policy import default as default_policy
from typing import Any

import pytest

from stagecoach.engine.domain.content import (
    ContentLibrary,
    RenderContact,
    RenderedMessage,
    RenderError,
    UnknownContentError,
)

HREF = re.compile(r'href="([^"]+)"')


def render(
    library: ContentLibrary,
    content_id: str = "wp-digital-transformation",
    *,
    locale: str = "en",
    channel: str = "email",
    attributes: dict[str, Any] | None = None,
    **kw: Any,
) -> RenderedMessage:
    contact = RenderContact("c-42", attributes or {}, email="ana@example.com")
    return library.render(content_id, channel=channel, locale=locale, contact=contact, **kw)


def test_a_chinese_subject_round_trips_through_mime(library, now, signer):
    message = render(library, locale="zh-CN", now=now, signer=signer)
    raw = message.to_mime("铁桥物联 <news@ironbridge.example>", "ana@example.com").as_bytes()
    assert b"=?utf-8?" in raw  # RFC 2047 encoded word, readable by any SMTP server
    parsed = email.message_from_bytes(raw, policy=default_policy)
    assert parsed["Subject"] == message.subject
    assert "数字化转型" in parsed["Subject"]
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    html_part = parsed.get_body(("html",))
    assert html_part is not None
    assert html_part.get_content().rstrip("\n") == message.html


def test_email_carries_message_id_and_one_click_unsubscribe(library, now, signer):
    message = render(library, now=now, signer=signer, idempotency_key="k-1",
                     unsubscribe_mailto="unsubscribe@ironbridge.example")  # fmt: skip
    headers = message.headers
    assert re.fullmatch(r"<[0-9a-f]{32}@mkt\.example\.com>", headers["Message-ID"])
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    mailto, https = headers["List-Unsubscribe"].split(", ")
    assert mailto.startswith("<mailto:unsubscribe@ironbridge.example?subject=unsubscribe%20")
    unsubscribe_url = https.strip("<>")
    assert unsubscribe_url.startswith("https://mkt.example.com/u/")
    token = unsubscribe_url.rsplit("/", 1)[1]
    assert signer.verify("unsubscribe", token, now) == {
        "c": "c-42",
        "m": "wp-digital-transformation",
        "ch": "email",
    }
    # The same signed link is visible in both bodies.
    assert f'href="{unsubscribe_url}"' in message.html
    assert unsubscribe_url in message.text
    mime = message.to_mime("news@ironbridge.example", "ana@example.com")
    assert mime["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_message_id_can_use_the_sending_domain(library, now, signer):
    message = render(library, now=now, signer=signer, message_id_domain="mail.ironbridge.example")
    assert message.headers["Message-ID"].endswith("@mail.ironbridge.example>")


def test_message_id_is_stable_across_retries_of_one_delivery(library, now, signer):
    first = render(library, now=now, signer=signer, idempotency_key="k-1")
    retry = render(library, now=now + timedelta(minutes=5), signer=signer, idempotency_key="k-1")
    other = render(library, now=now, signer=signer, idempotency_key="k-2")
    assert first.headers["Message-ID"] == retry.headers["Message-ID"]
    assert first.headers["Message-ID"] != other.headers["Message-ID"]


def test_every_link_is_rewritten_to_a_signed_redirect_except_unsubscribe(library, now, signer):
    message = render(library, now=now, signer=signer)
    links = HREF.findall(message.html)
    assert links
    unsubscribe = [u for u in links if u.startswith("https://mkt.example.com/u/")]
    clicks = [u for u in links if u.startswith("https://mkt.example.com/t/c/")]
    assert len(unsubscribe) == 1
    assert len(clicks) == len(links) - 1
    # The original URL is nowhere in the HTML: only verify() recovers it.
    asset = library.item("wp-digital-transformation").asset_url
    assert asset not in message.html
    payload = signer.verify("click", clicks[0].rsplit("/", 1)[1], now)
    assert payload == {"u": asset, "c": "c-42", "m": "wp-digital-transformation"}


def test_query_strings_survive_link_rewriting(write_item, now, signer):
    library = ContentLibrary.load(write_item())
    message = library.render("sample", channel="email", locale="en",
                             contact=RenderContact("c"), now=now, signer=signer)  # fmt: skip
    urls = [signer.verify("click", u.rsplit("/", 1)[1], now)["u"]
            for u in HREF.findall(message.html) if "/t/c/" in u]  # fmt: skip
    assert "https://example.com/docs?a=1&b=2" in urls


def test_css_is_inlined_and_an_open_pixel_added(library, now, signer):
    message = render(library, now=now, signer=signer)
    assert 'style="' in message.html
    assert 'class="cta"' in message.html
    assert re.search(r'<a class="cta" href="[^"]+" style="[^"]*background: #f5a623', message.html)
    pixel = re.search(r'<img src="(https://mkt\.example\.com/t/o/([^"]+)\.gif)"', message.html)
    assert pixel is not None
    assert signer.verify("open", pixel.group(2), now)["i"] == message.headers["Message-ID"]
    assert "/t/o/" not in render(library, now=now, signer=signer, open_pixel=False).html


def test_html_in_a_contact_attribute_is_escaped(library, now, signer):
    attributes = {"first_name": "<script>alert(1)</script>", "company": '"><img src=x>'}
    message = render(library, attributes=attributes, now=now, signer=signer)
    assert "<script>" not in message.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in message.html
    assert "<img src=x>" not in message.html


def test_jinja_syntax_in_a_contact_attribute_stays_text(library, now, signer):
    attributes = {"first_name": "{{ 7*7 }}", "company": "{% for x in y %}"}
    message = render(library, attributes=attributes, now=now, signer=signer)
    assert "{{ 7*7 }}" in message.html
    assert "{{ 7*7 }}" in message.text
    assert "49" not in message.text
    assert "{% for x in y %}" in message.text


def test_a_newline_in_an_attribute_cannot_inject_headers(write_item, now, signer):
    root = write_item(files={"email.en.subject.j2": "News for {{ first_name }}"})
    library = ContentLibrary.load(root)
    contact = RenderContact("c", {"first_name": "Ana\r\nBcc: victim@example.com"})
    message = library.render("sample", channel="email", locale="en", contact=contact,
                             now=now, signer=signer)  # fmt: skip
    assert message.subject == "News for Ana Bcc: victim@example.com"
    assert "Bcc" not in message.to_mime("a@example.com", "b@example.com")


def test_declared_defaults_fill_missing_or_empty_attributes(library, now):
    named = render(library, attributes={"first_name": "Ana", "company": "ACME"}, now=now)
    assert "Hi Ana," in named.text
    assert "ACME" in named.text
    unnamed = render(library, attributes={"first_name": "", "company": None}, now=now)
    assert "Hi there," in unnamed.text
    assert "your plant" in unnamed.text
    chinese = render(library, locale="zh-CN", now=now)
    assert "朋友，您好" in chinese.text


def test_a_preview_without_a_signer_has_no_tracking(library, now):
    message = render(library, now=now)
    assert "/t/c/" not in message.html
    assert "List-Unsubscribe" not in message.headers
    assert library.item("wp-digital-transformation").asset_url in message.html


def test_wechat_template_message_has_fields_and_a_tracked_url(library, now, signer):
    message = render(library, channel="wechat", locale="zh-CN", now=now, signer=signer)
    body = message.wechat
    assert body is not None
    assert body["template_id"] == "IB-TM-CONTENT-READY"
    assert body["data"]["keyword1"] == {"value": "制造业数字化转型白皮书"}
    assert body["url"].startswith("https://mkt.example.com/t/c/")
    assert message.html == ""
    assert message.subject == ""


def test_a_long_attribute_is_shortened_to_fit_a_wechat_field_at_send(write_item, now):
    library = ContentLibrary.load(write_item())
    contact = RenderContact("c", {"first_name": "Bartholomew-Alexander\nthe Third"})
    message = library.render("sample", channel="wechat", locale="en", contact=contact, now=now)
    assert message.wechat is not None
    value = message.wechat["data"]["first"]["value"]
    assert len(value) == 20
    assert value.endswith("…")
    assert "\n" not in value


def test_wechat_customer_service_news_and_text(library, now, signer):
    news = render(library, "video-product-tour", channel="wechat", now=now, signer=signer)
    assert news.wechat is not None
    assert news.wechat["msgtype"] == "news"
    (article,) = news.wechat["news"]["articles"]
    assert set(article) == {"title", "description", "url", "picurl"}
    assert article["url"].startswith("https://mkt.example.com/t/c/")
    text = render(library, "survey-nps", channel="wechat", locale="zh-CN", now=now, signer=signer,
                  attributes={"first_name": "王工"})  # fmt: skip
    assert text.wechat is not None
    assert text.wechat["msgtype"] == "text"
    assert text.wechat["text"]["content"].startswith("王工，您好！")
    assert "https://mkt.example.com/t/c/" in text.wechat["text"]["content"]


def test_a_rendered_message_survives_json(library, now, signer):
    for channel in ("email", "wechat"):
        message = render(library, channel=channel, now=now, signer=signer)
        again = RenderedMessage.from_dict(json.loads(json.dumps(message.to_dict())))
        assert again == message
        assert again.content_version == library.item(message.content_id).version


def test_unknown_ids_name_the_closest_ones(library, now):
    with pytest.raises(UnknownContentError) as caught:
        render(library, "trial-invitaton", now=now)
    assert "trial-invitation" in caught.value.fix
    assert isinstance(caught.value, KeyError)
    with pytest.raises(KeyError):
        library.item("nope")


def test_a_locale_the_item_does_not_offer_is_a_render_error(library, now):
    with pytest.raises(RenderError, match="no email variant in fr"):
        render(library, locale="fr", now=now)


def test_an_expired_item_is_not_sent(library, now):
    coupon = library.item("coupon-annual-plan")
    assert coupon.expires is not None
    with pytest.raises(RenderError, match="expired"):
        render(library, "coupon-annual-plan", now=coupon.expires)


def test_a_naive_send_time_is_refused(library):
    from datetime import datetime

    with pytest.raises(RenderError, match="naive"):
        render(library, now=datetime(2026, 1, 1))


def test_the_sandbox_refuses_internals_even_if_a_template_got_past_the_scan(now):
    # Defence in depth: the environment itself is the sandbox, not only the load-time scan.
    from jinja2.exceptions import SecurityError, UndefinedError

    from stagecoach.engine.domain.content._render import make_environment

    env = make_environment({}, html_mode=True)
    with pytest.raises((SecurityError, UndefinedError)):
        env.from_string("{{ x.__class__.__mro__ }}").render(x="")
    with pytest.raises(UndefinedError):
        env.from_string("{{ cycler }}").render()
