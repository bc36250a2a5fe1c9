"""A contact its starter recorded first (``ContactOpener`` + ``Opening``): the workflow
skips ``contact.open``, finds its search attributes set, and the story is the same."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import Session, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowUpdateFailedError

from stagecoach.engine.protocol.messages import (
    Definitions,
    EnrolRequest,
    EventMessage,
    contact_workflow_id,
)
from stagecoach.engine.protocol.search_attributes import JOURNEYS, STAGE
from stagecoach.engine.protocol.search_keys import KEYS
from stagecoach.engine.services.publishing import publish_bundled
from stagecoach.engine.services.storage.models import Contact, StageTransition
from stagecoach.engine.temporal.gateway import InvalidEvent, contact_view, enrol, send_event
from stagecoach.workflows.runtime import UNPUBLISHED_TTL, ContactOpener
from tests.helpers import migrated_engine, runtime_settings
from tests.workflows.conftest import Runtime, eventually

PERSON = {"email": "wang.fang@example.cn", "locale": "zh-CN", "timezone": "Asia/Shanghai"}
WHITEPAPER = {"content_id": "wp-digital-transformation", "kind": "whitepaper"}


def _identify(contact_id: str, **traits: object) -> EventMessage:
    return EventMessage(
        message_id=f"{contact_id}-identify",
        type="identify",
        occurred_at=datetime.now(UTC),
        traits={**PERSON, **traits},
        source="test",
    )


async def _history_types(runtime: Runtime, contact_id: str) -> list[EventType.ValueType]:
    handle = runtime.client.get_workflow_handle(contact_workflow_id(contact_id))
    return [e.event_type for e in (await handle.fetch_history()).events]


async def _scheduled(runtime: Runtime, contact_id: str) -> list[str]:
    handle = runtime.client.get_workflow_handle(contact_workflow_id(contact_id))
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in (await handle.fetch_history()).events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


async def test_opened_contact_skips_the_open_activity_and_starts_searchable(
    runtime: Runtime,
) -> None:
    opener = ContactOpener(runtime.engine, runtime.settings)
    message = EventMessage(
        message_id="op-1-dl",
        type="content.downloaded",
        occurred_at=datetime.now(UTC),
        properties=WHITEPAPER,
        traits=PERSON,
        source="test",
    )
    opening = await opener.open("op-1", event=message)
    assert opening is not None
    # The first event's effect, computed by the same pure code the workflow runs.
    assert opening.search_attributes["Stage"] == "prospect"
    assert opening.search_attributes["Locale"] == "zh-CN"
    runtime.touched.add("op-1")
    await send_event(runtime.client, runtime.settings, "op-1", message, opening=opening)

    async def sent() -> bool:
        return len(runtime.sent("op-1")) == 1

    await eventually(sent)
    assert "contact.open" not in await _scheduled(runtime, "op-1")
    with Session(runtime.engine) as session:
        rows = session.exec(
            select(StageTransition).where(StageTransition.contact_id == "op-1")
        ).all()
        assert [(r.from_stage, r.to_stage, r.trigger_message_id) for r in rows][:1] == [
            (None, "suspect", "op-1-dl")
        ]
    handle = runtime.client.get_workflow_handle(contact_workflow_id("op-1"))
    described = await handle.describe()
    assert described.typed_search_attributes.get(KEYS[STAGE]) == "prospect"


async def test_a_second_opening_of_one_contact_is_refused(runtime: Runtime) -> None:
    opener = ContactOpener(runtime.engine, runtime.settings)
    assert await opener.open("op-twice") is not None
    assert await opener.open("op-twice") is None
    with Session(runtime.engine) as session:
        assert session.get(Contact, "op-twice") is not None
        rows = session.exec(
            select(StageTransition).where(StageTransition.contact_id == "op-twice")
        ).all()
        assert len(rows) == 1


async def test_enrol_carries_the_identify_in_the_same_update(runtime: Runtime) -> None:
    opener = ContactOpener(runtime.engine, runtime.settings)
    identify = _identify("op-enrol", first_name="Fang")
    opening = await opener.open("op-enrol", event=identify, journey="b2b_nurture")
    runtime.touched.add("op-enrol")
    result = await enrol(
        runtime.client,
        runtime.settings,
        "op-enrol",
        EnrolRequest("b2b_nurture", event=identify),
        rehearsal=True,  # only the enrolment asked for, as `journeys rehearse` does
        opening=opening,
    )
    assert result.accepted, result.reason
    view = await contact_view(runtime.client, "op-enrol")
    assert view.state["attributes"]["first_name"] == "Fang"  # applied before the enrolment
    types = await _history_types(runtime, "op-enrol")
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED not in types
    # Stage, Locale and Journeys were set at start: no upsert was needed.
    assert EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES not in types


async def test_search_attributes_set_at_start_are_corrected_when_enrolment_is_refused(
    runtime: Runtime,
) -> None:
    opener = ContactOpener(runtime.engine, runtime.settings)
    opening = await opener.open("op-refused", journey="no_such_journey")
    assert opening is not None
    assert opening.search_attributes["Journeys"] == ["no_such_journey"]
    runtime.touched.add("op-refused")
    result = await enrol(
        runtime.client,
        runtime.settings,
        "op-refused",
        EnrolRequest("no_such_journey"),
        opening=opening,
    )
    assert not result.accepted
    handle = runtime.client.get_workflow_handle(contact_workflow_id("op-refused"))
    # The refused journey is gone; the first stage's nurture, started by the same update,
    # is what the contact is in (waiting for a channel: it has no address yet).
    assert (await handle.describe()).typed_search_attributes.get(KEYS[JOURNEYS]) == ["b2b_nurture"]


async def test_a_malformed_event_in_an_enrolment_is_refused_before_sending(
    runtime: Runtime,
) -> None:
    bad = EventMessage(message_id="", type="identify", occurred_at=datetime.now(UTC))
    with pytest.raises(InvalidEvent, match="message_id"):
        await enrol(
            runtime.client, runtime.settings, "op-bad", EnrolRequest("b2b_nurture", event=bad)
        )
    # Past the gateway (an old client), the workflow's validator refuses the update and
    # nothing is applied.
    runtime.touched.add("op-bad2")
    await send_event(
        runtime.client, runtime.settings, "op-bad2", _identify("op-bad2"), rehearsal=True
    )

    async def identified() -> bool:
        view = await contact_view(runtime.client, "op-bad2")
        return bool(view.state["attributes"].get("email") == PERSON["email"])

    await eventually(identified)
    handle = runtime.client.get_workflow_handle(contact_workflow_id("op-bad2"))
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(
            "enrol", EnrolRequest("b2b_nurture", event=bad), result_type=object
        )
    assert (await contact_view(runtime.client, "op-bad2")).journeys == []


async def test_an_opener_that_sees_no_published_journey_leaves_the_opening_to_the_workflow(
    tmp_path: Path,
) -> None:
    """Before any worker has published, an opening would carry no journeys and the
    contact would never enter one: the opener declines."""
    settings = runtime_settings(tmp_path, "no-journeys-yet")
    engine = migrated_engine(settings.resolved_database_url)
    opener = ContactOpener(engine, settings)
    assert opener.definitions().journeys == {}
    assert await opener.open("early-1", event=_identify("early-1")) is None
    with Session(engine) as session:
        assert session.get(Contact, "early-1") is None  # the workflow's open records it
    engine.dispose()


def test_no_journey_published_is_trusted_for_a_second_not_a_minute(tmp_path: Path) -> None:
    """The ingestion writer asks for the definitions at every group commit: while nothing
    is published the answer is read once a second, not once a call, and the first
    publish is seen within that second, not the minute a published set is kept."""
    settings = runtime_settings(tmp_path, "no-journeys-ttl")
    engine = migrated_engine(settings.resolved_database_url)
    opener = ContactOpener(engine, settings)
    loads = 0
    load = opener._load

    def counted() -> Definitions:
        nonlocal loads
        loads += 1
        return load()

    opener._load = counted
    for _ in range(50):
        assert opener.definitions().journeys == {}
    assert loads == 1
    publish_bundled(engine, settings)
    time.sleep(UNPUBLISHED_TTL.total_seconds() + 0.1)
    assert "b2b_nurture" in opener.definitions().journeys
    assert loads == 2
    for _ in range(50):
        opener.definitions()
    assert loads == 2  # published: kept for the full ttl
    engine.dispose()
