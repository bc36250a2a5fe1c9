"""A broadcast batch's reads cost the batch, not the database.

Each batch reads its recipients' addresses (``identities``) and their recent sends
(``deliveries``, for the frequency cap) for a list of contact ids. With a second,
unselective condition in SQL (``kind IN (...)``, ``status = 'sent'``), SQLite chose that
condition's index and read every email identity, or every sent delivery, in the database
for each batch: at a million recipients the batch's CPU was half again what it was at
200,000 (``docs/benchmarks/broadcasts.md``). These tests read the plan SQLite chooses
for each statement a batch runs, on a real migrated database, and fail on any search
that is not by contact or by key.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from stagecoach.engine.domain.broadcasts import Broadcast
from stagecoach.engine.services.broadcasts import store
from tests.bench._support import seed_broadcast_audience
from tests.helpers import migrated_engine

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Engine]:
    engine = migrated_engine(f"sqlite:///{tmp_path / 'plans.db'}")
    yield engine
    engine.dispose()


def plans_of(db: Engine, run: Any) -> list[tuple[str, list[str]]]:
    """Each SELECT ``run()`` executes, with the lines of SQLite's plan for it."""
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and not many:
            statements.append((statement, params))

    event.listen(db, "before_cursor_execute", seen)
    try:
        run()
    finally:
        event.remove(db, "before_cursor_execute", seen)
    found = []
    with db.connect() as conn:
        for statement, params in statements:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
            found.append((statement, [str(r[-1]) for r in rows]))
    return found


def test_a_batchs_reads_search_by_contact_or_key_never_by_kind_or_status(db: Engine) -> None:
    ids = seed_broadcast_audience(db, "plans-list", 40, prefix="plan")
    store.save_broadcast(
        db, Broadcast(name="plans", segment="plans-list", content="newsletter-monthly")
    )
    store.mark_launched(db, "plans")
    store.take_snapshot(db, "plans", launched=NOW)

    plans = plans_of(
        db,
        lambda: (
            store.due_recipients(db, "plans", now=NOW + timedelta(minutes=1), limit=20),
            store.recent_sends(db, ids[:20], NOW - timedelta(days=1)),
        ),
    )

    tables = {t for s, _ in plans for t in ("identities", "deliveries") if f"FROM {t}" in s}
    assert tables == {"identities", "deliveries"}, "the batch's reads were not all seen"
    for statement, lines in plans:
        for line in lines:
            if line.startswith("SCAN") and ("identities" in line or "deliveries" in line):
                pytest.fail(f"a full scan for a batch: {line}\n{statement}")
            assert "ix_deliveries_status" not in line, f"{line}\n{statement}"
            assert "(kind=?)" not in line, f"{line}\n{statement}"


def test_the_plan_check_can_tell_a_search_by_status(db: Engine) -> None:
    """The check above reads real plans: the statement it guards against, asked
    directly, is planned on the status index."""
    with db.connect() as conn:
        lines = [
            str(r[-1])
            for r in conn.execute(
                text(
                    "EXPLAIN QUERY PLAN SELECT contact_id FROM deliveries "
                    "WHERE contact_id IN ('a', 'b', 'c') AND status = 'sent'"
                )
            )
        ]
    assert any("ix_deliveries_status" in line for line in lines), lines
