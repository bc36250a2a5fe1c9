"""``GET /v1/reports/forecast`` and ``/propensity`` and ``stagecoach report forecast |
propensity``, over a real SQLite database holding half a year of generated history."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from typer.testing import CliRunner

from stagecoach.engine.cli import app as cli
from stagecoach.engine.services.analytics.pipeline import STAGES
from stagecoach.engine.services.analytics.store import AnalyticsStore, create_tables
from stagecoach.engine.services.analytics.synthetic import generate, to_database
from stagecoach.engine.services.prediction.propensity import TrainingConfig, retrain
from stagecoach.engine.services.storage import make_engine
from stagecoach.engine.settings import Settings
from tests.helpers import migrated_engine

TOKEN = "prediction-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One database file with 3,000 contacts over the last 200 days, copied per test."""
    folder = tmp_path_factory.mktemp("seed")
    db = migrated_engine(f"sqlite:///{folder / 'stagecoach.db'}")
    con = duckdb.connect()
    create_tables(con)
    now = datetime.now(UTC)
    start = (now - timedelta(days=300)).replace(tzinfo=None)
    generate(con, 3000, events_per_contact=6, start=start, days=300, fit_signal=0.5)
    to_database(con, db, until=now)
    con.close()
    db.dispose()
    return folder / "stagecoach.db"


@pytest.fixture
def settings(tmp_path: Path, seeded: Path) -> Settings:
    with sqlite3.connect(seeded) as source, sqlite3.connect(tmp_path / "stagecoach.db") as copy:
        source.backup(copy)  # with its write-ahead log, unlike a copy of the file
    return Settings(
        data_dir=tmp_path,
        admin_token=TOKEN,
        database_url=f"sqlite:///{tmp_path / 'stagecoach.db'}",
        dashboard_cache_seconds=0,
    )


@pytest.fixture
def db_engine(settings: Settings) -> Iterator[Engine]:
    db = make_engine(settings.resolved_database_url)  # the copy, already migrated
    yield db
    db.dispose()


def test_the_forecast_gives_eight_weeks_with_intervals(api: TestClient) -> None:
    response = api.get("/v1/reports/forecast", headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    weeks = body["sections"]["forecast"]["rows"]
    assert len(weeks) == 8
    for w in weeks:
        assert w["customers_low"] <= w["customers_median"] <= w["customers_high"]
        assert w["customers_low"] < w["customers_high"]
        assert w["revenue_low"] <= w["revenue_mean"] <= w["revenue_high"]
        assert w["actual_customers"] is None  # nothing ahead of now is over
    history = body["sections"]["history"]["rows"]
    assert len(history) == 8
    assert sum(h["customers"] for h in history) > 0
    inputs = {r["stage"]: r for r in body["sections"]["inputs"]["rows"]}
    assert list(inputs) == ["suspect", "prospect", "lead", "opportunity"]
    assert all(0 < r["rate"] < 1 for r in inputs.values())
    assert body["as_of"] is not None


def test_a_forecast_from_the_past_sits_beside_what_happened(api: TestClient) -> None:
    response = api.get("/v1/reports/forecast", params={"until": "6w"}, headers=ADMIN)
    assert response.status_code == 200, response.text
    weeks = response.json()["sections"]["forecast"]["rows"]
    over = [w for w in weeks if w["actual_customers"] is not None]
    assert len(over) in (5, 6)  # the weeks that ended by now
    assert all(w["actual_customers"] is None for w in weeks[len(over) :])
    within = sum(w["customers_low"] <= w["actual_customers"] <= w["customers_high"] for w in over)
    assert within >= len(over) - 2


def test_forecast_csv_and_bad_parameters(api: TestClient) -> None:
    response = api.get(
        "/v1/reports/forecast", params={"format": "csv", "section": "inputs"}, headers=ADMIN
    )
    assert response.status_code == 200
    assert next(r["stage"] for r in csv.DictReader(io.StringIO(response.text))) == "suspect"
    bad = api.get("/v1/reports/forecast", params={"until": "yesterday"}, headers=ADMIN)
    assert bad.status_code == 400
    assert "until" in bad.json()["detail"]
    assert api.get("/v1/reports/forecast", params={"weeks": 0}, headers=ADMIN).status_code == 422
    stages = api.get("/v1/reports/forecast", params={"stages": "suspect"}, headers=ADMIN)
    assert stages.status_code == 400
    assert "stages" in stages.json()["detail"]
    assert api.get("/v1/reports/forecast").status_code == 401


def test_the_propensity_report_before_and_after_a_model(
    api: TestClient, db_engine: Engine, settings: Settings
) -> None:
    empty = api.get("/v1/reports/propensity", headers=ADMIN).json()
    assert empty["sections"]["models"]["rows"] == []
    assert "no propensity model yet" in empty["notes"][0]
    with AnalyticsStore(settings.data_dir / "p.duckdb") as store:
        result = retrain(db_engine, store, STAGES, TrainingConfig())
    assert result.published, result.reason
    body = api.get("/v1/reports/propensity", headers=ADMIN).json()
    [model] = body["sections"]["models"]["rows"]
    assert model["version"] == result.version
    assert model["auc"] > 0.7
    calibration = body["sections"]["calibration"]["rows"]
    assert len(calibration) == 10
    assert sum(r["contacts"] for r in calibration) == result.metrics["test_rows"]
    scores = body["sections"]["scores"]["rows"]
    assert sum(r["contacts"] for r in scores) == result.scored
    drivers = body["sections"]["drivers"]["rows"]
    assert drivers[0]["feature"]
    csv_body = api.get(
        "/v1/reports/propensity", params={"format": "csv", "section": "calibration"}, headers=ADMIN
    )
    assert csv_body.text.startswith("bin,contacts,predicted,observed")


def test_the_cli_prints_both_reports(
    settings: Settings, db_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAGECOACH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("STAGECOACH_DATABASE_URL", settings.resolved_database_url)
    runner = CliRunner()
    out = runner.invoke(cli, ["report", "forecast", "--format", "json"])
    assert out.exit_code == 0, out.output
    assert len(json.loads(out.stdout)["sections"]["forecast"]["rows"]) == 8
    table = runner.invoke(cli, ["report", "forecast"])
    assert table.exit_code == 0, table.output
    assert "customers_low" in table.stdout
    none_yet = runner.invoke(cli, ["report", "propensity"])
    assert none_yet.exit_code == 0, none_yet.output
    assert "no propensity model yet" in none_yet.stdout
    with AnalyticsStore(settings.data_dir / "analytics.duckdb") as store:
        assert retrain(db_engine, store, STAGES, TrainingConfig()).published
    rows = runner.invoke(cli, ["report", "propensity", "--format", "csv", "--section", "models"])
    assert rows.exit_code == 0, rows.output
    [model] = list(csv.DictReader(io.StringIO(rows.stdout)))
    assert model["version"] == "1"
    bad = runner.invoke(cli, ["report", "propensity", "--section", "nope"])
    assert bad.exit_code == 2
    assert "section" in bad.stderr
