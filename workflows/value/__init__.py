"""The scheduled customer-value refresh: a Temporal Schedule starts a small workflow
whose one activity runs the value refresh (``stagecoach.engine.services.value``).

The activities are loaded on first use, never by importing this package: the workflow
sandbox imports the package afresh for each run, and the database and the BTYD models
have no place there (as for ``stagecoach.workflows.prediction``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stagecoach.workflows.value.workflow import ValueRefreshWorkflow

if TYPE_CHECKING:
    from stagecoach.workflows.value.activities import ValueActivities

__all__ = ["ValueActivities", "ValueRefreshWorkflow"]


def __getattr__(name: str) -> Any:
    if name == "ValueActivities":
        from stagecoach.workflows.value.activities import ValueActivities

        return ValueActivities
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
