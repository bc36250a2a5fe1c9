"""``branch(cond, then=[...], else_=[...])``: arms written as nested steps.

A nested journey compiles to the very spec (JSON and version hash) of the same journey
written flat, with ``then=``/``else_=`` step ids: the spec's vocabulary and every
published version stay as they are.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from stagecoach.engine.domain.conditions import event, has_tag, stage_in
from stagecoach.engine.domain.journeys import (
    END,
    BranchStep,
    Journey,
    JourneySpec,
    JourneyValidationError,
    SimContact,
    ValidationContext,
    add_tag,
    branch,
    change_stage,
    compile_journey,
    exit_journey,
    exit_to,
    goal,
    send,
    simulate,
    stage_entered,
    wait,
    wait_for,
)

DAY = timedelta(days=1)


def _compiled(steps: list, ctx: ValidationContext) -> JourneySpec:  # type: ignore[type-arg]
    journey = Journey(
        "nested",
        entry=[stage_entered("suspect"), stage_entered("lead")],
        goal=event("order.paid"),
        steps=steps,
    )
    return compile_journey(journey, ctx)


NESTED = [
    send("wp"),
    branch(
        stage_in("suspect"),
        then=[
            change_stage("prospect"),
            wait_for("content.downloaded", timeout=3 * DAY, on_timeout="nudge"),
            branch(
                has_tag("vip"),
                then=[send("case-study"), goal()],
                else_=[add_tag("engaged")],
            ),
        ],
        else_=[wait(timedelta(days=2)), send("video")],
    ),
    wait(timedelta(days=1)),
    send("fallback"),
    send("nudge", id="nudge"),
]

# The same journey as it is written without nested arms: each arm's steps follow its
# branch, then-arm first, and each arm's last step names where the block ends.
FLAT = [
    send("wp"),
    branch(stage_in("suspect"), else_="wait-2d"),
    change_stage("prospect"),
    wait_for("content.downloaded", timeout=3 * DAY, on_timeout="nudge"),
    branch(has_tag("vip"), else_="tag-engaged", id="branch-2"),
    send("case-study"),
    goal(),
    add_tag("engaged", next="wait-1d"),
    wait(timedelta(days=2)),
    send("video"),
    wait(timedelta(days=1)),
    send("fallback"),
    send("nudge", id="nudge"),
]


def test_a_nested_journey_compiles_to_the_spec_of_its_flat_form(ctx):
    nested, flat = _compiled(NESTED, ctx), _compiled(FLAT, ctx)
    assert nested.to_json() == flat.to_json()
    assert nested.version == flat.version


def test_the_layout_is_then_arm_else_arm_then_what_follows(ctx):
    spec = _compiled(NESTED, ctx)
    assert [s.id for s in spec.steps] == [
        "send-wp", "branch", "stage-prospect", "wait-for-content.downloaded", "branch-2",
        "send-case-study", "goal", "tag-engaged", "wait-2d", "send-video", "wait-1d",
        "send-fallback", "nudge",
    ]  # fmt: skip
    outer, inner = spec.step("branch"), spec.step("branch-2")
    assert isinstance(outer, BranchStep)
    assert isinstance(inner, BranchStep)
    assert (outer.then, outer.else_) == ("stage-prospect", "wait-2d")
    assert (inner.then, inner.else_) == ("send-case-study", "tag-engaged")
    # Both arms end where the outer block ends; the goal ends the journey itself.
    assert spec.step("tag-engaged").edges() == (("next", "wait-1d"),)
    assert spec.step("send-video").edges() == (("next", "wait-1d"),)
    assert spec.step("send-fallback").edges() == (("next", "nudge"),)


def test_each_arm_plays_as_written(ctx):
    spec = _compiled(NESTED, ctx)
    vip = simulate(spec, SimContact(stage="suspect", tags=frozenset({"vip"})), [], until=30 * DAY)
    assert vip.deliveries()[-1] == (3 * DAY, "nudge")
    downloaded = [(DAY, "content.downloaded")]
    vip = simulate(
        spec, SimContact(stage="suspect", tags=frozenset({"vip"})), downloaded, until=30 * DAY
    )
    assert vip.deliveries() == [(timedelta(0), "wp"), (DAY, "case-study")]
    assert vip.outcome == "completed: goal"
    other = simulate(spec, SimContact(stage="suspect"), downloaded, until=30 * DAY)
    assert other.deliveries() == [(timedelta(0), "wp"), (2 * DAY, "fallback"), (2 * DAY, "nudge")]
    lead = simulate(spec, SimContact(stage="lead"), [], until=30 * DAY)
    assert lead.deliveries() == [
        (timedelta(0), "wp"),
        (2 * DAY, "video"),
        (3 * DAY, "fallback"),
        (3 * DAY, "nudge"),
    ]


def test_an_arm_left_out_or_empty_goes_on_after_the_branch(ctx):
    left_out = _compiled([branch(stage_in("suspect"), then=[send("wp")]), send("video")], ctx)
    empty = _compiled(
        [branch(stage_in("suspect"), then=[send("wp")], else_=[]), send("video")], ctx
    )
    flat = _compiled(
        [branch(stage_in("suspect"), else_="send-video"), send("wp"), send("video")], ctx
    )
    assert left_out.version == empty.version == flat.version


def test_an_arm_may_still_jump_to_a_step_id_or_exit(ctx):
    spec = _compiled(
        [
            branch(stage_in("suspect"), then=[send("wp")], else_=exit_to("not_a_suspect")),
            send("video"),
        ],
        ctx,
    )
    assert spec.step("branch").edges() == (("yes", "send-wp"), ("no", "$exit:not_a_suspect"))
    assert spec.step("send-wp").edges() == (("next", "send-video"),)


def test_a_block_at_the_end_of_the_journey_ends_it(ctx):
    spec = _compiled(
        [send("wp"), branch(stage_in("suspect"), then=[send("video")], else_=[send("nudge")])],
        ctx,
    )
    assert spec.step("send-video").edges() == (("next", END),)
    assert spec.step("send-nudge").edges() == (("next", END),)


def test_one_step_is_an_arm_of_one(ctx):
    one = _compiled([branch(stage_in("suspect"), then=send("wp")), send("video")], ctx)
    listed = _compiled([branch(stage_in("suspect"), then=[send("wp")]), send("video")], ctx)
    assert one.version == listed.version


def test_an_arm_step_keeps_its_own_target(ctx):
    spec = _compiled(
        [
            branch(stage_in("suspect"), then=[send("wp", next="nudge")]),
            send("video"),
            exit_journey("done", id="nudge"),
        ],
        ctx,
    )
    assert spec.step("send-wp").edges() == (("next", "nudge"),)


def test_a_step_in_an_arm_is_validated_like_any_other(ctx):
    journey = Journey(
        "nested",
        entry=stage_entered("suspect"),
        steps=[branch(stage_in("suspect"), then=[send("no-such-content")])],
    )
    with pytest.raises(
        JourneyValidationError, match="step 'send-no-such-content': content 'no-such-content'"
    ):
        compile_journey(journey, ctx)


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ({"then": [send("wp"), "video"]}, r"branch: then\[1\] is 'video', not a step"),
        ({"else_": 42}, r"branch: else_=42 is neither a step id nor steps"),
        ({"then": [[send("wp")]]}, r"branch: then\[0\] is \[.*\], not a step"),
    ],
)
def test_an_arm_that_is_not_steps_is_refused_where_it_is_written(arms, message):
    with pytest.raises(TypeError, match=message):
        branch(stage_in("suspect"), **arms)


def test_a_journey_step_that_is_not_a_step_is_refused():
    with pytest.raises(TypeError, match=r"journey 'j': steps\[1\] is 'video', not a step"):
        Journey("j", entry=stage_entered("suspect"), steps=[send("wp"), "video"])  # type: ignore[list-item]
