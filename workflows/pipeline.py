"""The bundled pipelines, by name: the example projects' own (``examples/``).

The seven-stage lifecycle (``DEFAULT``, ``examples/lifecycle``) and the four-step B2B
funnel (``B2B_FUNNEL``, ``examples/b2b_funnel``) are written in their example projects.
This module re-exports them for the engine's own tests, the documentation generator and
``STAGECOACH_PIPELINE``, which picks one by name (:func:`active_pipeline`). Edit the
example, not this file.
"""

from __future__ import annotations

from stagecoach.engine.domain.pipeline import Pipeline, PipelineDefinitionError
from stagecoach.examples.b2b_funnel.b2b_funnel.pipeline import B2B_FUNNEL
from stagecoach.examples.lifecycle.lifecycle.pipeline import (
    DEFAULT,
    GRADING,
    MQL,
    RECYCLE,
    ROUTING,
    SCORING,
)

PIPELINES: dict[str, Pipeline] = {p.name: p for p in (DEFAULT, B2B_FUNNEL)}
"""Every bundled pipeline by name; settings choose one of these keys."""


def active_pipeline(name: str) -> Pipeline:
    """The bundled pipeline called ``name``.

    Raises:
        PipelineDefinitionError: ``name`` is not in :data:`PIPELINES`; the message lists
            the choices.
    """
    try:
        return PIPELINES[name]
    except KeyError:
        raise PipelineDefinitionError(
            f"pipeline {name!r} is unknown; choose one of {', '.join(sorted(PIPELINES))}"
            " (set the pipeline setting to one of these names)"
        ) from None


__all__ = [
    "B2B_FUNNEL",
    "DEFAULT",
    "GRADING",
    "MQL",
    "PIPELINES",
    "RECYCLE",
    "ROUTING",
    "SCORING",
    "active_pipeline",
]
