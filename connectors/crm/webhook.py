"""The webhook connector: hand a message to any HTTPS endpoint as signed JSON.

What a receiver gets
--------------------
One ``POST`` per message to the configured URL, with a JSON body::

    {"idempotency_key": "...", "channel": "crm", "to": "sales",
     "contact_id": "...", "data": {...the rendered message or hand-off payload...}}

and these headers:

``Content-Type: application/json``
``Idempotency-Key: <key>``
    The same value as ``idempotency_key`` in the body. Every retry of one message
    carries the same key: store it, and answer a key you have already accepted with a
    2xx or ``409 Conflict`` without acting on it again.
``Stagecoach-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]``
    ``v1`` is ``HMAC-SHA256(secret, f"{t}.".encode() + raw_body)`` as lowercase hex.
    ``t`` is the time of this attempt, so a retry is signed afresh. During a secret
    rotation there is one ``v1`` per configured secret (the new one first).

How a receiver verifies
-----------------------
1. Split the header on ``,``; take ``t`` and every ``v1``.
2. Reject when ``|now - t|`` exceeds the tolerance (five minutes): an old, captured
   request cannot be replayed later.
3. Compute the HMAC over ``t``, a dot and the **raw** body bytes as received (not
   re-serialised JSON) and compare it with each ``v1`` in constant time
   (``hmac.compare_digest``); accept when one matches.

:func:`verify_signature` does exactly this, and ``docs/webhooks.md`` has a standalone
snippet for receivers that do not install Stagecoach.

How answers are classified
--------------------------
==========================  ===========================================================
2xx                         sent; ``provider_message_id`` is the response's JSON ``id``
                            when present, else derived from the key; 202 is "queued"
409                         the receiver already had this key: ``duplicate=True``
                            (also a 2xx whose JSON says ``"duplicate": true``)
408, 429, 5xx               :class:`RetryableDeliveryError`, with ``Retry-After`` as the
                            ``retry_after`` hint when the receiver sent one
timeout, refused, reset     :class:`RetryableDeliveryError`
other 3xx and 4xx           :class:`PermanentDeliveryError` with ``code="http_<status>"``
==========================  ===========================================================

Retries are the activity's job, not the connector's: one ``send`` is one HTTP attempt.
The hand-off activity should retry for hours, because a receiver may be down for a
deploy or an outage::

    RetryPolicy(
        initial_interval=timedelta(seconds=10),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=30),
        non_retryable_error_types=["PermanentDeliveryError", "ConsentRevoked"],
    )
    # with schedule_to_close_timeout=timedelta(hours=12) and a start_to_close_timeout
    # a little above the connector's timeout (e.g. 60 s)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

import httpx
import structlog

from stagecoach.connectors._http import (
    build_client,
    parse_retry_after,
    response_json,
    transport_error,
)
from stagecoach.connectors.ratelimit import RateLimiter
from stagecoach.engine.domain.errors import ConfigurationError, StagecoachError
from stagecoach.engine.protocol.connector import (
    OutgoingMessage,
    PermanentDeliveryError,
    RetryableDeliveryError,
    SendResult,
)

SIGNATURE_HEADER = "Stagecoach-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
DEFAULT_TOLERANCE = timedelta(minutes=5)
USER_AGENT = "Stagecoach-Webhook/1"

log = structlog.get_logger(__name__)

Secret = str | bytes
Secrets = Secret | Sequence[Secret]


class InvalidSignature(StagecoachError):
    """A webhook request's signature does not prove it came from us, unaltered, lately."""

    def __init__(self, message: str) -> None:
        super().__init__(
            message,
            fix="check that the receiver's secret matches STAGECOACH_WEBHOOK_SECRET, that "
            "it verifies the raw body, and that both clocks are right",
        )


# --- signing ------------------------------------------------------------------------


def _secret_list(secrets: Secrets) -> list[bytes]:
    items: Sequence[Secret] = [secrets] if isinstance(secrets, str | bytes) else secrets
    keys = [s.encode() if isinstance(s, str) else bytes(s) for s in items]
    if not keys or not all(keys):
        raise ConfigurationError(
            "a webhook secret is empty",
            fix="set STAGECOACH_WEBHOOK_SECRET to a long random value (e.g. "
            "'python -c \"import secrets; print(secrets.token_hex(32))\"')",
        )
    return keys


def compute_signature(secret: Secret, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``f"{timestamp}."`` followed by the raw ``body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secrets: Secrets, body: bytes, *, timestamp: int) -> str:
    """The ``Stagecoach-Signature`` value for ``body``: one ``v1`` per secret, in order."""
    parts = [f"t={timestamp}"]
    parts += [f"v1={compute_signature(key, timestamp, body)}" for key in _secret_list(secrets)]
    return ",".join(parts)


def verify_signature(
    secret: Secrets,
    header: str | None,
    body: bytes | str,
    *,
    tolerance: timedelta = DEFAULT_TOLERANCE,
    now: datetime | float | None = None,
) -> datetime:
    """Check a ``Stagecoach-Signature`` header against the raw request body.

    Args:
        secret: The shared secret, or several while rotating: the request is accepted
            when any ``v1`` in the header matches any of them.
        header: The ``Stagecoach-Signature`` header as received.
        body: The raw request body, exactly as received.
        tolerance: How far the signed timestamp may be from ``now``, either way.
        now: The current time (a datetime or Unix seconds); the system clock by default.

    Returns:
        The signed timestamp, as an aware UTC datetime.

    Raises:
        InvalidSignature: the header is missing or malformed, the timestamp is outside
            the tolerance, or no signature matches (wrong secret or altered body).
    """
    if not header:
        raise InvalidSignature(f"the {SIGNATURE_HEADER} header is missing")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise InvalidSignature(f"malformed {SIGNATURE_HEADER} element {part.strip()!r}")
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise InvalidSignature(f"the signed timestamp {value!r} is not a number") from None
        elif name == "v1":
            candidates.append(value.strip().lower())
        # Unknown schemes (a future v2) are ignored, so receivers keep working.
    if timestamp is None:
        raise InvalidSignature(f"the {SIGNATURE_HEADER} header has no timestamp (t=)")
    if not candidates:
        raise InvalidSignature(f"the {SIGNATURE_HEADER} header has no v1 signature")
    current = (
        time.time() if now is None else now.timestamp() if isinstance(now, datetime) else float(now)
    )
    age = current - timestamp
    if abs(age) > tolerance.total_seconds():
        raise InvalidSignature(
            f"the signature is {abs(age):.0f} s {'old' if age > 0 else 'in the future'}, "
            f"beyond the {tolerance.total_seconds():.0f} s tolerance"
        )
    raw = body.encode() if isinstance(body, str) else body
    for key in _secret_list(secret):
        expected = compute_signature(key, timestamp, raw)
        if any(hmac.compare_digest(expected, candidate) for candidate in candidates):
            return datetime.fromtimestamp(timestamp, UTC)
    raise InvalidSignature("no signature matches: wrong secret, or the body was altered")


# --- the connector ------------------------------------------------------------------


class WebhookConnector:
    """POSTs each message as signed JSON to one URL. One pooled client per connector.

    Args:
        url: The receiver's endpoint (``http`` or ``https``).
        secret: The signing secret; several while rotating (the new one first).
        channel: The channel this connector serves (``crm`` for hand-offs).
        timeout: Seconds for connecting, and for each read and write.
        limiter: Acquired before every request, shared by concurrent sends.
        headers: Extra headers for every request (e.g. a receiver's API key).
        client: A client to use instead of building one; the caller closes it.
        transport: The transport of the built client (``httpx.MockTransport`` in tests).
        clock: Unix seconds for the signature timestamp.
    """

    def __init__(
        self,
        url: str,
        secret: Secrets,
        *,
        channel: str = "crm",
        timeout: float = 10.0,
        limiter: RateLimiter | None = None,
        headers: Mapping[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigurationError(
                f"webhook URL {url!r} is not an http(s) URL",
                fix="set STAGECOACH_WEBHOOK_URL to the receiver's full URL, "
                "e.g. https://hooks.example.com/stagecoach",
            )
        self.url = url
        self.channel = channel
        self._secrets = _secret_list(secret)
        self._limiter = limiter
        self._clock = clock
        self._headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self._client, self._owns_client = build_client(
            client=client, transport=transport, timeout=timeout
        )

    def __repr__(self) -> str:
        return f"WebhookConnector(url={self.url!r}, channel={self.channel!r})"

    @staticmethod
    def body_for(message: OutgoingMessage) -> bytes:
        """The exact bytes sent for ``message``: the same for every attempt."""
        envelope = {
            "idempotency_key": message.idempotency_key,
            "channel": message.channel,
            "to": message.to,
            "contact_id": message.contact_id,
            "data": dict(message.rendered),
        }
        return json.dumps(
            envelope, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str
        ).encode()

    async def send(self, message: OutgoingMessage) -> SendResult:
        """POST ``message`` once; classify the answer (see the module docstring)."""
        body = self.body_for(message)
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: message.idempotency_key,
            SIGNATURE_HEADER: sign(self._secrets, body, timestamp=int(self._clock())),
        }
        if self._limiter is not None:
            await self._limiter.acquire()
        try:
            response = await self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise transport_error(exc, peer=f"webhook {self.url}") from exc
        result = self.classify(response, message.idempotency_key)
        log.info(
            "webhook.sent",
            contact_id=message.contact_id,
            status_code=response.status_code,
            duplicate=result.duplicate,
        )
        return result

    def classify(self, response: httpx.Response, key: str) -> SendResult:
        """Map one HTTP answer to a result or a delivery error."""
        status = response.status_code
        data = response_json(response)
        provider_id = data.get("id")
        if not isinstance(provider_id, str | int) or isinstance(provider_id, bool):
            provider_id = "webhook-" + hashlib.sha256(key.encode()).hexdigest()[:32]
        if 200 <= status < 300 and data.get("duplicate") is True:
            return SendResult(provider_message_id=str(provider_id), response=data, duplicate=True)
        if 200 <= status < 300:
            return SendResult(
                provider_message_id=str(provider_id),
                status="queued" if status == 202 else "accepted",
                response=data,
            )
        if status == 409:
            return SendResult(provider_message_id=str(provider_id), response=data, duplicate=True)
        detail = _snippet(response)
        if status in (408, 429) or status >= 500:
            raise RetryableDeliveryError(
                f"webhook {self.url} answered {status}{detail}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        raise PermanentDeliveryError(
            f"webhook {self.url} refused the message with {status}{detail}",
            code=f"http_{status}",
        )

    async def aclose(self) -> None:
        """Close the pooled client, if this connector built it."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _snippet(response: httpx.Response, limit: int = 200) -> str:
    text = response.text.strip().replace("\n", " ")
    if not text:
        return ""
    return ": " + (text[:limit] + "..." if len(text) > limit else text)
