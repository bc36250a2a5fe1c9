"""``wait_for(..., since=...)``: a wait that counts an event the contact already sent.

The issue's scenario in the pure interpreter: the trial invitation is held (its delivery
has not answered yet) while ``trial.started`` and ``order.paid`` arrive; the waits after
it see them only when they declare ``since``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stagecoach.engine.domain.conditions import EventRecord, Facts, stage_in
from stagecoach.engine.domain.journeys import (
    END,
    Command,
    Cursor,
    Deliver,
    DeliveryResult,
    EventReceived,
    Journey,
    JourneySpec,
    JourneyValidationError,
    Start,
    StartTimer,
    Step,
    TimerFired,
    ValidationContext,
    WaitForEvent,
    branch,
    compile_journey,
    describe_step,
    exit_to,
    goal,
    send,
    since_enrolment,
    stage_entered,
    step_traced,
    wait,
    wait_for,
)

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


def build(ctx: ValidationContext, *steps: Step, name: str = "j") -> JourneySpec:
    return compile_journey(Journey(name, entry=stage_entered("suspect"), steps=list(steps)), ctx)


def purchase(since: str | None) -> list[Step]:
    """The sources' purchase phase: trial invitation, then wait for a trial, then the
    consultation offer for those without one, then wait for an order."""
    return [
        send("wp", id="trial-invite"),
        wait_for(
            "trial.started",
            timeout=7 * DAY,
            id="await-trial",
            next="await-order",
            since=since,
        ),
        send("nudge", id="consultation"),
        wait_for(
            "order.paid",
            timeout=30 * DAY,
            id="await-order",
            on_timeout=exit_to("stalled"),
            since=since,
        ),
        goal(id="converted"),
    ]


class Contact:
    """One enrolment driven through the interpreter, with the events it has sent."""

    def __init__(self, spec: JourneySpec) -> None:
        self.spec = spec
        self.events: list[EventRecord] = []
        self.cursor: Cursor | None = None
        self.trail: list[tuple[str, str]] = []

    def feed(self, input_: Any) -> tuple[Command, ...]:
        self.cursor, commands, passages = step_traced(self.spec, self.cursor, input_)
        self.trail += [(p.step_id, p.outcome) for p in passages]
        return commands

    def facts(self, at: datetime) -> Facts:
        return Facts(now=at, events=tuple(self.events))

    def start(self, at: datetime = T0) -> tuple[Command, ...]:
        return self.feed(Start(now=at, facts=self.facts(at), contact_id="c-1"))

    def event(self, type_: str, at: datetime) -> tuple[Command, ...]:
        record = EventRecord(type_, at)
        self.events.append(record)
        return self.feed(EventReceived(now=at, facts=self.facts(at), event=record))

    def delivered(self, step_id: str, at: datetime) -> tuple[Command, ...]:
        return self.feed(DeliveryResult(now=at, facts=self.facts(at), step_id=step_id, ok=True))


def sends(commands: tuple[Command, ...]) -> list[str]:
    return [c.step_id for c in commands if isinstance(c, Deliver)]


def test_events_sent_while_a_send_is_held_count_with_since_enrolment(ctx):
    contact = Contact(build(ctx, *purchase("enrolment")))
    assert sends(contact.start()) == ["trial-invite"]
    # Quiet hours: the delivery answers only the next morning; meanwhile the contact
    # starts a trial and pays.
    assert contact.event("trial.started", T0 + HOUR) == ()
    assert contact.event("order.paid", T0 + 2 * HOUR) == ()
    commands = contact.delivered("trial-invite", T0 + 10 * HOUR)

    assert contact.cursor is not None
    assert contact.cursor.status == "completed"
    assert contact.cursor.reason == "goal"
    assert sends(commands) == []  # no consultation offer for a paying customer
    assert not any(isinstance(c, StartTimer | WaitForEvent) for c in commands)
    assert (
        "await-trial",
        "matched trial.started sent at 2026-01-05T10:00:00+00:00, before the wait",
    ) in contact.trail
    assert (
        "await-order",
        "matched order.paid sent at 2026-01-05T11:00:00+00:00, before the wait",
    ) in contact.trail


def test_without_since_the_early_events_are_not_counted(ctx):
    contact = Contact(build(ctx, *purchase(None)))
    contact.start()
    contact.event("trial.started", T0 + HOUR)
    contact.event("order.paid", T0 + 2 * HOUR)
    commands = contact.delivered("trial-invite", T0 + 10 * HOUR)

    assert contact.cursor is not None
    assert contact.cursor.active
    assert contact.cursor.step_id == "await-trial"
    assert [c for c in commands if isinstance(c, StartTimer)] == [
        StartTimer("await-trial:2", T0 + 10 * HOUR + 7 * DAY)
    ]
    # The wait runs its whole week and the consultation offer goes out.
    timer = contact.cursor.waiting
    assert timer is not None
    assert timer.timer_id is not None


def test_events_from_before_enrolment_do_not_count(ctx):
    contact = Contact(build(ctx, *purchase("enrolment")))
    contact.events.append(EventRecord("trial.started", T0 - DAY))
    contact.start()
    contact.delivered("trial-invite", T0 + HOUR)
    assert contact.cursor is not None
    assert contact.cursor.step_id == "await-trial"
    assert contact.cursor.waiting is not None
    assert contact.cursor.waiting.kind == "event"


def test_an_event_received_after_enrolment_counts_whatever_its_clock_says(ctx):
    # The client's clock ran behind, or the event was queued: it says it happened a
    # minute before the enrolment, but the journey heard it after.
    contact = Contact(build(ctx, *purchase("enrolment")))
    contact.events.append(EventRecord("webinar.attended", T0 - HOUR))
    contact.start()
    contact.event("trial.started", T0 - timedelta(minutes=1))
    contact.event("order.paid", T0 - timedelta(minutes=1))
    contact.delivered("trial-invite", T0 + HOUR)
    assert contact.cursor is not None
    assert contact.cursor.reason == "goal"


def test_since_a_step_counts_from_when_the_contact_reached_it(ctx):
    spec = build(
        ctx,
        send("wp", id="first"),
        wait(DAY, id="pause"),
        send("video", id="second"),
        wait_for("order.paid", timeout=7 * DAY, id="await-order", since="second"),
        goal(id="converted"),
    )
    contact = Contact(spec)
    contact.start()
    contact.delivered("first", T0)
    contact.event("order.paid", T0 + HOUR)  # before "second": not counted
    assert contact.cursor is not None
    assert contact.cursor.waiting is not None
    timer = contact.cursor.waiting.timer_id
    assert timer is not None
    contact.feed(TimerFired(now=T0 + DAY, facts=contact.facts(T0 + DAY), timer_id=timer))
    contact.event("order.paid", T0 + DAY + HOUR)  # while "second" is held: counted
    contact.delivered("second", T0 + DAY + 10 * HOUR)
    assert contact.cursor.status == "completed"
    assert contact.trail[-2][1].startswith("matched order.paid sent at 2026-01-06T10:00:00")


def test_an_early_event_ends_a_looping_since_wait_once(ctx):
    spec = build(
        ctx,
        send("wp", id="ask"),
        wait_for(
            "page.viewed", timeout=2 * DAY, id="await-view", since="enrolment", on_timeout=END
        ),
        wait(DAY, id="pause", next="ask"),
    )
    contact = Contact(spec)
    contact.start()
    contact.event("page.viewed", T0 + HOUR)
    contact.delivered("ask", T0 + 2 * HOUR)  # counts the view, goes on to the pause
    assert contact.cursor is not None
    assert contact.cursor.step_id == "pause"
    assert contact.cursor.waiting is not None
    assert contact.cursor.waiting.timer_id
    at = T0 + 2 * HOUR + DAY
    contact.feed(
        TimerFired(now=at, facts=contact.facts(at), timer_id=contact.cursor.waiting.timer_id)
    )
    contact.delivered("ask", at)
    # The same view does not end the wait a second time: it waits for a new one.
    assert contact.cursor.step_id == "await-view"
    assert contact.cursor.waiting is not None
    assert contact.cursor.waiting.kind == "event"


def test_since_is_left_out_of_the_spec_when_unused(ctx):
    plain = build(ctx, *purchase(None))
    counted = build(ctx, *purchase("enrolment"))
    await_trial = next(s for s in plain.to_dict()["steps"] if s["id"] == "await-trial")
    assert "since" not in await_trial
    assert (
        next(s for s in counted.to_dict()["steps"] if s["id"] == "await-trial")["since"]
        == "enrolment"
    )
    assert plain.version != counted.version
    assert JourneySpec.from_dict(counted.to_dict()) == counted


def test_cursors_of_journeys_without_since_keep_their_form(ctx):
    contact = Contact(build(ctx, *purchase(None)))
    contact.start()
    assert contact.cursor is not None
    assert "marks" not in contact.cursor.to_dict()
    counted = Contact(build(ctx, *purchase("enrolment")))
    counted.start()
    assert counted.cursor is not None
    assert counted.cursor.to_dict()["marks"] == [
        {"key": "$enrolment", "at": T0.isoformat(), "last": None}
    ]
    assert Cursor.from_dict(counted.cursor.to_dict()) == counted.cursor


def test_since_enrolment_works_with_an_anchored_timeout(ctx):
    spec = build(
        ctx,
        send("wp", id="invite"),
        wait_for(
            "order.paid",
            timeout=since_enrolment(timedelta(days=30)),
            id="await-order",
            since="enrolment",
        ),
        goal(id="converted"),
    )
    step_ = next(s for s in spec.steps if s.id == "await-order")
    assert getattr(step_, "since", None) == "enrolment"


def problems(ctx: ValidationContext, *steps: Step) -> list[str]:
    with pytest.raises(JourneyValidationError) as caught:
        build(ctx, *steps, name="acme")
    return [f"{p.step}: {p.message} -> {p.fix}" for p in caught.value.problems]


def test_since_naming_an_unknown_step_is_a_compile_error(ctx):
    found = problems(
        ctx,
        send("wp", id="invite"),
        wait_for("order.paid", timeout=DAY, id="await-order", since="invitе"),
    )
    assert len(found) == 1
    assert found[0].startswith("step 'await-order': since='invitе' names no step of this journey")
    assert "since='enrolment'" in found[0]
    assert "'invite'" in found[0]


def test_since_naming_a_later_step_is_a_compile_error(ctx):
    found = problems(
        ctx,
        wait_for("order.paid", timeout=DAY, id="await-order", since="invite"),
        send("wp", id="invite"),
    )
    assert found == [
        "step 'await-order': since='invite' names a step that does not come before this"
        " wait -> use since='enrolment' or the id of a step every path to this wait passes"
        " first"
    ]


def test_since_naming_a_step_on_one_branch_only_is_a_compile_error(ctx):
    found = problems(
        ctx,
        branch(stage_in("lead"), then=[send("wp", id="invite")], else_=[send("video", id="tour")]),
        wait_for("order.paid", timeout=DAY, id="await-order", since="invite"),
    )
    assert len(found) == 1
    assert "since='invite' names a step some paths to this wait do not pass" in found[0]


def test_since_naming_the_wait_itself_is_a_compile_error(ctx):
    found = problems(
        ctx, wait_for("order.paid", timeout=DAY, id="await-order", since="await-order")
    )
    assert len(found) == 1
    assert "since names this wait itself" in found[0]
    assert "leave since out" in found[0]


def test_the_error_names_the_journey(ctx):
    with pytest.raises(JourneyValidationError) as caught:
        build(ctx, wait_for("order.paid", timeout=DAY, id="w", since="nowhere"), name="acme")
    assert caught.value.problems[0].journey == "acme"
    assert "acme" in str(caught.value)


@pytest.mark.parametrize("bad", [3, "", "  "])
def test_since_that_is_not_text_is_refused_where_it_is_written(bad):
    with pytest.raises(TypeError, match="since='enrolment'"):
        wait_for("order.paid", timeout=DAY, since=bad)


def test_a_since_wait_reached_at_once_still_validates_as_a_wait(ctx):
    # A loop whose only wait is a since-wait is still a loop with a wait in it.
    spec = build(
        ctx,
        send("wp", id="ask", next="await-view"),
        wait_for("page.viewed", timeout=DAY, id="await-view", since="ask", on_timeout=END),
        wait(DAY, id="pause", next="ask"),
    )
    assert spec.step("await-view").kind == "wait_for_event"


def test_the_diagram_and_diffs_say_since_when_a_wait_counts(ctx):
    spec = build(ctx, *purchase("enrolment"))
    wait_step = spec.step("await-order")
    assert describe_step(wait_step) == (
        "wait up to 30d for order.paid, counting those since enrolment"
    )
    assert wait_step.summary() == "wait for order.paid (since enrolment)"
    plain = build(ctx, *purchase(None)).step("await-order")
    assert describe_step(plain) == "wait up to 30d for order.paid"
