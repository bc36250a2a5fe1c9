"""The workflow the value-refresh Schedule starts: one activity, retried a little.

It holds no state and makes no decision: a run is the activity's summary (the value
run's version, customers scored, events sent, orders left out), kept in the workflow's
result where ``temporal schedule describe`` and the Web UI show it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from stagecoach.engine.protocol import VALUE_REFRESH_ACTIVITY, VALUE_REFRESH_WORKFLOW


@workflow.defn(name=VALUE_REFRESH_WORKFLOW)
class ValueRefreshWorkflow:
    @workflow.run
    async def run(self) -> dict[str, Any]:
        result: dict[str, Any] = await workflow.execute_activity(
            VALUE_REFRESH_ACTIVITY,
            # Reading every order and fitting BG/NBD on a million customers takes minutes;
            # a database busy with another long job waits its turn.
            start_to_close_timeout=timedelta(hours=1),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(minutes=1),
                maximum_attempts=3,
            ),
            summary="refresh customer value",
        )
        return result
