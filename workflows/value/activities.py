"""The value-refresh activity: value every customer, store the run, send the changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from temporalio import activity

from stagecoach.engine.domain.definitions import Definitions
from stagecoach.engine.protocol import VALUE_REFRESH_ACTIVITY


class ValueActivities:
    """Activities of the value-refresh workflow, with the database and the project's
    definitions (read at each run, so a republished project's value model applies)."""

    def __init__(self, *, db: Engine, definitions: Callable[[], Definitions]) -> None:
        self._db = db
        self._definitions = definitions

    def all(self) -> list[Callable[..., object]]:
        return [self.refresh]

    @activity.defn(name=VALUE_REFRESH_ACTIVITY)
    def refresh(self) -> dict[str, Any]:
        """Run the value refresh as ``stagecoach value refresh`` does (with the project's
        catalog, as of now) and return its summary. Too little history is not an error:
        the run still gives tiers and RFM and says why there is no CLV."""
        from stagecoach.engine.services.value import refresh_values

        result = refresh_values(self._db, self._definitions())
        run = result.run
        summary = run.summary
        answer: dict[str, Any] = {
            "version": run.version,
            "status": run.status,
            "as_of": run.as_of.isoformat(),
            "scored": result.scored,
            "sent": result.signalled,
            "orders_left_out": summary.get("orders_left_out", 0),
            "left_out": summary.get("left_out", {}),
            "notes": summary.get("notes", []),
        }
        activity.logger.info(
            "value refresh %s: %s, %s scored, %s sent",
            run.version,
            run.status,
            result.scored,
            result.signalled,
        )
        return answer
