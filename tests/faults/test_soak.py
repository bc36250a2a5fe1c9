"""The soak run: sustained ingest and journey execution, with memory and backlog over time.

The stack is the fault scenarios' (``_harness.Stack``: ``stagecoach api`` with its outbox
forwarder and ``stagecoach worker`` as child processes, a SQLite file, the session's
Temporal dev server, the generic HTTP email provider as the peer). First ``regulars``
contacts are created through the API exactly as the fault scenarios create theirs. Then,
for ``STAGECOACH_SOAK_SECONDS``, two streams go to ``/v1/batch`` at a declared rate:

- new contacts, ``STAGECOACH_SOAK_NEW_CONTACTS`` a second, each the harness's five
  events: an ``identify`` with an email (a new contact at ``suspect``, which enters
  ``b2b_nurture`` and is sent the whitepaper through the peer), then, a second apart once
  it was accepted, three page views and the whitepaper download (``prospect``; the
  journey then waits three days);
- the rest of ``STAGECOACH_SOAK_RATE`` (events a second in all) as a stream for the
  regulars: blog page views, which scoring uses and the forwarder signals, and
  ``coupon.redeemed`` tracks, which no definition uses and which are only stored.
  Neither moves a regular: blog views score at most 10 a week, short of ``lead`` at 40.

Every ``STAGECOACH_SOAK_SAMPLE_SECONDS`` (10) a sample records the API's and the worker's
RSS (with any children) and CPU, the outbox backlog from the API's ``/metrics``, events
acknowledged to the client and stored in the database, sends recorded and messages the
peer received, and the 1-minute load average. The series is printed as a table and
written to ``.stagecoach/soak/`` as JSON and CSV.

The verdict compares the last third of the load against the middle third (the first is
warm-up: the worker's workflow cache fills there) and fits a slope over both: "bounded"
or "growing", with the numbers. What is asserted is correctness. For every contact, from
the peer and the database: each accepted event stored once, one whitepaper received (one
idempotency key each), the move to ``prospect`` recorded, the outbox drained. Then the
harness's ``Books`` for a seeded sample of :data:`BOOKS_SAMPLE` new contacts and the same
checks for every regular, whose signalled stream events must all be applied: these read
each contact's ``state`` query, a replay for every workflow out of the worker's cache
(1.5 to 3.4 s each on the loaded 2-core machine), so not all 1,200 of the full form.
Worker and API memory growth is asserted only in the full form, with the generous bound
of :data:`GROWTH_BOUND`; timing never is.

    pytest tests/faults/test_soak.py -m faults -s                      # short form, 60 s
    STAGECOACH_SOAK_SECONDS=600 pytest tests/faults/test_soak.py -m faults -s   # full form

``STAGECOACH_SOAK_CLUSTER=1`` runs it against the cluster topology instead
(``tests/cluster``, docs/operations/cluster.md): the Temporal server on PostgreSQL, the
stack's database on the same PostgreSQL, two workers and two API replicas (the clients
send to the first; the two forwarders share the outbox's buckets). The series samples
the first worker and API.

``STAGECOACH_SOAK_RATE`` (50) and ``STAGECOACH_SOAK_NEW_CONTACTS`` (2) set the declared
load (what the 2-core machine held for ten minutes alongside other work),
``STAGECOACH_SOAK_REGULARS`` the stream's contacts (by default enough that none
gets more than :data:`STREAM_PER_REGULAR` signalled events).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import heapq
import json
import math
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func
from sqlmodel import Session, col, select
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.cli.local_cluster import LocalCluster
from stagecoach.engine.domain.contact import EVENT_WINDOW, SEEN_IDS
from stagecoach.engine.protocol.messages import ContactView
from stagecoach.engine.services.ingest import relevant_event_types
from stagecoach.engine.services.storage.models import Contact, Delivery, Event, Outbox
from stagecoach.engine.temporal.gateway import contact_view
from stagecoach.workflows.runtime import definitions_loader
from tests.bench._support import machine
from tests.cluster._topology import api_replica
from tests.cluster.conftest import postgres_bin, temporal_server_bin  # noqa: F401  (fixtures)
from tests.faults._harness import (
    EVENTS_PER_CONTACT,
    FIRST_SEND,
    WAITING_STEP,
    Books,
    Child,
    Figures,
    Person,
    Stack,
    Workload,
    _messages,
    contact_ids,
    drive,
    people,
    until,
)
from tests.helpers import free_port, fresh_postgres_database
from tests.peers.http_email import GENERIC, HttpEmailPeer

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / ".stagecoach" / "soak"
MB = 2**20
FOLLOW_GAP = 1.0
"""Seconds between a new contact's accepted identify and each of its later events."""
TICK = 0.5
"""The pacer's step: every due message goes out in one batch call per tick."""
IN_FLIGHT = 16
"""Batch calls in flight at most (a Segment client's own flush queue)."""
STREAM_PAGE_SHARE = 0.75
"""Share of the regulars' stream that are page views; the rest are coupon tracks."""
BOOKS_SAMPLE = 150
"""New contacts the harness's ``Books`` reconcile one by one (with a ``state`` query
each); every contact is reconciled from the peer and the database."""
STREAM_PER_REGULAR = 450
"""Signalled stream events per regular at most, by default. Past ``EVENT_WINDOW``, so a
regular's kept events stop growing within the run and what grows after that is not by
design; short of ``SEEN_IDS`` and of continue-as-new (2,000 events a run, or the server's
suggestion at some thousands of history events), which would restart the ``run_events``
the books compare."""
GROWTH_BOUND = 0.25
"""Full form only: the worker's and the API's RSS (medians) in the last third may exceed
the middle third's by at most this share. Generous: a healthy full run grew the worker by
2 % (+8 MB), and one starved of CPU by other work, with its sends falling behind, by 13 %.
It still fails the leak that matters most: a workflow cache that stops evicting keeps
about 0.4 MB per contact, and 2 new contacts a second for a third of 600 s is 160 MB,
against about 90 MB allowed on a 360 MB worker."""


class SoakPlanError(ValueError):
    """A ``STAGECOACH_SOAK_*`` variable is malformed: the message names it and the fix."""


def _env_number(name: str, default: float, *, minimum: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SoakPlanError(f"{name}={raw!r} is not a number; set it to e.g. {default:g}") from None
    if value < minimum:
        raise SoakPlanError(f"{name}={raw} is below {minimum:g}; set it to at least {minimum:g}")
    return value


def _env_flag(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise SoakPlanError(f"{name}={raw!r} is not a switch; set it to 1 (on) or 0 (off)")


@dataclass(frozen=True)
class SoakPlan:
    """The declared load, from ``STAGECOACH_SOAK_*`` (or the short form's defaults)."""

    seconds: float = 60.0
    new_contacts: float = 2.0
    """New contacts a second (five events each)."""
    rate: float = 50.0
    """Events a second in all: new contacts' events plus the regulars' stream."""
    regulars: int = 0
    """Contacts the stream goes to; 0: enough that none is signalled more than
    :data:`STREAM_PER_REGULAR` events."""
    sample_every: float = 10.0
    cluster: bool = False
    """Against the cluster topology (``STAGECOACH_SOAK_CLUSTER``), not the dev server."""

    @property
    def stream_rate(self) -> float:
        return self.rate - self.new_contacts * EVENTS_PER_CONTACT

    @property
    def stream_contacts(self) -> int:
        if self.regulars:
            return self.regulars
        share = self.stream_rate * self.seconds * STREAM_PAGE_SHARE
        return max(40, math.ceil(share / STREAM_PER_REGULAR))

    @property
    def full(self) -> bool:
        return self.seconds >= 600

    @property
    def arrivals(self) -> int:
        return int(self.new_contacts * self.seconds)

    @classmethod
    def from_env(cls) -> SoakPlan:
        plan = cls(
            seconds=_env_number("STAGECOACH_SOAK_SECONDS", cls.seconds, minimum=30),
            new_contacts=_env_number("STAGECOACH_SOAK_NEW_CONTACTS", cls.new_contacts, minimum=0.1),
            rate=_env_number("STAGECOACH_SOAK_RATE", cls.rate, minimum=1),
            regulars=int(_env_number("STAGECOACH_SOAK_REGULARS", cls.regulars, minimum=0)),
            sample_every=_env_number("STAGECOACH_SOAK_SAMPLE_SECONDS", cls.sample_every, minimum=1),
            cluster=_env_flag("STAGECOACH_SOAK_CLUSTER"),
        )
        if plan.stream_rate < 0:
            need = plan.new_contacts * EVENTS_PER_CONTACT
            raise SoakPlanError(
                f"STAGECOACH_SOAK_RATE={plan.rate:g} is below the {need:g} events/s the new "
                f"contacts alone send (STAGECOACH_SOAK_NEW_CONTACTS={plan.new_contacts:g} x "
                f"{EVENTS_PER_CONTACT} events); raise the rate or lower the new contacts"
            )
        return plan


PLAN = SoakPlan.from_env()


# --- the load ----------------------------------------------------------------------------


@dataclass
class Streams:
    """What the pacer sent and what the client was told, per stream."""

    arrivals: list[Person] = field(default_factory=list)
    new: Workload = field(default_factory=Workload)
    stream: Workload = field(default_factory=Workload)
    stream_sent: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Stream messages sent per (user id, event type)."""
    behind: float = 0.0
    """Largest lag of the pacer behind its schedule, seconds."""
    latencies: list[float] = field(default_factory=list)
    """Seconds per answered batch call since the sampler last took them."""

    @property
    def accepted(self) -> int:
        return len(self.new.accepted) + len(self.stream.accepted)

    @property
    def in_flight(self) -> int:
        return self.new.in_flight + self.stream.in_flight

    @property
    def created(self) -> int:
        """New contacts whose identify was acknowledged."""
        return sum(f"{p.user_id}-identify" in self.new.accepted for p in self.arrivals)

    def take_latencies(self) -> list[float]:
        taken, self.latencies = self.latencies, []
        return taken


def _stream_message(person: Person, n: int, chance: random.Random) -> dict[str, Any]:
    if chance.random() < STREAM_PAGE_SHARE:
        return {
            "type": "page",
            "userId": person.user_id,
            "messageId": f"{person.user_id}-s{n}",
            "name": "Blog",
            "properties": {"category": "blog", "url": f"https://example.com/blog/{n % 97}"},
        }
    return {
        "type": "track",
        "userId": person.user_id,
        "messageId": f"{person.user_id}-s{n}",
        "event": "coupon.redeemed",
        "properties": {"code": f"SOAK{n % 13}"},
    }


async def pace(
    url: str,
    key: str,
    run: str,
    regulars: list[Person],
    plan: SoakPlan,
    streams: Streams,
    *,
    seed: int,
    give_up_after: float = 120.0,
) -> None:
    """Send both streams for ``plan.seconds`` on schedule: new contacts at
    ``plan.new_contacts`` a second (their later events ``FOLLOW_GAP`` apart once their
    identify was accepted) and the regulars' stream at ``plan.stream_rate``. Each tick's
    due messages go in one ``/v1/batch`` call, resent with the same ids until a 2xx.
    Returns once every message was accepted."""
    chance = random.Random(seed)
    follow: list[tuple[float, int, dict[str, Any]]] = []  # a heap by due time
    order = 0
    later_of: dict[str, list[dict[str, Any]]] = {}
    gate = asyncio.Semaphore(IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()

    async with httpx.AsyncClient(
        base_url=url,
        auth=(key, ""),
        timeout=httpx.Timeout(10.0, connect=2.0),
        limits=httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT),
    ) as http:

        async def post(messages: list[dict[str, Any]], result: Workload) -> None:
            nonlocal order
            deadline = time.monotonic() + give_up_after
            attempt = 0
            async with gate:
                while True:
                    attempt += 1
                    result.calls += 1
                    result.retries += attempt > 1
                    result.in_flight += 1
                    sent_at = time.monotonic()
                    try:
                        response = await http.post("/v1/batch", json={"batch": messages})
                    except httpx.TransportError as exc:
                        result.answers[type(exc).__name__] += 1
                    else:
                        result.answers[str(response.status_code)] += 1
                        streams.latencies.append(time.monotonic() - sent_at)
                        if response.is_success:
                            body = response.json()
                            assert body["accepted"] == len(messages), body
                            result.duplicates_reported += int(body.get("duplicates", 0))
                            now = time.monotonic()
                            for m in messages:
                                result.accepted.add(m["messageId"])
                                for n, later in enumerate(later_of.pop(m["messageId"], [])):
                                    order += 1
                                    due = now + FOLLOW_GAP * (n + 1)
                                    heapq.heappush(follow, (due, order, later))
                            return
                    finally:
                        result.in_flight -= 1
                    assert time.monotonic() < deadline, f"never accepted: {result.answers}"
                    await asyncio.sleep(min(0.25 * attempt, 2.0))

        def launch(messages: list[dict[str, Any]], result: Workload) -> None:
            if messages:
                tasks.add(asyncio.create_task(post(messages, result)))

        started = time.monotonic()
        streams.new.seconds = streams.stream.seconds = 0.0
        sent_stream = 0
        tick = 0
        while True:
            tick += 1
            at = started + tick * TICK
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            streams.behind = max(streams.behind, time.monotonic() - at)
            elapsed = min(tick * TICK, plan.seconds)
            # New contacts due by now, each with its identify.
            new_batch: list[dict[str, Any]] = []
            while len(streams.arrivals) < int(plan.new_contacts * elapsed):
                uid = f"{run}-new-c{len(streams.arrivals)}"
                person = Person(uid, f"{uid}@example.com")
                streams.arrivals.append(person)
                identify, later = _messages(person)
                later_of[identify["messageId"]] = later
                new_batch.append(identify)
            # Later events of earlier contacts, due by now.
            now = time.monotonic()
            while follow and follow[0][0] <= now:
                _, _, message = heapq.heappop(follow)
                new_batch.append(message)
            launch(new_batch, streams.new)
            stream_batch: list[dict[str, Any]] = []
            while sent_stream < int(plan.stream_rate * elapsed):
                person = regulars[chance.randrange(len(regulars))]
                message = _stream_message(person, sent_stream, chance)
                kind = "page.viewed" if message["type"] == "page" else message["event"]
                streams.stream_sent[(person.user_id, kind)] += 1
                stream_batch.append(message)
                sent_stream += 1
            launch(stream_batch, streams.stream)
            for task in [t for t in tasks if t.done()]:
                tasks.discard(task)
                task.result()  # a batch that gave up fails the run here
            if tick * TICK >= plan.seconds and not follow and not later_of and not tasks:
                break
        streams.new.seconds = streams.stream.seconds = time.monotonic() - started


# --- sampling ----------------------------------------------------------------------------


@dataclass
class Sample:
    """One row of the time series."""

    t: float
    phase: str
    accepted: int
    """Events acknowledged to the client (2xx), since the regulars were created."""
    rate: float
    """Events acknowledged a second since the previous sample."""
    p99_ms: float | None
    """Batch call latency, 99th percentile since the previous sample."""
    stored: int
    backlog: int | None
    """Outbox rows waiting (``stagecoach_outbox_backlog`` from ``/metrics``)."""
    oldest_seconds: float | None
    forwarded: int | None
    sent: int
    """Deliveries recorded ``sent``."""
    unsent: int
    """Contacts created (identify acknowledged) whose whitepaper is not sent yet: the
    journey execution's backlog, which the outbox's does not show."""
    received: int
    in_flight: int
    api_rss_mb: float
    worker_rss_mb: float
    temporal_rss_mb: float | None
    api_cpu: float
    """Share of one core since the previous sample, %."""
    worker_cpu: float
    temporal_cpu: float | None
    load1: float


class Rss:
    """A process's RSS and CPU with its children, from psutil."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self._cpu: float | None = None
        self._at = time.monotonic()

    def _tree(self) -> list[psutil.Process]:
        return [self.process, *self.process.children(recursive=True)]

    def rss_mb(self) -> float:
        total = 0
        for proc in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total / MB

    def cpu_percent(self) -> float:
        """Share of one core used since the last call (0 on the first)."""
        used = 0.0
        for proc in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                used += times.user + times.system
        now = time.monotonic()
        share = 0.0 if self._cpu is None else 100 * (used - self._cpu) / max(now - self._at, 1e-6)
        self._cpu, self._at = used, now
        return share


def temporal_pid(address: str) -> int | None:
    """The process listening on the Temporal frontend's port, when psutil can see it."""
    port = int(address.rsplit(":", 1)[1])
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    return None


def _metrics(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("stagecoach_outbox"):
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


class Sampler:
    """The time series: one :class:`Sample` every ``every`` seconds, and on demand."""

    def __init__(
        self,
        stack: Stack,
        peer: HttpEmailPeer,
        streams: Streams,
        regulars: Workload,
        run: str,
        every: float,
    ) -> None:
        self.stack, self.peer, self.streams = stack, peer, streams
        self.seed_accepted, self.regulars = (
            len(regulars.accepted),
            len(regulars.accepted) // EVENTS_PER_CONTACT,
        )
        self.run, self.every = run, every
        self.api = Rss(_pid(stack.children["api"]))
        self.worker = Rss(_pid(stack.children["worker"]))
        pid = temporal_pid(stack.settings.temporal_address)
        self.temporal = Rss(pid) if pid else None
        self.rows: list[Sample] = []
        self.phase = "load"
        self._lock = asyncio.Lock()
        self.started = time.monotonic()
        self._http = httpx.AsyncClient(base_url=stack.api_url, timeout=10.0)

    def _database(self) -> tuple[int, int]:
        with Session(self.stack.engine) as session:
            stored = session.exec(
                select(func.count())
                .select_from(Event)
                .where(col(Event.message_id).startswith(f"{self.run}-", autoescape=True))
            ).one()
            sent = session.exec(
                select(func.count()).select_from(Delivery).where(col(Delivery.status) == "sent")
            ).one()
        return int(stored), int(sent)

    async def sample(self, *, min_gap: float = 0.0) -> None:
        """Take a sample, unless the last one is under ``min_gap`` seconds old."""
        async with self._lock:
            if self.rows and time.monotonic() - self.started - self.rows[-1].t < min_gap:
                return
            self.rows.append(await self._take())
            print(_line(self.rows[-1]), flush=True)

    async def _take(self) -> Sample:
        for child in self.stack.children.values():
            assert child.alive, f"{child.name} exited: see {child.log}"
        outbox: dict[str, float] = {}
        with contextlib.suppress(httpx.HTTPError):
            response = await self._http.get("/metrics")
            response.raise_for_status()
            outbox = _metrics(response.text)
        stored, sent = await asyncio.to_thread(self._database)
        backlog = outbox.get("stagecoach_outbox_backlog")
        forwarded = outbox.get("stagecoach_outbox_forwarded_total")
        t = time.monotonic() - self.started
        accepted = self.seed_accepted + self.streams.accepted
        previous = self.rows[-1] if self.rows else None
        rate = 0.0
        if previous is not None and t - previous.t > 0.5:
            rate = (accepted - previous.accepted) / (t - previous.t)
        latencies = sorted(self.streams.take_latencies())
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None
        row = Sample(
            t=round(t, 1),
            phase=self.phase,
            accepted=accepted,
            rate=round(rate, 1),
            p99_ms=None if p99 is None else round(p99 * 1000),
            stored=stored,
            backlog=None if backlog is None else int(backlog),
            oldest_seconds=outbox.get("stagecoach_outbox_oldest_seconds"),
            forwarded=None if forwarded is None else int(forwarded),
            sent=sent,
            unsent=self.regulars + self.streams.created - sent,
            received=len(self.peer.received(GENERIC)),
            in_flight=self.streams.in_flight,
            api_rss_mb=round(self.api.rss_mb(), 1),
            worker_rss_mb=round(self.worker.rss_mb(), 1),
            temporal_rss_mb=round(self.temporal.rss_mb(), 1) if self.temporal else None,
            api_cpu=round(self.api.cpu_percent(), 1),
            worker_cpu=round(self.worker.cpu_percent(), 1),
            temporal_cpu=round(self.temporal.cpu_percent(), 1) if self.temporal else None,
            load1=round(os.getloadavg()[0], 2),
        )
        return row

    async def run_every(self) -> None:
        """Sample every ``every`` seconds until cancelled."""
        next_at = time.monotonic()
        while True:
            next_at += self.every
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await self.sample()

    async def aclose(self) -> None:
        await self._http.aclose()


def _pid(child: Child) -> int:
    assert child.proc is not None, f"{child.name} was never started"
    return child.proc.pid


HEADER = (
    f"{'t s':>7} {'phase':<5} {'accepted':>8} {'ev/s':>6} {'p99 ms':>6} {'stored':>8} "
    f"{'backlog':>7} {'oldest':>6} {'sent':>6} {'unsent':>6} {'recv':>6} {'api MB':>7} "
    f"{'wrk MB':>7} {'tmp MB':>7} {'api %':>6} {'wrk %':>6} {'tmp %':>6} {'load':>5}"
)


def _line(r: Sample) -> str:
    def opt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    return (
        f"{r.t:7.1f} {r.phase:<5} {r.accepted:8d} {r.rate:6.1f} {opt(r.p99_ms, '.0f'):>6} "
        f"{r.stored:8d} {opt(r.backlog, 'd'):>7} {opt(r.oldest_seconds, '.1f'):>6} "
        f"{r.sent:6d} {r.unsent:6d} {r.received:6d} "
        f"{r.api_rss_mb:7.1f} {r.worker_rss_mb:7.1f} {opt(r.temporal_rss_mb, '.1f'):>7} "
        f"{r.api_cpu:6.1f} {r.worker_cpu:6.1f} {opt(r.temporal_cpu, '.1f'):>6} {r.load1:5.2f}"
    )


# --- the verdict -------------------------------------------------------------------------


@dataclass(frozen=True)
class Trend:
    """One series over the load: middle third against last third, and a fitted slope."""

    name: str
    unit: str
    first: float
    middle: float
    last: float
    slope_per_minute: float
    tolerance: float
    verdict: str

    @property
    def growth(self) -> float:
        return self.last - self.middle

    def describe(self) -> str:
        return (
            f"{self.name:<14} {self.verdict:<8} start {self.first:8.1f}, middle third "
            f"{self.middle:8.1f}, last third {self.last:8.1f} {self.unit} (growth "
            f"{self.growth:+.1f}, tolerance {self.tolerance:.1f}); slope "
            f"{self.slope_per_minute:+.2f} {self.unit}/min"
        )


def slope(times: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` over ``times`` (per unit of time)."""
    if len(times) < 2:
        return 0.0
    mean_t, mean_v = statistics.fmean(times), statistics.fmean(values)
    spread = sum((t - mean_t) ** 2 for t in times)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values, strict=True)) / spread


def trend(
    name: str, unit: str, times: Sequence[float], values: Sequence[float], *, tolerance: float
) -> Trend:
    """The verdict: "growing" when the last third's median exceeds the middle third's by
    more than ``tolerance`` and the slope over both thirds points up, else "bounded". The first
    third is warm-up. Medians, so one sample caught mid-GC or mid-burst does not decide."""
    if len(values) < 3:
        raise ValueError(f"{name}: {len(values)} samples; a trend needs at least 3")
    third = len(values) // 3
    middle = values[third : len(values) - third]
    last = values[len(values) - third :]
    fitted = slope(times[third:], values[third:]) * 60
    mid, end = statistics.median(middle), statistics.median(last)
    growing = end - mid > tolerance and fitted > 0
    return Trend(
        name, unit, values[0], mid, end, fitted, tolerance, "growing" if growing else "bounded"
    )


def test_trend_tells_a_leak_from_noise() -> None:
    times = [float(10 * n) for n in range(30)]
    noisy = [200.0 + (7.0 if n % 3 == 0 else -5.0) for n in range(30)]
    warming = [100.0 + min(n, 10) * 10.0 for n in range(30)]  # fills its cache, then stays
    leaking = [200.0 + 1.5 * n for n in range(30)]  # 9 MB a minute
    assert trend("noise", "MB", times, noisy, tolerance=10).verdict == "bounded"
    assert trend("warm-up", "MB", times, warming, tolerance=10).verdict == "bounded"
    leak = trend("leak", "MB", times, leaking, tolerance=10)
    assert leak.verdict == "growing"
    assert leak.slope_per_minute == pytest.approx(9.0)
    assert leak.growth == pytest.approx(15.0)
    with pytest.raises(ValueError, match="at least 3"):
        trend("short", "MB", times[:2], leaking[:2], tolerance=10)


def test_soak_plan_names_the_variable_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGECOACH_SOAK_RATE", "5")
    monkeypatch.setenv("STAGECOACH_SOAK_NEW_CONTACTS", "2")
    with pytest.raises(SoakPlanError, match=r"STAGECOACH_SOAK_RATE=5 is below the 10 events/s"):
        SoakPlan.from_env()
    monkeypatch.setenv("STAGECOACH_SOAK_RATE", "fast")
    with pytest.raises(SoakPlanError, match=r"STAGECOACH_SOAK_RATE='fast' is not a number"):
        SoakPlan.from_env()
    monkeypatch.setenv("STAGECOACH_SOAK_RATE", "40")
    monkeypatch.setenv("STAGECOACH_SOAK_CLUSTER", "cluster")
    with pytest.raises(SoakPlanError, match=r"STAGECOACH_SOAK_CLUSTER='cluster' is not a swi"):
        SoakPlan.from_env()
    monkeypatch.setenv("STAGECOACH_SOAK_CLUSTER", "1")
    monkeypatch.setenv("STAGECOACH_SOAK_SECONDS", "600")
    plan = SoakPlan.from_env()
    assert (plan.stream_rate, plan.full, plan.arrivals, plan.cluster) == (30.0, True, 1200, True)
    assert plan.stream_contacts == 40  # 13,500 page views over 40: 338 each
    assert EVENT_WINDOW < STREAM_PER_REGULAR < SEEN_IDS - EVENTS_PER_CONTACT


# --- the books ---------------------------------------------------------------------------


def _outbox_total(stack: Stack) -> int:
    with Session(stack.engine) as session:
        return int(session.exec(select(func.count()).select_from(Outbox)).one())


def _stored(stack: Stack, run: str) -> Counter[str]:
    with Session(stack.engine) as session:
        rows = session.exec(
            select(col(Event.message_id)).where(
                col(Event.message_id).startswith(f"{run}-", autoescape=True)
            )
        ).all()
    return Counter(rows)


def _sent_rows(stack: Stack) -> int:
    with Session(stack.engine) as session:
        return int(
            session.exec(
                select(func.count()).select_from(Delivery).where(col(Delivery.status) == "sent")
            ).one()
        )


def _prospects(stack: Stack, contact_ids: list[str]) -> int:
    with Session(stack.engine) as session:
        return int(
            session.exec(
                select(func.count())
                .select_from(Contact)
                .where(col(Contact.id).in_(contact_ids), col(Contact.stage) == "prospect")
            ).one()
        )


async def _settle(
    stack: Stack,
    everyone: list[Person],
    queried: list[Person],
    expected: dict[str, int],
    within: float,
) -> float:
    """Until the outbox is empty, every whitepaper is sent and every contact's move to
    ``prospect`` recorded (from the database, for everyone), and each of ``queried`` has
    applied ``expected[user_id]`` events and waits at ``WAITING_STEP`` (its ``state``
    query: a replay for each workflow out of the worker's cache, so only a sample)."""
    done: set[str] = set()
    gate = asyncio.Semaphore(4)  # queries replay evicted workflows: spare the worker
    ids: dict[str, str] = {}

    async def applied(person: Person) -> None:
        async with gate:
            view = await contact_view(stack.client, ids[person.user_id])
        steps = [j["step"] for j in view.journeys if j["journey"] == "b2b_nurture"]
        if view.run_events >= expected[person.user_id] and steps == [WAITING_STEP]:
            done.add(person.user_id)

    async def check() -> bool:
        if await asyncio.to_thread(_outbox_total, stack):
            return False
        if await asyncio.to_thread(_sent_rows, stack) < len(everyone):
            return False
        if not ids:
            ids.update(await asyncio.to_thread(contact_ids, stack.engine, everyone))
        if await asyncio.to_thread(_prospects, stack, list(ids.values())) < len(everyone):
            return False
        await asyncio.gather(*(applied(p) for p in queried if p.user_id not in done))
        return len(done) == len(queried)

    return await until(
        check, within=within, what="the outbox drained and every event applied", every=1.0
    )


async def _view(stack: Stack, contact_id: str, attempts: int = 3) -> ContactView:
    """The ``state`` query, asked again when it failed: on a starved machine a replay can
    overrun the SDK's two-second deadlock detector, which fails the query, not the
    workflow."""
    for attempt in range(1, attempts + 1):
        try:
            return await contact_view(stack.client, contact_id)
        except WorkflowQueryFailedError:
            if attempt == attempts:
                raise
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


async def _check_regulars(stack: Stack, regulars: list[Person], expected: dict[str, int]) -> None:
    """The harness's books for the contacts that took the stream: one sent delivery row
    each, at ``prospect``, waiting at ``WAITING_STEP``, every signalled event applied."""
    ids = contact_ids(stack.engine, regulars)
    with Session(stack.engine) as session:
        rows = list(
            session.exec(select(Delivery).where(col(Delivery.contact_id).in_(list(ids.values()))))
        )
    assert len(rows) == len(regulars), "one delivery row per regular"
    assert all(r.status == "sent" and r.step_id == FIRST_SEND for r in rows), rows[:3]
    for person in regulars:
        view = await _view(stack, ids[person.user_id])
        assert view.run_events == expected[person.user_id], (person, view.run_events)
        assert view.stage == "prospect", (person, view.stage)
        steps = [j["step"] for j in view.journeys if j["journey"] == "b2b_nurture"]
        assert steps == [WAITING_STEP], (person, steps)


# --- the soak ----------------------------------------------------------------------------


def _save(meta: dict[str, Any], rows: list[Sample]) -> tuple[Path, Path]:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = OUT_DIR / f"soak-{stamp}.json"
    csv_path = OUT_DIR / f"soak-{stamp}.csv"
    json_path.write_text(
        json.dumps({**meta, "samples": [asdict(r) for r in rows]}, indent=2), encoding="utf-8"
    )
    with csv_path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return json_path, csv_path


def _trends(plan: SoakPlan, rows: list[Sample]) -> list[Trend]:
    """The verdicts over the load phase. Tolerances: 5 % of the starting RSS (at least
    8 MB: the allocator and the garbage collector move RSS by a few MB between samples);
    five seconds of ingest for the outbox (the forwarder passes twice a second) and ten
    seconds of new contacts for the unsent whitepapers (a send is a few activities)."""
    load = [r for r in rows if r.phase == "load"]
    times = [r.t for r in load]

    def rss(name: str, values: list[float]) -> Trend:
        return trend(name, "MB", times, values, tolerance=max(0.05 * values[0], 8.0))

    trends = [
        rss("API RSS", [r.api_rss_mb for r in load]),
        rss("worker RSS", [r.worker_rss_mb for r in load]),
        trend("outbox backlog", "events", times, [float(r.backlog or 0) for r in load],
              tolerance=plan.rate * 5),
        trend("unsent", "contacts", times, [float(r.unsent) for r in load],
              tolerance=plan.new_contacts * 10),
    ]  # fmt: skip
    temporal = [r.temporal_rss_mb for r in load]
    if all(v is not None for v in temporal):
        trends.append(rss("Temporal RSS", [v or 0.0 for v in temporal]))
    return trends


@dataclass
class Backend:
    """Where the soak's stack runs: Temporal (a client of it) and the application
    database (``None``: a SQLite file of the stack's); ``cluster`` when it is the real one."""

    client: Client
    database_url: str | None = None
    cluster: LocalCluster | None = None


@pytest.fixture
async def soak_cluster(
    temporal_server_bin: Path,  # noqa: F811
    postgres_bin: Path,  # noqa: F811
) -> AsyncIterator[Backend]:
    """A cluster of the soak's own (PostgreSQL, the Temporal server on it), as
    ``stagecoach cluster up`` starts it, and a fresh database on its PostgreSQL."""
    # Outside pytest's private tmp folders: PostgreSQL runs as the postgres user.
    root = Path(tempfile.mkdtemp(prefix="stagecoach-soak-"))
    os.chmod(root, 0o711)  # noqa: S103  (enter only: the postgres user needs its subfolder)
    cluster = LocalCluster(
        root, server_bin=temporal_server_bin, postgres_bin=postgres_bin, pick_port=free_port
    )
    try:
        client = await cluster.start_backends()
        url = fresh_postgres_database(cluster.postgres.base_url, prefix="soak")
        yield Backend(client, url, cluster)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Backend:
    """The session's dev server, or with ``STAGECOACH_SOAK_CLUSTER`` the soak's cluster
    (asked for only then: it takes PostgreSQL and the server's binaries)."""
    if PLAN.cluster:
        cluster: Backend = request.getfixturevalue("soak_cluster")
        return cluster
    env: WorkflowEnvironment = request.getfixturevalue("env")
    return Backend(env.client)


@pytest.mark.faults
@pytest.mark.timeout(int(PLAN.seconds) + (600 if not PLAN.full else 1800))
async def test_soak_holds_its_rate_and_its_memory(
    backend: Backend, task_queue: str, tmp_path: Path
) -> None:
    """Sustained ingest plus journey execution at a declared rate: accepted equals
    stored, the outbox drains, each message is received once; RSS and backlogs over time
    are printed with a bounded/growing verdict (memory asserted in the full form only)."""
    plan = PLAN
    run = f"soak{uuid.uuid4().hex[:6]}"
    seed = 20261122
    regulars = people(f"{run}-r", plan.stream_contacts)
    load_before = os.getloadavg()
    began = time.monotonic()
    streams = Streams()
    print(
        f"\nsoak ({machine()}): {plan.seconds:.0f} s at {plan.rate:g} events/s declared = "
        f"{plan.new_contacts:g} new contacts/s x {EVENTS_PER_CONTACT} events + "
        f"{plan.stream_rate:g} events/s for {len(regulars)} regulars; load average "
        f"{load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
    )
    with HttpEmailPeer() as peer:
        stack = Stack.create(
            tmp_path,
            backend.client,
            task_queue,
            database_url=backend.database_url,
            email_connector="http",
            email_http_url=peer.generic_url,
            email_http_token=peer.generic_token,
            metrics_public="true",
        )
        sampler: Sampler | None = None
        try:
            stack.worker()
            if backend.cluster is None:
                await stack.api()
            else:  # the topology: a second worker and a second API replica
                stack.worker("worker-2")
                await asyncio.gather(
                    api_replica(stack, "api", stack.settings.api_port),
                    api_replica(stack, "api-2"),
                )
            relevant = relevant_event_types(definitions_loader(stack.engine, stack.settings)())
            seeded = await drive(stack.api_url, stack.key, regulars, rate=max(plan.rate, 100.0))
            # The regulars settle before the clock starts: the series starts at rest.
            at_rest = {p.user_id: EVENTS_PER_CONTACT for p in regulars}
            await _settle(stack, regulars, regulars, at_rest, within=300.0)
            sampler = Sampler(stack, peer, streams, seeded, run, plan.sample_every)
            print(HEADER)
            await sampler.sample()
            ticker = asyncio.create_task(sampler.run_every())
            try:
                await pace(stack.api_url, stack.key, run, regulars, plan, streams, seed=seed)
                load_seconds = time.monotonic() - sampler.started
                await sampler.sample(min_gap=2.0)  # unless the ticker just took one
                sampler.phase = "drain"
                expected = {p.user_id: EVENTS_PER_CONTACT for p in streams.arrivals}
                for person in regulars:
                    expected[person.user_id] = EVENTS_PER_CONTACT + sum(
                        n
                        for (uid, kind), n in streams.stream_sent.items()
                        if uid == person.user_id and kind in relevant
                    )
                everyone = regulars + streams.arrivals
                sample = random.Random(seed).sample(
                    streams.arrivals, min(BOOKS_SAMPLE, len(streams.arrivals))
                )
                settle = await _settle(
                    stack, everyone, regulars + sample, expected,
                    within=300.0 if not plan.full else 900.0,
                )  # fmt: skip
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            await sampler.sample()

            # The books. For everyone, from the peer and the database: each accepted
            # event stored once, each contact's whitepaper received once and its move to
            # prospect recorded, the outbox empty. Then the harness's books for a sample
            # of the new contacts, and the same for every regular, whose stream events
            # must all be applied.
            stored = await asyncio.to_thread(_stored, stack, run)
            accepted = seeded.accepted | streams.new.accepted | streams.stream.accepted
            received = peer.received(GENERIC)
            to = Counter(str(r.body["to"]).lower() for r in received)
            keys = Counter(r.key_digest for r in received)
            assert set(stored) == accepted, "accepted and stored differ"
            assert max(stored.values()) == 1, "an event stored twice"
            assert to == Counter({p.email: 1 for p in everyone}), "not one message each"
            assert all(n == 1 for n in keys.values()), keys.most_common(3)
            ids = contact_ids(stack.engine, everyone)
            assert len(ids) == len(everyone), "an identify was not stored"
            assert _prospects(stack, list(ids.values())) == len(everyone)
            assert _sent_rows(stack) == len(everyone)
            assert _outbox_total(stack) == 0, "the outbox did not drain"

            users = {p.user_id for p in sample}
            emails = {p.email for p in sample}
            figures = Figures(
                "soak" if backend.cluster is None else "soak (cluster)", len(streams.arrivals),
                streams.accepted / load_seconds, [],
                seconds=time.monotonic() - began, settle_seconds=settle,
            )  # fmt: skip
            books = Books(
                stack,
                sample,
                Workload(
                    accepted={m for m in streams.new.accepted if m.rpartition("-")[0] in users},
                    calls=streams.new.calls + streams.stream.calls,
                    retries=streams.new.retries + streams.stream.retries,
                ),
                received=Counter({a: n for a, n in to.items() if a in emails}),
                keys=Counter(r.key_digest for r in received if r.body["to"].lower() in emails),
            )
            await books.check(figures)
            applied_in_sample = figures.events_applied
            await _check_regulars(stack, regulars, expected)
            # The figures for the whole run; ``applied`` is the sample's and the regulars'.
            figures.events_accepted = figures.events_stored = len(accepted)
            figures.events_applied = applied_in_sample + sum(expected[p.user_id] for p in regulars)
            figures.messages_expected = figures.messages_received = len(everyone)
        finally:
            if sampler is not None:
                await sampler.aclose()
            await stack.close(contact_ids(stack.engine, regulars + streams.arrivals).values())

    rows = sampler.rows
    load_rows = [r for r in rows if r.phase == "load"]
    trends = _trends(plan, rows)
    backlogs = [r.backlog for r in load_rows if r.backlog is not None]
    scheduled = int(plan.rate * plan.seconds)
    held = streams.accepted / scheduled
    load_after = os.getloadavg()
    cached = stack.settings.worker_max_cached_workflows
    warmup_contacts = len(regulars) + int(plan.new_contacts * plan.seconds / 3)
    middle = load_rows[len(load_rows) // 2]
    p99s = [r.p99_ms for r in load_rows if r.p99_ms is not None]
    summary = [
        f"declared {plan.rate:g} events/s ({plan.new_contacts:g} new contacts/s, "
        f"{plan.stream_rate:g} stream events/s) for {plan.seconds:.0f} s: {streams.accepted} "
        f"of {scheduled} scheduled events acknowledged ({held:.1%}), the last "
        f"{load_seconds - plan.seconds:.1f} s after the schedule ended (later events "
        f"{FOLLOW_GAP:g} s apart); pacer at most {streams.behind:.2f} s behind; batch call "
        f"p99 per interval {min(p99s, default=0):.0f}-{max(p99s, default=0):.0f} ms",
        f"events accepted {len(accepted)}, stored {sum(stored.values())}; new contacts "
        f"{len(streams.arrivals)}, regulars {len(regulars)}; messages received "
        f"{sum(to.values())} (one each); batch calls {streams.new.calls + streams.stream.calls}"
        f" ({streams.new.retries + streams.stream.retries} retries)",
        f"outbox backlog during load: min {min(backlogs, default=0)}, max "
        f"{max(backlogs, default=0)}; unsent whitepapers max "
        f"{max(r.unsent for r in load_rows)}; all applied {settle:.1f} s after the load",
        f"RSS start/middle/end: API {load_rows[0].api_rss_mb:.0f}/{middle.api_rss_mb:.0f}/"
        f"{load_rows[-1].api_rss_mb:.0f} MB, worker {load_rows[0].worker_rss_mb:.0f}/"
        f"{middle.worker_rss_mb:.0f}/{load_rows[-1].worker_rss_mb:.0f} MB (workflow cache "
        f"{cached}; {warmup_contacts} contacts by the end of warm-up)",
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"(2 cores shared with other work); "
        + (
            "Temporal is the session's dev server, its in-memory database holds every "
            "history, so its RSS grows by design"
            if backend.cluster is None
            else "Temporal is the cluster's server on PostgreSQL (2 workers, 2 API replicas)"
        ),
        *(t.describe() for t in trends),
    ]
    print("\n" + "\n".join(f"  {line}" for line in summary))
    meta = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "temporal": "dev server" if backend.cluster is None else "cluster",
        "plan": {**asdict(plan), "regulars": len(regulars), "stream_rate": plan.stream_rate},
        "load_seconds": round(load_seconds, 1),
        "accepted": len(accepted),
        "stored": sum(stored.values()),
        "rate_held": round(held, 4),
        "settle_seconds": round(settle, 1),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "signalled_stream_types": sorted(relevant & {"page.viewed", "coupon.redeemed"}),
        "trends": [{**asdict(t), "growth": t.growth} for t in trends],
    }
    json_path, csv_path = _save(meta, rows)
    figures.notes = f"series {json_path.relative_to(ROOT)}"
    figures.faults = [f"{t.name} {t.verdict}" for t in trends]
    figures.publish()
    print(f"  series: {json_path} and {csv_path}")

    if plan.full and warmup_contacts >= cached:
        # Once the workflow cache is full (the warm-up third fills it) nothing a contact
        # leaves behind should accumulate in either process.
        for t in trends[:2]:
            assert t.growth <= GROWTH_BOUND * t.middle, t.describe()
