"""Worker assembly: which workflows and activities a Stagecoach worker runs.

The composition root (``stagecoach worker``) builds the dependencies (the database Engine,
connectors, renderer) and hands them in; nothing here reads settings or opens sockets
on its own, so tests build the same worker around fakes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from temporalio.client import Client
from temporalio.worker import Interceptor, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from stagecoach.workflows.broadcasts import BroadcastWorkflow
from stagecoach.workflows.contact import ContactWorkflow
from stagecoach.workflows.metrics import ActivityMetrics
from stagecoach.workflows.system import SystemCheckWorkflow

WORKFLOWS: tuple[type, ...] = (ContactWorkflow, BroadcastWorkflow, SystemCheckWorkflow)

log = logging.getLogger("stagecoach.worker")


def default_runner() -> WorkflowRunner:
    """The lean sandbox (``stagecoach.workflows.sandbox``), or the SDK's own sandbox when a
    newer SDK moved the internals the lean one builds on: slower, never broken."""
    try:
        from stagecoach.workflows.sandbox import lean_sandbox
    except ImportError as exc:
        log.warning("using the SDK's sandbox: the lean one is unavailable (%s)", exc)
        return SandboxedWorkflowRunner()
    return lean_sandbox()


def build_worker(
    client: Client,
    *,
    task_queue: str,
    activities: Sequence[Callable[..., object]],
    workflows: Sequence[type] = WORKFLOWS,
    max_concurrent_activities: int = 100,
    max_cached_workflows: int = 400,
    interceptors: Sequence[Interceptor] = (ActivityMetrics(),),
    workflow_runner: WorkflowRunner | None = None,
) -> Worker:
    """A worker for ``task_queue`` running Stagecoach's workflows and the given activities.

    ``max_cached_workflows`` bounds memory: each cached contact workflow holds about
    0.4 MB, and a contact that is only waiting on a timer needs no cache slot.
    ``interceptors`` default to the activity metrics (``stagecoach_activity_*``).
    ``workflow_runner`` defaults to the SDK's sandbox without its per-task overheads
    (``stagecoach.workflows.sandbox``).
    """
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(workflows),
        activities=list(activities),
        max_cached_workflows=max_cached_workflows,
        interceptors=list(interceptors),
        workflow_runner=workflow_runner or default_runner(),
        # Synchronous activities (database work) run on this pool, off the event loop.
        activity_executor=ThreadPoolExecutor(max_workers=max_concurrent_activities),
        max_concurrent_activities=max_concurrent_activities,
    )


async def run_until_signalled(worker: Worker) -> None:
    """Run ``worker`` until SIGINT or SIGTERM, then shut it down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        await stop.wait()
