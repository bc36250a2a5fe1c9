"""Short forms of the fault harness (``tests/faults``) on the real cluster: the same
workload and the same books (every message received once at the provider, every
accepted event stored once and applied once, the outbox drained, every journey at its
three-day pause), with the faults a multi-process deployment meets:

- a worker SIGKILLed (twice), its twin carrying on and the killed one restarted;
- the Temporal server SIGKILLed with events and sends in flight, then started again on
  the same PostgreSQL databases;
- PostgreSQL restarted (a fast shutdown) under the server and Stagecoach at once.

Each runs with two workers and the harness's API (its own outbox forwarder), so a fault
meets the cluster mid-stream. The full forms (500 contacts) belong in ``tests/bench``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from stagecoach.engine.cli.local_cluster import LocalCluster
from tests.cluster._topology import cluster_stack
from tests.faults._harness import Figures, Stack, contact_ids, drive, people
from tests.faults.test_faults import _http_books, _settle
from tests.peers.http_email import HttpEmailPeer

pytestmark = pytest.mark.cluster

CONTACTS = 16
RATE = 30.0
"""Events a second: the 80 events stream for about 3 s, so each fault lands mid-stream."""


async def _scenario(
    cluster: LocalCluster,
    tmp_path: Path,
    name: str,
    fault: Callable[[Stack, float], Awaitable[list[str]]],
) -> None:
    persons = people(f"f{uuid.uuid4().hex[:6]}", CONTACTS)
    with HttpEmailPeer() as peer:
        stack = cluster_stack(
            cluster,
            tmp_path,
            email_connector="http",
            email_http_url=peer.generic_url,
            email_http_token=peer.generic_token,
        )
        try:
            stack.worker("worker-1")
            stack.worker("worker-2")
            await stack.api()
            started = time.monotonic()
            workload, faults = await asyncio.gather(
                drive(stack.api_url, stack.key, persons, rate=RATE), fault(stack, started)
            )
            settle = await _settle(stack, persons, CONTACTS)
            figures = Figures(
                f"cluster: {name}", CONTACTS, workload.rate, faults,
                seconds=time.monotonic() - started, settle_seconds=settle,
                notes=f"answers {dict(workload.answers)}",
            )  # fmt: skip
            await _http_books(stack, persons, workload, peer).check(figures)
            figures.publish()
        finally:
            await stack.close(contact_ids(stack.engine, persons).values())


@pytest.mark.timeout(240)
async def test_a_worker_sigkilled_twice_beside_its_twin_sends_each_message_once(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    async def kill_worker(stack: Stack, started: float) -> list[str]:
        faults = []
        for n in range(2):
            await asyncio.sleep(1.0)
            stack.children["worker-1"].kill()
            faults.append(f"SIGKILL worker-1 #{n + 1} at {time.monotonic() - started:.1f} s")
            await asyncio.sleep(0.3)
            stack.worker("worker-1")
        return faults

    await _scenario(cluster, tmp_path, "worker SIGKILL x2", kill_worker)


@pytest.mark.timeout(240)
async def test_the_temporal_server_sigkilled_and_restarted_loses_and_doubles_nothing(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    async def kill_server(stack: Stack, started: float) -> list[str]:
        await asyncio.sleep(1.2)
        cluster.temporal.kill()
        at = time.monotonic() - started
        await asyncio.sleep(1.0)
        cluster.temporal.start()
        await cluster.temporal.ready()
        back = time.monotonic() - started
        return [f"SIGKILL Temporal server at {at:.1f} s, serving again at {back:.1f} s"]

    await _scenario(cluster, tmp_path, "Temporal server SIGKILL", kill_server)


@pytest.mark.timeout(240)
async def test_postgresql_restarted_under_the_server_and_stagecoach_loses_nothing(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    async def restart_postgres(stack: Stack, started: float) -> list[str]:
        await asyncio.sleep(1.2)
        cluster.postgres.stop()
        at = time.monotonic() - started
        await asyncio.sleep(1.0)
        cluster.postgres.start()
        await cluster.postgres.ready()
        back = time.monotonic() - started
        return [f"PostgreSQL stopped (fast) at {at:.1f} s, accepting again at {back:.1f} s"]

    await _scenario(cluster, tmp_path, "PostgreSQL restart", restart_postgres)
