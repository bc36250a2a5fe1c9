"""CPU per signalled event: what one page view of a known contact costs the contact worker
and the Temporal server, and what its workflow asks of the server.

The production worker runs as its own process (``python -m stagecoach.engine.cli worker``, payload
encryption on, metrics servers off), so its CPU is its own: psutil reads it, Rust core
threads included, as it reads the dev server's. ``CONTACTS`` contacts are created by an
``identify`` each (signal-with-start; the workflow opens the contact itself), which gives
the worker CPU per new contact. Each is then given a past of ``HISTORY`` older page views
in one ``events`` signal (a known contact's rules look at up to 200 recent events; every
tenth is the pricing page, so the score caps are reached and the stage rules have moved
the contact before the window). Then ``EVENTS`` pricing-page ``page.viewed`` events each
(what the ingestion benchmark's background load sends) are signalled one per signal with
``stagecoach.engine.temporal.gateway.send_event``, as the outbox forwarder does, round-robin over
the contacts at ``RATE`` a second. The window ends when the worker has gone quiet; what the
worker and the server spend idle (measured just before) is taken out. Then every
contact's ``state`` query must show all its events applied, and the new part of each
history is counted: workflow tasks, activities, timers and search-attribute upserts per
signal (the commands an event costs), and history events per signal.

``STAGECOACH_BENCH_COMPARE_REF`` (e.g. ``HEAD``) runs the same workload, alternately and
``ROUNDS`` times each, on a worker built from that commit (``git archive`` into a
temporary directory, never touching the working tree), and prints the ratios: a code
change's effect measured in the same run, under the same machine load.

Figures are printed, never asserted; asserted is correctness (every event applied once).
Run with ``pytest tests/bench/test_event_cost.py --run-bench -s -q``;
``STAGECOACH_BENCH_COST_CONTACTS`` (default 150), ``STAGECOACH_BENCH_COST_EVENTS`` (per
contact, default 6), ``STAGECOACH_BENCH_COST_RATE`` (signals a second, default 40: a
contact's next event comes ~4 s after its last, so a busy machine still gives each signal
its own workflow task and the rounds stay comparable; the workflow tasks per signal are
printed to check), ``STAGECOACH_BENCH_COST_HISTORY`` (past events per contact, default
150), ``STAGECOACH_BENCH_COST_ROUNDS`` (default 2). ``STAGECOACH_BENCH_COST_PYSPY=DIR``
records the worker with ``py-spy`` (if installed) through each measured window, as
collapsed stacks in ``DIR/<round>.txt`` (the CPU figures of such a run include its cost).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.protocol.messages import (
    CONTACT_WORKFLOW,
    EVENTS_SIGNAL,
    ContactInput,
    EventBatch,
    EventMessage,
    contact_workflow_id,
)
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.gateway import ContactNotFound, contact_view, send_event
from stagecoach.workflows.client import with_settings
from tests.bench._support import ROOT, env_int, fresh_task_queue, machine, terminate_contacts
from tests.helpers import runtime_settings

CONTACTS = env_int("STAGECOACH_BENCH_COST_CONTACTS", 150)
EVENTS = env_int("STAGECOACH_BENCH_COST_EVENTS", 6)
RATE = float(env_int("STAGECOACH_BENCH_COST_RATE", 40))
ROUNDS = env_int("STAGECOACH_BENCH_COST_ROUNDS", 2)
HISTORY = env_int("STAGECOACH_BENCH_COST_HISTORY", 150)
COMPARE_REF = os.environ.get("STAGECOACH_BENCH_COMPARE_REF", "")
PYSPY = os.environ.get("STAGECOACH_BENCH_COST_PYSPY", "")
QUIET_CPU = 0.03
"""The worker is quiet when it spends less than this share of a core over ``QUIET_FOR``."""
QUIET_FOR = 0.5
IDLE_SECONDS = 3.0
PAGE = {"category": "pricing", "url": "https://example.cn/pricing"}
IDENTIFY = {"email": "bench@example.cn", "locale": "zh-CN", "timezone": "Asia/Shanghai"}

COUNTED = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: "signals",
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: "workflow tasks",
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "activities",
    EventType.EVENT_TYPE_TIMER_STARTED: "timers",
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES: "upserts",
    EventType.EVENT_TYPE_MARKER_RECORDED: "markers",
}


# --- the code under test: this tree, or a commit exported beside it ----------------------


@dataclass(frozen=True)
class Tree:
    """Where a worker's code comes from."""

    name: str
    path: Path


ROOMS = ("engine", "workflows", "connectors", "content")


def export(ref: str, into: Path) -> Tree:
    """``ref``'s package and its rooms, by ``git archive`` (read-only for the repo).

    A ref from before the one ``stagecoach`` package cannot be compared this way."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "stagecoach", *ROOMS],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    assert archive.returncode == 0, f"git archive {ref}: {archive.stderr.decode()}"
    tar_path = into.with_suffix(".tar")
    tar_path.write_bytes(archive.stdout)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    tar_path.unlink()
    return Tree(ref, into)


def worker_env(settings: Settings, tree: Tree, keys: str) -> dict[str, str]:
    """``python -m stagecoach.engine.cli worker`` with ``settings`` and ``tree``'s code first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECOACH_")}
    env.update(
        STAGECOACH_DATA_DIR=str(settings.data_dir),
        STAGECOACH_DATABASE_URL=settings.resolved_database_url,
        STAGECOACH_TEMPORAL_ADDRESS=settings.temporal_address,
        STAGECOACH_TEMPORAL_TASK_QUEUE=settings.temporal_task_queue,
        STAGECOACH_CONTENT_DIR=str(tree.path / "content"),
        STAGECOACH_QUIET_HOURS_START="00:00",
        STAGECOACH_QUIET_HOURS_END="00:00",
        STAGECOACH_FREQUENCY_CAP="0",
        STAGECOACH_WORKER_METRICS_PORT="off",
        STAGECOACH_TEMPORAL_METRICS_PORT="off",
        STAGECOACH_PAYLOAD_KEYS=keys,
        STAGECOACH_LOG_LEVEL="warning",
        STAGECOACH_LOG_FORMAT="json",
        PYTHONPATH=str(tree.path),
    )
    return env


@contextlib.asynccontextmanager
async def worker_process(env: dict[str, str], cwd: Path, log: Path) -> AsyncIterator[int]:
    """The worker as a child process until the block ends; yields its pid."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "stagecoach.engine.cli",
            "worker",
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=out,
        )
        try:
            yield proc.pid
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


@contextlib.asynccontextmanager
async def profiled(pid: int, label: str) -> AsyncIterator[None]:
    """``py-spy record`` of ``pid`` while the block runs, when ``PYSPY`` asks for it."""
    if not PYSPY:
        yield
        return
    spy = Path(sys.executable).with_name("py-spy")
    out = Path(PYSPY) / f"{label}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        str(spy), "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
        "--gil", "-o", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.sleep(0.5)  # attached
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        await proc.wait()


def cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def dev_server_pid() -> int:
    """The dev server is this process's child (the session's ``dev_env``)."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "start-dev" in " ".join(child.cmdline()):
                return child.pid
    raise AssertionError("no Temporal dev server among this process's children")


# --- one measured round ------------------------------------------------------------------


@dataclass
class Round:
    tree: str
    events: int
    seconds: float
    worker_cpu: float
    server_cpu: float
    sender_cpu: float
    history: Counter[str] = field(default_factory=Counter)
    history_events: int = 0
    new_contact: float = 0.0
    """Worker CPU seconds per new contact (its identify)."""
    idle_worker: float = 0.0
    idle_server: float = 0.0
    """CPU seconds per second with nothing to do."""

    @property
    def worker_us(self) -> float:
        """Worker CPU per event, less what it spends idle over the window."""
        return (self.worker_cpu - self.idle_worker * self.seconds) / self.events * 1e6

    @property
    def server_us(self) -> float:
        return (self.server_cpu - self.idle_server * self.seconds) / self.events * 1e6


async def _applied(client: Client, contact_ids: list[str], expected: int, within: float) -> None:
    deadline = time.monotonic() + within
    pending = list(contact_ids)
    while pending:
        left = []
        for cid in pending:
            # Not found, queried before its first task set the state, or a task being
            # retried: not yet.
            with contextlib.suppress(ContactNotFound, WorkflowQueryFailedError, RPCError):
                view = await contact_view(client, cid)
                assert view.run_events <= expected, f"{cid}: an event applied twice"
                if view.run_events == expected:
                    continue
            left.append(cid)
        pending = left
        if pending:
            assert time.monotonic() < deadline, f"{len(pending)} contacts never caught up"
            await asyncio.sleep(0.2)


async def _quiet(pid: int, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        before = cpu(pid)
        await asyncio.sleep(QUIET_FOR)
        if cpu(pid) - before < QUIET_CPU * QUIET_FOR:
            return
    raise AssertionError("the worker never went quiet")


async def _history_lengths(client: Client, contact_ids: list[str]) -> dict[str, int]:
    out = {}
    for cid in contact_ids:
        history = await client.get_workflow_handle(contact_workflow_id(cid)).fetch_history()
        out[cid] = len(history.events)
    return out


def identify(contact_id: str, now: datetime) -> EventMessage:
    return EventMessage(f"{contact_id}-id", "identify", now, traits=dict(IDENTIFY), source="bench")


async def send_past(client: Client, settings: Settings, contact_id: str, now: datetime) -> None:
    """``HISTORY`` page views of the past hour in one ``events`` signal, as the outbox
    forwarder sends a contact's backlog; every tenth is the pricing page."""
    past = [
        EventMessage(
            f"{contact_id}-h{n}",
            "page.viewed",
            now - timedelta(seconds=3600 - n),
            properties=dict(PAGE) if n % 10 == 0 else {"category": "docs"},
            source="bench",
        )
        for n in range(HISTORY)
    ]
    await client.start_workflow(
        CONTACT_WORKFLOW,
        ContactInput.current(contact_id),
        id=contact_workflow_id(contact_id),
        task_queue=settings.temporal_task_queue,
        start_signal=EVENTS_SIGNAL,
        start_signal_args=[EventBatch(events=past)],
    )


async def run_round(
    client: Client, settings: Settings, tree: Tree, keys: str, tmp: Path, label: str
) -> Round:
    env = worker_env(settings, tree, keys)
    ids = [f"{label}-{n}" for n in range(CONTACTS)]
    now = datetime.now(UTC)
    async with worker_process(env, tree.path, tmp / f"{label}.log") as pid:
        ready = f"{label}-ready"
        await send_event(client, settings, ready, identify(ready, now))
        await _applied(client, [ready], 1, within=180)
        await _quiet(pid)
        # New contacts: each created by an identify (a new workflow run, its contact.open
        # and record_transition activities, its journeys' first steps).
        n0 = cpu(pid)
        await asyncio.gather(*(send_event(client, settings, c, identify(c, now)) for c in ids))
        await _quiet(pid)
        new_contact = (cpu(pid) - n0) / len(ids)
        await _applied(client, ids, 1, within=180)
        for chunk in range(0, len(ids) if HISTORY else 0, 10):
            # Ten at a time: a past is one long workflow task, which must not time out.
            some = ids[chunk : chunk + 10]
            await asyncio.gather(*(send_past(client, settings, cid, now) for cid in some))
            await _applied(client, some, 1 + HISTORY, within=300)
        await _quiet(pid)
        before_len = await _history_lengths(client, ids)
        server = dev_server_pid()
        # What the worker and the server spend doing nothing (pollers, timers), per second:
        # taken out of the per-event figures below.
        i0, j0, idle0 = cpu(pid), cpu(server), time.perf_counter()
        await asyncio.sleep(IDLE_SECONDS)
        idle_span = time.perf_counter() - idle0
        idle = ((cpu(pid) - i0) / idle_span, (cpu(server) - j0) / idle_span)
        me = psutil.Process()
        async with profiled(pid, label):
            w0, s0, m0, t0 = cpu(pid), cpu(server), sum(me.cpu_times()[:2]), time.perf_counter()
            loop = asyncio.get_running_loop()
            start = loop.time()
            tasks = []
            for seq in range(EVENTS * CONTACTS):
                cid = ids[seq % CONTACTS]
                message = EventMessage(
                    f"{cid}-p{seq // CONTACTS}",
                    "page.viewed",
                    datetime.now(UTC),
                    properties=dict(PAGE),
                    source="bench",
                )
                delay = start + seq / RATE - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(send_event(client, settings, cid, message)))
            await asyncio.gather(*tasks)
            await _quiet(pid)
            w1, s1, m1, t1 = cpu(pid), cpu(server), sum(me.cpu_times()[:2]), time.perf_counter()
        await _applied(client, ids, 1 + HISTORY + EVENTS, within=120)
        counted: Counter[str] = Counter()
        total = 0
        for cid in ids:
            history = await client.get_workflow_handle(contact_workflow_id(cid)).fetch_history()
            new = history.events[before_len[cid] :]
            total += len(new)
            for event in new:
                name = COUNTED.get(event.event_type)
                if name:
                    counted[name] += 1
    await terminate_contacts(client, [ready, *ids])
    return Round(
        tree=tree.name,
        events=EVENTS * CONTACTS,
        seconds=t1 - t0,
        worker_cpu=w1 - w0,
        server_cpu=s1 - s0,
        sender_cpu=m1 - m0,
        history=counted,
        history_events=total,
        new_contact=new_contact,
        idle_worker=idle[0],
        idle_server=idle[1],
    )


@pytest.mark.bench
@pytest.mark.timeout(1800)
async def test_event_cost(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    keys = f"bench:{base64.b64encode(os.urandom(32)).decode()}"
    trees = [Tree("working tree", ROOT)]
    if COMPARE_REF:
        trees.insert(0, export(COMPARE_REF, tmp_path / "baseline"))
    run = f"cost{uuid.uuid4().hex[:6]}"
    rounds: list[Round] = []
    load = []
    for r in range(ROUNDS):
        for t, tree in enumerate(trees):
            settings = runtime_settings(
                tmp_path / f"{r}-{t}",
                fresh_task_queue("bench-cost"),
                temporal_address=dev_env.client.service_client.config.target_host,
                payload_keys=keys,
            )
            client = with_settings(dev_env.client, settings)
            load.append(os.getloadavg()[0])
            rounds.append(await run_round(client, settings, tree, keys, tmp_path, f"{run}-{r}-{t}"))

    lines = [
        f"\nCPU per signalled event ({machine()}): {CONTACTS} contacts with {HISTORY} past "
        f"events x {EVENTS} page views, "
        f"one per signal, {RATE:.0f} signals/s; worker as its own process, payloads "
        f"encrypted; load average at the rounds' starts "
        f"{', '.join(f'{x:.1f}' for x in load)}"
    ]
    for rnd in rounds:
        per = {k: v / rnd.events for k, v in sorted(rnd.history.items())}
        lines.append(
            f"  {rnd.tree:<14} worker {rnd.worker_us:6.0f} µs, dev server {rnd.server_us:6.0f} "
            f"µs, sender {rnd.sender_cpu / rnd.events * 1e6:5.0f} µs per event "
            f"({rnd.seconds:.1f} s; idle: worker {rnd.idle_worker * 1e3:.0f} ms/s, server "
            f"{rnd.idle_server * 1e3:.0f} ms/s, taken out); per signal: "
            f"{rnd.history_events / rnd.events:.2f} history "
            "events, " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()) + "; worker per new "
            f"contact {rnd.new_contact * 1e3:.1f} ms"
        )
    if COMPARE_REF:
        base = [x for x in rounds if x.tree == COMPARE_REF]
        ours = [x for x in rounds if x.tree != COMPARE_REF]
        for what, unit, scale in (
            ("worker_us", "µs per event", 1),
            ("server_us", "µs per event", 1),
            ("new_contact", "ms per new contact", 1e3),
        ):
            b = statistics.median(getattr(x, what) * scale for x in base)
            o = statistics.median(getattr(x, what) * scale for x in ours)
            lines.append(
                f"  {what} median: {COMPARE_REF} {b:.1f}, working tree {o:.1f} {unit}, "
                f"ratio {o / b:.2f}"
            )
    print("\n".join(lines))
    assert all(r.history["signals"] == r.events for r in rounds)
