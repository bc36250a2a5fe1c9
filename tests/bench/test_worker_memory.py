"""Worker memory (RSS) with many contacts waiting mid-journey.

The worker is ``stagecoach worker`` in its own process (so its RSS is its own), on a fresh
task queue with a SQLite file, quiet hours and the frequency cap off. Normal contacts (not
rehearsals) are created with a ``page.viewed`` signal-with-start carrying an email: each
enters the B2B nurture on its first stage, is sent the whitepaper, and then waits three
real days for a timer. Once every contact's whitepaper is ``sent`` in the ``deliveries``
table, the worker's RSS is printed with its RSS before the load and the peak observed.
Run with ``pytest tests/bench/test_worker_memory.py --run-bench -s -q``;
``STAGECOACH_BENCH_CONTACTS`` (default 10000) sets the number of contacts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.cli.doctor import check_worker
from stagecoach.engine.protocol.messages import EventMessage, contact_workflow_id
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.gateway import send_event
from tests.bench._support import ROOT, bounded, env_int, fresh_task_queue, machine

CONCURRENCY = 50
"""Signal-with-starts in flight at once."""
PROGRESS_EVERY = 1000
CACHED = Settings().worker_max_cached_workflows  # the worker process runs with the default
"""``max_cached_workflows``: the SDK's default, which ``build_worker`` does not change."""
MB = 2**20
WORKFLOW_TASK_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
}


class Sampler:
    """The worker's RSS, sampled every ``interval`` seconds; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.last = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> int:
        self.last = self.process.memory_info().rss
        self.peak = max(self.peak, self.last)
        return self.last

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def sent_count(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as conn:
        row = conn.execute("SELECT count(*) FROM deliveries WHERE status = 'sent'").fetchone()
    return int(row[0]) if row else 0


def worker_env(address: str, task_queue: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECOACH_")}
    env.update(
        STAGECOACH_TEMPORAL_ADDRESS=address,
        STAGECOACH_TEMPORAL_TASK_QUEUE=task_queue,
        STAGECOACH_WORKER_METRICS_PORT="off",
        STAGECOACH_TEMPORAL_METRICS_PORT="off",
        STAGECOACH_DATABASE_URL=f"sqlite:///{tmp_path / 'stagecoach.db'}",
        STAGECOACH_DATA_DIR=str(tmp_path / ".stagecoach"),
        STAGECOACH_CONTENT_DIR=str(ROOT / "content"),
        STAGECOACH_QUIET_HOURS_START="00:00",
        STAGECOACH_QUIET_HOURS_END="00:00",
        STAGECOACH_FREQUENCY_CAP="0",
        STAGECOACH_LOG_LEVEL="warning",
        STAGECOACH_LOG_FORMAT="json",
    )
    return env


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``stagecoach worker`` (``python -m stagecoach.engine.cli worker``), its output in ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "stagecoach.engine.cli", "worker"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def wait_for_worker(
    client: Client, settings: Settings, proc: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 120
    while not (await check_worker(client, settings)).ok:
        assert proc.poll() is None, f"the worker exited with {proc.returncode}"
        assert time.monotonic() < deadline, "the worker never polled its task queue"
        await asyncio.sleep(0.5)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


async def waiting_on_a_timer(client: Client, contact_id: str) -> bool:
    """The whitepaper was sent, a timer is pending, and no workflow task is outstanding."""
    history = await client.get_workflow_handle(contact_workflow_id(contact_id)).fetch_history()
    kinds = [e.event_type for e in history.events]
    task_events = [k for k in kinds if k in WORKFLOW_TASK_EVENTS]
    timers = kinds.count(EventType.EVENT_TYPE_TIMER_STARTED)
    ended = kinds.count(EventType.EVENT_TYPE_TIMER_FIRED) + kinds.count(
        EventType.EVENT_TYPE_TIMER_CANCELED
    )
    return (
        EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED in kinds
        and timers > ended
        and task_events[-1] == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    )


@pytest.mark.bench
@pytest.mark.timeout(3600)
async def test_worker_memory(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    count = env_int("STAGECOACH_BENCH_CONTACTS", 10000)
    client = dev_env.client
    address = client.service_client.config.target_host
    task_queue = fresh_task_queue("bench-memory")
    settings = Settings(temporal_address=address, temporal_task_queue=task_queue)
    database = tmp_path / "stagecoach.db"
    log = tmp_path / "worker.log"
    run = f"mem{uuid.uuid4().hex[:6]}"
    ids = [f"{run}-{n}" for n in range(count)]
    began = time.perf_counter()

    proc = start_worker(worker_env(address, task_queue, tmp_path), log)
    sampler = Sampler(proc.pid)
    try:
        await wait_for_worker(client, settings, proc)
        await asyncio.sleep(2)  # let start-up allocations settle
        baseline = sampler.sample()
        sampler.start()
        print(f"\nworker pid {proc.pid} polling; RSS before load {baseline / MB:.0f} MB")

        started = 0
        t0 = time.perf_counter()

        async def create(contact_id: str) -> None:
            nonlocal started
            message = EventMessage(
                message_id=f"{contact_id}-first-view",
                type="page.viewed",
                occurred_at=datetime.now(UTC),
                properties={"category": "blog"},
                traits={"email": f"{contact_id}@example.com", "locale": "en", "timezone": "UTC"},
                source="bench",
            )
            await send_event(client, settings, contact_id, message)
            started += 1
            if started % PROGRESS_EVERY == 0:
                print(
                    f"  {time.perf_counter() - t0:6.1f} s: {started} started, "
                    f"{sent_count(database)} whitepapers sent, RSS {sampler.sample() / MB:.0f} MB",
                    flush=True,
                )

        await bounded([create(c) for c in ids], CONCURRENCY)
        started_seconds = time.perf_counter() - t0

        deadline = time.perf_counter() + max(600.0, count * 0.2)
        milestone = 0
        while (sent := sent_count(database)) < count:
            assert proc.poll() is None, f"the worker exited with {proc.returncode}; see {log}"
            assert time.perf_counter() < deadline, f"only {sent}/{count} sent; see {log}"
            if sent // PROGRESS_EVERY > milestone:
                milestone = sent // PROGRESS_EVERY
                print(
                    f"  {time.perf_counter() - t0:6.1f} s: {sent} whitepapers sent, "
                    f"RSS {sampler.sample() / MB:.0f} MB",
                    flush=True,
                )
            await asyncio.sleep(1)
        all_sent_seconds = time.perf_counter() - t0
        await asyncio.sleep(5)  # the last workflow tasks start their timers
        loaded = sampler.sample()
        await asyncio.sleep(10)
        settled = sampler.sample()
        await sampler.stop()
        sample = ids[:: max(count // 20, 1)]
        waiting = [c for c in sample if await waiting_on_a_timer(client, c)]
    finally:
        await sampler.stop()
        stop(proc)

    seconds = time.perf_counter() - began
    print(
        f"worker memory ({machine()}), {count} contacts waiting mid-journey "
        f"(b2b_nurture, whitepaper sent, 3-day timer pending), {CONCURRENCY} starts in "
        f"flight:\n"
        f"  RSS before load:                    {baseline / MB:7.1f} MB\n"
        f"  RSS with all contacts waiting:      {loaded / MB:7.1f} MB "
        f"(10 s later: {settled / MB:.1f} MB)\n"
        f"  peak RSS observed (every 0.25 s):   {sampler.peak / MB:7.1f} MB (goal < 500 MB)\n"
        f"  growth over the baseline:           {(settled - baseline) / MB:7.1f} MB "
        f"({(settled - baseline) / min(count, CACHED) / 1024:.0f} KB per cached workflow: the "
        f"worker keeps at most {CACHED} in its cache, STAGECOACH_WORKER_MAX_CACHED_WORKFLOWS)\n"
        f"  signal-with-starts done in {started_seconds:.1f} s; all whitepapers sent after "
        f"{all_sent_seconds:.1f} s ({count / all_sent_seconds:.1f} contacts/s); "
        f"total {seconds:.1f} s\n"
        f"  sampled histories ending on a pending timer: {len(waiting)}/{len(sample)}"
    )

    # Correctness only.
    assert sent_count(database) == count
    assert len(waiting) == len(sample)
