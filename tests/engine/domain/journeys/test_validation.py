from __future__ import annotations

from datetime import timedelta

import pytest

from stagecoach.engine.domain.conditions import event, stage_in
from stagecoach.engine.domain.journeys import (
    END,
    InMemoryContentIndex,
    Journey,
    JourneyValidationError,
    ValidationContext,
    WaitForEventStep,
    branch,
    change_stage,
    compile_journey,
    enrol,
    exit_journey,
    on_event,
    send,
    stage_entered,
    wait,
    wait_for,
)


def problems_of(journey: Journey, ctx: ValidationContext) -> list[str]:
    with pytest.raises(JourneyValidationError) as info:
        compile_journey(journey, ctx)
    assert info.value.journey == journey.name
    return [str(p) for p in info.value.problems]


def only(problems: list[str], needle: str) -> str:
    hits = [p for p in problems if needle in p]
    assert len(hits) == 1, problems
    return hits[0]


def test_valid_journey_compiles(ctx):
    journey = Journey("ok", entry=stage_entered("suspect"), steps=[send("wp"), wait(days=1)])
    assert compile_journey(journey, ctx).name == "ok"


def test_unreachable_step_is_named_with_a_fix(ctx):
    journey = Journey(
        "j", entry=stage_entered("suspect"), steps=[send("wp", next=END), send("video", id="lost")]
    )
    problem = only(problems_of(journey, ctx), "unreachable")
    assert "journey 'j'" in problem
    assert "step 'lost'" in problem
    assert "Fix: remove the step" in problem


def test_dangling_next_is_a_path_that_never_ends(ctx):
    journey = Journey("j", entry=stage_entered("suspect"), steps=[send("wp", next="nowhere")])
    problem = only(problems_of(journey, ctx), "'nowhere' does not exist")
    assert "step 'send-wp'" in problem
    assert "never ends" in problem
    assert "Fix: point it at an existing step id" in problem


def test_cycle_without_wait_is_rejected(ctx):
    journey = Journey(
        "j",
        entry=stage_entered("suspect"),
        steps=[
            send("wp", id="a"),
            branch(event("order.paid"), then=END, else_="a", id="check"),
        ],
    )
    problem = only(problems_of(journey, ctx), "loop with no wait")
    assert "'a', 'check'" in problem
    assert "Fix: add a wait(...)" in problem


def test_cycle_with_a_wait_and_a_way_out_is_fine(ctx):
    journey = Journey(
        "j",
        entry=stage_entered("suspect"),
        steps=[
            send("wp", id="a"),
            wait(days=7),
            branch(event("order.paid"), then=END, else_="a", id="check"),
        ],
    )
    compile_journey(journey, ctx)


def test_loop_with_no_way_out_never_ends(ctx):
    journey = Journey(
        "j", entry=stage_entered("suspect"), steps=[send("wp", id="a"), wait(days=7, next="a")]
    )
    problem = only(problems_of(journey, ctx), "never end")
    assert "'a', 'wait-7d'" in problem
    assert "Fix: add a branch or timeout out of the loop" in problem


def test_missing_content_variant_names_locale_and_channel(ctx):
    content = InMemoryContentIndex(
        frozenset({("wp", "en", "email"), ("wp", "zh-CN", "email"), ("wp", "en", "wechat")})
    )
    journey = Journey(
        "j",
        entry=stage_entered("suspect"),
        steps=[send("wp", channel="email", id="by-email"), send("wp", id="preferred")],
    )
    problems = problems_of(journey, ValidationContext(ctx.known_event_types, ctx.stages, content))
    assert len(problems) == 1
    problem = problems[0]
    assert "step 'preferred'" in problem
    assert "zh-CN/wechat" in problem
    assert "'preferred' needs every channel" in problem
    assert "Fix: add those variants" in problem


def test_content_that_does_not_exist_at_all(ctx):
    journey = Journey(
        "j", entry=stage_entered("suspect"), steps=[send("ghost", channel="wechat")], locales=["en"]
    )
    problem = only(problems_of(journey, ctx), "content 'ghost'")
    assert "en/wechat" in problem


def test_content_checks_are_skipped_without_an_index(ctx):
    journey = Journey("j", entry=stage_entered("suspect"), steps=[send("ghost")])
    compile_journey(journey, ValidationContext(ctx.known_event_types, ctx.stages, None))


def test_unknown_event_types_everywhere_are_reported(ctx):
    journey = Journey(
        "j",
        entry=on_event("whitepaper.downlaoded"),
        exit_when=event("unsubscribed"),
        goal=event("order.payed"),
        steps=[
            wait_for("pricing.viewed", timeout=timedelta(days=1), id="w"),
            branch(event("demo.request"), id="b"),
            send("wp"),
        ],
    )
    problems = problems_of(journey, ctx)
    assert len(problems) == 5
    assert "entry: event type 'whitepaper.downlaoded'" in only(problems, "downlaoded")
    assert "exit criteria" in only(problems, "'unsubscribed'")
    goal_problem = only(problems, "order.payed")
    assert "goal:" in goal_problem
    assert "did you mean 'order.paid'" in goal_problem
    assert "step 'w'" in only(problems, "pricing.viewed")
    assert "step 'b'" in only(problems, "demo.request'")


def test_wait_for_event_without_timeout_is_rejected(ctx):
    no_timeout = WaitForEventStep(
        id="w", matchers=wait_for("order.paid", timeout=timedelta(1)).matchers, timeout=None
    )
    journey = Journey("j", entry=stage_entered("suspect"), steps=[no_timeout, send("wp")])
    problem = only(problems_of(journey, ctx), "without a (positive) timeout")
    assert "step 'w'" in problem
    assert "Fix: give wait_for(...) a timeout" in problem


def test_unknown_stages_are_reported(ctx):
    journey = Journey(
        "j",
        entry=stage_entered("supsect"),
        steps=[
            change_stage("mql", id="promote"),
            branch(stage_in("custommer"), id="b"),
            send("wp"),
        ],
    )
    problems = problems_of(journey, ctx)
    assert "did you mean 'suspect'" in only(problems, "'supsect'")
    assert "step 'promote'" in only(problems, "'mql'")
    assert "step 'b'" in only(problems, "'custommer'")


def test_enrol_into_unknown_journey_is_rejected(ctx):
    journey = Journey(
        "j", entry=stage_entered("suspect"), steps=[enrol("onboardin", id="e"), send("wp")]
    )
    problem = only(problems_of(journey, ctx), "unknown journey 'onboardin'")
    assert "step 'e'" in problem
    assert "did you mean 'onboarding'" in problem


def test_enrol_into_known_journey_is_fine(ctx):
    journey = Journey("j", entry=stage_entered("suspect"), steps=[enrol("onboarding")])
    compile_journey(journey, ctx)


def test_duplicate_step_ids_are_rejected(ctx):
    journey = Journey(
        "j", entry=stage_entered("suspect"), steps=[send("wp", id="x"), send("video", id="x")]
    )
    assert "used by 2 steps" in only(problems_of(journey, ctx), "used by")


def test_all_problems_come_in_one_error(ctx):
    journey = Journey(
        "many",
        entry=stage_entered("nobody"),
        steps=[send("ghost", next="nowhere"), exit_journey("done", id="orphan")],
    )
    with pytest.raises(JourneyValidationError) as info:
        compile_journey(journey, ctx)
    assert len(info.value.problems) == 4
    text = str(info.value)
    assert text.startswith("journey 'many' has 4 problems:")
    for needle in ("'nobody'", "'ghost'", "'nowhere'", "'orphan'"):
        assert needle in text
