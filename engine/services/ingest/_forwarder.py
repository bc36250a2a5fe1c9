"""The outbox forwarder: stored events to their contacts' workflows, in order, once each.

It reads the oldest outbox rows, groups them by contact, and sends each contact's in one
signal-with-start (``event`` for one, ``events`` for several), with bounded concurrency.
A row is deleted only after Temporal accepted the signal; the workflow dedupes by
message id, so a crash between the two re-sends at worst a duplicate that changes
nothing. A contact whose send failed is retried with backoff, and its later rows wait
behind it (order per contact). While Temporal is unreachable the outbox grows and
``backlog()`` (shown by ``stagecoach doctor`` and ``/metrics``) says by how much. The
``stagecoach_outbox_*`` counters (``stagecoach.engine.metrics``) count rows forwarded, signals and
failures.

With several API replicas on one database (``stagecoach.engine.services.leases``), the
outbox is split into ``OUTBOX_BUCKETS`` buckets by contact, and each bucket is forwarded
only by the replica holding its lease: a replica reads only its buckets' rows, so a
contact's events go out from one place, in order, and not twice. Each replica holds a
fair share (``ceil(buckets / live replicas)``), taking free or expired buckets and giving
back extras when a replica joins; a replica that dies stops renewing and its buckets are
taken within ``STAGECOACH_LEASE_SECONDS``. A replica paused past its lease and resumed is
stopped twice: before each signal it checks its local deadline and drops the rows of a
lapsed bucket (``stagecoach_outbox_fenced``), and the delete after a signal is refused by
the database if the bucket's fencing token moved; those rows are signalled again by the
new holder and counted (``stagecoach_outbox_duplicates``); the workflow drops the copy
by message id. docs/operations/replicas.md says why buckets and not one elected forwarder.

A contact seen for the first time is opened first (``opener``), so its workflow starts
with its definitions and search attributes (see ``stagecoach.engine.temporal.gateway.Opening``). A
contact whose workflow this forwarder has already started or signalled gets a plain signal: the
server skips the start request's checks, about an eighth of its work for the event. A
plain signal answered NOT_FOUND (the run ended: merged, erased, terminated) is sent
again with start, which is what every send did before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Engine, delete, func, select, update
from sqlmodel import Session, col
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from stagecoach.engine import metrics
from stagecoach.engine.protocol.messages import (
    CONTACT_WORKFLOW,
    EVENT_SIGNAL,
    EVENTS_SIGNAL,
    MERGED_SIGNAL,
    ContactInput,
    EventBatch,
    EventMessage,
    Merged,
    contact_workflow_id,
)
from stagecoach.engine.protocol.search_keys import typed
from stagecoach.engine.services.leases import Grant, Leases
from stagecoach.engine.services.storage.models import OUTBOX_BUCKETS, Event, Outbox
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.gateway import Opening

log = logging.getLogger("stagecoach.forwarder")

RUNNING_MEMORY = 100_000
"""Contacts a forwarder remembers as having a running workflow (a few MB)."""
BUCKET_LEASE = "outbox/bucket/"
"""Lease name prefix of an outbox bucket: ``outbox/bucket/07``."""
MEMBER_LEASE = "outbox/member/"
"""Lease name prefix of a live forwarder (one per process): how many share the buckets."""


DELETE_EVERY = 0.5
"""Seconds between deletes of the rows Temporal accepted during a pass: a pass of 1,000
rows takes seconds, and a replica killed mid-pass leaves at most this much accepted and
not deleted, to be signalled again. Every 0.05 s cost about 75% more CPU an event."""
IDLE_SHARE = 5
"""With other replicas, an idle forwarder polls this many times per ``idle``."""


def bucket_lease(bucket: int) -> str:
    return f"{BUCKET_LEASE}{bucket:02d}"


class Opener(Protocol):
    async def open(
        self, contact_id: str, *, event: EventMessage | None = None, journey: str | None = None
    ) -> Opening | None: ...


@dataclass
class _Row:
    id: int
    contact_id: str
    event: EventMessage | None
    merged_into: str | None
    bucket: int = 0


class _Lapsed(Exception):
    """The bucket's lease lapsed (or moved) mid-pass: send nothing more from it."""


@dataclass
class ForwarderStats:
    forwarded: int = 0
    signals: int = 0
    started: int = 0
    """Signals sent with start (the rest went to a workflow known to be running)."""
    failures: int = 0
    last_error: str = ""
    retry_at: dict[str, float] = field(default_factory=dict)
    fenced: int = 0
    """Rows not sent because this replica's lease on their bucket lapsed mid-pass."""
    duplicates: int = 0
    """Rows signalled whose delete the database refused (the bucket's lease moved): the
    new holder signals them again, and the workflow drops the copy."""


class Forwarder:
    """Drains the outbox to Temporal; ``wake()`` after a commit skips the idle wait."""

    def __init__(
        self,
        db: Engine,
        settings: Settings,
        client: Callable[[], Awaitable[Client]],
        *,
        opener: Opener | None = None,
        concurrency: int = 32,
        batch: int = 1000,
        per_signal: int = 100,
        idle: float = 0.5,
        leases: Leases | None = None,
    ) -> None:
        self._db = db
        self._settings = settings
        self._client_factory = client
        self._client: Client | None = None
        self._opener = opener
        self._gate = asyncio.Semaphore(concurrency)
        self._batch = batch
        self._per_signal = per_signal
        self._idle = idle
        self._wake = asyncio.Event()
        self._running: OrderedDict[str, None] = OrderedDict()
        self.stats = ForwarderStats()
        self._leases = leases
        """None: this forwarder is alone on its database and forwards every bucket."""
        self._grants: dict[int, Grant] = {}
        self._member: Grant | None = None
        self._balanced_at = -math.inf
        self._members = 1

    @property
    def buckets(self) -> list[int]:
        """The buckets this forwarder holds now (all of them without leases)."""
        if self._leases is None:
            return list(range(OUTBOX_BUCKETS))
        return sorted(self._grants)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Forward until cancelled. While Temporal is unreachable it retries the
        connection with backoff (0.5 s doubling to 30 s) and leaves the outbox alone, so
        an API taking events at full speed is not slowed by a forwarder spinning."""
        keeper = None
        if self._leases is not None:
            keeper = asyncio.create_task(self._keep(), name="outbox-leases")
        try:
            await self._forward_forever()
        finally:
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
                await self._release_all()

    async def _forward_forever(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._connect()
            except Exception as exc:  # unreachable is a state, not a crash
                self.stats.failures += 1
                metrics.OUTBOX_FAILURES.labels("unreachable").inc()
                self.stats.last_error = f"cannot reach Temporal: {exc}"
                log.warning("outbox waiting for Temporal: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            if self._leases is not None:
                # Only once Temporal answers: a replica that cannot reach it takes no
                # buckets, so the others forward them.
                try:
                    await self._balance()
                except Exception as exc:  # the database away: renewals lapse, sends stop
                    self.stats.last_error = f"leases: {exc}"
                    log.warning("outbox leases: %s", exc)
            try:
                moved = await self.drain_once()
            except Exception as exc:
                self.stats.last_error = str(exc)
                metrics.OUTBOX_FAILURES.labels("error").inc()
                log.warning("outbox forwarding failed: %s", exc)
                moved = 0
            if moved == 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._idle_wait())

    def _idle_wait(self) -> float:
        """How long an idle forwarder waits for a wake-up before looking again. Alone, a
        wake-up comes with every event this API stores; with other replicas, events
        they store for this one's buckets wake nobody here, so it looks five times as
        often (an indexed read of an empty outbox: a fraction of a millisecond)."""
        return self._idle if self._members <= 1 else self._idle / IDLE_SHARE

    async def drain_once(self) -> int:
        """One pass over the oldest rows of this forwarder's buckets; returns how many
        were forwarded."""
        grants: dict[int, Grant] | None = None
        if self._leases is not None:
            margin = self._leases.margin
            grants = {b: g for b, g in self._grants.items() if g.usable(margin)}
            if not grants:
                return 0
        rows = await asyncio.to_thread(self._read, None if grants is None else sorted(grants))
        if not rows:
            return 0
        client = await self._connect()
        by_contact: dict[str, list[_Row]] = {}
        now = asyncio.get_running_loop().time()
        for row in rows:
            if self.stats.retry_at.get(row.contact_id, 0) > now:
                continue  # backing off: its later rows wait behind it
            by_contact.setdefault(row.contact_id, []).append(row)
        accepted: list[_Row] = []
        forwarding = asyncio.gather(
            *(
                self._forward(client, cid, items, grants, accepted)
                for cid, items in by_contact.items()
            )
        )
        moved = 0
        try:
            # What Temporal accepted is deleted every DELETE_EVERY while the pass goes
            # on, in one transaction each time (few turns at SQLite's write lock, which
            # ingestion needs too), not only at its end: a replica killed mid-pass
            # leaves less to be signalled twice.
            while not forwarding.done():
                await asyncio.wait([forwarding], timeout=DELETE_EVERY)
                moved += await self._remove(accepted, grants)
            await forwarding
        finally:
            # Stopped mid-pass (a rolling deploy): send nothing more, and delete what
            # was accepted, so the replica taking over does not signal it again.
            forwarding.cancel()
            moved += await self._remove(accepted, grants)
        return moved

    async def _remove(self, accepted: list[_Row], grants: dict[int, Grant] | None) -> int:
        """Delete the rows accepted so far (emptying ``accepted``); returns how many."""
        if not accepted:
            return 0
        done = accepted[:]
        accepted.clear()
        refused = await asyncio.to_thread(self._delete, done, grants)
        if refused:
            self.stats.duplicates += refused
            metrics.OUTBOX_DUPLICATES.inc(refused)
            log.warning("outbox: %d signalled rows were refused by fencing", refused)
        moved = len(done) - refused
        self.stats.forwarded += moved
        metrics.OUTBOX_FORWARDED.inc(moved)
        return moved

    # --- leases ------------------------------------------------------------------------

    async def _balance(self) -> None:
        """Hold a fair share of the buckets: join (a member lease), count the live
        forwarders, give back extras (between passes, so none is mid-send) or take free
        and expired ones. Runs at most every ``renew_every`` seconds."""
        leases = self._leases
        assert leases is not None
        if time.monotonic() - self._balanced_at < leases.renew_every:
            return
        if self._balanced_at == -math.inf:
            # Each process start adds a member row: forget those long gone.
            await asyncio.to_thread(leases.prune, MEMBER_LEASE)
        self._balanced_at = time.monotonic()
        member = MEMBER_LEASE + leases.holder
        got = await asyncio.to_thread(leases.acquire, [member])
        self._member = got.get(member)
        members = max(1, await asyncio.to_thread(leases.live, MEMBER_LEASE))
        self._members = members
        target = math.ceil(OUTBOX_BUCKETS / members)
        if len(self._grants) > target:
            extra = sorted(self._grants)[target:]
            give = [self._grants.pop(b) for b in extra]
            await asyncio.to_thread(leases.release, give)
            log.info("outbox: gave back %d buckets (%d forwarders)", len(give), members)
        elif len(self._grants) < target:
            free = [bucket_lease(b) for b in range(OUTBOX_BUCKETS) if b not in self._grants]
            taken = await asyncio.to_thread(leases.acquire, free, limit=target - len(self._grants))
            for name, grant in taken.items():
                self._grants[int(name.removeprefix(BUCKET_LEASE))] = grant
            if taken:
                log.info("outbox: took %d buckets (%d forwarders)", len(taken), members)
        metrics.OUTBOX_BUCKETS.set(len(self._grants))

    async def _keep(self) -> None:
        """Renew the member and bucket leases every ``renew_every``; a bucket that
        another replica took meanwhile is dropped here."""
        leases = self._leases
        assert leases is not None
        while True:
            await asyncio.sleep(leases.renew_every)
            held = dict(self._grants)
            asking = [*held.values(), *([self._member] if self._member else [])]
            try:
                renewed = await asyncio.to_thread(leases.renew, asking)
            except Exception as exc:
                log.warning("outbox: renewing leases failed: %s", exc)
                continue
            if self._member is not None:
                self._member = renewed.get(self._member.name)
            for bucket, grant in held.items():
                if self._grants.get(bucket) is not grant:
                    continue  # given back or re-taken meanwhile
                if grant.name in renewed:
                    self._grants[bucket] = renewed[grant.name]
                else:
                    del self._grants[bucket]
                    log.warning("outbox: lost the lease on bucket %d", bucket)
            metrics.OUTBOX_BUCKETS.set(len(self._grants))

    async def _release_all(self) -> None:
        """A clean stop gives every lease back, so the others need not wait them out."""
        leases = self._leases
        assert leases is not None
        give = [*self._grants.values(), *([self._member] if self._member else [])]
        self._grants.clear()
        self._member = None
        metrics.OUTBOX_BUCKETS.set(0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.to_thread(leases.release, give), 5)

    def _check(self, grants: dict[int, Grant] | None, bucket: int) -> None:
        """Before a signal: is this pass's lease on ``bucket`` still surely held?"""
        if grants is None or self._leases is None:
            return
        held = self._grants.get(bucket)
        pass_grant = grants.get(bucket)
        if (
            held is None
            or pass_grant is None
            or held.token != pass_grant.token
            or not held.usable(self._leases.margin)
        ):
            raise _Lapsed(bucket)

    async def _connect(self) -> Client:
        if self._client is None:
            self._client = await self._client_factory()
        return self._client

    def _read(self, buckets: list[int] | None) -> list[_Row]:
        with Session(self._db) as session:
            query = (
                select(
                    col(Outbox.id),
                    col(Outbox.contact_id),
                    col(Outbox.bucket),
                    col(Outbox.merged_into),
                    col(Event.message_id),
                    col(Event.name),
                    col(Event.occurred_at),
                    col(Event.properties),
                    col(Event.context),
                    col(Event.source),
                    col(Event.channel),
                )
                .outerjoin(Event, col(Event.id) == col(Outbox.event_id))
                .order_by(col(Outbox.id))
                .limit(self._batch)
            )
            if buckets is not None and len(buckets) < OUTBOX_BUCKETS:
                query = query.where(col(Outbox.bucket).in_(buckets))
            rows = session.execute(query).all()
        out: list[_Row] = []
        for oid, cid, bucket, merged_into, mid, name, at, props, context, source, channel in rows:
            event = None
            if mid is not None:
                occurred = at if at.tzinfo else at.replace(tzinfo=UTC)
                event = EventMessage(
                    message_id=mid,
                    type=name,
                    occurred_at=occurred,
                    properties=dict(props or {}),
                    traits=dict((context or {}).get("traits") or {}),
                    source=source,
                    channel=channel,
                )
            out.append(_Row(oid, cid, event, merged_into, bucket))
        return out

    async def _forward(
        self,
        client: Client,
        contact_id: str,
        rows: list[_Row],
        grants: dict[int, Grant] | None,
        accepted: list[_Row],
    ) -> list[_Row]:
        """Send one contact's rows in order, adding each chunk Temporal accepted to
        ``accepted`` at once; returns this contact's accepted rows."""
        async with self._gate:
            done: list[_Row] = []
            try:
                for chunk in _chunks(rows, self._per_signal):
                    await self._send(client, contact_id, chunk, grants)
                    done += chunk
                    accepted += chunk
                    self.stats.signals += 1
                    metrics.OUTBOX_SIGNALS.inc()
            except _Lapsed:
                # Another replica may hold the bucket now: it sends these, in order.
                left = len(rows) - len(done)
                self.stats.fenced += left
                metrics.OUTBOX_FENCED.inc(left)
            except (RPCError, RuntimeError, OSError) as exc:
                self.stats.failures += 1
                metrics.OUTBOX_FAILURES.labels("signal").inc()
                self.stats.last_error = f"{contact_id}: {exc}"
                attempts = await asyncio.to_thread(
                    self._failed, rows[len(done) :], str(exc), grants
                )
                delay = min(60.0, 0.5 * 2 ** min(attempts, 7))
                self.stats.retry_at[contact_id] = asyncio.get_running_loop().time() + delay
            else:
                self.stats.retry_at.pop(contact_id, None)
            return done

    async def _send(
        self, client: Client, contact_id: str, rows: list[_Row], grants: dict[int, Grant] | None
    ) -> None:
        control = [r for r in rows if r.merged_into]
        events = [r.event for r in rows if r.event is not None]
        bucket = rows[0].bucket
        if events:
            opening = None
            if self._opener is not None:
                opening = await self._opener.open(contact_id, event=events[0])
            self._check(grants, bucket)  # last thing before the signal leaves
            signal, arg = (
                (EVENT_SIGNAL, events[0])
                if len(events) == 1
                else (EVENTS_SIGNAL, EventBatch(events=events))
            )
            known = opening is None and await self._signal_running(client, contact_id, signal, arg)
            if not known:
                await self._start(client, contact_id, opening, signal, arg)
        for row in control:
            self._check(grants, bucket)
            self._running.pop(contact_id, None)  # the merged run ends
            handle = client.get_workflow_handle(contact_workflow_id(contact_id))
            try:
                await handle.signal(MERGED_SIGNAL, Merged(into=row.merged_into or ""))
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise  # no workflow (never signalled, or already ended): nothing to end

    async def _start(
        self,
        client: Client,
        contact_id: str,
        opening: Opening | None,
        signal: str,
        arg: object,
    ) -> None:
        """Signal with start: starts the contact's workflow if no run is open."""
        self.stats.started += 1
        await client.start_workflow(
            CONTACT_WORKFLOW,
            ContactInput.current(
                contact_id,
                max_events_per_run=self._settings.max_events_per_run,
                definitions=opening.definitions if opening else None,
                opened=opening is not None,
            ),
            id=contact_workflow_id(contact_id),
            task_queue=self._settings.temporal_task_queue,
            start_signal=signal,
            start_signal_args=[arg],
            static_summary=f"contact {contact_id}",
            search_attributes=typed(opening.search_attributes) if opening else None,
        )
        self._remember(contact_id)

    async def _signal_running(
        self, client: Client, contact_id: str, signal: str, arg: object
    ) -> bool:
        """Signal a workflow this forwarder knows to be running; False if it is not
        known, or turned out to have ended (then the caller signals with start)."""
        if contact_id not in self._running:
            return False
        self._running.move_to_end(contact_id)
        handle = client.get_workflow_handle(contact_workflow_id(contact_id))
        try:
            await handle.signal(signal, arg)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            del self._running[contact_id]
            return False
        return True

    def _remember(self, contact_id: str) -> None:
        self._running[contact_id] = None
        self._running.move_to_end(contact_id)
        if len(self._running) > RUNNING_MEMORY:
            self._running.popitem(last=False)

    def _delete(self, rows: list[_Row], grants: dict[int, Grant] | None) -> int:
        """Delete the signalled rows; returns how many fencing refused (their bucket's
        lease moved: the new holder has them, and signals them again)."""
        if grants is None or self._leases is None:
            with Session(self._db) as session:
                session.execute(delete(Outbox).where(col(Outbox.id).in_([r.id for r in rows])))
                session.commit()
            return 0
        leases = self._leases
        by_bucket: dict[int, list[int]] = {}
        for row in rows:
            by_bucket.setdefault(row.bucket, []).append(row.id)
        mine = [grants[b] for b in by_bucket]
        with self._db.begin() as conn:
            # Locked first (PostgreSQL: a takeover waits for this commit), guarded in
            # each statement (SQLite: no takeover between check and write), and checked
            # again after, to count what the guard refused.
            before = leases.held(conn, mine)
            for bucket, ids in by_bucket.items():
                grant = grants[bucket]
                if grant.name in before:
                    conn.execute(delete(Outbox).where(col(Outbox.id).in_(ids), leases.holds(grant)))
            after = leases.held(conn, mine)
        return sum(
            len(ids)
            for bucket, ids in by_bucket.items()
            if grants[bucket].name not in (before & after)
        )

    def _failed(self, rows: list[_Row], error: str, grants: dict[int, Grant] | None) -> int:
        if not rows:
            return 0
        with Session(self._db) as session:
            guard = []
            if grants is not None and self._leases is not None:
                guard = [self._leases.holds(grants[rows[0].bucket])]
            session.execute(
                update(Outbox)
                .where(col(Outbox.id).in_([r.id for r in rows]), *guard)
                .values(attempts=col(Outbox.attempts) + 1, last_error=error[:512])
            )
            session.commit()
            attempts = session.execute(
                select(col(Outbox.attempts)).where(col(Outbox.id) == rows[0].id)
            ).scalar_one_or_none()
        return int(attempts or 1)


def _chunks(rows: list[_Row], size: int) -> list[list[_Row]]:
    return [rows[n : n + size] for n in range(0, len(rows), size)]


def backlog(db: Engine) -> dict[str, Any]:
    """The outbox's size and age, for ``stagecoach doctor`` and ``/metrics``."""
    with Session(db) as session:
        count, oldest = session.execute(
            select(func.count(), func.min(col(Outbox.created_at))).select_from(Outbox)
        ).one()
    age = None
    if oldest is not None:
        oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
        age = (datetime.now(UTC) - oldest).total_seconds()
    return {"outbox_backlog": int(count), "outbox_oldest_seconds": age}
