"""The right to erasure end to end on the real server: events through /v1/*, contact
workflows started by the outbox forwarder, a merge; then DELETE /v1/contacts/{id} and
nothing personal is left in the database or in Temporal."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from google.protobuf.message import Message
from sqlmodel import Session, col, select
from temporalio.api.common.v1 import Payload
from temporalio.service import RPCError, RPCStatusCode

from stagecoach.engine.api.routes.contacts import pseudonym
from stagecoach.engine.protocol.messages import contact_workflow_id
from stagecoach.engine.services.analytics.service import Numbers
from stagecoach.engine.services.analytics.store import AnalyticsStore, default_path
from stagecoach.engine.services.storage.models import (
    Consent,
    Contact,
    Delivery,
    Event,
    Identity,
    Merge,
    Outbox,
)
from stagecoach.engine.temporal.gateway import ContactNotFound, contact_view
from tests.workflows.conftest import Runtime, eventually

TOKEN = "erasure-test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
EMAIL = "erase.me@example.com"
WHITEPAPER = {"content_id": "wp-digital-transformation", "kind": "whitepaper"}


@pytest.fixture
def runtime_overrides() -> dict[str, Any]:
    return {"admin_token": TOKEN}


@pytest.fixture
def api(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(runtime.app(), headers=runtime.write_auth("web")) as client:
        yield client


def _contact_of(runtime: Runtime, message_id: str) -> str:
    with Session(runtime.engine) as session:
        row = session.exec(select(Event).where(col(Event.message_id) == message_id)).one()
        runtime.touched.add(row.contact_id)
        return row.contact_id


def _rows(runtime: Runtime, model: Any, *where: Any) -> list[Any]:
    with Session(runtime.engine) as session:
        return list(session.exec(select(model).where(*where)).all())


async def _running(runtime: Runtime, contact_id: str) -> bool:
    try:
        await contact_view(runtime.client, contact_id)
    except ContactNotFound:
        return False
    return True


async def _gone(runtime: Runtime, workflow_id: str) -> bool:
    try:
        await runtime.client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return True
        raise
    return False


async def test_erasure_removes_the_person_from_the_database_and_temporal(
    runtime: Runtime, api: TestClient
) -> None:
    def post(kind: str, body: dict[str, Any]) -> None:
        response = api.post(f"/v1/{kind}", json=body)
        assert response.status_code == 200, response.text

    post("page", {"anonymousId": "er-anon", "messageId": "er-page", "name": "Pricing"})
    anonymous = _contact_of(runtime, "er-page")
    post(
        "identify",
        {
            "userId": "er-1",
            "messageId": "er-identify",
            "traits": {
                "email": EMAIL,
                "locale": "en",
                "consent": {"email": True},
                "consent_wording": "I agree to receive product news by email.",
            },
            "context": {"ip": "203.0.113.9"},
        },
    )
    post(
        "track",
        {
            "userId": "er-1",
            "messageId": "er-download",
            "event": "content.downloaded",
            "properties": WHITEPAPER,
        },
    )
    contact = _contact_of(runtime, "er-identify")

    async def started() -> bool:
        return await _running(runtime, anonymous) and await _running(runtime, contact)

    await eventually(started)
    post("alias", {"previousId": "er-anon", "userId": "er-1", "messageId": "er-alias"})

    async def settled() -> bool:
        merged = runtime.client.get_workflow_handle(contact_workflow_id(anonymous))
        if (await merged.describe()).close_time is None:
            return False
        view = await contact_view(runtime.client, contact)
        return view.stage == "prospect" and not _rows(runtime, Outbox)

    await eventually(settled, within=30)
    assert len(runtime.sent(contact)) == 1  # the nurture's whitepaper went out
    assert _rows(runtime, Delivery, col(Delivery.contact_id) == contact)

    # The admin view first: the merged id answers with the survivor, live from its workflow.
    shown = await asyncio.to_thread(api.get, f"/v1/contacts/{anonymous}", headers=ADMIN)
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert (body["id"], body["merged_into"]) == (contact, contact)
    assert (body["state"]["source"], body["state"]["stage"]) == ("workflow", "prospect")
    assert {i["value"] for i in body["identities"]} >= {"er-1", "er-anon", EMAIL}

    erased = await asyncio.to_thread(api.delete, f"/v1/contacts/{contact}", headers=ADMIN)

    assert erased.status_code == 202, erased.text
    summary = erased.json()
    assert summary["erased"] == [contact, anonymous]
    workflow_ids = [contact_workflow_id(contact), contact_workflow_id(anonymous)]
    assert summary["workflows"]["terminated"] == [contact_workflow_id(contact)]
    assert sorted(summary["workflows"]["deleted"]) == sorted(workflow_ids)
    assert summary["workflows"]["errors"] == []

    async def live_one_gone() -> bool:
        return await _gone(runtime, contact_workflow_id(contact))

    await eventually(live_one_gone, within=5)  # an open execution is deleted at once

    async def histories_gone() -> bool:
        return all([await _gone(runtime, workflow_id) for workflow_id in workflow_ids])

    # A closed execution (the merged contact's) goes some seconds later.
    await eventually(histories_gone, within=120)
    ids = [contact, anonymous]
    assert not _rows(runtime, Identity)
    assert not _rows(runtime, Consent)
    assert not _rows(runtime, Merge)
    assert not _rows(runtime, Contact, col(Contact.id).in_(ids))
    events = _rows(runtime, Event)
    assert {e.message_id for e in events} == {
        "er-page",
        "er-identify",
        "er-download",
        "er-alias",
    }
    for event in events:
        assert event.contact_id == pseudonym(contact)
        assert (event.properties, event.context) == ({}, {})
    [delivery] = _rows(runtime, Delivery)
    assert delivery.contact_id == pseudonym(contact)
    assert (delivery.provider_message_id, delivery.error) == (None, None)
    assert {c.stage for c in _rows(runtime, Contact)} == {"prospect", "merged"}  # counts stay

    for contact_id in ids:
        response = await asyncio.to_thread(api.get, f"/v1/contacts/{contact_id}", headers=ADMIN)
        assert response.status_code == 404
        assert "was erased at" in response.json()["detail"]
    again = await asyncio.to_thread(api.delete, f"/v1/contacts/{contact}", headers=ADMIN)
    assert again.status_code == 404

    # Nothing brings the workflows back: the outbox is empty and the forwarder idles.
    await asyncio.sleep(1.0)
    assert await histories_gone()
    assert not _rows(runtime, Outbox)


# --- every store -----------------------------------------------------------------------------

PHONE = "+8613800138123"
NAME = "Erin Mayer-Li"
PERSONAL = (EMAIL, PHONE, NAME)


def _database_text(runtime: Runtime) -> dict[str, str]:
    """Every row of every table of the database, as text, per table."""
    tables = sa.MetaData()
    tables.reflect(runtime.engine)
    with runtime.engine.connect() as conn:
        return {
            name: "\n".join(repr(tuple(row)) for row in conn.execute(sa.select(table)))
            for name, table in tables.tables.items()
        }


def _analytics_text(store: AnalyticsStore) -> str:
    with store.read() as con:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        return "\n".join(repr(con.execute(f"FROM {t}").fetchall()) for t in tables)


def _sink_text(runtime: Runtime) -> str:
    files = [p for p in runtime.sink.rglob("*") if p.is_file()] if runtime.sink.exists() else []
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


def _payloads(message: Message, found: list[Payload]) -> None:
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = list(value.values())
        elif isinstance(value, Message):
            items = [value]
        else:  # a repeated field
            items = list(value)
        for item in items:
            if isinstance(item, Payload):
                found.append(item)
            elif isinstance(item, Message):
                _payloads(item, found)


async def _history_text(runtime: Runtime, workflow_id: str) -> str:
    """Every payload of the workflow's history, decoded as the client decodes them."""
    history = await runtime.client.get_workflow_handle(workflow_id).fetch_history()
    found: list[Payload] = []
    for event in history.events:
        _payloads(event, found)
    codec = runtime.client.data_converter.payload_codec
    decoded = await codec.decode(found) if codec is not None else found
    return "\n".join(p.data.decode("utf-8", errors="replace") for p in decoded)


def _holding(text: str) -> list[str]:
    return [value for value in PERSONAL if value in text]


async def test_erasure_leaves_no_personal_data_in_any_store(
    runtime: Runtime, api: TestClient
) -> None:
    """Erin signs up and is sent the whitepaper (to the file sink), the analytics store is
    synced; then she is erased by email. Her email, phone and name are searched for in
    the database, analytics.duckdb, the sink's files and her decoded workflow history."""
    response = api.post(
        "/v1/identify",
        json={
            "userId": "erin-1",
            "messageId": "erin-identify",
            "traits": {
                "email": EMAIL,
                "phone": PHONE,
                "name": NAME,
                "consent": {"email": True},
                "consent_wording": "I agree to receive product news by email.",
            },
        },
    )
    assert response.status_code == 200, response.text
    response = api.post(
        "/v1/track",
        json={
            "userId": "erin-1",
            "messageId": "erin-download",
            "event": "content.downloaded",
            "properties": {**WHITEPAPER, "downloaded_by": NAME},
        },
    )
    assert response.status_code == 200, response.text
    contact = _contact_of(runtime, "erin-identify")

    async def sent() -> bool:
        return await _running(runtime, contact) and len(runtime.sent(contact)) == 1

    await eventually(sent, within=30)
    workflow_id = contact_workflow_id(contact)
    store = AnalyticsStore(default_path(runtime.settings.data_dir))
    await asyncio.to_thread(store.sync, runtime.engine)

    # Each store holds her before: the searches below can find what they look for.
    assert _holding("\n".join(_database_text(runtime).values())) == list(PERSONAL)
    assert _holding(await asyncio.to_thread(_analytics_text, store)) == list(PERSONAL)
    assert EMAIL in _sink_text(runtime)
    assert _holding(await _history_text(runtime, workflow_id)) == list(PERSONAL)

    erased = await asyncio.to_thread(
        api.delete, "/v1/contacts/Erin.Mayer@Example.com", headers=ADMIN
    )
    assert erased.status_code == 404  # not her address: nothing happens
    erased = await asyncio.to_thread(api.delete, f"/v1/contacts/{EMAIL}", headers=ADMIN)
    assert erased.status_code == 202, erased.text
    app = api.app
    assert isinstance(app, FastAPI)
    numbers: Numbers = app.state.reports
    await asyncio.to_thread(numbers.wait, 60)  # the sync the erasure started

    database = _database_text(runtime)
    assert {table: _holding(text) for table, text in database.items() if _holding(text)} == {}
    assert _holding(await asyncio.to_thread(_analytics_text, store)) == []
    assert _holding(_sink_text(runtime)) == []
    stores = erased.json()["stores"]
    assert stores["sink_folders"] == [str(runtime.sink / "email" / contact)]
    assert stores["analytics"] == "syncing"

    async def history_gone() -> bool:
        return await _gone(runtime, workflow_id)

    await eventually(history_gone, within=10)
    with pytest.raises(RPCError) as missing:
        await _history_text(runtime, workflow_id)
    assert missing.value.status == RPCStatusCode.NOT_FOUND
