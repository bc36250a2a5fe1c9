"""How fast the three core analyses run on a million contacts, and whether they are right.

Measured:

1. generating ``STAGECOACH_BENCH_ANALYTICS_CONTACTS`` synthetic contacts (default
   1,000,000, about 21 events each) into an on-disk DuckDB file, as a synced store
   would hold them (``stagecoach.engine.services.analytics.synthetic``);
2. on that file, best of 3 after one warm-up: the pipeline funnel (width, conversion,
   length, flows, time in stage), a 4-step conversion funnel with a 14-day window and
   the top 20 paths to ``order.paid`` with drop-off. The goal is under 2 s each;
3. on a 100,000-contact subset (the first contacts of the same file), each report
   against the plain-Python reference of ``tests/engine/services/analytics/_reference.py``:
   asserted equal, both timings printed;
4. a sync of ``STAGECOACH_BENCH_ANALYTICS_SYNC_EVENTS`` events (default 200,000, with
   their contacts, transitions, deliveries and enrolments) from a SQLite file into a
   fresh store, then an incremental sync of 5% more; rows a second printed, and the
   reports on the synced copy asserted equal to those on the data it came from.

Timings are printed, never asserted. Run with
``pytest tests/bench/test_analytics_queries.py --run-bench -s -q``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa

from stagecoach.engine.services.analytics._report import Params, Report
from stagecoach.engine.services.analytics.conversion import conversion_report
from stagecoach.engine.services.analytics.paths import paths_report
from stagecoach.engine.services.analytics.pipeline import STAGES, pipeline_report
from stagecoach.engine.services.analytics.store import AnalyticsStore, create_tables
from stagecoach.engine.services.analytics.synthetic import generate
from stagecoach.engine.services.storage import make_engine, upgrade
from tests.bench._support import env_int, machine
from tests.engine.services.analytics import _reference

CONTACTS = env_int("STAGECOACH_BENCH_ANALYTICS_CONTACTS", 1_000_000)
SUBSET = min(CONTACTS, 100_000)
SYNC_EVENTS = env_int("STAGECOACH_BENCH_ANALYTICS_SYNC_EVENTS", 200_000)
GOAL_SECONDS = 2.0
START = datetime(2025, 1, 1)
SINCE, UNTIL = datetime(2025, 2, 1), datetime(2025, 7, 1)
STEPS = ["page.viewed", "content.downloaded", "demo.requested", "order.paid"]
WINDOW = timedelta(days=14)

QUERIES: dict[str, tuple[Callable[..., Report], Params]] = {
    "pipeline funnel + time in stage": (pipeline_report, Params(SINCE, UNTIL)),
    "conversion, 4 steps, 14 days": (
        conversion_report,
        Params(SINCE, UNTIL, options={"steps": STEPS, "window_days": 14}),
    ),
    "top 20 paths to order.paid": (paths_report, Params(SINCE, UNTIL)),
}


def best_of(runs: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """One warm-up, then the best of ``runs`` timed calls, and the last result."""
    result = fn()
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def _call(
    report: Callable[..., Report], con: duckdb.DuckDBPyConnection, params: Params
) -> Callable[[], Report]:
    return lambda: report(con, params)


def subset(source: Path, contacts: int) -> duckdb.DuckDBPyConnection:
    """An in-memory store holding the first ``contacts`` contacts of ``source``."""
    con = duckdb.connect(":memory:")
    create_tables(con)
    con.execute(f"ATTACH '{source}' AS big (READ_ONLY)")
    for table in ("contacts", "events", "stage_transitions"):
        order = "created_at" if table == "contacts" else "id"
        con.execute(
            f"INSERT INTO {table} SELECT * FROM big.{table} "  # noqa: S608
            f"WHERE contact_key <= {contacts} ORDER BY {order}"
        )
    con.execute("DETACH big")
    return con


def reference(con: duckdb.DuckDBPyConnection, name: str, report: Report) -> None:
    """Compute the reference answer for report ``name`` and assert the report equals it."""
    if name.startswith("pipeline"):
        _reference.assert_pipeline_matches(report, _reference.pipeline(con, SINCE, UNTIL, STAGES))
    elif name.startswith("conversion"):
        expected = _reference.conversion(con, SINCE, UNTIL, STEPS, WINDOW)
        _reference.assert_conversion_matches(report, expected)
    else:
        expected_paths = _reference.paths(con, SINCE, UNTIL, "order.paid", 4, 20)
        _reference.assert_paths_match(report, expected_paths)


# --- the SQLite source for the sync ---------------------------------------------------------

_EXPORT: dict[str, str] = {
    # updated_at is when the row was written, as the application stamps it: now.
    "contacts": "SELECT id, stage, locale, timezone, traits::VARCHAR, {created_at}, "
    "strftime(now()::TIMESTAMPTZ AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S.%f') FROM contacts",
    "events": "SELECT id, 'm' || id, contact_id, kind, name, properties::VARCHAR, "
    "context::VARCHAR, source, channel, {occurred_at}, {received_at} FROM events",
    "stage_transitions": "SELECT id, contact_id || ':' || id, contact_id, from_stage, "
    "to_stage, kind, reason, source, trigger_event_type, {at} FROM stage_transitions",
    "deliveries": "SELECT id, contact_id || ':' || journey_version || ':' || step_id || ':1', "
    "contact_id, journey, journey_version, step_id, enrolment, channel, content_id, status, "
    "{created_at}, {sent_at} FROM deliveries",
    "journey_enrolments": "SELECT id, contact_id, journey, version, enrolment, status, reason, "
    "arms::VARCHAR, trail::VARCHAR, {started_at}, {finished_at}, {started_at} "
    "FROM journey_enrolments",
}
_COLUMNS: dict[str, str] = {
    "contacts": "id, stage, locale, timezone, traits, created_at, updated_at",
    "events": "id, message_id, contact_id, kind, name, properties, context, source, channel, "
    "occurred_at, received_at",
    "stage_transitions": "id, key, contact_id, from_stage, to_stage, kind, reason, source, "
    "trigger_event_type, at",
    "deliveries": "id, idempotency_key, contact_id, journey, journey_version, step_id, "
    "enrolment, channel, content_id, status, created_at, sent_at",
    "journey_enrolments": "id, contact_id, journey, version, enrolment, status, reason, arms, "
    "trail, started_at, finished_at, updated_at",
}


def export(con: duckdb.DuckDBPyConnection, engine: sa.Engine, above: dict[str, Any]) -> int:
    """Copy the store's rows (ids above ``above``) into the operational SQLite database,
    as the application would have written them; returns the events copied."""

    def stamp(column: str) -> str:
        return f"strftime(\"{column}\", '%Y-%m-%d %H:%M:%S.%f')"

    copied = 0
    with engine.begin() as conn:
        for table, select in _EXPORT.items():
            names = [c.strip() for c in _COLUMNS[table].split(",")]
            sql = select.format(**{n: stamp(n) for n in (*names, "created_at", "sent_at")})
            if table == "contacts":
                where, params = " WHERE NOT list_contains(?, id)", [sorted(above.get(table, ()))]
            else:
                where, params = " WHERE id > ?", [above.get(table, 0)]
            rows = con.execute(sql + where, params).fetchall()
            marks = ", ".join("?" for _ in names)
            conn.exec_driver_sql(
                f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})",  # noqa: S608
                rows,
            )
            copied += len(rows) if table == "events" else 0
    return copied


def high_marks(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    marks: dict[str, Any] = {
        t: con.execute(f"SELECT coalesce(max(id), 0) FROM {t}").fetchall()[0][0]  # noqa: S608
        for t in _EXPORT
        if t != "contacts"
    }
    marks["contacts"] = {r[0] for r in con.execute("SELECT id FROM contacts").fetchall()}
    return marks


@pytest.mark.bench
@pytest.mark.timeout(3600)
def test_analytics_queries(tmp_path: Path) -> None:
    lines = [f"\nanalytics queries ({machine()})"]

    # 1. Synthetic data on disk.
    path = tmp_path / "analytics.duckdb"
    con = duckdb.connect(str(path))
    create_tables(con)
    started = time.perf_counter()
    counts = generate(con, CONTACTS, start=START, days=180)
    con.execute("CHECKPOINT")
    generated = time.perf_counter() - started
    con.close()
    lines.append(
        f"  1. generated {counts['contacts']:,} contacts, {counts['events']:,} events, "
        f"{counts['stage_transitions']:,} transitions, {counts['deliveries']:,} deliveries, "
        f"{counts['journey_enrolments']:,} enrolments, {counts['referrals']:,} referrals "
        f"in {generated:.1f} s "
        f"({path.stat().st_size / 2**20:,.0f} MiB on disk)"
    )

    # 2. The queries on the whole file.
    con = duckdb.connect(str(path), read_only=True)
    lines.append(f"  2. queries, {CONTACTS:,} contacts, best of 3 (goal < {GOAL_SECONDS:.0f} s):")
    for name, (report, params) in QUERIES.items():
        seconds, _ = best_of(3, _call(report, con, params))
        verdict = "ok" if seconds < GOAL_SECONDS else "OVER GOAL"
        lines.append(f"     {name:34} {seconds:6.2f} s  {verdict}")
    con.close()

    # 3. Query and reference on a subset.
    small = subset(path, SUBSET)
    lines.append(
        f"  3. {SUBSET:,}-contact subset: query vs plain-Python reference (asserted equal):"
    )
    for name, (report, params) in QUERIES.items():
        seconds, result = best_of(1, _call(report, small, params))
        started = time.perf_counter()
        reference(small, name, result)
        checked = time.perf_counter() - started
        lines.append(f"     {name:34} query {seconds:6.2f} s, reference {checked:6.1f} s, equal")
    small.close()

    # 4. Sync from SQLite.
    source = duckdb.connect(":memory:")
    create_tables(source)
    generate(source, max(1, SYNC_EVENTS // 21), start=START, days=180)
    engine = make_engine(f"sqlite:///{tmp_path / 'stagecoach.db'}")
    upgrade(engine)
    events = export(source, engine, {})
    store = AnalyticsStore(tmp_path / "synced.duckdb")
    started = time.perf_counter()
    first = store.sync(engine)
    first_seconds = time.perf_counter() - started
    marks = high_marks(source)
    generate(source, max(1, SYNC_EVENTS // 21 // 20), seed=1, start=START, days=180)
    more = export(source, engine, marks)
    started = time.perf_counter()
    second = store.sync(engine)
    second_seconds = time.perf_counter() - started
    lines.append(
        f"  4. sync from SQLite: {first.total:,} rows ({events:,} events) in {first_seconds:.1f} s"
        f" = {first.total / first_seconds:,.0f} rows/s ({events / first_seconds:,.0f} events/s);"
        f"\n     then {more:,} new events ({sum(second.added.values()):,} rows added, "
        f"{second.total:,} read with the overlaps) in {second_seconds:.2f} s"
    )
    assert first.added["events"] == events
    assert second.added["events"] == more
    with store.read() as synced:
        for name, (report, params) in QUERIES.items():
            assert report(synced, params).sections == report(source, params).sections, name
    lines.append("     reports on the synced copy equal those on its source")
    engine.dispose()
    print("\n".join(lines))
