"""Bounce and complaint intake: what a provider's notification does to an address.

Pure policy: no network, database or Temporal. The webhook endpoint parses the provider's
JSON with a parser here, asks a :class:`BouncePolicy` for a decision and applies it::

    notification = parse_postmark_webhook(payload)      # NotificationError names the field
    soft = recent_soft_bounce_times(notification.address)          # the caller's storage
    decision = BouncePolicy().decide(notification, recent_soft_bounces=soft)
    if decision.record_soft_bounce: remember (address, notification.occurred_at)
    if decision.suppress: scope "channel" -> a Suppression row for (decision.channel, address)
                          scope "global"  -> every channel of the contact
    if decision.event_type: an event for the contact, with decision.properties

The policy, by kind of notification:

    hard         mailbox unknown, domain gone         suppress email at once   email.bounced
    soft         mailbox full, greylisted, DNS error  suppress email when this is the
                                                      soft_limit-th in soft_window   email.bounced
    complaint    "this is spam"                       suppress globally        email.complained
    unsubscribe  the recipient opted out at the       suppress email           email.unsubscribed
                 provider
    manual       an operator suppressed it at the     suppress email           (no event)
                 provider
    policy       the receiver refused *us*: block     nothing: the address is  email.bounced
                 list, DMARC, content filter          fine, our sending is not (kind=policy)
    informational  auto-reply, address change, challenge, our own template error: nothing
    reactivated  the provider lifted its suppression: nothing automatic; a person decides
                 whether to lift ours (never for a complaint)

A notification saying the provider itself has deactivated the address (Postmark's
``Inactive``) suppresses the email channel whatever its kind: the provider refuses every
further send to it anyway.

Provider: Postmark. Its bounce webhook (``RecordType`` ``Bounce``), spam-complaint webhook
(``SpamComplaint``) and subscription-change webhook (``SubscriptionChange``, the only
one Broadcast message streams send) are parsed. Postmark classifies bounces by the
``Type`` name; ``TypeCode`` is not used (the complaint webhook reuses 512, the code of
``SpamNotification``). Our send path puts ``stagecoach_contact`` and ``stagecoach_key``
(the idempotency-key digest) into the message's ``Metadata``, which Postmark echoes back.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

Scope = Literal["channel", "global"]

METADATA_CONTACT = "stagecoach_contact"
"""Metadata key carrying the contact id (Postmark allows keys up to 20 characters)."""
METADATA_KEY = "stagecoach_key"
"""Metadata key carrying the idempotency-key digest (see ``stagecoach.connectors.email.http``)."""


def key_digest(idempotency_key: str) -> str:
    """What leaves Stagecoach in place of an idempotency key: 32 hex digits of its SHA-256.

    Email headers and provider metadata carry this instead of the key, which names the
    contact and the journey step. The content library derives the Message-ID the same
    way, so a bounce can be matched to its delivery by either.
    """
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


class BounceKind(enum.StrEnum):
    """What a notification says about an address (see the module docstring's table)."""

    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    MANUAL = "manual"
    POLICY = "policy"
    INFORMATIONAL = "informational"
    REACTIVATED = "reactivated"


class NotificationError(ValueError):
    """A webhook payload is not a notification we understand; ``field`` names the culprit."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class BounceNotification:
    """One provider notification about one address, in the provider's own terms mapped to ours.

    Attributes:
        provider: ``"postmark"``.
        kind: Our classification.
        address: The recipient address, as the provider wrote it (trimmed).
        occurred_at: When the bounce, complaint or change happened (aware).
        provider_event_id: Stable id of this notification, for dropping webhook retries.
        provider_type: The provider's own type name (``HardBounce``, ``SpamComplaint``,
            ``SubscriptionChange/ManualSuppression``...).
        provider_message_id: The provider's id of the message that bounced, if any; the
            delivery ledger stores it as ``provider_message_id``.
        provider_inactive: The provider has deactivated the address and will refuse sends.
        description: Human-readable detail (the provider's description or details).
        message_stream: The provider's stream (Postmark ``MessageStream``), if given.
        contact_id: From the message metadata, when our send put it there.
        key_digest: The idempotency-key digest from the message metadata, when present.
        metadata: All metadata the provider echoed back.
    """

    provider: str
    kind: BounceKind
    address: str
    occurred_at: datetime
    provider_event_id: str
    provider_type: str
    provider_message_id: str | None = None
    provider_inactive: bool = False
    description: str = ""
    message_stream: str | None = None
    contact_id: str | None = None
    key_digest: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BounceDecision:
    """What to do with one notification.

    Attributes:
        suppress: Stop sending to the address.
        scope: ``"channel"`` (the email address only) or ``"global"`` (every channel of
            the contact); ``None`` when nothing is suppressed.
        channel: The channel the notification is about (always ``"email"`` here).
        event_type: Event to record for the contact, or ``None``.
        reason: Short reason for the suppression row and the log (at most 64 characters).
        record_soft_bounce: Remember this notification as a soft bounce for the window.
        properties: Properties for ``event_type`` (``message_id``, ``kind``).
    """

    suppress: bool
    scope: Scope | None
    event_type: str | None
    reason: str
    channel: str = "email"
    record_soft_bounce: bool = False
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class BouncePolicy:
    """Suppression rules for bounce and complaint notifications.

    Attributes:
        soft_limit: Soft bounces within ``soft_window`` that suppress the address; the
            notification being decided counts as one.
        soft_window: How far back soft bounces count, from the notification's time.
    """

    soft_limit: int = 3
    soft_window: timedelta = timedelta(days=7)

    def __post_init__(self) -> None:
        if self.soft_limit < 1:
            raise ValueError(f"soft_limit must be at least 1, not {self.soft_limit}")
        if self.soft_window <= timedelta(0):
            raise ValueError(f"soft_window must be positive, not {self.soft_window}")

    def decide(
        self, notification: BounceNotification, recent_soft_bounces: Iterable[datetime] = ()
    ) -> BounceDecision:
        """Decide what ``notification`` does.

        Args:
            notification: The parsed notification.
            recent_soft_bounces: When earlier soft bounces for the same address happened
                (as recorded after earlier decisions with ``record_soft_bounce``). Times
                outside the window, or after the notification, are ignored.
        """
        kind = notification.kind
        properties = {"kind": kind.value}
        if notification.key_digest or notification.provider_message_id:
            properties["message_id"] = (
                notification.key_digest or notification.provider_message_id or ""
            )
        inactive = notification.provider_inactive
        if kind is BounceKind.COMPLAINT:
            return BounceDecision(
                True, "global", "email.complained", "complaint", properties=properties
            )
        if kind is BounceKind.HARD:
            return BounceDecision(
                True, "channel", "email.bounced", "hard_bounce", properties=properties
            )
        if kind is BounceKind.UNSUBSCRIBE:
            return BounceDecision(
                True, "channel", "email.unsubscribed", "unsubscribe", properties=properties
            )
        if kind is BounceKind.MANUAL:
            return BounceDecision(True, "channel", None, "provider_suppression")
        if kind is BounceKind.SOFT:
            count = 1 + self._within_window(notification.occurred_at, recent_soft_bounces)
            over = count >= self.soft_limit
            suppress = over or inactive
            if over:
                reason = f"soft_bounce_limit:{count}"
            elif inactive:
                reason = "provider_inactive"
            else:
                reason = f"soft_bounce:{count}/{self.soft_limit}"
            return BounceDecision(
                suppress,
                "channel" if suppress else None,
                "email.bounced",
                reason,
                record_soft_bounce=True,
                properties=properties,
            )
        if kind is BounceKind.POLICY:
            return BounceDecision(
                inactive,
                "channel" if inactive else None,
                "email.bounced",
                "provider_inactive" if inactive else "policy_block",
                properties=properties,
            )
        # Informational notes and reactivations change nothing, unless the provider says
        # it will refuse the address from now on.
        if inactive and kind is BounceKind.INFORMATIONAL:
            return BounceDecision(True, "channel", None, "provider_inactive")
        return BounceDecision(False, None, None, kind.value)

    def _within_window(self, at: datetime, earlier: Iterable[datetime]) -> int:
        start = at - self.soft_window
        return sum(1 for t in earlier if start < _aware(t) <= at)


# --- Postmark ------------------------------------------------------------------------------

_POSTMARK_TYPES: Mapping[str, BounceKind] = {
    "HardBounce": BounceKind.HARD,
    "BadEmailAddress": BounceKind.HARD,
    "SoftBounce": BounceKind.SOFT,
    "Transient": BounceKind.SOFT,
    "DnsError": BounceKind.SOFT,
    "Unknown": BounceKind.SOFT,
    "SpamComplaint": BounceKind.COMPLAINT,
    "Unsubscribe": BounceKind.UNSUBSCRIBE,
    "ManuallyDeactivated": BounceKind.MANUAL,
    "SpamNotification": BounceKind.POLICY,
    "Blocked": BounceKind.POLICY,
    "DMARCPolicy": BounceKind.POLICY,
    "VirusNotification": BounceKind.POLICY,
    "Subscribe": BounceKind.INFORMATIONAL,
    "AutoResponder": BounceKind.INFORMATIONAL,
    "AddressChange": BounceKind.INFORMATIONAL,
    "OpenRelayTest": BounceKind.INFORMATIONAL,
    "ChallengeVerification": BounceKind.INFORMATIONAL,
    "SMTPApiError": BounceKind.INFORMATIONAL,
    "InboundError": BounceKind.INFORMATIONAL,
    "TemplateRenderingFailed": BounceKind.INFORMATIONAL,
    "Unconfirmed": BounceKind.INFORMATIONAL,
}
"""Postmark's bounce ``Type`` names. A name not listed is treated like ``Unknown`` (soft):
counting it is safer than ignoring it, and one alone never suppresses."""

_SUPPRESSION_REASONS: Mapping[str, BounceKind] = {
    "HardBounce": BounceKind.HARD,
    "SpamComplaint": BounceKind.COMPLAINT,
    "ManualSuppression": BounceKind.MANUAL,
}

POSTMARK_RECORD_TYPES = ("Bounce", "SpamComplaint", "SubscriptionChange")


def parse_postmark_webhook(payload: Mapping[str, Any]) -> BounceNotification:
    """A Postmark bounce, spam-complaint or subscription-change webhook body, typed.

    Raises:
        NotificationError: The payload is not an object, is another record type (Open,
            Click, Delivery...), or a field we need is missing or malformed; ``field``
            names it.
    """
    if not isinstance(payload, Mapping):
        raise NotificationError(
            f"a Postmark webhook body is a JSON object, not {type(payload).__name__}",
            field="(body)",
        )
    # Older bounce webhooks carry no RecordType; their "Type" says what they are.
    record_type = payload.get("RecordType")
    if record_type is None and "Type" in payload:
        record_type = "SpamComplaint" if payload.get("Type") == "SpamComplaint" else "Bounce"
    if record_type not in POSTMARK_RECORD_TYPES:
        raise NotificationError(
            f"Postmark RecordType {record_type!r} is not a bounce notification; send only "
            f"{', '.join(POSTMARK_RECORD_TYPES)} webhooks to this endpoint",
            field="RecordType",
        )
    metadata = _metadata(payload)
    common: dict[str, Any] = {
        "provider": "postmark",
        "provider_message_id": _optional_str(payload, "MessageID"),
        "message_stream": _optional_str(payload, "MessageStream"),
        "contact_id": metadata.get(METADATA_CONTACT),
        "key_digest": metadata.get(METADATA_KEY),
        "metadata": metadata,
    }
    if record_type == "SubscriptionChange":
        address = _required_str(payload, "Recipient", record_type)
        changed_at = _timestamp(payload, "ChangedAt", record_type)
        suppress = payload.get("SuppressSending")
        if not isinstance(suppress, bool):
            raise NotificationError(
                f"Postmark SubscriptionChange field 'SuppressSending' must be true or false, "
                f"not {suppress!r}",
                field="SuppressSending",
            )
        reason = _optional_str(payload, "SuppressionReason") or ""
        origin = _optional_str(payload, "Origin") or ""
        if not suppress:
            kind = BounceKind.REACTIVATED
        elif reason == "ManualSuppression" and origin == "Recipient":
            # Postmark records a recipient's own unsubscribe as a manual suppression.
            kind = BounceKind.UNSUBSCRIBE
        elif reason in _SUPPRESSION_REASONS:
            kind = _SUPPRESSION_REASONS[reason]
        else:
            raise NotificationError(
                f"Postmark SubscriptionChange field 'SuppressionReason' is {reason!r}; expected "
                f"one of {', '.join(_SUPPRESSION_REASONS)}",
                field="SuppressionReason",
            )
        event_id = f"subscription:{address}:{changed_at.isoformat()}:{int(suppress)}"
        return BounceNotification(
            kind=kind,
            address=address,
            occurred_at=changed_at,
            provider_event_id=event_id,
            provider_type=f"SubscriptionChange/{reason or 'Reactivation'}",
            provider_inactive=suppress,
            description=f"{reason or 'reactivated'} (origin {origin or 'unknown'})",
            **common,
        )
    address = _required_str(payload, "Email", record_type)
    bounced_at = _timestamp(payload, "BouncedAt", record_type)
    bounce_id = payload.get("ID")
    if isinstance(bounce_id, bool) or not isinstance(bounce_id, int | str) or bounce_id == "":
        raise NotificationError(
            f"Postmark {record_type} field 'ID' must be the bounce id, not {bounce_id!r}",
            field="ID",
        )
    type_name = _required_str(payload, "Type", record_type)
    kind = (
        BounceKind.COMPLAINT
        if record_type == "SpamComplaint"
        else _POSTMARK_TYPES.get(type_name, BounceKind.SOFT)
    )
    inactive = payload.get("Inactive", False)
    if not isinstance(inactive, bool):
        raise NotificationError(
            f"Postmark {record_type} field 'Inactive' must be true or false, not {inactive!r}",
            field="Inactive",
        )
    detail = " ".join(
        part
        for part in (_optional_str(payload, "Description"), _optional_str(payload, "Details"))
        if part
    )
    return BounceNotification(
        kind=kind,
        address=address,
        occurred_at=bounced_at,
        provider_event_id=f"bounce:{bounce_id}",
        provider_type=type_name,
        provider_inactive=inactive,
        description=detail,
        **common,
    )


def _required_str(payload: Mapping[str, Any], name: str, record_type: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value.strip():
        problem = "is missing" if value is None else f"must be a non-empty string, not {value!r}"
        raise NotificationError(f"Postmark {record_type} field {name!r} {problem}", field=name)
    return value.strip()


def _optional_str(payload: Mapping[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise NotificationError(
            f"Postmark field {name!r} must be a string, not {value!r}", field=name
        )
    return value


def _timestamp(payload: Mapping[str, Any], name: str, record_type: str) -> datetime:
    raw = _required_str(payload, name, record_type)
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise NotificationError(
            f"Postmark {record_type} field {name!r} is not an ISO 8601 time: {raw!r}", field=name
        ) from None
    return _aware(parsed)


def _metadata(payload: Mapping[str, Any]) -> dict[str, str]:
    raw = payload.get("Metadata")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise NotificationError(
            f"Postmark field 'Metadata' must be an object, not {raw!r}", field="Metadata"
        )
    return {str(k): str(v) for k, v in raw.items()}


def _aware(moment: datetime) -> datetime:
    # Postmark always writes an offset; a naive time from elsewhere is taken as UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
