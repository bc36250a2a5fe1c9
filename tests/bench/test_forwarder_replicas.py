"""Outbox forwarding with 1 and 2 API replicas: events a second and duplicate signals.

Two real API processes (``python -m stagecoach.engine.cli api``) share one PostgreSQL
application database and the Temporal dev server, as in production with two replicas.
No worker runs on the task queue, so what is measured is the forwarder alone: rows read,
signalled with start to Temporal, and deleted. Each run stores ``CONTACTS`` new contacts
with ``EVENTS`` events each in one transaction (the ingestion's bulk path, from this
process) and times from its commit to the outbox being empty.

- 1 replica (the baseline): replica B is SIGSTOPped and its buckets have moved to A
  (A holds all 64), so one forwarder does the work;
- 2 replicas: B resumed, the buckets split 32/32.

Runs alternate (1, 2, 1, 2, 1, 2) so a drift of the machine's load touches both alike.
Duplicates are counted from the workflows' histories (message ids signalled more than
once) and from the replicas' ``stagecoach_outbox_duplicates_total``. The API processes'
CPU time per forwarded event is printed too (it varies less than rates on a shared
machine, and says how many events a second one forwarder process can signal at most).
Figures are printed; asserted is correctness: every event signalled, each contact in
order.

Run with ``pytest tests/bench/test_forwarder_replicas.py --run-bench -s -q``;
``STAGECOACH_BENCH_FORWARD_CONTACTS`` (default 1500) and
``STAGECOACH_BENCH_FORWARD_EVENTS`` (default 2) set the load per run.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
from sqlalchemy import Engine, func, select
from temporalio.client import Client

from stagecoach.engine.services.ingest import Ingestor, parse_message
from stagecoach.engine.services.storage.models import OUTBOX_BUCKETS, Outbox
from stagecoach.workflows.client import with_settings
from tests.bench._support import bounded, env_int, machine
from tests.engine.services.ingest.test_replicas import (
    _buckets,
    _scrape,
    _track,
    _until,
    api_processes,
    contacts_of,
    signalled,
    terminate,
)

CONTACTS = env_int("STAGECOACH_BENCH_FORWARD_CONTACTS", 1500)
EVENTS = env_int("STAGECOACH_BENCH_FORWARD_EVENTS", 2)
RUNS = 3


def _store(db: Engine, run: str) -> dict[str, list[str]]:
    sent = {f"b-{run}-{n}": [f"b-{run}-{n}-{e}" for e in range(EVENTS)] for n in range(CONTACTS)}
    now = datetime.now(UTC)
    batch = [
        parse_message(_track(user, message_id), received_at=now, source="web")
        for e in range(EVENTS)
        for user, ids in sent.items()
        for message_id in ids[e : e + 1]
    ]
    Ingestor(db).store([batch])  # type: ignore[list-item]
    return sent


def _cpu(pid: int) -> float:
    """CPU seconds (user and system) the process has used so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _drained(db: Engine) -> None:
    """Wait until the outbox is empty (polled every 20 ms)."""
    with db.connect() as conn:
        while conn.execute(select(func.count()).select_from(Outbox)).scalar_one():
            conn.commit()  # a fresh snapshot each time
            time.sleep(0.02)


async def _duplicates(reader: Client, db: Engine, sent: dict[str, list[str]]) -> int:
    owner = contacts_of(db, [ids[0] for ids in sent.values()])

    async def one(user: str) -> int:
        got = await signalled(reader, owner[sent[user][0]])
        assert list(dict.fromkeys(got)) == sent[user], f"{user}: order or loss"
        return len(got) - len(set(got))

    counts = await bounded([one(u) for u in sent], 32)
    await terminate(reader, list(owner.values()))
    return sum(counts)


@pytest.mark.bench
@pytest.mark.postgres
@pytest.mark.timeout(1200)
async def test_forward_throughput_with_one_and_two_replicas(
    db_engine: Engine, client: Client, tmp_path: Path
) -> None:
    figures: dict[int, list[tuple[float, int]]] = {1: [], 2: []}
    cpu_ms: dict[int, list[float]] = {1: [], 2: []}
    async with api_processes(db_engine, client, tmp_path, 2) as (procs, urls, settings):
        a, b = urls
        reader = with_settings(client, settings)
        for replicas in [1, 2] * RUNS:
            if replicas == 1:
                procs[1].send_signal(signal.SIGSTOP)

                async def alone() -> bool:
                    return await _buckets(a) == OUTBOX_BUCKETS

                await _until(alone, 30, "A holds every bucket")
            else:
                procs[1].send_signal(signal.SIGCONT)

                async def split() -> bool:
                    return await _buckets(a) == await _buckets(b) == OUTBOX_BUCKETS // 2

                await _until(split, 30, "the buckets are split")
            run = uuid.uuid4().hex[:8]
            sent = await asyncio.to_thread(_store, db_engine, run)
            cpu = [_cpu(p.pid) for p in procs]
            started = time.perf_counter()
            await asyncio.to_thread(_drained, db_engine)
            seconds = time.perf_counter() - started
            used = sum(_cpu(p.pid) - c for p, c in zip(procs, cpu, strict=True))
            duplicates = await _duplicates(reader, db_engine, sent)
            events = CONTACTS * EVENTS
            figures[replicas].append((events / seconds, duplicates))
            cpu_ms[replicas].append(1000 * used / events)
            print(
                f"{replicas} replica(s): {events} events of {CONTACTS} contacts forwarded in "
                f"{seconds:.2f} s = {events / seconds:,.0f} events/s, {duplicates} duplicate "
                f"signals, API CPU {1000 * used / events:.2f} ms an event"
            )
        counted = 0.0
        for url in urls:
            scraped = await asyncio.to_thread(_scrape, url)
            counted += scraped.get("stagecoach_outbox_duplicates_total", 0)
    print(f"\nforwarder with replicas on {machine()}")
    print(f"{CONTACTS} contacts x {EVENTS} events a run, PostgreSQL, dev server, no worker")
    for replicas, rows in figures.items():
        rates = [r for r, _ in rows]
        print(
            f"  {replicas} replica(s): median {statistics.median(rates):,.0f} events/s "
            f"(runs: {', '.join(f'{r:,.0f}' for r in rates)}); duplicate signals: "
            f"{sum(d for _, d in rows)}; API CPU a forwarded event: median "
            f"{statistics.median(cpu_ms[replicas]):.2f} ms (both processes)"
        )
    print(f"  stagecoach_outbox_duplicates_total over both replicas: {counted:.0f}")
