"""HTTP email connectors: the generic JSON provider and Postmark.

Behaviour is tested against a real local provider (tests/peers/http_email.py) over real
sockets; ``httpx.MockTransport`` tests below check only parsing and request building.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from stagecoach.connectors._http import parse_retry_after
from stagecoach.connectors.email import (
    IDEMPOTENCY_HEADER,
    HttpEmailConfig,
    HttpEmailConnector,
    PostmarkConfig,
    PostmarkConnector,
    interpret_generic_response,
    interpret_postmark_response,
)
from stagecoach.connectors.ratelimit import RateLimiter
from stagecoach.engine.domain.bounces import key_digest
from stagecoach.engine.domain.content import (
    BUNDLED_CONTENT_DIR,
    ContentLibrary,
    LinkSigner,
    RenderContact,
)
from stagecoach.engine.domain.errors import ConfigurationError
from stagecoach.engine.protocol.connector import (
    ConsentRevoked,
    OutgoingMessage,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from tests.helpers import free_port
from tests.peers.http_email import GENERIC, POSTMARK, HttpEmailPeer

FROM = "Northwind IoT <news@northwind.example>"
NOW = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
CONTENT = "webinar-oee-masterclass"
LIBRARY = ContentLibrary.load(BUNDLED_CONTENT_DIR)
SIGNER = LinkSigner(b"k" * 32, "https://mkt.example.com", timedelta(days=30))


def outgoing(n: int, *, to: str | None = None, contact_id: str | None = None) -> OutgoingMessage:
    contact = contact_id or f"c-{n}"
    key = f"{contact}:b2b_nurture:v1:webinar:1"
    rendered = LIBRARY.render(
        CONTENT,
        channel="email",
        locale="zh-CN",
        contact=RenderContact(contact, {"first_name": f"名{n}"}),
        now=NOW,
        signer=SIGNER,
        idempotency_key=key,
    )
    return OutgoingMessage(
        channel="email",
        to=to or f"person{n}@example.com",
        idempotency_key=key,
        contact_id=contact,
        rendered=rendered.to_dict(),
    )


@pytest.fixture(scope="module")
def server() -> Iterator[HttpEmailPeer]:
    with HttpEmailPeer() as peer:
        yield peer


@pytest.fixture
def peer(server: HttpEmailPeer) -> HttpEmailPeer:
    server.reset()
    server.replay = False
    return server


def generic_config(peer: HttpEmailPeer, **overrides: Any) -> HttpEmailConfig:
    values: dict[str, Any] = {
        "url": peer.generic_url,
        "from_addr": FROM,
        "token": peer.generic_token,
        "timeout": 5.0,
    }
    values.update(overrides)
    return HttpEmailConfig(**values)


def postmark_config(peer: HttpEmailPeer, **overrides: Any) -> PostmarkConfig:
    values: dict[str, Any] = {
        "server_token": peer.postmark_token,
        "from_addr": FROM,
        "message_stream": "broadcast",
        "base_url": peer.base_url,
        "timeout": 5.0,
    }
    values.update(overrides)
    return PostmarkConfig(**values)


@pytest.fixture
async def generic(peer: HttpEmailPeer) -> AsyncIterator[HttpEmailConnector]:
    async with HttpEmailConnector(generic_config(peer)) as connector:
        yield connector


@pytest.fixture
async def postmark(peer: HttpEmailPeer) -> AsyncIterator[PostmarkConnector]:
    async with PostmarkConnector(postmark_config(peer)) as connector:
        yield connector


# --- generic provider, against the real peer -----------------------------------------------


async def test_generic_send_posts_the_documented_json_with_the_key(
    peer: HttpEmailPeer, generic: HttpEmailConnector
) -> None:
    message = outgoing(1)
    rendered = message.rendered

    result = await generic.send(message)

    [request] = peer.received(GENERIC)
    assert request.headers["idempotency-key"] == message.idempotency_key
    assert request.headers["authorization"] == f"Bearer {peer.generic_token}"
    body = request.body
    assert body["from"] == FROM
    assert body["to"] == "person1@example.com"
    assert body["subject"] == rendered["subject"]
    assert body["text"] == rendered["text"]
    assert body["html"] == rendered["html"]
    assert body["headers"]["Message-ID"] == rendered["headers"]["Message-ID"]
    assert body["headers"]["List-Unsubscribe"] == rendered["headers"]["List-Unsubscribe"]
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert body["headers"][IDEMPOTENCY_HEADER] == key_digest(message.idempotency_key)
    assert "Date" not in body["headers"]  # the provider dates the message it sends
    assert body["metadata"] == {
        "contact_id": "c-1",
        "idempotency_key": message.idempotency_key,
        "content_id": CONTENT,
        "content_version": rendered["content_version"],
    }
    assert result.provider_message_id == request.message_id
    assert (result.status, result.duplicate) == ("accepted", False)


async def test_generic_second_send_of_a_key_is_a_duplicate_not_a_copy(
    peer: HttpEmailPeer, generic: HttpEmailConnector
) -> None:
    message = outgoing(1)
    first = await generic.send(message)
    again = await generic.send(message)

    assert again.duplicate
    assert again.provider_message_id == first.provider_message_id
    assert peer.copies(key_digest(message.idempotency_key)) == 1


async def test_generic_replayed_answer_is_a_duplicate(
    peer: HttpEmailPeer, generic: HttpEmailConnector
) -> None:
    peer.replay = True
    message = outgoing(1)
    first = await generic.send(message)
    again = await generic.send(message)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.provider_message_id == first.provider_message_id
    assert peer.copies(key_digest(message.idempotency_key)) == 1


async def test_generic_lost_response_then_retry_delivers_exactly_one_copy(
    peer: HttpEmailPeer,
) -> None:
    message = outgoing(1)
    peer.stall_next(1.0)
    async with HttpEmailConnector(generic_config(peer, timeout=0.3)) as connector:
        with pytest.raises(RetryableDeliveryError, match="may have accepted") as caught:
            await connector.send(message)
        assert caught.value.retry_after == timedelta(seconds=30)
        assert peer.copies(key_digest(message.idempotency_key)) == 1  # it did go through

        retried = await connector.send(message)

    assert retried.duplicate
    assert peer.copies(key_digest(message.idempotency_key)) == 1


async def test_generic_burst_shares_one_pooled_client(
    peer: HttpEmailPeer, generic: HttpEmailConnector
) -> None:
    messages = [outgoing(n) for n in range(200)]
    results = await asyncio.gather(*(generic.send(m) for m in messages))
    assert not any(r.duplicate for r in results)
    assert len({r.provider_message_id for r in results}) == 200
    assert all(peer.copies(key_digest(m.idempotency_key)) == 1 for m in messages)


@pytest.mark.parametrize(
    ("status", "headers", "delay"),
    [
        (429, {"Retry-After": "7"}, timedelta(seconds=7)),
        (429, {}, timedelta(minutes=1)),
        (500, {}, timedelta(seconds=30)),
        (502, {}, timedelta(seconds=30)),
        (503, {"Retry-After": "3"}, timedelta(seconds=3)),
    ],
)
async def test_generic_429_and_5xx_are_retryable_with_the_providers_hint(
    peer: HttpEmailPeer,
    generic: HttpEmailConnector,
    status: int,
    headers: dict[str, str],
    delay: timedelta,
) -> None:
    peer.fail_next(1, status, body={"error": {"code": "busy"}}, headers=headers, api=GENERIC)

    with pytest.raises(RetryableDeliveryError) as caught:
        await generic.send(outgoing(1))
    assert caught.value.retry_after == delay
    assert f"HTTP {status}" in caught.value.message
    assert peer.received() == []

    assert not (await generic.send(outgoing(1))).duplicate  # the retry goes through
    assert len(peer.received()) == 1


async def test_generic_retry_after_as_an_http_date(
    peer: HttpEmailPeer, generic: HttpEmailConnector
) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(minutes=2), usegmt=True)
    peer.fail_next(1, 429, headers={"Retry-After": later}, api=GENERIC)
    with pytest.raises(RetryableDeliveryError) as caught:
        await generic.send(outgoing(1))
    assert caught.value.retry_after is not None
    assert timedelta(seconds=100) < caught.value.retry_after <= timedelta(minutes=2)


@pytest.mark.parametrize(
    ("status", "code", "raised", "classified"),
    [
        (422, "mailbox_unknown", PermanentDeliveryError, "hard_bounce"),
        (422, "invalid_recipient", PermanentDeliveryError, "hard_bounce"),
        (422, "policy_rejected", PermanentDeliveryError, "policy_rejected"),
        (422, "suppressed", ConsentRevoked, "email"),
        (400, "unsubscribed", ConsentRevoked, "email"),
        (400, "invalid_from", PermanentDeliveryError, "invalid_from"),
    ],
)
async def test_generic_4xx_are_permanent_and_classified(
    peer: HttpEmailPeer,
    generic: HttpEmailConnector,
    status: int,
    code: str,
    raised: type[Exception],
    classified: str,
) -> None:
    peer.reject(GENERIC, "x@example.com", status, {"error": {"code": code, "message": "no"}})

    with pytest.raises(raised) as caught:
        await generic.send(outgoing(1, to="x@example.com"))

    error = caught.value
    assert getattr(error, "channel", None) == classified or getattr(error, "code", None) == (
        classified
    )
    assert peer.received() == []


async def test_generic_same_key_with_another_body_is_permanent(
    peer: HttpEmailPeer, generic: HttpEmailConnector
) -> None:
    message = outgoing(1)
    await generic.send(message)
    changed = replace(message, to="someone.else@example.com")
    with pytest.raises(PermanentDeliveryError) as caught:
        await generic.send(changed)
    assert caught.value.code == "idempotency_key_reused"
    assert len(peer.received()) == 1


async def test_generic_wrong_token_is_retryable_with_a_fix(peer: HttpEmailPeer) -> None:
    async with HttpEmailConnector(generic_config(peer, token="stale")) as connector:
        with pytest.raises(RetryableDeliveryError, match="check the provider token") as caught:
            await connector.send(outgoing(1))
    assert caught.value.retry_after == timedelta(minutes=5)
    assert peer.received() == []


async def test_unreachable_provider_is_retryable() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/send"
    async with HttpEmailConnector(HttpEmailConfig(url=url, from_addr=FROM)) as connector:
        with pytest.raises(RetryableDeliveryError, match="cannot reach the email provider"):
            await connector.send(outgoing(1))


# --- Postmark, against the real peer --------------------------------------------------------


async def test_postmark_send_follows_the_documented_request(
    peer: HttpEmailPeer, postmark: PostmarkConnector
) -> None:
    message = outgoing(1)
    rendered = message.rendered

    result = await postmark.send(message)

    [request] = peer.received(POSTMARK)
    assert request.headers["x-postmark-server-token"] == peer.postmark_token
    assert request.headers["accept"] == "application/json"
    body = request.body
    assert body["From"] == FROM
    assert body["To"] == "person1@example.com"
    assert body["Subject"] == rendered["subject"]
    assert body["TextBody"] == rendered["text"]
    assert body["HtmlBody"] == rendered["html"]
    assert body["MessageStream"] == "broadcast"
    assert body["Tag"] == CONTENT
    headers = {h["Name"]: h["Value"] for h in body["Headers"]}
    assert headers["List-Unsubscribe"] == rendered["headers"]["List-Unsubscribe"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["Message-ID"] == rendered["headers"]["Message-ID"]
    assert headers[IDEMPOTENCY_HEADER] == key_digest(message.idempotency_key)
    assert body["Metadata"] == {
        "stagecoach_key": key_digest(message.idempotency_key),
        "stagecoach_contact": "c-1",
        "stagecoach_content": CONTENT,
    }
    assert result.provider_message_id == request.message_id
    assert result.response["ErrorCode"] == 0


async def test_postmark_metadata_stays_within_postmarks_limits(
    peer: HttpEmailPeer, postmark: PostmarkConnector
) -> None:
    await postmark.send(outgoing(1, contact_id="c" * 120))  # the peer refuses values over 80
    [request] = peer.received(POSTMARK)
    assert request.body["Metadata"]["stagecoach_contact"] == "c" * 80


async def test_postmark_inactive_recipient_revokes_consent(
    peer: HttpEmailPeer, postmark: PostmarkConnector
) -> None:
    peer.deactivate("gone@example.com")
    with pytest.raises(ConsentRevoked, match="ErrorCode 406") as caught:
        await postmark.send(outgoing(1, to="gone@example.com"))
    assert caught.value.channel == "email"
    assert peer.received() == []


@pytest.mark.parametrize(
    ("status", "body", "raised", "expected"),
    [
        (422, {"ErrorCode": 300, "Message": "Invalid 'To' address"}, "perm", "invalid_request"),
        (422, {"ErrorCode": 409, "Message": "JSON required"}, "perm", "contract"),
        (422, {"ErrorCode": 1234, "Message": "New"}, "perm", "postmark_1234"),
        (422, {"ErrorCode": 400, "Message": "Sender signature not found"}, "retry", 300),
        (422, {"ErrorCode": 405, "Message": "Not allowed to send"}, "retry", 300),
        (429, {"ErrorCode": 429, "Message": "Rate limit exceeded"}, "retry", 60),
        (500, {"ErrorCode": 500, "Message": "Internal Server Error"}, "retry", 30),
        (503, {}, "retry", 30),
    ],
)
async def test_postmark_errors_are_classified(
    peer: HttpEmailPeer,
    postmark: PostmarkConnector,
    status: int,
    body: dict[str, Any],
    raised: str,
    expected: Any,
) -> None:
    peer.fail_next(1, status, body=body, api=POSTMARK)

    with pytest.raises((PermanentDeliveryError, RetryableDeliveryError)) as caught:
        await postmark.send(outgoing(1))

    if raised == "perm":
        assert isinstance(caught.value, PermanentDeliveryError)
        assert caught.value.code == expected
    else:
        assert isinstance(caught.value, RetryableDeliveryError)
        assert caught.value.retry_after == timedelta(seconds=expected)
    assert peer.received() == []


async def test_postmark_wrong_token_is_retryable_with_a_fix(peer: HttpEmailPeer) -> None:
    async with PostmarkConnector(postmark_config(peer, server_token="wrong")) as connector:
        with pytest.raises(RetryableDeliveryError, match="server token") as caught:
            await connector.send(outgoing(1))
    assert "ErrorCode 10" in caught.value.message
    assert caught.value.retry_after == timedelta(minutes=5)


async def test_postmark_lost_response_is_found_by_metadata_instead_of_sent_twice(
    peer: HttpEmailPeer,
) -> None:
    message = outgoing(1)
    digest = key_digest(message.idempotency_key)
    peer.stall_next(1.0)
    async with PostmarkConnector(postmark_config(peer, timeout=0.3)) as connector:
        with pytest.raises(RetryableDeliveryError, match="may have accepted"):
            await connector.send(message)
        assert peer.copies(digest) == 1  # Postmark took it; we never heard

        retried = await connector.send(message)

    assert retried.duplicate
    assert retried.provider_message_id == peer.received(POSTMARK)[0].message_id
    assert peer.copies(digest) == 1
    assert peer.requests["GET /messages/outbound"] == 1


async def test_postmark_lookup_that_finds_nothing_sends(peer: HttpEmailPeer) -> None:
    message = outgoing(1)
    # The answer is lost, but this time Postmark had not taken the message in.
    peer.fail_next(1, 503, delay=1.0, api=POSTMARK)
    async with PostmarkConnector(postmark_config(peer, timeout=0.3)) as connector:
        with pytest.raises(RetryableDeliveryError, match="may have accepted"):
            await connector.send(message)
        assert peer.received() == []

        retried = await connector.send(message)

    assert not retried.duplicate
    assert peer.requests["GET /messages/outbound"] == 1
    assert peer.copies(key_digest(message.idempotency_key)) == 1


async def test_postmark_has_no_idempotency_so_another_worker_can_duplicate(
    peer: HttpEmailPeer,
) -> None:
    """The documented limit: the lookup lives in the connector that saw the lost answer."""
    message = outgoing(1)
    peer.stall_next(1.0)
    async with PostmarkConnector(postmark_config(peer, timeout=0.3)) as first_worker:
        with pytest.raises(RetryableDeliveryError):
            await first_worker.send(message)
    async with PostmarkConnector(postmark_config(peer)) as second_worker:
        await second_worker.send(message)
    assert peer.copies(key_digest(message.idempotency_key)) == 2


async def test_postmark_retry_after_a_plain_failure_does_not_search(
    peer: HttpEmailPeer, postmark: PostmarkConnector
) -> None:
    message = outgoing(1)
    peer.fail_next(1, 503, api=POSTMARK)
    with pytest.raises(RetryableDeliveryError):
        await postmark.send(message)
    await postmark.send(message)
    assert peer.requests["GET /messages/outbound"] == 0
    assert peer.copies(key_digest(message.idempotency_key)) == 1


# --- rate limit and bad input ----------------------------------------------------------------


async def test_rate_limiter_is_acquired_before_each_request(peer: HttpEmailPeer) -> None:
    limiter = RateLimiter(20, burst=1)
    async with HttpEmailConnector(generic_config(peer), limiter=limiter) as connector:
        started = time.perf_counter()
        await asyncio.gather(*(connector.send(outgoing(n)) for n in range(11)))
        assert time.perf_counter() - started >= 0.45  # 10 waits of 50 ms
    assert len(peer.received()) == 11


def _wechat_rendered() -> dict[str, Any]:
    return LIBRARY.render(
        CONTENT,
        channel="wechat",
        locale="en",
        contact=RenderContact("c-1"),
        now=NOW,
        signer=None,
        idempotency_key="k",
    ).to_dict()


@pytest.mark.parametrize(
    ("change", "code", "names"),
    [
        ({"channel": "crm"}, "contract", "OutgoingMessage.channel is 'crm'"),
        ({"rendered": _wechat_rendered()}, "contract", "rendered['channel'] is 'wechat'"),
        ({"rendered": {"channel": "email"}}, "contract", "rendered lacks 'content_id'"),
        ({"to": " "}, "invalid_address", "OutgoingMessage.to is empty"),
        ({"to": "ana@example.com, bob@example.com"}, "invalid_address", "not a bare address"),
    ],
)
@pytest.mark.parametrize("kind", ["generic", "postmark"])
async def test_bad_input_is_permanent_and_sends_nothing(
    kind: str, change: dict[str, Any], code: str, names: str
) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json={"id": "x", "MessageID": "x", "ErrorCode": 0})

    transport = httpx.MockTransport(handler)
    connector: HttpEmailConnector | PostmarkConnector = (
        HttpEmailConnector(
            HttpEmailConfig(url="https://mail.test/v1/send", from_addr=FROM), transport=transport
        )
        if kind == "generic"
        else PostmarkConnector(
            PostmarkConfig(server_token="t", from_addr=FROM), transport=transport
        )
    )
    async with connector:
        with pytest.raises(PermanentDeliveryError) as caught:
            await connector.send(replace(outgoing(1), **change))
    assert caught.value.code == code
    assert names in caught.value.message
    assert calls == []


@pytest.mark.parametrize("url", ["not a url", "ftp://mail.test/send", "http://"])
def test_bad_provider_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="email provider URL"):
        HttpEmailConnector(HttpEmailConfig(url=url, from_addr=FROM))


def test_tokens_stay_out_of_reprs() -> None:
    assert "sekrit" not in repr(PostmarkConfig(server_token="sekrit", from_addr=FROM))
    assert "sekrit" not in repr(
        HttpEmailConfig(url="https://m.test", from_addr=FROM, token="sekrit")
    )


# --- parsing only (MockTransport and plain responses) ---------------------------------------


async def test_transport_seam_and_borrowed_client_stays_open() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"MessageID": "pm-1", "ErrorCode": 0, "Message": "OK"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    connector = PostmarkConnector(PostmarkConfig(server_token="t", from_addr=FROM), client=client)
    result = await connector.send(outgoing(1))
    await connector.aclose()
    assert result.provider_message_id == "pm-1"
    assert str(seen[0].url) == "https://api.postmarkapp.com/email"
    assert json.loads(seen[0].content)["To"] == "person1@example.com"
    assert not client.is_closed  # the caller's client is the caller's to close
    await client.aclose()


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert parse_retry_after("120") == timedelta(seconds=120)
    assert parse_retry_after(" 0 ") == timedelta(0)
    in_90s = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(in_90s, now=now) == timedelta(seconds=90)
    an_hour_ago = format_datetime(now - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(an_hour_ago, now=now) == timedelta(0)
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None


def response(status: int, body: Any = None, **headers: str) -> httpx.Response:
    content = (
        b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    return httpx.Response(status, content=content, headers=headers)


@pytest.mark.parametrize(
    ("answer", "provider_id", "duplicate"),
    [
        (response(202, {"id": "m-1"}), "m-1", False),
        (response(201, {"message_id": "m-2"}), "m-2", False),
        (response(200, {"id": "m-3", "duplicate": True}), "m-3", True),
        (response(200, {"id": "m-4"}, **{"Idempotent-Replayed": "true"}), "m-4", True),
        (response(409, {"id": "m-5"}), "m-5", True),
        (response(409, b"conflict"), "", True),
        (response(200, b"<html>ok</html>"), "", False),
    ],
)
def test_generic_success_shapes(answer: httpx.Response, provider_id: str, duplicate: bool) -> None:
    result = interpret_generic_response(answer)
    assert (result.provider_message_id, result.duplicate) == (provider_id, duplicate)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (response(422, {"error": "suppressed"}), ConsentRevoked),
        (response(400, {"code": "hard_bounce", "message": "no such user"}), "hard_bounce"),
        (response(404, b"not found"), "http_404"),
        (response(408, None), timedelta(seconds=30)),
        (response(425, None), timedelta(seconds=30)),
        (response(403, {"error": {"code": "forbidden"}}), timedelta(minutes=5)),
    ],
)
def test_generic_error_shapes(answer: httpx.Response, expected: Any) -> None:
    with pytest.raises((ConsentRevoked, PermanentDeliveryError, RetryableDeliveryError)) as caught:
        interpret_generic_response(answer)
    if isinstance(expected, str):
        assert isinstance(caught.value, PermanentDeliveryError)
        assert caught.value.code == expected
    elif isinstance(expected, timedelta):
        assert isinstance(caught.value, RetryableDeliveryError)
        assert caught.value.retry_after == expected
    else:
        assert isinstance(caught.value, expected)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (response(200, {"MessageID": "pm-1", "ErrorCode": 0, "Message": "OK"}), "pm-1"),
        (response(200, {"ErrorCode": 0, "Message": "OK"}), ""),
        (response(401, {"ErrorCode": 10, "Message": "bad token"}), timedelta(minutes=5)),
        (response(422, {"ErrorCode": 412, "Message": "pending"}), timedelta(minutes=5)),
        (response(422, {"ErrorCode": 406, "Message": "inactive"}), ConsentRevoked),
        (response(422, {"ErrorCode": 402, "Message": "Invalid JSON"}), "contract"),
        (response(413, b"too large"), "http_413"),
        (response(429, None, **{"Retry-After": "12"}), timedelta(seconds=12)),
    ],
)
def test_postmark_response_shapes(answer: httpx.Response, expected: Any) -> None:
    if isinstance(expected, str) and not expected.startswith(("http_", "contract")):
        assert interpret_postmark_response(answer).provider_message_id == expected
        return
    with pytest.raises((ConsentRevoked, PermanentDeliveryError, RetryableDeliveryError)) as caught:
        interpret_postmark_response(answer)
    if isinstance(expected, str):
        assert isinstance(caught.value, PermanentDeliveryError)
        assert caught.value.code == expected
    elif isinstance(expected, timedelta):
        assert isinstance(caught.value, RetryableDeliveryError)
        assert caught.value.retry_after == expected
    else:
        assert isinstance(caught.value, expected)
