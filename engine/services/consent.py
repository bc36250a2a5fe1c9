"""Consent and suppression storage: who a link or a provider notification is about, what
they last decided on each channel, and which of their addresses must not be sent to.

Functions take the request's :class:`sqlmodel.Session` and are run off the event loop by
the routes (``stagecoach.engine.api._common.in_thread``). Every write is idempotent: suppressions
are keyed by channel and address, so repeating a request adds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select

from stagecoach.engine.services.ingest import IdentityError, Incoming, normalise_email
from stagecoach.engine.services.ingest._store import survivors
from stagecoach.engine.services.storage.models import (
    Consent,
    Contact,
    Event,
    Identity,
    Suppression,
)

CHANNELS: tuple[str, ...] = ("email", "wechat")
"""Channels on the preference page, and the channels an unsubscribe link can close."""

PREFERENCE_TOPICS: tuple[str, ...] = (
    "newsletter",
    "product-updates",
    "event",
    "customer-story",
    "offer",
)
"""Topics a contact can choose on the preference page (ids match content ``topics``;
their labels are page copy, in the templates)."""

ADDRESS_KIND: Mapping[str, str] = {"email": "email", "wechat": "wechat_openid"}
"""The identity kind that is a contact's address on a channel (what a suppression names)."""

LIFTABLE_REASONS = frozenset({"unsubscribe", "preferences"})
"""Suppressions the contact's own choice on the preference page may lift. Bounces and
complaints are never lifted by a page."""


@dataclass(frozen=True)
class Known:
    """A contact found in the database, with its identities by kind and its locale."""

    id: str
    identities: Mapping[str, tuple[str, ...]]
    locale: str | None = None

    def addresses(self, channel: str) -> tuple[str, ...]:
        kind = ADDRESS_KIND.get(channel)
        return self.identities.get(kind, ()) if kind else ()


@dataclass(frozen=True)
class Preferences:
    """What the preference page shows and saves."""

    channels: Mapping[str, bool]
    topics: tuple[str, ...]


def find_contact(session: Session, contact_id: str) -> Known | None:
    """The contact (following merges), or None if unknown (never ours, or erased)."""
    current = survivors(session.connection(), [contact_id]).get(contact_id)
    if current is None:
        return None
    rows = session.exec(
        select(Identity.kind, Identity.value)
        .where(col(Identity.contact_id) == current)
        .order_by(col(Identity.created_at), col(Identity.value))
    ).all()
    identities: dict[str, tuple[str, ...]] = {}
    for kind, value in rows:
        identities[kind] = (*identities.get(kind, ()), value)
    contact = session.get(Contact, current)
    return Known(current, identities, contact.locale if contact is not None else None)


def find_notified(session: Session, contact_id: str | None, address: str) -> Known | None:
    """A provider notification's contact: from our metadata, else by its email address."""
    if contact_id:
        known = find_contact(session, contact_id)
        if known is not None:
            return known
    owner = session.get(Identity, ("email", address))
    return None if owner is None else find_contact(session, owner.contact_id)


def latest_consent(session: Session, contact_id: str, channel: str) -> tuple[int, bool] | None:
    """The contact's latest consent decision on ``channel``: (row id, granted)."""
    row = session.exec(
        select(Consent.id, Consent.granted)
        .where(col(Consent.contact_id) == contact_id, col(Consent.channel) == channel)
        .order_by(col(Consent.id).desc())
        .limit(1)
    ).first()
    return None if row is None else (row[0] or 0, row[1])


def suppression_key(channel: str, address: str) -> str:
    """An email address in canonical form (``normalise_email``); an identity stored
    before canonicalisation that has none is kept as it is, so it is still suppressed."""
    if channel != "email":
        return address
    try:
        return normalise_email(address)
    except IdentityError:
        return address


def suppress(
    session: Session, targets: Iterable[tuple[str, str]], reason: str, contact_id: str | None
) -> int:
    """Suppress each ``(channel, address)`` not yet suppressed; the count added.

    An existing row keeps its reason: a complaint must not turn into an unsubscribe
    that a preference page could lift. Email rows are keyed by the canonical address,
    the form the delivery activity looks up."""
    added = 0
    for channel, address in dict.fromkeys((c, suppression_key(c, a)) for c, a in targets):
        if session.get(Suppression, (channel, address)) is not None:
            continue
        session.add(
            Suppression(channel=channel, address=address, reason=reason, contact_id=contact_id)
        )
        try:
            session.commit()
        except IntegrityError:  # a concurrent request suppressed it first: same outcome
            session.rollback()
        else:
            added += 1
    return added


def lift(session: Session, channel: str, addresses: Sequence[str]) -> None:
    """Remove the contact's own opt-out suppressions on ``channel`` (never bounces)."""
    addresses = list(dict.fromkeys([*addresses, *(suppression_key(channel, a) for a in addresses)]))
    if addresses:
        session.execute(
            delete(Suppression).where(
                col(Suppression.channel) == channel,
                col(Suppression.address).in_(addresses),
                col(Suppression.reason).in_(LIFTABLE_REASONS),
            )
        )


def current_preferences(session: Session, known: Known) -> Preferences:
    """The channels and topics the contact has chosen, as the preference page shows them."""
    channels = {}
    for channel in CHANNELS:
        latest = latest_consent(session, known.id, channel)
        # No decision recorded: email is opt-out, WeChat follows the follow (an openid).
        channels[channel] = latest[1] if latest else bool(known.addresses(channel))
    saved = session.exec(
        select(Event)
        .where(col(Event.contact_id) == known.id, col(Event.source) == "preference_page")
        .order_by(col(Event.id).desc())
        .limit(1)
    ).first()
    traits = saved.context.get("traits", {}) if saved is not None else {}
    chosen = traits.get("topics") if isinstance(traits, dict) else None
    if not isinstance(chosen, list):
        return Preferences(channels, PREFERENCE_TOPICS)  # never chosen: everything
    return Preferences(channels, tuple(t for t in chosen if t in PREFERENCE_TOPICS))


def soft_bounces(session: Session, contact_id: str, address: str, excluding: str) -> list[datetime]:
    """When earlier soft bounces of ``address`` happened (from the contact's events)."""
    rows = session.exec(
        select(Event).where(
            col(Event.contact_id) == contact_id,
            col(Event.name) == "email.bounced",
            col(Event.message_id) != excluding,
        )
    ).all()
    return [
        r.occurred_at if r.occurred_at.tzinfo else r.occurred_at.replace(tzinfo=UTC)
        for r in rows
        if r.properties.get("kind") == "soft" and r.properties.get("address") == address
    ]


def contact_event(
    known: Known,
    *,
    type_: str,
    message_id: str,
    source: str,
    occurred_at: datetime,
    properties: Mapping[str, Any] | None = None,
    traits: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    channel: str | None = "email",
) -> Incoming:
    """An event for a known contact, named by its id (``Incoming.contact_id``): no
    identity is sent, so none can be attached or merged because of a link."""
    return Incoming(
        kind="identify" if type_ == "identify" else "track",
        message_id=message_id,
        type=type_,
        occurred_at=occurred_at,
        properties=dict(properties or {}),
        traits=dict(traits or {}),
        context=dict(context or {}),
        source=source,
        channel=channel,
        contact_id=known.id,
    )
