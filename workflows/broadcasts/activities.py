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
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, cast

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from temporalio import activity

from stagecoach.engine.domain.broadcasts import ArmResult, Broadcast, choose_winner
from stagecoach.engine.domain.content import (
    ContentError,
    ContentLibrary,
    LinkSigner,
    RenderContact,
    RenderedMessage,
)
from stagecoach.engine.domain.policy import SendPolicy
from stagecoach.engine.protocol import (
    BROADCAST_STATUS_ACTIVITY,
    EVALUATE_AB_ACTIVITY,
    SEND_BATCH_ACTIVITY,
    SNAPSHOT_ACTIVITY,
)
from stagecoach.engine.protocol.connector import (
    CommittingConnector,
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

if TYPE_CHECKING:
    from stagecoach.connectors.wechat.masssend import WeChatMassSender

REFUSALS = frozenset(
    {"policy_rejected", "sender_rejected", "wechat_quota_exhausted", "wechat_45009"}
)
"""Permanent errors that are the provider refusing us, not one recipient: the broadcast
pauses with the reason rather than burning through the list."""

FLUSH_EVERY = 0.02
FLUSH_AT = 32
"""Sent rows are written every 20 ms, or as soon as 32 are waiting (``_SentRecorder``)."""

SENT_RECORD_PATIENCE = 40.0
"""Seconds a batch keeps retrying the record of an accepted send (the activity's
start-to-close is 10 minutes; its heartbeat goes on meanwhile)."""

HEARTBEAT_EVERY = 0.25
"""Seconds between a batch's heartbeats while it sends (its heartbeat timeout is 30 s)."""

MAX_ATTEMPTS = 5
"""Retryable failures per recipient before it is counted failed."""

RETRY_AFTER = timedelta(minutes=1)
HOLD_AS_REFUSAL = timedelta(minutes=10)
"""A retry hint longer than this is the provider holding every send back (a daily quota),
not one recipient's trouble: the broadcast pauses with the provider's words."""
MASS_BATCH = 10_000
"""Recipients per ``wechat_mass`` batch: WeChat's most openids in one job."""
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
        mass_sender: WeChatMassSender | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = db
        self._mass = mass_sender
        self._content = content
        self._connectors = dict(connectors)
        self._policy = policy
        self._signer = signer
        self._clock = clock
        self._specs: dict[str, tuple[Broadcast, str]] = {}

    def all(self) -> list[Callable[..., object]]:
        return [self.snapshot, self.send_batch, self.evaluate_ab, self.set_status]

    def batches(self) -> list[Callable[..., object]]:
        """What the broadcast queue's worker runs: the batches alone."""
        return [self.send_batch]

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
        # A mass send's batch is one job of up to 10,000 openids: WeChat counts jobs.
        limit = MASS_BATCH if broadcast.channel == "wechat_mass" else request.limit
        recipients = await asyncio.to_thread(
            store.due_recipients,
            self._db,
            request.broadcast_id,
            now=now,
            limit=limit,
            arms_only=request.arms_only,
        )
        result = BatchResult()
        if recipients:
            await self._send_all(broadcast, version, recipients, now, result)
        result.next_due = await asyncio.to_thread(
            store.next_due, self._db, broadcast.name, arms_only=request.arms_only
        )
        return result

    async def _mass_send(
        self,
        broadcast: Broadcast,
        version: str,
        recipients: list[store.Recipient],
        now: datetime,
        result: BatchResult,
    ) -> None:
        """A ``wechat_mass`` batch: the eligible recipients' openids in mass-send jobs
        (one per locale, 2 to 10,000 openids each), each recorded in ``broadcast_jobs``
        before and after it is sent. The job's clientmsgid derives from the batch's first
        recipient, so a batch retried after a crash repeats it and WeChat sends nothing
        twice (45065, answered as already sent). Quiet hours do not apply: one job reaches
        every recipient at once, as WeChat delivers it."""
        from stagecoach.connectors.wechat.masssend import MIN_OPENIDS, jobs_for
        from stagecoach.engine.services.broadcasts.wechat_jobs import record_job_started

        sender = self._mass
        if sender is None:
            result.refused = (
                "no WeChat mass sender is configured: set STAGECOACH_WECHAT_CONNECTOR=wechat"
                " with the Official Account's credentials"
            )
            return
        settled: list[store.Settled] = []
        eligible = await self._eligible(broadcast, recipients, now, result, settled, "wechat")
        groups: dict[str, list[tuple[store.Recipient, str]]] = {}
        for r, openid in eligible:
            groups.setdefault(r.locale, []).append((r, openid))
        if groups:
            # A locale with one recipient joins the largest group (a job needs two).
            largest = max(groups, key=lambda loc: len(groups[loc]))
            for loc in [loc for loc, g in groups.items() if len(g) < MIN_OPENIDS]:
                if loc != largest:
                    groups[largest] += groups.pop(loc)
        first = recipients[0].seq
        for locale, group in groups.items():
            if len(group) < MIN_OPENIDS:
                for r, _ in group:
                    settled.append(store.Settled(r.contact_id, "held", "wechat_mass_single"))
                    result.held["wechat_mass_single"] = result.held.get("wechat_mass_single", 0) + 1
                continue
            try:
                text, content_version = self._mass_text(broadcast.content, locale, now)
            except ContentError as exc:
                for r, _ in group:
                    settled.append(store.Settled(r.contact_id, "failed", f"content: {exc}"[:256]))
                result.failed += len(group)
                continue
            by_openid = {openid: r for r, openid in group}
            for job in jobs_for(
                broadcast.name,
                list(by_openid),
                msgtype="text",
                content=text,
                label=f"{first}:{locale}",
            ):
                members = [by_openid[o] for o in job.openids or ()]
                await asyncio.to_thread(
                    record_job_started,
                    self._db,
                    broadcast_id=broadcast.name,
                    appid=sender.config.appid,
                    clientmsgid=job.clientmsgid,
                    msg_id=None,
                    target=job.target,
                )
                try:
                    answer = await sender.send(job)
                except RetryableDeliveryError as exc:
                    settled += [self._retry(r, exc.message, now) for r in members]
                    result.retry += len(members)
                    continue
                except PermanentDeliveryError as exc:
                    if exc.code in REFUSALS:
                        result.refused = f"{exc.code}: {exc.message}"
                        break
                    settled += [
                        store.Settled(r.contact_id, "failed", (exc.code or "permanent")[:256])
                        for r in members
                    ]
                    result.failed += len(members)
                    continue
                await asyncio.to_thread(
                    record_job_started,
                    self._db,
                    broadcast_id=broadcast.name,
                    appid=sender.config.appid,
                    clientmsgid=job.clientmsgid,
                    msg_id=answer.msg_id,
                    target=job.target,
                )
                await asyncio.to_thread(
                    store.write_deliveries,
                    self._db,
                    broadcast,
                    version,
                    "wechat_mass",
                    [
                        store.DeliveryWrite(
                            r.contact_id,
                            "sent",
                            r.variant,
                            broadcast.content,
                            content_version,
                            provider_message_id=answer.msg_id,
                            sent_at=now,
                        )
                        for r in members
                    ],
                )
                settled += [store.Settled(r.contact_id, "sent", sent_at=now) for r in members]
                result.sent += len(members)
            if result.refused:
                break
        await asyncio.to_thread(store.settle, self._db, broadcast.name, settled)

    def _mass_text(self, content_id: str, locale: str, now: datetime) -> tuple[str, str]:
        """A mass send's text: the item's WeChat title, description and link. (An
        ``mpnews`` article must first be uploaded to WeChat's media library, which
        Stagecoach does not manage.)"""
        rendered = self._content.render(
            content_id,
            channel="wechat",
            locale=locale,
            contact=RenderContact(contact_id="broadcast", attributes={}, openid="broadcast"),
            now=now,
            signer=None,
        )
        body = dict(rendered.wechat or {})
        parts: list[str] = []
        if body.get("msgtype") == "text":
            parts = [str((body.get("text") or {}).get("content") or "")]
        for article in (body.get("news") or {}).get("articles") or [body]:
            parts += [str(article.get(k) or "") for k in ("title", "description", "url")]
        text = "\n".join(p for p in parts if p).strip()
        if not text:
            raise ContentError(
                f"content {content_id!r} has no WeChat text, title or description to mass-send",
                fix="give the item a WeChat variant with a title and description",
            )
        return text, rendered.content_version

    async def _eligible(
        self,
        broadcast: Broadcast,
        recipients: list[store.Recipient],
        now: datetime,
        result: BatchResult,
        settled: list[store.Settled],
        channel: str,
        *,
        quiet_hours: bool = False,
    ) -> list[tuple[store.Recipient, str]]:
        """The recipients who may be sent now, with their address; the rest are settled
        (held by reason, already sent, or pending again after quiet hours)."""
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
        eligible: list[tuple[store.Recipient, str]] = []

        def hold(r: store.Recipient, reason: str) -> None:
            settled.append(store.Settled(r.contact_id, "held", reason))
            result.held[reason] = result.held.get(reason, 0) + 1

        for r in recipients:
            address = addresses[r.contact_id]
            if r.delivered == "sent":
                settled.append(store.Settled(r.contact_id, "sent", sent_at=now))
            elif address is None:
                hold(r, f"no_address:{channel}")
            elif not r.consented(channel):
                hold(r, f"no_consent:{channel}")
            elif address in blocked:
                hold(r, f"suppressed:{channel}")
            elif quiet_hours and (quiet := self._policy.quiet_until(now, r.timezone)) is not None:
                settled.append(store.Settled(r.contact_id, "pending", "quiet_hours", send_at=quiet))
                result.retry += 1
            elif not broadcast.override_caps and self._policy.cap_until(
                recent.get(r.contact_id, ()), now
            ):
                hold(r, "frequency_cap")
            else:
                eligible.append((r, address))
        return eligible

    async def _send_all(
        self,
        broadcast: Broadcast,
        version: str,
        recipients: list[store.Recipient],
        now: datetime,
        result: BatchResult,
    ) -> None:
        channel = broadcast.channel
        if channel == "wechat_mass":
            await self._mass_send(broadcast, version, recipients, now, result)
            return
        connector = self._connectors.get(channel)
        if connector is None:
            result.refused = f"no connector configured for channel {channel!r}"
            return
        settled: list[store.Settled] = []
        to_send = await self._eligible(
            broadcast, recipients, now, result, settled, channel, quiet_hours=True
        )
        prepared = await asyncio.to_thread(self._render_all, broadcast, to_send, now)
        # Every recipient's delivery row in one transaction before any send: `sending`
        # (the key recorded first), or `failed` for content that would not render.
        await asyncio.to_thread(
            store.write_deliveries,
            self._db,
            broadcast,
            version,
            channel,
            [p.before for p in prepared],
        )
        for p in prepared:
            if p.rendered is None:
                settled.append(store.Settled(p.recipient.contact_id, "failed", p.before.error))
                result.failed += 1
        recorder = _SentRecorder(self._db, broadcast, version, channel)
        # Once a batch: a runtime-checkable Protocol's isinstance walks its members, which
        # per recipient was a few percent of a broadcast's CPU.
        committing = (
            isinstance(connector, CommittingConnector) and connector.commits_before_end_of_data
        )
        gate = asyncio.Semaphore(CONCURRENCY)
        last_beat = 0.0

        def beat() -> None:
            # The SDK throttles what it sends to the server, but each call still costs a
            # task: a few a second are plenty for a 30 s heartbeat timeout.
            nonlocal last_beat
            if (moment := time.monotonic()) - last_beat >= HEARTBEAT_EVERY:
                last_beat = moment
                activity.heartbeat()

        refusal: list[str] = []
        after: list[store.DeliveryWrite] = []

        async def one(p: _Prepared) -> None:
            async with gate:
                if refusal:
                    return
                outcome, write = await self._send_one(
                    broadcast, p, connector, now, recorder, committing=committing
                )
                if outcome.status == "sent":
                    recorder.add(write)
                elif write is not None:
                    after.append(write)
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
                beat()

        recorder.start()
        try:
            await asyncio.gather(*(one(p) for p in prepared if p.rendered is not None))
        finally:
            await recorder.close()
        if refusal:
            result.refused = refusal[0]
        await asyncio.to_thread(
            store.write_deliveries, self._db, broadcast, version, channel, after
        )
        await asyncio.to_thread(store.settle, self._db, broadcast.name, settled)

    def _render_all(
        self,
        broadcast: Broadcast,
        to_send: list[tuple[store.Recipient, str]],
        now: datetime,
    ) -> list[_Prepared]:
        """Each recipient's message, rendered before anything is written or sent."""
        prepared: list[_Prepared] = []
        for r, address in to_send:
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
                failed = store.DeliveryWrite(
                    r.contact_id, "failed", r.variant, content_id, error=f"content: {exc}"[:256]
                )
                prepared.append(_Prepared(r, address, key, None, failed))
                continue
            if arm is not None and arm.subject:
                rendered = replace(rendered, subject=arm.subject)
            sending = store.DeliveryWrite(
                r.contact_id, "sending", r.variant, content_id, rendered.content_version
            )
            prepared.append(_Prepared(r, address, key, rendered, sending))
        return prepared

    async def _send_one(
        self,
        broadcast: Broadcast,
        p: _Prepared,
        connector: Connector,
        now: datetime,
        recorder: _SentRecorder,
        *,
        committing: bool,
    ) -> tuple[store.Settled, store.DeliveryWrite | None]:
        """Send one rendered message: its outcome for the snapshot and for its delivery
        row (written by the caller, in bulk; ``None`` when the row is already right).
        Suppressions are written here, as rare.

        A connector with a point of no return (SMTP) has the ``sent`` row committed
        there, before the message can no longer be taken back: a worker killed at any
        moment then leaves either a message the provider discarded under a ``sending``
        row (sent again by the retried batch) or a ``sent`` row (never sent again)."""
        r = p.recipient
        assert p.rendered is not None
        message = OutgoingMessage(
            channel=broadcast.channel,
            to=p.address,
            idempotency_key=p.key,
            contact_id=r.contact_id,
            rendered=p.rendered.to_dict(),
        )
        committed = False

        async def commit(message_id: str) -> None:
            nonlocal committed
            await recorder.commit(
                store.DeliveryWrite(
                    r.contact_id, "sent", provider_message_id=message_id, sent_at=now
                )
            )
            committed = True

        try:
            if committing:
                sent = await cast(CommittingConnector, connector).send(message, commit=commit)
            else:
                sent = await connector.send(message)
        except RetryableDeliveryError as exc:
            if exc.retry_after is not None and exc.retry_after > HOLD_AS_REFUSAL:
                # The provider holds every send back for long (WeChat's daily quota until
                # midnight in Beijing): pause with its word rather than wait per recipient.
                return store.Settled(r.contact_id, "refused", exc.message[:256]), None
            settled = self._retry(r, exc.message, now, exc.retry_after)
            if settled.status == "failed":
                return settled, store.DeliveryWrite(r.contact_id, "failed", error=exc.message)
            return settled, store.DeliveryWrite(r.contact_id, "sending", error=exc.message)
        except ConsentRevoked as exc:
            await asyncio.to_thread(
                store.suppress,
                self._db,
                broadcast.channel,
                p.address,
                "consent_revoked",
                r.contact_id,
            )
            write = store.DeliveryWrite(r.contact_id, "blocked", error=exc.message)
            return store.Settled(r.contact_id, "held", "consent_revoked"), write
        except PermanentDeliveryError as exc:
            if exc.code in REFUSALS:
                # Not this recipient's fault: leave them pending for the resume.
                reason = f"{exc.code}: {exc.message}"[:256]
                write = store.DeliveryWrite(r.contact_id, "sending", error=exc.message)
                return store.Settled(r.contact_id, "refused", reason), write
            if exc.code == "hard_bounce":
                await asyncio.to_thread(
                    store.suppress,
                    self._db,
                    broadcast.channel,
                    p.address,
                    "hard_bounce",
                    r.contact_id,
                )
            write = store.DeliveryWrite(r.contact_id, "failed", error=exc.message)
            return store.Settled(r.contact_id, "failed", (exc.code or "permanent")[:256]), write
        done = store.Settled(r.contact_id, "sent", sent_at=now, variant=r.variant)
        if committed:
            return done, None
        return done, store.DeliveryWrite(
            r.contact_id, "sent", provider_message_id=sent.provider_message_id, sent_at=now
        )

    def _retry(
        self,
        r: store.Recipient,
        message: str,
        now: datetime,
        hint: timedelta | None = None,
    ) -> store.Settled:
        """Pending again a minute later (or after the provider's hint, if longer), or
        failed after :data:`MAX_ATTEMPTS` tries."""
        tried = 1
        if r.reason and r.reason.startswith("retry:"):
            tried = int(r.reason.removeprefix("retry:") or 0) + 1
        if tried >= MAX_ATTEMPTS:
            return store.Settled(
                r.contact_id, "failed", f"retryable, {tried} tries: {message}"[:256]
            )
        after = max(RETRY_AFTER, hint or RETRY_AFTER)
        return store.Settled(r.contact_id, "pending", f"retry:{tried}", send_at=now + after)


@dataclass(frozen=True)
class _Prepared:
    """A recipient ready to send: the rendered message (``None`` when it would not
    render) and the delivery row written before any send."""

    recipient: store.Recipient
    address: str
    key: str
    rendered: RenderedMessage | None
    before: store.DeliveryWrite


class _SentRecorder:
    """Writes ``sent`` delivery rows as sends complete, a group at a time.

    A row per send, each in its own transaction, was most of a batch's CPU (the
    broadcast benchmark's profile: 58% in commits). Here each flush writes what has
    completed since the last one, every :data:`FLUSH_EVERY` seconds or
    :data:`FLUSH_AT` rows. A send at a connector's point of no return (:meth:`commit`)
    is flushed at once and waits for it, with every other send that reached that point
    meanwhile (a group commit: the more sends in flight, the larger each group). A
    locked or absent database is retried in place for up to
    :data:`SENT_RECORD_PATIENCE` seconds: past the send, a failed batch would be retried
    and would send again."""

    def __init__(self, db: Engine, broadcast: Broadcast, version: str, channel: str) -> None:
        self._db, self._broadcast, self._version, self._channel = db, broadcast, version, channel
        self._pending: list[store.DeliveryWrite] = []
        self._waiting: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def add(self, write: store.DeliveryWrite | None) -> None:
        if write is None:
            return
        self._pending.append(write)
        if len(self._pending) >= FLUSH_AT:
            self._wake.set()

    async def commit(self, write: store.DeliveryWrite) -> None:
        """Write ``write`` in the next group and return once it is committed; raises what
        the write raised if it could not be."""
        if self._task is None or self._task.done():
            raise RuntimeError("the sent-row recorder is not running")
        done = asyncio.get_running_loop().create_future()
        self._pending.append(write)
        self._waiting.append(done)
        self._wake.set()
        await done

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            if not self._waiting:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), FLUSH_EVERY)
            self._wake.clear()
            await self._flush()
            if self._closing and not self._pending:
                return

    async def _flush(self) -> None:
        if not self._pending:
            return
        group, self._pending = self._pending, []
        waiting, self._waiting = self._waiting, []
        delay = 0.05
        deadline = time.monotonic() + SENT_RECORD_PATIENCE
        while True:
            try:
                await asyncio.to_thread(
                    store.update_deliveries,
                    self._db,
                    self._broadcast,
                    self._version,
                    self._channel,
                    group,
                )
            except OperationalError as exc:
                if time.monotonic() + delay <= deadline:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                for done in waiting:
                    if not done.done():
                        done.set_exception(exc)
                if waiting:
                    return  # the sends that waited raise; the batch fails and is retried
                raise
            for done in waiting:
                if not done.done():
                    done.set_result(None)
            return
