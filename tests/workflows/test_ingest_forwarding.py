"""Events through the HTTP API to contact workflows on the real server: the outbox
forwarder, with Temporal reachable and not."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlmodel import Session, col, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from stagecoach.engine.protocol.messages import contact_workflow_id
from stagecoach.engine.services.ingest._forwarder import backlog
from stagecoach.engine.services.storage.models import Event, Outbox
from stagecoach.engine.temporal.gateway import ContactNotFound
from stagecoach.engine.temporal.gateway import contact_view as _view
from tests.workflows.conftest import Runtime, eventually

WHITEPAPER = {"content_id": "wp-digital-transformation", "kind": "whitepaper"}


async def contact_view(client: Client, contact_id: str) -> Any:
    """The view, waiting out the moment before the forwarder has started the workflow."""
    for _ in range(100):
        try:
            return await _view(client, contact_id)
        except ContactNotFound:
            await asyncio.sleep(0.1)
    return await _view(client, contact_id)


def _client(runtime: Runtime, temporal: Callable[[], Awaitable[Client]]) -> TestClient:
    return TestClient(runtime.app(temporal), headers=runtime.write_auth("web"))


def _contact_of(runtime: Runtime, message_id: str) -> str:
    with Session(runtime.engine) as session:
        row = session.exec(select(Event).where(col(Event.message_id) == message_id)).one()
        runtime.touched.add(row.contact_id)
        return row.contact_id


def _outbox(runtime: Runtime) -> int:
    with Session(runtime.engine) as session:
        return int(session.exec(select(func.count()).select_from(Outbox)).one())


async def test_a_tracked_event_reaches_a_new_contacts_workflow_opened_by_the_api(
    runtime: Runtime,
) -> None:
    async def temporal() -> Client:
        return runtime.client

    with _client(runtime, temporal) as api:
        body: dict[str, Any] = {
            "userId": "fw-1",
            "messageId": "fw-1-dl",
            "event": "content.downloaded",
            "properties": WHITEPAPER,
            "context": {"traits": {"email": "fw1@example.com", "locale": "en"}},
        }
        assert api.post("/v1/track", json=body).status_code == 200
        contact_id = _contact_of(runtime, "fw-1-dl")

        async def applied() -> bool:
            view = await contact_view(runtime.client, contact_id)
            return bool(view.stage == "prospect")

        await eventually(applied)
        assert _outbox(runtime) == 0

        async def whitepaper_sent() -> bool:  # the nurture starts once the opening applied
            return len(runtime.sent(contact_id)) >= 1

        await eventually(whitepaper_sent)
        assert len(runtime.sent(contact_id)) == 1  # the nurture's whitepaper, once
        handle = runtime.client.get_workflow_handle(contact_workflow_id(contact_id))
        names = [
            e.activity_task_scheduled_event_attributes.activity_type.name
            for e in (await handle.fetch_history()).events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        ]
        assert "contact.open" not in names


async def test_while_temporal_is_unreachable_events_wait_and_then_drain_once(
    runtime: Runtime,
) -> None:
    reachable = {"yes": False}

    async def temporal() -> Client:
        if not reachable["yes"]:
            raise RuntimeError("Temporal unreachable (test)")
        return runtime.client

    with _client(runtime, temporal) as api:
        for n in range(5):
            body = {
                "userId": "fw-2",
                "messageId": f"fw-2-{n}",
                "event": "page.viewed",
                "properties": {"category": "pricing"},
            }
            assert api.post("/v1/track", json=body).status_code == 200
        contact_id = _contact_of(runtime, "fw-2-0")
        assert backlog(runtime.engine)["outbox_backlog"] == 5
        reachable["yes"] = True

        async def drained() -> bool:
            view = await contact_view(runtime.client, contact_id)
            return len(view.state["events"]) == 5

        await eventually(drained, within=20)
        assert _outbox(runtime) == 0
        # Five waiting events for one contact went in one signal-with-start.
        handle = runtime.client.get_workflow_handle(contact_workflow_id(contact_id))
        signals = [
            e
            for e in (await handle.fetch_history()).events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        ]
        assert len(signals) == 1
        view = await contact_view(runtime.client, contact_id)
        assert view.run_events == 5


async def test_a_merged_contacts_workflow_ends_pointing_to_the_survivor(
    runtime: Runtime,
) -> None:
    async def temporal() -> Client:
        return runtime.client

    with _client(runtime, temporal) as api:
        api.post(
            "/v1/identify",
            json={"userId": "m-a", "messageId": "m-a-1", "traits": {"email": "m@example.com"}},
        )
        api.post("/v1/identify", json={"userId": "m-b", "messageId": "m-b-1"})
        a, b = _contact_of(runtime, "m-a-1"), _contact_of(runtime, "m-b-1")

        async def both_started() -> bool:
            for cid in (a, b):
                await contact_view(runtime.client, cid)
            return _outbox(runtime) == 0

        await eventually(both_started)
        api.post("/v1/alias", json={"previousId": "m-a", "userId": "m-b", "messageId": "m-ab"})

        async def ended() -> bool:
            handle = runtime.client.get_workflow_handle(contact_workflow_id(a))
            return (await handle.describe()).status is not None and _outbox(runtime) == 0

        await eventually(ended)
        handle = runtime.client.get_workflow_handle(contact_workflow_id(a))
        assert await handle.result() == b
        view = await contact_view(runtime.client, b)
        assert view.state["attributes"].get("email") == "m@example.com"  # a's state, replayed


async def test_a_known_contact_gets_a_plain_signal_and_an_ended_one_a_new_run(
    runtime: Runtime,
) -> None:
    async def temporal() -> Client:
        return runtime.client

    def page(n: int) -> dict[str, Any]:
        return {
            "userId": "fw-known",
            "messageId": f"fw-known-{n}",
            "name": "Pricing",
            "properties": {"category": "pricing", "n": n},
        }

    with _client(runtime, temporal) as api:
        forwarder = api.app.state.forwarder  # type: ignore[attr-defined]
        assert api.post("/v1/page", json=page(1)).status_code == 200
        contact_id = _contact_of(runtime, "fw-known-1")

        async def applied(count: int) -> bool:
            view = await contact_view(runtime.client, contact_id)
            return len(view.state["events"]) == count

        await eventually(lambda: applied(1))
        assert (forwarder.stats.signals, forwarder.stats.started) == (1, 1)

        # The workflow is known to be running: the next event is a plain signal.
        assert api.post("/v1/page", json=page(2)).status_code == 200
        await eventually(lambda: applied(2))
        assert (forwarder.stats.signals, forwarder.stats.started) == (2, 1)

        # Its run ends behind the forwarder's back: the plain signal is answered
        # NOT_FOUND and the event goes with start, to a new run, as before.
        handle = runtime.client.get_workflow_handle(contact_workflow_id(contact_id))
        await handle.terminate(reason="test: the run ends")
        assert api.post("/v1/page", json=page(3)).status_code == 200

        async def new_run() -> bool:
            started = await runtime.client.get_workflow_handle(
                contact_workflow_id(contact_id)
            ).describe()
            return started.run_id != handle.result_run_id and await applied(1)

        await eventually(new_run)
        view = await contact_view(runtime.client, contact_id)
        assert [e["properties"]["n"] for e in view.state["events"]] == [3]
        assert (forwarder.stats.signals, forwarder.stats.started) == (3, 2)
        assert _outbox(runtime) == 0
