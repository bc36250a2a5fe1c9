"""Net Promoter Score (pure): classify an answer, and score a set of answers.

9-10 promoter, 7-8 passive, 0-6 detractor; NPS = % promoters - % detractors, from -100
to 100. ``nps_by`` groups answers by touchpoint and period for the analytics reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Category = Literal["promoter", "passive", "detractor"]


def classify(score: int) -> Category:
    """The standard NPS category of a 0-10 answer.

    Raises:
        ValueError: ``score`` is not a whole number from 0 to 10.
    """
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 10:
        raise ValueError(f"an NPS answer is a whole number from 0 to 10, not {score!r}")
    if score >= 9:
        return "promoter"
    if score >= 7:
        return "passive"
    return "detractor"


@dataclass(frozen=True)
class NpsResult:
    """Counts and the score of a set of answers."""

    answers: int
    promoters: int
    passives: int
    detractors: int

    @property
    def score(self) -> float | None:
        """% promoters - % detractors; ``None`` without answers."""
        if not self.answers:
            return None
        return round(100 * (self.promoters - self.detractors) / self.answers, 1)


def nps(scores: Iterable[int]) -> NpsResult:
    """Score a set of 0-10 answers."""
    counts = {"promoter": 0, "passive": 0, "detractor": 0}
    total = 0
    for value in scores:
        counts[classify(value)] += 1
        total += 1
    return NpsResult(total, counts["promoter"], counts["passive"], counts["detractor"])


@dataclass(frozen=True)
class Answer:
    """One answer: its score, when, and the touchpoint the survey followed."""

    score: int
    at: datetime
    touchpoint: str = ""


def nps_by(
    answers: Iterable[Answer],
    *,
    period: Callable[[datetime], str] = lambda at: at.strftime("%Y-%m"),
) -> Mapping[tuple[str, str], NpsResult]:
    """NPS per (touchpoint, period); the period defaults to the calendar month."""
    grouped: dict[tuple[str, str], list[int]] = {}
    for answer in answers:
        grouped.setdefault((answer.touchpoint, period(answer.at)), []).append(answer.score)
    return {key: nps(scores) for key, scores in sorted(grouped.items())}
