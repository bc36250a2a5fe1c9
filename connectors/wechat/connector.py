"""The WeChat Official Account connector: template and customer-service messages.

``OutgoingMessage.to`` is the contact's openid and ``rendered["wechat"]`` the API body
without its recipient, as the content library renders it: a template message
(``template_id``, ``data``, optional ``url`` and ``miniprogram``) or a customer-service
message (``msgtype`` ``text`` or ``news``). One worker builds one connector (one pooled
``httpx.AsyncClient``) and one ``AccessTokenService`` per app, and closes the connector
with ``aclose()`` on shutdown::

    connector = WeChatConnector(
        WeChatConfig(appid=..., secret=...),
        limiter=RateLimiter(20),
        last_interaction=latest_wechat_interaction,  # async (contact_id) -> datetime | None
    )

Customer-service messages may only be sent within 48 hours of the contact's last
interaction with the Official Account (a message, a menu click, a follow, a QR scan).
The connector asks the ``last_interaction`` hook before each one and, when the window is
closed, raises ``PermanentDeliveryError(code="wechat_window_closed")`` without calling
WeChat. Workflows can decide earlier with the pure ``window_open()``. Without a hook the
connector cannot tell and leaves the decision to WeChat (errcode 45015 below).

How WeChat's answers are classified (``errcode`` in the JSON body of an HTTP 200):

    errcode / failure            meaning                          raised
    ---------------------------  -------------------------------  ---------------------------
    0                            accepted                         SendResult
    40001, 40014, 42001          token invalid or expired         renew the token (one
                                                                  request for all sends),
                                                                  send once more; then
                                                                  RetryableDeliveryError
    -1                           system busy                      Retryable, after 3 s
    45011                        per-minute API limit             Retryable, after 60 s
    45009                        daily API quota used up          Retryable, after the next
                                                                  midnight Beijing time
    40003                        openid invalid for this account  Permanent wechat_40003
    48001                        API not authorised for account   Permanent wechat_48001
    50002                        recipient's account restricted   Permanent wechat_50002
    43004                        recipient does not follow        ConsentRevoked("wechat")
    45015                        outside the 48-hour window       ConsentRevoked("wechat"),
                                                                  until the next interaction
    any other errcode            as errmsg says                   Permanent wechat_<errcode>,
                                                                  errmsg in the message
    (not sent) window closed     last interaction > 48 h ago      Permanent wechat_window_closed
    (not sent) bad rendering     not a WeChat body, no openid     Permanent wechat_bad_message
    HTTP 5xx, 408, 429           provider trouble                 Retryable
    other HTTP 4xx               wrong endpoint or proxy          Permanent wechat_http_<status>
    timeout, connection error    network                          Retryable
    token: 40013, 40125, 40164   wrong appid, AppSecret, IP (or   WeChatCredentialsRejected
    (or another errcode)         another account problem)         (Retryable, every 5 min,
                                                                  its ``fix`` names the setting)
    token: -1, HTTP, network     token endpoint trouble           Retryable

Exactly once: WeChat has no idempotency key for customer-service messages. Exactly-once
delivery rests on the delivery activity's ledger, which records the idempotency key as
``sending`` before it calls the connector and never sends a key twice once it is ``sent``.
The connector itself re-sends only when WeChat provably did not accept (a refused token).
Template messages also carry ``client_msg_id`` (a digest of the idempotency key), with
which WeChat drops a repeat to the same openid within about ten minutes. A retry after a
timeout, when WeChat may have accepted the message, can still duplicate a
customer-service message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog

from stagecoach.connectors.ratelimit import RateLimiter
from stagecoach.connectors.wechat.errors import (
    BAD_MESSAGE,
    TOKEN_REJECTED,
    WINDOW_CLOSED,
    classify,
)
from stagecoach.connectors.wechat.tokens import DEFAULT_API_BASE, AccessTokenService
from stagecoach.engine.protocol.connector import (
    OutgoingMessage,
    PermanentDeliveryError,
    RetryableDeliveryError,
    SendResult,
)

CUSTOMER_SERVICE_WINDOW = timedelta(hours=48)
"""How long after a contact's last interaction WeChat accepts customer-service messages."""

TEMPLATE_PATH = "/cgi-bin/message/template/send"
CUSTOM_PATH = "/cgi-bin/message/custom/send"
CUSTOM_MSGTYPES = ("text", "news")
RETRYABLE_HTTP = frozenset({408, 429})

LastInteraction = Callable[[str], Awaitable[datetime | None]]
"""``async (contact_id) -> datetime | None``: when the contact last interacted with the
Official Account (sent a message, clicked a menu, followed, scanned a QR code); ``None``
when never. Naive datetimes are taken as UTC."""

log = structlog.get_logger("stagecoach.connectors.wechat")


def window_open(
    last_interaction: datetime | None,
    now: datetime,
    window: timedelta = CUSTOMER_SERVICE_WINDOW,
) -> bool:
    """Whether a customer-service message may go to a contact now.

    Pure, so workflow code can pick a template message or another channel before sending.

    Args:
        last_interaction: The contact's last interaction, or ``None`` if they never had one.
        now: The current time (``workflow.now()`` in workflows).
        window: WeChat's window; 48 hours.
    """
    if last_interaction is None:
        return False
    return _aware(now) - _aware(last_interaction) < window


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class WeChatConfig:
    """One Official Account's settings.

    Attributes:
        appid: The AppID (``STAGECOACH_WECHAT_APPID``).
        secret: The AppSecret (``STAGECOACH_WECHAT_SECRET``); kept out of ``repr``.
        api_base: WeChat's API origin (``STAGECOACH_WECHAT_API_BASE``); a local peer in tests.
        timeout: Seconds per HTTP request.
        window: The customer-service window.
    """

    appid: str
    secret: str = field(repr=False)
    api_base: str = DEFAULT_API_BASE
    timeout: float = 10.0
    window: timedelta = CUSTOMER_SERVICE_WINDOW


class WeChatConnector:
    """Sends rendered WeChat messages to openids through the Official Account API.

    Args:
        config: The app's settings.
        client: A pooled HTTP client to use (not closed by ``aclose``); default: one of
            our own, built with ``transport`` when given.
        transport: The HTTP transport of our own client (``httpx.MockTransport`` in tests).
        tokens: The app's shared token service; default: one on this connector's client.
        limiter: Acquired before each message API call.
        last_interaction: The hook that dates a contact's last interaction, consulted for
            customer-service messages (see ``LastInteraction``).
        now: The wall clock, for the window and the daily-quota reset.
    """

    channel = "wechat"

    def __init__(
        self,
        config: WeChatConfig,
        *,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        tokens: AccessTokenService | None = None,
        limiter: RateLimiter | None = None,
        last_interaction: LastInteraction | None = None,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.config = config
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(config.timeout),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        )
        self.tokens = tokens or AccessTokenService(
            config.appid, config.secret, client=self._client, api_base=config.api_base
        )
        self._limiter = limiter
        self._last_interaction = last_interaction
        self._now = now
        self._base = config.api_base.rstrip("/")

    async def aclose(self) -> None:
        """Close the HTTP client, if it is ours."""
        if self._owns_client:
            await self._client.aclose()

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Send one template or customer-service message.

        Raises:
            RetryableDeliveryError: Try again later (busy, quota, network, token trouble).
            PermanentDeliveryError: Never deliverable as rendered; ``code`` says why
                (``wechat_window_closed``, ``wechat_bad_message``, ``wechat_<errcode>``).
            ConsentRevoked: The contact unfollowed or is outside the window (43004, 45015).
        """
        body, path = _request_body(message)
        if path == CUSTOM_PATH:
            await self._check_window(message)
        token = await self.tokens.token()
        data = await self._post(path, token, body)
        errcode = errcode_of(data)
        if errcode in TOKEN_REJECTED:
            token = await self.tokens.replace(token)
            data = await self._post(path, token, body)
            errcode = errcode_of(data)
            if errcode in TOKEN_REJECTED:
                raise RetryableDeliveryError(
                    f"WeChat refused two access tokens in a row (errcode {errcode}: "
                    f"{data.get('errmsg', '')})"
                )
        if errcode:
            error = classify(
                errcode,
                str(data.get("errmsg", "")),
                contact_id=message.contact_id,
                now=self._now(),
            )
            log.info(
                "wechat.send_refused",
                contact_id=message.contact_id,
                errcode=errcode,
                outcome=type(error).__name__,
            )
            raise error
        msgid = data.get("msgid")
        provider_id = str(msgid) if msgid is not None else _derived_id(message.idempotency_key)
        return SendResult(
            provider_message_id=provider_id,
            status="accepted",
            response={"errcode": 0, "errmsg": str(data.get("errmsg", "ok"))},
        )

    async def _check_window(self, message: OutgoingMessage) -> None:
        if self._last_interaction is None:
            return
        try:
            last = await self._last_interaction(message.contact_id)
        except Exception as exc:
            raise RetryableDeliveryError(
                f"could not read contact {message.contact_id}'s last WeChat interaction: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if window_open(last, self._now(), self.config.window):
            return
        hours = round(self.config.window.total_seconds() / 3600)
        since = (
            "never interacted"
            if last is None
            else f"last interacted {_aware(last).astimezone(UTC):%Y-%m-%d %H:%M} UTC"
        )
        raise PermanentDeliveryError(
            f"customer-service message not sent: contact {message.contact_id} {since}, "
            f"outside WeChat's {hours}-hour window; send a template message or use another "
            "channel, or wait for their next interaction",
            code=WINDOW_CLOSED,
        )

    async def _post(self, path: str, token: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await post_api(self._client, self._base, path, token, body, self._limiter)


async def post_api(
    client: httpx.AsyncClient,
    base: str,
    path: str,
    token: str,
    body: Mapping[str, Any],
    limiter: RateLimiter | None = None,
) -> dict[str, Any]:
    """POST one Official Account API call and return its JSON object, the transport's
    failures classified (unreachable, 5xx, 408 and 429 retryable, with ``Retry-After``;
    other non-200 permanent). Shared by this connector and the mass sender."""
    if limiter is not None:
        await limiter.acquire()
    try:
        response = await client.post(base + path, params={"access_token": token}, json=body)
    except httpx.HTTPError as exc:
        # Never the exception's URL: it carries the access token.
        raise RetryableDeliveryError(
            f"could not reach WeChat: {type(exc).__name__}: {exc}"
        ) from exc
    status = response.status_code
    if status >= 500 or status in RETRYABLE_HTTP:
        raise RetryableDeliveryError(
            f"WeChat answered HTTP {status}", retry_after=_retry_after(response)
        )
    if status != 200:
        raise PermanentDeliveryError(
            f"WeChat answered HTTP {status} at {path}; check STAGECOACH_WECHAT_API_BASE",
            code=f"wechat_http_{status}",
        )
    try:
        data: Any = response.json()
    except ValueError as exc:
        raise RetryableDeliveryError("WeChat answered HTTP 200 without JSON") from exc
    if not isinstance(data, dict):
        raise RetryableDeliveryError("WeChat answered HTTP 200 without a JSON object")
    return data


def errcode_of(data: Mapping[str, Any]) -> int:
    """The answer's ``errcode`` (0 when absent); an unreadable one is retryable."""
    raw = data.get("errcode", 0)
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise RetryableDeliveryError(f"WeChat answered with errcode {raw!r}") from None


def _retry_after(response: httpx.Response) -> timedelta | None:
    raw = response.headers.get("retry-after", "")
    return timedelta(seconds=int(raw)) if raw.isdigit() else None


def _derived_id(idempotency_key: str) -> str:
    return "wechat-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def _client_msg_id(idempotency_key: str) -> str:
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def _bad(message: OutgoingMessage, what: str, fix: str) -> PermanentDeliveryError:
    content = message.rendered.get("content_id", "?")
    return PermanentDeliveryError(
        f"cannot send {content} to contact {message.contact_id} on WeChat: {what}; {fix}",
        code=BAD_MESSAGE,
    )


def _request_body(message: OutgoingMessage) -> tuple[dict[str, Any], str]:
    """The API body (with ``touser``) and the endpoint for ``message``.

    Raises:
        PermanentDeliveryError: ``wechat_bad_message``, naming the field and the fix.
    """
    rendered = message.rendered
    if not message.to or not isinstance(message.to, str):
        raise _bad(
            message, "no openid (OutgoingMessage.to is empty)", "set the contact's wechat_openid"
        )
    channel = rendered.get("channel")
    wechat = rendered.get("wechat")
    if channel not in (None, "wechat") or wechat is None:
        raise _bad(
            message,
            f"rendered['wechat'] is missing (rendered for {channel or 'another channel'})",
            "render the item with channel='wechat'",
        )
    if not isinstance(wechat, Mapping):
        raise _bad(message, "rendered['wechat'] is not an object", "render with channel='wechat'")
    if "msgtype" in wechat:
        return _custom_body(message, wechat), CUSTOM_PATH
    return _template_body(message, wechat), TEMPLATE_PATH


def _template_body(message: OutgoingMessage, wechat: Mapping[str, Any]) -> dict[str, Any]:
    fix = "give the item's wechat.<locale>.template.yaml a template_id and data"
    template_id = wechat.get("template_id")
    if not isinstance(template_id, str) or not template_id.strip():
        raise _bad(message, "rendered['wechat']['template_id'] is missing", fix)
    data = wechat.get("data")
    if not isinstance(data, Mapping) or not data:
        raise _bad(message, "rendered['wechat']['data'] is missing or empty", fix)
    for key, field_value in data.items():
        if not isinstance(field_value, Mapping) or not isinstance(field_value.get("value"), str):
            raise _bad(
                message,
                f"rendered['wechat']['data'][{key!r}] is not {{'value': <text>}}",
                fix,
            )
    body: dict[str, Any] = {
        "touser": message.to,
        "template_id": template_id,
        "data": {str(k): dict(v) for k, v in data.items()},
        "client_msg_id": _client_msg_id(message.idempotency_key),
    }
    url = wechat.get("url")
    if url:
        if not isinstance(url, str):
            raise _bad(message, "rendered['wechat']['url'] is not text", fix)
        body["url"] = url
    miniprogram = wechat.get("miniprogram")
    if miniprogram:
        if not isinstance(miniprogram, Mapping) or not miniprogram.get("appid"):
            raise _bad(
                message,
                "rendered['wechat']['miniprogram'] has no appid",
                "give miniprogram an appid and a pagepath, or remove it",
            )
        body["miniprogram"] = dict(miniprogram)
    return body


def _custom_body(message: OutgoingMessage, wechat: Mapping[str, Any]) -> dict[str, Any]:
    msgtype = wechat.get("msgtype")
    fix = "write the item's wechat.<locale>.cs.yaml as msgtype text (content) or news (articles)"
    if msgtype not in CUSTOM_MSGTYPES:
        raise _bad(
            message,
            f"rendered['wechat']['msgtype'] is {msgtype!r}, not "
            f"one of {', '.join(CUSTOM_MSGTYPES)}",
            fix,
        )
    part = wechat.get(msgtype)
    if not isinstance(part, Mapping):
        raise _bad(message, f"rendered['wechat'][{msgtype!r}] is missing", fix)
    if msgtype == "text":
        content = part.get("content")
        if not isinstance(content, str) or not content.strip():
            raise _bad(message, "rendered['wechat']['text']['content'] is empty", fix)
    else:
        articles = part.get("articles")
        if not isinstance(articles, list) or not articles:
            raise _bad(message, "rendered['wechat']['news']['articles'] is missing or empty", fix)
        for index, article in enumerate(articles):
            if (
                not isinstance(article, Mapping)
                or not article.get("title")
                or not article.get("url")
            ):
                raise _bad(
                    message,
                    f"rendered['wechat']['news']['articles'][{index}] needs a title and a url",
                    fix,
                )
    return {"touser": message.to, "msgtype": msgtype, msgtype: _plain(part)}


def _plain(value: Any) -> Any:
    """A JSON-ready copy (mappings and sequences from a rendered message)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
