"""One broadcast to N recipients over email, one worker, against the Go SMTP peer.

The issue's figure: a million recipients, personalised rendering, full bookkeeping, done
in under 10 minutes with every recipient exactly once (counted by the peer), at least
0.5 of the connector's raw pooled throughput measured in the same run, and at most 0.01
Temporal actions per recipient. Customer.io's ~1M emails an hour is the anchor.

Set-up, and why:
- The audience is bulk-loaded into the database (contacts, their email identities and a
  manual segment's member rows: what a list upload leaves), so the run measures the
  broadcast, not the upload.
- The worker is ``stagecoach worker`` in a process of its own (the faults harness'
  ``Stack``: a SQLite file, the settings a deployment sets through the environment),
  with ``STAGECOACH_EMAIL_CONNECTOR=smtp`` at the Go peer (``tests/peers/smtpsink``,
  plain SMTP on loopback, ``GOMAXPROCS=1``), so its memory is sampled on its own and
  the peer's CPU is not the worker's.
- The broadcast is launched through the launch API the CLI uses; ``newsletter-monthly``
  is rendered per recipient (``first_name``, signed links); each recipient gets its
  snapshot row, its delivery row (``sending`` before the call, ``sent`` after) and the
  consent, suppression and cap checks journeys use.
- The raw figure: the same ``SmtpConnector`` (same pool size, pipelining on) sending
  pre-rendered messages of the same content to the same peer, no Stagecoach around it,
  just before the broadcast in the same run.

Printed per run: wall time from launch to ``completed`` (the snapshot included) and
recipients/s over it, the time from the first delivery row to the last, the raw rate
and the ratio, the peer's count (messages and distinct idempotency keys: one key per
recipient), Temporal actions per recipient from the broadcast workflow's histories (the
actions benchmark's definition: starts, signals, timers, activities and their retries,
continue-as-new; workflow tasks shown apart), database rows and bytes per recipient
(the SQLite file and its WAL before the launch and after), the worker's CPU per
recipient and its RSS over time. Asserted: every recipient exactly once at the peer and
the broadcast completed.

Environment: ``STAGECOACH_BENCH_BROADCAST_N`` (default 20,000),
``STAGECOACH_BENCH_BROADCAST_BATCH`` (batch sizes, comma-separated: each is a row;
default ``200``), ``STAGECOACH_BENCH_BROADCAST_RUNS`` (runs per batch size, default 3),
``STAGECOACH_BENCH_SMTP_POOL`` (8, the worker's default), ``STAGECOACH_BENCH_BROADCAST_BUDGET``
(seconds: a run still sending then is cancelled and reported as partial, its rate from
what it sent by the time the cancel took; default none: the suite's watchdog,
``tests/conftest.py``, ends any test after 15 minutes with no figures, so a large N wants
a budget under that, launch to cancel, seeding and teardown included), ``STAGECOACH_BENCH_PYSPY`` (a
path: py-spy, on PATH or in ``.venv``, records the worker's stacks, collapsed, into
``<path>-<run>.txt``).

Run with ``pytest tests/bench/test_broadcast_throughput.py --run-bench -s -q``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select
from temporalio.testing import WorkflowEnvironment

from stagecoach.connectors.smtp import SmtpConfig, SmtpConnector
from stagecoach.engine.domain.bounces import key_digest
from stagecoach.engine.domain.broadcasts import Broadcast
from stagecoach.engine.domain.content import ContentLibrary, LinkSigner, RenderContact
from stagecoach.engine.protocol import broadcast_workflow_id
from stagecoach.engine.protocol.connector import OutgoingMessage
from stagecoach.engine.services.broadcasts import launch as steer
from stagecoach.engine.services.broadcasts import store
from stagecoach.engine.services.publishing import latest_versions
from stagecoach.engine.services.storage.models import BroadcastRecipient, Delivery
from tests.bench._support import (
    BROADCAST_CONTENT,
    ROOT,
    Actions,
    RssSampler,
    broadcast_status,
    env_int,
    fresh_task_queue,
    go_smtp_peer,
    launch_broadcast,
    load,
    machine,
    seed_broadcast_audience,
    workflow_histories,
    workflow_tasks,
)
from tests.bench.test_email_throughput import PeerProcess
from tests.faults._harness import Stack, until

N = env_int("STAGECOACH_BENCH_BROADCAST_N", 20_000)
BATCHES = [
    int(b) for b in os.environ.get("STAGECOACH_BENCH_BROADCAST_BATCH", "200").split(",") if b
]
RUNS = max(env_int("STAGECOACH_BENCH_BROADCAST_RUNS", 3), 1)
POOL = env_int("STAGECOACH_BENCH_SMTP_POOL", 8)
BUDGET = env_int("STAGECOACH_BENCH_BROADCAST_BUDGET", 0)
RAW = min(N, 5_000)
"""Messages in the raw connector measurement (enough for a steady rate)."""
FROM = "Stagecoach <news@example.com>"


@pytest.fixture(scope="module")
def go_peer() -> Iterator[PeerProcess]:
    peer: PeerProcess = go_smtp_peer()
    try:
        yield peer
    finally:
        peer.close()


def rendered_messages(count: int, tag: str) -> list[OutgoingMessage]:
    """The broadcast's content, rendered per recipient before timing: the raw connector
    sends what the worker would, without Stagecoach."""
    library = ContentLibrary.load(ROOT / "content")
    signer = LinkSigner(os.urandom(32), "https://mkt.example.com", timedelta(days=60))
    now = datetime.now(UTC)
    out = []
    for n in range(count):
        key = f"raw:{tag}:{n}"
        rendered = library.render(
            BROADCAST_CONTENT,
            channel="email",
            locale="en",
            contact=RenderContact(f"raw-{n}", {"first_name": f"Reader{n}"}),
            now=now,
            signer=signer,
            idempotency_key=key,
        )
        out.append(
            OutgoingMessage(
                channel="email",
                to=f"raw-{n}@example.com",
                idempotency_key=key,
                contact_id=f"raw-{n}",
                rendered=rendered.to_dict(),
            )
        )
    return out


async def raw_rate(peer: PeerProcess, tag: str) -> float:
    """Messages per second of the bare connector against ``peer`` (peer reset after)."""
    batch = rendered_messages(RAW + 1, tag)
    config = SmtpConfig(
        host="127.0.0.1",
        port=peer.port,
        security="none",
        from_addr=FROM,
        pool_size=POOL,
        pipeline_messages=True,
    )
    peer.command("reset")
    async with SmtpConnector(config) as smtp:
        await smtp.send(batch[0])  # the first session, outside the timing
        started = time.perf_counter()
        await asyncio.gather(*(smtp.send(m) for m in batch[1:]))
        seconds = time.perf_counter() - started
    stats = peer.command("stats")
    assert stats["accepted"] == len(batch), stats["accepted"]
    assert set(stats["copies"].values()) == {1}
    peer.command("reset")
    return RAW / seconds


def database_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def table_bytes(path: Path) -> dict[str, int] | None:
    """Bytes per table and index from SQLite's ``dbstat`` (None when not compiled in)."""
    try:
        with sqlite3.connect(path) as conn:
            rows = conn.execute(
                "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
            ).fetchall()
    except sqlite3.Error:
        return None
    return {str(name): int(size) for name, size in rows}


@dataclass
class Run:
    batch_size: int
    seeded_seconds: float
    wall: float
    sending: float
    sent: int
    raw: float
    received: int
    distinct: int
    actions: Actions
    tasks: int
    rows: dict[str, int]
    bytes_added: int
    tables: dict[str, int] | None
    worker_cpu: float
    rss: str
    partial: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Recipients per second from the launch (the snapshot included) to the end."""
        return self.sent / self.wall if self.wall else 0.0

    def lines(self, label: str) -> list[str]:
        per = max(self.sent, 1)
        out = [
            f"  {label}: batch {self.batch_size}"
            + (" (PARTIAL: budget reached)" if self.partial else ""),
            f"    audience seeded in {self.seeded_seconds:.1f} s",
            f"    wall (launch to completed) {self.wall:.1f} s: {self.rate:,.0f} recipients/s "
            f"({self.rate * 3600 / 1e6:.2f}M/hour); first to last delivery row "
            f"{self.sending:.1f} s",
            f"    raw connector {self.raw:,.0f} msg/s: ratio {self.rate / self.raw:.2f} "
            "(goal >= 0.5)",
            f"    peer: {self.received:,} messages, {self.distinct:,} distinct recipients "
            f"(idempotency keys), {self.sent:,} sent",
            f"    Temporal actions {self.actions.total} = {self.actions.total / per:.4f} per "
            f"recipient (goal <= 0.01): activities {self.actions.activities} "
            f"{dict(sorted(self.actions.activity_types.items()))}, retries "
            f"{self.actions.retries}, timers {self.actions.timers}, signals "
            f"{self.actions.signals}, continue-as-new {self.actions.continue_as_new}; "
            f"workflow tasks {self.tasks} "
            f"(with them {(self.actions.total + self.tasks) / per:.4f})",
            f"    database: rows {self.rows} = {sum(self.rows.values()) / per:.2f} per recipient; "
            f"{self.bytes_added / per:,.0f} bytes per recipient (file + WAL growth)",
            f"    worker CPU {self.worker_cpu / per * 1e6:,.0f} us per recipient",
            f"    worker RSS (s, MiB): {self.rss}",
        ]
        if self.tables:
            ours = {k: v for k, v in self.tables.items() if "broadcast" in k or "deliver" in k}
            out.append(
                "    bytes per recipient by table/index: "
                + ", ".join(f"{k} {v / per:,.0f}" for k, v in ours.items())
            )
        out.extend(f"    note: {n}" for n in self.notes)
        return out


def sending_window(db: Engine, name: str) -> tuple[datetime | None, datetime | None, int]:
    with Session(db) as session:
        first, last, count = session.exec(
            select(
                func.min(col(Delivery.created_at)),
                func.max(col(Delivery.created_at)),
                func.count(),
            ).where(col(Delivery.journey) == f"broadcast:{name}")
        ).one()
    return first, last, int(count)


def count_rows(db: Engine, name: str) -> dict[str, int]:
    with Session(db) as session:
        recipients = session.exec(
            select(func.count()).where(col(BroadcastRecipient.broadcast_id) == name)
        ).one()
        deliveries = session.exec(
            select(func.count()).where(col(Delivery.journey) == f"broadcast:{name}")
        ).one()
    return {"broadcast_recipients": int(recipients), "deliveries": int(deliveries)}


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def one_run(
    env: WorkflowEnvironment, peer: PeerProcess, tmp: Path, batch_size: int, label: str
) -> Run:
    await asyncio.to_thread(tmp.mkdir, parents=True)
    raw = await raw_rate(peer, label)
    queue = fresh_task_queue("bench-broadcast")
    stack = Stack.create(
        tmp,
        env.client,
        queue,
        email_connector="smtp",
        smtp_host="127.0.0.1",
        smtp_port=str(peer.port),
        smtp_pool_size=str(POOL),
    )
    db_path = tmp / "stagecoach.db"
    name = f"bench-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    ids = seed_broadcast_audience(stack.engine, f"{name}-list", N, prefix=name)
    seeded = time.perf_counter() - started
    with stack.engine.connect() as conn:  # fold the WAL in: growth is the broadcast's
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    before = database_bytes(db_path)
    try:
        return await measured_run(
            stack, peer, tmp, batch_size, label, ids, name, raw, seeded, before
        )
    finally:
        for child in stack.children.values():
            child.kill()


async def measured_run(
    stack: Stack,
    peer: PeerProcess,
    tmp: Path,
    batch_size: int,
    label: str,
    ids: list[str],
    name: str,
    raw: float,
    seeded: float,
    before: int,
) -> Run:
    db_path = tmp / "stagecoach.db"
    queue = stack.settings.temporal_task_queue
    worker = stack.worker()
    await until(
        lambda: asyncio.to_thread(lambda: "b2b_nurture" in latest_versions(stack.engine)),
        within=120,
        what="the worker started",
        every=0.2,
    )
    spy: subprocess.Popen[bytes] | None = None
    if target := os.environ.get("STAGECOACH_BENCH_PYSPY"):
        assert worker.proc is not None
        spy = subprocess.Popen(  # noqa: ASYNC220 - started once, not waited on here
            [
                shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy"),
                "record",
                "--pid",
                str(worker.proc.pid),
                "--format",
                "raw",
                "--rate",
                "50",
                "--output",
                f"{target}-{label}.txt",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    notes: list[str] = []
    partial = False
    with RssSampler(lambda: worker.proc.pid if worker.alive and worker.proc else None) as rss:
        launched = time.perf_counter()
        await launch_broadcast(
            stack.client,
            stack.engine,
            Broadcast(name=name, segment=f"{name}-list", content=BROADCAST_CONTENT),
            task_queue=queue,
            batch_size=batch_size,
        )
        while (status := broadcast_status(stack.engine, name)) != "completed":
            assert status not in ("cancelled", "paused"), status
            assert worker.alive, f"the worker exited: see {worker.log}"
            if BUDGET and time.perf_counter() - launched > BUDGET:
                await steer.cancel(stack.client, stack.engine, name, "benchmark budget")
                partial = True
                await until(
                    lambda: asyncio.to_thread(
                        lambda: broadcast_status(stack.engine, name) == "cancelled"
                    ),
                    within=120,
                    what="the cancel",
                )
                break
            await asyncio.sleep(1.0)
        # A cancelled run's sends all happened before the cancel took: its rate is
        # theirs over the time up to then.
        wall = time.perf_counter() - launched
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    assert worker.proc is not None
    cpu = psutil.Process(worker.proc.pid).cpu_times()
    worker_cpu = cpu.user + cpu.system
    stats = await asyncio.to_thread(peer.command, "stats")
    first, last, deliveries = sending_window(stack.engine, name)
    histories = await workflow_histories(stack.client, broadcast_workflow_id(name))
    actions = Actions.from_histories(histories)
    rows = count_rows(stack.engine, name)
    worker.stop()
    await stack.close([])
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    after = database_bytes(db_path)
    copies: dict[str, int] = stats["copies"]
    expected = {key_digest(store.delivery_key(name, cid)) for cid in ids}
    sent_count = sum(copies.values())
    if partial:
        notes.append(f"cancelled after {BUDGET} s; {deliveries:,} delivery rows")
        assert set(copies) <= expected, "a message no recipient of this broadcast should get"
    else:
        assert set(copies) == expected, f"{len(expected - set(copies))} recipients not sent"
    assert set(copies.values()) <= {1}, f"{sum(n - 1 for n in copies.values())} duplicates"
    sending = (
        (_aware(last) - _aware(first)).total_seconds()  # type: ignore[operator]
        if first and last
        else wall
    )
    result = Run(
        batch_size=batch_size,
        seeded_seconds=seeded,
        wall=wall,
        sending=sending,
        sent=sent_count,
        raw=raw,
        received=int(stats["received"]),
        distinct=len(copies),
        actions=actions,
        tasks=workflow_tasks(histories),
        rows=rows,
        bytes_added=after - before,
        tables=table_bytes(db_path),
        worker_cpu=worker_cpu,
        rss=rss.describe(),
        partial=partial,
        notes=notes,
    )
    shutil.rmtree(tmp / ".stagecoach", ignore_errors=True)
    return result


@pytest.mark.bench
@pytest.mark.timeout(6 * 3600)
async def test_broadcast_throughput(
    dev_env: WorkflowEnvironment, go_peer: PeerProcess, tmp_path: Path
) -> None:
    lines = [
        f"\nbroadcast throughput: {N:,} recipients, email ({BROADCAST_CONTENT}, personalised), "
        f"one `stagecoach worker` process, SQLite, SMTP pool {POOL}, Go SMTP peer on "
        f"loopback; {RUNS} run(s) per batch size",
        f"  machine: {machine()}; {load()} at the start",
    ]
    runs: list[Run] = []
    for batch_size in BATCHES:
        for attempt in range(RUNS):
            label = f"b{batch_size}-r{attempt + 1}"
            run = await one_run(dev_env, go_peer, tmp_path / label, batch_size, label)
            runs.append(run)
            lines.extend(run.lines(f"run {attempt + 1}"))
            print("\n".join(lines[-len(run.lines("")) :]), flush=True)
    lines.append(f"  {load()} at the end")
    print("\n".join(lines))
