"""The system check: a tiny workflow that proves a worker is alive end to end.

``stagecoach doctor --deep`` runs it on the task queue; the smoke tests run it on the
real dev server. It exercises what every contact workflow needs: a workflow task, an
activity task, and the database the activities write to.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from sqlalchemy import Engine

    from stagecoach.engine.domain.errors import DatabaseError
    from stagecoach.engine.protocol import CHECK_DATABASE_ACTIVITY, SYSTEM_CHECK_WORKFLOW
    from stagecoach.engine.protocol.messages import SystemCheckInput, SystemCheckResult
    from stagecoach.engine.services.storage import check_connection


class SystemActivities:
    """Activities for the system check, with the database (``db``) injected."""

    def __init__(self, db: Engine) -> None:
        self._db = db

    @activity.defn(name=CHECK_DATABASE_ACTIVITY)
    def check_database(self, _: SystemCheckInput) -> SystemCheckResult:
        try:
            check_connection(self._db)
        except DatabaseError as exc:
            return SystemCheckResult(database_ok=False, database_detail=exc.one_line())
        return SystemCheckResult(database_ok=True, database_detail=self._db.dialect.name)

    def all(self) -> list[Callable[..., object]]:
        return [self.check_database]


@workflow.defn(name=SYSTEM_CHECK_WORKFLOW)
class SystemCheckWorkflow:
    @workflow.run
    async def run(self, request: SystemCheckInput) -> SystemCheckResult:
        result: SystemCheckResult = await workflow.execute_activity(
            CHECK_DATABASE_ACTIVITY,
            request,
            result_type=SystemCheckResult,
            start_to_close_timeout=timedelta(seconds=10),
        )
        result.task_queue = workflow.info().task_queue
        return result
