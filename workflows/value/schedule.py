"""The Temporal Schedule that runs the customer-value refresh (not cron: the server keeps
the schedule, its missed runs and its history, and ``stagecoach value refresh
--schedule-now`` or ``temporal schedule trigger`` runs it now)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowExecutionStatus,
)

from stagecoach.engine.protocol import VALUE_REFRESH_WORKFLOW, VALUE_SCHEDULE_ID


def schedule_id(task_queue: str) -> str:
    return f"{VALUE_SCHEDULE_ID}-{task_queue}"


def _schedule(task_queue: str, every: timedelta) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            VALUE_REFRESH_WORKFLOW,
            id=f"value-refresh-{task_queue}",
            task_queue=task_queue,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        # One refresh at a time; a run still going when the next is due makes it skip
        # (two at once would both send the same customers' changes).
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_value_schedule(
    client: Client, *, task_queue: str, every: timedelta
) -> ScheduleHandle:
    """Create the value-refresh Schedule, or bring an existing one to ``every``: every
    worker calls this at start, and the first one creates it."""
    if every <= timedelta(0):
        raise ValueError("the value refresh interval must be positive")
    sid = schedule_id(task_queue)
    wanted = _schedule(task_queue, every)
    try:
        return await client.create_schedule(sid, wanted)
    except ScheduleAlreadyRunningError:
        handle = client.get_schedule_handle(sid)

        def update(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=wanted)

        await handle.update(update)
        return handle


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
