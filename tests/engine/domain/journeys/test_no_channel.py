"""A send with no usable channel does what the journey declares: wait for one up to a
limit (the default), skip the send, or exit with a reason. Declared on the journey or on
one send; bad declarations are refused with the journey, the step and the fix."""

from __future__ import annotations

from datetime import timedelta

import pytest

from stagecoach.engine.domain.conditions import Facts
from stagecoach.engine.domain.journeys import (
    NO_CHANNEL_WAIT,
    CancelTimer,
    ChannelReady,
    Cursor,
    Deliver,
    DeliveryResult,
    Exit,
    Journey,
    JourneySpec,
    JourneyValidationError,
    NoChannel,
    SpecFormatError,
    Start,
    StartTimer,
    TimerFired,
    ValidationContext,
    compile_journey,
    send,
    stage_entered,
    step,
    wait,
)
from tests.engine.domain.journeys.conftest import T0


def _journey(**declared: object) -> Journey:
    on_send = declared.pop("on_send", None)
    return Journey(
        "reach",
        entry=stage_entered("suspect"),
        steps=[
            send("wp", id="first", on_no_channel=on_send),  # type: ignore[arg-type]
            wait(days=1, id="pause"),
            send("video", id="second"),
        ],
        **declared,  # type: ignore[arg-type]
    )


def _facts(offset: timedelta = timedelta(0)) -> Facts:
    return Facts(now=T0 + offset, stage="suspect")


def _unreachable(spec: JourneySpec) -> tuple[Cursor, list[object]]:
    """Start, and answer the first send with "no channel" as the workflow does."""
    cursor, commands = step(spec, None, Start(now=T0, facts=_facts(), contact_id="c1"))
    assert isinstance(commands[0], Deliver)
    cursor, more = step(
        spec,
        cursor,
        DeliveryResult(
            now=T0,
            facts=_facts(),
            step_id="first",
            ok=False,
            permanent_error="no_address:preferred",
            no_channel=True,
        ),
    )
    return cursor, list(more)


def test_by_default_a_send_waits_thirty_days_for_a_channel_then_sends_under_its_key(
    ctx: ValidationContext,
) -> None:
    spec = compile_journey(_journey(), ctx)
    first = step(spec, None, Start(now=T0, facts=_facts(), contact_id="c1"))[1][0]
    cursor, commands = _unreachable(spec)
    assert cursor.active
    assert cursor.waiting is not None
    assert (cursor.waiting.kind, cursor.waiting.step_id) == ("channel", "first")
    [timer] = commands
    assert isinstance(timer, StartTimer)
    assert timer.timer_id.startswith("channel:first:")
    assert timer.fire_at == T0 + NO_CHANNEL_WAIT == T0 + timedelta(days=30)

    later = timedelta(hours=2)
    ready, sent = step(
        spec, cursor, ChannelReady(now=T0 + later, facts=_facts(later), step_id="first")
    )
    cancel, deliver = sent
    assert cancel == CancelTimer(timer.timer_id)
    assert isinstance(deliver, Deliver)
    assert isinstance(first, Deliver)
    assert deliver.idempotency_key == first.idempotency_key  # never attempted: same send
    assert ready.waiting is not None
    assert ready.waiting.kind == "delivery"


def test_a_wait_that_reaches_its_limit_exits_with_no_channel(ctx: ValidationContext) -> None:
    spec = compile_journey(_journey(on_no_channel=NoChannel.wait(days=3)), ctx)
    cursor, [timer] = _unreachable(spec)
    assert isinstance(timer, StartTimer)
    assert timer.fire_at == T0 + timedelta(days=3)
    # A stale "ready" for another step changes nothing.
    same, nothing = step(spec, cursor, ChannelReady(now=T0, facts=_facts(), step_id="second"))
    assert (same, nothing) == (cursor, ())
    three = timedelta(days=3)
    ended, commands = step(
        spec, cursor, TimerFired(now=T0 + three, facts=_facts(three), timer_id=timer.timer_id)
    )
    assert (ended.status, ended.reason) == ("exited", "no_channel")
    assert commands == (Exit("no_channel"),)


def test_skip_carries_on_without_the_send(ctx: ValidationContext) -> None:
    spec = compile_journey(_journey(on_no_channel="skip"), ctx)
    cursor, commands = _unreachable(spec)
    assert cursor.step_id == "pause"
    assert [type(c).__name__ for c in commands] == ["StartTimer"]


def test_exit_leaves_with_the_declared_reason_and_a_send_overrides_the_journey(
    ctx: ValidationContext,
) -> None:
    spec = compile_journey(
        _journey(on_no_channel=NoChannel.skip(), on_send=NoChannel.exit("unreachable")), ctx
    )
    cursor, commands = _unreachable(spec)
    assert (cursor.status, cursor.reason) == ("exited", "unreachable")
    assert commands == [Exit("unreachable")]


def test_a_failure_the_workflow_does_not_call_no_channel_still_fails_the_step(
    ctx: ValidationContext,
) -> None:
    """Runs started before the declaration existed answer without ``no_channel``."""
    spec = compile_journey(_journey(), ctx)
    cursor, _ = step(spec, None, Start(now=T0, facts=_facts(), contact_id="c1"))
    ended, _ = step(
        spec,
        cursor,
        DeliveryResult(
            now=T0, facts=_facts(), step_id="first", ok=False, permanent_error="no_address:email"
        ),
    )
    assert (ended.status, ended.reason) == ("exited", "delivery_failed: first: no_address:email")


def test_an_undeclared_journey_keeps_the_version_it_always_had(ctx: ValidationContext) -> None:
    plain = compile_journey(_journey(), ctx)
    assert "on_no_channel" not in plain.to_dict()
    assert all("on_no_channel" not in s for s in plain.to_dict()["steps"])
    declared = compile_journey(_journey(on_no_channel=NoChannel.wait(days=7)), ctx)
    assert declared.version != plain.version
    again = JourneySpec.from_dict(declared.to_dict())
    assert again == declared
    assert again.on_no_channel == NoChannel("wait", timedelta(days=7))


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"on_no_channel": "skp"}, "journey: on_no_channel action 'skp' is unknown"),
        (
            {"on_no_channel": NoChannel.wait(timedelta(0))},
            "journey: on_no_channel waits a limit that is not positive",
        ),
        (
            {"on_send": NoChannel.exit("")},
            "step 'first': on_no_channel exit has an empty reason",
        ),
        (
            {"on_send": NoChannel.wait(days=40_000)},
            "step 'first': on_no_channel waits 40000 days, longer than 36500 days",
        ),
        (
            {"on_send": NoChannel("skip", reason="why")},
            "step 'first': on_no_channel skip takes no reason",
        ),
        (
            {"on_send": NoChannel("exit", timedelta(days=1), "gone")},
            "step 'first': on_no_channel exit takes no limit",
        ),
        (
            {"on_send": NoChannel("wait", 30)},  # type: ignore[arg-type]
            "step 'first': on_no_channel limit 30 is not a timedelta",
        ),
    ],
)
def test_bad_declarations_are_refused_with_the_place_and_the_fix(
    ctx: ValidationContext, declared: dict[str, object], message: str
) -> None:
    with pytest.raises(JourneyValidationError) as caught:
        compile_journey(_journey(**declared), ctx)
    text = str(caught.value)
    assert message in text
    assert "Fix: " in text


def test_a_declaration_of_the_wrong_type_is_refused_where_it_is_written() -> None:
    with pytest.raises(TypeError, match=r"on_no_channel=30 is not a declaration: use NoChannel"):
        send("wp", on_no_channel=30)  # type: ignore[arg-type]


def test_a_stored_spec_with_an_unknown_action_does_not_decode(ctx: ValidationContext) -> None:
    raw = compile_journey(_journey(on_no_channel="exit"), ctx).to_dict()
    raw["on_no_channel"]["action"] = "teleport"
    with pytest.raises(SpecFormatError, match="'teleport' is unknown"):
        JourneySpec.from_dict(raw)
