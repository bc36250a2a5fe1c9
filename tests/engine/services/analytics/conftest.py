"""Fixtures for the analytics tests: an empty in-memory analytics store.

``duck`` is a DuckDB connection with every analytics table created; tests fill it with
``stagecoach.engine.services.analytics.store.insert_rows(duck, "events", [{...}, ...])``.

``synthetic`` is a shared, read-only store of 5,000 synthetic contacts.

DuckDB 2 reserves ``at``: write ``t."at"`` (or ``t.at``) for ``stage_transitions.at``.
It also refuses new work on a connection whose last result was not read to the end:
prefer ``fetchall()`` to ``fetchone()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import duckdb
import pytest

from stagecoach.engine.services.analytics.store import create_tables
from stagecoach.engine.services.analytics.synthetic import generate


@pytest.fixture
def duck() -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection with all analytics tables created."""
    con = duckdb.connect(":memory:")
    create_tables(con)
    try:
        yield con
    finally:
        con.close()


SYNTHETIC_START = datetime(2025, 1, 1)
SYNTHETIC_CONTACTS = 5_000


@pytest.fixture(scope="session")
def synthetic() -> Iterator[duckdb.DuckDBPyConnection]:
    """A store holding 5,000 synthetic contacts
    (``stagecoach.engine.services.analytics.synthetic``), shared
    by every test of the session: read it, never write to it."""
    con = duckdb.connect(":memory:")
    create_tables(con)
    generate(con, SYNTHETIC_CONTACTS, seed=7, start=SYNTHETIC_START, days=120)
    try:
        yield con
    finally:
        con.close()
