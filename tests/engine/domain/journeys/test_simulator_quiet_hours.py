"""The simulator holds sends for quiet hours as the workflow does, so simulate and
rehearse tell the same story: the send goes out when quiet hours end, and an event that
arrives meanwhile finds the journey still on that step."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from stagecoach.engine.domain.conditions import EventRecord, event
from stagecoach.engine.domain.journeys import (
    Deliver,
    Journey,
    SimContact,
    ValidationContext,
    compile_journey,
    send,
    stage_entered,
    wait_for,
)
from stagecoach.engine.domain.journeys._simulator import simulate
from stagecoach.engine.domain.policy import SendPolicy

NIGHT = datetime(2026, 1, 5, 22, 0, tzinfo=UTC)  # 22:00 in UTC: quiet until 08:00
QUIET = SendPolicy(quiet_start=time(21, 0), quiet_end=time(8, 0))
CTX = ValidationContext(known_event_types=frozenset({"order.paid"}), stages=frozenset({"customer"}))
SPEC = compile_journey(
    Journey(
        "night",
        entry=stage_entered("customer"),
        goal=event("order.paid"),
        steps=[
            send("trial-invitation", id="invite"),
            wait_for("order.paid", timeout=timedelta(days=7), id="await-order", next="offer"),
            send("consultation-offer", id="offer"),
        ],
    ),
    CTX,
)


def _sends(result: object) -> list[tuple[timedelta, str | None, timedelta | None]]:
    return [
        (e.offset, e.command.content_id, e.held_until)
        for e in result.timeline  # type: ignore[attr-defined]
        if isinstance(e.command, Deliver)
    ]


def test_a_send_in_quiet_hours_goes_out_when_they_end() -> None:
    result = simulate(
        SPEC, SimContact(stage="customer"), [], timedelta(days=1), start=NIGHT, policy=QUIET
    )
    assert _sends(result)[0] == (timedelta(0), "trial-invitation", timedelta(hours=10))
    # The wait for the order starts after the send went out, not at 22:00.
    waits = [e.offset for e in result.timeline if type(e.command).__name__ == "WaitForEvent"]
    assert waits == [timedelta(hours=10)]


def test_quiet_hours_follow_the_contacts_time_zone() -> None:
    shanghai = SimContact(stage="customer", attributes={"timezone": "Asia/Shanghai"})
    # 22:00 UTC is 06:00 in Shanghai: quiet until 08:00 there, two hours later.
    result = simulate(SPEC, shanghai, [], timedelta(days=1), start=NIGHT, policy=QUIET)
    assert _sends(result)[0][2] == timedelta(hours=2)


def test_without_a_policy_nothing_is_held() -> None:
    result = simulate(SPEC, SimContact(stage="customer"), [], timedelta(days=1), start=NIGHT)
    assert _sends(result)[0] == (timedelta(0), "trial-invitation", None)


def test_an_event_during_the_hold_finds_the_journey_still_on_its_send() -> None:
    """The issue's rehearsal: the order arrives while the invitation is held. The goal
    completes the journey on it, so no consultation offer follows."""
    paid = (timedelta(hours=3), EventRecord("order.paid", NIGHT + timedelta(hours=3)))
    result = simulate(
        SPEC, SimContact(stage="customer"), [paid], timedelta(days=10), start=NIGHT, policy=QUIET
    )
    assert [c for _, c, _ in _sends(result)] == ["trial-invitation"]
    assert result.outcome.startswith("completed")
