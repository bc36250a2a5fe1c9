"""The bundled journeys: the lifecycle example's (``examples/lifecycle/lifecycle/journeys``).

A team adds journeys in its own project (``stagecoach init``; ``docs/authoring/projects.md``),
never here. This module re-exports the lifecycle example's journeys for the engine's own
tests and the documentation generator. Validate them all with ``compile_journeys(ctx)``;
rehearse one with ``stagecoach.engine.domain.journeys.simulate``; draw one with
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
from stagecoach.examples.lifecycle.lifecycle.definitions import defs
from stagecoach.examples.lifecycle.lifecycle.journeys.b2b_nurture import B2B_NURTURE
from stagecoach.examples.lifecycle.lifecycle.journeys.onboarding import ONBOARDING

JOURNEYS: dict[str, Journey] = dict(defs.journeys_by_name)
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
    # The win-back journey enters on the dormant state, which a context built from the
    # stage names alone does not hold: the project's definitions check it against its
    # pipeline's states.
    ctx = replace(ctx, stages=ctx.stages | frozenset(defs.pipeline.states))
    return {name: compile_journey(j, ctx) for name, j in JOURNEYS.items()}


__all__ = ["B2B_NURTURE", "JOURNEYS", "ONBOARDING", "compile_journeys"]
