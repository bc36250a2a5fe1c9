"""The WeChat connector against a real local WeChat API (tests/peers/wechat.py).

Effects are asserted at the peer: what it accepted, how many tokens it issued, how many
calls it saw. A few MockTransport tests cover parsing alone.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from stagecoach.connectors.ratelimit import RateLimiter
from stagecoach.connectors.wechat import (
    BAD_MESSAGE,
    WINDOW_CLOSED,
    AccessTokenService,
    WeChatConfig,
    WeChatConnector,
    WeChatCredentialsRejected,
    until_quota_reset,
    window_open,
)
from stagecoach.engine.domain.content import BUNDLED_CONTENT_DIR, ContentLibrary, RenderContact
from stagecoach.engine.protocol.connector import (
    ConsentRevoked,
    DeliveryError,
    OutgoingMessage,
    PermanentDeliveryError,
    RetryableDeliveryError,
    SendResult,
)
from tests.peers.wechat import WeChatPeer

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
TEMPLATE_ITEM = "wp-digital-transformation"
TEXT_ITEM = "survey-nps"
NEWS_ITEM = "newsletter-monthly"
_keys = itertools.count(1)


# --- fixtures and helpers --------------------------------------------------------------


@pytest.fixture(scope="module")
def library() -> ContentLibrary:
    return ContentLibrary.load(BUNDLED_CONTENT_DIR)


@pytest.fixture
def start_peer() -> Iterator[Callable[..., WeChatPeer]]:
    """Starts peers with the given options; stops them after the test."""
    peers: list[WeChatPeer] = []

    def start(**options: Any) -> WeChatPeer:
        peer = WeChatPeer(**options).start()
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.stop()


@pytest.fixture
def peer(start_peer: Callable[..., WeChatPeer]) -> WeChatPeer:
    return start_peer()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., WeChatConnector]]:
    """Builds connectors to a peer; closes them after the test."""
    built: list[WeChatConnector] = []

    def make(peer: WeChatPeer, *, secret: str | None = None, **options: Any) -> WeChatConnector:
        config = WeChatConfig(
            appid=options.pop("appid", peer.appid),
            secret=secret if secret is not None else peer.secret,
            api_base=peer.url,
            timeout=options.pop("timeout", 5.0),
        )
        options.setdefault("now", lambda: NOW)
        connector = WeChatConnector(config, **options)
        built.append(connector)
        return connector

    yield make
    for connector in built:
        await connector.aclose()


def recent(hours: float) -> Callable[[str], Any]:
    """A last-interaction hook: every contact interacted ``hours`` before NOW."""

    async def last_interaction(contact_id: str) -> datetime | None:
        return NOW - timedelta(hours=hours)

    return last_interaction


def outgoing(
    library: ContentLibrary,
    content_id: str = TEMPLATE_ITEM,
    *,
    openid: str = "oPeer-li-lei",
    contact_id: str = "c-1",
    key: str | None = None,
    channel: str = "wechat",
) -> OutgoingMessage:
    key = key or f"k-{next(_keys)}"
    rendered = library.render(
        content_id,
        channel=channel,
        locale="zh-CN",
        contact=RenderContact(contact_id, {"first_name": "李雷"}, openid=openid),
        now=NOW,
        signer=None,
        idempotency_key=key,
    )
    return OutgoingMessage(
        channel="wechat",
        to=openid,
        idempotency_key=key,
        contact_id=contact_id,
        rendered=rendered.to_dict(),
    )


# --- messages --------------------------------------------------------------------------


async def test_template_message_reaches_the_peer(library, peer, connect) -> None:
    message = outgoing(library)

    result = await connect(peer).send(message)

    [accepted] = peer.accepted
    wechat = message.rendered["wechat"]
    assert accepted.kind == "template"
    assert accepted.openid == "oPeer-li-lei"
    assert accepted.body["template_id"] == wechat["template_id"] == "IB-TM-CONTENT-READY"
    assert accepted.body["data"] == wechat["data"]
    assert accepted.body["url"] == wechat["url"]
    assert accepted.client_msg_id
    assert result == SendResult(
        provider_message_id=str(accepted.msgid),
        status="accepted",
        response={"errcode": 0, "errmsg": "ok"},
    )


@pytest.mark.parametrize(("content_id", "msgtype"), [(TEXT_ITEM, "text"), (NEWS_ITEM, "news")])
async def test_customer_service_message_reaches_the_peer(
    library, peer, connect, content_id, msgtype
) -> None:
    message = outgoing(library, content_id, key="cs-key-1")

    result = await connect(peer, last_interaction=recent(hours=2)).send(message)

    [accepted] = peer.accepted
    assert accepted.kind == "custom"
    assert accepted.body == {
        "touser": "oPeer-li-lei",
        "msgtype": msgtype,
        msgtype: message.rendered["wechat"][msgtype],
    }
    assert result.provider_message_id.startswith("wechat-")
    again = await connect(peer, last_interaction=recent(hours=2)).send(message)
    assert again.provider_message_id == result.provider_message_id


async def test_repeated_template_send_is_dropped_by_client_msg_id(library, peer, connect) -> None:
    connector = connect(peer)
    message = outgoing(library)

    first = await connector.send(message)
    second = await connector.send(message)

    assert len(peer.accepted) == 1
    assert peer.duplicates_suppressed == 1
    assert first.provider_message_id == second.provider_message_id


# --- the access token ------------------------------------------------------------------


async def test_one_token_serves_every_send(library, peer, connect) -> None:
    connector = connect(peer)

    await asyncio.gather(*(connector.send(outgoing(library)) for _ in range(20)))

    assert peer.token_requests == 1
    assert len(peer.accepted) == 20
    assert len({m.token for m in peer.accepted}) == 1


async def test_token_is_renewed_before_it_expires(library, start_peer, connect) -> None:
    peer = start_peer(token_lifetime=1.5)
    connector = connect(peer)

    await connector.send(outgoing(library))
    await asyncio.sleep(1.4)  # inside the last tenth of the token's life
    await connector.send(outgoing(library))
    await asyncio.sleep(0.5)  # the first token has expired by now
    await connector.send(outgoing(library))

    assert peer.token_requests == 2
    assert peer.refused(42001) == 0
    first, second, third = peer.accepted
    assert first.token != second.token == third.token


async def test_expired_token_is_renewed_once_and_the_send_succeeds(library, peer, connect) -> None:
    connector = connect(peer)
    await connector.send(outgoing(library))
    peer.expire_tokens()

    await connector.send(outgoing(library))

    assert peer.refused(42001) == 1
    assert peer.token_requests == 2
    assert peer.force_refreshes == 0
    assert len(peer.accepted) == 2


async def test_refused_current_token_is_force_refreshed(library, peer, connect) -> None:
    connector = connect(peer)
    await connector.send(outgoing(library))
    # WeChat calls the token invalid although the stable endpoint still hands it out.
    peer.fail_next(40001, endpoint="template")

    await connector.send(outgoing(library))

    assert peer.token_requests == 3  # first token, normal renewal (same token), forced
    assert peer.force_refreshes == 1
    first, second = peer.accepted
    assert first.token != second.token


async def test_token_refused_twice_is_retryable(library, peer, connect) -> None:
    connector = connect(peer)
    await connector.send(outgoing(library))
    peer.fail_next(42001, times=2, endpoint="template")

    with pytest.raises(RetryableDeliveryError, match="two access tokens"):
        await connector.send(outgoing(library))

    assert peer.send_calls() == 3
    assert len(peer.accepted) == 1


async def test_burst_after_expiry_renews_the_token_once(library, peer, connect) -> None:
    connector = connect(peer)
    await connector.send(outgoing(library))
    peer.expire_tokens()

    results = await asyncio.gather(
        *(connector.send(outgoing(library, openid=f"o-{n}")) for n in range(200))
    )

    assert len(results) == 200
    assert peer.token_requests == 2
    assert peer.refused(42001) == 200
    assert len(peer.accepted) == 201
    assert connector.tokens.requests == 2


async def test_connectors_can_share_one_token_service(library, peer, connect) -> None:
    first = connect(peer)
    second = connect(peer, tokens=first.tokens)

    await first.send(outgoing(library))
    await second.send(outgoing(library))

    assert peer.token_requests == 1


async def test_wrong_appsecret_is_a_clear_error(library, peer, connect) -> None:
    connector = connect(peer, secret="not-the-secret")

    with pytest.raises(WeChatCredentialsRejected) as caught:
        await connector.send(outgoing(library))
    with pytest.raises(WeChatCredentialsRejected):
        await connector.send(outgoing(library))

    error = caught.value
    assert isinstance(error, RetryableDeliveryError)
    assert "40125" in error.message
    assert "AppSecret" in error.message
    assert "STAGECOACH_WECHAT_SECRET" in error.fix
    assert error.retry_after == timedelta(minutes=5)
    assert peer.token_requests == 1  # the refusal is remembered, not re-asked per send
    assert peer.send_calls() == 0


async def test_wrong_appid_names_the_setting(library, peer, connect) -> None:
    connector = connect(peer, appid="wx-nobody")

    with pytest.raises(WeChatCredentialsRejected, match="40013") as caught:
        await connector.tokens.verify()

    assert "STAGECOACH_WECHAT_APPID" in caught.value.fix


async def test_busy_token_endpoint_is_retryable_and_remembered_briefly(library, peer) -> None:
    clock = FakeClock()
    async with httpx.AsyncClient() as client:
        tokens = AccessTokenService(
            peer.appid, peer.secret, client=client, api_base=peer.url, clock=clock
        )
        peer.fail_next(-1, endpoint="token")

        with pytest.raises(RetryableDeliveryError, match="busy"):
            await tokens.token()
        with pytest.raises(RetryableDeliveryError, match="busy"):
            await tokens.token()
        assert peer.token_requests == 1
        clock.advance(1.5)
        assert await tokens.token()
        assert peer.token_requests == 2


# --- classification --------------------------------------------------------------------

MINUTE = timedelta(minutes=1)


@pytest.mark.parametrize(
    ("errcode", "error_type", "code", "retry_after"),
    [
        (-1, RetryableDeliveryError, None, timedelta(seconds=3)),
        (45011, RetryableDeliveryError, None, timedelta(seconds=60)),
        # NOW is 17:30 in Beijing: the quota resets in 6.5 hours (plus a minute's margin).
        (45009, RetryableDeliveryError, None, timedelta(hours=6, minutes=30) + MINUTE),
        (40003, PermanentDeliveryError, "wechat_40003", None),
        (48001, PermanentDeliveryError, "wechat_48001", None),
        (50002, PermanentDeliveryError, "wechat_50002", None),
        (47001, PermanentDeliveryError, "wechat_47001", None),
        (43004, ConsentRevoked, None, None),
        (45015, ConsentRevoked, None, None),
    ],
)
async def test_errcodes_are_classified(
    library, peer, connect, errcode, error_type, code, retry_after
) -> None:
    peer.fail_next(errcode)

    with pytest.raises(DeliveryError) as caught:
        await connect(peer).send(outgoing(library))

    error = caught.value
    assert type(error) is error_type
    assert f"errcode {errcode}" in error.message
    if code is not None:
        assert isinstance(error, PermanentDeliveryError)
        assert error.code == code
    if isinstance(error, RetryableDeliveryError):
        assert error.retry_after == retry_after
    if isinstance(error, ConsentRevoked):
        assert error.channel == "wechat"
    assert peer.send_calls() == 1  # classified, not retried behind the caller's back
    assert peer.accepted == []


async def test_unknown_errcode_is_permanent_with_errmsg(library, peer, connect) -> None:
    peer.fail_next(40037)

    with pytest.raises(PermanentDeliveryError) as caught:
        await connect(peer).send(outgoing(library))

    assert caught.value.code == "wechat_40037"
    assert "invalid template_id" in caught.value.message


async def test_fault_for_one_openid_spares_the_others(library, peer, connect) -> None:
    peer.fail_openid("o-unfollowed", 43004)
    connector = connect(peer)

    with pytest.raises(ConsentRevoked, match="until they follow again"):
        await connector.send(outgoing(library, openid="o-unfollowed"))
    await connector.send(outgoing(library, openid="o-follower"))

    assert [m.openid for m in peer.accepted] == ["o-follower"]


async def test_bursts_of_busy_and_rate_limit_lose_nothing(library, peer, connect) -> None:
    connector = connect(peer)
    peer.fail_next(-1, times=5)
    peer.fail_next(45011, times=5)
    messages = [outgoing(library, openid=f"o-{n}") for n in range(8)]

    retries = await asyncio.gather(*(send_until_accepted(connector, m) for m in messages))

    assert sum(retries) == 10
    assert sorted(m.openid for m in peer.accepted) == sorted(m.to for m in messages)


async def test_http_5xx_is_retryable(library, peer, connect) -> None:
    peer.http_error_next(502)

    with pytest.raises(RetryableDeliveryError, match="HTTP 502"):
        await connect(peer).send(outgoing(library))


async def test_timeout_is_retryable(library, peer, connect) -> None:
    connector = connect(peer, timeout=0.3)
    await connector.tokens.verify()
    peer.slow_next(1.0, endpoint="template")

    with pytest.raises(RetryableDeliveryError, match="ReadTimeout"):
        await connector.send(outgoing(library))


async def test_unreachable_wechat_is_retryable(library, start_peer, connect) -> None:
    peer = start_peer()
    connector = connect(peer)
    peer.stop()

    with pytest.raises(RetryableDeliveryError, match="ConnectError"):
        await connector.send(outgoing(library))


# --- the customer-service window --------------------------------------------------------


@pytest.mark.parametrize("hours", [48, 49, None])
async def test_closed_window_refuses_before_calling_wechat(library, peer, connect, hours) -> None:
    async def last_interaction(contact_id: str) -> datetime | None:
        return None if hours is None else NOW - timedelta(hours=hours)

    connector = connect(peer, last_interaction=last_interaction)

    with pytest.raises(PermanentDeliveryError) as caught:
        await connector.send(outgoing(library, TEXT_ITEM))

    assert caught.value.code == WINDOW_CLOSED
    assert "template message" in caught.value.message
    assert peer.send_calls() == 0
    assert peer.token_requests == 0


async def test_template_messages_ignore_the_window(library, peer, connect) -> None:
    asked: list[str] = []

    async def last_interaction(contact_id: str) -> datetime | None:
        asked.append(contact_id)
        return None

    await connect(peer, last_interaction=last_interaction).send(outgoing(library))

    assert asked == []
    assert len(peer.accepted) == 1


async def test_failing_window_hook_is_retryable(library, peer, connect) -> None:
    async def last_interaction(contact_id: str) -> datetime | None:
        raise OSError("database is away")

    with pytest.raises(RetryableDeliveryError, match="last WeChat interaction"):
        await connect(peer, last_interaction=last_interaction).send(outgoing(library, TEXT_ITEM))
    assert peer.send_calls() == 0


def test_window_open() -> None:
    assert window_open(NOW - timedelta(hours=47, minutes=59), NOW)
    assert not window_open(NOW - timedelta(hours=48), NOW)
    assert not window_open(None, NOW)
    assert window_open(datetime(2026, 3, 1, 12, 0), NOW)  # naive is UTC
    assert not window_open(NOW - timedelta(hours=2), NOW, window=timedelta(hours=1))


# --- bad input -------------------------------------------------------------------------


async def test_message_rendered_for_email_is_refused(library, peer, connect) -> None:
    message = outgoing(library, channel="email")

    with pytest.raises(PermanentDeliveryError) as caught:
        await connect(peer).send(message)

    assert caught.value.code == BAD_MESSAGE
    assert "rendered['wechat'] is missing" in caught.value.message
    assert "channel='wechat'" in caught.value.message
    assert peer.send_calls() == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda w: w.pop("template_id"), "['template_id']"),
        (lambda w: w.update(data={}), "['data']"),
        (lambda w: w.update(data={"first": "no value object"}), "['data']['first']"),
        (lambda w: w.update(msgtype="video"), "['msgtype']"),
    ],
)
async def test_malformed_wechat_body_names_the_field(library, peer, connect, change, field) -> None:
    message = outgoing(library)
    wechat = dict(message.rendered["wechat"])
    change(wechat)
    broken = OutgoingMessage(
        channel="wechat",
        to=message.to,
        idempotency_key=message.idempotency_key,
        contact_id=message.contact_id,
        rendered={**message.rendered, "wechat": wechat},
    )

    with pytest.raises(PermanentDeliveryError) as caught:
        await connect(peer).send(broken)

    assert caught.value.code == BAD_MESSAGE
    assert f"rendered['wechat']{field}" in caught.value.message
    assert peer.send_calls() == 0


async def test_missing_openid_is_refused(library, peer, connect) -> None:
    message = outgoing(library)
    no_openid = OutgoingMessage(
        channel="wechat",
        to="",
        idempotency_key=message.idempotency_key,
        contact_id=message.contact_id,
        rendered=message.rendered,
    )

    with pytest.raises(PermanentDeliveryError, match="wechat_openid"):
        await connect(peer).send(no_openid)


# --- plumbing --------------------------------------------------------------------------


async def test_rate_limiter_is_acquired_before_each_api_call(library, peer, connect) -> None:
    limiter = CountingLimiter()
    connector = connect(peer, limiter=limiter)

    await connector.send(outgoing(library))
    peer.expire_tokens()
    await connector.send(outgoing(library))

    assert limiter.acquired == peer.send_calls() == 3


async def test_aclose_closes_only_its_own_client(peer) -> None:
    config = WeChatConfig(appid=peer.appid, secret=peer.secret, api_base=peer.url)
    async with httpx.AsyncClient() as shared:
        borrowing = WeChatConnector(config, client=shared)
        await borrowing.aclose()
        assert not shared.is_closed
    owning = WeChatConnector(config)
    await owning.aclose()
    assert owning._client.is_closed


def test_config_repr_hides_the_secret() -> None:
    assert "s3cret" not in repr(WeChatConfig(appid="wx1", secret="s3cret"))


# --- parsing alone (MockTransport) -----------------------------------------------------


def mock_connector(
    handler: Callable[[httpx.Request], httpx.Response], **options: Any
) -> WeChatConnector:
    config = WeChatConfig(appid="wx1", secret="s", api_base="https://api.example")
    return WeChatConnector(config, transport=httpx.MockTransport(handler), **options)


def token_or(send: Callable[[httpx.Request], httpx.Response]):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/cgi-bin/stable_token":
            return httpx.Response(200, json={"access_token": "T1", "expires_in": 7200})
        return send(request)

    return handler


async def test_request_carries_token_and_template_body(library) -> None:
    seen: list[httpx.Request] = []

    def send(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"errcode": 0, "errmsg": "ok", "msgid": 42})

    connector = mock_connector(token_or(send))
    result = await connector.send(outgoing(library, key="key-1"))
    await connector.aclose()

    [request] = seen
    assert request.url.path == "/cgi-bin/message/template/send"
    assert request.url.params["access_token"] == "T1"
    body = httpx.Response(200, content=request.content).json()
    assert set(body) == {"touser", "template_id", "data", "url", "client_msg_id"}
    assert result.provider_message_id == "42"


@pytest.mark.parametrize(
    ("response", "error_type", "detail"),
    [
        (httpx.Response(200, text="<html>gateway</html>"), RetryableDeliveryError, "without JSON"),
        (httpx.Response(404), PermanentDeliveryError, "HTTP 404"),
        (httpx.Response(503), RetryableDeliveryError, "HTTP 503"),
        (httpx.Response(200, json={"errcode": "x"}), RetryableDeliveryError, "errcode 'x'"),
    ],
)
async def test_odd_answers_are_classified(library, response, error_type, detail) -> None:
    connector = mock_connector(token_or(lambda request: response))

    with pytest.raises(error_type, match=detail):
        await connector.send(outgoing(library))
    await connector.aclose()


async def test_http_429_passes_retry_after_on(library) -> None:
    connector = mock_connector(
        token_or(lambda request: httpx.Response(429, headers={"Retry-After": "7"}))
    )

    with pytest.raises(RetryableDeliveryError) as caught:
        await connector.send(outgoing(library))
    await connector.aclose()

    assert caught.value.retry_after == timedelta(seconds=7)


async def test_token_answer_without_expiry_is_retryable() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"access_token": "T"}))
    async with httpx.AsyncClient(transport=transport) as client:
        tokens = AccessTokenService("wx1", "s", client=client, api_base="https://api.example")
        with pytest.raises(RetryableDeliveryError, match="expires_in"):
            await tokens.token()


async def test_token_is_renewed_at_the_margin_on_the_clock() -> None:
    clock = FakeClock()
    issued = itertools.count(1)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": f"T{next(issued)}", "expires_in": 7200})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        tokens = AccessTokenService("wx1", "s", client=client, clock=clock)
        assert await tokens.token() == "T1"
        clock.advance(7200 - 241)
        assert await tokens.token() == "T1"
        clock.advance(2)  # four minutes before the end
        assert await tokens.token() == "T2"
        assert tokens.requests == 2


async def test_concurrent_renewals_share_one_request() -> None:
    clock = FakeClock()
    issued = itertools.count(1)

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)  # in flight while the others arrive
        return httpx.Response(200, json={"access_token": f"T{next(issued)}", "expires_in": 7200})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        tokens = AccessTokenService("wx1", "s", client=client, clock=clock)
        first = await asyncio.gather(*(tokens.token() for _ in range(200)))
        clock.advance(7200)
        expired = await asyncio.gather(*(tokens.token() for _ in range(200)))
        refused = await asyncio.gather(*(tokens.replace("T2") for _ in range(200)))
        stale = await tokens.replace("T1")  # already replaced: no request

    assert set(first) == {"T1"}
    assert set(expired) == {"T2"}
    assert set(refused) == {"T3"}
    assert stale == "T3"
    assert tokens.requests == 3


def test_quota_resets_at_midnight_in_beijing() -> None:
    assert until_quota_reset(datetime(2026, 3, 1, 15, 30, tzinfo=UTC)) == timedelta(minutes=31)
    assert until_quota_reset(datetime(2026, 3, 1, 16, 0, tzinfo=UTC)) == timedelta(
        days=1, minutes=1
    )


# --- helpers ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingLimiter(RateLimiter):
    def __init__(self) -> None:
        super().__init__(None)
        self.acquired = 0

    async def acquire(self) -> None:
        self.acquired += 1
        await super().acquire()


async def send_until_accepted(connector: WeChatConnector, message: OutgoingMessage) -> int:
    """Send as the delivery activity's retries would (without the waits); count retries."""
    retries = 0
    while True:
        try:
            await connector.send(message)
            return retries
        except RetryableDeliveryError:
            retries += 1
