"""NPS classification and scoring."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stagecoach.engine.domain.nps import Answer, classify, nps, nps_by


@pytest.mark.parametrize(
    ("score", "category"),
    [
        (0, "detractor"),
        (6, "detractor"),
        (7, "passive"),
        (8, "passive"),
        (9, "promoter"),
        (10, "promoter"),
    ],
)
def test_classify(score: int, category: str) -> None:
    assert classify(score) == category


@pytest.mark.parametrize("bad", [-1, 11, 7.5, True, "9"])
def test_an_answer_outside_0_to_10_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="0 to 10"):
        classify(bad)  # type: ignore[arg-type]


def test_nps_is_promoters_minus_detractors() -> None:
    result = nps([10, 9, 9, 8, 7, 3, 0, 10, 6, 9])
    assert (result.promoters, result.passives, result.detractors) == (5, 2, 3)
    assert result.score == 20.0
    assert nps([]).score is None


def test_nps_by_touchpoint_and_month() -> None:
    answers = [
        Answer(10, datetime(2026, 10, 3, tzinfo=UTC), "onboarding"),
        Answer(2, datetime(2026, 10, 9, tzinfo=UTC), "onboarding"),
        Answer(9, datetime(2026, 11, 1, tzinfo=UTC), "onboarding"),
        Answer(8, datetime(2026, 11, 2, tzinfo=UTC), "ticket"),
    ]
    grouped = nps_by(answers)
    assert grouped[("onboarding", "2026-10")].score == 0.0
    assert grouped[("onboarding", "2026-11")].score == 100.0
    assert grouped[("ticket", "2026-11")].score == 0.0
