"""The "moved enough" rule: which rescored contacts get a ``propensity.scored`` event."""

from __future__ import annotations

import pytest

from stagecoach import Definitions, Segment
from stagecoach.engine.domain.conditions import trait
from stagecoach.engine.domain.propensity import SignalRule, scored_traits
from stagecoach.workflows.definitions import SEVEN_STAGE

RULE = SignalRule()  # step 0.05, bands 0.2 / 0.5 / 0.8, two decimals


@pytest.mark.parametrize(
    ("previous", "current", "moved"),
    [
        (None, 0.0, True),  # never sent: the first score is always sent
        (None, 0.31, True),
        (0.31, 0.31, False),  # unchanged
        (0.31, 0.3149, False),  # rounds to the value already sent
        (0.31, 0.35, False),  # 0.04: below the step, same band
        (0.30, 0.35, True),  # exactly one step (0.0499... in binary)
        (0.40, 0.35, True),  # a step down
        (0.60, 0.66, True),
        (0.48, 0.50, True),  # crosses the 0.5 edge: sent though below the step
        (0.50, 0.49, True),  # and back
        (0.49, 0.4951, True),  # rounds to 0.50: on the edge counts as above it
        (0.21, 0.24, False),
        (0.81, 0.79, True),
    ],
)
def test_a_score_is_sent_when_it_moved_a_step_or_crossed_a_band(
    previous: float | None, current: float, moved: bool
) -> None:
    assert RULE.moved(previous, current) is moved


def test_small_drifts_add_up_until_they_are_sent() -> None:
    sent = 0.30
    drift = [0.31, 0.32, 0.33, 0.34, 0.35]
    told = []
    for p in drift:
        if RULE.moved(sent, p):
            told.append(p)
            sent = RULE.rounded(p)
    assert told == [0.35]


def test_the_step_and_bands_are_declared() -> None:
    fine = SignalRule(step=0.1, bands=())
    assert not fine.moved(0.48, 0.52)
    assert fine.moved(0.45, 0.55)
    assert SignalRule(step=0.5, bands=(0.9,)).moved(0.89, 0.9)


def test_traits_are_rounded_and_clamped() -> None:
    assert scored_traits(RULE, 0.123456, 3, "2026-12-07T00:00:00+00:00") == {
        "propensity": 0.12,
        "propensity_version": 3,
        "propensity_as_of": "2026-12-07T00:00:00+00:00",
    }
    assert RULE.rounded(1.0000001) == 1.0
    assert RULE.rounded(-0.0) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"step": 0}, "step: 0 is not in"),
        ({"step": 1.5}, "step: 1.5 is not in"),
        ({"bands": (0.5, 0.2)}, "must be increasing"),
        ({"bands": (0.5, 0.5)}, "must be increasing"),
        ({"bands": (1.0,)}, "between 0 and 1"),
        ({"places": 0}, "places: 0"),
    ],
)
def test_a_bad_rule_names_the_field_and_the_fix(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SignalRule(**kwargs)  # type: ignore[arg-type]


def test_a_segment_may_read_propensity_in_a_project_that_declares_its_traits() -> None:
    defs = Definitions(
        pipeline=SEVEN_STAGE.pipeline,
        events=SEVEN_STAGE.events,
        segments=(
            Segment("likely", when=trait("propensity", "gte", 0.5)),
            Segment("typo", when=trait("propensty", "gte", 0.5)),
        ),
        traits=["industry"],
    )
    found = "\n".join(str(p) for p in defs.problems())
    assert "likely:" not in found
    assert "typo: trait 'propensty' is not declared" in found
