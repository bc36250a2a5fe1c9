"""Waits anchored on enrolment: ``wait(until=since_enrolment(timedelta(days=14)))``.

The compiler turns an anchored wait into a plain wait of the time left, so the spec (and
its version) is the one of the same journey written with relative waits. Where the time
since enrolment is not fixed, or the anchor is not after it, compiling fails with the
journey, the step and the fix.
"""

from __future__ import annotations

from datetime import time, timedelta

import pytest

from stagecoach.engine.domain.conditions import event, has_tag
from stagecoach.engine.domain.journeys import (
    Exit,
    Journey,
    JourneySpec,
    JourneyValidationError,
    SimContact,
    SinceEnrolment,
    Step,
    ValidationContext,
    WaitStep,
    branch,
    compile_journey,
    exit_journey,
    exit_to,
    goal,
    hand_off,
    send,
    simulate,
    since_enrolment,
    stage_entered,
    wait,
    wait_for,
    wait_until,
)

DAY = timedelta(days=1)


def _journey(steps: list) -> Journey:  # type: ignore[type-arg]
    return Journey("trial", entry=stage_entered("suspect"), goal=event("order.paid"), steps=steps)


def _compiled(steps: list, ctx: ValidationContext) -> JourneySpec:  # type: ignore[type-arg]
    return compile_journey(_journey(steps), ctx)


def _problems(steps: list, ctx: ValidationContext) -> list[str]:  # type: ignore[type-arg]
    with pytest.raises(JourneyValidationError) as caught:
        compile_journey(_journey(steps), ctx)
    return [str(p) for p in caught.value.problems]


def test_a_journey_timed_from_enrolment_compiles_to_its_relative_form(ctx):
    anchored = _compiled(
        [
            send("wp"),
            wait(timedelta(days=2)),
            send("video"),
            wait(until=since_enrolment(timedelta(days=14)), id="day-14"),
            exit_journey("trial_over"),
        ],
        ctx,
    )
    relative = _compiled(
        [
            send("wp"),
            wait(timedelta(days=2)),
            send("video"),
            wait(timedelta(days=12), id="day-14"),
            exit_journey("trial_over"),
        ],
        ctx,
    )
    assert anchored.to_json() == relative.to_json()
    assert anchored.version == relative.version
    day_14 = anchored.step("day-14")
    assert isinstance(day_14, WaitStep)
    assert day_14.duration == 12 * DAY


def test_the_contact_leaves_on_day_14_of_the_journey(ctx):
    spec = _compiled(
        [
            send("wp"),
            wait(timedelta(days=3)),
            send("video"),
            wait(until=since_enrolment(days=14)),
            exit_journey("trial_over"),
        ],
        ctx,
    )
    result = simulate(spec, SimContact(), [], until=30 * DAY)
    assert result.deliveries() == [(timedelta(0), "wp"), (3 * DAY, "video")]
    assert result.outcome == "exited: trial_over"
    assert result.cursor is not None
    assert result.cursor.step_id == "exit-trial_over"
    assert result.commands(Exit) == [(14 * DAY, Exit("trial_over"))]


def test_anchors_in_a_row_each_count_from_enrolment(ctx):
    spec = _compiled(
        [
            wait(until=since_enrolment(timedelta(days=1))),
            send("wp"),
            wait(until=since_enrolment(timedelta(days=7))),
            send("video"),
            wait(timedelta(hours=12)),
            wait(until=since_enrolment(timedelta(days=10))),
            send("nudge"),
        ],
        ctx,
    )
    assert [s.duration for s in spec.steps if isinstance(s, WaitStep)] == [
        DAY,
        6 * DAY,
        timedelta(hours=12),
        timedelta(days=2, hours=12),
    ]
    result = simulate(spec, SimContact(), [], until=30 * DAY)
    assert result.deliveries() == [(DAY, "wp"), (7 * DAY, "video"), (10 * DAY, "nudge")]


def test_a_timeout_path_is_a_fixed_time_and_arms_without_waits_agree(ctx):
    spec = _compiled(
        [
            send("wp"),
            wait_for("content.downloaded", timeout=3 * DAY, on_timeout="no-download", next="won"),
            branch(has_tag("vip"), then=[send("video")], else_=[send("nudge")], id="no-download"),
            wait(until=since_enrolment(timedelta(days=10)), id="day-10"),
            send("fallback"),
            exit_journey("won", id="won"),
        ],
        ctx,
    )
    day_10 = spec.step("day-10")
    assert isinstance(day_10, WaitStep)
    assert day_10.duration == 7 * DAY


def test_an_anchor_before_the_steps_before_it_is_refused(ctx):
    problems = _problems(
        [
            send("wp"),
            wait(timedelta(days=10)),
            wait(until=since_enrolment(timedelta(days=7)), id="day-7"),
            send("video"),
        ],
        ctx,
    )
    assert problems == [
        "journey 'trial', step 'day-7': waits until 7d after enrolment, but the steps before"
        " it already take 10d. Fix: anchor it later than 10d after enrolment, shorten the"
        " waits before it, or remove this wait"
    ]


def test_an_anchor_at_the_same_time_as_the_step_before_is_refused(ctx):
    problems = _problems(
        [wait(timedelta(days=7)), wait(until=since_enrolment(days=7), id="day-7"), send("wp")], ctx
    )
    assert problems[0].startswith("journey 'trial', step 'day-7': waits until 7d after")


def test_an_anchor_after_an_event_is_refused_naming_the_event_wait(ctx):
    problems = _problems(
        [
            send("wp"),
            wait_for("content.downloaded", timeout=3 * DAY, id="await-download"),
            wait(until=since_enrolment(timedelta(days=14)), id="day-14"),
            send("video"),
        ],
        ctx,
    )
    assert problems == [
        "journey 'trial', step 'day-14': waits until 14d after enrolment, but the time since"
        " enrolment is not fixed there: step 'await-download' goes on when an event arrives."
        " Fix: anchor only where every path takes a fixed time (wait(...) steps and wait_for"
        " timeouts), or wait after the previous step with wait(timedelta(...))"
    ]


def test_paths_of_different_lengths_are_refused(ctx):
    problems = _problems(
        [
            branch(has_tag("vip"), then=[wait(timedelta(days=2))], else_=[wait(5 * DAY)]),
            wait(until=since_enrolment(timedelta(days=14)), id="day-14"),
            send("video"),
        ],
        ctx,
    )
    assert len(problems) == 1
    assert "paths reach step 'day-14' 2d and 5d after enrolment" in problems[0]


def test_a_time_of_day_wait_before_an_anchor_is_refused(ctx):
    problems = _problems(
        [
            wait_until(time(9)),
            wait(until=since_enrolment(timedelta(days=14)), id="day-14"),
            send("video"),
        ],
        ctx,
    )
    assert "step 'wait-until-0900' waits for a time of day" in problems[0]


def test_an_anchor_in_a_loop_is_refused(ctx):
    problems = _problems(
        [
            send("wp", id="again"),
            wait(until=since_enrolment(timedelta(days=3)), id="day-3"),
            branch(has_tag("vip"), then="again"),
            hand_off(),
        ],
        ctx,
    )
    assert problems == [
        "journey 'trial', step 'day-3': waits until 3d after enrolment, but the time since"
        " enrolment is not fixed there: paths reach step 'again' 0s and 3d after enrolment."
        " Fix: anchor only where every path takes a fixed time (wait(...) steps and wait_for"
        " timeouts), or wait after the previous step with wait(timedelta(...))"
    ]


def test_an_anchor_that_is_not_after_enrolment_is_refused(ctx):
    problems = _problems([wait(until=since_enrolment()), send("wp")], ctx)
    assert problems == [
        "journey 'trial', step 'wait-to-0s': waits until 0s after enrolment, which is not"
        " after enrolment. Fix: anchor a positive time, e.g."
        " since_enrolment(timedelta(days=14))"
    ]


def test_anchor_problems_come_with_every_other_problem(ctx):
    problems = _problems(
        [
            wait(timedelta(days=10)),
            wait(until=since_enrolment(timedelta(days=7)), id="day-7"),
            send("no-such-content"),
        ],
        ctx,
    )
    assert [p.split(":")[0] for p in problems] == [
        "journey 'trial', step 'day-7'",
        "journey 'trial', step 'send-no-such-content'",
    ]


def test_an_event_wait_may_time_out_at_a_moment_since_enrolment(ctx):
    def steps(timeout: timedelta | SinceEnrolment) -> list[Step]:
        return [
            send("wp"),
            wait(timedelta(days=2)),
            wait_for("order.paid", timeout=timeout, on_timeout=exit_to("no_order")),
            goal(),
        ]

    anchored = _compiled(steps(since_enrolment(timedelta(days=30))), ctx)
    relative = _compiled(steps(timedelta(days=28)), ctx)
    assert anchored.to_json() == relative.to_json()
    assert anchored.version == relative.version
    result = simulate(anchored, SimContact(), [], until=60 * DAY)
    assert result.commands(Exit) == [(30 * DAY, Exit("no_order"))]


def test_an_anchored_timeout_fixes_the_time_on_its_timeout_path_only(ctx):
    spec = _compiled(
        [
            wait_for(
                "content.downloaded",
                timeout=since_enrolment(timedelta(days=5)),
                on_timeout="day-7",
                next="won",
            ),
            wait(until=since_enrolment(timedelta(days=7)), id="day-7"),
            send("nudge"),
            exit_journey("downloaded", id="won"),
        ],
        ctx,
    )
    day_7 = spec.step("day-7")
    assert isinstance(day_7, WaitStep)
    assert day_7.duration == 2 * DAY
    problems = _problems(
        [
            wait_for("content.downloaded", timeout=since_enrolment(timedelta(days=5)), id="w"),
            wait(until=since_enrolment(timedelta(days=7)), id="day-7"),
            send("nudge"),
        ],
        ctx,
    )
    assert problems == [
        "journey 'trial', step 'day-7': waits until 7d after enrolment, but the time since"
        " enrolment is not fixed there: step 'w' goes on when an event arrives. Fix: anchor"
        " only where every path takes a fixed time (wait(...) steps and wait_for timeouts),"
        " or wait after the previous step with wait(timedelta(...))"
    ]


def test_an_anchored_timeout_already_passed_is_refused(ctx):
    problems = _problems(
        [
            wait(timedelta(days=10)),
            wait_for("order.paid", timeout=since_enrolment(timedelta(days=7)), id="await-order"),
            send("wp"),
        ],
        ctx,
    )
    assert problems == [
        "journey 'trial', step 'await-order': times out 7d after enrolment, but the steps"
        " before it already take 10d. Fix: anchor it later than 10d after enrolment, shorten"
        " the waits before it, or time out after the previous step with"
        " timeout=timedelta(...)"
    ]


def test_the_derived_id_names_the_anchor():
    assert wait(until=since_enrolment(timedelta(days=14))).derived_id() == "wait-to-14d"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: wait(until=timedelta(days=14)), "until=.* is not a moment since enrolment"),  # type: ignore[call-overload]
        (
            lambda: wait(timedelta(days=1), until=since_enrolment(days=14)),  # type: ignore[call-overload]
            "give a duration .* or until=since_enrolment",
        ),
        (lambda: since_enrolment("14d"), r"since_enrolment: '14d' is not a duration"),  # type: ignore[arg-type]
        (lambda: since_enrolment(days="14"), r"days='14'.* must be numbers"),  # type: ignore[arg-type]
    ],
)
def test_a_wrong_anchor_is_refused_where_it_is_written(build, message):
    with pytest.raises(TypeError, match=message):
        build()
