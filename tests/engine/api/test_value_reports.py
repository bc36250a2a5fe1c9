"""``stagecoach value refresh``, ``stagecoach report value|cross-sell`` and
``GET /v1/reports/value|cross-sell``: the same numbers, from one refresh, over a real
SQLite database."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from typer.testing import CliRunner

from stagecoach.engine.cli import app as cli
from stagecoach.engine.services.ingest import Ingestor
from stagecoach.engine.settings import Settings
from tests.engine.services.value.test_refresh import NOW, history, order
from tests.helpers import migrated_engine

TOKEN = "value-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        admin_token=TOKEN,
        database_url=f"sqlite:///{tmp_path / 'stagecoach.db'}",
    )


@pytest.fixture
def db_engine(settings: Settings) -> Iterator[Engine]:
    db = migrated_engine(settings.resolved_database_url)
    yield db
    db.dispose()


@pytest.fixture
def runner(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("STAGECOACH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("STAGECOACH_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.delenv("STAGECOACH_DEFINITIONS", raising=False)
    return CliRunner()


def test_refresh_then_report_from_the_cli_and_the_api(
    db_engine: Engine, runner: CliRunner, api: TestClient, tmp_path: Path
) -> None:
    before = runner.invoke(cli, ["report", "value"])
    assert before.exit_code == 0, before.output
    assert "no value refresh has run yet" in before.stdout

    Ingestor(db_engine).store([[*history(30), order("odd", NOW)]])
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("sku,category,name\ntea,drinks,Green tea\ncup,kitchen,Tea cup\n")
    refreshed = runner.invoke(
        cli,
        ["value", "refresh", "--catalog", str(catalog), "--as-of", NOW.isoformat(), "--dry-run"],
    )
    assert refreshed.exit_code == 0, refreshed.output
    assert "fitted, 30 customer(s) scored, 0 sent new values" in refreshed.stdout
    assert "left out: 1 order event(s): 1 no_items" in refreshed.stdout

    shown = runner.invoke(cli, ["report", "value", "--format", "json"])
    body = json.loads(shown.stdout)
    assert sum(r["customers"] for r in body["sections"]["tiers"]["rows"]) == 30
    assert body["sections"]["left_out"]["rows"] == [
        {"flag": "no_items", "orders": 1, "meaning": "the order lists no items"}
    ]
    served = api.get("/v1/reports/value", headers=ADMIN).json()
    assert served["sections"]["tiers"] == body["sections"]["tiers"]

    pairs = runner.invoke(cli, ["report", "cross-sell", "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(pairs.stdout)))
    assert {(r["bought"], r["recommend"]) for r in rows} == {("tea", "cup"), ("cup", "tea")}
    served_csv = api.get("/v1/reports/cross-sell", params={"format": "csv"}, headers=ADMIN)
    assert served_csv.text.replace("\r\n", "\n") == pairs.stdout
    assert api.get("/v1/reports/value").status_code == 401
    bad = api.get("/v1/reports/value", params={"section": "nope"}, headers=ADMIN)
    assert bad.status_code == 400
    assert "section" in bad.json()["detail"]


def test_a_bad_catalog_or_time_is_refused_naming_it(runner: CliRunner, tmp_path: Path) -> None:
    missing = runner.invoke(cli, ["value", "refresh", "--catalog", str(tmp_path / "no.csv")])
    assert missing.exit_code == 2
    assert "catalog" in missing.stderr
    assert "Fix:" in missing.stderr
    broken = tmp_path / "broken.csv"
    broken.write_text("sku,category\ntea,\n")
    bad = runner.invoke(cli, ["value", "refresh", "--catalog", str(broken)])
    assert bad.exit_code == 2
    assert "line 2" in bad.stderr
    when = runner.invoke(cli, ["value", "refresh", "--as-of", "yesterday"])
    assert when.exit_code == 2
    assert "--as-of" in when.stderr
