"""When a contact's conversion propensity is worth telling its workflow about.

A retrain rescores every candidate; most scores drift by a hair. Each ``propensity.scored``
event is a signal (a Temporal action and a few history events), so a contact is told
only when its score has *moved enough* since the value it was last sent:

- it was never sent one (first score), or
- it moved by at least ``step`` (0.05 by default), or
- it crossed one of the declared ``bands`` (0.2, 0.5 and 0.8 by default), so a segment
  written on a band edge (``trait("propensity", "gte", 0.5)``) sees the crossing even
  when it is smaller than the step.

The values compared are the ones sent, rounded to ``places`` decimals: small drifts add
up until they are sent, and an unchanged score never sends anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROPENSITY_SCORED = "propensity.scored"
"""The event that carries a contact's propensity traits to its workflow."""

TRAITS = ("propensity", "propensity_version", "propensity_as_of")
"""The computed traits a retrain sets on each contact it signals. Never model features:
the model would learn from its own earlier answers."""


@dataclass(frozen=True)
class SignalRule:
    """How far a score must move before a new ``propensity.scored`` event is sent."""

    step: float = 0.05
    bands: tuple[float, ...] = (0.2, 0.5, 0.8)
    places: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.step <= 1:
            raise ValueError(f"step: {self.step!r} is not in (0, 1]; use e.g. 0.05")
        if any(not 0 < b < 1 for b in self.bands):
            raise ValueError(f"bands: {self.bands!r} must each be between 0 and 1; e.g. (0.5,)")
        if list(self.bands) != sorted(set(self.bands)):
            raise ValueError(f"bands: {self.bands!r} must be increasing, without repeats")
        if not 1 <= self.places <= 6:
            raise ValueError(f"places: {self.places!r} is not 1 to 6; use 2")

    def rounded(self, probability: float) -> float:
        return round(min(max(float(probability), 0.0), 1.0), self.places)

    def band(self, probability: float) -> int:
        """How many band edges lie at or below ``probability``."""
        return sum(1 for edge in self.bands if probability >= edge)

    def moved(self, previous: float | None, current: float) -> bool:
        """Whether ``current`` (rounded) is worth sending, given the value last sent."""
        now = self.rounded(current)
        if previous is None:
            return True
        # The tolerance keeps 0.35 - 0.30 (0.04999... in binary) a full step.
        return abs(now - previous) >= self.step - 1e-9 or self.band(now) != self.band(previous)


def scored_traits(rule: SignalRule, probability: float, version: int, as_of: str) -> dict[str, Any]:
    """The traits a ``propensity.scored`` event sets on the contact."""
    return {
        "propensity": rule.rounded(probability),
        "propensity_version": version,
        "propensity_as_of": as_of,
    }
