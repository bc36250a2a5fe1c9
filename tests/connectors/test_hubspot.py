"""The HubSpot connector against a local HubSpot peer, plus its error parsing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from stagecoach.connectors.crm.hubspot import (
    HubSpotConnector,
    note_marker,
    rate_limit_delay,
    validation_properties,
)
from stagecoach.connectors.ratelimit import RateLimiter
from stagecoach.engine.domain.errors import ConfigurationError
from stagecoach.engine.protocol.connector import (
    OutgoingMessage,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from tests.peers.crm import HubSpotPeer

TOKEN = "pat-na1-test-token"
EMAIL = "ada@example.com"


def handoff(key: str = "contact-42:mql", **traits: Any) -> OutgoingMessage:
    return OutgoingMessage(
        channel="crm",
        to="sales",
        idempotency_key=key,
        contact_id="contact-42",
        rendered={
            "journey": "lead_nurture",
            "step_id": "handoff",
            "reason": "score crossed 80",
            "stage": "mql",
            "score": 87.5,
            "grade": "A",
            "traits": {
                "email": EMAIL,
                "name": "Ada Lovelace",
                "company": "Analytical Engines",
                **traits,
            },
        },
    )


@pytest.fixture
def peer() -> Iterator[HubSpotPeer]:
    with HubSpotPeer(TOKEN) as hubspot:
        yield hubspot


def connect(peer: HubSpotPeer, **options: Any) -> HubSpotConnector:
    options.setdefault("timeout", 2.0)
    return HubSpotConnector(
        options.pop("token", TOKEN),
        base_url=peer.url,
        timeline_url="https://stagecoach.example.com/contacts/{contact_id}",
        **options,
    )


@pytest.fixture
async def hubspot(peer: HubSpotPeer) -> AsyncIterator[HubSpotConnector]:
    connector = connect(peer)
    yield connector
    await connector.aclose()


def requests_of(peer: HubSpotPeer) -> list[str]:
    return [f"{s.method} {s.path}" for s in peer.seen]


# --- creating and updating ------------------------------------------------------------


async def test_first_handoff_creates_the_contact_and_a_note(
    peer: HubSpotPeer, hubspot: HubSpotConnector
) -> None:
    result = await hubspot.send(handoff())

    contact = peer.contact_by_email(EMAIL)
    assert contact is not None
    assert contact.properties == {
        "email": EMAIL,
        "firstname": "Ada",
        "lastname": "Lovelace",
        "company": "Analytical Engines",
        "lifecyclestage": "marketingqualifiedlead",
    }
    [note] = peer.notes_of(contact.id)
    body = note.properties["hs_note_body"]
    for expected in ("score crossed 80", "87.5", "Grade:</strong> A", "lead_nurture", "mql"):
        assert expected in body
    assert 'href="https://stagecoach.example.com/contacts/contact-42"' in body
    assert note_marker("contact-42:mql") in body
    assert note.properties["hs_timestamp"].endswith("Z")
    assert result.provider_message_id == note.id
    assert result.response == {"contact_id": contact.id, "note_id": note.id, "created": True}
    assert not result.duplicate
    [create] = [s for s in peer.seen if s.path == "/crm/v3/objects/contacts"]
    assert create.headers["authorization"] == f"Bearer {TOKEN}"


async def test_second_handoff_updates_the_contact_instead_of_duplicating(
    peer: HubSpotPeer, hubspot: HubSpotConnector
) -> None:
    first = await hubspot.send(handoff("contact-42:mql"))
    second = await hubspot.send(handoff("contact-42:sql", company="Difference Engines Ltd"))

    [contact] = peer.contacts.values()
    assert contact.properties["company"] == "Difference Engines Ltd"
    assert second.response["contact_id"] == first.response["contact_id"] == contact.id
    assert second.response["created"] is False
    assert len(peer.notes_of(contact.id)) == 2
    assert f"PATCH /crm/v3/objects/contacts/{contact.id}" in requests_of(peer)


async def test_retry_with_the_same_key_finds_the_note_and_adds_nothing(
    peer: HubSpotPeer, hubspot: HubSpotConnector
) -> None:
    first = await hubspot.send(handoff())
    again = await hubspot.send(handoff())

    assert again.duplicate
    assert again.provider_message_id == first.provider_message_id
    assert len(peer.contacts) == 1
    assert len(peer.notes) == 1


async def test_contact_already_in_hubspot_is_updated_through_the_409(
    peer: HubSpotPeer, hubspot: HubSpotConnector
) -> None:
    existing = peer.add_contact(email=EMAIL, lifecyclestage="lead", phone="+44 20 7946 0000")

    result = await hubspot.send(handoff())

    assert result.response["created"] is False
    assert list(peer.contacts) == [existing.id]
    assert existing.properties["lifecyclestage"] == "marketingqualifiedlead"
    assert existing.properties["phone"] == "+44 20 7946 0000"
    assert requests_of(peer)[:2] == [
        "POST /crm/v3/objects/contacts",
        f"PATCH /crm/v3/objects/contacts/{existing.id}",
    ]
    assert len(peer.notes_of(existing.id)) == 1


async def test_409_without_an_id_falls_back_to_updating_by_email(
    peer: HubSpotPeer, hubspot: HubSpotConnector
) -> None:
    existing = peer.add_contact(email=EMAIL)
    peer.fail(
        409,
        match="POST /crm/v3/objects/contacts",
        body=peer.error_body(409, "Contact already exists"),
    )

    await hubspot.send(handoff())

    [patch] = [s for s in peer.seen if s.method == "PATCH"]
    assert patch.path == f"/crm/v3/objects/contacts/{EMAIL}"
    assert patch.query == {"idProperty": "email"}
    assert existing.properties["company"] == "Analytical Engines"


async def test_a_customer_is_not_demoted_to_mql(
    peer: HubSpotPeer, hubspot: HubSpotConnector
) -> None:
    customer = peer.add_contact(email=EMAIL, lifecyclestage="customer")

    await hubspot.send(handoff())

    assert customer.properties["lifecyclestage"] == "customer"
    assert customer.properties["company"] == "Analytical Engines"
    assert len(peer.notes_of(customer.id)) == 1


async def test_score_grade_and_lead_status_go_to_configured_properties(
    peer: HubSpotPeer,
) -> None:
    peer.define_property("stagecoach_score")
    peer.define_property("stagecoach_grade")
    async with connect(
        peer,
        score_property="stagecoach_score",
        grade_property="stagecoach_grade",
        lead_status="NEW",
        lifecycle_stage=None,
    ) as hubspot:
        await hubspot.send(handoff())

    contact = peer.contact_by_email(EMAIL)
    assert contact is not None
    assert contact.properties["stagecoach_score"] == "87.5"
    assert contact.properties["stagecoach_grade"] == "A"
    assert contact.properties["hs_lead_status"] == "NEW"
    assert "lifecyclestage" not in contact.properties


async def test_email_at_the_top_level_or_in_identities_is_found(
    peer: HubSpotPeer, hubspot: HubSpotConnector
) -> None:
    message = OutgoingMessage(
        channel="crm",
        to="sales",
        idempotency_key="k",
        contact_id="c-7",
        rendered={"journey": "j", "step_id": "s", "reason": "r", "identities": {"email": EMAIL}},
    )

    await hubspot.send(message)

    assert peer.contact_by_email(EMAIL) is not None


# --- bad input and refusals -----------------------------------------------------------


async def test_handoff_without_email_is_permanent_and_sends_nothing(
    peer: HubSpotPeer, hubspot: HubSpotConnector
) -> None:
    message = OutgoingMessage(
        channel="crm",
        to="sales",
        idempotency_key="k",
        contact_id="c-7",
        rendered={"journey": "j", "step_id": "s", "reason": "r", "traits": {"name": "Bo"}},
    )

    with pytest.raises(PermanentDeliveryError, match="email") as caught:
        await hubspot.send(message)

    assert caught.value.code == "missing_email"
    assert "traits.email" in caught.value.fix
    assert peer.seen == []


async def test_refused_token_is_permanent_and_names_the_setting(peer: HubSpotPeer) -> None:
    async with connect(peer, token="pat-na1-revoked") as hubspot:
        with pytest.raises(PermanentDeliveryError, match="INVALID_AUTHENTICATION") as caught:
            await hubspot.send(handoff())

    assert caught.value.code == "hubspot_auth"
    assert "STAGECOACH_HUBSPOT_TOKEN" in caught.value.one_line()
    assert peer.contacts == {}


async def test_missing_scopes_is_permanent_and_names_them(
    peer: HubSpotPeer, hubspot: HubSpotConnector
) -> None:
    peer.fail(403, body=peer.error_body(403, "This app hasn't been granted all required scopes"))

    with pytest.raises(PermanentDeliveryError, match="MISSING_SCOPES") as caught:
        await hubspot.send(handoff())

    assert caught.value.code == "hubspot_auth"
    assert "crm.objects.contacts.write" in caught.value.fix


async def test_validation_error_names_the_property(peer: HubSpotPeer) -> None:
    async with connect(peer, score_property="stagecoach_score") as hubspot:
        with pytest.raises(PermanentDeliveryError, match="stagecoach_score") as caught:
            await hubspot.send(handoff())
        assert caught.value.code == "hubspot_validation"
        assert "stagecoach_score" in caught.value.fix
        assert peer.contacts == {}

        peer.define_property("stagecoach_score")
        await hubspot.send(handoff())

    contact = peer.contact_by_email(EMAIL)
    assert contact is not None
    assert contact.properties["stagecoach_score"] == "87.5"


async def test_invalid_option_on_update_names_the_property(peer: HubSpotPeer) -> None:
    peer.add_contact(email=EMAIL)
    async with connect(peer, lead_status="HOT") as hubspot:
        with pytest.raises(PermanentDeliveryError, match="hs_lead_status") as caught:
            await hubspot.send(handoff())

    assert caught.value.code == "hubspot_validation"


async def test_unparseable_email_is_refused_by_hubspot_naming_email(
    peer: HubSpotPeer, hubspot: HubSpotConnector
) -> None:
    with pytest.raises(PermanentDeliveryError, match="property email") as caught:
        await hubspot.send(handoff(email="ada @example.com"))

    assert caught.value.code == "hubspot_validation"


# --- retryable failures ---------------------------------------------------------------


async def test_429_waits_for_the_rolling_window(
    peer: HubSpotPeer, hubspot: HubSpotConnector
) -> None:
    peer.rate_limited()

    with pytest.raises(RetryableDeliveryError, match="RATE_LIMITS") as caught:
        await hubspot.send(handoff())

    assert caught.value.retry_after == timedelta(seconds=10)


async def test_429_retry_after_header_wins(peer: HubSpotPeer, hubspot: HubSpotConnector) -> None:
    peer.rate_limited(retry_after="3")

    with pytest.raises(RetryableDeliveryError) as caught:
        await hubspot.send(handoff())

    assert caught.value.retry_after == timedelta(seconds=3)


async def test_daily_limit_waits_an_hour(peer: HubSpotPeer, hubspot: HubSpotConnector) -> None:
    peer.rate_limited(policy="DAILY")

    with pytest.raises(RetryableDeliveryError, match="daily") as caught:
        await hubspot.send(handoff())

    assert caught.value.retry_after == timedelta(hours=1)


async def test_real_rolling_window_limit_is_hit_mid_handoff(peer: HubSpotPeer) -> None:
    peer.max_per_window = 2
    async with connect(peer) as hubspot:
        with pytest.raises(RetryableDeliveryError) as caught:
            await hubspot.send(handoff())

    # Create and the association lookup went through; the note did not.
    assert caught.value.retry_after == timedelta(seconds=10)
    assert len(peer.contacts) == 1
    assert peer.notes == {}


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_is_retryable_and_the_retry_completes_once(
    peer: HubSpotPeer, hubspot: HubSpotConnector, status: int
) -> None:
    peer.fail(status)

    with pytest.raises(RetryableDeliveryError, match=str(status)):
        await hubspot.send(handoff())
    await hubspot.send(handoff())

    assert len(peer.contacts) == 1
    assert len(peer.notes) == 1


async def test_locked_contact_retries_after_two_seconds(
    peer: HubSpotPeer, hubspot: HubSpotConnector
) -> None:
    peer.fail(423, match="PATCH", body=peer.error_body(423, "Object is locked"))
    peer.add_contact(email=EMAIL)

    with pytest.raises(RetryableDeliveryError) as caught:
        await hubspot.send(handoff())

    assert caught.value.retry_after == timedelta(seconds=2)


async def test_note_failure_after_the_contact_was_written(
    peer: HubSpotPeer, hubspot: HubSpotConnector
) -> None:
    peer.fail(503, match="POST /crm/v3/objects/notes")

    with pytest.raises(RetryableDeliveryError):
        await hubspot.send(handoff())
    assert len(peer.contacts) == 1
    assert peer.notes == {}

    result = await hubspot.send(handoff())

    assert result.response["created"] is False
    assert len(peer.contacts) == 1
    assert len(peer.notes) == 1


async def test_timeout_after_hubspot_wrote_the_note_does_not_duplicate_it(
    peer: HubSpotPeer,
) -> None:
    peer.slow(1.0, match="POST /crm/v3/objects/notes")
    async with connect(peer, timeout=0.3) as hubspot:
        with pytest.raises(RetryableDeliveryError, match="did not answer in time"):
            await hubspot.send(handoff())
        result = await hubspot.send(handoff())

    assert result.duplicate
    [note] = peer.notes.values()
    assert result.provider_message_id == note.id
    assert "POST /crm/v3/objects/notes/batch/read" in requests_of(peer)


async def test_hubspot_unreachable_is_retryable_until_it_is_back(
    peer: HubSpotPeer, hubspot: HubSpotConnector
) -> None:
    peer.stop()
    with pytest.raises(RetryableDeliveryError, match="could not reach"):
        await hubspot.send(handoff())

    peer.start()
    await hubspot.send(handoff())

    assert len(peer.notes) == 1


async def test_hubspot_down_for_a_while(peer: HubSpotPeer, hubspot: HubSpotConnector) -> None:
    peer.down()
    for _ in range(2):
        with pytest.raises(RetryableDeliveryError, match="503"):
            await hubspot.send(handoff())
    peer.up()

    await hubspot.send(handoff())

    assert len(peer.contacts) == 1
    assert len(peer.notes) == 1


async def test_limiter_is_acquired_before_every_request(peer: HubSpotPeer) -> None:
    class CountingLimiter(RateLimiter):
        acquired = 0

        async def acquire(self) -> None:
            CountingLimiter.acquired += 1
            await super().acquire()

    async with connect(peer, limiter=CountingLimiter(None)) as hubspot:
        await hubspot.send(handoff("k1"))
        await hubspot.send(handoff("k2"))

    assert CountingLimiter.acquired == len(peer.seen) > 0


# --- pure parsing ---------------------------------------------------------------------


def test_empty_token_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        HubSpotConnector("  ")
    assert "STAGECOACH_HUBSPOT_TOKEN" in caught.value.one_line()


def test_validation_properties_reads_both_documented_shapes() -> None:
    legacy = {
        "status": "error",
        "message": 'Property values were not valid: [{"isValid":false,"message":"Enter only '
        'letters","error":"INVALID_ALPHA","name":"firstname"}]',
        "category": "VALIDATION_ERROR",
    }
    detailed = {
        "message": "One or more validation errors occurred",
        "errors": [{"message": 'Property "score_x" does not exist', "context": {}}],
    }
    context = {"errors": [{"message": "bad", "context": {"propertyName": ["jobtitle"]}}]}
    assert validation_properties(legacy) == ["firstname"]
    assert validation_properties(detailed) == ["score_x"]
    assert validation_properties(context) == ["jobtitle"]
    assert validation_properties({"message": "nothing useful"}) == []


def test_rate_limit_delay_defaults_to_ten_seconds() -> None:
    assert rate_limit_delay(httpx.Response(429), {}) == timedelta(seconds=10)
    interval = httpx.Response(429, headers={"X-HubSpot-RateLimit-Interval-Milliseconds": "1000"})
    assert rate_limit_delay(interval, {}) == timedelta(seconds=1)


async def test_2xx_without_an_id_is_retryable() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(201, json={}))
    async with HubSpotConnector(TOKEN, transport=transport) as hubspot:
        with pytest.raises(RetryableDeliveryError, match="no id"):
            await hubspot.send(handoff())


async def test_a_shared_client_gets_the_token_on_every_request(peer: HubSpotPeer) -> None:
    async with httpx.AsyncClient(timeout=2.0) as shared:
        hubspot = HubSpotConnector(TOKEN, base_url=peer.url, client=shared)
        await hubspot.send(handoff())
        await hubspot.aclose()  # not its client: it must stay open
        assert not shared.is_closed

    assert len(peer.notes) == 1
    assert {s.headers["authorization"] for s in peer.seen} == {f"Bearer {TOKEN}"}
