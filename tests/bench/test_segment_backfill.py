"""How fast a new segment is backfilled over a million contacts and twenty million events,
and how many Temporal actions it spends.

Measured, on an on-disk analytics store generated directly with SQL
(``STAGECOACH_BENCH_SEGMENT_CONTACTS``, default 1,000,000 contacts, and 20 events each:
20,000,000) and a SQLite database holding the contacts' rows:

1. a baseline in the same run: a plain ``COUNT`` over the events, and the page views
   counted by contact (what any per-contact answer must at least read); then the
   segment's query alone (compile and evaluate, no writes), three times;
2. three runs of the backfill of a brand-new, typical segment ("manufacturing, viewed
   pages 3+ times in 30 days, did not pay in 90 days"), each under its own name: the
   condition compiled and evaluated over all contacts, member rows and entry rows written
   in batches of 50,000, one ``segment.membership`` event ingested per member (its
   Temporal actions: a new segment's members all enter), the version marked ready. The
   goal is under 20 s;
3. a changed version of the segment whose members are almost the same: only contacts
   whose membership changed are notified; Temporal actions per unchanged contact: 0.

Timings are printed, never asserted (goals are printed beside them). Run with
``pytest tests/bench/test_segment_backfill.py --run-bench -s -q``.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from stagecoach.engine.domain.conditions import Condition, performed, trait
from stagecoach.engine.domain.segments import MEMBERSHIP, Segment
from stagecoach.engine.services.analytics.store import AnalyticsStore, create_tables
from stagecoach.engine.services.segments import _sql
from stagecoach.engine.services.segments.backfill import backfill
from stagecoach.engine.services.segments.catalog import publish_segments
from stagecoach.engine.services.storage import make_engine, upgrade
from stagecoach.engine.services.storage.models import Event, SegmentMember
from stagecoach.engine.settings import Settings
from tests.bench._support import env_int, machine

CONTACTS = env_int("STAGECOACH_BENCH_SEGMENT_CONTACTS", 1_000_000)
EVENTS_PER_CONTACT = 20
GOAL_SECONDS = 20.0
NOW = datetime(2026, 6, 1, tzinfo=UTC)
TYPES = [
    "page.viewed",
    "page.viewed",
    "page.viewed",
    "email.opened",
    "email.clicked",
    "content.downloaded",
    "webinar.attended",
    "order.paid",
]
INDUSTRIES = ["manufacturing", "energy", "retail", "finance", "education"]


def typical(days: int = 30) -> Condition:
    """Manufacturing, 3+ page views in the window, no order in 90 days."""
    return (
        trait("industry", "eq", "manufacturing")
        & performed("page.viewed", at_least=3, within=timedelta(days=days))
        & ~performed("order.paid", within=timedelta(days=90))
    )


def generate(path: Path, contacts: int) -> None:
    """Contacts with traits and events spread over 120 days before ``NOW``, in SQL."""
    con = duckdb.connect(str(path))
    create_tables(con)
    now = NOW.replace(tzinfo=None).isoformat(" ")
    industries = "[" + ", ".join(f"'{i}'" for i in INDUSTRIES) + "]"
    types = "[" + ", ".join(f"'{t}'" for t in TYPES) + "]"
    con.execute(
        f"""
        INSERT INTO contacts (id, stage, traits, created_at, updated_at, contact_key)
        SELECT printf('c_%08d', k), 'lead',
            json_object('industry', {industries}[(1 + hash(k, 1) % 5)::BIGINT],
                        'employees', (hash(k, 2) % 5000)::INTEGER),
            TIMESTAMP '{now}' - INTERVAL 200 DAY, TIMESTAMP '{now}' - INTERVAL 1 DAY, k
        FROM range(1, {contacts} + 1) AS r(k)
        """  # noqa: S608
    )
    con.execute(
        f"""
        INSERT INTO events (id, contact_id, kind, name, properties, context, source,
                            occurred_at, received_at, contact_key)
        SELECT n, printf('c_%08d', k), 'track', {types}[(1 + hash(n, 3) % {len(TYPES)})::BIGINT],
            NULL, NULL, 'bench', t, t, k
        FROM (
            SELECT n, (1 + hash(n, 4) % {contacts})::BIGINT AS k,
                TIMESTAMP '{now}' - to_microseconds((hash(n, 5) % 10368000000)::BIGINT * 1000)
                    AS t
            FROM range(1, {contacts * EVENTS_PER_CONTACT} + 1) AS r(n)
        )
        """  # noqa: S608
    )
    con.execute("INSERT INTO contact_keys SELECT id, contact_key FROM contacts")
    con.close()


@pytest.mark.bench
@pytest.mark.timeout(1800)
def test_segment_backfill_over_a_million_contacts(tmp_path: Path) -> None:
    store_path = tmp_path / "analytics.duckdb"
    started = time.perf_counter()
    generate(store_path, CONTACTS)
    generated = time.perf_counter() - started

    settings = Settings(data_dir=tmp_path / ".stagecoach", analytics_path=store_path)
    db = make_engine(f"sqlite:///{tmp_path / 'stagecoach.db'}")
    upgrade(db)
    stamp = NOW.replace(tzinfo=None).isoformat(" ")
    with db.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO contacts (id, stage, traits, created_at, updated_at, rehearsal)"
            " VALUES (?, 'lead', '{}', ?, ?, 0)",
            [(f"c_{k:08d}", stamp, stamp) for k in range(1, CONTACTS + 1)],
        )
    store = AnalyticsStore(store_path)

    with store.read() as con:
        t0 = time.perf_counter()
        [(events,)] = con.execute("SELECT count(*) FROM events").fetchall()
        count_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        grouped = con.execute(
            "SELECT count(*) FROM (SELECT contact_key, count(*) FROM events"
            " WHERE name = 'page.viewed' GROUP BY contact_key)"
        ).fetchall()
        group_s = time.perf_counter() - t0
        evaluations = []
        for _ in range(3):
            t0 = time.perf_counter()
            found = _sql.members(con, typical(), now=NOW)
            evaluations.append(time.perf_counter() - t0)
    assert events == CONTACTS * EVENTS_PER_CONTACT
    assert grouped[0][0] > 0

    runs: list[tuple[float, int, int]] = []
    for n in range(1, 4):
        segment = Segment(f"typical-{n}", description="", when=typical())
        publish_segments(db, [segment.spec()])
        t0 = time.perf_counter()
        [result] = backfill(db, settings, segment.name, now=NOW, store=store, sync=False)
        seconds = time.perf_counter() - t0
        runs.append((seconds, result.members, result.notified))
        assert result.compiled
        assert result.notified == result.members == result.entered

    # A changed version (a 31-day window): only the contacts that flip are told.
    publish_segments(db, [Segment("typical-1", description="", when=typical(31)).spec()])
    t0 = time.perf_counter()
    [changed] = backfill(db, settings, "typical-1", now=NOW, store=store, sync=False)
    changed_s = time.perf_counter() - t0
    unchanged = CONTACTS - changed.entered - changed.exited
    assert changed.notified == changed.entered + changed.exited
    with Session(db) as session:
        told = session.exec(select(func.count()).where(Event.name == MEMBERSHIP)).one()
        members_now = session.exec(
            select(func.count()).where(
                SegmentMember.segment == "typical-1", SegmentMember.version == changed.version
            )
        ).one()
    assert told == sum(r[2] for r in runs) + changed.notified
    assert members_now == changed.members

    load = os.getloadavg()
    print()
    print(f"machine: {machine()}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"store: {CONTACTS:,} contacts, {events:,} events, generated in {generated:.1f} s")
    print(
        f"baseline: COUNT(*) over events {count_s:.3f} s; page views grouped by contact"
        f" {group_s:.3f} s"
    )
    print(
        "compile + evaluate alone: "
        + ", ".join(f"{t:.2f} s" for t in evaluations)
        + f" ({len(found):,} members)"
    )
    for n, (seconds, members, notified) in enumerate(runs, 1):
        print(
            f"new segment, run {n}: {seconds:.2f} s (goal < {GOAL_SECONDS:.0f} s), {members:,}"
            f" members, {notified:,} notified = Temporal actions (1 per entering contact)"
        )
    print(
        f"changed version: {changed_s:.2f} s, +{changed.entered:,} -{changed.exited:,},"
        f" {changed.notified:,} notified; {unchanged:,} unchanged contacts: 0 actions"
    )
    db.dispose()
