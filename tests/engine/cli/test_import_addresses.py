"""``stagecoach import FILE``: imported addresses take the one canonical form, so a
spelling of a known address is that contact and an invisible character is a rejected row
(issue 17)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import typer
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from engine.cli.imports import import_contacts
from engine.storage.models import Identity
from tests.helpers import migrated_engine

app = typer.Typer()
app.command("import")(import_contacts)


@app.callback()
def _root() -> None:
    """A group, so the command is called as ``import`` the way ``stagecoach`` calls it."""


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'stagecoach.db'}"
    monkeypatch.setenv("STAGECOACH_DATABASE_URL", url)
    monkeypatch.setenv("STAGECOACH_DATA_DIR", str(tmp_path / ".stagecoach"))
    monkeypatch.setenv("STAGECOACH_LOG_FORMAT", "json")
    monkeypatch.setenv("STAGECOACH_LOG_LEVEL", "warning")
    engine = migrated_engine(url)
    yield engine
    engine.dispose()


def test_spellings_of_one_address_import_as_one_contact_and_invisible_ones_are_rejected(
    db: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "contacts.csv"
    with path.open("w", encoding="utf-8", newline="") as file:
        csv.writer(file).writerows(
            [
                ["email", "name"],
                ["someone@example.com", "Plain"],
                ["SomeOne@ｅｘａｍｐｌｅ．com.", "Full width"],
                ["someone@exa\u200bmple.com", "Zero width"],
            ]
        )

    result = CliRunner().invoke(app, ["import", str(path)])

    assert result.exit_code == 0, result.output
    with Session(db) as session:
        emails = session.exec(select(Identity).where(col(Identity.kind) == "email")).all()
    assert [e.value for e in emails] == ["someone@example.com"]
    with (tmp_path / "contacts.rejected.csv").open(encoding="utf-8-sig", newline="") as file:
        [rejected] = list(csv.DictReader(file))
    assert (rejected["name"], rejected["field"]) == ("Zero width", "email")
    assert "ZERO WIDTH SPACE" in rejected["reason"]
