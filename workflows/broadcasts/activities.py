"""The broadcast workflow's activities: snapshot, send a batch, choose the A/B winner.

A batch is one activity that sends up to a few hundred recipients, so a broadcast to a
million costs thousands of Temporal actions, not millions, and wakes no contact
workflow. Each recipient is sent at most once, whatever crashes: the delivery row keyed
``broadcast:<id>:<contact>`` is written as ``sending`` before the provider is called and
``sent`` after, and a batch that finds a ``sent`` row settles the recipient without
sending; a ``sending`` row (a batch lost between the call and the record) is sent again
under the same key, which providers that take a key drop (WeChat's ``client_msg_id``,
Postmark's) and which for SMTP is the at-least-once window journeys share.

Policy is the journeys' own: consent, suppression, quiet hours in the recipient's zone
(a hold moves the recipient's send time, never drops it) and the frequency cap over the
same ``deliveries`` rows (a contact a journey already sent to up to the cap today is held
back, unless the broadcast overrides caps). Each hold is counted by reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from temporalio import activity

from stagecoach.engine.domain.broadcasts import ArmResult, Broadcast, choose_winner
from stagecoach.engine.domain.content import ContentError, ContentLibrary, LinkSigner, RenderContact
from stagecoach.engine.domain.policy import SendPolicy
from stagecoach.engine.protocol import (
    BROADCAST_STATUS_ACTIVITY,
    EVALUATE_AB_ACTIVITY,
    SEND_BATCH_ACTIVITY,
    SNAPSHOT_ACTIVITY,
)
from stagecoach.engine.protocol.connector import (
    Connector,
    ConsentRevoked,
    OutgoingMessage,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from stagecoach.engine.protocol.messages import (
    BatchRequest,
    BatchResult,
    BroadcastStatus,
    EvaluateRequest,
    EvaluateResult,
    SnapshotRequest,
    SnapshotResult,
)
from stagecoach.engine.services.broadcasts import store
from stagecoach.engine.services.broadcasts.metrics import arm_successes

REFUSALS = frozenset(
    {"policy_rejected", "sender_rejected", "wechat_quota_exhausted", "wechat_45009"}
)
"""Permanent errors that are the provider refusing us, not one recipient: the broadcast
pauses with the reason rather than burning through the list."""

MAX_ATTEMPTS = 5
"""Retryable failures per recipient before it is counted failed."""

RETRY_AFTER = timedelta(minutes=1)
CONCURRENCY = 16
"""Sends in flight at once within a batch (the connector's pool and rate limit still
apply: the task-queue limit across workers is the activity's, see docs)."""


class BroadcastActivities:
    """Side effects of the broadcast workflow, with dependencies injected."""

    def __init__(
        self,
        *,
        db: Engine,
        content: ContentLibrary,
        connectors: Mapping[str, Connector],
        policy: SendPolicy,
        signer: LinkSigner | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = db
        self._content = content
        self._connectors = dict(connectors)
        self._policy = policy
        self._signer = signer
        self._clock = clock
        self._specs: dict[str, tuple[Broadcast, str]] = {}

    def all(self) -> list[Callable[..., object]]:
        return [self.snapshot, self.send_batch, self.evaluate_ab, self.set_status]

    def _spec(self, broadcast_id: str) -> tuple[Broadcast, str]:
        found = self._specs.get(broadcast_id)
        if found is None:
            row = store.get_row(self._db, broadcast_id)
            found = (store.broadcast_of(row), row.version)
            self._specs[broadcast_id] = found
        return found

    @activity.defn(name=SNAPSHOT_ACTIVITY)
    def snapshot(self, request: SnapshotRequest) -> SnapshotResult:
        """Fix the audience (idempotent) and mark the broadcast running."""
        taken = store.take_snapshot(self._db, request.broadcast_id, launched=request.launched_at)
        store.set_status(self._db, request.broadcast_id, "running", at=request.launched_at)
        broadcast, _ = self._spec(request.broadcast_id)
        return SnapshotResult(
            size=taken.size,
            skipped=taken.skipped,
            first_due=taken.first_due,
            ab=broadcast.ab is not None,
            ab_window_seconds=broadcast.ab.window.total_seconds() if broadcast.ab else 0.0,
        )

    @activity.defn(name=BROADCAST_STATUS_ACTIVITY)
    def set_status(self, status: BroadcastStatus) -> None:
        if status.status == "cancelled":
            store.cancel_pending(self._db, status.broadcast_id)
        store.set_status(
            self._db, status.broadcast_id, status.status, reason=status.reason, at=status.at
        )

    @activity.defn(name=EVALUATE_AB_ACTIVITY)
    def evaluate_ab(self, request: EvaluateRequest) -> EvaluateResult:
        """Read each arm's metric, test, record the decision and give the rest the
        winner."""
        broadcast, _ = self._spec(request.broadcast_id)
        assert broadcast.ab is not None
        sent = store.arm_sent_since(self._db, request.broadcast_id)
        successes = arm_successes(self._db, broadcast, until=request.now)
        arms = [
            ArmResult(
                name=v.name, sent=sent.get(v.name, (0, None))[0], successes=successes.get(v.name, 0)
            )
            for v in broadcast.ab.variants
        ]
        decision = choose_winner(broadcast.ab, arms)
        store.record_ab(
            self._db, request.broadcast_id, winner=decision.winner, decision=decision.to_dict()
        )
        store.assign_rest(self._db, request.broadcast_id, decision.winner)
        return EvaluateResult(
            winner=decision.winner, reason=decision.reason, decision=decision.to_dict()
        )

    @activity.defn(name=SEND_BATCH_ACTIVITY)
    async def send_batch(self, request: BatchRequest) -> BatchResult:
        """Send the next recipients due; see the module docstring for the guarantees."""
        broadcast, version = self._spec(request.broadcast_id)
        now = request.now
        recipients = await asyncio.to_thread(
            store.due_recipients,
            self._db,
            request.broadcast_id,
            now=now,
            limit=request.limit,
            arms_only=request.arms_only,
        )
        result = BatchResult()
        if recipients:
            await self._send_all(broadcast, version, recipients, now, result)
        result.remaining = await asyncio.to_thread(store.pending_count, self._db, broadcast.name)
        result.next_due = await asyncio.to_thread(
            store.next_due, self._db, broadcast.name, arms_only=request.arms_only
        )
        return result

    async def _send_all(
        self,
        broadcast: Broadcast,
        version: str,
        recipients: list[store.Recipient],
        now: datetime,
        result: BatchResult,
    ) -> None:
        channel = broadcast.channel
        connector = self._connectors.get(channel)
        if connector is None:
            result.refused = f"no connector configured for channel {channel!r}"
            return
        addresses = {r.contact_id: r.address(channel) for r in recipients}
        blocked = await asyncio.to_thread(
            store.suppressed, self._db, channel, [a for a in addresses.values() if a]
        )
        recent = await asyncio.to_thread(
            store.recent_sends,
            self._db,
            [r.contact_id for r in recipients],
            now - self._policy.frequency_window,
        )
        settled: list[store.Settled] = []
        to_send: list[tuple[store.Recipient, str]] = []

        def hold(r: store.Recipient, reason: str) -> None:
            settled.append(store.Settled(r.contact_id, "held", reason))
            result.held[reason] = result.held.get(reason, 0) + 1

        for r in recipients:
            address = addresses[r.contact_id]
            if r.delivered == "sent":
                settled.append(store.Settled(r.contact_id, "sent", sent_at=now))
                continue
            if address is None:
                hold(r, f"no_address:{channel}")
            elif not r.consented(channel):
                hold(r, f"no_consent:{channel}")
            elif address in blocked:
                hold(r, f"suppressed:{channel}")
            elif (quiet := self._policy.quiet_until(now, r.timezone)) is not None:
                settled.append(store.Settled(r.contact_id, "pending", "quiet_hours", send_at=quiet))
                result.retry += 1
            elif not broadcast.override_caps and self._policy.cap_until(
                recent.get(r.contact_id, ()), now
            ):
                hold(r, "frequency_cap")
            else:
                to_send.append((r, address))
        gate = asyncio.Semaphore(CONCURRENCY)
        refusal: list[str] = []

        async def one(r: store.Recipient, address: str) -> None:
            async with gate:
                if refusal:
                    return
                outcome = await self._send_one(broadcast, version, r, address, connector, now)
                if outcome.status == "refused":
                    refusal.append(outcome.reason or "refused")
                    return
                settled.append(outcome)
                if outcome.status == "sent":
                    result.sent += 1
                elif outcome.status == "failed":
                    result.failed += 1
                elif outcome.status == "held":
                    reason = outcome.reason or "held"
                    result.held[reason] = result.held.get(reason, 0) + 1
                else:
                    result.retry += 1
                activity.heartbeat()

        await asyncio.gather(*(one(r, a) for r, a in to_send))
        if refusal:
            result.refused = refusal[0]
        await asyncio.to_thread(store.settle, self._db, broadcast.name, settled)

    async def _send_one(
        self,
        broadcast: Broadcast,
        version: str,
        r: store.Recipient,
        address: str,
        connector: Connector,
        now: datetime,
    ) -> store.Settled:
        key = store.delivery_key(broadcast.name, r.contact_id)
        arm = broadcast.ab.arm(r.variant) if broadcast.ab and r.variant else None
        content_id = (arm.content if arm else None) or broadcast.content
        try:
            rendered = self._content.render(
                content_id,
                channel=broadcast.channel,
                locale=r.locale,
                contact=RenderContact(
                    contact_id=r.contact_id,
                    attributes=r.traits,
                    email=address if broadcast.channel == "email" else None,
                    openid=address if broadcast.channel == "wechat" else None,
                ),
                now=now,
                signer=self._signer,
                idempotency_key=key,
            )
        except ContentError as exc:
            await asyncio.to_thread(
                store.record_delivery,
                self._db,
                broadcast,
                version,
                r,
                channel=broadcast.channel,
                status="failed",
                error=str(exc),
            )
            return store.Settled(r.contact_id, "failed", f"content: {exc}"[:256])
        if arm is not None and arm.subject:
            rendered = replace(rendered, subject=arm.subject)
        await asyncio.to_thread(
            store.record_delivery,
            self._db,
            broadcast,
            version,
            r,
            channel=broadcast.channel,
            status="sending",
            content_id=content_id,
            content_version=rendered.content_version,
        )
        try:
            sent = await connector.send(
                OutgoingMessage(
                    channel=broadcast.channel,
                    to=address,
                    idempotency_key=key,
                    contact_id=r.contact_id,
                    rendered=rendered.to_dict(),
                )
            )
        except RetryableDeliveryError as exc:
            return self._retry(r, exc.message, now)
        except ConsentRevoked as exc:
            await asyncio.to_thread(self._record_failure, broadcast, version, r, "blocked", exc)
            return store.Settled(r.contact_id, "held", "consent_revoked")
        except PermanentDeliveryError as exc:
            if exc.code in REFUSALS:
                # Not this recipient's fault: leave them pending for the resume.
                await asyncio.to_thread(self._record_failure, broadcast, version, r, "sending", exc)
                return store.Settled(r.contact_id, "refused", f"{exc.code}: {exc.message}"[:256])
            await asyncio.to_thread(self._record_failure, broadcast, version, r, "failed", exc)
            return store.Settled(r.contact_id, "failed", (exc.code or "permanent")[:256])
        await asyncio.to_thread(
            store.record_delivery,
            self._db,
            broadcast,
            version,
            r,
            channel=broadcast.channel,
            status="sent",
            provider_message_id=sent.provider_message_id,
            sent_at=now,
        )
        return store.Settled(r.contact_id, "sent", sent_at=now, variant=r.variant)

    def _retry(self, r: store.Recipient, message: str, now: datetime) -> store.Settled:
        del message
        return store.Settled(r.contact_id, "pending", "retry", send_at=now + RETRY_AFTER)

    def _record_failure(
        self, broadcast: Broadcast, version: str, r: store.Recipient, status: str, exc: Any
    ) -> None:
        store.record_delivery(
            self._db,
            broadcast,
            version,
            r,
            channel=broadcast.channel,
            status=status,
            error=str(getattr(exc, "message", exc)),
        )
