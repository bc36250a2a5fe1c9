"""The contact workflow's activities: every side effect it has, with dependencies injected.

The composition root (``stagecoach worker``) builds ``ContactActivities`` with the
database engine, the content library, one connector per channel and the send policy; the
worker registers the bound methods. Tests build the same class around a file sink.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from engine.content import ContentError, ContentLibrary, LinkSigner, RenderContact
from engine.delivery import (
    Connector,
    ConsentRevoked,
    OutgoingMessage,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from engine.ingest._identity import IdentityError, normalise_email
from engine.messages import (
    Definitions,
    DeliverOutcome,
    DeliverRequest,
    HandOffOutcome,
    HandOffRequest,
    OpenRequest,
    TransitionRecord,
)
from engine.policy import SendPolicy
from engine.storage.contacts import creation_record, save_transition
from engine.storage.models import Contact, Delivery, Event, Suppression
from engine.wechat_callback import INTERACTION_EVENTS


class ContactActivities:
    """Side effects of the contact workflow."""

    def __init__(
        self,
        *,
        engine: Engine,
        definitions: Callable[[], Definitions],
        content: ContentLibrary,
        connectors: Mapping[str, Connector],
        policy: SendPolicy,
        render_contact: Callable[[DeliverRequest], RenderContact],
        signer: LinkSigner | None = None,
        rehearsal_sink: Connector | None = None,
    ) -> None:
        self._engine = engine
        self._definitions = definitions
        self._content = content
        self._connectors = dict(connectors)
        self._policy = policy
        self._render_contact = render_contact
        self._signer = signer
        self._rehearsal_sink = rehearsal_sink

    def all(self) -> list[Callable[..., object]]:
        return [
            self.open,
            self.load_definitions,
            self.record_transition,
            self.deliver,
            self.hand_off,
        ]

    @activity.defn(name="contact.open")
    def open(self, request: OpenRequest) -> Definitions:
        """A new contact nobody opened for it: record it at the first stage and return
        the definitions. (Callers that open the contact themselves skip this.)"""
        definitions = self._definitions()
        save_transition(
            self._engine, creation_record(request, definitions.pipeline["stages"][0]["name"])
        )
        return definitions

    @activity.defn(name="contact.load_definitions")
    def load_definitions(self) -> Definitions:
        """The active pipeline, the latest published journey specs and the send policy."""
        return self._definitions()

    @activity.defn(name="contact.record_transition")
    def record_transition(self, record: TransitionRecord) -> None:
        """Upsert the contact row and insert the transition; a retry inserts nothing."""
        save_transition(self._engine, record)

    # --- delivery ----------------------------------------------------------------------

    @activity.defn(name="contact.deliver")
    async def deliver(self, request: DeliverRequest) -> DeliverOutcome:
        """Check, render, record the key, send, record the result. Never sends twice."""
        previous = await asyncio.to_thread(self._find_delivery, request.idempotency_key)
        if previous is not None and previous.status == "sent":
            return DeliverOutcome(
                status="duplicate",
                content_id=previous.content_id,
                content_version=previous.content_version,
                provider_message_id=previous.provider_message_id,
            )
        if not request.consented:
            return await self._blocked(request, f"no_consent:{request.channel}")
        if await asyncio.to_thread(self._suppressed, request.channel, request.address):
            return await self._blocked(request, f"suppressed:{request.channel}")
        # The journey's clock, from the workflow: skipped time in tests, scaled time in a
        # rehearsal, so the cap means the same in all of them.
        now = request.now or datetime.now(UTC)
        sent_at = await asyncio.to_thread(
            self._recent_sends, request.contact_id, now - self._policy.frequency_window
        )
        not_before = self._policy.cap_until(sent_at, now)
        if not_before is not None:
            return DeliverOutcome(status="deferred", reason="frequency_cap", not_before=not_before)

        content_id = request.content_id
        if content_id is None:
            selector = request.selector or {}
            try:
                item = self._content.select_next(
                    stage=selector.get("stage") or request.stage,
                    kinds=selector.get("kinds", ()),
                    tags=selector.get("tags", ()),
                    interests=request.attributes.get("interests", ()),
                    locale=request.locale,
                    channel=request.channel,
                    received=request.received if selector.get("exclude_consumed", True) else (),
                    now=now,
                )
            except ContentError as exc:  # e.g. a stage the content library cannot map
                return await self._blocked(request, f"content_unavailable: {exc}")
            if item is None:
                return await self._blocked(request, "content_exhausted")
            content_id = item.id
        try:
            rendered = self._content.render(
                content_id,
                channel=request.channel,
                locale=request.locale,
                contact=self._render_contact(request),
                now=now,
                signer=self._signer,
                idempotency_key=request.idempotency_key,
            )
        except ContentError as exc:
            # Expired, or no variant for this locale and channel: retrying cannot help.
            await asyncio.to_thread(self._record, request, status="failed", error=str(exc))
            raise ApplicationError(
                str(exc), type="PermanentDeliveryError", non_retryable=True
            ) from exc
        await asyncio.to_thread(
            self._record,
            request,
            status="sending",
            content_id=content_id,
            content_version=rendered.content_version,
        )
        connector = (
            self._rehearsal_sink if request.rehearsal else self._connectors.get(request.channel)
        )
        if connector is None:
            raise ApplicationError(
                f"no connector configured for channel {request.channel!r}",
                type="PermanentDeliveryError",
                non_retryable=True,
            )
        try:
            sent = await connector.send(
                OutgoingMessage(
                    channel=request.channel,
                    to=request.address,
                    idempotency_key=request.idempotency_key,
                    contact_id=request.contact_id,
                    rendered=rendered.to_dict(),
                )
            )
        except RetryableDeliveryError as exc:
            await asyncio.to_thread(self._record, request, status="sending", error=exc.message)
            raise ApplicationError(
                exc.message, type="RetryableDeliveryError", next_retry_delay=exc.retry_after
            ) from exc
        except ConsentRevoked as exc:
            await asyncio.to_thread(self._suppress, request, "consent_revoked")
            await asyncio.to_thread(self._record, request, status="blocked", error=exc.message)
            raise ApplicationError(exc.message, type="ConsentRevoked", non_retryable=True) from exc
        except PermanentDeliveryError as exc:
            if exc.code == "hard_bounce":
                # Refused during the SMTP conversation: no bounce webhook will follow.
                await asyncio.to_thread(self._suppress, request, "hard_bounce")
            await asyncio.to_thread(self._record, request, status="failed", error=exc.message)
            raise ApplicationError(
                exc.message, exc.code, type="PermanentDeliveryError", non_retryable=True
            ) from exc
        await asyncio.to_thread(
            self._record,
            request,
            status="sent",
            provider_message_id=sent.provider_message_id,
            sent_at=now,
        )
        return DeliverOutcome(
            status="sent",
            content_id=content_id,
            content_version=rendered.content_version,
            provider_message_id=sent.provider_message_id,
        )

    @activity.defn(name="contact.hand_off")
    async def hand_off(self, request: HandOffRequest) -> HandOffOutcome:
        """Hand a qualified lead to sales through the ``crm`` connector."""
        connector = self._connectors.get("crm")
        if connector is None:
            return HandOffOutcome(ok=False, error="no crm connector configured")
        try:
            sent = await connector.send(
                OutgoingMessage(
                    channel="crm",
                    to="sales",
                    idempotency_key=request.idempotency_key,
                    contact_id=request.contact_id,
                    rendered={
                        "journey": request.journey,
                        "step_id": request.step_id,
                        "reason": request.reason,
                        **request.payload,
                    },
                )
            )
        except RetryableDeliveryError as exc:
            raise ApplicationError(exc.message, next_retry_delay=exc.retry_after) from exc
        except (PermanentDeliveryError, ConsentRevoked) as exc:
            return HandOffOutcome(ok=False, error=exc.one_line())
        return HandOffOutcome(ok=True, reference=sent.provider_message_id)

    # --- database helpers (run in a thread) -------------------------------------------

    async def _blocked(self, request: DeliverRequest, reason: str) -> DeliverOutcome:
        await asyncio.to_thread(self._record, request, status="blocked", error=reason)
        return DeliverOutcome(status="blocked", reason=reason)

    def _find_delivery(self, key: str) -> Delivery | None:
        with Session(self._engine) as session:
            return session.exec(select(Delivery).where(Delivery.idempotency_key == key)).first()

    def _suppressed(self, channel: str, raw_address: str) -> bool:
        """Suppressed, except that WeChat's "not following" or "window closed" (43004,
        45015) lasts only until the contact next interacts: a later inbound WeChat
        event lifts it."""
        address = _normalised(channel, raw_address)
        with Session(self._engine) as session:
            row = session.get(Suppression, (channel, address))
            if row is None:
                return False
            if channel != "wechat" or row.reason != "consent_revoked" or not row.contact_id:
                return True
            since = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
            later = session.exec(
                select(Event.id).where(
                    col(Event.contact_id) == row.contact_id,
                    col(Event.name).in_(INTERACTION_EVENTS),
                    col(Event.source) == "wechat",  # from the callback, not a write key
                    col(Event.occurred_at) > since,
                )
            ).first()
            if later is None:
                return True
            session.delete(row)
            session.commit()
            return False

    def _suppress(self, request: DeliverRequest, reason: str) -> None:
        address = _normalised(request.channel, request.address)
        with Session(self._engine) as session:
            if session.get(Suppression, (request.channel, address)) is None:
                session.add(
                    Suppression(
                        channel=request.channel,
                        address=address,
                        reason=reason,
                        contact_id=request.contact_id,
                    )
                )
                session.commit()

    def _recent_sends(self, contact_id: str, since: datetime) -> list[datetime]:
        with Session(self._engine) as session:
            rows = session.exec(
                select(Delivery.sent_at).where(
                    Delivery.contact_id == contact_id,
                    Delivery.status == "sent",
                    Delivery.sent_at >= since,  # type: ignore[operator]
                )
            ).all()
        return [r if r.tzinfo else r.replace(tzinfo=UTC) for r in rows if r is not None]

    def _record(self, request: DeliverRequest, *, status: str, **fields: Any) -> None:
        """Insert or update the delivery row for this idempotency key."""
        with Session(self._engine) as session:
            self._ensure_contact(session, request.contact_id)
            row = session.exec(
                select(Delivery).where(Delivery.idempotency_key == request.idempotency_key)
            ).first()
            if row is None:
                row = Delivery(
                    idempotency_key=request.idempotency_key,
                    contact_id=request.contact_id,
                    journey=request.journey,
                    journey_version=request.journey_version,
                    step_id=request.step_id,
                    enrolment=request.enrolment,
                    channel=request.channel,
                )
            row.status = status
            for key, value in fields.items():
                setattr(row, key, value[:1024] if key == "error" and value else value)
            session.add(row)
            session.commit()

    @staticmethod
    def _ensure_contact(session: Session, contact_id: str) -> None:
        if session.get(Contact, contact_id) is None:
            session.add(Contact(id=contact_id))
            session.flush()


def _normalised(channel: str, address: str) -> str:
    """Suppressions are keyed by the address as identities store it (emails lower-cased),
    whoever wrote them: a bounce webhook, an unsubscribe, or this activity."""
    if channel != "email":
        return address
    try:
        return normalise_email(address)
    except IdentityError:
        return address.strip()
