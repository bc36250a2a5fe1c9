from __future__ import annotations

from datetime import time, timedelta

from stagecoach.engine.domain.conditions import EventMatcher, event
from stagecoach.engine.domain.journeys import (
    END,
    EventEntry,
    Journey,
    SendStep,
    SplitStep,
    StageEntered,
    compile_journey,
    holdout,
    on_event,
    send,
    stage_entered,
    wait,
    wait_for,
    wait_until,
)


def test_linear_steps_need_no_wiring_and_last_step_ends(ctx):
    journey = Journey(
        "linear", entry=stage_entered("suspect"), steps=[send("wp"), wait(days=2), send("video")]
    )
    spec = compile_journey(journey, ctx)
    assert [s.id for s in spec.steps] == ["send-wp", "wait-2d", "send-video"]
    first, _second, last = spec.steps
    assert isinstance(first, SendStep)
    assert first.next == "wait-2d"
    assert last.edges() == (("next", END),)


def test_derived_ids_come_from_content_and_repeat_with_suffix():
    journey = Journey(
        "ids",
        entry=stage_entered("suspect"),
        steps=[send("wp"), wait(days=1), send("wp"), wait(days=1), wait_until(time(9, 30))],
    )
    assert [s.id for s in journey.steps] == [
        "send-wp",
        "wait-1d",
        "send-wp-2",
        "wait-1d-2",
        "wait-until-0930",
    ]


def test_derived_ids_do_not_collide_with_given_ids():
    journey = Journey(
        "ids", entry=stage_entered("suspect"), steps=[send("wp", id="send-wp-2"), send("wp")]
    )
    assert [s.id for s in journey.steps] == ["send-wp-2", "send-wp"]


def test_entry_accepts_one_trigger_or_several():
    one = Journey("one", entry=stage_entered("lead"), steps=[send("wp")])
    several = Journey(
        "several",
        entry=[on_event("page.viewed", where={"category": "pricing"}), stage_entered("lead")],
        steps=[send("wp")],
    )
    assert one.entries == (StageEntered("lead"),)
    assert isinstance(several.entries[0], EventEntry)
    assert several.entries[0].matcher == event("page.viewed", where={"category": "pricing"}).matcher


def test_wait_for_accepts_types_and_matchers_with_where_shorthand():
    step = wait_for(
        "content.downloaded",
        EventMatcher("page.viewed"),
        where={"content_id": "wp"},
        timeout=timedelta(days=3),
    )
    assert [m.type for m in step.matchers] == ["content.downloaded", "page.viewed"]
    assert step.matchers[0].where[0].value == "wp"
    assert step.matchers[1].where == ()


def test_wait_adds_duration_parts():
    assert wait(timedelta(hours=1), days=1, minutes=30).duration == timedelta(days=1, minutes=90)


def test_holdout_is_a_split_with_an_exit_arm():
    step = holdout(10)
    assert isinstance(step, SplitStep)
    assert [(b.weight, b.target) for b in step.branches] == [(10, "$exit:holdout"), (90, None)]
