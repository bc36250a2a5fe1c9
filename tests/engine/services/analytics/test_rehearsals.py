"""Every report leaves journey rehearsals' contacts out unless asked to include them.

Two stores hold the same real contacts; one also holds rehearsal contacts, with lives
of their own (stages, events, sends, enrolments, referrals). Without
``include_rehearsals`` every report on it must equal the report on the store without
them, number for number; with it, the rehearsal contacts count."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import duckdb
import pytest

from stagecoach.engine.services.analytics import REPORTS, Params, Report, run_report
from stagecoach.engine.services.analytics.store import create_tables
from stagecoach.engine.services.analytics.synthetic import generate

START = datetime(2025, 1, 1)
REAL = 400
REHEARSED = 250
SINCE, UNTIL = START, START + timedelta(days=240)
OPTIONS: dict[str, dict[str, Any]] = {
    "conversion": {"steps": ["page.viewed", "demo.requested", "order.paid"]},
}


def _store(rehearsals: bool) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    create_tables(con)
    generate(con, REAL, seed=3, start=START, days=120)
    if rehearsals:
        generate(con, REHEARSED, seed=4, start=START, days=120)
        con.execute("UPDATE contacts SET rehearsal = true WHERE contact_key > ?", [REAL])
    return con


@pytest.fixture(scope="module")
def plain() -> Iterator[duckdb.DuckDBPyConnection]:
    con = _store(rehearsals=False)
    yield con
    con.close()


@pytest.fixture(scope="module")
def mixed() -> Iterator[duckdb.DuckDBPyConnection]:
    con = _store(rehearsals=True)
    yield con
    con.close()


def _numbers(report: Report) -> dict[str, Any]:
    body = report.to_json()
    return {name: section["rows"] for name, section in body["sections"].items()}


def _report(con: duckdb.DuckDBPyConnection, name: str, *, include: bool = False) -> Report:
    params = Params(SINCE, UNTIL, options=OPTIONS.get(name, {}), include_rehearsals=include)
    return run_report(name, con.cursor(), params)


@pytest.mark.parametrize("name", list(REPORTS))
def test_every_report_leaves_rehearsal_contacts_out(
    plain: duckdb.DuckDBPyConnection, mixed: duckdb.DuckDBPyConnection, name: str
) -> None:
    without = _report(mixed, name)
    assert _numbers(without) == _numbers(_report(plain, name))
    assert f"{REHEARSED} rehearsal contacts left out" in " ".join(without.notes)
    assert without.to_json()["include_rehearsals"] is False


@pytest.mark.parametrize("name", ["funnel", "journeys", "nps", "engagement"])
def test_asked_to_a_report_counts_rehearsal_contacts_too(
    plain: duckdb.DuckDBPyConnection, mixed: duckdb.DuckDBPyConnection, name: str
) -> None:
    included = _report(mixed, name, include=True)
    assert _numbers(included) != _numbers(_report(plain, name))
    assert not any("rehearsal" in note for note in included.notes)
    assert included.to_json()["include_rehearsals"] is True


def test_the_store_is_left_as_it_was(mixed: duckdb.DuckDBPyConnection) -> None:
    """The shadowing views live only for the report: the connection sees every table
    whole afterwards, and another report on it can include rehearsals."""
    cursor = mixed.cursor()
    run_report("funnel", cursor, Params(SINCE, UNTIL))
    [(contacts,)] = cursor.execute("SELECT count(*) FROM contacts").fetchall()
    assert contacts == REAL + REHEARSED
    [(views,)] = cursor.execute(
        "SELECT count(*) FROM duckdb_views() WHERE temporary AND NOT internal"
    ).fetchall()
    assert views == 0


def test_a_store_without_rehearsals_has_no_note(plain: duckdb.DuckDBPyConnection) -> None:
    assert _report(plain, "funnel").notes == _report(plain, "funnel", include=True).notes
