"""Fault scenario 7: the operational database locked (SQLite) or restarted (PostgreSQL).

Both run the workload of ``_harness`` and reconcile the same books as the other
scenarios (every message received once, every accepted event stored and applied once,
the outbox drained, every journey at its step).

- 7a, SQLite: a separate process takes the write lock (``BEGIN EXCLUSIVE``) while
  contacts are being created and sent to, and holds it for ``STAGECOACH_FAULT_LOCK_SECONDS``
  (10 in the short form, 30 in the full form). In WAL mode readers go on; every writer
  waits its ``busy_timeout`` (5 s) and then fails: the API must answer 503 with
  ``Retry-After`` (never 500) and the client resend the same message ids; the worker's
  activities must retry rather than fail a journey; the outbox must drain once the lock
  is gone.
- 7b, PostgreSQL: the stack runs on a PostgreSQL cluster of the test's own. Mid-run it
  is restarted (``pg_ctl restart -m fast``), then stopped as a crash would
  (``-m immediate``) and kept down for ``STAGECOACH_FAULT_OUTAGE_SECONDS`` (12 in the
  short form; 30 in the full form, longer than the API's 30 s write-key cache, so a key
  lookup surely meets the dead database) before it starts again on the same data
  directory. Pools must drop the dead connections (``pool_pre_ping``).

    pytest tests/faults/test_faults_storage.py -m faults -s                    # short
    STAGECOACH_FAULT_CONTACTS=500 pytest tests/faults/test_faults_storage.py -m faults -s
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url
from temporalio.testing import WorkflowEnvironment

from tests.faults._harness import (
    ROOT,
    Figures,
    Stack,
    Workload,
    contact_ids,
    contacts_from_env,
    drive,
    people,
    seconds,
)
from tests.faults.test_faults import _http_books, _settle
from tests.helpers import free_port, fresh_postgres_database
from tests.peers.http_email import HttpEmailPeer

pytestmark = pytest.mark.faults

CONTACTS = contacts_from_env()
FULL = CONTACTS >= 500
RATE = 60.0 if not FULL else 150.0
LOCK_SECONDS = seconds("LOCK", short=10.0, full=30.0)
"""7a: how long another process holds the write lock; past the 5 s ``busy_timeout``."""
OUTAGE_SECONDS = seconds("OUTAGE", short=12.0, full=30.0)
"""7b: how long PostgreSQL stays down after the crash."""
SERVER_ERRORS = ("500", "502", "504")

_HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
print("released", flush=True)
"""


def _notes(stack: Stack, workload: Workload, peer: HttpEmailPeer) -> str:
    """What the fault did: the answers calls got, worker attempts retried, peer POSTs."""
    return (
        f"offered {RATE:.0f} events/s; answers {dict(workload.answers)}; worker attempts "
        f"failed and retried {dict(_failed_attempts(stack.tmp / 'worker.log'))}; "
        f"peer POSTs {peer.requests['POST /v1/send']}"
    )


def _failed_attempts(log: Path) -> Counter[str]:
    """Activity attempts the worker completed as failed, per activity type (its log)."""
    failed: Counter[str] = Counter()
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{") and "Completing activity as failed" in line:
            found = re.search(r"'activity_type': '([^']+)'", json.loads(line)["event"])
            failed[found.group(1) if found else "?"] += 1
    return failed


async def _hold_write_lock(path: Path, seconds: float, workload: Workload) -> str:
    """Another process takes SQLite's write lock on ``path`` and holds it ``seconds``;
    says for how long, and how many events the client had seen accepted by then."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLD_LOCK, str(path), str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None
    line = await asyncio.wait_for(holder.stdout.readline(), 60)
    assert line.strip() == b"locked", f"the lock holder did not lock: {line!r}"
    taken, before = time.monotonic(), len(workload.accepted)
    line = await holder.stdout.readline()
    released, during = time.monotonic(), len(workload.accepted)
    assert line.strip() == b"released", f"the lock holder ended badly: {line!r}"
    assert await holder.wait() == 0
    return (
        f"write lock held {released - taken:.1f} s by another process, "
        f"{before} events accepted before it, {during} by the time it was let go"
    )


@pytest.mark.timeout(480 if not FULL else 1800)
async def test_sqlite_write_lock_held_by_another_process_loses_and_doubles_nothing(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    """7a. Another process holds the SQLite write lock (10 s, or 30 s in the full form;
    past the 5 s busy timeout either way) while contacts are being created and sent to:
    the API answers 503 (never 500) and the client resends, the worker's writes retry,
    and once the lock is gone everything completes once."""
    persons = people(f"l{uuid.uuid4().hex[:6]}", CONTACTS)
    started = time.monotonic()
    with HttpEmailPeer() as peer:
        stack = Stack.create(
            tmp_path, env.client, task_queue,
            email_connector="http", email_http_url=peer.generic_url,
            email_http_token=peer.generic_token,
        )  # fmt: skip
        db = Path(str(make_url(stack.settings.resolved_database_url).database))
        try:
            stack.worker()
            await stack.api()
            workload = Workload()
            faults: list[str] = []

            async def lock() -> None:
                # Once a third of the contacts were taken in: sends and enrolments are
                # under way in the worker and more contacts are still coming.
                while len(workload.accepted) < CONTACTS // 3:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                at = time.monotonic() - started
                held = await _hold_write_lock(db, LOCK_SECONDS, workload)
                faults.append(f"{held} (from {at:.1f} s)")

            await asyncio.gather(
                drive(stack.api_url, stack.key, persons, rate=RATE, result=workload), lock()
            )
            settle = await _settle(stack, persons, CONTACTS)
            figures = Figures(
                "7a SQLite write lock held by another process", CONTACTS, workload.rate,
                faults, seconds=time.monotonic() - started, settle_seconds=settle,
                notes=_notes(stack, workload, peer),
            )  # fmt: skip
            await _http_books(stack, persons, workload, peer).check(figures)
            figures.publish()
            answers = workload.answers
            assert not any(answers[s] for s in SERVER_ERRORS), f"server errors: {answers}"
            assert answers["503"] + answers["ReadTimeout"] > 0, f"the lock met no call: {answers}"
        finally:
            await stack.close(contact_ids(stack.engine, persons).values())


# --- PostgreSQL -------------------------------------------------------------------------


def _pg_bindir() -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "postgres.sh")], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        pytest.skip(f"PostgreSQL cannot be installed here: {out.stderr.strip()[-300:]}")
    return Path(out.stdout.strip().splitlines()[-1])


class Postgres:
    """A PostgreSQL cluster of this test's own, driven by ``pg_ctl`` so it can be
    restarted, crashed and started again on the same data directory and port."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="stagecoach-pg-faults-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = free_port()
        if os.geteuid() == 0:
            # initdb and postgres refuse to run as root.
            shutil.chown(self.dir, user="postgres", group="postgres")

    def _run(self, *argv: str) -> None:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        out = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        assert out.returncode == 0, f"{' '.join(argv)}: {out.stderr.strip()} (see {self.log})"

    def _ctl(self, action: str, *extra: str) -> None:
        self._run("pg_ctl", action, "-D", str(self.data), "-w", "-t", "60", *extra)

    def start(self) -> None:
        if not self.data.exists():
            self._run(
                "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--no-sync",
            )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._ctl("start", "-l", str(self.log), "-o", options)

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast", "-l", str(self.log))

    def crash(self) -> None:
        """Stop at once, as a power cut would: the next start replays the WAL."""
        self._ctl("stop", "-m", "immediate")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._ctl("stop", "-m", "immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def base(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def create_database(self) -> str:
        return fresh_postgres_database(self.base, "faults")


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    cluster = Postgres(_pg_bindir())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.mark.postgres
@pytest.mark.timeout(480 if not FULL else 1800)
async def test_postgres_restarted_then_down_a_while_loses_and_doubles_nothing(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, postgres: Postgres
) -> None:
    """7b. On PostgreSQL: restarted mid-run, then crashed and kept down (12 s, or 30 s in
    the full form); the API answers 503 while it is gone, every pool reconnects, and the
    books balance."""
    persons = people(f"p{uuid.uuid4().hex[:6]}", CONTACTS)
    started = time.monotonic()
    with HttpEmailPeer() as peer:
        stack = Stack.create(
            tmp_path, env.client, task_queue, database_url=postgres.create_database(),
            email_connector="http", email_http_url=peer.generic_url,
            email_http_token=peer.generic_token,
        )  # fmt: skip
        try:
            stack.worker()
            await stack.api()
            workload = Workload()
            faults: list[str] = []

            async def accepted(count: int) -> None:
                while len(workload.accepted) < count:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)

            async def outages() -> None:
                await accepted(CONTACTS // 4)
                at = time.monotonic()
                await asyncio.to_thread(postgres.restart)
                faults.append(
                    f"pg_ctl restart -m fast at {at - started:.1f} s, "
                    f"back in {time.monotonic() - at:.1f} s"
                )
                await accepted(CONTACTS)
                at = time.monotonic()
                await asyncio.to_thread(postgres.crash)
                await asyncio.sleep(OUTAGE_SECONDS)
                await asyncio.to_thread(postgres.start)
                faults.append(
                    f"pg_ctl stop -m immediate at {at - started:.1f} s, "
                    f"started again after {time.monotonic() - at:.1f} s"
                )

            await asyncio.gather(
                drive(
                    stack.api_url, stack.key, persons, rate=RATE, result=workload,
                    give_up_after=OUTAGE_SECONDS + 120,
                ),
                outages(),
            )  # fmt: skip
            settle = await _settle(stack, persons, CONTACTS)
            figures = Figures(
                "7b PostgreSQL restarted, then down", CONTACTS, workload.rate, faults,
                seconds=time.monotonic() - started, settle_seconds=settle,
                notes=_notes(stack, workload, peer),
            )  # fmt: skip
            await _http_books(stack, persons, workload, peer).check(figures)
            figures.publish()
            answers = workload.answers
            assert not any(answers[s] for s in SERVER_ERRORS), f"server errors: {answers}"
            assert answers["503"] > 0, f"the outage met no call: {answers}"
        finally:
            await stack.close(contact_ids(stack.engine, persons).values())
