"""Each enrolment's outcome and trail reach ``journey_enrolments``: active with its
trail while it sends, finished with status, reason and arms when it ends."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Session, select
from temporalio.api.enums.v1 import EventType

from engine.gateway import contact_view, enrol
from engine.messages import EnrolRequest, EventMessage, contact_workflow_id
from engine.storage.models import JourneyEnrolment
from tests.workflows.conftest import Runtime, eventually
from workflows.runtime import ContactOpener

PERSON = {"email": "zhou.min@example.cn", "locale": "zh-CN", "timezone": "Asia/Shanghai"}


def _rows(runtime: Runtime, contact_id: str) -> list[JourneyEnrolment]:
    with Session(runtime.engine) as session:
        return list(
            session.exec(
                select(JourneyEnrolment).where(JourneyEnrolment.contact_id == contact_id)
            ).all()
        )


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

    async def finished() -> bool:
        rows = _rows(runtime, contact)
        return bool(rows) and rows[0].status != "active"

    await eventually(finished, within=60)
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
