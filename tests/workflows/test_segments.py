"""Segments on the time-skipping server, with the production worker and activities.

- A contact enters a segment on the qualifying event and leaves it on the disqualifying
  one; a journey entered on the segment runs once per entry.
- "Inactive for 30 days" flips at its time, by one timer, and starts a win-back journey.
- A manual list change (the event an upload sends) enrols the contact.
- ``wait_for(segment_entered(...))``, ``exit_when=segment_exited(...)`` and
  ``branch(in_segment(...))`` act on membership.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.conditions import (
    in_segment,
    last_performed,
    performed,
    trait,
)
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.domain.journeys import (
    Journey,
    ReEntry,
    branch,
    compile_journey,
    send,
    wait_for,
)
from stagecoach.engine.domain.segments import (
    LIST_ADDED,
    SEGMENT_EVENTS,
    Segment,
    segment_entered,
    segment_exited,
)
from stagecoach.engine.protocol import SEGMENT_TIMERS, STATE_QUERY
from stagecoach.engine.protocol.messages import ContactView, contact_workflow_id
from stagecoach.engine.services.publishing import definitions_context, publish
from stagecoach.engine.services.segments.catalog import publish_segments
from stagecoach.engine.services.storage.models import Identity, SegmentChange, SegmentMember
from stagecoach.engine.temporal.timeline import contact_timeline
from tests.workflows.conftest import Runtime, eventually, open_runtime, record_history

pytestmark = pytest.mark.time_skipping

DAY = timedelta(days=1)

TRIAL_PRICING = Segment(
    "trial-pricing",
    description="On a trial and looked at pricing this week",
    when=trait("plan", "eq", "trial") & performed("pricing.viewed", within=7 * DAY),
)
INACTIVE = Segment(
    "inactive-30",
    description="Visited once, not in the last 30 days",
    when=last_performed("site.visited", before=30 * DAY),
)
VIP = Segment("vip-list", description="Uploaded by the events team", manual=True)


def publish_journeys(runtime: Runtime, content: ContentLibrary, *journeys: Journey) -> None:
    ctx = definitions_context(runtime.settings, content=content)
    ctx = replace(ctx, known_event_types=ctx.known_event_types | SEGMENT_EVENTS)
    for journey in journeys:
        publish(runtime.engine, compile_journey(journey, ctx), source="test")


def sent(runtime: Runtime, contact_id: str, journey: str) -> list[str]:
    return [
        m["message"]["content_id"]
        for m in runtime.sent(contact_id)
        if m["idempotency_key"].split(":")[1] == journey
    ]


def changes(runtime: Runtime, contact_id: str) -> list[tuple[str, bool, str, str]]:
    with Session(runtime.engine) as session:
        rows = session.exec(
            select(SegmentChange)
            .where(SegmentChange.contact_id == contact_id)
            .order_by(col(SegmentChange.id))
        ).all()
        return [(r.segment, r.entered, r.reason, r.source) for r in rows]


def members(runtime: Runtime, segment: str) -> set[str]:
    with Session(runtime.engine) as session:
        return set(
            session.exec(
                select(SegmentMember.contact_id).where(SegmentMember.segment == segment)
            ).all()
        )


async def history_kinds(runtime: Runtime, contact_id: str) -> list[Any]:
    handle = runtime.client.get_workflow_handle(contact_workflow_id(contact_id))
    return [e async for e in handle.fetch_history_events()]


async def test_a_contact_enters_and_leaves_on_events_and_the_journey_runs_once_per_entry(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    async with open_runtime(env, task_queue, tmp_path, content_library) as runtime:
        publish_segments(runtime.engine, [TRIAL_PRICING.spec()], source="test")
        publish_journeys(
            runtime,
            content_library,
            Journey(
                "seg_pricing_help",
                entry=segment_entered("trial-pricing"),
                reentry=ReEntry.always(),
                steps=[send("comparison-vs-legacy", channel="email", id="compare")],
            ),
        )
        who = "seg-enter-leave"
        await runtime.event(
            who, "identify", traits={"email": "li@example.cn", "locale": "en", "plan": "trial"}
        )
        assert members(runtime, "trial-pricing") == set()

        await runtime.event(who, "pricing.viewed")

        async def entered() -> bool:
            return sent(runtime, who, "seg_pricing_help") == ["comparison-vs-legacy"]

        await eventually(entered, within=30)
        assert members(runtime, "trial-pricing") == {who}
        assert changes(runtime, who) == [
            ("trial-pricing", True, "pricing.viewed event", "workflow")
        ]

        # Still in the segment: more pricing views enrol nobody again.
        await runtime.event(who, "pricing.viewed")
        # Leaves on the disqualifying trait change...
        await runtime.event(who, "identify", traits={"plan": "paid"})

        async def left() -> bool:
            return len(changes(runtime, who)) == 2

        await eventually(left, within=30)
        assert members(runtime, "trial-pricing") == set()
        assert changes(runtime, who)[1] == ("trial-pricing", False, "identify event", "workflow")
        # ...and enters again on the qualifying one: a second enrolment, a second send.
        await runtime.event(who, "identify", traits={"plan": "trial"})

        async def again() -> bool:
            return len(sent(runtime, who, "seg_pricing_help")) == 2

        await eventually(again, within=30)
        assert [c[1] for c in changes(runtime, who)] == [True, False, True]
        await record_history(runtime, who, "segment_entered_left_entered")
        # Ops read the flips in the contact's story, where they happened.
        story = await contact_timeline(runtime.client, who)
        assert [e.summary for e in story if e.kind == "segment"] == [
            "segments +trial-pricing",
            "segments -trial-pricing",
            "segments +trial-pricing",
        ]

        # Events that decide nothing for a segment cost nothing: no record (a local
        # activity, recorded as a marker), no timer, no upsert; a flip costs one record.
        flips = [e for e in await history_kinds(runtime, who) if is_record(e)]
        assert len(flips) == 3
        before = await history_kinds(runtime, who)
        await runtime.event(who, "site.searched", properties={"query": "gateway"})
        await env.sleep(timedelta(seconds=5))
        new = (await history_kinds(runtime, who))[len(before) :]
        assert new, "the event was applied"
        assert [e for e in new if is_record(e) or e.event_type in COSTLY] == []


COSTLY = {
    EventType.EVENT_TYPE_TIMER_STARTED,
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
}


def is_record(event: Any) -> bool:
    """A segment record: the local activity's marker (or a scheduled activity)."""
    if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
        return b"contact.record_segments" in bytes(event.SerializeToString())
    return bool(
        event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and event.activity_task_scheduled_event_attributes.activity_type.name
        == "contact.record_segments"
    )


async def test_inactive_for_30_days_flips_at_its_time_and_starts_a_win_back(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    async with open_runtime(env, task_queue, tmp_path, content_library) as runtime:
        publish_segments(runtime.engine, [INACTIVE.spec()], source="test")
        publish_journeys(
            runtime,
            content_library,
            Journey(
                "seg_win_back",
                entry=segment_entered("inactive-30"),
                steps=[send("newsletter-monthly", channel="email", id="win-back")],
            ),
        )
        who = "seg-inactive"
        visited = await runtime.event(
            who,
            "site.visited",
            traits={"email": "zhou@example.cn", "locale": "en"},
        )
        due = visited.occurred_at + 30 * DAY
        await env.sleep(29 * DAY)
        assert changes(runtime, who) == []
        await env.sleep(2 * DAY)

        async def won_back() -> bool:
            return sent(runtime, who, "seg_win_back") == ["newsletter-monthly"]

        await eventually(won_back, within=30)
        with Session(runtime.engine) as session:
            row = session.exec(select(SegmentChange).where(SegmentChange.contact_id == who)).one()
        assert row.segment == "inactive-30"
        assert row.entered
        assert row.reason.startswith("time")
        # Within a minute of the moment the condition came true.
        at = row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)
        assert timedelta(0) <= at - due <= timedelta(seconds=60)
        # One timer did it: no periodic wake-ups in between.
        events = await history_kinds(runtime, who)
        timers = [
            e
            for e in events
            if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
            and e.user_metadata.summary.data.decode().strip('"').startswith(SEGMENT_TIMERS)
        ]
        assert len(timers) == 1
        await record_history(runtime, who, "segment_inactive_flipped_by_timer")


async def test_a_manual_list_change_enrols_its_contact(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    async with open_runtime(env, task_queue, tmp_path, content_library) as runtime:
        publish_segments(runtime.engine, [VIP.spec()], source="test")
        publish_journeys(
            runtime,
            content_library,
            Journey(
                "seg_vip_invite",
                entry=segment_entered("vip-list"),
                steps=[send("customer-story-invite", channel="email", id="invite")],
            ),
        )
        who = "seg-vip"
        await runtime.event(
            who,
            LIST_ADDED,
            properties={"segment": "vip-list", "actor": "events-team"},
            traits={"email": "wu@example.cn", "locale": "en"},
        )

        async def invited() -> bool:
            return sent(runtime, who, "seg_vip_invite") == ["customer-story-invite"]

        await eventually(invited, within=30)
        assert changes(runtime, who) == [
            ("vip-list", True, "added to the list by events-team", "list")
        ]
        with Session(runtime.engine) as session:
            actor = session.exec(select(SegmentChange.actor)).one()
        assert actor == "events-team"


async def test_waits_exits_and_branches_act_on_membership(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    async with open_runtime(env, task_queue, tmp_path, content_library) as runtime:
        publish_segments(runtime.engine, [TRIAL_PRICING.spec(), VIP.spec()], source="test")
        publish_journeys(
            runtime,
            content_library,
            Journey(
                "seg_nurture",
                entry=segment_entered("vip-list"),
                exit_when=segment_exited("vip-list"),
                steps=[
                    branch(
                        in_segment("trial-pricing"),
                        then=[send("consultation-offer", channel="email", id="hot")],
                        else_=[send("case-study-manufacturing", channel="email", id="cold")],
                    ),
                    wait_for(segment_entered("trial-pricing"), timeout=10 * DAY, id="wait"),
                    send("trial-invitation", channel="email", id="after"),
                ],
            ),
        )
        who = "seg-waits"
        await runtime.event(
            who,
            LIST_ADDED,
            properties={"segment": "vip-list"},
            traits={"email": "he@example.cn", "locale": "en", "plan": "trial"},
        )

        async def cold() -> bool:
            return sent(runtime, who, "seg_nurture") == ["case-study-manufacturing"]

        await eventually(cold, within=30)
        # Entering the awaited segment ends the wait.
        await runtime.event(who, "pricing.viewed")

        async def after() -> bool:
            return sent(runtime, who, "seg_nurture")[-1:] == ["trial-invitation"]

        await eventually(after, within=30)

        # A second contact leaves the list while waiting: exit_when ends the journey.
        other = "seg-waits-exit"
        await runtime.event(
            other,
            LIST_ADDED,
            properties={"segment": "vip-list"},
            traits={"email": "ma@example.cn", "locale": "en"},
        )
        await eventually(
            lambda: _async(sent(runtime, other, "seg_nurture") == ["case-study-manufacturing"]),
            within=30,
        )
        await runtime.event(other, "segment.list_removed", properties={"segment": "vip-list"})
        # The exit is applied (and recorded) before time moves on past the wait's timeout.
        await eventually(lambda: _async(len(changes(runtime, other)) == 2), within=30)
        await env.sleep(11 * DAY)
        assert sent(runtime, other, "seg_nurture") == ["case-study-manufacturing"]
        state = await runtime.client.get_workflow_handle(contact_workflow_id(other)).query(
            STATE_QUERY, result_type=ContactView
        )
        assert "seg_nurture" not in [j["journey"] for j in state.journeys]


async def _async(value: bool) -> bool:
    return value


async def test_a_list_uploaded_through_the_api_enrols_its_contacts(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    """From nothing, through the public surface: an admin uploads a CSV to a manual
    segment; the API stores one list event per row (a malformed row reported, the rest
    kept), its forwarder signals the contacts, their workflows adopt the change, record
    it with who did it, and the journey entered on the segment sends to each."""
    token = "segments-e2e-admin-token-0123456789"
    async with open_runtime(
        env, task_queue, tmp_path, content_library, admin_token=token
    ) as runtime:
        publish_segments(runtime.engine, [VIP.spec()], source="test")
        publish_journeys(
            runtime,
            content_library,
            Journey(
                "seg_vip_upload",
                entry=segment_entered("vip-list"),
                steps=[send("customer-story-invite", channel="email", id="invite")],
            ),
        )

        async def temporal() -> Client:
            return runtime.client

        csv = "email\nzhao@example.cn\nnot-an-address\nqian@example.cn\n"
        with TestClient(runtime.app(temporal)) as api:
            answer = api.post(
                "/v1/segments/vip-list/members",
                params={"actor": "events-team"},
                content=csv.encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "text/csv"},
            )
            assert answer.status_code == 207, answer.text
            result = answer.json()
            assert [(r["line"], r["field"]) for r in result["rejected"]] == [(3, "email")]
            with Session(runtime.engine) as session:
                contacts = sorted(
                    session.exec(
                        select(Identity.contact_id).where(
                            col(Identity.value).in_(["zhao@example.cn", "qian@example.cn"])
                        )
                    ).all()
                )
            runtime.touched.update(contacts)
            assert len(contacts) == 2

            async def invited() -> bool:
                return all(
                    sent(runtime, c, "seg_vip_upload") == ["customer-story-invite"]
                    for c in contacts
                )

            await eventually(invited, within=30)
        assert members(runtime, "vip-list") == set(contacts)
        for contact_id in contacts:
            assert changes(runtime, contact_id) == [
                ("vip-list", True, "added to the list by events-team", "list")
            ]
