"""``stagecoach contact timeline`` reads like the story it tells: the events a batch
signal carried, each with its type, and a hand-off line that says who it went to.

From nothing: a new contact's identify and three buying signals arrive in one
``POST /v1/batch``; the outbox forwarder hands them to the contact's workflow as one
``events`` signal; the contact qualifies and the pipeline hands it to sales."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import Session, col, select
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.protocol.messages import EVENTS_SIGNAL, contact_workflow_id
from stagecoach.engine.services.storage.models import Event, Handoff
from stagecoach.engine.settings import Settings
from tests.engine.cli.conftest import Shell
from tests.workflows.conftest import eventually, open_runtime

BUYER = {
    "email": "zhao.min@example.cn",
    "locale": "zh-CN",
    "timezone": "Asia/Shanghai",
    "company_size": 500,
    "role": "cto",
}
SIGNALS = ("webinar.attended", "demo.requested", "consultation.booked")


async def test_a_batch_shows_its_events_and_a_hand_off_says_who_took_it(
    env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    content_library: ContentLibrary,
    shell: Callable[[Settings], Shell],
) -> None:
    async with open_runtime(env, task_queue, tmp_path, content_library) as runtime:
        batch: list[dict[str, Any]] = [
            {"type": "identify", "userId": "tl-1", "messageId": "tl-1-id", "traits": BUYER}
        ]
        batch += [
            {"type": "track", "userId": "tl-1", "messageId": f"tl-1-{n}", "event": name}
            for n, name in enumerate(SIGNALS)
        ]
        with TestClient(runtime.app(), headers=runtime.write_auth("web")) as api:
            assert api.post("/v1/batch", json={"batch": batch}).status_code == 200
            with Session(runtime.engine) as session:
                contact_id = session.exec(
                    select(Event.contact_id).where(col(Event.message_id) == "tl-1-id")
                ).one()
            runtime.touched.add(contact_id)

            async def handed_off() -> bool:
                with Session(runtime.engine) as session:
                    found = session.exec(
                        select(Handoff).where(col(Handoff.contact_id) == contact_id)
                    ).first()
                return found is not None

            await eventually(handed_off, within=60)

        history = await runtime.client.get_workflow_handle(
            contact_workflow_id(contact_id)
        ).fetch_history()
        signals = [
            e.workflow_execution_signaled_event_attributes.signal_name
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        ]
        assert EVENTS_SIGNAL in signals  # the case in question: several events, one signal

        code, out, err = await shell(runtime.settings).run("contact", "timeline", contact_id)
        assert code == 0, err
        events = [line.split(None, 2)[2] for line in out.splitlines() if " event " in line]
        assert not any(e.startswith("events") for e in events), out
        assert [e.split()[0] for e in events if not e.startswith("identify")] == list(SIGNALS)
        [handoff] = [line for line in out.splitlines() if " handoff " in line]
        assert handoff.endswith("handoff   to sales (mql)"), out
        assert "[]" not in out
