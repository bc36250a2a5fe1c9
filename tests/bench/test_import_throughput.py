"""Rows a second through ``stagecoach import`` of a 100,000-row CSV file, and where the
time goes.

The file is what a CRM export looks like: email on every row (5% in another case, for
people already known by user id), a phone on every other row, names, company, country,
size and industry; 1% of rows repeated exactly, 0.5% with an unreadable email. Measured:

1. the import as a user runs it: the command through Typer's CliRunner on a fresh SQLite
   file (migrated by the command), the known people stored first through ``Ingestor``;
2. the same file imported again (every row a duplicate).

Baselines in the same run, on the same file: reading the CSV alone (encoding check and
``csv``), the dry run (reading, mapping and ``parse_message``, no database), and
``Ingestor.store`` of the same messages already parsed, in the same batches, into a
fresh database: the floor the import stands on. Figures are printed, never asserted;
asserted is correctness: every figure of the summary, and the rows in the store.
Run with ``pytest tests/bench/test_import_throughput.py --run-bench -s -q``;
``STAGECOACH_BENCH_IMPORT_ROWS`` (default 100,000) sets the file's size.
"""

from __future__ import annotations

import csv
import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
import typer
from sqlalchemy import Engine, func
from sqlmodel import Session, select
from typer.testing import CliRunner, Result

from stagecoach.engine.cli.imports import import_contacts
from stagecoach.engine.services.imports import (
    ImportOptions,
    Rejected,
    RowReader,
    detect_encoding,
    open_table,
    plan_columns,
    run_import,
)
from stagecoach.engine.services.ingest import Incoming, Ingestor, parse_message
from stagecoach.engine.services.storage import make_engine, upgrade
from stagecoach.engine.services.storage.models import Contact, Event
from tests.bench._support import env_int, machine

ROWS = env_int("STAGECOACH_BENCH_IMPORT_ROWS", 100_000)
BATCH = 1000
GOAL = 2000.0
HEADER = ["email", "phone", "first_name", "last_name", "company", "country"]
HEADER += ["company_size", "industry"]

app = typer.Typer()
app.command("import")(import_contacts)


@app.callback()
def _root() -> None:
    """A group, so the command is called as ``import``."""


def people_rows() -> Iterator[tuple[str, list[str]]]:
    """(what the import must make of it, the row), person after person."""
    for n in itertools.count():
        kind = "bad" if n % 200 == 7 else "known" if n % 20 == 0 else "new"
        email = {
            "bad": f"person{n}-at-example.com",
            "known": f"Person{n}@Example.com",
            "new": f"person{n}@example.com",
        }[kind]
        phone = f"+8613{n:09d}" if n % 2 else ""
        row = [email, phone, f"Name{n % 97}", f"Family{n % 89}", f"Acme {n % 500}", "CN"]
        row += [str((20, 80, 150, 400, 2000)[n % 5]), ("software", "manufacturing")[n % 2]]
        yield kind, row
        if n % 100 == 49:
            yield "repeated", row  # the same row again: a duplicate, stored once


def write_export(path: Path, rows: int) -> Counter[str]:
    """A CRM export of ``rows`` rows; how many of each kind it holds."""
    kinds: Counter[str] = Counter()
    with path.open("w", encoding="utf-8", newline="") as file:
        out = csv.writer(file)
        out.writerow(HEADER)
        for kind, row in itertools.islice(people_rows(), rows):
            out.writerow(row)
            kinds[kind] += 1
    return kinds


def known_people(rows: int) -> list[Incoming]:
    """The people the store already knows, by user id and email."""
    received = datetime.now(UTC)
    people: list[Incoming] = []
    for n in range(0, rows, 20):
        parsed = parse_message(
            {
                "type": "identify",
                "userId": f"crm-{n}",
                "traits": {"email": f"person{n}@example.com"},
            },
            received_at=received,
        )
        assert isinstance(parsed, Incoming)
        people.append(parsed)
    return people


def fresh_engine(path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    return engine


def store(engine: Engine, messages: list[Incoming]) -> None:
    ingestor = Ingestor(engine)
    for at in range(0, len(messages), BATCH):
        ingestor.store([messages[at : at + BATCH]])


def figure(result: Result, label: str) -> int:
    line = next(x for x in result.stdout.splitlines() if x.startswith(label))
    return int(line[len(label) :].split()[0].replace(",", ""))


def counts(engine: Engine) -> tuple[int, int]:
    with Session(engine) as session:
        events = session.exec(select(func.count()).select_from(Event)).one()
        contacts = session.exec(select(func.count()).select_from(Contact)).one()
    return events, contacts


class _Silent:
    def advance(self, rows: int) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


def rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:8,.0f} rows/s ({seconds:5.1f} s)"


@pytest.mark.bench
@pytest.mark.timeout(900)
def test_import_throughput(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export = tmp_path / "contacts.csv"
    expected = write_export(export, ROWS)
    people = known_people(ROWS)

    # Baseline a: reading the file alone.
    started = time.perf_counter()
    encoding, _ = detect_encoding(export)
    table = open_table(export, encoding)
    read = sum(1 for _ in table.rows)
    table.close()
    read_seconds = time.perf_counter() - started
    assert read == ROWS

    # Baseline b: the dry run, reading, mapping and parse_message.
    started = time.perf_counter()
    dry = run_import(
        ImportOptions(path=export, dry_run=True), database=None, progress=lambda *_: _Silent(),
        out=lambda _: None,
    )  # fmt: skip
    dry_seconds = time.perf_counter() - started
    assert (dry.rows, dry.rejected) == (ROWS, expected["bad"])

    # Baseline c: Ingestor.store of the same messages, parsed beforehand, same batches.
    table = open_table(export, encoding)
    reader = RowReader(plan_columns(table.header, path=export), width=len(HEADER), source="import")
    messages = [
        m for _, cells in table.rows if not isinstance(m := reader.message(cells), Rejected)
    ]
    table.close()
    floor = fresh_engine(tmp_path / "floor.db")
    store(floor, people)
    started = time.perf_counter()
    store(floor, messages)
    store_seconds = time.perf_counter() - started
    floor_counts = counts(floor)
    floor.dispose()

    # 1: the import as a user runs it.
    db = tmp_path / "stagecoach.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STAGECOACH_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("STAGECOACH_DATA_DIR", str(tmp_path / ".stagecoach"))
    monkeypatch.setenv("STAGECOACH_LOG_LEVEL", "warning")
    engine = fresh_engine(db)
    store(engine, people)
    started = time.perf_counter()
    first = CliRunner().invoke(app, ["import", str(export)])
    import_seconds = time.perf_counter() - started
    assert first.exit_code == 0, first.output
    progress_lines = [line for line in first.stderr.splitlines() if "rows/s" in line]
    after_first = counts(engine)

    # 2: the same file again.
    started = time.perf_counter()
    again = CliRunner().invoke(app, ["import", str(export)])
    again_seconds = time.perf_counter() - started
    assert again.exit_code == 0, again.output
    after_again = counts(engine)
    engine.dispose()

    import_rate = ROWS / import_seconds
    store_rate = len(messages) / store_seconds
    dry_rate = ROWS / dry_seconds
    print(
        f"\nimport throughput ({machine()}); {ROWS:,} rows, {export.stat().st_size / 2**20:.1f} "
        f"MiB, SQLite file, batches of {BATCH}\n"
        f"  1. stagecoach import:      {rate(ROWS, import_seconds)} (goal >= {GOAL:,.0f} "
        f"rows/s); {len(progress_lines)} progress lines\n"
        f"     {figure(first, 'imported as new contacts'):,} new, "
        f"{figure(first, 'matched existing contacts'):,} matched, "
        f"{figure(first, 'duplicates (already imported)'):,} duplicates, "
        f"{figure(first, 'rejected'):,} rejected\n"
        f"  2. the same file again:    {rate(ROWS, again_seconds)}, every row a duplicate\n"
        f"  baselines, same run, same file:\n"
        f"     a. reading the CSV:     {rate(ROWS, read_seconds)}\n"
        f"     b. dry run (read, map, parse_message): {rate(ROWS, dry_seconds)}\n"
        f"     c. Ingestor.store of the parsed messages: {rate(len(messages), store_seconds)}\n"
        f"  ratios: import / store-only {import_rate / store_rate:.2f}, "
        f"import / dry run {import_rate / dry_rate:.2f}; of the import's time "
        f"~{dry_seconds / import_seconds:.0%} reading and parsing, "
        f"~{store_seconds / import_seconds:.0%} storing, the rest counting matches and "
        f"the command's start"
    )

    assert figure(first, "rows read") == ROWS
    assert figure(first, "imported as new contacts") == expected["new"]
    assert figure(first, "matched existing contacts") == expected["known"]
    assert figure(first, "duplicates (already imported)") == expected["repeated"]
    assert figure(first, "rejected") == expected["bad"]
    assert after_first == floor_counts
    stored = expected["new"] + expected["known"]
    assert after_first == (len(people) + stored, len(people) + expected["new"])
    assert figure(again, "duplicates (already imported)") == ROWS - expected["bad"]
    assert after_again == after_first
