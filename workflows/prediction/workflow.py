"""The retrain workflow the propensity Schedule starts: one activity, retried a little.

It holds no state and makes no decision: a run is the activity's answer (published, the
version and its metrics, or why nothing was published), kept in the workflow's result
where ``temporal schedule describe`` and the Web UI show it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from stagecoach.engine.protocol import (
        PROPENSITY_RETRAIN_ACTIVITY,
        PROPENSITY_RETRAIN_WORKFLOW,
    )


@workflow.defn(name=PROPENSITY_RETRAIN_WORKFLOW)
class PropensityRetrainWorkflow:
    @workflow.run
    async def run(self) -> dict[str, Any]:
        result: dict[str, Any] = await workflow.execute_activity(
            PROPENSITY_RETRAIN_ACTIVITY,
            # A million contacts train and score in minutes; a store locked by a long
            # report sync waits its turn.
            start_to_close_timeout=timedelta(hours=1),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(minutes=1),
                maximum_attempts=3,
            ),
            summary="retrain propensity",
        )
        return result
