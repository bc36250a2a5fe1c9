"""The Temporal Schedule that retrains the propensity model (not cron: the server keeps
the schedule, its missed runs and its history, and ``temporal schedule trigger`` runs it
now)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import (
    Client,
    ScheduleHandle,
)

from stagecoach.engine.protocol import PROPENSITY_RETRAIN_WORKFLOW, PROPENSITY_SCHEDULE_ID
from stagecoach.workflows.schedules import ensure_interval_schedule


def schedule_id(task_queue: str) -> str:
    return f"{PROPENSITY_SCHEDULE_ID}-{task_queue}"


async def ensure_retrain_schedule(
    client: Client, *, task_queue: str, every: timedelta
) -> ScheduleHandle:
    """Create the retrain Schedule, or bring an existing one to ``every``: every worker
    calls this at start, and the first one creates it."""
    if every <= timedelta(0):
        raise ValueError("the retrain interval must be positive")
    return await ensure_interval_schedule(
        client,
        schedule_id(task_queue),
        workflow=PROPENSITY_RETRAIN_WORKFLOW,
        workflow_id=f"propensity-retrain-{task_queue}",
        task_queue=task_queue,
        every=every,
    )
