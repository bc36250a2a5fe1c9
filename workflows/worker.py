"""Worker assembly: which workflows and activities a Stagecoach worker runs.

The composition root (``stagecoach worker``) builds the dependencies (the database Engine,
connectors, renderer) and hands them in; nothing here reads settings or opens sockets
on its own, so tests build the same worker around fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from temporalio.client import Client
from temporalio.worker import Interceptor, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from stagecoach.workflows.broadcasts import BroadcastWorkflow
from stagecoach.workflows.contact import ContactWorkflow
from stagecoach.workflows.metrics import ActivityMetrics
from stagecoach.workflows.prediction import PropensityRetrainWorkflow
from stagecoach.workflows.system import SystemCheckWorkflow
from stagecoach.workflows.value import ValueRefreshWorkflow

WORKFLOWS: tuple[type, ...] = (
    ContactWorkflow,
    BroadcastWorkflow,
    SystemCheckWorkflow,
    PropensityRetrainWorkflow,
    ValueRefreshWorkflow,
)

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
    max_task_queue_activities_per_second: float | None = None,
) -> Worker:
    """A worker for ``task_queue`` running Stagecoach's workflows and the given activities.

    ``max_cached_workflows`` bounds memory: each cached contact workflow holds about
    0.4 MB, and a contact that is only waiting on a timer needs no cache slot.
    ``interceptors`` default to the activity metrics (``stagecoach_activity_*``).
    ``workflow_runner`` defaults to the SDK's sandbox without its per-task overheads
    (``stagecoach.workflows.sandbox``). ``max_task_queue_activities_per_second`` is the
    server-enforced activity rate of the whole queue, across every worker polling it.
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
        max_task_queue_activities_per_second=max_task_queue_activities_per_second,
    )


def build_broadcast_worker(
    client: Client,
    *,
    task_queue: str,
    activities: Sequence[Callable[..., object]],
    batch_size: int,
    rate: float | None,
) -> Worker:
    """The worker of the broadcast queue: batch activities only, under the queue's
    server-side rate limit when ``rate`` (messages per second across every worker) is
    set: ``rate / batch_size`` batches per second."""
    return Worker(
        client,
        task_queue=task_queue,
        activities=list(activities),
        interceptors=[ActivityMetrics()],
        max_concurrent_activities=4,
        max_task_queue_activities_per_second=(rate / batch_size) if rate else None,
    )


def build_send_workers(
    client: Client,
    queues: Mapping[str, tuple[str, float]],
    *,
    deliver: Callable[..., object],
    hand_off: Callable[..., object],
    max_concurrent_activities: int = 100,
) -> list[Worker]:
    """One worker per rate-limited channel (``Settings.send_queues``): the channel's
    journey sends (``crm``: hand-offs) run on its queue, at the queue's server-enforced
    activity rate across every worker polling it. Every worker process runs these
    beside its main worker, so the rate holds however many there are."""
    return [
        Worker(
            client,
            task_queue=queue,
            activities=[hand_off if channel == "crm" else deliver],
            interceptors=[ActivityMetrics()],
            max_concurrent_activities=max_concurrent_activities,
            max_task_queue_activities_per_second=rate,
        )
        for channel, (queue, rate) in sorted(queues.items())
    ]


async def run_until_signalled(*workers: Worker) -> None:
    """Run ``workers`` until SIGINT or SIGTERM, then shut them down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as running:
        for worker in workers:
            await running.enter_async_context(worker)
        await stop.wait()
