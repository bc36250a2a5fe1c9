"""The propensity retrain: a Temporal Schedule starts a small workflow whose one
activity trains, calibrates and publishes a model version and rescores every contact.

The activities are loaded on first use, never by importing this package: the workflow
sandbox imports the package afresh for each run, and scikit-learn, DuckDB and the
database have no place there (as for ``stagecoach.workflows.contact``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stagecoach.workflows.prediction.workflow import PropensityRetrainWorkflow

if TYPE_CHECKING:
    from stagecoach.workflows.prediction.activities import PredictionActivities

__all__ = ["PredictionActivities", "PropensityRetrainWorkflow"]


def __getattr__(name: str) -> Any:
    if name == "PredictionActivities":
        from stagecoach.workflows.prediction.activities import PredictionActivities

        return PredictionActivities
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
