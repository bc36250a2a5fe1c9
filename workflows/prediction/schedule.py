"""The Temporal Schedule that retrains the propensity model (not cron: the server keeps
the schedule, its missed runs and its history, and ``temporal schedule trigger`` runs it
now)."""

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

from stagecoach.engine.protocol import PROPENSITY_RETRAIN_WORKFLOW, PROPENSITY_SCHEDULE_ID


def schedule_id(task_queue: str) -> str:
    return f"{PROPENSITY_SCHEDULE_ID}-{task_queue}"


def _schedule(task_queue: str, every: timedelta) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            PROPENSITY_RETRAIN_WORKFLOW,
            id=f"propensity-retrain-{task_queue}",
            task_queue=task_queue,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        # One retrain at a time; a run still going when the next is due makes it skip.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_retrain_schedule(
    client: Client, *, task_queue: str, every: timedelta
) -> ScheduleHandle:
    """Create the retrain Schedule, or bring an existing one to ``every``: every worker
    calls this at start, and the first one creates it."""
    if every <= timedelta(0):
        raise ValueError("the retrain interval must be positive")
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
