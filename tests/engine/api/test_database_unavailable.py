"""A database that cannot take a call is a 503 with ``Retry-After``, never a 500, and the
ingestion writer answers every waiting call within one busy timeout, not one each.

Found by fault scenario 7 (``tests/faults/test_faults_storage.py``): with PostgreSQL
down, a write key not in the API's cache was looked up, the driver error escaped and the
client got 500; with SQLite's write lock held by another process, a failed group commit
was retried call by call, each waiting out the 5 s busy timeout, so calls queued behind
it were answered only after tens of seconds (the client timed out instead of hearing 503).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from stagecoach.engine.app import create_app
from stagecoach.engine.domain.errors import DatabaseError
from stagecoach.engine.services.ingest import Incoming, Ingestor, Outcome
from stagecoach.engine.services.storage import make_engine
from stagecoach.engine.settings import Settings
from tests.helpers import migrated_engine


def test_an_unreachable_database_is_a_503_with_retry_after_not_a_500(settings: Settings) -> None:
    down = make_engine("postgresql://u@127.0.0.1:1/none")  # nothing listens on port 1
    with TestClient(create_app(settings, db=down)) as http:
        resp = http.post(
            "/v1/batch",
            auth=("a-key-not-in-the-cache", ""),
            json={"batch": [{"type": "track", "userId": "u1", "event": "x", "messageId": "m1"}]},
        )
    assert resp.status_code == 503, resp.text
    assert resp.headers["retry-after"] == "5"
    [error] = resp.json()["errors"]
    assert error["field"] == "database"
    assert "127.0.0.1" in error["message"]
    assert "Fix: retry" in error["message"]


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[Engine]:
    engine = migrated_engine(f"sqlite:///{tmp_path / 'locked.db'}")
    yield engine
    engine.dispose()


def _track(n: int) -> Incoming:
    return Incoming(
        kind="track",
        message_id=f"m{n}",
        type="page.viewed",
        occurred_at=datetime(2026, 11, 22, 9, tzinfo=UTC),
        user_id=f"u{n}",
        identities={"user_id": f"u{n}"},
    )


async def test_a_locked_sqlite_file_fails_every_waiting_call_after_one_busy_timeout(
    sqlite_file: Engine,
) -> None:
    attempts: list[int] = []
    entered = asyncio.Event()
    loop = asyncio.get_running_loop()

    class Counting(Ingestor):
        def store(self, requests: Sequence[Sequence[Incoming]]) -> list[list[Outcome]]:
            attempts.append(len(requests))
            loop.call_soon_threadsafe(entered.set)
            return super().store(requests)

    ingestor = Counting(sqlite_file)
    assert sqlite_file.url.database is not None
    holder = sqlite3.connect(sqlite_file.url.database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the lock
    try:
        first = asyncio.create_task(ingestor.accept([_track(0)]))
        await entered.wait()  # the writer is waiting out the busy timeout
        queued = [asyncio.create_task(ingestor.accept([_track(n)])) for n in range(1, 5)]
        results = await asyncio.gather(first, *queued, return_exceptions=True)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert all(isinstance(r, DatabaseError) for r in results), results
    assert "database is locked" in str(results[0])
    # One attempt for all five: the calls queued behind it were answered with it
    # (before: 1 + 1 + 4 attempts of 5 s each).
    assert attempts == [1]
    # The lock gone, the same messages are stored.
    outcomes = await asyncio.gather(*(ingestor.accept([_track(n)]) for n in range(5)))
    assert [o.message_id for [o] in outcomes] == [f"m{n}" for n in range(5)]
    assert not any(o.duplicate for [o] in outcomes)
    await ingestor.close()


async def test_ingestion_is_not_queued_behind_other_work_in_the_loops_thread_pool(
    sqlite_file: Engine,
) -> None:
    """Every thread of the loop's shared pool is held (as the forwarder's contact openings
    hold them, each waiting out a locked database): a call is still stored."""
    release = threading.Event()
    loop = asyncio.get_running_loop()
    blockers = [loop.run_in_executor(None, release.wait) for _ in range(64)]
    ingestor = Ingestor(sqlite_file)
    try:
        [outcome] = await asyncio.wait_for(ingestor.accept([_track(1)]), timeout=30)
    finally:
        release.set()
        await asyncio.gather(*blockers)
        await ingestor.close()
    assert outcome.message_id == "m1"
    assert not outcome.duplicate
