"""Journey rehearsals' contacts stay out of the dashboard, the report API and
``stagecoach report``, unless asked for.

The dashboard's known rows (``tests.browser.conftest``) plus three rehearsal contacts,
opened the way ``journeys rehearse`` opens them (``open_contact`` with ``rehearsal``),
who reached lead, were sent the ``welcome`` journey's first email and referred each
other. Every surface must show the known numbers; asked to include rehearsals, it shows
theirs too."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session
from typer.testing import CliRunner

from stagecoach.engine.app import create_app
from stagecoach.engine.cli import app as cli
from stagecoach.engine.protocol.messages import OpenRequest, TransitionRecord
from stagecoach.engine.services.analytics.store import AnalyticsStore
from stagecoach.engine.services.referrals import issue_code
from stagecoach.engine.services.storage.contacts import open_contact, save_transition
from stagecoach.engine.services.storage.models import (
    Contact,
    Delivery,
    JourneyEnrolment,
    Referral,
)
from stagecoach.engine.settings import Settings
from tests.browser.conftest import (
    ADMIN_TOKEN,
    JOURNEY,
    TRUTH,
    VERSION,
    WELCOME,
    seed_dashboard,
    seeded_settings,
)
from tests.engine.dashboard.test_dashboard_routes import figure, sign_in
from tests.helpers import migrated_engine

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
REHEARSALS = [f"rehearsal-{JOURNEY}-{n:08x}" for n in range(3)]


def rehearse_three(engine: Engine, now: datetime) -> None:
    """Three rehearsal contacts: opened as rehearsals, to lead, sent the welcome email;
    the first referred the other two."""
    start = now - timedelta(days=5)
    for n, contact_id in enumerate(REHEARSALS):
        born = start + timedelta(hours=n)
        request = OpenRequest(contact_id=contact_id, at=born, rehearsal=True)
        assert open_contact(engine, request, "suspect")
        for seq, (old, new) in enumerate((("suspect", "prospect"), ("prospect", "lead"))):
            save_transition(
                engine,
                TransitionRecord(
                    key=f"{contact_id}:{seq + 2}",
                    contact_id=contact_id,
                    transition={
                        "from_stage": old,
                        "to_stage": new,
                        "at": (born + timedelta(days=seq + 1)).isoformat(),
                        "reason": "rehearsed",
                        "source": "workflow",
                    },
                    contact={"stage": new, "traits": {}},
                ),
            )
    code = issue_code(engine, REHEARSALS[0], now=start).code
    with Session(engine) as session:
        for n, contact_id in enumerate(REHEARSALS):
            began = start + timedelta(days=1, hours=n)
            session.add(
                JourneyEnrolment(
                    contact_id=contact_id,
                    journey=JOURNEY,
                    version=VERSION,
                    status="active",
                    arms={},
                    trail=[{"step": WELCOME, "kind": "send", "outcome": "ok"}],
                    started_at=began,
                    updated_at=began,
                )
            )
            session.add(
                Delivery(
                    idempotency_key=f"{contact_id}:{JOURNEY}:{VERSION}:{WELCOME}:1",
                    contact_id=contact_id,
                    journey=JOURNEY,
                    journey_version=VERSION,
                    step_id=WELCOME,
                    channel="email",
                    content_id="welcome",
                    status="sent",
                    created_at=began,
                    sent_at=began,
                )
            )
        for referee in REHEARSALS[1:]:
            session.add(
                Referral(code=code, referrer_id=REHEARSALS[0], referee_id=referee, created_at=now)
            )
        session.commit()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return seeded_settings(tmp_path, dashboard_cache_seconds=0)


@pytest.fixture
def seeded(settings: Settings) -> Iterator[Engine]:
    engine = migrated_engine(settings.resolved_database_url)
    now = datetime.now(UTC)
    seed_dashboard(engine, now)
    rehearse_three(engine, now)
    assert settings.analytics_path is not None
    AnalyticsStore(settings.analytics_path).sync(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def client(seeded: Engine, settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, db=seeded)
    with TestClient(app) as test_client:
        yield test_client
    app.state.reports.wait(30)


def test_rehearsal_contacts_are_marked_on_their_row(seeded: Engine) -> None:
    with Session(seeded) as session:
        for contact_id in REHEARSALS:
            row = session.get(Contact, contact_id)
            assert row is not None
            assert (row.rehearsal, row.stage) == (True, "lead")
        real = session.get(Contact, TRUTH.recycled_contact)
        assert real is not None
        assert not real.rehearsal


def test_dashboard_stage_counts_leave_rehearsals_out_unless_asked(client: TestClient) -> None:
    sign_in(client)
    page = client.get("/dashboard")
    assert page.status_code == 200
    [funnel] = figure(page.text, "funnel-width")["data"]
    assert dict(zip(funnel["y"], funnel["x"], strict=True)) == TRUTH.width
    assert "3 rehearsal contacts left out" in page.text

    page = client.get("/dashboard?include_rehearsals=true")
    [funnel] = figure(page.text, "funnel-width")["data"]
    assert dict(zip(funnel["y"], funnel["x"], strict=True)) == {
        **TRUTH.width,
        "lead": TRUTH.width["lead"] + len(REHEARSALS),
    }


def _welcome_sent(body: dict[str, Any]) -> int:
    rows = body["sections"]["steps"]["rows"]
    return sum(r["sent"] for r in rows if r["journey"] == JOURNEY and r["step_id"] == WELCOME)


def test_report_api_journey_sends_and_referrals_leave_rehearsals_out(client: TestClient) -> None:
    journeys = client.get("/v1/reports/journeys", headers=ADMIN, params={"since": "30d"})
    assert journeys.status_code == 200, journeys.text
    assert _welcome_sent(journeys.json()) == TRUTH.welcome_sent
    assert journeys.json()["include_rehearsals"] is False
    assert any("3 rehearsal contacts left out" in n for n in journeys.json()["notes"])
    included = client.get(
        "/v1/reports/journeys",
        headers=ADMIN,
        params={"since": "30d", "include_rehearsals": "true"},
    )
    assert _welcome_sent(included.json()) == TRUTH.welcome_sent + len(REHEARSALS)

    [referrals] = client.get("/v1/reports/nps", headers=ADMIN).json()["sections"]["referrals"][
        "rows"
    ]
    assert (referrals["referrers"], referrals["referees"]) == (0, 0)
    [referrals] = client.get(
        "/v1/reports/nps", headers=ADMIN, params={"include_rehearsals": "true"}
    ).json()["sections"]["referrals"]["rows"]
    assert (referrals["referrers"], referrals["referees"]) == (1, 2)

    bad = client.get("/v1/reports/funnel", headers=ADMIN, params={"include_rehearsals": "maybe"})
    assert bad.status_code == 422
    assert "include_rehearsals" in bad.text


def test_report_funnel_leaves_rehearsals_out_unless_asked(
    seeded: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAGECOACH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("STAGECOACH_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("STAGECOACH_ANALYTICS_PATH", str(settings.analytics_path))
    runner = CliRunner()

    def width(*extra: str) -> dict[str, int]:
        result = runner.invoke(cli, ["report", "funnel", "--format", "json", "--fresh", *extra])
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)["sections"]["width"]["rows"]
        return {r["stage"]: r["now"] for r in rows}

    assert width() == TRUTH.width
    assert width("--include-rehearsals")["lead"] == TRUTH.width["lead"] + len(REHEARSALS)
    table = runner.invoke(cli, ["report", "funnel"])
    assert "3 rehearsal contacts left out" in table.stdout
    assert "--include-rehearsals" in table.stdout
