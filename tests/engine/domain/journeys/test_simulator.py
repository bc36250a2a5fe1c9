from __future__ import annotations

from datetime import timedelta
from typing import Any

from stagecoach.engine.domain.conditions import EventRecord, event, stage_in
from stagecoach.engine.domain.journeys import (
    END,
    SIMULATION_EPOCH,
    ChangeStage,
    Deliver,
    Journey,
    JourneySpec,
    SimContact,
    ValidationContext,
    branch,
    change_stage,
    compile_journey,
    on_event,
    send,
    stage_entered,
    wait,
    wait_for,
)

DAY = timedelta(days=1)


def nurture(ctx: ValidationContext, **kw: Any) -> JourneySpec:
    return compile_journey(
        Journey(
            "nurture",
            entry=kw.pop("entry", stage_entered("suspect")),
            goal=event("order.paid"),
            steps=[
                send("wp", on_failure=kw.pop("on_failure", None)),
                wait_for("content.downloaded", timeout=3 * DAY, on_timeout="nudge"),
                wait(days=3),
                send("case-study", next=END),
                send("nudge", id="nudge"),
            ],
        ),
        ctx,
    )


def test_download_on_day_two_brings_the_case_study_on_day_five(ctx):
    from stagecoach.engine.domain.journeys import simulate

    result = simulate(nurture(ctx), SimContact(), [(2 * DAY, "content.downloaded")], until=30 * DAY)
    assert result.deliveries() == [(timedelta(0), "wp"), (5 * DAY, "case-study")]
    assert result.outcome == "completed: end"


def test_no_download_brings_the_nudge_at_the_timeout(ctx):
    from stagecoach.engine.domain.journeys import simulate

    result = simulate(nurture(ctx), SimContact(), [], until=30 * DAY)
    assert result.delivered_at("nudge") == 3 * DAY
    assert result.delivered_at("case-study") is None


def test_event_exactly_at_the_timeout_counts_as_in_time(ctx):
    from stagecoach.engine.domain.journeys import simulate

    result = simulate(nurture(ctx), SimContact(), [(3 * DAY, "content.downloaded")], until=30 * DAY)
    assert result.delivered_at("case-study") == 6 * DAY
    assert result.delivered_at("nudge") is None


def test_goal_event_ends_the_simulation_early(ctx):
    from stagecoach.engine.domain.journeys import simulate

    result = simulate(nurture(ctx), SimContact(), [(DAY, "order.paid")], until=30 * DAY)
    assert result.outcome == "completed: goal"
    assert result.deliveries() == [(timedelta(0), "wp")]


def test_injected_permanent_failure_takes_on_failure(ctx):
    from stagecoach.engine.domain.journeys import simulate

    spec = nurture(ctx, on_failure="nudge")
    result = simulate(spec, SimContact(), [], until=30 * DAY, fail_steps={"send-wp": "bounced"})
    # The failed step is not retried: wp is attempted once, then the nudge goes out.
    assert result.deliveries() == [(timedelta(0), "wp"), (timedelta(0), "nudge")]


def test_injected_permanent_failure_without_on_failure_exits(ctx):
    from stagecoach.engine.domain.journeys import simulate

    result = simulate(
        nurture(ctx), SimContact(), [], until=30 * DAY, fail_steps={"send-wp": "bounced"}
    )
    assert result.outcome == "exited: delivery_failed: send-wp: bounced"
    assert len(result.deliveries()) == 1


def test_event_entry_enrols_on_the_first_matching_event(ctx):
    from stagecoach.engine.domain.journeys import simulate

    spec = nurture(ctx, entry=on_event("page.viewed", where={"category": "pricing"}))
    script = [
        (DAY, EventRecord("page.viewed", SIMULATION_EPOCH, {"category": "blog"})),
        (4 * DAY, EventRecord("page.viewed", SIMULATION_EPOCH, {"category": "pricing"})),
    ]
    result = simulate(spec, SimContact(stage="lead"), script, until=30 * DAY)
    assert result.entered_at == 4 * DAY
    assert result.delivered_at("wp") == 4 * DAY


def test_contact_who_never_matches_the_entry_is_not_entered(ctx):
    from stagecoach.engine.domain.journeys import simulate

    result = simulate(nurture(ctx), SimContact(stage="customer"), [], until=30 * DAY)
    assert result.outcome == "not entered"
    assert result.timeline == ()


def test_stage_changes_feed_later_conditions(ctx):
    from stagecoach.engine.domain.journeys import simulate

    spec = compile_journey(
        Journey(
            "stages",
            entry=stage_entered("suspect"),
            steps=[
                change_stage("prospect"),
                branch(stage_in("prospect"), then="yes", else_="no"),
                send("wp", id="yes", next=END),
                send("video", id="no"),
            ],
        ),
        ctx,
    )
    result = simulate(spec, SimContact(), [], until=DAY)
    assert [c.stage for _, c in result.commands(ChangeStage)] == ["prospect"]
    assert [c.step_id for _, c in result.commands(Deliver)] == ["yes"]
    assert "ChangeStage stage=prospect" in str(result)
