"""The bundled example definitions: what the engine runs when no project names its own.

A marketing team's repository names its own ``Definitions`` (``stagecoach init`` writes
one; ``docs/authoring/projects.md``). Without one, the engine runs these, picked by
``STAGECOACH_PIPELINE``: the seven-stage lifecycle with its four journeys (``default``),
or the four-step B2B funnel with the journeys that fit its stages (``b2b_funnel``).
"""

from __future__ import annotations

from stagecoach.engine.domain.definitions import Definitions
from stagecoach.workflows.events import CATALOG
from stagecoach.workflows.journeys import JOURNEYS
from stagecoach.workflows.journeys.nps_survey import NPS_SURVEY
from stagecoach.workflows.journeys.value_nurture import VALUE_NURTURE
from stagecoach.workflows.pipeline import B2B_FUNNEL, DEFAULT

SEVEN_STAGE = Definitions(
    name="seven-stage lifecycle (bundled example)",
    pipeline=DEFAULT,
    events=CATALOG,
    journeys=JOURNEYS,
)
"""Suspect to advocate, with the B2B nurture, onboarding, NPS survey and value nurture."""

B2B = Definitions(
    name="four-step B2B funnel (bundled example)",
    pipeline=B2B_FUNNEL,
    events=CATALOG,
    # The nurture and onboarding journeys enter at the seven-stage pipeline's stages;
    # these two enter on events, which the funnel's contacts send too.
    journeys=[NPS_SURVEY, VALUE_NURTURE],
)
"""Verification, development, proposal, closing."""

BUNDLED: dict[str, Definitions] = {DEFAULT.name: SEVEN_STAGE, B2B_FUNNEL.name: B2B}
"""The bundled definitions by pipeline name, which ``STAGECOACH_PIPELINE`` picks."""
