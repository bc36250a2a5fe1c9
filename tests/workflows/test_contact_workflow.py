"""The contact workflow on real Temporal servers, with the production worker and activities."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import Session, select

from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.domain.journeys import (
    Journey,
    ReEntry,
    compile_journey,
    exit_to,
    next_best,
    on_event,
    send,
)
from stagecoach.engine.protocol.messages import contact_workflow_id
from stagecoach.engine.services.publishing import definitions_context, publish
from stagecoach.engine.services.storage.models import Delivery, StageTransition
from stagecoach.engine.temporal.gateway import contact_view
from stagecoach.engine.temporal.timeline import contact_timeline
from tests.workflows.conftest import Runtime, eventually, record_history

WHITEPAPER = {"content_id": "wp-digital-transformation", "kind": "whitepaper"}
PERSON = {"email": "li.lei@example.cn", "locale": "zh-CN", "timezone": "Asia/Shanghai"}


async def _stage(runtime: Runtime, contact_id: str) -> str:
    return (await contact_view(runtime.client, contact_id)).stage


def _deliveries(runtime: Runtime, contact_id: str) -> list[Delivery]:
    with Session(runtime.engine) as session:
        rows = session.exec(
            select(Delivery).where(Delivery.contact_id == contact_id).order_by(Delivery.id)  # type: ignore[arg-type]
        ).all()
    return list(rows)


def _transitions(runtime: Runtime, contact_id: str) -> list[tuple[str | None, str]]:
    with Session(runtime.engine) as session:
        rows = session.exec(
            select(StageTransition)
            .where(StageTransition.contact_id == contact_id)
            .order_by(StageTransition.id)  # type: ignore[arg-type]
        ).all()
    return [(r.from_stage, r.to_stage) for r in rows]


async def test_first_event_creates_the_contact_and_the_rules_move_its_stage(
    runtime: Runtime,
) -> None:
    await runtime.event("c-new", "content.downloaded", properties=WHITEPAPER, traits=PERSON)

    async def moved() -> bool:
        return await _stage(runtime, "c-new") == "prospect"

    await eventually(moved)

    async def recorded() -> bool:  # the read model follows the workflow, a moment later
        return _transitions(runtime, "c-new") == [(None, "suspect"), ("suspect", "prospect")]

    await eventually(recorded)

    async def searchable() -> bool:
        query = f"WorkflowId = '{contact_workflow_id('c-new')}' AND Stage = 'prospect'"
        return [w async for w in runtime.client.list_workflows(query)] != []

    await eventually(searchable)


async def test_a_download_that_creates_the_contact_counts_as_interest_in_the_nurture(
    runtime: Runtime,
) -> None:
    await runtime.event("c-dl", "content.downloaded", properties=WHITEPAPER, traits=PERSON)

    async def evaluating() -> bool:
        journeys = (await contact_view(runtime.client, "c-dl")).journeys
        return bool(journeys) and journeys[0]["step"].startswith("evaluation-")

    await eventually(evaluating)
    assert [m["message"]["content_id"] for m in runtime.sent("c-dl")] == [
        "wp-digital-transformation"
    ]
    await record_history(runtime, "c-dl", "created_by_a_download")


async def test_a_replayed_message_id_is_applied_once(runtime: Runtime) -> None:
    first = await runtime.event("c-dup", "page.viewed", properties={"category": "pricing"})
    await runtime.event(
        "c-dup", "page.viewed", message_id=first.message_id, properties={"category": "pricing"}
    )
    await runtime.event("c-dup", "page.viewed", properties={"category": "blog"})

    async def both_applied() -> bool:
        view = await contact_view(runtime.client, "c-dup")
        return len(view.state["events"]) == 2

    await eventually(both_applied)
    view = await contact_view(runtime.client, "c-dup")
    assert view.run_events == 2
    assert view.score == pytest.approx(11, abs=0.1)  # pricing 10 + page 1, not 21


async def test_bundled_nurture_sends_the_whitepaper_through_the_delivery_activity(
    runtime: Runtime,
) -> None:
    await runtime.event("c-wp", "page.viewed", properties={"category": "blog"}, traits=PERSON)

    async def whitepaper_sent() -> bool:
        return len(runtime.sent("c-wp")) >= 1

    await eventually(whitepaper_sent)
    (message,) = runtime.sent("c-wp")
    assert message["to"] == "li.lei@example.cn"
    assert message["message"]["content_id"] == "wp-digital-transformation"
    assert message["message"]["locale"] == "zh-CN"

    def delivery() -> Delivery:
        with Session(runtime.engine) as session:
            (row,) = session.exec(select(Delivery).where(Delivery.contact_id == "c-wp")).all()
            return row

    async def recorded_sent() -> bool:
        # The sink has the message a moment before the activity records it as sent.
        return delivery().status == "sent"

    await eventually(recorded_sent)
    row = delivery()
    assert row.idempotency_key.startswith("c-wp:b2b_nurture:")
    assert row.content_version == message["message"]["content_version"]
    await record_history(runtime, "c-wp", "whitepaper_sent")


async def test_a_contact_without_an_address_waits_for_one_and_nothing_is_sent(
    runtime: Runtime,
) -> None:
    await runtime.event("c-anon", "page.viewed", properties={"category": "blog"})

    async def waiting() -> bool:
        view = await contact_view(runtime.client, "c-anon")
        record: dict[str, Any] = view.state["journeys"].get("b2b_nurture", {})
        assert record.get("active", True), "the nurture ended for want of an address"
        return [(j.get("waiting") or {}).get("kind") for j in view.journeys] == ["channel"]

    await eventually(waiting)
    assert runtime.sent("c-anon") == []
    [journey] = (await contact_view(runtime.client, "c-anon")).journeys
    assert journey["step"] == "awareness-whitepaper"
    # An email arrives: the whitepaper goes out then, under the send's own key.
    await runtime.event("c-anon", "identify", traits={"email": "anon@example.com"})

    async def sent() -> bool:
        return len(runtime.sent("c-anon")) == 1

    await eventually(sent)
    [message] = runtime.sent("c-anon")
    assert message["to"] == "anon@example.com"
    assert message["message"]["content_id"] == "wp-digital-transformation"
    await record_history(runtime, "c-anon", "no_address_waits_for_a_channel")


@pytest.mark.settings(max_events_per_run=3)
async def test_continue_as_new_carries_state_and_every_event(runtime: Runtime) -> None:
    for n in range(8):
        await runtime.event("c-long", "page.viewed", properties={"category": "blog", "n": n})

    async def all_applied() -> bool:
        view = await contact_view(runtime.client, "c-long")
        return len(view.state["events"]) == 8

    await eventually(all_applied, within=30)
    story = await contact_timeline(runtime.client, "c-long")
    assert sum(1 for e in story if e.kind == "continued") >= 2
    assert [e.data["properties"]["n"] for e in story if e.kind == "event"] == list(range(8))
    await record_history(runtime, "c-long", "continued_as_new_last_run")


@pytest.mark.time_skipping
async def test_whitepaper_download_on_day_2_brings_the_case_study_on_day_5(
    runtime: Runtime,
) -> None:
    await runtime.event("c-story", "page.viewed", properties={"category": "blog"}, traits=PERSON)
    await runtime.env.sleep(timedelta(days=2))
    await runtime.event("c-story", "content.downloaded", properties=WHITEPAPER)
    await runtime.env.sleep(timedelta(days=4))

    story = await contact_timeline(runtime.client, "c-story")
    created = next(e.at for e in story if e.kind == "created")
    sends = {e.data["content_id"]: e.at - created for e in story if e.kind == "send"}
    assert sends["wp-digital-transformation"] < timedelta(hours=1)
    assert timedelta(days=5) <= sends["case-study-manufacturing"] < timedelta(days=5, hours=1)
    assert [m["message"]["content_id"] for m in runtime.sent("c-story")][:2] == [
        "wp-digital-transformation",
        "case-study-manufacturing",
    ]
    assert await _stage(runtime, "c-story") == "prospect"
    await record_history(runtime, "c-story", "b2b_nurture_story")


async def test_next_best_item_is_chosen_by_the_activity_until_the_contact_is_exhausted(
    runtime: Runtime, content_library: ContentLibrary
) -> None:
    follow_up = Journey(
        "webinar_follow_up",
        entry=on_event("webinar.attended"),
        reentry=ReEntry.always(),
        steps=[
            send(
                next_best(stage="lead", kinds=("case_study",)),  # lead: evaluation content
                id="best",
                on_failure=exit_to("exhausted"),
            ),
        ],
    )
    ctx = definitions_context(runtime.settings, content=content_library)
    publish(runtime.engine, compile_journey(follow_up, ctx), source="test")
    person = {**PERSON, "locale": "en"}
    await runtime.event("c-nb", "webinar.attended", traits=person)

    def follow_ups() -> list[dict[str, Any]]:  # the bundled nurture also writes here
        return [
            m
            for m in runtime.sent("c-nb")
            if m["idempotency_key"].startswith("c-nb:webinar_follow_up:")
        ]

    async def first_sent() -> bool:
        return len(follow_ups()) == 1

    await eventually(first_sent)
    chosen = follow_ups()[0]["message"]["content_id"]
    assert content_library.item(chosen).kind == "case_study"
    assert content_library.item(chosen).stage == "evaluation"  # a lead's stage

    # The only evaluation case study is received: re-entry takes the exhausted branch.
    await runtime.event("c-nb", "webinar.attended")

    async def exhausted() -> bool:
        rows = [r for r in _deliveries(runtime, "c-nb") if r.journey == "webinar_follow_up"]
        return [r.error for r in rows][-1:] == ["content_exhausted"]

    await eventually(exhausted)
    story = await contact_timeline(runtime.client, "c-nb")
    outcomes = [
        e.data["outcome"]
        for e in story
        if e.kind in ("sent", "not_sent") and e.data.get("journey") == "webinar_follow_up"
    ]
    assert outcomes[0]["content_id"] == chosen  # the choice is in history: replay reuses it
    assert outcomes[1]["reason"] == "content_exhausted"
    assert len(follow_ups()) == 1
