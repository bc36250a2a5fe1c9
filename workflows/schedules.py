"""Create-or-update for the interval Schedules the worker keeps (the propensity retrain,
the customer-value refresh): every worker calls it at start, and the first one creates
the Schedule; the others bring it to the interval they were given."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)


async def ensure_interval_schedule(
    client: Client, schedule_id: str, *, workflow: str, workflow_id: str, task_queue: str,
    every: timedelta,
) -> ScheduleHandle:  # fmt: skip
    """Start ``workflow`` every ``every``, one run at a time: a run still going when the
    next is due makes it skip (two at once would do the same work twice)."""
    wanted = Schedule(
        action=ScheduleActionStartWorkflow(workflow, id=workflow_id, task_queue=task_queue),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        return await client.create_schedule(schedule_id, wanted)
    except ScheduleAlreadyRunningError:
        handle = client.get_schedule_handle(schedule_id)

        def update(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=wanted)

        await handle.update(update)
        return handle
