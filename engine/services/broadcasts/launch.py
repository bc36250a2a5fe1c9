"""Launching and steering broadcasts from outside: the CLI, the API and the tests.

A launch checks the broadcast (:func:`.store.check_launch`),
moves it from draft to scheduled and starts ``broadcast-<id>``. A second launch of the
same broadcast starts nothing: the workflow id is the broadcast's, and the answer is the
first launch's. Pause, resume and cancel are signals the workflow acts on between
batches; progress is a query, falling back to the database once the workflow is gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.protocol import (
    BROADCAST_WORKFLOW,
    CANCEL_SIGNAL,
    PAUSE_SIGNAL,
    PROGRESS_QUERY,
    RESUME_SIGNAL,
    broadcast_workflow_id,
)
from stagecoach.engine.protocol.messages import BroadcastInput
from stagecoach.engine.services.broadcasts import store


@dataclass(frozen=True)
class Launched:
    broadcast_id: str
    workflow_id: str
    status: str
    send_at: datetime
    first: bool
    """False when this was a second launch, answered with the first."""


class BroadcastNotSteerable(StagecoachError, ValueError):
    def __init__(self, broadcast_id: str, status: str, action: str) -> None:
        super().__init__(
            f"broadcast {broadcast_id!r} is {status}: it cannot be {action}",
            fix="see where it is with 'stagecoach broadcasts show " + broadcast_id + "'",
        )


async def launch(
    client: Client,
    db: Engine,
    broadcast_id: str,
    *,
    task_queue: str,
    content: Mapping[str, frozenset[tuple[str, str]]],
    events: frozenset[str] | None,
    now: datetime,
    actor: str | None = None,
    batch_size: int = 200,
    batch_queue: str = "",
) -> Launched:
    """Check and start the broadcast; a second launch answers with the first.

    ``batch_size`` recipients go per activity: pause and cancel act between batches.
    ``batch_queue``: the task queue batches run on (``Settings.broadcast_task_queue``,
    whose server-side rate limit bounds sends across workers); "" is ``task_queue``."""
    row = store.get_row(db, broadcast_id)
    broadcast = store.broadcast_of(row)
    if row.status != "draft":
        return Launched(
            broadcast_id,
            broadcast_workflow_id(broadcast_id),
            row.status,
            row.scheduled_at or row.started_at or row.created_at,
            first=False,
        )
    problems = store.check_launch(db, broadcast, content=content, events=events, now=now)
    if problems:
        raise store.BroadcastRefused(broadcast_id, problems)
    send_at = broadcast.send_at or now
    try:
        await _start(client, broadcast_id, task_queue, send_at, now, batch_size, batch_queue)
    except WorkflowAlreadyStartedError as exc:
        raise store.BroadcastRefused(
            broadcast_id,
            [
                f"workflow {exc.workflow_id} already ran on this Temporal namespace (another"
                " database, or one restored from before it ran); give the broadcast a new name"
            ],
        ) from exc
    launched = store.mark_launched(db, broadcast_id, actor=actor)
    return Launched(
        broadcast_id, broadcast_workflow_id(broadcast_id), launched.status, send_at, first=True
    )


async def _start(
    client: Client,
    broadcast_id: str,
    task_queue: str,
    send_at: datetime,
    now: datetime,
    batch_size: int,
    batch_queue: str,
) -> None:
    """Start ``broadcast-<id>``; a running one is kept (USE_EXISTING), a finished one is
    refused (REJECT_DUPLICATE): a broadcast runs once."""
    await client.start_workflow(
        BROADCAST_WORKFLOW,
        BroadcastInput(
            broadcast_id=broadcast_id,
            launched_at=max(send_at, now),
            batch_size=batch_size,
            batch_queue=batch_queue,
        ),
        id=broadcast_workflow_id(broadcast_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
    )


async def _signal(client: Client, db: Engine, broadcast_id: str, signal: str, *args: Any) -> None:
    row = store.get_row(db, broadcast_id)
    if row.status in ("draft", "completed", "cancelled"):
        action = {PAUSE_SIGNAL: "paused", RESUME_SIGNAL: "resumed", CANCEL_SIGNAL: "cancelled"}
        raise BroadcastNotSteerable(broadcast_id, row.status, action[signal])
    handle = client.get_workflow_handle(broadcast_workflow_id(broadcast_id))
    await handle.signal(signal, *args)


async def pause(client: Client, db: Engine, broadcast_id: str, reason: str | None = None) -> None:
    await _signal(client, db, broadcast_id, PAUSE_SIGNAL, reason)


async def resume(client: Client, db: Engine, broadcast_id: str) -> None:
    await _signal(client, db, broadcast_id, RESUME_SIGNAL)


async def cancel(client: Client, db: Engine, broadcast_id: str, reason: str | None = None) -> None:
    await _signal(client, db, broadcast_id, CANCEL_SIGNAL, reason)


async def progress(client: Client, db: Engine, broadcast_id: str) -> dict[str, Any]:
    """The running workflow's counts, or the database's once it has finished."""
    row = store.get_row(db, broadcast_id)
    if row.status in ("draft", "completed", "cancelled"):
        return {"status": row.status, "reason": row.reason, "audience": row.audience_size}
    try:
        handle = client.get_workflow_handle(broadcast_workflow_id(broadcast_id))
        answer: dict[str, Any] = await handle.query(PROGRESS_QUERY)
        return answer
    except RPCError:
        return {"status": row.status, "reason": row.reason, "audience": row.audience_size}
