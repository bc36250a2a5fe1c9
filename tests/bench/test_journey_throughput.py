"""Contacts per second through the B2B nurture journey vs a bare Temporal workflow.

The contact side is the production worker (``build_worker`` + ``build_activities``, SQLite
file, real content library, file sink) on a fresh task queue. Rehearsal contacts are
identified (signal-with-start), enrolled time-scaled (update-with-start) and followed with
the ``state`` query until the nurture ended; without further events that path is the
whitepaper, a 3-day wait, the product-tour video, a 7-day wait, and the exit.

The baseline is a bare workflow on its own worker and task queue that runs the same
activities (as no-ops) and timers (of the same scaled durations) in the same order, read
from a warm-up contact's history, for the same number of workflows at the same
concurrency, on the same dev server in the same run. Figures are printed, never asserted.
Run with ``pytest tests/bench/test_journey_throughput.py --run-bench -s -q``;
``STAGECOACH_BENCH_JOURNEY_CONTACTS`` (default 150) and ``STAGECOACH_BENCH_CONCURRENCY``
(default 50) change the load.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from stagecoach.workflows.runtime import ContactOpener
from tests.bench._support import (
    JOURNEY,
    NO_RETRY,
    Actions,
    Step,
    bounded,
    contact_histories,
    contact_worker,
    describe_plan,
    env_int,
    fresh_task_queue,
    machine,
    plan_from_histories,
    run_rehearsal_contact,
    terminate_contacts,
)
from tests.helpers import runtime_settings

TIME_SCALE = 4e-6
"""The nurture's 10 days of waits (3 d + 7 d) take ~3.5 s of real time."""
WARM_UP = 3


@activity.defn(name="bench.noop")
async def noop(name: str) -> None:
    """Stands in for one of the contact's activities."""


@workflow.defn(name="BenchBareJourney", sandboxed=False)
class BareJourney:
    """The contact's durable steps and nothing else: activities and timers, in order."""

    @workflow.run
    async def run(self, plan: list[Step]) -> int:
        for step in plan:
            if step.kind == "timer":
                await workflow.sleep(timedelta(seconds=step.seconds))
            else:
                await workflow.execute_activity(
                    noop,
                    step.name,
                    start_to_close_timeout=timedelta(seconds=60),
                    retry_policy=NO_RETRY,
                )
        return len(plan)


async def run_bare(client: Client, task_queue: str, plan: list[Step]) -> float:
    started = time.perf_counter()
    steps = await client.execute_workflow(
        BareJourney.run,
        plan,
        id=f"bench-bare-{uuid.uuid4().hex}",
        task_queue=task_queue,
    )
    assert steps == len(plan)
    return time.perf_counter() - started


@pytest.mark.bench
@pytest.mark.timeout(1800)
async def test_journey_throughput(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    count = env_int("STAGECOACH_BENCH_JOURNEY_CONTACTS", 150)
    concurrency = env_int("STAGECOACH_BENCH_CONCURRENCY", 50)
    client = dev_env.client
    settings = runtime_settings(tmp_path, fresh_task_queue("bench-journey"))
    run = f"tp{uuid.uuid4().hex[:8]}"

    async with contact_worker(client, settings) as engine:
        opener = ContactOpener(engine, settings)
        # Warm up (imports, caches, SQLite) and learn the path's durable steps.
        warm_ids = [f"{run}-warm-{n}" for n in range(WARM_UP)]
        await bounded(
            [
                run_rehearsal_contact(client, settings, c, time_scale=TIME_SCALE, opener=opener)
                for c in warm_ids
            ],
            concurrency=WARM_UP,
        )
        plans = [plan_from_histories(await contact_histories(client, c)) for c in warm_ids]
        plan = plans[0]
        assert all(p == plan for p in plans), plans
        waits = sum(s.seconds for s in plan if s.kind == "timer")

        ids = [f"{run}-{n}" for n in range(count)]
        started = time.perf_counter()
        latencies = await bounded(
            [
                run_rehearsal_contact(
                    client,
                    settings,
                    c,
                    time_scale=TIME_SCALE,
                    opener=opener,
                    expected_seconds=waits,
                )
                for c in ids
            ],
            concurrency=concurrency,
        )
        contact_seconds = time.perf_counter() - started

    rows = [Actions.from_histories(await contact_histories(client, c)) for c in ids]
    await terminate_contacts(client, [*warm_ids, *ids])

    bare_queue = fresh_task_queue("bench-bare")
    bare_worker = Worker(
        client,
        task_queue=bare_queue,
        workflows=[BareJourney],
        activities=[noop],
        activity_executor=ThreadPoolExecutor(max_workers=4),
    )
    async with bare_worker:
        await bounded([run_bare(client, bare_queue, plan) for _ in range(WARM_UP)], WARM_UP)
        started = time.perf_counter()
        bare_latencies = await bounded(
            [run_bare(client, bare_queue, plan) for _ in range(count)], concurrency
        )
        bare_seconds = time.perf_counter() - started

    contact_rate = count / contact_seconds
    bare_rate = count / bare_seconds
    ideal = concurrency / waits if waits else float("inf")
    print(
        f"\njourney throughput ({machine()}), {count} contacts through {JOURNEY}, "
        f"{concurrency} in flight, time scale {TIME_SCALE:g}:\n"
        f"  durable steps per contact (from a warm-up contact's history): {describe_plan(plan)}\n"
        f"  scaled waits per contact: {waits:.2f} s (ceiling at this concurrency "
        f"{ideal:.1f} contacts/s)\n"
        f"  Stagecoach contact workflow: {contact_rate:6.2f} contacts/s "
        f"({contact_seconds:.1f} s; per contact mean {_mean(latencies):.2f} s, "
        f"max {max(latencies):.2f} s, incl. <=0.2 s polling granularity)\n"
        f"  bare workflow, same steps:   {bare_rate:6.2f} workflows/s "
        f"({bare_seconds:.1f} s; per workflow mean {_mean(bare_latencies):.2f} s, "
        f"max {max(bare_latencies):.2f} s)\n"
        f"  ratio contact/bare: {contact_rate / bare_rate:.2f} (goal >= 0.70)"
    )

    # Correctness only: every contact took the same path and ended the journey.
    for r in rows:
        assert r.sends == 2, r
        assert r.timers == sum(1 for s in plan if s.kind == "timer"), r
        assert r.activities == sum(1 for s in plan if s.kind == "activity"), r


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
