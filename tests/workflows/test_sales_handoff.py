"""The sales hand-off on the time-skipping server with a real webhook receiver: one
hand-off when the lead reaches MQL, a reminder after the SLA in business hours, an
escalation after the second period, and a rejection that recycles the lead, which
qualifies again only after the cool-down."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from pydantic import SecretStr
from sqlmodel import Session, col, select
from temporalio.testing import WorkflowEnvironment

from stagecoach.connectors.crm import WebhookConnector, sign
from stagecoach.connectors.filesink import FileSinkConnector
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.protocol.messages import ContactView, contact_workflow_id
from stagecoach.engine.services.storage.models import Event, Handoff, Identity
from stagecoach.engine.temporal.gateway import ContactNotFound, contact_view
from tests.peers.crm import WebhookReceiver
from tests.workflows.conftest import Runtime, eventually, open_runtime, record_history

SECRET = "whsec-sales"
BUYER = {
    "email": "zhao.min@example.cn",
    "locale": "zh-CN",
    "timezone": "Asia/Shanghai",
    "company_size": 500,  # large company: 30 fit points
    "role": "cto",  # decision maker: 25, so grade B (50+)
}


def _sent(receiver: WebhookReceiver, kind: str) -> list[dict[str, Any]]:
    return [d.payload["data"] for d in receiver.deliveries if d.payload["data"].get("type") == kind]


def _handoffs(runtime: Runtime, contact_id: str) -> list[Handoff]:
    with Session(runtime.engine) as session:
        return list(session.exec(select(Handoff).where(Handoff.contact_id == contact_id)).all())


async def _qualify(runtime: Runtime, contact_id: str) -> None:
    for kind in ("webinar.attended", "demo.requested", "consultation.booked"):
        await runtime.event(contact_id, kind, traits=BUYER)


async def _skip_to(env: WorkflowEnvironment, when: datetime) -> None:
    now = await env.get_current_time()
    if when > now:
        await env.sleep(when - now)


@pytest.mark.time_skipping
async def test_mql_hand_off_reminder_escalation_and_recycling(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    with WebhookReceiver(SECRET) as receiver:
        connector = WebhookConnector(receiver.endpoint, SECRET)
        sinks = {
            ch: FileSinkConnector(tmp_path / "sink" / ch, channel=ch) for ch in ("email", "wechat")
        }
        try:
            async with open_runtime(
                env,
                task_queue,
                tmp_path,
                content_library,
                connectors={**sinks, "crm": connector},
            ) as runtime:
                await _qualify(runtime, "c-sql")

                async def handed_off() -> bool:
                    return len(_sent(receiver, "handoff")) == 1

                await eventually(handed_off, within=30)
                [handoff] = _sent(receiver, "handoff")
                # Everything sales needs, routed by grade: B goes round robin in the pool.
                assert handoff["grade"]["grade"] == "B"
                assert handoff["routing"]["team"] == "inside-sales"
                assert {"demo.requested", "consultation.booked"} <= {
                    e["event_type"] for e in handoff["score"]["top_events"]
                }
                assert {r["rule"] for r in handoff["grade"]["rules"]} >= {"large_company"}
                assert len(handoff["recent_events"]) == 3
                assert handoff["timeline_url"].endswith("/v1/contacts/c-sql")
                [row] = _handoffs(runtime, "c-sql")
                assert row.id == handoff["handoff_id"]
                respond_by = datetime.fromisoformat(row.payload["respond_by"])
                escalate_at = datetime.fromisoformat(row.payload["escalate_at"])
                assert escalate_at > respond_by

                # No feedback by the deadline: the owner is reminded, nobody escalated yet.
                await _skip_to(env, respond_by + timedelta(minutes=1))

                async def reminded() -> bool:
                    return len(_sent(receiver, "handoff.reminder")) == 1

                await eventually(reminded, within=30)
                assert _sent(receiver, "handoff.escalation") == []
                assert _sent(receiver, "handoff.reminder")[0]["to"] == row.owner

                # Another period: the team lead hears of it.
                await _skip_to(env, escalate_at + timedelta(minutes=1))

                async def escalated() -> bool:
                    return len(_sent(receiver, "handoff.escalation")) == 1

                await eventually(escalated, within=30)
                assert _sent(receiver, "handoff.escalation")[0]["to"] == "sun.li"

                # Sales reject it: recycled to nurture, and more interest does not hand it
                # off again within the cool-down.
                await runtime.event(
                    "c-sql",
                    "sales.rejected",
                    properties={"reason": "no_budget", "handoff_id": row.id},
                )

                async def recycled() -> bool:
                    view = await contact_view(runtime.client, "c-sql")
                    return view.stage == "prospect"

                await eventually(recycled)
                await _qualify(runtime, "c-sql")
                await env.sleep(timedelta(hours=1))
                assert len(_sent(receiver, "handoff")) == 1

                # After the cool-down, renewed interest qualifies it again: one more.
                await env.sleep(timedelta(days=31))
                await _qualify(runtime, "c-sql")

                async def handed_off_again() -> bool:
                    return len(_sent(receiver, "handoff")) == 2

                await eventually(handed_off_again, within=30)
                assert len(_handoffs(runtime, "c-sql")) == 2
        finally:
            await connector.aclose()


# --- one hand-off per qualification episode, end to end through the public surface -----


def _track_api(api: TestClient, key: str) -> Callable[..., None]:
    def track(user: str, event: str, *, at: datetime | None = None, **fields: Any) -> None:
        body: dict[str, Any] = {
            "userId": user,
            "messageId": f"{user}-{event}-{next(_ids)}",
            "event": event,
            **fields,
        }
        if at is not None:
            body["timestamp"] = at.isoformat()
        response = api.post("/v1/track", auth=(key, ""), json=body)
        assert response.status_code == 200, response.text

    return track


_ids = itertools.count(1)


def _handoffs_sent(receiver: WebhookReceiver, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(_sent(receiver, "handoff")) == n

    return check


def _feedback(api: TestClient, handoff_id: str, decision: str, **fields: Any) -> Response:
    """Sales' answer, signed as docs/webhooks.md tells a receiver to sign it."""
    raw = json.dumps({"handoff_id": handoff_id, "decision": decision, **fields}).encode()
    response: Response = api.post(
        f"/v1/handoffs/{handoff_id}/feedback",
        content=raw,
        headers={
            "Content-Type": "application/json",
            "Stagecoach-Signature": sign(SECRET, raw, timestamp=int(time.time())),
        },
    )
    return response


def _contact_of(runtime: Runtime, user: str) -> str:
    with Session(runtime.engine) as session:
        contact_id = session.exec(
            select(Identity.contact_id).where(col(Identity.value) == user)
        ).first()
    assert contact_id is not None
    runtime.touched.add(contact_id)
    return contact_id


async def _scheduled_handoffs(runtime: Runtime, contact_id: str) -> int:
    """Hand-off activities the contact's workflow scheduled, read from its history."""
    handle = runtime.client.get_workflow_handle(contact_workflow_id(contact_id))
    count = 0
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            attributes = event.activity_task_scheduled_event_attributes
            count += attributes.activity_type.name == "contact.hand_off"
    return count


async def _settled(runtime: Runtime, contact_id: str, stage: str) -> ContactView:
    """Wait for ``stage``, then for the workflow to have no task in flight, so that what
    its history shows is everything the move led to."""

    async def there() -> bool:
        try:
            return (await contact_view(runtime.client, contact_id)).stage == stage
        except ContactNotFound:
            return False  # the forwarder has not started its workflow yet

    await eventually(there, within=30)
    await asyncio.sleep(1.5)
    return await contact_view(runtime.client, contact_id)


@contextlib.asynccontextmanager
async def _sales_stack(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> AsyncIterator[tuple[Runtime, TestClient, WebhookReceiver, Callable[..., None]]]:
    """The worker with the CRM webhook peer, and the API (events and feedback) beside it."""
    with WebhookReceiver(SECRET) as receiver:
        connector = WebhookConnector(receiver.endpoint, SECRET)
        sinks = {
            ch: FileSinkConnector(tmp_path / "sink" / ch, channel=ch) for ch in ("email", "wechat")
        }
        try:
            async with open_runtime(
                env,
                task_queue,
                tmp_path,
                content_library,
                connectors={**sinks, "crm": connector},
                webhook_secret=SecretStr(SECRET),
            ) as runtime:
                key = runtime.write_key("site")
                with TestClient(runtime.app()) as api:
                    yield runtime, api, receiver, _track_api(api, key)
        finally:
            await connector.aclose()


async def test_sales_answers_do_not_bring_new_handoffs_and_backwards_answers_are_409(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    async with _sales_stack(env, task_queue, tmp_path, content_library) as stack:
        runtime, api, receiver, track = stack
        for kind in ("webinar.attended", "demo.requested", "consultation.booked"):
            track("buyer", kind, context={"traits": BUYER})
        contact_id = _contact_of(runtime, "buyer")

        async def handed_off() -> bool:
            return len(_sent(receiver, "handoff")) == 1

        await eventually(handed_off, within=30)
        [handoff] = _sent(receiver, "handoff")
        handoff_id = handoff["handoff_id"]

        accepted = _feedback(api, handoff_id, "accepted", owner="wang.fang")
        assert accepted.status_code == 200, accepted.text
        view = await _settled(runtime, contact_id, "opportunity")
        # The stage move the decision caused is the same episode: no second hand-off.
        assert await _scheduled_handoffs(runtime, contact_id) == 1
        assert len(_sent(receiver, "handoff")) == 1
        score = view.score

        # Rejecting a lead sales already took goes backwards: refused, nothing applied.
        rejected = _feedback(api, handoff_id, "rejected", reason="no_budget")
        assert rejected.status_code == 409, rejected.text
        assert "already accepted" in rejected.json()["error"]
        assert "only 'converted' may follow" in rejected.json()["error"]
        # The same answer again is a duplicate: 200, nothing new.
        again = _feedback(api, handoff_id, "accepted")
        assert (again.status_code, again.json()["duplicate"]) == (200, True)

        converted = _feedback(api, handoff_id, "converted")
        assert converted.status_code == 200, converted.text
        view = await _settled(runtime, contact_id, "customer")
        assert view.score == pytest.approx(score, abs=0.01)  # no -30 from the refused rejection
        assert await _scheduled_handoffs(runtime, contact_id) == 1
        assert len(_sent(receiver, "handoff")) == 1
        with Session(runtime.engine) as session:
            events = session.exec(
                select(Event.name).where(col(Event.contact_id) == contact_id)
            ).all()
        assert "sales.rejected" not in events
        [row] = _handoffs(runtime, contact_id)
        assert row.status == "converted"
        await record_history(runtime, contact_id, "handoff_episode_accepted_then_converted")


async def test_a_contact_that_drops_below_the_bar_and_qualifies_again_is_a_new_episode(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    async with _sales_stack(env, task_queue, tmp_path, content_library) as stack:
        runtime, api, receiver, track = stack
        for kind in ("webinar.attended", "demo.requested", "consultation.booked"):
            track("buyer", kind, context={"traits": BUYER})
        contact_id = _contact_of(runtime, "buyer")

        await eventually(_handoffs_sent(receiver, 1), within=30)
        first = _sent(receiver, "handoff")[0]["handoff_id"]
        assert _feedback(api, first, "accepted").status_code == 200
        await _settled(runtime, contact_id, "opportunity")

        # New facts drop the grade below B (a student): the episode is over...
        track("buyer", "page.viewed", context={"traits": {"role": "student"}})

        async def graded_c() -> bool:
            return (await contact_view(runtime.client, contact_id)).grade not in ("A", "B")

        await eventually(graded_c, within=30)
        assert await _scheduled_handoffs(runtime, contact_id) == 1
        # ...and qualifying again starts a new one: a second hand-off, with its own id.
        track("buyer", "page.viewed", context={"traits": {"role": "cto"}})
        await eventually(_handoffs_sent(receiver, 2), within=30)
        second = _sent(receiver, "handoff")[1]
        assert second["handoff_id"] != first
        assert second["stage"]["name"] == "opportunity"


# Half-life 30 days: 60 points decay by 0.01 in about 623 s.
_TO_59_99 = timedelta(seconds=623)


@pytest.mark.parametrize(
    ("age", "shown", "handed_off"),
    [(timedelta(seconds=30), 60.0, True), (_TO_59_99, 59.99, False)],
    ids=["exactly-60", "59.99"],
)
async def test_the_mql_rule_reads_the_score_as_shown(
    env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    content_library: ContentLibrary,
    age: timedelta,
    shown: float,
    handed_off: bool,
) -> None:
    """Events worth exactly 60 points, some seconds old: shown as 60.0, and an MQL; the
    same points ten minutes old are shown as 59.99, and not one."""
    async with _sales_stack(env, task_queue, tmp_path, content_library) as stack:
        runtime, _api, receiver, track = stack
        at = datetime.now(UTC) - age
        # webinar 20 + demo 30 + form 10 = 60, with a B grade
        for kind in ("webinar.attended", "demo.requested", "form.submitted"):
            track("edge", kind, at=at, context={"traits": BUYER})
        contact_id = _contact_of(runtime, "edge")
        view = await _settled(runtime, contact_id, "lead")
        assert view.grade == "B"
        assert view.score == shown
        if handed_off:
            await eventually(_handoffs_sent(receiver, 1), within=30)
            assert _sent(receiver, "handoff")[0]["score"]["value"] == shown
        assert await _scheduled_handoffs(runtime, contact_id) == int(handed_off)


# --- docs/webhooks.md shows what is sent ---------------------------------------------------

DOCS = Path(__file__).parents[2] / "docs" / "webhooks.md"


def _shape(value: Any) -> Any:
    """Keys and JSON types, not values; a list is the set of its items' shapes."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted({json.dumps(_shape(v), sort_keys=True) for v in value})
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, int | float) else "string"


def _same_shape(documented: Any, sent: Any, where: str = "body") -> None:
    if isinstance(documented, dict):
        assert isinstance(sent, dict), where
        assert sorted(documented) == sorted(sent), where
        for key in documented:
            _same_shape(documented[key], sent[key], f"{where}.{key}")
    elif isinstance(documented, list):
        assert isinstance(sent, list), where
        kinds = {json.dumps(_shape(v), sort_keys=True) for v in sent}
        for item in documented:
            assert json.dumps(_shape(item), sort_keys=True) in kinds or not sent, where
    else:
        assert _shape(documented) == _shape(sent), where


async def test_the_documented_handoff_is_what_the_crm_receives(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("### A hand-off", 1)[1]
    documented = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    async with _sales_stack(env, task_queue, tmp_path, content_library) as stack:
        runtime, _api, receiver, track = stack
        track(
            "buyer",
            "webinar.attended",
            properties={"content_id": "wp-roi"},
            context={"traits": BUYER},
        )
        for kind in ("demo.requested", "consultation.booked"):
            track("buyer", kind)
        contact_id = _contact_of(runtime, "buyer")
        await eventually(_handoffs_sent(receiver, 1), within=30)
        [delivery] = receiver.deliveries
    sent = delivery.payload
    _same_shape(documented, sent)
    # The envelope, exactly as the page describes it.
    assert (
        delivery.raw_body
        == json.dumps(sent, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
    )
    assert sent["channel"] == "crm"
    assert sent["to"] == sent["data"]["routing"]["owner"] == "wang.fang"
    assert delivery.key == sent["idempotency_key"]
    contact, reason, when = sent["idempotency_key"].split(":", 2)
    assert (contact, reason) == (contact_id, "mql")
    assert datetime.fromisoformat(when) == datetime.fromisoformat(sent["data"]["at"])
    # An MQL hand-off names no journey step, rather than an empty one.
    assert (sent["data"]["journey"], sent["data"]["step_id"]) == (None, None)
    assert sent["data"]["score"]["value"] == documented["data"]["score"]["value"] == 80.0
