"""``step_traced``: the steps an enrolment went through, for analytics and ``contact why``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from stagecoach.engine.domain.conditions import Facts, attribute
from stagecoach.engine.domain.journeys import (
    END,
    DeliveryResult,
    Journey,
    JourneySpec,
    Start,
    TimerFired,
    ValidationContext,
    branch,
    compile_journey,
    holdout,
    send,
    stage_entered,
    step,
    step_traced,
    wait,
)
from stagecoach.engine.protocol.messages import EnrolmentRecord

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _journey(ctx: ValidationContext) -> JourneySpec:
    return compile_journey(
        Journey(
            "trace",
            entry=stage_entered("suspect"),
            steps=[
                branch(attribute("vip"), then="vip-offer", else_="wp", id="is-vip"),
                send("wp", id="wp"),
                wait(days=1, id="pause"),
                send("video", id="video", next=END),
                send("case-study", id="vip-offer", next=END),
            ],
        ),
        ctx,
    )


def test_a_branch_names_the_side_taken_and_a_send_its_result(ctx):
    spec = _journey(ctx)
    facts = Facts(now=T0, attributes={"vip": False})
    cursor, commands, passages = step_traced(
        spec, None, Start(now=T0, facts=facts, contact_id="c-1")
    )
    assert [(p.step_id, p.kind, p.outcome) for p in passages] == [
        ("is-vip", "branch", "else -> wp"),
        ("wp", "send", ""),
    ]
    # The plain step() gives the same cursor and commands, without the passages.
    assert step(spec, None, Start(now=T0, facts=facts, contact_id="c-1")) == (cursor, commands)

    cursor, _, passages = step_traced(
        spec, cursor, DeliveryResult(now=T0, facts=facts, step_id="wp", ok=True)
    )
    assert [(p.step_id, p.kind, p.outcome) for p in passages] == [
        ("wp", "send", "ok"),
        ("pause", "wait", ""),
    ]
    later = T0 + timedelta(days=1)
    timer = cursor.waiting.timer_id if cursor.waiting else ""
    cursor, _, passages = step_traced(
        spec, cursor, TimerFired(now=later, facts=Facts(now=later), timer_id=timer or "")
    )
    assert [p.step_id for p in passages] == ["video"]
    cursor, _, passages = step_traced(
        spec,
        cursor,
        DeliveryResult(
            now=later,
            facts=Facts(now=later),
            step_id="video",
            ok=False,
            permanent_error="hard_bounce",
        ),
    )
    assert [(p.step_id, p.outcome) for p in passages] == [("video", "failed: hard_bounce")]
    assert cursor.status == "exited"


def test_a_stale_input_passes_nothing(ctx):
    spec = _journey(ctx)
    cursor, _, _ = step_traced(spec, None, Start(now=T0, facts=Facts(now=T0), contact_id="c-1"))
    again = step_traced(
        spec, cursor, TimerFired(now=T0, facts=Facts(now=T0), timer_id="no-such-timer")
    )
    assert again == (cursor, (), ())


def test_a_holdout_arm_is_recorded_by_its_exit_reason(ctx):
    spec = compile_journey(
        Journey(
            "held",
            entry=stage_entered("suspect"),
            steps=[holdout(50), send("wp", id="wp", next=END)],
        ),
        ctx,
    )
    arms: dict[str, int] = {}
    for n in range(40):
        cursor, _, passages = step_traced(
            spec, None, Start(now=T0, facts=Facts(now=T0), contact_id=f"c-{n}")
        )
        record = EnrolmentRecord(
            f"c-{n}",
            "held",
            spec.version,
            1,
            cursor.status,
            cursor.reason or "",
            T0,
            T0,
            [p.to_dict() for p in passages],
        )
        arm = record.arms()["holdout"]
        arms[arm] = arms.get(arm, 0) + 1
        assert (arm == "holdout") == (cursor.status == "exited"), (arm, cursor)
    assert set(arms) == {"holdout", "wp"}
