"""One workflow per broadcast: the audience snapshotted once, then batches as activities
(``activities``), paced by send times, paused, resumed and cancelled by signals.

The activities are loaded on first use, never by importing this package: the workflow
sandbox imports the package afresh for each run, and the activities' database and
connector imports have no place there (as for ``stagecoach.workflows.contact``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stagecoach.workflows.broadcasts.workflow import BroadcastWorkflow

if TYPE_CHECKING:
    from stagecoach.workflows.broadcasts.activities import BroadcastActivities

__all__ = ["BroadcastActivities", "BroadcastWorkflow"]


def __getattr__(name: str) -> Any:
    if name == "BroadcastActivities":
        from stagecoach.workflows.broadcasts.activities import BroadcastActivities

        return BroadcastActivities
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
