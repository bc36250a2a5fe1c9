"""The contact workflow's activities: every side effect it has, with dependencies injected.

The composition root (``stagecoach worker``) builds ``ContactActivities`` with the
database Engine (``db``), the content library, one connector per channel and the send policy; the
worker registers the bound methods. Tests build the same class around a file sink.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, func
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from stagecoach.engine.domain.content import (
    PROMOTIONAL_KINDS,
    ContentError,
    ContentLibrary,
    LinkSigner,
    RenderContact,
)
from stagecoach.engine.domain.pipeline import Transition
from stagecoach.engine.domain.policy import SendPolicy
from stagecoach.engine.metrics import count_handoff, count_send, count_sla_breach
from stagecoach.engine.protocol import (
    CANCEL_REWARD_ACTIVITY,
    DELIVER_ACTIVITY,
    HAND_OFF_ACTIVITY,
    HANDOFF_SLA_ACTIVITY,
    LOAD_DEFINITIONS_ACTIVITY,
    OPEN_ACTIVITY,
    RECORD_CONVERSION_ACTIVITY,
    RECORD_ENROLMENT_ACTIVITY,
    RECORD_SEGMENTS_ACTIVITY,
    RECORD_TRANSITION_ACTIVITY,
    RELEASE_REWARDS_ACTIVITY,
)
from stagecoach.engine.protocol.connector import (
    Connector,
    ConsentRevoked,
    OutgoingMessage,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from stagecoach.engine.protocol.messages import (
    ConversionRequest,
    Definitions,
    DeliverOutcome,
    DeliverRequest,
    EnrolmentRecord,
    HandOffOutcome,
    HandOffRequest,
    OpenRequest,
    RefundRequest,
    RewardDecision,
    SegmentChanges,
    SlaRequest,
    TransitionRecord,
)
from stagecoach.engine.services.ingest._identity import IdentityError, normalise_email
from stagecoach.engine.services.prediction.scores import current_propensity
from stagecoach.engine.services.referrals import ReferralPolicy
from stagecoach.engine.services.storage.contacts import creation_record, save_transition
from stagecoach.engine.services.storage.db import driver_reason
from stagecoach.engine.services.storage.enrolments import save_active_enrolment, save_enrolment
from stagecoach.engine.services.storage.interactions import contact_last_interaction
from stagecoach.engine.services.storage.models import (
    Contact,
    Delivery,
    Handoff,
    Identity,
    StageTransition,
    Suppression,
)
from stagecoach.engine.services.storage.segments import save_segment_changes

SENT_RECORD_PATIENCE = 40.0
"""Seconds ``contact.deliver`` keeps retrying the record of an accepted send."""

_T = TypeVar("_T")

HEARTBEAT_EVERY = 2.0
"""Seconds between heartbeats when the attempt has no heartbeat timeout to go by."""


async def _heartbeating(work: Awaitable[_T]) -> _T:
    """Await ``work`` while a side task heartbeats: the connector's send is one await
    (an SMTP conversation, an HTTP call) that cannot heartbeat from inside. Beats five
    times per heartbeat timeout, at most every 2 s; the SDK throttles what reaches the
    server. Cancelling ``work`` (the attempt cancelled or timed out) ends the beats too."""
    timeout = activity.info().heartbeat_timeout
    every = min(HEARTBEAT_EVERY, timeout.total_seconds() / 5) if timeout else HEARTBEAT_EVERY

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(every)

    beats = asyncio.create_task(beat())
    try:
        return await work
    finally:
        beats.cancel()
        # Collects the beats' own cancellation; a cancellation of this task still
        # propagates from here.
        await asyncio.gather(beats, return_exceptions=True)


class ContactActivities:
    """Side effects of the contact workflow."""

    def __init__(
        self,
        *,
        db: Engine,
        definitions: Callable[[], Definitions],
        content: ContentLibrary,
        connectors: Mapping[str, Connector],
        policy: SendPolicy,
        render_contact: Callable[[DeliverRequest], RenderContact],
        signer: LinkSigner | None = None,
        rehearsal_sink: Connector | None = None,
        timeline_url: Callable[[str], str] = lambda contact_id: f"/v1/contacts/{contact_id}",
        public_url: str = "",
        referral_policy: ReferralPolicy | None = None,
        retry_hint_max: timedelta | None = None,
    ) -> None:
        self._db = db
        self._definitions = definitions
        self._content = content
        self._connectors = dict(connectors)
        self._policy = policy
        self._render_contact = render_contact
        self._signer = signer
        self._rehearsal_sink = rehearsal_sink
        self._timeline_url = timeline_url
        self._public_url = public_url
        self._referral_policy = referral_policy or ReferralPolicy()
        self._retry_hint_max = retry_hint_max

    @property
    def content(self) -> ContentLibrary:
        """The content library the activities render from (broadcasts share it)."""
        return self._content

    def _hint(self, retry_after: timedelta | None) -> timedelta | None:
        """A connector's retry hint, capped by ``STAGECOACH_RETRY_HINT_MAX_SECONDS``."""
        if retry_after is None or self._retry_hint_max is None:
            return retry_after
        return min(retry_after, self._retry_hint_max)

    def all(self) -> list[Callable[..., object]]:
        return [
            self.open,
            self.load_definitions,
            self.record_transition,
            self.deliver,
            self.hand_off,
            self.handoff_sla,
            self.record_conversion,
            self.release_rewards,
            self.cancel_reward,
            self.record_enrolment,
            self.record_segments,
        ]

    @activity.defn(name=OPEN_ACTIVITY)
    def open(self, request: OpenRequest) -> Definitions:
        """A new contact nobody opened for it: record it at the first stage and return
        the definitions. (Callers that open the contact themselves skip this.)"""
        definitions = self._definitions()
        save_transition(
            self._db, creation_record(request, definitions.pipeline["stages"][0]["name"])
        )
        return definitions

    @activity.defn(name=LOAD_DEFINITIONS_ACTIVITY)
    def load_definitions(self) -> Definitions:
        """The active pipeline, the latest published journey specs and the send policy."""
        return self._definitions()

    @activity.defn(name=RECORD_SEGMENTS_ACTIVITY)
    def record_segments(self, record: SegmentChanges) -> None:
        """Write the contact's segment entries and exits; a retry writes nothing twice."""
        save_segment_changes(self._db, record)

    @activity.defn(name=RECORD_TRANSITION_ACTIVITY)
    def record_transition(self, record: TransitionRecord) -> None:
        """Upsert the contact row and insert the transition; a retry inserts nothing."""
        save_transition(self._db, record)

    # --- delivery ----------------------------------------------------------------------

    @activity.defn(name=DELIVER_ACTIVITY)
    async def deliver(self, request: DeliverRequest) -> DeliverOutcome:
        """``_deliver``, heartbeating all along: the workflow gives each attempt a
        heartbeat timeout of seconds, so an attempt lost with its worker (SIGKILL, a
        crash) is retried that soon rather than at the end of its start-to-close timeout.
        The retry sends under the same idempotency key, recorded before the first send."""
        return await _heartbeating(self._deliver(request))

    async def _deliver(self, request: DeliverRequest) -> DeliverOutcome:
        """Check, render, record the key, send, record the result. Never sends twice."""
        if request.enrolment_started_at is not None:
            await asyncio.to_thread(
                save_active_enrolment,
                self._db,
                contact_id=request.contact_id,
                journey=request.journey,
                version=request.journey_version,
                enrolment=request.enrolment,
                started_at=request.enrolment_started_at,
                trail=request.trail,
            )
        previous = await asyncio.to_thread(self._find_delivery, request.idempotency_key)
        if previous is not None and previous.status == "sent":
            count_send(request, "duplicate")
            return DeliverOutcome(
                status="duplicate",
                content_id=previous.content_id,
                content_version=previous.content_version,
                provider_message_id=previous.provider_message_id,
            )
        if not request.consented:
            return await self._blocked(request, f"no_consent:{request.channel}")
        if _normalised(request.channel, request.address) is None:
            # Stored before addresses were canonicalised (a zero-width space, say).
            return await self._blocked(request, f"invalid_address:{request.channel}")
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
            count_send(request, "deferred")
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
        if request.attributes.get("service_recovery") == "open":
            try:
                kind = self._content.item(content_id).kind
            except ContentError:
                kind = ""
            if kind in PROMOTIONAL_KINDS:
                # A detractor's complaint is open: no offers until it is resolved.
                return await self._blocked(request, "service_recovery_open")
        contact = self._render_contact(request)
        if self._public_url and self._content.item(content_id).kind == "referral_offer":
            # The promoter's own code and share link (issued on first use).
            from stagecoach.engine.services.referrals import referral_variables

            personal = await asyncio.to_thread(
                referral_variables,
                self._db,
                request.contact_id,
                channel=request.channel,
                base_url=self._public_url,
                now=now,
                policy=self._referral_policy,
                email=_email_of(request),
            )
            contact = replace(contact, attributes={**contact.attributes, **personal})
        try:
            rendered = self._content.render(
                content_id,
                channel=request.channel,
                locale=request.locale,
                contact=contact,
                now=now,
                signer=self._signer,
                idempotency_key=request.idempotency_key,
            )
        except ContentError as exc:
            # Expired, or no variant for this locale and channel: retrying cannot help.
            await asyncio.to_thread(self._record, request, status="failed", error=str(exc))
            count_send(request, "failed")
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
            count_send(request, "failed")
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
                exc.message,
                type="RetryableDeliveryError",
                next_retry_delay=self._hint(exc.retry_after),
            ) from exc
        except ConsentRevoked as exc:
            await asyncio.to_thread(self._suppress, request, "consent_revoked")
            await asyncio.to_thread(self._record, request, status="blocked", error=exc.message)
            count_send(request, "blocked", "consent_revoked")
            raise ApplicationError(exc.message, type="ConsentRevoked", non_retryable=True) from exc
        except PermanentDeliveryError as exc:
            if exc.code == "hard_bounce":
                # Refused during the SMTP conversation: no bounce webhook will follow.
                await asyncio.to_thread(self._suppress, request, "hard_bounce")
            await asyncio.to_thread(self._record, request, status="failed", error=exc.message)
            count_send(request, "failed")
            raise ApplicationError(
                exc.message, exc.code, type="PermanentDeliveryError", non_retryable=True
            ) from exc
        await self._record_sent(request, sent.provider_message_id, now)
        count_send(request, "sent")
        return DeliverOutcome(
            status="sent",
            content_id=content_id,
            content_version=rendered.content_version,
            provider_message_id=sent.provider_message_id,
        )

    @activity.defn(name=HAND_OFF_ACTIVITY)
    async def hand_off(self, request: HandOffRequest) -> HandOffOutcome:
        """Route a qualified lead, record the hand-off, and send it through ``crm``.

        A retry finds the row its first attempt wrote and sends the same payload with the
        same idempotency key, so sales get one hand-off. A rehearsal contact's goes to
        the rehearsal sink, never to the CRM, and is not counted."""
        connector = self._crm(request.rehearsal)
        if connector is None:
            return HandOffOutcome(ok=False, error="no crm connector configured")
        now = request.now or datetime.now(UTC)
        prepared = await asyncio.to_thread(self._prepare_handoff, request, now)
        if prepared is None:
            return HandOffOutcome(ok=True, routed=False, error="grade below every route")
        row, remind_at, escalate_at = prepared
        try:
            sent = await connector.send(
                OutgoingMessage(
                    channel="crm",
                    to=row.owner or row.team or "sales",
                    idempotency_key=request.idempotency_key,
                    contact_id=request.contact_id,
                    rendered={
                        "type": "handoff",
                        "handoff_id": row.id,
                        # The journey step that handed the contact off; null when the
                        # pipeline's MQL rule did (``reason`` is then ``mql``).
                        "journey": request.journey or None,
                        "step_id": request.step_id if request.journey else None,
                        "reason": request.reason,
                        **row.payload,
                    },
                )
            )
        except RetryableDeliveryError as exc:
            raise ApplicationError(
                exc.message, next_retry_delay=self._hint(exc.retry_after)
            ) from exc
        except (PermanentDeliveryError, ConsentRevoked) as exc:
            await asyncio.to_thread(self._handoff_status, row.id, "failed")
            count_handoff(row.team, row.grade, "failed", rehearsal=request.rehearsal)
            return HandOffOutcome(ok=False, error=exc.one_line(), handoff_id=row.id)
        count_handoff(row.team, row.grade, "sent", rehearsal=request.rehearsal)
        return HandOffOutcome(
            ok=True,
            reference=sent.provider_message_id,
            handoff_id=row.id,
            owner=row.owner or row.team or "",
            remind_at=remind_at,
            escalate_at=escalate_at,
        )

    @activity.defn(name=HANDOFF_SLA_ACTIVITY)
    async def handoff_sla(self, request: SlaRequest) -> None:
        """No feedback in time: remind the owner (their team when a team took the lead),
        or escalate to the team lead. A rehearsal's goes to the rehearsal sink."""
        connector = self._crm(request.rehearsal)
        row = await asyncio.to_thread(self._find_handoff, request.handoff_id)
        if connector is None or row is None or row.status != "sent":
            return  # answered meanwhile, or nowhere to send it
        routing = row.payload.get("routing") or {}
        to = (
            (row.owner or row.team or "sales")
            if request.kind == "reminder"
            else (routing.get("lead") or row.team or "sales")
        )
        try:
            await connector.send(
                OutgoingMessage(
                    channel="crm",
                    to=str(to),
                    idempotency_key=f"{row.idempotency_key}:{request.kind}",
                    contact_id=request.contact_id,
                    rendered={
                        "type": f"handoff.{request.kind}",
                        "handoff_id": row.id,
                        "to": to,
                        "owner": row.owner,
                        "team": row.team,
                        "contact_id": row.contact_id,
                        "handed_off_at": row.created_at.isoformat(),
                        "timeline_url": row.payload.get("timeline_url", ""),
                    },
                )
            )
        except RetryableDeliveryError as exc:
            raise ApplicationError(
                exc.message, next_retry_delay=self._hint(exc.retry_after)
            ) from exc
        except (PermanentDeliveryError, ConsentRevoked) as exc:
            activity.logger.warning("hand-off %s %s not sent: %s", row.id, request.kind, exc)
        await asyncio.to_thread(self._handoff_sla_sent, row.id, request.kind)
        count_sla_breach(request.kind, row.team, rehearsal=request.rehearsal)

    def _crm(self, rehearsal: bool) -> Connector | None:
        """Where a hand-off goes: the CRM connector, or for a rehearsal contact the
        rehearsal sink (never the CRM, even when no sink is wired)."""
        return self._rehearsal_sink if rehearsal else self._connectors.get("crm")

    @activity.defn(name=RECORD_ENROLMENT_ACTIVITY)
    def record_enrolment(self, record: EnrolmentRecord) -> None:
        """A finished enrolment and its trail, for journey analytics."""
        save_enrolment(self._db, record)

    @activity.defn(name=RECORD_CONVERSION_ACTIVITY)
    def record_conversion(self, request: ConversionRequest) -> RewardDecision:
        """A referred contact became a customer: reward the referrer if that earns one
        (first purchase only, within the referrer's cap, held for the return window)."""
        from stagecoach.engine.services.referrals import record_conversion

        return record_conversion(
            self._db,
            request.contact_id,
            at=request.at,
            library=self._content,
            policy=self._referral_policy,
        )

    @activity.defn(name=RELEASE_REWARDS_ACTIVITY)
    def release_rewards(self, at: datetime) -> int:
        """Release every held reward whose return window has passed by ``at``."""
        from stagecoach.engine.services.referrals import release_due_rewards

        return len(release_due_rewards(self._db, at))

    @activity.defn(name=CANCEL_REWARD_ACTIVITY)
    def cancel_reward(self, request: RefundRequest) -> str | None:
        """A referred contact's order was refunded: cancel the reward their purchase
        earned the referrer if it is still held and within its return window. The
        reward's status now, or None when the purchase earned none."""
        from stagecoach.engine.services.referrals import cancel_reward

        order = f" {request.order_id}" if request.order_id else ""
        reward = cancel_reward(
            self._db, request.contact_id, f"order{order} refunded", at=request.at
        )
        return None if reward is None else reward.status

    def _prepare_handoff(
        self, request: HandOffRequest, now: datetime
    ) -> tuple[Handoff, datetime | None, datetime | None] | None:
        """The hand-off row for this key: found (a retry) or routed and written now."""
        from stagecoach.engine.domain.contact import ContactState
        from stagecoach.engine.domain.pipeline import Pipeline
        from stagecoach.engine.domain.sales import SlaDeadlines, handoff_payload

        handoff_id = "h_" + hashlib.sha256(request.idempotency_key.encode()).hexdigest()[:24]
        raw_pipeline = request.payload.get("pipeline")
        pipeline = Pipeline.from_dict(raw_pipeline or self._definitions().pipeline)
        routing = pipeline.routing
        with Session(self._db) as session:
            row = session.get(Handoff, handoff_id)
            if row is not None:
                return (
                    row,
                    _deadline(row.payload, "respond_by"),
                    _deadline(row.payload, "escalate_at"),
                )
            self._ensure_contact(session, request.contact_id)
            raw_state = request.payload.get("state")
            state = ContactState.from_dict(raw_state) if raw_state else None
            assignment = deadlines = None
            if routing is not None and state is not None:
                counts: dict[str, dict[str, int]] = {}
                # Rehearsals' hand-offs do not take a turn in the round robin.
                for team, owner, n in session.execute(
                    select(col(Handoff.team), col(Handoff.owner), func.count())
                    .join(Contact, col(Contact.id) == col(Handoff.contact_id))
                    .where(col(Handoff.team).is_not(None), col(Contact.rehearsal).is_(False))
                    .group_by(col(Handoff.team), col(Handoff.owner))
                ).all():
                    if owner:
                        counts.setdefault(str(team), {})[str(owner)] = int(n)
                previous = session.exec(
                    select(Handoff.owner)
                    .where(
                        col(Handoff.contact_id) == request.contact_id,
                        col(Handoff.owner).is_not(None),
                    )
                    .order_by(col(Handoff.created_at).desc())
                ).first()
                sla = routing.sla
                if request.reason == "service_recovery":
                    assignment = routing.route_service()
                    sla = routing.service_sla or routing.sla
                else:
                    assignment = routing.route(
                        state.grade,
                        state.attributes,
                        assigned_owner=previous,
                        pool_counts=counts,
                    )
                if assignment is None:
                    return None
                deadlines = sla.deadlines(now, assignment.owner_timezone or "UTC")
                if request.rehearsal and request.time_scale < 1:
                    # The rehearsal's clock: at x10,000 a 24-hour SLA lapses in seconds,
                    # so its reminder and escalation reach the sink within the rehearsal.
                    deadlines = SlaDeadlines(
                        respond_by=now + (deadlines.respond_by - now) * request.time_scale,
                        escalate_at=now + (deadlines.escalate_at - now) * request.time_scale,
                    )
            payload: dict[str, Any] = dict(request.payload)
            if state is not None:
                identities = {
                    i.kind: i.value
                    for i in session.exec(
                        select(Identity).where(col(Identity.contact_id) == request.contact_id)
                    ).all()
                }
                history = [
                    Transition(
                        from_stage=t.from_stage or "",
                        to_stage=t.to_stage,
                        at=t.at if t.at.tzinfo else t.at.replace(tzinfo=UTC),
                        reason=t.reason,
                        source=t.source,
                        kind=t.kind,  # type: ignore[arg-type]
                        trigger_event_type=t.trigger_event_type,
                        trigger_message_id=t.trigger_message_id,
                    )
                    for t in session.exec(
                        select(StageTransition)
                        .where(col(StageTransition.contact_id) == request.contact_id)
                        .order_by(col(StageTransition.id))
                    ).all()
                ]
                payload = handoff_payload(
                    state,
                    pipeline,
                    identities=identities,
                    now=now,
                    timeline_url=self._timeline_url(request.contact_id),
                    stage_history=history,
                    assignment=assignment,
                    deadlines=deadlines,
                )
                # The model's view next to the rule score: read here, in the activity, so
                # the workflow and its recorded histories are untouched.
                payload["propensity"] = current_propensity(self._db, request.contact_id)
            row = Handoff(
                id=handoff_id,
                idempotency_key=request.idempotency_key,
                contact_id=request.contact_id,
                reason=request.reason[:256],
                grade=state.grade if state else None,
                team=assignment.team if assignment else None,
                owner=assignment.owner if assignment else None,
                owner_timezone=assignment.owner_timezone if assignment else None,
                status="sent",
                payload={
                    **payload,
                    "respond_by": deadlines.respond_by.isoformat() if deadlines else None,
                    "escalate_at": deadlines.escalate_at.isoformat() if deadlines else None,
                },
                created_at=now,
            )
            session.add(row)
            try:
                session.commit()
            except IntegrityError:
                session.rollback()  # a concurrent attempt wrote it: use that one
                found = session.get(Handoff, handoff_id)
                if found is None:
                    raise
                row = found
            session.refresh(row)
            return (
                row,
                deadlines.respond_by if deadlines else None,
                deadlines.escalate_at if deadlines else None,
            )

    def _find_handoff(self, handoff_id: str) -> Handoff | None:
        with Session(self._db) as session:
            return session.get(Handoff, handoff_id)

    def _handoff_status(self, handoff_id: str, status: str) -> None:
        with Session(self._db) as session:
            row = session.get(Handoff, handoff_id)
            if row is not None and row.status == "sent":
                row.status = status
                session.add(row)
                session.commit()

    def _handoff_sla_sent(self, handoff_id: str, kind: str) -> None:
        with Session(self._db) as session:
            row = session.get(Handoff, handoff_id)
            if row is None:
                return
            if kind == "reminder":
                row.reminded_at = row.reminded_at or datetime.now(UTC)
            else:
                row.escalated_at = row.escalated_at or datetime.now(UTC)
            session.add(row)
            session.commit()

    # --- database helpers (run in a thread) -------------------------------------------

    async def _blocked(self, request: DeliverRequest, reason: str) -> DeliverOutcome:
        await asyncio.to_thread(self._record, request, status="blocked", error=reason)
        count_send(request, "blocked", reason)
        return DeliverOutcome(status="blocked", reason=reason)

    def _find_delivery(self, key: str) -> Delivery | None:
        with Session(self._db) as session:
            return session.exec(select(Delivery).where(Delivery.idempotency_key == key)).first()

    def _suppressed(self, channel: str, raw_address: str) -> bool:
        """Suppressed, except that WeChat's "not following" or "window closed" (43004,
        45015) lasts only until the contact next interacts: a later inbound WeChat
        event lifts it. An email address without a canonical form counts as suppressed."""
        address = _normalised(channel, raw_address)
        if address is None:
            return True
        with Session(self._db) as session:
            row = session.get(Suppression, (channel, address))
            if row is None:
                return False
            if channel != "wechat" or row.reason != "consent_revoked" or not row.contact_id:
                return True
            since = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
            last = contact_last_interaction(self._db, row.contact_id)
            if last is None or last <= since:
                return True
            session.delete(row)
            session.commit()
            return False

    def _suppress(self, request: DeliverRequest, reason: str) -> None:
        address = _normalised(request.channel, request.address) or request.address.strip()
        with Session(self._db) as session:
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
        with Session(self._db) as session:
            rows = session.exec(
                select(Delivery.sent_at).where(
                    Delivery.contact_id == contact_id,
                    Delivery.status == "sent",
                    Delivery.sent_at >= since,  # type: ignore[operator]
                )
            ).all()
        return [r if r.tzinfo else r.replace(tzinfo=UTC) for r in rows if r is not None]

    async def _record_sent(
        self, request: DeliverRequest, provider_message_id: str | None, sent_at: datetime
    ) -> None:
        """Record that the provider accepted the message, retrying in place while the
        database is locked or away. Past the send, a failed activity would be retried and
        would send again, and only some channels drop a repeat by our key (WeChat's
        ``client_msg_id``; SMTP and customer-service messages have none). So this write
        waits up to :data:`SENT_RECORD_PATIENCE`, well inside the activity's 60 s."""
        delay = 0.05
        deadline = time.monotonic() + SENT_RECORD_PATIENCE
        while True:
            try:
                await asyncio.to_thread(
                    self._record,
                    request,
                    status="sent",
                    provider_message_id=provider_message_id,
                    sent_at=sent_at,
                )
                return
            except OperationalError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                activity.logger.warning(
                    "recording the send of %s failed, retrying in %.2f s: %s",
                    request.idempotency_key,
                    delay,
                    driver_reason(exc),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _record(self, request: DeliverRequest, *, status: str, **fields: Any) -> None:
        """Insert or update the delivery row for this idempotency key."""
        with Session(self._db) as session:
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


def _normalised(channel: str, address: str) -> str | None:
    """The key a suppression of ``address`` is stored under, whoever wrote it (a bounce
    webhook, an unsubscribe, this activity): for email the canonical form
    (``stagecoach.engine.services.ingest.normalise_email``), so an address that normalises to a
    suppressed one is suppressed. None for an email address with no canonical form (an invisible
    character, say): nothing may be sent to it, since the connector would refuse it and
    an older one might have quietly mailed a different address."""
    if channel != "email":
        return address
    try:
        return normalise_email(address)
    except IdentityError:
        return None


def _email_of(request: DeliverRequest) -> str | None:
    """The contact's email address as their workflow knows it."""
    if request.channel == "email":
        return request.address
    email = request.attributes.get("email")
    return email if isinstance(email, str) else None


def _deadline(payload: Mapping[str, Any], key: str) -> datetime | None:
    raw = payload.get(key)
    return datetime.fromisoformat(raw) if isinstance(raw, str) else None
