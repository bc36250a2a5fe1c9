"""The Temporal Schedule that runs the customer-value refresh (not cron: the server keeps
the schedule, its missed runs and its history, and ``stagecoach value refresh
--schedule-now`` or ``temporal schedule trigger`` runs it now)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleHandle,
    WorkflowExecutionStatus,
)

from stagecoach.engine.protocol import VALUE_REFRESH_WORKFLOW, VALUE_SCHEDULE_ID
from stagecoach.workflows.schedules import ensure_interval_schedule


def schedule_id(task_queue: str) -> str:
    return f"{VALUE_SCHEDULE_ID}-{task_queue}"


async def ensure_value_schedule(
    client: Client, *, task_queue: str, every: timedelta
) -> ScheduleHandle:
    """Create the value-refresh Schedule, or bring an existing one to ``every``: every
    worker calls this at start, and the first one creates it."""
    if every <= timedelta(0):
        raise ValueError("the value refresh interval must be positive")
    return await ensure_interval_schedule(
        client,
        schedule_id(task_queue),
        workflow=VALUE_REFRESH_WORKFLOW,
        workflow_id=f"value-refresh-{task_queue}",
        task_queue=task_queue,
        every=every,
    )


def started_by(actions: Any) -> list[str]:
    """The workflow ids a Schedule's recent actions started, oldest first."""
    return [
        a.action.workflow_id
        for a in actions
        if isinstance(a.action, ScheduleActionExecutionStartWorkflow)
    ]


async def trigger_and_wait(client: Client, handle: ScheduleHandle) -> dict[str, Any]:
    """Trigger the Schedule now and return the result of the run it starts (the caller
    bounds the wait, e.g. with ``asyncio.timeout``)."""
    before = set(started_by((await handle.describe()).info.recent_actions))
    await handle.trigger()
    while True:
        recent = (await handle.describe()).info.recent_actions
        new = [w for w in started_by(recent) if w not in before]
        if new:
            workflow = client.get_workflow_handle(new[-1])
            if (await workflow.describe()).status != WorkflowExecutionStatus.RUNNING:
                result: dict[str, Any] = await workflow.result()
                return result
        await asyncio.sleep(0.5)
