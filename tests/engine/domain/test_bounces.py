"""Bounce and complaint intake policy, and the Postmark webhook parser."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stagecoach.engine.domain.bounces import (
    BounceKind,
    BounceNotification,
    BouncePolicy,
    NotificationError,
    key_digest,
    parse_postmark_webhook,
)

AT = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
POLICY = BouncePolicy(soft_limit=3, soft_window=timedelta(days=7))


def notification(kind: BounceKind, *, inactive: bool = False) -> BounceNotification:
    return BounceNotification(
        provider="postmark",
        kind=kind,
        address="ana@example.com",
        occurred_at=AT,
        provider_event_id="bounce:1",
        provider_type=kind.value,
        provider_message_id="pm-1",
        provider_inactive=inactive,
        key_digest="abc123",
    )


# --- the policy --------------------------------------------------------------------------------


def test_hard_bounce_suppresses_the_email_address_at_once() -> None:
    decision = POLICY.decide(notification(BounceKind.HARD))
    assert (decision.suppress, decision.scope, decision.channel) == (True, "channel", "email")
    assert decision.event_type == "email.bounced"
    assert decision.reason == "hard_bounce"
    assert decision.properties == {"kind": "hard", "message_id": "abc123"}
    assert not decision.record_soft_bounce


def test_complaint_suppresses_the_contact_on_every_channel() -> None:
    decision = POLICY.decide(notification(BounceKind.COMPLAINT))
    assert (decision.suppress, decision.scope) == (True, "global")
    assert decision.event_type == "email.complained"


def test_first_and_second_soft_bounce_only_count() -> None:
    first = POLICY.decide(notification(BounceKind.SOFT))
    assert (first.suppress, first.scope, first.record_soft_bounce) == (False, None, True)
    assert first.event_type == "email.bounced"
    assert first.reason == "soft_bounce:1/3"
    second = POLICY.decide(notification(BounceKind.SOFT), [AT - timedelta(days=1)])
    assert not second.suppress
    assert second.reason == "soft_bounce:2/3"


def test_third_soft_bounce_within_the_window_suppresses() -> None:
    earlier = [AT - timedelta(days=6), AT - timedelta(hours=1)]
    decision = POLICY.decide(notification(BounceKind.SOFT), earlier)
    assert (decision.suppress, decision.scope) == (True, "channel")
    assert decision.reason == "soft_bounce_limit:3"


def test_soft_bounces_outside_the_window_or_in_the_future_do_not_count() -> None:
    stale_and_future = [AT - timedelta(days=8), AT - timedelta(days=7), AT + timedelta(hours=1)]
    decision = POLICY.decide(notification(BounceKind.SOFT), stale_and_future)
    assert not decision.suppress
    assert decision.reason == "soft_bounce:1/3"


def test_naive_earlier_times_are_taken_as_utc() -> None:
    naive = [datetime(2026, 11, 21, 10, 0), datetime(2026, 11, 22, 9, 0)]
    assert POLICY.decide(notification(BounceKind.SOFT), naive).suppress


def test_soft_limit_of_one_suppresses_on_the_first_soft_bounce() -> None:
    assert BouncePolicy(soft_limit=1).decide(notification(BounceKind.SOFT)).suppress


def test_policy_block_suppresses_nobody_but_is_recorded() -> None:
    decision = POLICY.decide(notification(BounceKind.POLICY))
    assert (decision.suppress, decision.scope) == (False, None)
    assert decision.event_type == "email.bounced"
    assert decision.properties["kind"] == "policy"


def test_unsubscribe_at_the_provider_suppresses_and_records_the_unsubscribe() -> None:
    decision = POLICY.decide(notification(BounceKind.UNSUBSCRIBE))
    assert (decision.suppress, decision.scope) == (True, "channel")
    assert decision.event_type == "email.unsubscribed"


def test_manual_suppression_at_the_provider_suppresses_without_an_event() -> None:
    decision = POLICY.decide(notification(BounceKind.MANUAL))
    assert (decision.suppress, decision.event_type) == (True, None)


@pytest.mark.parametrize("kind", [BounceKind.INFORMATIONAL, BounceKind.REACTIVATED])
def test_informational_and_reactivation_change_nothing(kind: BounceKind) -> None:
    decision = POLICY.decide(notification(kind))
    assert (decision.suppress, decision.scope, decision.event_type) == (False, None, None)


@pytest.mark.parametrize("kind", [BounceKind.SOFT, BounceKind.POLICY, BounceKind.INFORMATIONAL])
def test_provider_deactivation_suppresses_whatever_the_kind(kind: BounceKind) -> None:
    decision = POLICY.decide(notification(kind, inactive=True))
    assert (decision.suppress, decision.scope) == (True, "channel")
    assert decision.reason == "provider_inactive"


def test_reasons_fit_the_suppression_column() -> None:
    for kind in BounceKind:
        for inactive in (False, True):
            assert len(POLICY.decide(notification(kind, inactive=inactive)).reason) <= 64


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"soft_limit": 0}, "soft_limit must be at least 1"),
        ({"soft_window": timedelta(0)}, "soft_window must be positive"),
    ],
)
def test_bad_policy_settings_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BouncePolicy(**overrides)


def test_key_digest_matches_the_message_id_the_content_library_derives() -> None:
    key = "c-1:b2b_nurture:v1:welcome:1"
    assert key_digest(key) == hashlib.sha256(key.encode()).hexdigest()[:32]
    assert len(key_digest(key)) == 32


# --- the Postmark parser ---------------------------------------------------------------------


def postmark_bounce(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "RecordType": "Bounce",
        "MessageStream": "broadcast",
        "ID": 4323372036854775807,
        "Type": "HardBounce",
        "TypeCode": 1,
        "Name": "Hard bounce",
        "Tag": "case-study-manufacturing",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {"stagecoach_contact": "c-42", "stagecoach_key": "0123abcd"},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": "ana@example.com",
        "From": "news@example.com",
        "BouncedAt": "2026-11-22T10:00:54.9070259Z",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "Case study",
    }
    body.update(overrides)
    return body


def test_postmark_hard_bounce_is_parsed_with_our_metadata() -> None:
    parsed = parse_postmark_webhook(postmark_bounce())
    assert parsed.kind is BounceKind.HARD
    assert parsed.address == "ana@example.com"
    assert parsed.occurred_at == datetime(2026, 11, 22, 10, 0, 54, 907025, tzinfo=UTC)
    assert parsed.provider_event_id == "bounce:4323372036854775807"
    assert parsed.provider_message_id == "883953f4-6105-42a2-a16a-77a8eac79483"
    assert parsed.provider_inactive is True
    assert parsed.contact_id == "c-42"
    assert parsed.key_digest == "0123abcd"
    assert parsed.message_stream == "broadcast"
    assert "unknown user" in parsed.description
    assert "5.1.1" in parsed.description
    decision = POLICY.decide(parsed)
    assert (decision.suppress, decision.event_type) == (True, "email.bounced")
    assert decision.properties["message_id"] == "0123abcd"


@pytest.mark.parametrize(
    ("type_name", "kind"),
    [
        ("SoftBounce", BounceKind.SOFT),
        ("Transient", BounceKind.SOFT),
        ("DnsError", BounceKind.SOFT),
        ("BadEmailAddress", BounceKind.HARD),
        ("Blocked", BounceKind.POLICY),
        ("DMARCPolicy", BounceKind.POLICY),
        ("AutoResponder", BounceKind.INFORMATIONAL),
        ("Unsubscribe", BounceKind.UNSUBSCRIBE),
        ("ManuallyDeactivated", BounceKind.MANUAL),
        ("SomethingPostmarkAddsLater", BounceKind.SOFT),
    ],
)
def test_postmark_bounce_types_map_to_our_kinds(type_name: str, kind: BounceKind) -> None:
    parsed = parse_postmark_webhook(postmark_bounce(Type=type_name, Inactive=False))
    assert parsed.kind is kind
    assert parsed.provider_type == type_name


def test_postmark_spam_complaint_is_a_global_suppression() -> None:
    body = postmark_bounce(
        RecordType="SpamComplaint", Type="SpamComplaint", TypeCode=512, ID=42, Inactive=True
    )
    parsed = parse_postmark_webhook(body)
    assert parsed.kind is BounceKind.COMPLAINT
    decision = POLICY.decide(parsed)
    assert (decision.scope, decision.event_type) == ("global", "email.complained")


def test_postmark_webhook_without_record_type_is_read_from_its_type() -> None:
    body = postmark_bounce(Type="SpamComplaint")
    del body["RecordType"]
    assert parse_postmark_webhook(body).kind is BounceKind.COMPLAINT


def subscription_change(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "RecordType": "SubscriptionChange",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "ServerID": 123456,
        "MessageStream": "broadcast",
        "ChangedAt": "2026-11-22T10:53:34.416071Z",
        "Recipient": "ana@example.com",
        "Origin": "Recipient",
        "SuppressSending": True,
        "SuppressionReason": "HardBounce",
        "Tag": "my-tag",
        "Metadata": {"stagecoach_contact": "c-42"},
    }
    body.update(overrides)
    return body


@pytest.mark.parametrize(
    ("overrides", "kind"),
    [
        ({}, BounceKind.HARD),
        ({"SuppressionReason": "SpamComplaint"}, BounceKind.COMPLAINT),
        ({"SuppressionReason": "ManualSuppression"}, BounceKind.UNSUBSCRIBE),
        ({"SuppressionReason": "ManualSuppression", "Origin": "Customer"}, BounceKind.MANUAL),
        (
            {"SuppressSending": False, "SuppressionReason": None, "Metadata": {}},
            BounceKind.REACTIVATED,
        ),
    ],
)
def test_postmark_subscription_changes_map_to_our_kinds(
    overrides: dict[str, Any], kind: BounceKind
) -> None:
    parsed = parse_postmark_webhook(subscription_change(**overrides))
    assert parsed.kind is kind
    assert parsed.address == "ana@example.com"
    assert parsed.occurred_at.tzinfo is not None


def test_a_retried_webhook_keeps_its_event_id() -> None:
    first = parse_postmark_webhook(subscription_change())
    again = parse_postmark_webhook(json.loads(json.dumps(subscription_change())))
    assert first.provider_event_id == again.provider_event_id
    assert parse_postmark_webhook(postmark_bounce()).provider_event_id != first.provider_event_id


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (["not", "an", "object"], "(body)", "JSON object"),
        (postmark_bounce(RecordType="Open"), "RecordType", "not a bounce notification"),
        (postmark_bounce(Email=None), "Email", "'Email' is missing"),
        (postmark_bounce(Email="  "), "Email", "non-empty string"),
        (postmark_bounce(BouncedAt="yesterday"), "BouncedAt", "not an ISO 8601 time"),
        (postmark_bounce(ID=None), "ID", "bounce id"),
        (postmark_bounce(Type=None), "Type", "'Type' is missing"),
        (postmark_bounce(Inactive="yes"), "Inactive", "true or false"),
        (postmark_bounce(Metadata=["a"]), "Metadata", "must be an object"),
        (postmark_bounce(MessageID=7), "MessageID", "must be a string"),
        (subscription_change(Recipient=None), "Recipient", "'Recipient' is missing"),
        (subscription_change(SuppressSending="true"), "SuppressSending", "true or false"),
        (subscription_change(SuppressionReason="Bored"), "SuppressionReason", "'Bored'"),
    ],
)
def test_bad_webhook_bodies_name_the_field(body: Any, field: str, message: str) -> None:
    with pytest.raises(NotificationError, match=message) as caught:
        parse_postmark_webhook(body)
    assert caught.value.field == field
