"""Early events on the time-skipping server, with the production worker, the real
delivery activity and quiet hours (issue 19's rehearsal): the trial invitation is held
for the night while the contact starts a trial and pays.

With ``wait_for(..., since="enrolment")`` the journey takes the paid path as soon as the
invitation goes out; without it the events are ignored, the consultation offer goes to a
paying customer a week later, and ``contact why`` and the timeline say what was ignored.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.domain.journeys import (
    Journey,
    compile_journey,
    exit_to,
    goal,
    on_event,
    send,
    wait_for,
)
from stagecoach.engine.protocol import CONTACT_WORKFLOW, EVENTS_SIGNAL, contact_workflow_id
from stagecoach.engine.protocol.messages import ContactInput, EventBatch, EventMessage
from stagecoach.engine.services.publishing import definitions_context, publish
from stagecoach.engine.temporal.timeline import contact_timeline
from stagecoach.engine.temporal.why import SENT, contact_why
from tests.workflows.conftest import Runtime, eventually, open_runtime, record_history

pytestmark = pytest.mark.time_skipping

DAY = timedelta(days=1)


def purchase(name: str, since: str | None) -> Journey:
    """The sources' purchase phase, entered on a webinar: the trial invitation; without
    a trial within a week, the consultation offer; then wait for the order."""
    return Journey(
        name,
        entry=on_event("webinar.attended", where={"webinar": name}),
        steps=[
            send("trial-invitation", channel="email", id="trial-invite"),
            wait_for(
                "trial.started",
                timeout=7 * DAY,
                id="await-trial",
                next="await-order",
                since=since,
            ),
            send("consultation-offer", channel="email", id="consultation"),
            wait_for(
                "order.paid",
                timeout=30 * DAY,
                id="await-order",
                on_timeout=exit_to("purchase_stalled"),
                since=since,
            ),
            goal(id="converted"),
        ],
    )


QUIET_NIGHTS: dict[str, Any] = {"quiet_hours_start": "21:00", "quiet_hours_end": "08:00"}
"""The runtime's quiet hours: a send due at night waits for 08:00 in the contact's zone."""


def publish_purchase(
    runtime: Runtime, content: ContentLibrary, name: str, since: str | None
) -> None:
    ctx = definitions_context(runtime.settings, content=content)
    publish(runtime.engine, compile_journey(purchase(name, since), ctx), source="test")


def night_zone(now: datetime) -> str:
    """An ``Etc/GMT`` zone where it is about 02:00 at ``now`` (signs are POSIX-inverted)."""
    offset = (2 - now.astimezone(UTC).hour) % 24
    offset = offset - 24 if offset > 14 else offset
    return f"Etc/GMT{-offset:+d}"


def contents(runtime: Runtime, contact_id: str) -> list[str]:
    """What the purchase journeys sent the contact (the bundled journeys send too)."""
    return [
        m["message"]["content_id"]
        for m in runtime.sent(contact_id)
        if m["idempotency_key"].split(":")[1].startswith("early_")
    ]


async def test_events_sent_during_quiet_hours_count_with_since_enrolment(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    async with open_runtime(env, task_queue, tmp_path, content_library, **QUIET_NIGHTS) as runtime:
        publish_purchase(runtime, content_library, "early_counted", "enrolment")
        publish_purchase(runtime, content_library, "early_ignored", None)
        zone = night_zone(await runtime.now())
        people = {
            "early-counted": {"email": "qian@example.cn", "locale": "en", "timezone": zone},
            "early-ignored": {"email": "sun@example.cn", "locale": "en", "timezone": zone},
        }
        for (contact_id, traits), webinar in zip(
            people.items(), ("early_counted", "early_ignored"), strict=True
        ):
            await runtime.event(
                contact_id, "webinar.attended", properties={"webinar": webinar}, traits=traits
            )
        # It is 02:00 for them: both invitations are held until 08:00. Meanwhile both
        # start a trial and pay.
        for contact_id in people:
            await runtime.event(contact_id, "trial.started")
            await runtime.event(contact_id, "order.paid", properties={"amount": 9800})
        assert contents(runtime, "early-counted") == []

        await env.sleep(timedelta(hours=7))
        await env.sleep(8 * DAY)

        async def both_invited() -> bool:
            return all("trial-invitation" in contents(runtime, c) for c in people)

        await eventually(both_invited)
        counted = await contact_why(runtime.client, "early-counted", "early_counted", "await-order")
        consultation = await contact_why(
            runtime.client, "early-ignored", "early_ignored", "consultation"
        )
        skipped = await contact_why(
            runtime.client, "early-counted", "early_counted", "consultation"
        )
        story = await contact_timeline(runtime.client, "early-ignored")
        counted_story = await contact_timeline(runtime.client, "early-counted")
        await record_history(runtime, "early-counted", "early_events_counted_since_enrolment")

    # With since: the paid path, no consultation offer for a paying customer.
    assert "consultation-offer" not in contents(runtime, "early-counted")
    assert counted.answer.startswith("reached: wait_for_event step await-order at ")
    assert "(matched order.paid sent at " in counted.answer
    assert skipped.answer.startswith("not sent: the wait await-trial matched trial.started")
    assert not [e for e in counted_story if e.kind == "ignored" and "early_counted" in e.summary]

    # Without: the week-long wait, then the consultation offer to a paying customer.
    assert "consultation-offer" in contents(runtime, "early-ignored")
    assert consultation.status == SENT
    ignored = [link for link in consultation.links if link.kind == "ignored"]
    assert [link.detail.split(" arrived at ")[0] for link in ignored] == [
        "trial.started",
        "order.paid",
    ]
    assert "while early_ignored/trial-invite was holding for quiet hours" in ignored[0].detail
    assert "await-trial waits for it later and will not count it" in ignored[0].detail
    assert "await-order waits for it later" in ignored[1].detail
    # The links stay in time order: the ignored events come before the send they led to.
    times = [link.at for link in consultation.links if link.at is not None]
    assert times == sorted(times)

    # b2b_nurture (entered on suspect) was holding its whitepaper too: it ignored the
    # trial, but its goal (a paid order) ended it on the order, which is no loss.
    b2b = [
        e.summary.split(" arrived")[0]
        for e in story
        if e.kind == "ignored" and "b2b_nurture/" in e.summary
    ]
    assert b2b == ["trial.started"]
    lines = [e for e in story if e.kind == "ignored" and "early_ignored/" in e.summary]
    assert [e.summary.split(" arrived")[0] for e in lines] == ["trial.started", "order.paid"]
    assert lines[0].line().split()[1:3] == ["ignored", "trial.started"]
    # Each sits where its event arrived, right after the event line itself.
    for line in lines:
        before = story[story.index(line) - 1]
        assert before.at <= line.at


async def test_events_behind_the_entry_event_in_a_new_contacts_first_batch_count(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    """A new contact's opening events can arrive in one batch (the outbox forwarder's
    backlog, or events sent while the workflow opened the contact). The journey the
    first of them enrols hears the ones behind it, and ``since="enrolment"`` counts
    them, exactly as when each event arrives on its own."""
    async with open_runtime(env, task_queue, tmp_path, content_library, **QUIET_NIGHTS) as runtime:
        publish_purchase(runtime, content_library, "early_batched", "enrolment")
        now = await runtime.now()
        traits = {"email": "zhou@example.cn", "locale": "en", "timezone": night_zone(now)}

        def message(n: int, type: str, properties: dict[str, object]) -> EventMessage:
            return EventMessage(
                message_id=f"batched-{n}",
                type=type,
                occurred_at=now + timedelta(seconds=n),
                properties=properties,
                traits=traits if n == 0 else {},
                source="test",
            )

        batch = EventBatch(
            events=[
                message(0, "webinar.attended", {"webinar": "early_batched"}),
                message(1, "trial.started", {}),
                message(2, "order.paid", {"amount": 9800}),
            ]
        )
        await runtime.client.start_workflow(
            CONTACT_WORKFLOW,
            ContactInput.current(
                "early-batched", max_events_per_run=runtime.settings.max_events_per_run
            ),
            id=contact_workflow_id("early-batched"),
            task_queue=runtime.settings.temporal_task_queue,
            start_signal=EVENTS_SIGNAL,
            start_signal_args=[batch],
        )
        runtime.touched.add("early-batched")
        await asyncio.sleep(0.5)  # let the signal's task finish before time skips
        await env.sleep(timedelta(hours=7))
        await env.sleep(8 * DAY)

        async def invited() -> bool:
            return "trial-invitation" in contents(runtime, "early-batched")

        await eventually(invited)
        why = await contact_why(runtime.client, "early-batched", "early_batched", "await-order")
        await record_history(runtime, "early-batched", "opening_batch_in_order")

    assert contents(runtime, "early-batched") == ["trial-invitation"]
    assert why.answer.startswith("reached: wait_for_event step await-order at ")
    assert "(matched order.paid sent at " in why.answer
