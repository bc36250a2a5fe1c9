"""The webhook connector against a real local receiver, plus its signing and parsing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from stagecoach.connectors._http import parse_retry_after
from stagecoach.connectors.crm import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    InvalidSignature,
    WebhookConnector,
    sign,
    verify_signature,
)
from stagecoach.connectors.ratelimit import RateLimiter
from stagecoach.engine.domain.errors import ConfigurationError
from stagecoach.engine.protocol.connector import (
    OutgoingMessage,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from tests.peers.crm import WebhookReceiver

SECRET = "whsec-test-secret"
ROOT = Path(__file__).resolve().parents[2]


def handoff(key: str = "contact-42:mql", **extra: Any) -> OutgoingMessage:
    return OutgoingMessage(
        channel="crm",
        to="sales",
        idempotency_key=key,
        contact_id="contact-42",
        rendered={
            "journey": "lead_nurture",
            "step_id": "handoff",
            "reason": "score crossed 80",
            "score": 87.5,
            "grade": "A",
            "traits": {"email": "ada@example.com", "name": "Ada Lovelace", "city": "伦敦"},
            **extra,
        },
    )


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as peer:
        yield peer


@pytest.fixture
async def connector(receiver: WebhookReceiver) -> AsyncIterator[WebhookConnector]:
    webhook = WebhookConnector(receiver.endpoint, SECRET, timeout=2.0)
    yield webhook
    await webhook.aclose()


# --- signing and verification -------------------------------------------------------

BODY = b'{"hello":"world"}'
NOW = 1_767_225_600


def test_signature_verifies_and_returns_the_signed_time() -> None:
    header = sign(SECRET, BODY, timestamp=NOW)
    assert verify_signature(SECRET, header, BODY, now=NOW + 10) == datetime.fromtimestamp(NOW, UTC)


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    header = sign(SECRET, BODY, timestamp=NOW)
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"


def test_tampered_body_is_rejected() -> None:
    header = sign(SECRET, BODY, timestamp=NOW)
    with pytest.raises(InvalidSignature, match="no signature matches"):
        verify_signature(SECRET, header, b'{"hello":"World"}', now=NOW)


def test_tampered_timestamp_is_rejected() -> None:
    header = sign(SECRET, BODY, timestamp=NOW).replace(f"t={NOW}", f"t={NOW + 1}")
    with pytest.raises(InvalidSignature, match="no signature matches"):
        verify_signature(SECRET, header, BODY, now=NOW)


def test_wrong_secret_is_rejected() -> None:
    header = sign("another-secret", BODY, timestamp=NOW)
    with pytest.raises(InvalidSignature, match="no signature matches"):
        verify_signature(SECRET, header, BODY, now=NOW)


@pytest.mark.parametrize(("offset", "word"), [(301, "old"), (-301, "in the future")])
def test_timestamp_outside_tolerance_is_rejected(offset: int, word: str) -> None:
    header = sign(SECRET, BODY, timestamp=NOW)
    with pytest.raises(InvalidSignature, match=word):
        verify_signature(SECRET, header, BODY, now=NOW + offset)
    assert verify_signature(SECRET, header, BODY, now=NOW + offset, tolerance=timedelta(minutes=10))


@pytest.mark.parametrize(
    "header",
    [None, "", "garbage", "t=soon,v1=abc", "v1=abc", f"t={NOW}", f"t={NOW},v2=abc"],
)
def test_malformed_headers_are_rejected(header: str | None) -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(SECRET, header, BODY, now=NOW)


def test_rotation_signs_with_every_secret_and_verifies_against_any() -> None:
    header = sign(["new-secret", "old-secret"], BODY, timestamp=NOW)
    assert header.count("v1=") == 2
    assert verify_signature("old-secret", header, BODY, now=NOW)
    assert verify_signature("new-secret", header, BODY, now=NOW)
    old_only = sign("old-secret", BODY, timestamp=NOW)
    assert verify_signature(["new-secret", "old-secret"], old_only, BODY, now=NOW)
    with pytest.raises(InvalidSignature):
        verify_signature(["new-secret"], old_only, BODY, now=NOW)


def test_unusable_configuration_is_refused_up_front() -> None:
    with pytest.raises(ConfigurationError) as bad_url:
        WebhookConnector("ftp://example.com/hook", SECRET)
    assert "STAGECOACH_WEBHOOK_URL" in bad_url.value.one_line()
    with pytest.raises(ConfigurationError) as no_secret:
        WebhookConnector("https://example.com/hook", "")
    assert "STAGECOACH_WEBHOOK_SECRET" in no_secret.value.one_line()


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120") == timedelta(seconds=120)
    assert parse_retry_after("Thu, 01 Jan 2026 12:01:30 GMT", now=now) == timedelta(seconds=90)
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == timedelta(0)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# --- pure classification (MockTransport) ---------------------------------------------


async def classify_with(response: httpx.Response) -> Any:
    webhook = WebhookConnector(
        "https://hooks.example.com/x",
        SECRET,
        transport=httpx.MockTransport(lambda request: response),
    )
    try:
        return await webhook.send(handoff())
    finally:
        await webhook.aclose()


async def test_accepted_without_json_id_gets_an_id_derived_from_the_key() -> None:
    result = await classify_with(httpx.Response(200, text="ok"))
    digest = hashlib.sha256(b"contact-42:mql").hexdigest()[:32]
    assert result.provider_message_id == f"webhook-{digest}"
    assert result.status == "accepted"
    assert result.response == {}


async def test_202_means_queued() -> None:
    result = await classify_with(httpx.Response(202, json={"id": 7, "queued": True}))
    assert (result.status, result.provider_message_id) == ("queued", "7")
    assert result.response == {"id": 7, "queued": True}


async def test_2xx_that_says_duplicate_is_a_duplicate() -> None:
    result = await classify_with(httpx.Response(200, json={"id": "evt_1", "duplicate": True}))
    assert result.duplicate


async def test_redirect_is_permanent() -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        await classify_with(httpx.Response(301, headers={"Location": "https://elsewhere/"}))
    assert caught.value.code == "http_301"


# --- against the real receiver -------------------------------------------------------


async def test_receiver_verifies_our_signature_and_gets_the_payload(
    receiver: WebhookReceiver, connector: WebhookConnector
) -> None:
    result = await connector.send(handoff())

    assert result.provider_message_id == "evt_1"
    assert not result.duplicate
    assert receiver.rejections == []
    [delivery] = receiver.deliveries
    assert delivery.key == "contact-42:mql"
    assert delivery.payload["data"]["score"] == 87.5
    assert delivery.payload["data"]["traits"]["city"] == "伦敦"
    assert delivery.payload["contact_id"] == "contact-42"
    assert abs(delivery.signed_at.timestamp() - time.time()) < 60
    [request] = receiver.seen
    assert request.headers[IDEMPOTENCY_HEADER.lower()] == "contact-42:mql"
    assert request.headers["content-type"] == "application/json"
    verify_signature(SECRET, request.headers[SIGNATURE_HEADER.lower()], request.body)


async def test_docs_snippet_verifies_a_real_delivery(
    receiver: WebhookReceiver, connector: WebhookConnector
) -> None:
    text = (ROOT / "docs" / "webhooks.md").read_text(encoding="utf-8")
    [snippet] = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "docs/webhooks.md", "exec"), namespace)  # noqa: S102
    verify = namespace["verify"]

    await connector.send(handoff())
    [delivery] = receiver.deliveries

    assert verify(SECRET, delivery.signature, delivery.raw_body)
    assert verify(["rotated", SECRET], delivery.signature, delivery.raw_body)
    assert not verify("wrong", delivery.signature, delivery.raw_body)
    assert not verify(SECRET, delivery.signature, delivery.raw_body.replace(b"87.5", b"97.5"))
    assert not verify(SECRET, delivery.signature, delivery.raw_body, now=time.time() + 600)


async def test_5xx_then_success_leaves_exactly_one_record(
    receiver: WebhookReceiver, connector: WebhookConnector
) -> None:
    receiver.fail(500)

    with pytest.raises(RetryableDeliveryError, match="500"):
        await connector.send(handoff())
    result = await connector.send(handoff())

    assert not result.duplicate
    assert len(receiver.seen) == 2
    assert [d.key for d in receiver.deliveries] == ["contact-42:mql"]


async def test_resending_an_accepted_key_is_a_duplicate(
    receiver: WebhookReceiver, connector: WebhookConnector
) -> None:
    first = await connector.send(handoff())
    second = await connector.send(handoff())

    assert second.duplicate
    assert second.provider_message_id == first.provider_message_id
    assert len(receiver.deliveries) == 1


async def test_timeout_is_retryable_and_the_retry_is_absorbed(
    receiver: WebhookReceiver,
) -> None:
    # The receiver records the message but answers too late: the worst case.
    receiver.slow(1.0)
    async with WebhookConnector(receiver.endpoint, SECRET, timeout=0.3) as impatient:
        with pytest.raises(RetryableDeliveryError, match="did not answer in time"):
            await impatient.send(handoff())
        result = await impatient.send(handoff())

    assert result.duplicate
    assert len(receiver.deliveries) == 1


async def test_4xx_is_permanent_and_names_the_status(
    receiver: WebhookReceiver, connector: WebhookConnector
) -> None:
    receiver.fail(422, body={"error": "unknown journey"})

    with pytest.raises(PermanentDeliveryError, match="unknown journey") as caught:
        await connector.send(handoff())

    assert caught.value.code == "http_422"
    assert receiver.deliveries == []


async def test_wrong_secret_is_refused_by_the_receiver_and_permanent(
    receiver: WebhookReceiver,
) -> None:
    async with WebhookConnector(receiver.endpoint, "not-the-secret") as wrong:
        with pytest.raises(PermanentDeliveryError) as caught:
            await wrong.send(handoff())

    assert caught.value.code == "http_401"
    assert receiver.deliveries == []
    assert receiver.rejections == [
        (401, "no signature matches: wrong secret, or the body was altered")
    ]


async def test_receiver_refuses_a_stale_signature(receiver: WebhookReceiver) -> None:
    async with WebhookConnector(receiver.endpoint, SECRET, clock=lambda: time.time() - 600) as late:
        with pytest.raises(PermanentDeliveryError):
            await late.send(handoff())

    [(status, reason)] = receiver.rejections
    assert status == 401
    assert "old" in reason
    assert receiver.deliveries == []


async def test_rotating_sender_is_accepted_by_a_receiver_with_the_old_secret(
    receiver: WebhookReceiver,
) -> None:
    async with WebhookConnector(receiver.endpoint, ["brand-new", SECRET]) as rotating:
        await rotating.send(handoff())

    assert len(receiver.deliveries) == 1
    assert receiver.deliveries[0].signature.count("v1=") == 2


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (429, "120", timedelta(seconds=120)),
        (503, "5", timedelta(seconds=5)),
        (408, None, None),
        (502, None, None),
    ],
)
async def test_retryable_statuses_carry_the_retry_after_hint(
    receiver: WebhookReceiver,
    connector: WebhookConnector,
    status: int,
    retry_after: str | None,
    expected: timedelta | None,
) -> None:
    receiver.fail(status, headers={"Retry-After": retry_after} if retry_after else None)

    with pytest.raises(RetryableDeliveryError) as caught:
        await connector.send(handoff())

    assert caught.value.retry_after == expected
    assert receiver.deliveries == []


async def test_connection_refused_is_retryable_until_the_receiver_is_back(
    receiver: WebhookReceiver, connector: WebhookConnector
) -> None:
    receiver.stop()
    with pytest.raises(RetryableDeliveryError, match="could not reach"):
        await connector.send(handoff())

    receiver.start()
    result = await connector.send(handoff())

    assert not result.duplicate
    assert len(receiver.deliveries) == 1


async def test_down_receiver_answers_503_until_told(
    receiver: WebhookReceiver, connector: WebhookConnector
) -> None:
    receiver.down()
    for _ in range(3):
        with pytest.raises(RetryableDeliveryError, match="503"):
            await connector.send(handoff())
    receiver.up()

    await connector.send(handoff())

    assert len(receiver.seen) == 4
    assert len(receiver.deliveries) == 1


async def test_concurrent_sends_share_one_client_and_limiter(receiver: WebhookReceiver) -> None:
    class CountingLimiter(RateLimiter):
        acquired = 0

        async def acquire(self) -> None:
            CountingLimiter.acquired += 1
            await super().acquire()

    limiter = CountingLimiter(None)
    async with WebhookConnector(receiver.endpoint, SECRET, limiter=limiter) as webhook:
        results = await asyncio.gather(*(webhook.send(handoff(f"key-{i}")) for i in range(20)))

    assert CountingLimiter.acquired == 20
    assert len({r.provider_message_id for r in results}) == 20
    assert sorted(d.key for d in receiver.deliveries) == sorted(f"key-{i}" for i in range(20))


async def test_body_is_the_same_bytes_on_every_attempt(
    receiver: WebhookReceiver, connector: WebhookConnector
) -> None:
    receiver.fail(503)
    with pytest.raises(RetryableDeliveryError):
        await connector.send(handoff())
    await connector.send(handoff())

    first, second = receiver.seen
    assert first.body == second.body
    assert json.loads(first.body)["idempotency_key"] == "contact-42:mql"
