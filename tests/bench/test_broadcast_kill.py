"""The broadcast of the throughput benchmark with its worker SIGKILLed 3 times mid-run.

The issue's figure: 100,000 recipients, the worker SIGKILLed 3 times and restarted:
0 lost, 0 duplicated (counted by the peer), and the time lost to each kill.

Set-up as in ``test_broadcast_throughput`` (bulk-loaded audience, ``stagecoach worker``
as a child process on a SQLite file, SMTP to the Go peer on loopback, batches of 200).
The worker is SIGKILLed when a quarter, a half and three quarters of the audience have
``sent`` delivery rows (each kill once the last one's batch is being sent again) and is
started again at once.

Per kill: when, and how long until sending resumed (the new worker's start, the
workflow task moving to it, and the killed batch's 30 s heartbeat timeout). In all: the
wall time against the uninterrupted rate before the first kill (the time the kills
cost together). At the peer: messages, distinct recipients (idempotency keys), lost
and duplicated; and, measured at each kill while the worker was dead, the SMTP window:
recipients the peer already held whose delivery row did not say ``sent`` (the retry
would send those again: SMTP has no idempotency key). Since each ``sent`` row is
committed at the SMTP connector's point of no return, that window is empty. Asserted:
none lost, none duplicated, and the window empty at every kill.

``STAGECOACH_BENCH_BROADCAST_KILL_N`` (default 10,000; the issue's is 100,000),
``STAGECOACH_BENCH_SMTP_POOL`` (8). Run with
``pytest tests/bench/test_broadcast_kill.py --run-bench -s -q``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import Session, col, select
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.bounces import key_digest
from stagecoach.engine.domain.broadcasts import Broadcast
from stagecoach.engine.services.broadcasts import store
from stagecoach.engine.services.publishing import latest_versions
from stagecoach.engine.services.storage.models import Delivery
from tests.bench._support import (
    BROADCAST_CONTENT,
    RssSampler,
    broadcast_status,
    broadcast_with_kills,
    env_int,
    fresh_task_queue,
    go_smtp_peer,
    launch_broadcast,
    load,
    machine,
    seed_broadcast_audience,
)
from tests.bench.test_email_throughput import PeerProcess
from tests.faults._harness import Stack, until

N = env_int("STAGECOACH_BENCH_BROADCAST_KILL_N", 10_000)
POOL = env_int("STAGECOACH_BENCH_SMTP_POOL", 8)
BATCH = 200
KILLS_AT = (N // 4, N // 2, 3 * N // 4)


@pytest.fixture(scope="module")
def go_peer() -> Iterator[PeerProcess]:
    peer: PeerProcess = go_smtp_peer()
    try:
        yield peer
    finally:
        peer.close()


def delivery_counts(stack: Stack, name: str, status: str) -> int:
    with Session(stack.engine) as session:
        return int(
            session.exec(
                select(func.count()).where(
                    col(Delivery.journey) == f"broadcast:{name}", col(Delivery.status) == status
                )
            ).one()
        )


def sent_digests(stack: Stack, name: str) -> set[str]:
    with Session(stack.engine) as session:
        keys = session.exec(
            select(col(Delivery.idempotency_key)).where(
                col(Delivery.journey) == f"broadcast:{name}", col(Delivery.status) == "sent"
            )
        ).all()
    return {key_digest(k) for k in keys}


@pytest.mark.bench
@pytest.mark.timeout(4 * 3600)
async def test_broadcast_kill(
    dev_env: WorkflowEnvironment, go_peer: PeerProcess, tmp_path: Path
) -> None:
    go_peer.command("reset")
    queue = fresh_task_queue("bench-broadcast-kill")
    stack = Stack.create(
        tmp_path,
        dev_env.client,
        queue,
        email_connector="smtp",
        smtp_host="127.0.0.1",
        smtp_port=str(go_peer.port),
        smtp_pool_size=str(POOL),
    )
    name = f"kill-{uuid.uuid4().hex[:8]}"
    ids = seed_broadcast_audience(stack.engine, f"{name}-list", N, prefix=name)
    windows: list[int] = []
    held: set[str] = set()
    start_load = load()
    try:
        worker = stack.worker()
        await until(
            lambda: asyncio.to_thread(lambda: "b2b_nurture" in latest_versions(stack.engine)),
            within=120,
            what="the worker started",
            every=0.2,
        )

        async def sent() -> int:
            return await asyncio.to_thread(delivery_counts, stack, name, "sent")

        async def completed() -> bool:
            return await asyncio.to_thread(broadcast_status, stack.engine, name) == "completed"

        async def measure_window() -> None:
            stats = await asyncio.to_thread(go_peer.command, "stats")
            recorded = await asyncio.to_thread(sent_digests, stack, name)
            caught = set(stats["copies"]) - recorded
            windows.append(len(caught))
            held.update(caught)

        with RssSampler(lambda: worker.proc.pid if worker.alive and worker.proc else None) as rss:
            started = time.perf_counter()
            await launch_broadcast(
                stack.client,
                stack.engine,
                Broadcast(name=name, segment=f"{name}-list", content=BROADCAST_CONTENT),
                task_queue=queue,
                batch_size=BATCH,
            )
            kills = await broadcast_with_kills(
                worker,
                KILLS_AT,
                progress=sent,
                done=completed,
                within=3.5 * 3600,
                poll=0.25,
                on_kill=measure_window,
            )
            wall = time.perf_counter() - started
    finally:
        for child in stack.children.values():
            child.kill()
    stats = await asyncio.to_thread(go_peer.command, "stats")
    copies: dict[str, int] = stats["copies"]
    expected = {key_digest(store.delivery_key(name, cid)) for cid in ids}
    lost = expected - set(copies)
    duplicated = {k for k, n in copies.items() if n > 1}
    first = kills[0]
    before = first.progress / first.at if first.at else 0.0
    uninterrupted = N / before if before else wall
    lines = [
        f"\nbroadcast with the worker SIGKILLed {len(kills)} times: {N:,} recipients, email "
        f"({BROADCAST_CONTENT}), one `stagecoach worker` process, SQLite, batches of {BATCH}, "
        f"SMTP pool {POOL}, Go SMTP peer on loopback",
        f"  machine: {machine()}; {start_load} at the start, {load()} at the end",
        *(
            f"  kill {n + 1} at {k.at:.1f} s ({k.progress:,} sent): sending again "
            f"{k.stalled or 0:.1f} s later; {windows[n]} recipients the peer held were not "
            f"'sent' in the books"
            for n, k in enumerate(kills)
        ),
        f"  wall {wall:.1f} s; {before:,.0f} recipients/s before the first kill, so "
        f"{uninterrupted:.1f} s uninterrupted: the kills cost {wall - uninterrupted:.1f} s",
        f"  peer: {stats['received']:,} messages, {len(copies):,} distinct recipients; "
        f"lost {len(lost)}, duplicated {len(duplicated)} (in the SMTP window: "
        f"{len(duplicated & held)})",
        f"  worker RSS (s, MiB; restarted at each kill): {rss.describe()}",
    ]
    print("\n".join(lines))
    await stack.close([])
    assert not lost, f"{len(lost)} recipients lost"
    assert not held, f"{len(held)} messages at the peer still recorded as sending at a kill"
    assert not duplicated, f"{len(duplicated)} recipients received twice"
