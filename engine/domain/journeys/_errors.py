"""Journey errors, under the project's one exception tree.

StagecoachError                 (stagecoach.engine.domain.errors)
 +-- JourneyError
      +-- JourneyValidationError   a journey failed validation; lists every problem
      +-- SpecFormatError          a stored spec does not decode or its version lies
      +-- JourneyRuntimeError      the interpreter was driven wrongly
           +-- StepBudgetExceeded  instant steps looped without reaching a wait
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stagecoach.engine.domain.errors import StagecoachError


class JourneyError(StagecoachError):
    """Base of every journey failure."""


@dataclass(frozen=True)
class Problem:
    """One validation finding: where it is, what is wrong and how to fix it.

    Attributes:
        journey: The journey's name.
        step: The step id, or a journey-level place such as ``"entry"`` or ``"goal"``.
        message: What is wrong.
        fix: What the marketer should change.
    """

    journey: str
    step: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"journey {self.journey!r}, {self.step}: {self.message}. Fix: {self.fix}"


class JourneyValidationError(JourneyError):
    """A journey has one or more problems; ``problems`` lists all of them."""

    def __init__(self, journey: str, problems: Sequence[Problem]) -> None:
        self.journey = journey
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        count = len(self.problems)
        super().__init__(
            f"journey {journey!r} has {count} problem{'s' if count != 1 else ''}:\n{lines}",
            fix="fix each problem listed above, then compile again",
        )


class SpecFormatError(JourneyError):
    """A journey spec (JSON) cannot be decoded, or its content does not match its version."""


class JourneyRuntimeError(JourneyError):
    """The interpreter was given an input it cannot accept (a programming error upstream)."""


class StepBudgetExceeded(JourneyRuntimeError):
    """Instant steps ran more times than the budget allows without reaching a wait."""
