"""Signed link tokens: round trip, and refusal of tampered, expired or misused tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stagecoach.engine.domain.content import (
    ContentError,
    LinkSigner,
    TokenExpired,
    TokenInvalid,
)


def test_a_token_verifies_back_to_its_payload(signer, now):
    token = signer.sign("unsubscribe", {"c": "c-1", "m": "wp"}, now)
    assert signer.verify("unsubscribe", token, now + timedelta(days=29)) == {"c": "c-1", "m": "wp"}


def test_a_tampered_payload_is_refused(signer, now):
    token = signer.sign("unsubscribe", {"c": "c-1"}, now)
    other = signer.sign("unsubscribe", {"c": "c-2"}, now)
    forged = other.split(".")[0] + "." + token.split(".")[1]
    with pytest.raises(TokenInvalid, match="signature does not match"):
        signer.verify("unsubscribe", forged, now)


def test_a_tampered_signature_is_refused(signer, now):
    token = signer.sign("unsubscribe", {"c": "c-1"}, now)
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(TokenInvalid):
        signer.verify("unsubscribe", flipped, now)


def test_an_expired_unsubscribe_token_is_refused(signer, now):
    token = signer.sign("unsubscribe", {"c": "c-1"}, now)
    with pytest.raises(TokenExpired, match="expired"):
        signer.verify("unsubscribe", token, now + timedelta(days=30))


def test_a_click_token_cannot_be_used_to_unsubscribe(signer, now):
    token = signer.sign("click", {"u": "https://example.com", "c": "c-1"}, now)
    with pytest.raises(TokenInvalid):
        signer.verify("unsubscribe", token, now)


def test_a_token_from_another_secret_is_refused(signer, now):
    stranger = LinkSigner(b"z" * 32, signer.base_url, timedelta(days=30))
    with pytest.raises(TokenInvalid):
        signer.verify("open", stranger.sign("open", {}, now), now)


def test_tokens_signed_before_a_key_rotation_still_verify(now):
    old = LinkSigner(b"o" * 32, "https://x.example", timedelta(days=1))
    new = LinkSigner(
        b"n" * 32, "https://x.example", timedelta(days=1), previous_secrets=[b"o" * 32]
    )
    assert new.verify("open", old.sign("open", {"i": 1}, now), now) == {"i": 1}


@pytest.mark.parametrize("token", ["", "abc", "abc.", ".def", "!!!.???"])
def test_malformed_tokens_are_refused_as_content_errors(signer, now, token):
    with pytest.raises(ContentError):
        signer.verify("click", token, now)


def test_naive_times_and_weak_secrets_are_refused(signer):
    with pytest.raises(TokenInvalid, match="naive"):
        signer.sign("open", {}, datetime(2026, 1, 1))
    with pytest.raises(TokenInvalid, match="16 bytes"):
        LinkSigner(b"short", "https://x.example", timedelta(days=1))


def test_urls_point_at_the_documented_endpoints(signer, now):
    click = signer.click_url("https://example.com/a", contact_id="c", content_id="m", now=now)
    assert click.startswith("https://mkt.example.com/t/c/")
    pixel = signer.open_url(contact_id="c", content_id="m", message_id="<x@y>", now=now)
    assert pixel.startswith("https://mkt.example.com/t/o/")
    assert pixel.endswith(".gif")
    unsubscribe = signer.unsubscribe_url(contact_id="c", content_id="m", channel="email", now=now)
    token = unsubscribe.removeprefix("https://mkt.example.com/u/")
    assert signer.verify("unsubscribe", token, now) == {"c": "c", "m": "m", "ch": "email"}
    assert UTC  # the fixtures' clock is UTC
