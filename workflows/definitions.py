"""The bundled definitions: the example projects, run when no project names its own.

A marketing team's repository names its own ``Definitions`` (``stagecoach init`` writes
one; ``docs/authoring/projects.md``). Without one, the engine runs an example project
shipped in the package (``examples/`` in the checkout, ``stagecoach/examples`` in the
wheel), picked by ``STAGECOACH_PIPELINE``: the seven-stage lifecycle with its four
journeys (``default``, ``examples/lifecycle``), or the four-step B2B funnel with the
journeys written for it (``b2b_funnel``, ``examples/b2b_funnel``).

The examples are imported from the package (``stagecoach.examples.<name>.<name>``), so
they need nothing on ``sys.path``; each imports its own modules relatively, so the same
files also load as the project ``cd examples/<name>; stagecoach up`` runs.
"""

from __future__ import annotations

from stagecoach.engine.domain.definitions import Definitions
from stagecoach.examples.b2b_funnel.b2b_funnel.definitions import defs as B2B
from stagecoach.examples.lifecycle.lifecycle.definitions import defs as SEVEN_STAGE

BUNDLED: dict[str, Definitions] = {
    SEVEN_STAGE.pipeline.name: SEVEN_STAGE,
    B2B.pipeline.name: B2B,
}
"""The bundled definitions by pipeline name, which ``STAGECOACH_PIPELINE`` picks."""

__all__ = ["B2B", "BUNDLED", "SEVEN_STAGE"]
