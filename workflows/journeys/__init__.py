"""The marketers' journeys. Add a journey by writing a module here and listing it below.

Validate them all with ``compile_journeys(ctx)``; rehearse one with
``stagecoach.engine.domain.journeys.simulate``; draw one with
``stagecoach.engine.domain.journeys.to_mermaid``.
"""

from __future__ import annotations

from dataclasses import replace

from stagecoach.engine.domain.journeys import (
    Journey,
    JourneySpec,
    ValidationContext,
    compile_journey,
)

from .b2b_nurture import B2B_NURTURE
from .nps_survey import NPS_SURVEY
from .onboarding import ONBOARDING
from .value_nurture import VALUE_NURTURE

JOURNEYS: dict[str, Journey] = {
    j.name: j for j in (B2B_NURTURE, ONBOARDING, NPS_SURVEY, VALUE_NURTURE)
}
"""Every bundled journey by name."""


def compile_journeys(ctx: ValidationContext) -> dict[str, JourneySpec]:
    """Compile and validate every journey in ``JOURNEYS``.

    ``enrol`` targets are checked against ``JOURNEYS`` unless ``ctx`` names the known
    journeys itself.

    Raises:
        JourneyValidationError: For the first journey with problems (all of its problems).
    """
    if ctx.known_journeys is None:
        ctx = replace(ctx, known_journeys=frozenset(JOURNEYS))
    return {name: compile_journey(j, ctx) for name, j in JOURNEYS.items()}


__all__ = ["B2B_NURTURE", "JOURNEYS", "ONBOARDING", "compile_journeys"]
