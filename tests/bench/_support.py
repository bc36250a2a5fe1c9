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
