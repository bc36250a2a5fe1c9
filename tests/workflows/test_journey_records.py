"""Each enrolment's outcome and trail reach ``journey_enrolments``: active with its
trail while it sends, finished with status, reason and arms when it ends."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

from stagecoach.engine.protocol.messages import (
    CONTACT_WORKFLOW,
    EVENT_SIGNAL,
    ContactInput,
    EnrolmentRecord,
    EnrolRequest,
    EventMessage,
    contact_workflow_id,
)
from stagecoach.engine.services.storage.enrolments import save_enrolment
from stagecoach.engine.services.storage.models import JourneyEnrolment
from stagecoach.engine.temporal.gateway import contact_view, enrol
from stagecoach.workflows.runtime import ContactOpener
from tests.workflows.conftest import Runtime, eventually, record_history

PERSON = {"email": "zhou.min@example.cn", "locale": "zh-CN", "timezone": "Asia/Shanghai"}


def _rows(runtime: Runtime, contact_id: str) -> list[JourneyEnrolment]:
    with Session(runtime.engine) as session:
        return list(
            session.exec(
                select(JourneyEnrolment).where(JourneyEnrolment.contact_id == contact_id)
            ).all()
        )


async def _finished(runtime: Runtime, contact_id: str) -> bool:
    """The contact's enrolment is recorded as ended."""
    rows = _rows(runtime, contact_id)
    return bool(rows) and rows[0].status != "active"


async def test_a_rehearsed_enrolment_is_recorded_from_first_send_to_its_end(
    runtime: Runtime,
) -> None:
    contact = "jr-1"
    identify = EventMessage(
        message_id=f"{contact}-identify",
        type="identify",
        occurred_at=datetime.now(UTC),
        traits=PERSON,
        source="test",
    )
    opening = await ContactOpener(runtime.engine, runtime.settings).open(
        contact, event=identify, journey="b2b_nurture"
    )
    runtime.touched.add(contact)
    # 10 days of waits in about 2 seconds.
    result = await enrol(
        runtime.client,
        runtime.settings,
        contact,
        EnrolRequest("b2b_nurture", time_scale=2e-6, event=identify),
        rehearsal=True,
        opening=opening,
    )
    assert (result.accepted, result.enrolment) == (True, 1)

    async def active_row() -> bool:
        rows = _rows(runtime, contact)
        return len(rows) == 1 and rows[0].status == "active" and bool(rows[0].trail)

    await eventually(active_row)
    [row] = _rows(runtime, contact)
    assert (row.journey, row.version, row.enrolment) == ("b2b_nurture", result.version, 1)
    assert row.trail[0]["kind"] in {"send", "branch", "split"}

    await eventually(lambda: _finished(runtime, contact), within=60)
    [row] = _rows(runtime, contact)
    # The silent path runs out of awareness content and leaves by its exit step.
    assert row.status == "exited"
    assert row.trail[-1]["kind"] == "exit"
    assert row.trail[-1]["outcome"] == row.reason
    assert row.finished_at is not None
    assert row.finished_at >= row.started_at
    sends = [p for p in row.trail if p["kind"] == "send" and p["outcome"]]
    assert [p["outcome"] for p in sends] == ["ok", "ok"]
    assert all("at" in p for p in row.trail)
    view = await contact_view(runtime.client, contact)
    assert view.journeys == []
    # The answer came from the starter, not an update: the workflow agreed with it.
    handle = runtime.client.get_workflow_handle(contact_workflow_id(contact))
    history = await handle.fetch_history()
    types = [e.event_type for e in history.events]
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED not in types
    assert view.state["journeys"]["b2b_nurture"]["enrolments"] == 1


WHITEPAPER = {"content_id": "wp-digital-transformation", "kind": "whitepaper"}


def _scheduled_in(history: WorkflowHistory) -> dict[str, int]:
    """Activity type -> the workflow task (its completed event's id) that first
    scheduled it."""
    out: dict[str, int] = {}
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            out.setdefault(attrs.activity_type.name, attrs.workflow_task_completed_event_id)
    return out


async def _until_recorded(runtime: Runtime, contact: str) -> WorkflowHistory:
    await eventually(lambda: _finished(runtime, contact))

    async def prospect() -> bool:
        return (await contact_view(runtime.client, contact)).stage == "prospect"

    await eventually(prospect)
    return await runtime.client.get_workflow_handle(contact_workflow_id(contact)).fetch_history()


async def test_a_finished_enrolment_is_recorded_without_holding_back_the_stage_move(
    runtime: Runtime,
) -> None:
    # A run started with background records but before ``applies_opening_first`` and
    # ``waits_for_channel``: the download that creates the contact starts b2b_nurture,
    # which ends at once (no address), then moves the contact to prospect. The stage
    # move does not wait for the enrolment's record to be written: both go out in the
    # same workflow task.
    contact = "jr-background"
    message = EventMessage(
        message_id=f"{contact}-download",
        type="content.downloaded",
        occurred_at=datetime.now(UTC),
        properties=WHITEPAPER,
        source="test",
    )
    await runtime.client.start_workflow(
        CONTACT_WORKFLOW,
        ContactInput(contact_id=contact, records_enrolments=True, records_in_background=True),
        id=contact_workflow_id(contact),
        task_queue=runtime.settings.temporal_task_queue,
        start_signal=EVENT_SIGNAL,
        start_signal_args=[message],
    )
    runtime.touched.add(contact)
    history = await _until_recorded(runtime, contact)
    scheduled = _scheduled_in(history)
    assert scheduled["contact.record_enrolment"] == scheduled["contact.record_transition"]
    [row] = _rows(runtime, contact)
    assert (row.status, row.journey) == ("exited", "b2b_nurture")
    await record_history(runtime, contact, "enrolment_recorded_in_background")


async def test_a_run_started_before_background_records_still_waits_for_them(
    runtime: Runtime,
) -> None:
    # A run whose input predates ``records_in_background`` issues the commands it always
    # did (its history must replay): the record is written, then the stage move goes out.
    contact = "jr-awaited"
    message = EventMessage(
        message_id=f"{contact}-download",
        type="content.downloaded",
        occurred_at=datetime.now(UTC),
        properties=WHITEPAPER,
        source="test",
    )
    await runtime.client.start_workflow(
        CONTACT_WORKFLOW,
        ContactInput(contact_id=contact, records_enrolments=True),
        id=contact_workflow_id(contact),
        task_queue=runtime.settings.temporal_task_queue,
        start_signal=EVENT_SIGNAL,
        start_signal_args=[message],
    )
    runtime.touched.add(contact)
    history = await _until_recorded(runtime, contact)
    scheduled = _scheduled_in(history)
    assert scheduled["contact.record_enrolment"] < scheduled["contact.record_transition"]
    await record_history(runtime, contact, "enrolment_recorded_awaited")


@pytest.mark.settings(max_events_per_run=1)
async def test_a_run_ends_only_after_its_background_records(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One event a run: the enrolment ends, its record goes out in the background, and
    # the run continues as new. The record (slow here: the stage move's record is done
    # long before it) must complete in the run that issued it.
    def slow_save(engine: Engine, record: EnrolmentRecord) -> None:
        time.sleep(1.5)
        save_enrolment(engine, record)

    monkeypatch.setattr("stagecoach.workflows.contact.activities.save_enrolment", slow_save)
    contact = "jr-can"
    # No address: the nurture waits for a channel across the first continue-as-new;
    # the unsubscribe (its exit criteria) ends it in the second run.
    await runtime.event(contact, "content.downloaded", properties=WHITEPAPER)
    await runtime.event(contact, "email.unsubscribed")
    await _until_recorded(runtime, contact)
    workflow_id = contact_workflow_id(contact)

    async def run_before_latest() -> WorkflowHistory:
        latest = await runtime.client.get_workflow_handle(workflow_id).fetch_history()
        started = latest.events[0].workflow_execution_started_event_attributes
        assert started.continued_execution_run_id, "the first run did not continue as new"
        return await runtime.client.get_workflow_handle(
            workflow_id, run_id=started.continued_execution_run_id
        ).fetch_history()

    def records(history: WorkflowHistory) -> bool:
        return any(
            e.activity_task_scheduled_event_attributes.activity_type.name
            == "contact.record_enrolment"
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        )

    # The record is saved a moment before the run that issued it continues as new: until
    # then the run before the latest is the first one, which recorded nothing.
    history = await run_before_latest()
    for _ in range(60):
        if records(history):
            break
        await asyncio.sleep(0.5)
        history = await run_before_latest()
    types = [e.event_type for e in history.events]
    assert types[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED in types
    completed = [
        e.activity_task_completed_event_attributes.scheduled_event_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    ]
    enrolment = next(
        e.event_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name
        == "contact.record_enrolment"
    )
    assert enrolment in completed
