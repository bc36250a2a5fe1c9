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
from stagecoach.engine.services.storage.models import Event, Outbox
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.gateway import Opening

log = logging.getLogger("stagecoach.forwarder")

RUNNING_MEMORY = 100_000
"""Contacts a forwarder remembers as having a running workflow (a few MB)."""


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


@dataclass
class ForwarderStats:
    forwarded: int = 0
    signals: int = 0
    started: int = 0
    """Signals sent with start (the rest went to a workflow known to be running)."""
    failures: int = 0
    last_error: str = ""
    retry_at: dict[str, float] = field(default_factory=dict)


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

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Forward until cancelled. While Temporal is unreachable it retries the
        connection with backoff (0.5 s doubling to 30 s) and leaves the outbox alone, so
        an API taking events at full speed is not slowed by a forwarder spinning."""
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
                    await asyncio.wait_for(self._wake.wait(), self._idle)

    async def drain_once(self) -> int:
        """One pass over the oldest rows; returns how many were forwarded."""
        rows = await asyncio.to_thread(self._read)
        if not rows:
            return 0
        client = await self._connect()
        by_contact: dict[str, list[_Row]] = {}
        now = asyncio.get_running_loop().time()
        for row in rows:
            if self.stats.retry_at.get(row.contact_id, 0) > now:
                continue  # backing off: its later rows wait behind it
            by_contact.setdefault(row.contact_id, []).append(row)
        results = await asyncio.gather(
            *(self._forward(client, cid, items) for cid, items in by_contact.items())
        )
        done = [row_id for ids in results for row_id in ids]
        if done:
            # One transaction for the whole pass: fewer turns at SQLite's write lock,
            # which the API's ingestion needs too.
            await asyncio.to_thread(self._delete, done)
            self.stats.forwarded += len(done)
            metrics.OUTBOX_FORWARDED.inc(len(done))
        return len(done)

    async def _connect(self) -> Client:
        if self._client is None:
            self._client = await self._client_factory()
        return self._client

    def _read(self) -> list[_Row]:
        with Session(self._db) as session:
            rows = session.execute(
                select(
                    col(Outbox.id),
                    col(Outbox.contact_id),
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
            ).all()
        out: list[_Row] = []
        for oid, cid, merged_into, mid, name, at, props, context, source, channel in rows:
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
            out.append(_Row(oid, cid, event, merged_into))
        return out

    async def _forward(self, client: Client, contact_id: str, rows: list[_Row]) -> list[int]:
        """Send one contact's rows in order; returns the ids Temporal accepted."""
        async with self._gate:
            done: list[int] = []
            try:
                for chunk in _chunks(rows, self._per_signal):
                    await self._send(client, contact_id, chunk)
                    done += [r.id for r in chunk]
                    self.stats.signals += 1
                    metrics.OUTBOX_SIGNALS.inc()
            except (RPCError, RuntimeError, OSError) as exc:
                self.stats.failures += 1
                metrics.OUTBOX_FAILURES.labels("signal").inc()
                self.stats.last_error = f"{contact_id}: {exc}"
                attempts = await asyncio.to_thread(self._failed, rows[len(done) :], str(exc))
                delay = min(60.0, 0.5 * 2 ** min(attempts, 7))
                self.stats.retry_at[contact_id] = asyncio.get_running_loop().time() + delay
            else:
                self.stats.retry_at.pop(contact_id, None)
            return done

    async def _send(self, client: Client, contact_id: str, rows: list[_Row]) -> None:
        control = [r for r in rows if r.merged_into]
        events = [r.event for r in rows if r.event is not None]
        if events:
            opening = None
            if self._opener is not None:
                opening = await self._opener.open(contact_id, event=events[0])
            signal, arg = (
                (EVENT_SIGNAL, events[0])
                if len(events) == 1
                else (EVENTS_SIGNAL, EventBatch(events=events))
            )
            known = opening is None and await self._signal_running(client, contact_id, signal, arg)
            if not known:
                await self._start(client, contact_id, opening, signal, arg)
        for row in control:
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

    def _delete(self, ids: list[int]) -> None:
        with Session(self._db) as session:
            session.execute(delete(Outbox).where(col(Outbox.id).in_(ids)))
            session.commit()

    def _failed(self, rows: list[_Row], error: str) -> int:
        if not rows:
            return 0
        with Session(self._db) as session:
            session.execute(
                update(Outbox)
                .where(col(Outbox.id).in_([r.id for r in rows]))
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
