"""``GET /v1/reports/...`` and ``stagecoach report``: the same reports, parameters and
errors, over a real SQLite database copied into the analytics store."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session
from typer.testing import CliRunner

from stagecoach.engine.cli import app as cli
from stagecoach.engine.services.storage.models import Contact, Event, StageTransition
from stagecoach.engine.settings import Settings
from tests.helpers import migrated_engine

TOKEN = "reports-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)


def _seed(engine: Engine) -> None:
    """c1 went suspect -> prospect -> lead and viewed, asked for a demo, paid in order;
    c2 reached prospect and paid before asking for a demo; c3 only arrived."""
    start = NOW - 10 * DAY
    stories = {
        "c1": (["prospect", "lead"], ["page.viewed", "demo.requested", "order.paid"]),
        "c2": (["prospect"], ["page.viewed", "order.paid", "demo.requested"]),
        "c3": ([], ["page.viewed"]),
    }
    with Session(engine) as session:
        for cid, (stages, _) in stories.items():
            session.add(Contact(id=cid, stage=(stages or ["suspect"])[-1], created_at=start))
        session.flush()
        for cid, (stages, events) in stories.items():
            path = ["suspect", *stages]
            for n, to in enumerate(path):
                session.add(
                    StageTransition(
                        key=f"{cid}:{n + 1}",
                        contact_id=cid,
                        from_stage=path[n - 1] if n else None,
                        to_stage=to,
                        reason="seed",
                        source="test",
                        at=start + n * DAY,
                    )
                )
            for n, name in enumerate(events):
                session.add(
                    Event(
                        message_id=f"{cid}-{n}",
                        contact_id=cid,
                        name=name,
                        occurred_at=start + n * DAY + timedelta(hours=1),
                    )
                )
        session.commit()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        admin_token=TOKEN,
        database_url=f"sqlite:///{tmp_path / 'stagecoach.db'}",
        dashboard_cache_seconds=0,
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    db = migrated_engine(settings.resolved_database_url)
    _seed(db)
    yield db
    db.dispose()


@pytest.fixture
def db_engine(engine: Engine) -> Engine:
    """The shared ``api`` fixture is built on this module's seeded database file."""
    return engine


def test_the_funnel_counts_what_the_database_holds(api: TestClient) -> None:
    response = api.get("/v1/reports/funnel", headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    width = {r["stage"]: (r["now"], r["entered"]) for r in body["sections"]["width"]["rows"]}
    assert width["suspect"] == (1, 3)
    assert width["prospect"] == (1, 2)
    assert width["lead"] == (1, 1)
    assert body["as_of"] is not None


def test_a_conversion_funnel_counts_only_steps_in_order(api: TestClient) -> None:
    response = api.get(
        "/v1/reports/conversion",
        params={"steps": "page.viewed,demo.requested,order.paid", "since": "30d"},
        headers=ADMIN,
    )
    assert response.status_code == 200, response.text
    steps = response.json()["sections"]["steps"]["rows"]
    assert [s["contacts"] for s in steps] == [3, 2, 1]


def test_csv_gives_one_section(api: TestClient) -> None:
    response = api.get(
        "/v1/reports/funnel", params={"format": "csv", "section": "width"}, headers=ADMIN
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {r["stage"]: r["now"] for r in rows}["lead"] == "1"


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("/v1/reports/funnel", {"since": "yesterday"}, "since"),
        ("/v1/reports/funnel", {"by": "planet"}, "by"),
        ("/v1/reports/funnel", {"since": "1d", "until": "2d"}, "since"),
        ("/v1/reports/conversion", {"steps": "page.viewed"}, "steps"),
        ("/v1/reports/conversion", {"steps": "a,b", "where": "plan"}, "where"),
        ("/v1/reports/funnel", {"section": "nope"}, "section"),
        ("/v1/reports/nps", {"period": "decade"}, "period"),
    ],
)
def test_a_bad_parameter_is_400_naming_it(
    api: TestClient, path: str, params: dict[str, str], named: str
) -> None:
    response = api.get(path, params=params, headers=ADMIN)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert named in detail
    assert "Fix:" in detail


def test_reports_need_the_admin_token(api: TestClient) -> None:
    assert api.get("/v1/reports/funnel").status_code == 401
    assert api.get("/v1/reports/funnel", headers={"Authorization": "Bearer no"}).status_code == 401


def test_every_report_answers_and_is_documented(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    for name in ("funnel", "paths", "channels", "journeys", "engagement", "nps"):
        assert f"/v1/reports/{name}" in spec["paths"]
        assert api.get(f"/v1/reports/{name}", headers=ADMIN).status_code == 200, name
    assert "/v1/reports/conversion" in spec["paths"]


def test_the_cli_prints_the_same_numbers(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAGECOACH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("STAGECOACH_DATABASE_URL", settings.resolved_database_url)
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "report",
            "conversion",
            "--steps",
            "page.viewed,demo.requested,order.paid",
            "--format",
            "json",
            "--fresh",
        ],
    )
    assert result.exit_code == 0, result.output
    steps = json.loads(result.stdout)["sections"]["steps"]["rows"]
    assert [s["contacts"] for s in steps] == [3, 2, 1]
    table = runner.invoke(cli, ["report", "funnel"])
    assert table.exit_code == 0, table.output
    assert "prospect" in table.stdout
    assert "data as of" in table.stdout
    bad = runner.invoke(cli, ["report", "funnel", "--by", "planet"])
    assert bad.exit_code == 2
    assert "by" in bad.stderr
    assert "Fix:" in bad.stderr
    unknown = runner.invoke(cli, ["report", "weather"])
    assert unknown.exit_code == 2
    assert "funnel" in unknown.stderr
