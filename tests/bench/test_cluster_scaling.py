"""The scaling curve on this machine: journey throughput with 1 and 2 workers and 1 and
2 API replicas on the real cluster, the same workload for each, in the same run.

One cluster (PostgreSQL and the Temporal server built from the Go module proxy), one
stack on it (``tests.cluster._topology``: its own task queue and application database on
the cluster's PostgreSQL, email through the HTTP connector to a local provider). Four
shapes, each run ``RUNS`` times, in rounds so a drift of the machine's load touches every
shape alike: 1 worker and 1 API (the baseline), 2 workers and 1 API, 2 and 2, 1 and 2.
Between runs one process is started or stopped cleanly (a stopped API gives its outbox
buckets back at once; a started worker is waited for until it polls the task queue).

Each run is the fault harness's workload (``tests.faults._harness``) for ``CONTACTS``
new contacts: an identify, three page views and the whitepaper download each, sent as
Segment batches at ``RATE`` events a second (well above what 2 cores carry, so the
stack, not the pacing, sets the time), dealt out across the live APIs. Measured:

- **throughput**: contacts done per second, from the first call until every contact was
  sent its email and its download moved it to ``prospect`` (both read from Stagecoach's
  database every 0.2 s; the books are checked after the clock stops);
- **CPU per contact** of each kind of process: the workers, the APIs, the Temporal
  server, PostgreSQL (every process of it, with the backends that exited) and the load
  generator (this process), as CPU seconds (user and system) over the run;
- **the machine**: how busy its cores were over the run (everything on it, other work
  too) and the load average.

CPU seconds per contact vary far less than rates on a shared machine, and they are what
the prediction for more cores in ``docs/capacity.md`` is made from.

Run with ``pytest tests/bench/test_cluster_scaling.py --run-bench -s -q``
(``STAGECOACH_BENCH_SCALING_CONTACTS``, default 120; ``STAGECOACH_BENCH_SCALING_RUNS``,
default 3).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import func
from sqlmodel import Session, col, select
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from stagecoach.engine.cli.local_cluster import LocalCluster
from stagecoach.engine.services.storage.models import OUTBOX_BUCKETS, Delivery, StageTransition
from tests.bench._support import env_int, machine
from tests.cluster._topology import Topology, api_replica, cluster_stack, drive_both
from tests.cluster.conftest import postgres_bin, temporal_server_bin  # noqa: F401  (fixtures)
from tests.faults._harness import Figures, Person, Stack, contact_ids, people, until
from tests.faults.test_faults import _settle
from tests.helpers import free_port
from tests.peers.http_email import HttpEmailPeer

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / ".stagecoach" / "bench" / "cluster-scaling.jsonl"
CONTACTS = env_int("STAGECOACH_BENCH_SCALING_CONTACTS", 120)
RUNS = env_int("STAGECOACH_BENCH_SCALING_RUNS", 3)
RATE = 400.0
ADMIN = "scaling-bench-admin-token"
LEASE = 2.0
SHAPES = [(1, 1), (2, 1), (2, 2), (1, 2)]
"""(workers, APIs) in the order each round runs them: one process changes at each step."""
GROUPS = ("workers", "apis", "server", "postgres", "loadgen")


def _tree_cpu(roots: list[int]) -> float:
    """CPU seconds of the processes ``roots`` and all their descendants, with the CPU of
    descendants that exited and were reaped (a process's ``children_*`` times): the
    difference of two readings counts a PostgreSQL backend that ended in between."""
    total = 0.0
    for pid in roots:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system + t.children_user + t.children_system
    return total


def _busy() -> tuple[float, float]:
    """The machine's busy and total CPU seconds so far, over every core."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle, sum(t)


@dataclass
class Shape:
    topology: Topology
    cluster: LocalCluster
    workers: int = 0
    apis: list[str] = field(default_factory=list)

    @property
    def stack(self) -> Stack:
        return self.topology.stack

    def pids(self) -> dict[str, list[int]]:
        children = self.stack.children
        live = {n: c.proc.pid for n, c in children.items() if c.alive and c.proc is not None}
        server = self.cluster.temporal.child
        postgres = self.cluster.postgres.child
        assert server is not None
        assert server.proc is not None
        assert postgres is not None
        assert postgres.proc is not None
        return {
            "workers": [p for n, p in live.items() if n.startswith("worker")],
            "apis": [p for n, p in live.items() if n.startswith("api")],
            "server": [server.proc.pid],
            "postgres": [postgres.proc.pid],
            "loadgen": [os.getpid()],
        }

    def cpu(self) -> dict[str, float]:
        pids = self.pids()
        reading = {g: _tree_cpu(pids[g]) for g in GROUPS if g != "loadgen"}
        # This process's own CPU only: its children are the stack's processes.
        own = psutil.Process().cpu_times()
        reading["loadgen"] = own.user + own.system
        return reading

    async def polling(self, pid: int) -> None:
        """Until a worker process ``pid`` polls the workflow task queue."""
        settings = self.stack.settings

        async def polls() -> bool:
            resp = await self.stack.client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=settings.temporal_namespace,
                    task_queue=TaskQueue(
                        name=settings.temporal_task_queue,
                        kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL,
                    ),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                )
            )
            return any(p.identity.startswith(f"{pid}@") for p in resp.pollers)

        await until(polls, within=120, what=f"worker {pid} polls", every=0.25)

    async def buckets(self, url: str) -> float:
        try:
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN}"}) as http:
                text = (await http.get(f"{url}/metrics", timeout=5)).text
        except httpx.HTTPError:
            return -1.0
        for line in text.splitlines():
            if line.startswith("stagecoach_outbox_buckets "):
                return float(line.split()[1])
        return -1.0

    async def become(self, workers: int, apis: int) -> None:
        """Start or stop (cleanly) worker-2 and api-2 for the shape, and wait until it
        holds: the new worker polls, the outbox buckets are split among the APIs."""
        stack = self.stack
        if workers == 2 and self.workers < 2:
            started = stack.worker("worker-2").proc
            assert started is not None
            await self.polling(started.pid)
        elif workers == 1 and self.workers == 2:
            await asyncio.to_thread(stack.children["worker-2"].stop)
        self.workers = workers
        if apis == 2 and len(self.apis) < 2:
            _, url = await api_replica(stack, "api-2")
            self.apis.append(url)
        elif apis == 1 and len(self.apis) == 2:
            await asyncio.to_thread(stack.children["api-2"].stop)
            self.apis.pop()
        share = OUTBOX_BUCKETS // len(self.apis)

        async def balanced() -> bool:
            held = await asyncio.gather(*(self.buckets(u) for u in self.apis))
            return all(h == share for h in held)

        await until(balanced, within=60, what=f"{len(self.apis)} APIs share the buckets", every=0.2)


def _done(shape: Shape, persons: list[Person]) -> bool:
    """Every contact was sent its email and its download made it a prospect."""
    ids = list(contact_ids(shape.stack.engine, persons).values())
    if len(ids) < len(persons):
        return False
    with Session(shape.stack.engine) as session:
        sent = session.exec(
            select(func.count())
            .select_from(Delivery)
            .where(col(Delivery.contact_id).in_(ids), col(Delivery.status) == "sent")
        ).one()
        prospects = session.exec(
            select(func.count(func.distinct(col(StageTransition.contact_id)))).where(
                col(StageTransition.contact_id).in_(ids),
                col(StageTransition.to_stage) == "prospect",
            )
        ).one()
    return int(sent) == int(prospects) == len(persons)


async def _run(shape: Shape, workers: int, apis: int, n: int) -> dict[str, Any]:
    await shape.become(workers, apis)
    persons = people(f"s{uuid.uuid4().hex[:6]}", CONTACTS)
    load_before = os.getloadavg()[0]
    busy_before = _busy()
    cpu_before = shape.cpu()
    started = time.monotonic()
    ingest, _ = await asyncio.gather(
        drive_both(shape.stack, shape.apis, persons, rate=RATE),
        until(
            lambda: asyncio.to_thread(_done, shape, persons),
            within=600,
            what="every contact done",
            every=0.2,
        ),
    )
    elapsed = time.monotonic() - started
    cpu_after = shape.cpu()
    busy_after = _busy()
    load_after = os.getloadavg()[0]
    # The books, after the clock: every message once, every event stored and applied once.
    settle = await _settle(shape.stack, persons, CONTACTS)
    figures = Figures(
        f"scaling: {workers} worker(s), {apis} API(s), run {n}", CONTACTS, ingest.rate, [],
        seconds=elapsed, settle_seconds=settle,
    )  # fmt: skip
    await shape.topology.books(persons, ingest).check(figures)
    busy = (busy_after[0] - busy_before[0]) / (busy_after[1] - busy_before[1])
    return {
        "workers": workers,
        "apis": apis,
        "run": n,
        "contacts": CONTACTS,
        "seconds": round(elapsed, 2),
        "contacts_per_s": round(CONTACTS / elapsed, 2),
        "ingest_events_per_s": round(ingest.rate, 1),
        "cpu_ms_per_contact": {
            g: round(1000 * (cpu_after[g] - cpu_before[g]) / CONTACTS, 1) for g in GROUPS
        },
        "machine_busy": round(busy, 3),
        "load": [round(load_before, 2), round(load_after, 2)],
    }


@pytest.fixture
async def shape(
    temporal_server_bin: Path,  # noqa: F811
    postgres_bin: Path,  # noqa: F811
    tmp_path: Path,
) -> AsyncIterator[Shape]:
    root = Path(tempfile.mkdtemp(prefix="stagecoach-scaling-"))
    os.chmod(root, 0o711)  # noqa: S103  (enter only: the postgres user needs its subfolder)
    cluster = LocalCluster(
        root, server_bin=temporal_server_bin, postgres_bin=postgres_bin, pick_port=free_port
    )
    try:
        await cluster.start_backends()
        with HttpEmailPeer() as peer:
            stack = cluster_stack(
                cluster,
                tmp_path,
                email_connector="http",
                email_http_url=peer.generic_url,
                email_http_token=peer.generic_token,
                admin_token=ADMIN,
                lease_seconds=str(LEASE),
                log_level="warning",
            )
            try:
                stack.worker("worker-1")
                _, url = await api_replica(stack, "api", stack.settings.api_port)
                yield Shape(Topology(cluster, stack, peer, [url]), cluster, 1, [url])
            finally:
                await stack.close([])
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.bench
@pytest.mark.timeout(3600)
async def test_throughput_with_one_and_two_workers_and_api_replicas(shape: Shape) -> None:
    rows: list[dict[str, Any]] = []
    await _run(shape, 1, 1, 0)  # warm-up, not counted: caches, first connections
    for n in range(1, RUNS + 1):
        for workers, apis in SHAPES:
            row = await _run(shape, workers, apis, n)
            rows.append(row)
            print(f"\n  {json.dumps(row)}")
    print(f"\n  {machine()}; {CONTACTS} contacts a run, {RATE:.0f} events/s offered")
    head = "  workers, APIs | contacts/s median (runs) | CPU ms a contact, median: " + ", ".join(
        GROUPS
    )
    print(head + " | busy | load")
    for workers, apis in SHAPES:
        mine = [r for r in rows if (r["workers"], r["apis"]) == (workers, apis)]
        rates = [r["contacts_per_s"] for r in mine]
        cpu = {g: statistics.median(r["cpu_ms_per_contact"][g] for r in mine) for g in GROUPS}
        busy = statistics.median(r["machine_busy"] for r in mine)
        loads = [v for r in mine for v in r["load"]]
        print(
            f"  {workers}, {apis}          | {statistics.median(rates):.2f} ({rates}) | "
            + ", ".join(f"{cpu[g]:.1f}" for g in GROUPS)
            + f" (total {sum(cpu.values()):.1f}) | {busy:.0%} | {min(loads):.1f}-{max(loads):.1f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a", encoding="utf-8") as out:
        out.write(json.dumps({"machine": machine(), "rate": RATE, "rows": rows}) + "\n")
