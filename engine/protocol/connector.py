"""The connector protocol and its one error tree.

A connector sends one rendered message on one channel and answers with a typed result;
the delivery activity is its only caller. Errors are classified once, in the connector:

    DeliveryError (StagecoachError)
     +-- RetryableDeliveryError   timeouts, 429, 5xx, an expired token; retry (after a delay)
     +-- PermanentDeliveryError   invalid address, contract errors; never retried, the
     |                            journey takes its failure branch
     +-- ConsentRevoked           the recipient withdrew this channel; suppress future sends

The delivery activity maps them to Temporal: retryable becomes an activity retry (with the
suggested delay), permanent and consent-revoked become non-retryable ApplicationErrors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol, runtime_checkable

from stagecoach.engine.domain.errors import StagecoachError


class DeliveryError(StagecoachError):
    """A send did not succeed."""

    def __init__(self, message: str, *, fix: str = "see the connector's log") -> None:
        super().__init__(message, fix=fix)


class RetryableDeliveryError(DeliveryError):
    """Try again; ``retry_after`` is the provider's hint, when it gave one."""

    def __init__(self, message: str, *, retry_after: timedelta | None = None) -> None:
        super().__init__(message, fix="nothing: the send is retried")
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Will never succeed as sent; ``code`` is the provider's classification."""

    def __init__(self, message: str, *, code: str = "permanent") -> None:
        super().__init__(message, fix="correct the address or the content")
        self.code = code


class ConsentRevoked(DeliveryError):
    """The recipient unsubscribed or unfollowed: the channel is closed for them."""

    def __init__(self, message: str, *, channel: str) -> None:
        super().__init__(message, fix="nothing: the channel stays closed until they return")
        self.channel = channel


@dataclass(frozen=True)
class OutgoingMessage:
    """What a connector sends: the rendered message plus its envelope."""

    channel: str
    to: str
    idempotency_key: str
    contact_id: str
    rendered: Mapping[str, Any]
    """The content library's RenderedMessage.to_dict(), or a hand-off payload."""


@dataclass(frozen=True)
class SendResult:
    """A connector's answer for an accepted message."""

    provider_message_id: str
    status: str = "accepted"
    """``accepted`` (delivered to the provider) or ``queued`` (the provider will try)."""
    response: Mapping[str, Any] = field(default_factory=dict)
    duplicate: bool = False
    """The provider had already accepted this idempotency key: nothing new was sent."""


@runtime_checkable
class Connector(Protocol):
    """One channel's way out. Implementations live in ``connectors/``."""

    channel: str

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Send ``message``; raise a DeliveryError subclass when it does not go."""
        ...


PointOfNoReturn = Callable[[str], Awaitable[None]]
"""Called by a connector with the message's provider id at the last moment it can still
take the message back; the send goes on only once the awaitable returns."""


@runtime_checkable
class CommittingConnector(Connector, Protocol):
    """A connector with no idempotency key at the provider, but a point of no return.

    SMTP is one: a server may deliver only a message whose end of data it received (RFC
    5321 section 4.1.1.4), so until the final dot is written the message can still be
    taken back by closing the connection. Such a connector calls ``commit`` just before
    that write, and the caller records the message as sent there: a caller killed before
    the record leaves a message the server discards, one killed after it leaves a record,
    so a retry never sends a second copy. What remains is a failure after the dot (a
    refusal, a connection lost before the reply): ``send`` raises as usual and the caller
    corrects its record.
    """

    commits_before_end_of_data: bool

    async def send(
        self, message: OutgoingMessage, *, commit: PointOfNoReturn | None = None
    ) -> SendResult:
        """Send ``message``, awaiting ``commit`` at the point of no return (if given)."""
        ...
