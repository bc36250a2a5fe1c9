"""Email over a provider's HTTP API: the base every HTTP provider shares, and the generic
JSON provider.

Every HTTP email connector holds one pooled ``httpx.AsyncClient`` (built here, or passed in as
``client=``; ``transport=`` builds one around a test transport such as
``httpx.MockTransport``) and acquire the worker's rate limiter before each request.

Generic provider (:class:`HttpEmailConnector`), the contract a provider or an in-house
relay implements::

    POST <url>
    Authorization: Bearer <token>              (when a token is configured)
    Idempotency-Key: <the delivery's idempotency key>
    {"from", "to", "subject", "text", "html", "headers": {name: value},
     "metadata": {"contact_id", "idempotency_key", "content_id", "content_version"}}

    2xx {"id": ...}                 accepted; with "Idempotent-Replayed: true" a duplicate
    409 {"id": ...}                 the key was accepted before: a duplicate, nothing new sent
    429 + Retry-After               RetryableDeliveryError(retry_after=seconds or HTTP date)
    408, 425, 5xx                   RetryableDeliveryError (Retry-After honoured if given)
    401, 403                        RetryableDeliveryError after 5 min: the token is wrong,
                                    which an operator fixes; failing every journey meanwhile
                                    would lose the sends
    other 4xx {"error": {"code", "message"}}
        code suppressed/unsubscribed                ConsentRevoked(channel="email")
        code hard_bounce/mailbox_unknown/
             invalid_recipient                      PermanentDeliveryError, code="hard_bounce"
        code policy_rejected                        PermanentDeliveryError, code="policy_rejected"
        anything else                               PermanentDeliveryError, code=<code> or
                                                    "http_<status>"
    timeout, connection error       RetryableDeliveryError; the retry carries the same key

Exactly once, generic: the provider deduplicates on ``Idempotency-Key``, so a retry after
a lost response is answered 409 (or replayed) and reported as ``duplicate=True``.

Postmark is :mod:`stagecoach.connectors.email.postmark`, built on the same base.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Self

import httpx

from stagecoach.connectors._http import parse_retry_after
from stagecoach.connectors.email.mime import (
    IDEMPOTENCY_HEADER,
    recipient_address,
    rendered_email,
)
from stagecoach.connectors.ratelimit import RateLimiter
from stagecoach.engine.domain.bounces import key_digest
from stagecoach.engine.domain.content import RenderedMessage
from stagecoach.engine.domain.errors import ConfigurationError
from stagecoach.engine.protocol.connector import (
    ConsentRevoked,
    DeliveryError,
    OutgoingMessage,
    PermanentDeliveryError,
    RetryableDeliveryError,
    SendResult,
)

NETWORK_DELAY = timedelta(seconds=30)
RATE_LIMIT_DELAY = timedelta(minutes=1)
CONFIG_DELAY = timedelta(minutes=5)

_CONSENT_CODES = frozenset({"suppressed", "unsubscribed"})
_HARD_BOUNCE_CODES = frozenset({"hard_bounce", "mailbox_unknown", "invalid_recipient"})
# Headers the provider writes itself.
_PROVIDER_HEADERS = frozenset({"date"})


@dataclass(frozen=True, kw_only=True)
class HttpEmailConfig:
    """The generic JSON provider.

    Attributes:
        url: The send endpoint (``https://mail.example.com/v1/send``).
        from_addr: The From header.
        token: Bearer token, if the provider wants one.
        timeout: Seconds for connecting, writing and reading each request.
        max_connections: Pooled connections (also the most requests in flight).
        rate_per_second: Requests per second (``None``: no limit); a ``limiter`` passed
            to the connector takes precedence.
    """

    url: str
    from_addr: str
    token: str | None = field(default=None, repr=False)
    timeout: float = 10.0
    max_connections: int = 20
    rate_per_second: float | None = None


class _HttpConnector:
    """The pooled client, the limiter and network-error translation both connectors share."""

    channel = "email"

    def __init__(
        self,
        *,
        base_url: str,
        timeout: float,
        max_connections: int,
        rate_per_second: float | None,
        limiter: RateLimiter | None,
        client: httpx.AsyncClient | None,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        try:
            parsed = httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise ConfigurationError(
                f"email provider URL {base_url!r} is invalid: {exc}",
                fix="set a full http(s):// URL",
            ) from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigurationError(
                f"email provider URL {base_url!r} is not an http(s) URL",
                fix="set a full http(s):// URL",
            )
        self._limiter = limiter or (RateLimiter(rate_per_second) if rate_per_second else None)
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled client if this connector built it."""
        if self._owns_client:
            await self._client.aclose()

    close = aclose
    """The same as :meth:`aclose`, named like the SMTP connector's."""

    async def _request(
        self, method: str, url: str, *, headers: Mapping[str, str], **kwargs: Any
    ) -> httpx.Response:
        """One request; timeouts and connection failures become RetryableDeliveryError.

        A failure after the connection was made raises the subclass ``_Unanswered``: the
        provider may have acted on the request.
        """
        if self._limiter is not None:
            await self._limiter.acquire()
        try:
            return await self._client.request(method, url, headers=headers, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise RetryableDeliveryError(
                f"cannot reach the email provider: {_describe(exc)}", retry_after=NETWORK_DELAY
            ) from exc
        except httpx.HTTPError as exc:  # read/write timeouts, resets, undecodable answers
            raise _Unanswered(
                f"the email provider did not answer ({_describe(exc)}); it may have accepted "
                "the message",
                retry_after=NETWORK_DELAY,
            ) from exc


class _Unanswered(RetryableDeliveryError):
    """The request may have reached the provider, but no answer came back."""


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _message_headers(rendered: RenderedMessage, key: str) -> dict[str, str]:
    headers = {k: v for k, v in rendered.headers.items() if k.lower() not in _PROVIDER_HEADERS}
    headers[IDEMPOTENCY_HEADER] = key_digest(key)
    return headers


def _retry_delay(response: httpx.Response, default: timedelta) -> timedelta:
    hint = parse_retry_after(response.headers.get("Retry-After"))
    return default if hint is None else hint


# --- the generic provider -------------------------------------------------------------------


class HttpEmailConnector(_HttpConnector):
    """Sends email to a provider speaking the generic JSON contract (module docstring).

    Args:
        config: Endpoint, sender and limits.
        limiter: A rate limit shared with other connectors of this worker.
        client: A client to use instead of building one (not closed by ``close``).
        transport: A transport for the client built here (``httpx.MockTransport`` in
            unit tests).
    """

    def __init__(
        self,
        config: HttpEmailConfig,
        *,
        limiter: RateLimiter | None = None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url=config.url,
            timeout=config.timeout,
            max_connections=config.max_connections,
            rate_per_second=config.rate_per_second,
            limiter=limiter,
            client=client,
            transport=transport,
        )
        self.config = config

    def request_body(self, message: OutgoingMessage) -> dict[str, Any]:
        """The JSON body for ``message`` (raises PermanentDeliveryError for bad input)."""
        rendered = rendered_email(message)
        return {
            "from": self.config.from_addr,
            "to": recipient_address(message),
            "subject": rendered.subject,
            "text": rendered.text,
            "html": rendered.html,
            "headers": _message_headers(rendered, message.idempotency_key),
            "metadata": {
                "contact_id": message.contact_id,
                "idempotency_key": message.idempotency_key,
                "content_id": rendered.content_id,
                "content_version": rendered.content_version,
            },
        }

    async def send(self, message: OutgoingMessage) -> SendResult:
        """POST the message with its idempotency key; see the module docstring for errors."""
        body = self.request_body(message)
        headers = {"Idempotency-Key": message.idempotency_key, "Accept": "application/json"}
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        response = await self._request("POST", self.config.url, headers=headers, json=body)
        return interpret_generic_response(response)


def interpret_generic_response(response: httpx.Response) -> SendResult:
    """The generic provider's answer as a SendResult, or the DeliveryError it means."""
    status = response.status_code
    data = _json(response)
    provider_id = str(data.get("id") or data.get("message_id") or "")
    if 200 <= status < 300:
        replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
        return SendResult(
            provider_message_id=provider_id,
            status="accepted",
            response=data,
            duplicate=replayed or data.get("duplicate") is True,
        )
    if status == 409:
        return SendResult(
            provider_message_id=provider_id, status="accepted", response=data, duplicate=True
        )
    raise _generic_error(response, data)


def _generic_error(response: httpx.Response, data: Mapping[str, Any]) -> DeliveryError:
    status = response.status_code
    error = data.get("error")
    code, text = "", ""
    if isinstance(error, Mapping):
        code, text = str(error.get("code") or ""), str(error.get("message") or "")
    elif isinstance(error, str):
        code = error
    code = code or str(data.get("code") or "")
    text = text or str(data.get("message") or "") or response.reason_phrase
    said = f"HTTP {status}" + (f" {code}" if code else "") + (f": {text}" if text else "")
    if status == 429:
        return RetryableDeliveryError(
            f"the email provider is rate limiting us ({said})",
            retry_after=_retry_delay(response, RATE_LIMIT_DELAY),
        )
    if status >= 500 or status in (408, 425):
        return RetryableDeliveryError(
            f"the email provider failed ({said})", retry_after=_retry_delay(response, NETWORK_DELAY)
        )
    if status in (401, 403):
        return RetryableDeliveryError(
            f"the email provider refused our credentials ({said}); check the provider token "
            "setting",
            retry_after=CONFIG_DELAY,
        )
    if code in _CONSENT_CODES:
        return ConsentRevoked(
            f"the email provider suppresses this address ({said})", channel="email"
        )
    if code in _HARD_BOUNCE_CODES:
        return PermanentDeliveryError(
            f"the email provider says the address does not exist ({said})", code="hard_bounce"
        )
    if code == "policy_rejected":
        return PermanentDeliveryError(
            f"the email provider refused the message by policy ({said})", code="policy_rejected"
        )
    return PermanentDeliveryError(
        f"the email provider rejected the message ({said})", code=code or f"http_{status}"
    )
