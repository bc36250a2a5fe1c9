"""The one history reader (``stagecoach.engine.temporal.history``) that ``contact timeline`` and
``contact why`` read: recorded histories read into typed records, and a contact's runs read from a
real server, from nothing, across continue-as-new."""

from __future__ import annotations

import ast
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.domain.journeys import human_duration
from stagecoach.engine.protocol import (
    DELIVER_ACTIVITY,
    ENROL_UPDATE,
    OPEN_ACTIVITY,
    contact_workflow_id,
)
from stagecoach.engine.protocol.messages import EnrolRequest
from stagecoach.engine.temporal.gateway import ContactNotFound, enrol, missing_contact
from stagecoach.engine.temporal.history import (
    ActivityCompleted,
    ActivityScheduled,
    ActivityStarted,
    Record,
    Signalled,
    Started,
    TimerCanceled,
    TimerStarted,
    UpdateAccepted,
    UpdateCompleted,
    contact_history,
    read_run,
)
from stagecoach.engine.temporal.timeline import entries_from_records
from tests.workflows.conftest import eventually, open_runtime

R = TypeVar("R", bound=Record)
HISTORIES = Path(__file__).parents[2] / "workflows" / "histories"
PERSON = {"email": "he.ping@example.cn", "locale": "zh-CN", "timezone": "Asia/Shanghai"}


@pytest.fixture(scope="module")
def content_library() -> ContentLibrary:
    return ContentLibrary.load(Path(__file__).parents[3] / "content")


def _recorded(stem: str) -> list[Record]:
    history = WorkflowHistory.from_json(stem, (HISTORIES / f"{stem}.json").read_text("utf-8"))
    return read_run(list(history.events), "run-1")


def _of(records: list[Record], kind: type[R]) -> list[R]:
    return [r for r in records if isinstance(r, kind)]


def test_a_wait_for_a_channel_reads_as_a_timer_its_cancel_points_to() -> None:
    records = _recorded("no_address_waits_for_a_channel")

    (started,) = _of(records, Started)
    assert (started.input["contact_id"], started.continued_from, started.run_id) == (
        "c-anon",
        "",
        "run-1",
    )
    waits = _of(records, TimerStarted)
    channel = waits[0]
    assert (channel.namespace, channel.name) == ("b2b_nurture", "channel:awareness-whitepaper:1")
    assert channel.summary == "b2b_nurture/channel:awareness-whitepaper:1"
    assert channel.delay == timedelta(days=30)
    assert channel.fire_at == channel.at + timedelta(days=30)
    # The identify that brought the address cancelled the wait, then the send went out.
    (cancelled,) = _of(records, TimerCanceled)
    assert cancelled.timer is channel
    assert cancelled.at > channel.at
    delivery = next(r for r in _of(records, ActivityScheduled) if r.name == DELIVER_ACTIVITY)
    assert delivery.input["step_id"] == "awareness-whitepaper"
    (attempt,) = [r for r in _of(records, ActivityStarted) if r.activity is delivery]
    assert (attempt.attempt, attempt.last_failure) == (1, "")
    (done,) = [r for r in _of(records, ActivityCompleted) if r.activity is delivery]
    assert done.result["status"] == "sent"
    assert [e["type"] for s in _of(records, Signalled) for e in s.events()] == [
        "page.viewed",
        "identify",
    ]
    assert [r.event_id for r in records] == sorted(r.event_id for r in records)


def test_the_timeline_says_a_wait_in_days_and_hours_not_seconds() -> None:
    story = [e.summary for e in entries_from_records(_recorded("no_address_waits_for_a_channel"))]
    assert "waiting for a channel [b2b_nurture/awareness-whitepaper], at most for 30d" in story
    assert human_duration(timedelta(hours=3, minutes=32, seconds=10)) == "3h32m10s"
    assert human_duration(timedelta(days=1, hours=12)) == "1d12h"
    assert human_duration(timedelta(0)) == "0"


def test_an_events_signal_reads_as_the_batch_it_carried() -> None:
    signals = _of(_recorded("handoff_answered_before_episodes"), Signalled)

    batch = next(s for s in signals if s.is_batch)
    assert batch.name == "events"
    assert [e["type"] for e in batch.events()] == ["demo.requested", "consultation.booked"]
    single = signals[0]
    assert not single.is_batch
    assert single.events() == [single.message]


async def test_a_contact_reads_from_nothing_across_its_runs_with_its_enrol_update(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    async with open_runtime(
        env, task_queue, tmp_path, content_library, max_events_per_run=2
    ) as runtime:
        await runtime.event("hist-1", "page.viewed", properties={"category": "blog"}, traits=PERSON)
        result = await enrol(runtime.client, runtime.settings, "hist-1", EnrolRequest("onboarding"))
        assert result.accepted
        for n in range(3):
            await runtime.event("hist-1", "page.viewed", properties={"category": "blog", "n": n})

        handle = runtime.client.get_workflow_handle(contact_workflow_id("hist-1"))
        read: list[Any] = []

        async def continued_with_every_event() -> bool:
            # The history and the run Temporal calls current, read as one settled pair:
            # a busy worker may still be continuing as new between the two reads.
            history = await contact_history(runtime.client, "hist-1")
            newest = await handle.describe()
            seen = [e for r in history.records() if isinstance(r, Signalled) for e in r.events()]
            read[:] = [history, newest]
            return (
                len(history.runs) >= 2 and len(seen) == 4 and history.newest_run_id == newest.run_id
            )

        await eventually(continued_with_every_event, within=30)
        history, newest = read

    # Oldest run first, each one started by the one before it.
    assert history.newest_run_id == newest.run_id
    starts = [run.records[0] for run in history.runs]
    assert all(isinstance(s, Started) for s in starts)
    assert [s.continued_from for s in starts if isinstance(s, Started)] == [
        "",
        *(run.run_id for run in history.runs[:-1]),
    ]
    for run in history.runs:
        assert {r.run_id for r in run.records} == {run.run_id}
    records = list(history.records())
    signalled = [e for r in _of(records, Signalled) for e in r.events()]
    assert [e["properties"].get("n") for e in signalled] == [None, 0, 1, 2]
    # Payloads read as plain data: the opening's definitions, the update's request and
    # answer, which points back to the request it answers.
    opened = next(
        r
        for r in _of(records, ActivityCompleted)
        if r.activity and r.activity.name == OPEN_ACTIVITY
    )
    assert opened.result["journeys"]
    (asked,) = _of(records, UpdateAccepted)
    assert (asked.name, asked.request["journey"]) == (ENROL_UPDATE, "onboarding")
    (answered,) = _of(records, UpdateCompleted)
    assert answered.update is asked
    assert (answered.failure, answered.result["accepted"]) == (None, True)
    assert answered.result["version"] == result.version


async def test_a_contact_without_a_workflow_is_not_found(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    async with open_runtime(env, task_queue, tmp_path, content_library) as runtime:
        with pytest.raises(ContactNotFound) as raised, missing_contact("nobody-here"):
            await contact_history(runtime.client, "nobody-here")
    assert "nobody-here" in str(raised.value)


def test_only_the_reader_parses_history_events() -> None:
    # ``timeline`` and ``why`` once each had their own parser; a second one drifts.
    root = Path(__file__).parents[3]
    parsers = set()
    for package in ("engine", "workflows", "connectors"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and (
                    node.module == "temporalio.api.history.v1"
                    or (
                        any(alias.name == "EventType" for alias in node.names)
                        and node.module == "temporalio.api.enums.v1"
                    )
                ):
                    parsers.add(path.relative_to(root).as_posix())
    assert parsers == {"engine/temporal/history.py"}
