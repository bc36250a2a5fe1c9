from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from stagecoach.engine.domain.conditions import (
    EventRecord,
    Facts,
    event,
    has_tag,
    score_at_least,
)
from stagecoach.engine.domain.journeys import (
    END,
    STEP_BUDGET,
    AddTag,
    AddTagStep,
    Cancel,
    CancelTimer,
    ChangeStage,
    Command,
    Completed,
    Cursor,
    Deliver,
    DeliveryResult,
    Enrol,
    EventReceived,
    Exit,
    HandOff,
    HandoffResult,
    Journey,
    JourneyRuntimeError,
    JourneySpec,
    ReEntry,
    SetAttribute,
    Start,
    StartTimer,
    Step,
    StepBudgetExceeded,
    TimerFired,
    ValidationContext,
    WaitForEvent,
    add_tag,
    branch,
    can_enrol,
    change_stage,
    compile_journey,
    enrol,
    exit_journey,
    goal,
    hand_off,
    idempotency_key,
    next_best,
    send,
    set_attribute,
    split,
    stage_entered,
    step,
    wait,
    wait_for,
    wait_until,
)

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def facts(at: datetime = T0, **kw: Any) -> Facts:
    return Facts(now=at, **kw)


Result = tuple[Cursor, tuple[Command, ...]]


def deliveries(commands: tuple[Command, ...]) -> list[Deliver]:
    return [c for c in commands if isinstance(c, Deliver)]


def sent(commands: tuple[Command, ...]) -> list[str]:
    """Step ids of the Deliver and HandOff commands, in order."""
    return [c.step_id for c in commands if isinstance(c, Deliver | HandOff)]


def start(spec: JourneySpec, at: datetime = T0, **kw: Any) -> Result:
    return step(spec, None, Start(now=at, facts=facts(at, **kw), contact_id="c-1"))


def delivered(
    spec: JourneySpec, cursor: Cursor, step_id: str, at: datetime = T0, **kw: Any
) -> Result:
    return step(
        spec, cursor, DeliveryResult(now=at, facts=facts(at, **kw), step_id=step_id, ok=True)
    )


def fire(spec: JourneySpec, cursor: Cursor, at: datetime, **kw: Any) -> Result:
    assert cursor.waiting is not None
    assert cursor.waiting.timer_id is not None
    return step(
        spec, cursor, TimerFired(now=at, facts=facts(at, **kw), timer_id=cursor.waiting.timer_id)
    )


def build(ctx: ValidationContext, *steps: Step, **kw: Any) -> JourneySpec:
    return compile_journey(
        Journey("j", entry=stage_entered("suspect"), steps=list(steps), **kw), ctx
    )


def test_send_emits_deliver_and_waits_for_its_result(ctx):
    spec = build(ctx, send("wp", channel="email"), send("video"))
    cursor, commands = start(spec)
    key = idempotency_key("j", spec.version, "send-wp", 1)
    assert commands == (Deliver("send-wp", "email", "wp", None, key),)
    assert key == f"j:{spec.version}:send-wp:1"
    assert cursor.waiting is not None
    assert cursor.waiting.kind == "delivery"
    cursor, commands = delivered(spec, cursor, "send-wp")
    assert [type(c) for c in commands] == [Deliver]
    assert deliveries(commands)[0].content_id == "video"


def test_next_best_send_carries_the_selector(ctx):
    spec = build(ctx, send(next_best(kinds=["case_study"]), id="nb"))
    _, commands = start(spec)
    (deliver,) = deliveries(commands)
    assert deliver.content_id is None
    assert deliver.selector == next_best(kinds=["case_study"])


def test_duplicate_or_stale_delivery_result_is_ignored(ctx):
    spec = build(ctx, send("wp"), wait(days=1))
    cursor, _ = start(spec)
    cursor, _ = delivered(spec, cursor, "send-wp")
    again, commands = delivered(spec, cursor, "send-wp")
    assert (again, commands) == (cursor, ())


def test_wait_starts_a_timer_and_moves_on_when_it_fires(ctx):
    spec = build(ctx, wait(days=2), send("wp"))
    cursor, commands = start(spec)
    assert commands == (StartTimer("wait-2d:1", T0 + 2 * DAY),)
    cursor, commands = fire(spec, cursor, T0 + 2 * DAY)
    assert [type(c) for c in commands] == [Deliver]


def test_stale_timer_is_ignored(ctx):
    spec = build(ctx, wait(days=2), send("wp"))
    cursor, _ = start(spec)
    same, commands = step(spec, cursor, TimerFired(now=T0, facts=facts(), timer_id="other:9"))
    assert (same, commands) == (cursor, ())


def test_wait_until_uses_the_contact_time_zone(ctx):
    spec = build(ctx, wait_until(time(9)), send("wp"))
    _, commands = start(spec, attributes={"timezone": "Asia/Shanghai"})
    # 09:00 UTC is 17:00 in Shanghai: the next 09:00 there is 01:00 UTC the next day.
    assert commands == (StartTimer("wait-until-0900:1", datetime(2026, 1, 6, 1, tzinfo=UTC)),)


def test_wait_for_event_takes_next_on_a_match(ctx):
    spec = build(
        ctx,
        wait_for("content.downloaded", where={"content_id": "wp"}, timeout=3 * DAY, on_timeout="t"),
        send("wp", id="matched", next=END),
        send("nudge", id="t"),
    )
    cursor, commands = start(spec)
    timer = StartTimer("wait-for-content.downloaded:1", T0 + 3 * DAY)
    assert commands[0] == timer
    assert isinstance(commands[1], WaitForEvent)
    assert commands[1].deadline == T0 + 3 * DAY
    assert commands[1].timer_id == timer.timer_id

    other = EventRecord("content.downloaded", T0 + DAY, {"content_id": "video"})
    same, commands = step(
        spec, cursor, EventReceived(now=T0 + DAY, facts=facts(T0 + DAY), event=other)
    )
    assert commands == ()
    assert same == cursor

    hit = EventRecord("content.downloaded", T0 + DAY, {"content_id": "wp"})
    cursor, commands = step(
        spec, cursor, EventReceived(now=T0 + DAY, facts=facts(T0 + DAY), event=hit)
    )
    assert commands[0] == CancelTimer(timer.timer_id)
    assert sent(commands) == ["matched"]


def test_wait_for_event_takes_the_timeout_branch(ctx):
    spec = build(
        ctx,
        wait_for("content.downloaded", timeout=3 * DAY, on_timeout="t"),
        send("wp", id="matched", next=END),
        send("nudge", id="t"),
    )
    cursor, _ = start(spec)
    cursor, commands = fire(spec, cursor, T0 + 3 * DAY)
    assert [c.step_id for c in commands if isinstance(c, Deliver)] == ["t"]


@pytest.mark.parametrize(("score", "expected"), [(80, "hot"), (10, "cold")])
def test_branch_evaluates_its_condition_on_the_input_facts(ctx, score, expected):
    spec = build(
        ctx,
        branch(score_at_least(50), then="hot", else_="cold"),
        send("wp", id="hot", next=END),
        send("video", id="cold"),
    )
    _, commands = start(spec, score=score)
    assert sent(commands) == [expected]


def test_instant_steps_run_until_a_wait(ctx):
    spec = build(
        ctx,
        set_attribute("phase", "evaluation"),
        add_tag("nurtured"),
        change_stage("prospect"),
        enrol("onboarding"),
        wait(days=1),
    )
    cursor, commands = start(spec)
    assert commands == (
        SetAttribute("phase", "evaluation"),
        AddTag("nurtured"),
        ChangeStage("prospect", "journey j step stage-prospect"),
        Enrol("onboarding"),
        StartTimer("wait-1d:5", T0 + DAY),
    )
    assert cursor.history == 5


def test_hand_off_waits_for_its_result(ctx):
    spec = build(ctx, hand_off(reason="MQL"), send("wp"))
    cursor, commands = start(spec)
    assert commands == (
        HandOff("hand-off", idempotency_key("j", spec.version, "hand-off", 1), "MQL"),
    )
    cursor, commands = step(
        spec, cursor, HandoffResult(now=T0, facts=facts(), step_id="hand-off", ok=True)
    )
    assert sent(commands) == ["send-wp"]


def test_failed_hand_off_without_on_failure_exits(ctx):
    spec = build(ctx, hand_off(), send("wp"))
    cursor, _ = start(spec)
    cursor, commands = step(
        spec,
        cursor,
        HandoffResult(now=T0, facts=facts(), step_id="hand-off", ok=False, error="crm 400"),
    )
    assert commands == (Exit("handoff_failed: hand-off: crm 400"),)


def test_end_of_steps_completes_with_end(ctx):
    spec = build(ctx, send("wp"))
    cursor, _ = start(spec)
    cursor, commands = delivered(spec, cursor, "send-wp")
    assert commands == (Completed("end"),)
    assert (cursor.status, cursor.reason) == ("completed", "end")


def test_goal_step_completes_with_goal_and_exit_step_exits(ctx):
    spec = build(
        ctx,
        branch(has_tag("vip"), then="won", else_="bye"),
        goal(id="won"),
        exit_journey("not vip", id="bye"),
    )
    assert start(spec, tags=frozenset({"vip"}))[1] == (Completed("goal"),)
    cursor, commands = start(spec)
    assert commands == (Exit("not vip"),)
    assert (cursor.status, cursor.reason) == ("exited", "not vip")


def test_permanent_delivery_failure_takes_on_failure_branch(ctx):
    spec = build(
        ctx,
        send("wp", on_failure="fallback"),
        send("video", next=END),
        send("fallback", id="fallback"),
    )
    cursor, _ = start(spec)
    cursor, commands = step(
        spec,
        cursor,
        DeliveryResult(
            now=T0, facts=facts(), step_id="send-wp", ok=False, permanent_error="bounced"
        ),
    )
    assert sent(commands) == ["fallback"]


def test_permanent_delivery_failure_without_on_failure_exits_and_never_retries(ctx):
    spec = build(ctx, send("wp"), send("video"))
    cursor, _ = start(spec)
    cursor, commands = step(
        spec,
        cursor,
        DeliveryResult(
            now=T0, facts=facts(), step_id="send-wp", ok=False, permanent_error="invalid address"
        ),
    )
    assert commands == (Exit("delivery_failed: send-wp: invalid address"),)
    assert not any(isinstance(c, Deliver) for c in commands)


def test_goal_is_checked_on_every_event_and_cancels_the_pending_timer(ctx):
    spec = build(ctx, wait(days=5), send("wp"), goal=event("order.paid"))
    cursor, _ = start(spec)
    paid = EventRecord("order.paid", T0 + DAY)
    cursor, commands = step(
        spec, cursor, EventReceived(now=T0 + DAY, facts=facts(T0 + DAY, events=(paid,)), event=paid)
    )
    assert commands == (CancelTimer("wait-5d:1"), Completed("goal"))


def test_exit_criteria_are_checked_when_a_wait_ends(ctx):
    spec = build(ctx, wait(days=5), send("wp"), exit_when=has_tag("unsubscribed"))
    cursor, _ = start(spec)
    cursor, commands = fire(spec, cursor, T0 + 5 * DAY, tags=frozenset({"unsubscribed"}))
    assert commands == (Exit("exit_criteria"),)


def test_goal_wins_over_exit_criteria(ctx):
    spec = build(ctx, wait(days=1), goal=event("order.paid"), exit_when=event("order.paid"))
    _, commands = start(spec, events=(EventRecord("order.paid", T0),))
    assert commands == (Completed("goal"),)


def test_exit_criteria_already_met_at_start_exit_at_once(ctx):
    spec = build(ctx, send("wp"), exit_when=has_tag("unsubscribed"))
    _cursor, commands = start(spec, tags=frozenset({"unsubscribed"}))
    assert commands == (Exit("exit_criteria"),)


def test_finished_cursor_ignores_further_inputs(ctx):
    spec = build(ctx, exit_journey("done"))
    cursor, _ = start(spec)
    assert step(spec, cursor, TimerFired(now=T0, facts=facts(), timer_id="x")) == (cursor, ())


def test_cancel_exits_and_cancels_the_timer(ctx):
    spec = build(ctx, wait(days=1))
    cursor, _ = start(spec)
    cursor, commands = step(spec, cursor, Cancel(now=T0, facts=facts(), reason="operator"))
    assert commands == (CancelTimer("wait-1d:1"), Exit("cancelled: operator"))


def test_revisited_send_gets_a_fresh_idempotency_key(ctx):
    spec = build(
        ctx,
        send("wp", id="a"),
        wait(days=7),
        branch(event("order.paid"), then=END, else_="a", id="again"),
    )
    cursor, commands = start(spec)
    first = deliveries(commands)[0].idempotency_key
    cursor, _ = delivered(spec, cursor, "a")
    cursor, commands = fire(spec, cursor, T0 + 7 * DAY)
    assert deliveries(commands)[0].idempotency_key == f"{first}#2"


def test_step_budget_stops_an_unvalidated_waitless_loop(ctx):
    spec = build(ctx, add_tag("x", id="a"), wait(days=1))
    first = spec.steps[0]
    assert isinstance(first, AddTagStep)
    looping = replace(spec, steps=(replace(first, next="a"), spec.steps[1]), version="")
    with pytest.raises(StepBudgetExceeded, match=f"ran {STEP_BUDGET} instant steps"):
        start(looping)


def test_misuse_is_a_clear_error(ctx):
    spec = build(ctx, wait(days=1))
    cursor, _ = start(spec)
    with pytest.raises(JourneyRuntimeError, match="Start given for an existing enrolment"):
        step(spec, cursor, Start(now=T0, facts=facts(), contact_id="c-1"))
    with pytest.raises(JourneyRuntimeError, match="naive"):
        step(spec, cursor, TimerFired(now=datetime(2026, 1, 5), facts=facts(), timer_id="x"))
    with pytest.raises(JourneyRuntimeError, match="without a cursor"):
        step(spec, None, TimerFired(now=T0, facts=facts(), timer_id="x"))
    other = build(ctx, wait(days=2))
    with pytest.raises(JourneyRuntimeError, match="version"):
        step(other, cursor, TimerFired(now=T0, facts=facts(), timer_id="x"))


def test_cursor_round_trips_through_json(ctx):
    spec = build(ctx, send("wp"), wait_for("order.paid", timeout=DAY))
    cursor, _ = start(spec)
    cursor, _ = delivered(spec, cursor, "send-wp")
    assert Cursor.from_dict(cursor.to_dict()) == cursor


def test_commands_are_json_able(ctx):
    import json

    spec = build(ctx, send("wp"), wait_for("order.paid", where={"sku": "x"}, timeout=DAY))
    cursor, first = start(spec)
    _, second = delivered(spec, cursor, "send-wp")
    data = json.loads(json.dumps([c.to_dict() for c in (*first, *second)]))
    assert [d["command"] for d in data] == ["Deliver", "StartTimer", "WaitForEvent"]
    assert data[2]["matchers"][0]["where"][0]["value"] == "x"


def test_reentry_policies(ctx):
    never = build(ctx, wait(days=1))
    always = build(ctx, wait(days=1), reentry=ReEntry.always())
    cooldown = build(ctx, wait(days=1), reentry=ReEntry.after(30 * DAY))
    ended = T0 - 10 * DAY
    assert can_enrol(never, active=False, previous_enrolments=0, last_ended_at=None, now=T0)
    assert not can_enrol(never, active=False, previous_enrolments=1, last_ended_at=ended, now=T0)
    assert can_enrol(always, active=False, previous_enrolments=3, last_ended_at=ended, now=T0)
    assert not can_enrol(always, active=True, previous_enrolments=3, last_ended_at=ended, now=T0)
    assert not can_enrol(cooldown, active=False, previous_enrolments=1, last_ended_at=ended, now=T0)
    assert can_enrol(
        cooldown, active=False, previous_enrolments=1, last_ended_at=ended, now=T0 + 20 * DAY
    )


def test_split_step_sends_each_contact_down_one_arm(ctx):
    spec = build(ctx, split({"a": 1, "b": 1}), send("wp", id="a", next=END), send("video", id="b"))
    arms = {
        sent(step(spec, None, Start(now=T0, facts=facts(), contact_id=f"c-{i}"))[1])[0]
        for i in range(50)
    }
    assert arms == {"a", "b"}
