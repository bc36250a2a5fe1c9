"""Background work with two replicas on one database: what must reach every replica
does (an erasure reaches each replica's own analytics copy), and what must run once
per cluster does (a segment version's backfill, run by two hosts at once)."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select
from temporalio.client import Client

from stagecoach.engine.api.routes.events import create_write_key
from stagecoach.engine.app import create_app
from stagecoach.engine.domain.segments import MEMBERSHIP
from stagecoach.engine.services.analytics.service import Numbers
from stagecoach.engine.services.analytics.store import AnalyticsStore, default_path
from stagecoach.engine.services.leases import ERASURES, generation
from stagecoach.engine.services.segments import backfill as bf
from stagecoach.engine.services.segments.catalog import publish_segments
from stagecoach.engine.services.segments.queries import members
from stagecoach.engine.services.storage.models import Event, SegmentChange
from stagecoach.engine.settings import Settings
from tests.helpers import migrated_engine

TOKEN = "replica-loops-admin-token-0123456789"
EMAIL = "ruth.replica@example.com"


@pytest.fixture
def shared(tmp_path: Path) -> Engine:
    return migrated_engine(f"sqlite:///{tmp_path / 'shared.db'}")


def _settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        admin_token=SecretStr(TOKEN),
        lease_seconds=1,
        temporal_task_queue="replica-loops-no-worker",
    )


def _holds(path: Path, needle: str) -> bool:
    with AnalyticsStore(path).read() as con:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        return any(needle in repr(con.execute(f"FROM {t}").fetchall()) for t in tables)


async def test_an_erasure_through_one_replica_empties_the_other_replicas_analytics_copy(
    shared: Engine, client: Client, tmp_path: Path
) -> None:
    async def temporal() -> Client:
        return client

    key = create_write_key(shared, "web", source="web")
    basic = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    one, two = _settings(tmp_path / "a"), _settings(tmp_path / "b")  # two machines' disks
    copy = default_path(two.data_dir)
    with (
        TestClient(create_app(one, db=shared, temporal=temporal)) as a,
        TestClient(create_app(two, db=shared)) as b,
    ):
        answer = a.post(
            "/v1/identify",
            json={"userId": "ruth-1", "messageId": "ruth-id", "traits": {"email": EMAIL}},
            headers=basic,
        )
        assert answer.status_code == 200, answer.text
        numbers: Numbers = b.app.state.reports  # type: ignore[attr-defined]
        numbers.sync_soon(shared)  # replica B served a page: it holds a copy with Ruth
        await asyncio.to_thread(numbers.wait, 30)
        assert await asyncio.to_thread(_holds, copy, EMAIL)

        erased = a.delete(f"/v1/contacts/{EMAIL}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert erased.status_code == 202, erased.text
        assert generation(shared, ERASURES) == 1
        deadline = time.monotonic() + 10
        while await asyncio.to_thread(_holds, copy, EMAIL):
            assert time.monotonic() < deadline, "replica B's copy still holds the erased person"
            await asyncio.sleep(0.2)


# --- segment backfills: once per version, whoever runs them -------------------------------


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_two_processes_backfilling_one_version_compute_it_once_and_both_succeed(
    db: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from tests.engine.services.test_segment_backfill import HOT, NOW, PEOPLE, _ingest

    engine: Engine = (
        request.getfixturevalue("db_engine")
        if db == "postgres"
        else migrated_engine(f"sqlite:///{tmp_path / 'shared.db'}")
    )
    people = _ingest(engine, PEOPLE)
    publish_segments(engine, [HOT.spec()])
    results: dict[int, list[bf.BackfillResult]] = {}
    errors: list[str] = []

    def run(host: int) -> None:
        try:  # each host its own analytics copy, as on two machines
            settings = Settings(data_dir=tmp_path / f"host-{host}", lease_seconds=2)
            results[host] = bf.backfill(engine, settings, now=NOW, batch=1)
        except Exception as exc:
            errors.append(repr(exc))

    hosts = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for host in hosts:
        host.start()
    for host in hosts:
        host.join(60)
    assert errors == []
    # One of them computed it; the other waited and found it ready.
    assert sorted(len(r) for r in results.values()) == [0, 1]
    want = sorted(people[u] for u in ("ada", "ed", "fu"))
    assert sorted(m.contact_id for m in members(engine, HOT.name, limit=100)) == want
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(SegmentChange)).one() == 3
        told = session.exec(
            select(func.count()).select_from(Event).where(col(Event.name) == MEMBERSHIP)
        ).one()
        assert told == 3
