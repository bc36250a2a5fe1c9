"""The broadcast workflow: ``broadcast-<id>``, one per broadcast.

1. Waits for the send time (a timer; a cancel ends the wait).
2. Snapshots the audience (one activity).
3. With an A/B test: sends the sample's arms, waits the window, chooses the winner.
4. Sends everyone due in batches (one activity each), sleeping until the next send time
   (local-time slots, quiet hours, retries) between them.

Pause, resume and cancel are signals; the loop acts on them between batches, so within
a batch's few seconds. A provider that refuses us pauses the broadcast with its reason.
The workflow holds counts only; recipients and outcomes live in the database, so a long
broadcast continues as new with its progress and its history stays small.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from datetime import datetime

    from stagecoach.engine.protocol import (
        BROADCAST_STATUS_ACTIVITY,
        BROADCAST_TIMERS,
        BROADCAST_WORKFLOW,
        CANCEL_SIGNAL,
        EVALUATE_AB_ACTIVITY,
        PAUSE_SIGNAL,
        PROGRESS_QUERY,
        RESUME_SIGNAL,
        SEND_BATCH_ACTIVITY,
        SNAPSHOT_ACTIVITY,
        timer_summary,
    )
    from stagecoach.engine.protocol.messages import (
        BatchRequest,
        BatchResult,
        BroadcastInput,
        BroadcastStatus,
        EvaluateRequest,
        EvaluateResult,
        SnapshotRequest,
        SnapshotResult,
    )

BATCHES_PER_RUN = 400
"""Batches before the workflow continues as new (about 1,200 history events)."""

_DB = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))


@workflow.defn(name=BROADCAST_WORKFLOW)
class BroadcastWorkflow:
    def __init__(self) -> None:
        self._paused = False
        self._pause_reason: str | None = None
        self._cancelled: str | None = None
        self._progress: BroadcastInput | None = None
        self._status = "scheduled"
        self._size = 0

    @workflow.signal(name=PAUSE_SIGNAL)
    def pause(self, reason: str | None = None) -> None:
        self._paused = True
        self._pause_reason = reason or "paused by an operator"

    @workflow.signal(name=RESUME_SIGNAL)
    def resume(self) -> None:
        self._paused = False
        self._pause_reason = None

    @workflow.signal(name=CANCEL_SIGNAL)
    def cancel(self, reason: str | None = None) -> None:
        self._cancelled = reason or "cancelled by an operator"

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> dict[str, Any]:
        p = self._progress
        return {
            "status": self._status,
            "reason": self._pause_reason if self._status == "paused" else self._cancelled,
            "audience": self._size,
            "sent": p.sent if p else 0,
            "held": dict(p.held) if p else {},
            "failed": p.failed if p else 0,
            "phase": p.phase if p else "start",
            "winner": p.winner if p else None,
        }

    @workflow.run
    async def run(self, progress: BroadcastInput) -> dict[str, Any]:
        self._progress = progress
        if progress.phase == "start":
            if not await self._wait_for_start(progress.launched_at):
                return await self._finish("cancelled")
            snapshot: SnapshotResult = await workflow.execute_activity(
                SNAPSHOT_ACTIVITY,
                SnapshotRequest(progress.broadcast_id, progress.launched_at),
                result_type=SnapshotResult,
                start_to_close_timeout=timedelta(minutes=10),
                retry_policy=_DB,
            )
            self._size = snapshot.size
            self._status = "running"
            progress.phase = "sample" if snapshot.ab else "send"
            progress.ab_window_seconds = snapshot.ab_window_seconds
        if progress.phase == "sample":
            if not await self._send(arms_only=True):
                return await self._finish("cancelled")
            window = timedelta(seconds=progress.ab_window_seconds)
            await self._sleep_until(workflow.now() + window, "window")
            if self._cancelled:
                return await self._finish("cancelled")
            decided: EvaluateResult = await workflow.execute_activity(
                EVALUATE_AB_ACTIVITY,
                EvaluateRequest(progress.broadcast_id, workflow.now()),
                result_type=EvaluateResult,
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=_DB,
            )
            progress.winner = decided.winner
            progress.phase = "send"
        if not await self._send(arms_only=False):
            return await self._finish("cancelled")
        return await self._finish("completed")

    async def _send(self, *, arms_only: bool) -> bool:
        """Send every recipient due (only the A/B arms while ``arms_only``); False if
        cancelled on the way."""
        progress = self._progress
        assert progress is not None
        while True:
            if self._cancelled:
                return False
            if self._paused:
                await self._mark("paused", self._pause_reason)
                await workflow.wait_condition(lambda: not self._paused or bool(self._cancelled))
                if self._cancelled:
                    return False
                await self._mark("running", None)
            now = workflow.now()
            result: BatchResult = await workflow.execute_activity(
                SEND_BATCH_ACTIVITY,
                BatchRequest(progress.broadcast_id, now, progress.batch_size, arms_only),
                result_type=BatchResult,
                task_queue=progress.batch_queue or None,
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=_DB,
            )
            progress.sent += result.sent
            progress.failed += result.failed
            for reason, n in result.held.items():
                progress.held[reason] = progress.held.get(reason, 0) + n
            progress.batches += 1
            if result.refused:
                self._paused = True
                self._pause_reason = f"the provider refused: {result.refused}"
                continue
            if result.next_due is None:
                return True
            if result.next_due > now:
                await self._sleep_until(result.next_due, "next")
            if progress.batches % BATCHES_PER_RUN == 0 and not self._paused:
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(progress)

    async def _wait_for_start(self, start: datetime) -> bool:
        """Wait for the send time; False if cancelled meanwhile. A pause meanwhile shows
        at once (``paused``, with its reason) and holds the start until resumed."""
        while True:
            await self._sleep_until(start, "start", wake_on_pause=True)
            if self._cancelled:
                return False
            if self._paused:
                await self._mark("paused", self._pause_reason)
                await workflow.wait_condition(lambda: not self._paused or bool(self._cancelled))
                if self._cancelled:
                    return False
                await self._mark("scheduled", None)
                continue
            return True

    async def _sleep_until(
        self, moment: datetime, name: str, *, wake_on_pause: bool = False
    ) -> None:
        """A timer to ``moment`` that a cancel (and, if asked, a pause) cuts short."""
        delay = moment - workflow.now()
        if delay <= timedelta(0):
            return
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: bool(self._cancelled) or (wake_on_pause and self._paused),
                timeout=delay,
                timeout_summary=timer_summary(BROADCAST_TIMERS, name),
            )

    async def _mark(self, status: str, reason: str | None) -> None:
        """Record ``status``; the progress query shows it once recorded, so a caller that
        saw it there finds the database saying the same."""
        progress = self._progress
        assert progress is not None
        await workflow.execute_activity(
            BROADCAST_STATUS_ACTIVITY,
            BroadcastStatus(progress.broadcast_id, status, reason, workflow.now()),
            start_to_close_timeout=timedelta(minutes=1),
            retry_policy=_DB,
        )
        self._status = status

    async def _finish(self, status: str) -> dict[str, Any]:
        await self._mark(status, self._cancelled if status == "cancelled" else None)
        return self.progress()
