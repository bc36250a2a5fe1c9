"""Durations are written one way, as ``timedelta`` values; a wrong value is refused
where it is written, with the way to write it.

``wait(days=2)`` is the older spelling and still works: journeys written with it keep
their spec and version.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from stagecoach.engine.domain.journeys import (
    Journey,
    Step,
    compile_journey,
    send,
    stage_entered,
    wait,
    wait_for,
)


def test_the_older_days_spelling_compiles_to_the_same_spec(ctx):
    def journey(pause: Step) -> Journey:
        return Journey(
            "j", entry=stage_entered("suspect"), steps=[send("wp"), pause, send("video")]
        )

    canonical = compile_journey(journey(wait(timedelta(days=2))), ctx)
    older = compile_journey(journey(wait(days=2)), ctx)
    assert canonical.version == older.version
    assert [s.id for s in canonical.steps] == ["send-wp", "wait-2d", "send-video"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: wait("3d"), r"wait: '3d' is not a duration; write wait\(timedelta\(days=3\)\)"),  # type: ignore[call-overload]
        (lambda: wait(3), r"wait: 3 is not a duration"),  # type: ignore[call-overload]
        (lambda: wait(days="3"), r"wait: days='3', hours=0, minutes=0 must be numbers"),  # type: ignore[call-overload]
        (
            lambda: wait_for("order.paid", timeout=7),  # type: ignore[call-overload]
            r"wait_for: timeout: 7 is not a duration; write timeout=timedelta\(days=7\)",
        ),
        (
            lambda: wait_for("order.paid", timeout="7d"),  # type: ignore[call-overload]
            r"wait_for: timeout: '7d' is not a duration",
        ),
    ],
)
def test_a_duration_that_is_not_a_timedelta_is_refused_where_it_is_written(build, message):
    with pytest.raises(TypeError, match=message):
        build()
