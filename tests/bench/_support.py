"""Shared by the journey benchmarks: a contact worker, rehearsal contacts driven through
the B2B nurture journey, and Temporal Cloud actions counted from workflow histories."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import Engine
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.common import RetryPolicy

from stagecoach.engine.cli.compose import build_activities
from stagecoach.engine.cli.programs import freeze_startup_heap
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.protocol.messages import EnrolRequest, EventMessage, contact_workflow_id
from stagecoach.engine.services.storage import make_engine, upgrade
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.gateway import contact_view, enrol
from stagecoach.workflows.runtime import ContactOpener
from stagecoach.workflows.system import SystemActivities
from stagecoach.workflows.worker import build_worker

ROOT = Path(__file__).resolve().parents[2]
JOURNEY = "b2b_nurture"
PERSON = {"email": "li.lei@example.cn", "locale": "zh-CN", "timezone": "Asia/Shanghai"}
NO_RETRY = RetryPolicy(maximum_attempts=1)


def machine() -> str:
    """The machine and the code measured (the commit checked out; the tree may differ)."""
    memory = psutil.virtual_memory().total / 2**30
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB, "
        f"Python {platform.python_version()}, at {commit or 'unknown commit'}"
    )


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def fresh_task_queue(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def contact_worker(
    client: Client, settings: Settings, *, max_cached_workflows: int | None = None
) -> AsyncIterator[Engine]:
    """The production worker (``build_worker`` + ``build_activities``) on its task queue;
    ``max_cached_workflows`` overrides ``build_worker``'s workflow cache size."""
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    library = ContentLibrary.load(ROOT / "content")
    contact = build_activities(engine, settings, content=library)
    activities = [*SystemActivities(engine).all(), *contact.all()]
    queue = settings.temporal_task_queue
    worker = (
        build_worker(client, task_queue=queue, activities=activities)
        if max_cached_workflows is None
        else build_worker(
            client,
            task_queue=queue,
            activities=activities,
            max_cached_workflows=max_cached_workflows,
        )
    )
    freeze_startup_heap()  # as `stagecoach worker` does before serving
    try:
        async with worker:
            yield engine
    finally:
        engine.dispose()


# --- driving rehearsal contacts ---------------------------------------------------------


async def journey_active(client: Client, contact_id: str) -> bool:
    view = await contact_view(client, contact_id)
    return any(j["journey"] == JOURNEY for j in view.journeys)


async def run_rehearsal_contact(
    client: Client,
    settings: Settings,
    contact_id: str,
    *,
    time_scale: float,
    opener: ContactOpener | None = None,
    expected_seconds: float = 0.0,
    poll: float = 0.2,
    within: float = 300.0,
) -> float:
    """Identify and enrol in the nurture (time-scaled) with one start (or update), as
    ``stagecoach journeys rehearse`` does, and wait until the journey ended.

    Polls the ``state`` query only after ``expected_seconds`` (the journey's scaled waits),
    so the measurement's own queries stay few. Returns the seconds it took."""
    started = time.perf_counter()
    message = EventMessage(
        message_id=f"{contact_id}-identify",
        type="identify",
        occurred_at=datetime.now(UTC),
        traits=dict(PERSON),
        source="bench",
    )
    opening = await opener.open(contact_id, event=message, journey=JOURNEY) if opener else None
    result = await enrol(
        client,
        settings,
        contact_id,
        EnrolRequest(JOURNEY, time_scale=time_scale, event=message),
        rehearsal=True,
        opening=opening,
    )
    assert result.accepted, f"{contact_id}: enrolment refused: {result.reason}"
    await asyncio.sleep(expected_seconds)
    deadline = time.perf_counter() + within
    while await journey_active(client, contact_id):
        assert time.perf_counter() < deadline, f"{contact_id}: journey still active"
        await asyncio.sleep(poll)
    return time.perf_counter() - started


async def bounded(coros: Sequence[Any], concurrency: int) -> list[Any]:
    """Run ``coros`` with at most ``concurrency`` in flight; results in order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return list(await asyncio.gather(*(one(c) for c in coros)))


async def terminate_contacts(client: Client, contact_ids: Sequence[str]) -> None:
    """Contact workflows never end on their own: stop the benchmark's ones."""
    for contact_id in contact_ids:
        handle = client.get_workflow_handle(contact_workflow_id(contact_id))
        await handle.terminate(reason="benchmark done")


# --- histories and actions --------------------------------------------------------------


async def contact_histories(client: Client, contact_id: str) -> list[WorkflowHistory]:
    """Every run of the contact's workflow, first run first (follows continue-as-new)."""
    workflow_id = contact_workflow_id(contact_id)
    histories: list[WorkflowHistory] = []
    run_id: str | None = None
    while True:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        histories.append(history)
        first = history.events[0]
        previous = first.workflow_execution_started_event_attributes.continued_execution_run_id
        if not previous:
            break
        run_id = previous
    histories.reverse()
    return histories


@dataclass
class Actions:
    """Temporal Cloud actions found in one workflow's histories, by category."""

    started: int = 0
    signals: int = 0
    updates: int = 0
    timers: int = 0
    activities: int = 0
    retries: int = 0
    upserts: int = 0
    continue_as_new: int = 0
    # Not actions by the benchmark's definition, but what the goal is measured against.
    sends: int = 0
    activity_types: dict[str, int] = field(default_factory=dict)
    timer_summaries: list[str] = field(default_factory=list)
    upserted_keys: list[str] = field(default_factory=list)
    markers: int = 0

    CATEGORIES = (
        "started",
        "signals",
        "updates",
        "timers",
        "activities",
        "retries",
        "upserts",
        "continue_as_new",
    )

    @property
    def total(self) -> int:
        return sum(int(getattr(self, name)) for name in self.CATEGORIES)

    @classmethod
    def from_histories(cls, histories: Sequence[WorkflowHistory]) -> Actions:
        counted = cls()
        for run, history in enumerate(histories):
            for event in history.events:
                kind = event.event_type
                if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                    # A continued run's start is billed as the continue-as-new, below.
                    counted.started += 1 if run == 0 else 0
                elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
                    counted.signals += 1
                elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
                    counted.updates += 1
                elif kind == EventType.EVENT_TYPE_TIMER_STARTED:
                    counted.timers += 1
                    summary = event.user_metadata.summary.data.decode(errors="replace")
                    counted.timer_summaries.append(summary.strip('"'))
                elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                    name = event.activity_task_scheduled_event_attributes.activity_type.name
                    counted.activities += 1
                    counted.activity_types[name] = counted.activity_types.get(name, 0) + 1
                    counted.sends += 1 if name == "contact.deliver" else 0
                elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                    # One started event per activity, carrying the attempt that finished it:
                    # each attempt after the first is billed again.
                    attempt = event.activity_task_started_event_attributes.attempt
                    counted.retries += max(attempt - 1, 0)
                elif kind == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
                    counted.upserts += 1
                    attrs = event.upsert_workflow_search_attributes_event_attributes
                    keys = "+".join(sorted(attrs.search_attributes.indexed_fields))
                    counted.upserted_keys.append(keys)
                elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                    counted.continue_as_new += 1
                elif kind == EventType.EVENT_TYPE_MARKER_RECORDED:
                    counted.markers += 1
        return counted


def summarise(rows: Sequence[Actions]) -> dict[str, tuple[float, int]]:
    """Mean and max per category over contacts (plus total, sends, waits, markers)."""
    names = [*Actions.CATEGORIES, "total", "sends", "markers"]
    out: dict[str, tuple[float, int]] = {}
    for name in names:
        values = [int(getattr(r, name)) for r in rows]
        out[name] = (sum(values) / len(values), max(values))
    return out


@dataclass(frozen=True)
class Step:
    """One durable step of a contact's path: an activity, or a timer of ``seconds``."""

    kind: str
    name: str
    seconds: float = 0.0


def plan_from_histories(histories: Sequence[WorkflowHistory]) -> list[Step]:
    """The activities and timers a contact's workflow ran, in the order it scheduled them."""
    plan: list[Step] = []
    for history in histories:
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                attrs = event.activity_task_scheduled_event_attributes
                plan.append(Step("activity", attrs.activity_type.name))
            elif event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
                timeout = event.timer_started_event_attributes.start_to_fire_timeout
                plan.append(Step("timer", "timer", timeout.ToTimedelta().total_seconds()))
    return plan


def describe_plan(plan: Sequence[Step]) -> str:
    return ", ".join(
        f"timer {s.seconds:.2f}s" if s.kind == "timer" else s.name.removeprefix("contact.")
        for s in plan
    )


def table(summary: dict[str, tuple[float, int]]) -> str:
    return "\n".join(
        f"    {name:<16} mean {mean:6.2f}   max {peak:3d}" for name, (mean, peak) in summary.items()
    )


# --- broadcasts -------------------------------------------------------------------------
#
# Shared by the broadcast benchmarks and the broadcast fault test: an audience bulk-loaded
# into the database (what a CSV upload of a list leaves behind), a broadcast launched
# through the public launch API, its workflow's histories counted in actions, and the
# worker process's memory sampled while it runs.

BROADCAST_CONTENT = "newsletter-monthly"
"""Personalised (``first_name``) in every locale the audience reads."""


def seed_broadcast_audience(
    db: Engine,
    segment: str,
    count: int,
    *,
    prefix: str,
    zones: Sequence[str] = ("UTC",),
    chunk: int = 10_000,
) -> list[str]:
    """``count`` contacts with an email identity each, members of the manual segment
    ``segment`` (published here), inserted in chunks of ``chunk`` rows a statement.

    Contact ``n`` lives in ``zones[n % len(zones)]``. Returns the contact ids in order.
    ``tests/workflows/test_broadcasts.seed_audience`` writes the same rows one contact at
    a time (and the list's change log, which the broadcast never reads)."""
    from sqlalchemy import insert

    from stagecoach.engine.domain.segments import MANUAL_VERSION, Segment
    from stagecoach.engine.services.segments.catalog import publish_segments
    from stagecoach.engine.services.storage.models import Contact, Identity, SegmentMember

    publish_segments(db, [Segment(segment, description="bench list", manual=True).spec()])
    now = datetime.now(UTC)
    ids = [f"{prefix}-{n}" for n in range(count)]
    for start in range(0, count, chunk):
        part = range(start, min(start + chunk, count))
        with db.begin() as conn:
            conn.execute(
                insert(Contact),
                [
                    {
                        "id": ids[n],
                        "stage": "customer",
                        "locale": "en",
                        "timezone": zones[n % len(zones)],
                        "traits": {"email": f"{ids[n]}@example.com", "first_name": f"Reader{n}"},
                        "created_at": now,
                        "updated_at": now,
                        "rehearsal": False,
                    }
                    for n in part
                ],
            )
            conn.execute(
                insert(Identity),
                [
                    {
                        "kind": "email",
                        "value": f"{ids[n]}@example.com",
                        "contact_id": ids[n],
                        "source": "bench",
                        "created_at": now,
                    }
                    for n in part
                ],
            )
            conn.execute(
                insert(SegmentMember),
                [
                    {
                        "segment": segment,
                        "version": MANUAL_VERSION,
                        "contact_id": ids[n],
                        "since": now,
                        "reason": "uploaded",
                    }
                    for n in part
                ],
            )
    return ids


def content_catalogue(library: ContentLibrary) -> dict[str, frozenset[tuple[str, str]]]:
    """What ``launch`` checks the content against: each item's (locale, channel) pairs."""
    return {
        item.id: frozenset((loc, ch) for loc in item.locales for ch in item.channels)
        for item in library.items
    }


async def launch_broadcast(
    client: Client,
    db: Engine,
    broadcast: Any,
    *,
    task_queue: str,
    batch_size: int,
    now: datetime | None = None,
) -> None:
    """Save ``broadcast`` (a ``Broadcast``) as a draft and launch it, as the CLI does."""
    from stagecoach.engine.services.broadcasts import launch as steer
    from stagecoach.engine.services.broadcasts import store

    store.save_broadcast(db, broadcast, source="bench")
    launched = await steer.launch(
        client,
        db,
        broadcast.name,
        task_queue=task_queue,
        content=content_catalogue(ContentLibrary.load(ROOT / "content")),
        events=None,
        now=now or datetime.now(UTC),
        batch_size=batch_size,
    )
    assert launched.first, launched


def broadcast_status(db: Engine, broadcast_id: str) -> str:
    from stagecoach.engine.services.broadcasts import store

    return store.get_row(db, broadcast_id).status


def broadcast_sent(db: Engine, broadcast_id: str) -> int:
    """Recipients settled as sent so far (a batch settles its recipients at its end)."""
    from sqlalchemy import func
    from sqlmodel import Session, col, select

    from stagecoach.engine.services.storage.models import BroadcastRecipient

    with Session(db) as session:
        return int(
            session.exec(
                select(func.count()).where(
                    col(BroadcastRecipient.broadcast_id) == broadcast_id,
                    col(BroadcastRecipient.status) == "sent",
                )
            ).one()
        )


async def workflow_histories(client: Client, workflow_id: str) -> list[WorkflowHistory]:
    """Every run of ``workflow_id``, first run first (follows continue-as-new)."""
    histories: list[WorkflowHistory] = []
    run_id: str | None = None
    while True:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        histories.append(history)
        first = history.events[0]
        previous = first.workflow_execution_started_event_attributes.continued_execution_run_id
        if not previous:
            break
        run_id = previous
    histories.reverse()
    return histories


def workflow_tasks(histories: Sequence[WorkflowHistory]) -> int:
    """Workflow tasks completed over the runs: not billed as actions by Temporal Cloud,
    but the work the server and the worker do per workflow step."""
    return sum(
        1
        for history in histories
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    )


class RssSampler:
    """The resident memory of a process (or of whichever process ``pid()`` names now,
    for a worker that is killed and started again), sampled every ``every`` seconds on
    a thread until stopped."""

    def __init__(self, pid: Any, *, every: float = 2.0) -> None:
        import threading

        self._pid = pid
        self._every = every
        self._stop = threading.Event()
        self.samples: list[tuple[float, float]] = []
        """(seconds since start, RSS in MiB)."""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.is_set():
            pid = self._pid()
            if pid is not None:
                with contextlib.suppress(psutil.Error):
                    rss = psutil.Process(pid).memory_info().rss / 2**20
                    self.samples.append((time.perf_counter() - self._started, rss))
            self._stop.wait(self._every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def describe(self, points: int = 8) -> str:
        """A few samples spread over the run, and the peak."""
        if not self.samples:
            return "no samples"
        step = max(len(self.samples) // points, 1)
        shown = self.samples[::step]
        if shown[-1] != self.samples[-1]:
            shown.append(self.samples[-1])
        peak = max(rss for _, rss in self.samples)
        return ", ".join(f"{t:.0f}s {rss:.0f}" for t, rss in shown) + f" MiB; peak {peak:.0f} MiB"


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class Kill:
    """One SIGKILL of the worker during a broadcast, and what it cost."""

    progress: int
    """Messages the progress count showed once the worker was dead."""
    at: float
    """Seconds from the launch to the kill."""
    stalled: float | None = None
    """Seconds from the kill until the progress count moved again (a new worker sending:
    its start, the workflow task moving to it, the killed batch's heartbeat timeout)."""


async def broadcast_with_kills(
    worker: Any,
    thresholds: Sequence[int],
    *,
    progress: Any,
    done: Any,
    within: float,
    poll: float = 0.05,
    on_kill: Any = None,
) -> list[Kill]:
    """Watch a running broadcast; each time ``progress()`` reaches the next of
    ``thresholds`` (and the last kill has been recovered from), SIGKILL ``worker`` (a
    ``tests.faults._harness.Child``) and start it again at once. Returns when ``done()``.

    ``progress`` and ``done`` are async callables; ``within`` bounds the whole wait;
    ``on_kill`` (async, optional) is awaited while the worker is dead."""
    started = time.perf_counter()
    pending = sorted(thresholds)
    kills: list[Kill] = []
    killed_at = 0.0
    while not await done():
        elapsed = time.perf_counter() - started
        assert elapsed < within, f"the broadcast did not finish in {within:.0f} s: {kills}"
        assert worker.alive, f"the worker exited on its own: see {worker.log}"
        count = await progress()
        last = kills[-1] if kills else None
        if last is not None and last.stalled is None and count > last.progress:
            last.stalled = time.perf_counter() - killed_at
        if pending and count >= pending[0] and (last is None or last.stalled is not None):
            pending.pop(0)
            worker.kill()
            killed_at = time.perf_counter()
            kills.append(Kill(progress=await progress(), at=killed_at - started))
            if on_kill is not None:
                await on_kill()
            worker.start()
        await asyncio.sleep(poll)
    assert not pending, f"the broadcast finished before every kill: {len(kills)} done"
    return kills


def go_smtp_peer() -> Any:
    """The Go SMTP peer (``tests/peers/smtpsink``, built by ``scripts/smtp-sink.sh``) in
    a child process, as the email benchmark runs it; skips the test without Go."""
    import pytest

    from tests.bench.test_email_throughput import PeerProcess

    built = subprocess.run(
        ["bash", str(ROOT / "scripts" / "smtp-sink.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        pytest.skip(f"no Go SMTP peer: {' '.join(built.stderr.split())}")
    return PeerProcess(program=[built.stdout.strip().splitlines()[-1]])
