"""Email through Postmark's API, on the HTTP base of :mod:`stagecoach.connectors.email.http`.

Postmark (:class:`PostmarkConnector`): ``POST https://api.postmarkapp.com/email`` with the
``X-Postmark-Server-Token`` header and a JSON body of ``From``, ``To``, ``Subject``,
``TextBody``, ``HtmlBody``, ``Headers`` (name/value pairs), ``MessageStream``, ``Tag`` and
``Metadata``. Postmark answers 200 with ``ErrorCode`` 0 and a ``MessageID``; otherwise:

    HTTP 401, ErrorCode 10          bad or missing server token      retryable, 5 min
    ErrorCode 400, 401              sender signature missing or      retryable, 5 min: an
                                    unconfirmed                      operator fixes these
    ErrorCode 405, 412              not allowed to send (credits),
                                    account pending                  retryable, 5 min
    ErrorCode 406                   inactive recipient               ConsentRevoked("email")
    ErrorCode 300                   invalid email request            PermanentDeliveryError
                                                                     code="invalid_request"
    ErrorCode 402, 403, 409         invalid/incompatible/missing     PermanentDeliveryError
                                    JSON (our bug)                   code="contract"
    HTTP 429                        rate limit                       retryable, Retry-After
                                                                     or 1 min
    HTTP 500, 503, any 5xx          Postmark trouble                 retryable, 30 s
    anything else                                                    PermanentDeliveryError
                                                                     code="postmark_<code>"

ErrorCode 406 means Postmark has deactivated the address after a hard bounce, a spam
complaint or a manual suppression, and refuses every send to it until someone
reactivates it. We raise ``ConsentRevoked``: it is the one error on which the delivery
activity suppresses the address, which matches what Postmark will do with every later
send anyway; which of the three it was arrives separately through the bounce webhook
(``stagecoach.engine.domain.bounces``), which may widen the suppression (a complaint is global).

Exactly once, Postmark: Postmark has no idempotency key (its support centre says so). The
delivery ledger makes a key go out at most once per successful send. The remaining window
is a request whose response was lost (a read timeout, a reset after the body was sent):
Postmark may have accepted it. Each message therefore carries ``Metadata``
``stagecoach_key`` (the key's digest, :func:`stagecoach.engine.domain.bounces.key_digest`) and
``stagecoach_contact``; when a key's previous attempt on this connector ended that way,
the next attempt first searches Postmark's outbound messages for that metadata and
reports a duplicate instead of sending again if it finds one. A retry on another worker,
or inside Postmark's search-indexing delay, can still send a second copy; the stable
``Message-ID`` header lets mailbox providers drop it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from stagecoach.connectors.email.http import (
    CONFIG_DELAY,
    NETWORK_DELAY,
    RATE_LIMIT_DELAY,
    _HttpConnector,
    _json,
    _message_headers,
    _retry_delay,
    _Unanswered,
)
from stagecoach.connectors.email.mime import recipient_address, rendered_email
from stagecoach.connectors.ratelimit import RateLimiter
from stagecoach.engine.domain.bounces import METADATA_CONTACT, METADATA_KEY, key_digest
from stagecoach.engine.protocol.connector import (
    ConsentRevoked,
    OutgoingMessage,
    PermanentDeliveryError,
    RetryableDeliveryError,
    SendResult,
)

POSTMARK_API = "https://api.postmarkapp.com"
METADATA_CONTENT = "stagecoach_content"
_METADATA_VALUE_MAX = 80  # Postmark's limit on a metadata value

# The name it had when both HTTP providers shared a module: log queries keep working.
_log = structlog.get_logger("stagecoach.connectors.http_email")


@dataclass(frozen=True, kw_only=True)
class PostmarkConfig:
    """Postmark's email API.

    Attributes:
        server_token: The server's API token (``X-Postmark-Server-Token``).
        from_addr: The From header; its address needs a confirmed sender signature.
        message_stream: ``"outbound"`` (transactional) or a broadcast stream's id, which
            is where marketing email belongs.
        base_url: The API root (tests point it at a local peer).
        tag_with_content_id: Send the content id as Postmark's ``Tag`` (its statistics
            group by tag).
        timeout: Seconds for connecting, writing and reading each request.
        max_connections: Pooled connections (also the most requests in flight).
        rate_per_second: Requests per second (``None``: no limit).
    """

    server_token: str = field(repr=False)
    from_addr: str
    message_stream: str = "outbound"
    base_url: str = POSTMARK_API
    tag_with_content_id: bool = True
    timeout: float = 10.0
    max_connections: int = 20
    rate_per_second: float | None = None


_POSTMARK_CONFIG_CODES = {
    400: "sender signature not found",
    401: "sender signature not confirmed",
    405: "not allowed to send (account out of credits?)",
    412: "account pending approval",
}
_POSTMARK_CONTRACT_CODES = frozenset({402, 403, 409})


class PostmarkConnector(_HttpConnector):
    """Sends email through Postmark's email API (see the module docstring).

    Args:
        config: Token, sender, stream and limits.
        limiter: A rate limit shared with other connectors of this worker.
        client: A client to use instead of building one (not closed by ``close``).
        transport: A transport for the client built here.
    """

    def __init__(
        self,
        config: PostmarkConfig,
        *,
        limiter: RateLimiter | None = None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url=config.base_url,
            timeout=config.timeout,
            max_connections=config.max_connections,
            rate_per_second=config.rate_per_second,
            limiter=limiter,
            client=client,
            transport=transport,
        )
        self.config = config
        self._base = config.base_url.rstrip("/")
        # Keys whose last attempt here may have reached Postmark without an answer.
        self._unanswered: set[str] = set()

    @property
    def _auth(self) -> dict[str, str]:
        return {"X-Postmark-Server-Token": self.config.server_token, "Accept": "application/json"}

    def request_body(self, message: OutgoingMessage) -> dict[str, Any]:
        """Postmark's JSON for ``message`` (raises PermanentDeliveryError for bad input)."""
        rendered = rendered_email(message)
        body: dict[str, Any] = {
            "From": self.config.from_addr,
            "To": recipient_address(message),
            "Subject": rendered.subject,
            "Headers": [
                {"Name": name, "Value": value}
                for name, value in _message_headers(rendered, message.idempotency_key).items()
            ],
            "MessageStream": self.config.message_stream,
            "Metadata": {
                METADATA_KEY: key_digest(message.idempotency_key),
                METADATA_CONTACT: message.contact_id[:_METADATA_VALUE_MAX],
                METADATA_CONTENT: rendered.content_id[:_METADATA_VALUE_MAX],
            },
        }
        if rendered.text.strip():
            body["TextBody"] = rendered.text
        if rendered.html.strip():
            body["HtmlBody"] = rendered.html
        if self.config.tag_with_content_id:
            body["Tag"] = rendered.content_id
        return body

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Send through Postmark; see the module docstring for what each answer raises."""
        body = self.request_body(message)
        key = message.idempotency_key
        if key in self._unanswered:
            earlier = await self.find_sent(key_digest(key), body["To"])
            if earlier is not None:
                self._unanswered.discard(key)
                return SendResult(provider_message_id=earlier, status="accepted", duplicate=True)
        try:
            response = await self._request(
                "POST", f"{self._base}/email", headers=self._auth, json=body
            )
        except _Unanswered:
            self._unanswered.add(key)
            raise
        self._unanswered.discard(key)
        return interpret_postmark_response(response)

    async def find_sent(self, digest: str, recipient: str) -> str | None:
        """The MessageID of an outbound message with our key digest, if Postmark has one.

        Uses the Messages API search (``GET /messages/outbound``) filtered by recipient
        and ``metadata_stagecoach_key``. Failures of the search itself raise
        RetryableDeliveryError: without an answer we cannot tell whether to send.
        """
        response = await self._request(
            "GET",
            f"{self._base}/messages/outbound",
            headers=self._auth,
            params={
                "count": "1",
                "offset": "0",
                "recipient": recipient,
                f"metadata_{METADATA_KEY}": digest,
            },
        )
        if response.status_code != 200:
            raise RetryableDeliveryError(
                f"cannot tell whether Postmark already has this message: the search answered "
                f"HTTP {response.status_code}",
                retry_after=NETWORK_DELAY,
            )
        messages = _json(response).get("Messages") or []
        for found in messages:
            if isinstance(found, Mapping) and found.get("MessageID"):
                return str(found["MessageID"])
        return None


def interpret_postmark_response(response: httpx.Response) -> SendResult:
    """Postmark's answer to ``POST /email`` as a SendResult, or the DeliveryError it means."""
    status = response.status_code
    data = _json(response)
    raw_code = data.get("ErrorCode")
    error_code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
    text = str(data.get("Message") or response.reason_phrase)
    said = f"HTTP {status}" + (f", ErrorCode {error_code}" if error_code is not None else "")
    said += f": {text}"
    if status == 200 and error_code in (0, None) and data.get("MessageID"):
        return SendResult(
            provider_message_id=str(data["MessageID"]), status="accepted", response=data
        )
    if status == 429 or error_code == 429:
        raise RetryableDeliveryError(
            f"Postmark is rate limiting us ({said})",
            retry_after=_retry_delay(response, RATE_LIMIT_DELAY),
        )
    if status >= 500:
        raise RetryableDeliveryError(
            f"Postmark failed ({said})", retry_after=_retry_delay(response, NETWORK_DELAY)
        )
    if status == 401 or error_code == 10:
        raise RetryableDeliveryError(
            f"Postmark refused the server token ({said}); check the Postmark server token setting",
            retry_after=CONFIG_DELAY,
        )
    if error_code in _POSTMARK_CONFIG_CODES:
        raise RetryableDeliveryError(
            f"Postmark cannot send for this account: {_POSTMARK_CONFIG_CODES[error_code]} ({said})",
            retry_after=CONFIG_DELAY,
        )
    if error_code == 406:
        raise ConsentRevoked(
            f"Postmark has deactivated this recipient after a hard bounce, spam complaint or "
            f"manual suppression ({said})",
            channel="email",
        )
    if error_code == 300:
        raise PermanentDeliveryError(
            f"Postmark rejected the email as invalid ({said})", code="invalid_request"
        )
    if error_code in _POSTMARK_CONTRACT_CODES:
        raise PermanentDeliveryError(
            f"Postmark could not read our request ({said})", code="contract"
        )
    if status == 200:
        # 200 without a MessageID: Postmark took it but we cannot say under which id.
        _log.warning("postmark_accepted_without_id", response=data)
        return SendResult(provider_message_id="", status="accepted", response=data)
    raise PermanentDeliveryError(
        f"Postmark rejected the email ({said})",
        code=f"postmark_{error_code}" if error_code is not None else f"http_{status}",
    )
