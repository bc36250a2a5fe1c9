"""The same workload on the dev server and on the real cluster, in the same run: what
``docs/capacity.md`` reports.

Each side gets the fault harness's stack (``tests.faults._harness``): one worker (two on
the third side, the cluster again), one API, its own task queue, and a database of its
own on the cluster's PostgreSQL (so the application database is the same kind on every
side and only Temporal differs). The workload is the harness's: N contacts identified,
three page views and the whitepaper download each, the B2B nurture's first send to a
local HTTP provider, the books checked. Measured per side:

- ingest: events accepted per second by the API (paced at ``RATE``, so a ceiling
  below it is the stack's);
- journey throughput: contacts whose five events were applied and whose send settled,
  per second from the first call to the last settled contact;
- the Temporal server's CPU seconds per Temporal action (actions counted from a sample of
  the contacts' histories with Temporal Cloud's definition, ``tests.bench._support``);
- history bytes per contact (the serialized events of every run, sampled);
- on the cluster, PostgreSQL bytes: the growth of the ``temporal`` and
  ``temporal_visibility`` databases per contact and per event.

Run with ``pytest tests/bench/test_cluster_capacity.py --run-bench -s -q``
(``STAGECOACH_BENCH_CLUSTER_CONTACTS``, default 100).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import text
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.cli.local_cluster import LocalCluster
from stagecoach.engine.services.storage import make_engine
from tests.bench._support import Actions, bounded, contact_histories, env_int, machine
from tests.cluster.conftest import postgres_bin, temporal_server_bin  # noqa: F401  (fixtures)
from tests.faults._harness import Figures, Person, Stack, Workload, contact_ids, drive, people
from tests.faults.test_faults import _http_books, _settle
from tests.helpers import free_port, fresh_postgres_database
from tests.peers.http_email import HttpEmailPeer

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / ".stagecoach" / "bench" / "cluster-capacity.jsonl"
RATE = float(os.environ.get("STAGECOACH_BENCH_CLUSTER_RATE", "200"))
"""Events a second the workload is sent at: 200 saturates this machine (the reaction
latency is then mostly queueing); 25 stays under what it can do."""
SAMPLE = 10
EVENTS = 5


def _dev_server_process(address: str) -> psutil.Process:
    port = address.rsplit(":", 1)[1]
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "start-dev" in cmdline and port in cmdline:
            return proc
    raise AssertionError(f"no dev server process listens on {address}")


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _temporal_bytes(cluster: LocalCluster) -> int:
    admin = make_engine(cluster.postgres.url("postgres"))
    try:
        with admin.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT sum(pg_database_size(datname)) FROM pg_database "
                        "WHERE datname IN ('temporal', 'temporal_visibility')"
                    )
                ).scalar_one()
            )
    finally:
        admin.dispose()


async def _side(
    name: str,
    client: Client,
    database_url: str,
    tmp: Path,
    server: psutil.Process,
    count: int,
    size: Callable[[], int] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    persons = people(f"{name[:1]}{uuid.uuid4().hex[:6]}", count)
    os.makedirs(tmp, exist_ok=True)
    with HttpEmailPeer() as peer:
        stack = Stack.create(
            tmp,
            client,
            f"cap-{uuid.uuid4().hex[:10]}",
            database_url=database_url,
            email_connector="http",
            email_http_url=peer.generic_url,
            email_http_token=peer.generic_token,
        )
        try:
            for n in range(workers):
                stack.worker(f"worker-{n + 1}")
            await stack.api()
            bytes_before = size() if size else 0
            cpu_before = _cpu(server)
            started = time.monotonic()
            workload = await drive(stack.api_url, stack.key, persons, rate=RATE, batch=20)
            settle = await _settle(stack, persons, count)
            elapsed = time.monotonic() - started
            cpu = _cpu(server) - cpu_before
            bytes_after = size() if size else 0
            figures = Figures(
                f"capacity: {name}", count, workload.rate, [],
                seconds=elapsed, settle_seconds=settle,
            )  # fmt: skip
            await _http_books(stack, persons, workload, peer).check(figures)
            latency = _first_email_latency(persons, workload, peer)
            ids = list(contact_ids(stack.engine, persons).values())
            sample = ids[:SAMPLE]
            runs = await bounded([contact_histories(stack.client, c) for c in sample], 5)
            actions = sum(Actions.from_histories(h).total for h in runs) / len(sample)
            history = sum(e.ByteSize() for h in runs for run in h for e in run.events) / len(sample)
            row: dict[str, Any] = {
                "server": name,
                "workers": workers,
                "contacts": count,
                "ingest_events_per_s": round(workload.rate, 1),
                "contacts_per_s": round(count / elapsed, 2),
                "settle_after_load_s": round(settle, 1),
                "first_email_p50_s": round(latency[0], 2),
                "first_email_p95_s": round(latency[1], 2),
                "first_email_max_s": round(latency[2], 2),
                "actions_per_contact": round(actions, 1),
                "server_cpu_ms_per_action": round(1000 * cpu / (actions * count), 2),
                "history_bytes_per_contact": round(history),
            }
            if size:
                grown = bytes_after - bytes_before
                row["postgres_bytes_per_contact"] = round(grown / count)
                row["postgres_bytes_per_event"] = round(grown / (count * EVENTS))
            return row
        finally:
            await stack.close(contact_ids(stack.engine, persons).values())


def _first_email_latency(
    persons: list[Person], workload: Workload, peer: HttpEmailPeer
) -> tuple[float, float, float]:
    """Reaction latency: from a new contact's identify being accepted (the API answered
    the batch that carried it) to its first email, the B2B nurture's whitepaper, taken in
    by the provider. Median, 95th percentile and worst, in seconds."""
    first: dict[str, float] = {}
    for request in peer.received():
        to = str(request.body.get("to"))
        first[to] = min(first.get(to, request.at), request.at)
    gaps = sorted(
        first[p.email] - workload.accepted_at[f"{p.user_id}-identify"]
        for p in persons
        if p.email in first
    )
    assert len(gaps) == len(persons), f"{len(persons) - len(gaps)} contacts got no email"
    return (
        statistics.median(gaps),
        statistics.quantiles(gaps, n=20)[-1] if len(gaps) > 1 else gaps[0],
        gaps[-1],
    )


@pytest.mark.bench
@pytest.mark.timeout(1800)
async def test_the_same_workload_on_the_dev_server_and_on_the_cluster(
    dev_env: WorkflowEnvironment,
    temporal_server_bin: Path,  # noqa: F811
    postgres_bin: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    count = env_int("STAGECOACH_BENCH_CLUSTER_CONTACTS", 100)
    root = Path(tempfile.mkdtemp(prefix="stagecoach-capacity-"))
    os.chmod(root, 0o711)  # noqa: S103  (enter only: the postgres user needs its subfolder)
    cluster = LocalCluster(
        root, server_bin=temporal_server_bin, postgres_bin=postgres_bin, pick_port=free_port
    )
    try:
        client = await cluster.start_backends()
        assert cluster.temporal.child is not None
        assert cluster.temporal.child.proc is not None
        base = cluster.postgres.base_url
        dev = await _side(
            "dev server",
            dev_env.client,
            fresh_postgres_database(base, prefix="cap"),
            tmp_path / "dev",
            _dev_server_process(dev_env.client.service_client.config.target_host),
            count,
        )
        real = await _side(
            "cluster",
            client,
            fresh_postgres_database(base, prefix="cap"),
            tmp_path / "cluster",
            psutil.Process(cluster.temporal.child.proc.pid),
            count,
            size=lambda: _temporal_bytes(cluster),
        )
        two = await _side(
            "cluster, 2 workers",
            client,
            fresh_postgres_database(base, prefix="cap"),
            tmp_path / "cluster-2",
            psutil.Process(cluster.temporal.child.proc.pid),
            count,
            size=lambda: _temporal_bytes(cluster),
            workers=2,
        )
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    keys = list(real)
    width = max(len(k) for k in keys)
    print(f"\n  {machine()}")
    for key in keys:
        cells = [str(side.get(key, "-")).rjust(18) for side in (dev, real, two)]
        print(f"  {key.ljust(width)} | {' | '.join(cells)}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a", encoding="utf-8") as out:
        row = {"machine": machine(), "dev": dev, "cluster": real, "cluster_2_workers": two}
        out.write(json.dumps(row) + "\n")
