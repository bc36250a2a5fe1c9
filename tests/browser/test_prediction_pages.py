"""The forecast and propensity pages in headless Chromium, on an API whose database
holds ten months of generated history: the forecast chart drawn with its 80% band,
the forecast table read off the page and matching the chart, a forecast from six weeks
ago beside what happened, the propensity page before and after a model, and nothing
fetched from another host."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from sqlmodel import Session, col, select

from stagecoach.engine.app import create_app
from stagecoach.engine.services.analytics.pipeline import STAGES
from stagecoach.engine.services.analytics.store import AnalyticsStore, create_tables
from stagecoach.engine.services.analytics.synthetic import generate, to_database
from stagecoach.engine.services.prediction.propensity import TrainingConfig, retrain
from stagecoach.engine.services.storage.models import Contact, PropensityScore
from tests.browser.conftest import Recorded, Served, seeded_settings, serving
from tests.browser.test_dashboard import chart, only_local, open_page, shot, sign_in
from tests.helpers import migrated_engine

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def history_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Any]]:
    settings = seeded_settings(tmp_path_factory.mktemp("forecast"))
    engine = migrated_engine(settings.resolved_database_url)
    con = duckdb.connect()
    create_tables(con)
    now = datetime.now(UTC)
    start = (now - timedelta(days=300)).replace(tzinfo=None)
    generate(con, 4000, events_per_contact=5, start=start, days=300, fit_signal=0.5)
    to_database(con, engine, until=now)
    con.close()
    try:
        with serving(create_app(settings, db=engine)) as url:
            yield Served(url, settings), engine
    finally:
        engine.dispose()


def _number(row: Any, column: str) -> float:
    return float(row.locator(f"td[data-column={column}]").inner_text().replace(",", ""))


def test_the_forecast_page_shows_eight_weeks_with_their_band(
    page: Recorded, history_server: tuple[Served, Any], artifacts: Path
) -> None:
    served, _ = history_server
    tab = open_page(page, served, "/dashboard/forecast")
    drawn = chart(tab, "forecast-customers")
    assert (drawn["report"], drawn["section"]) == ("forecast", "forecast")
    traces = {t.get("name"): t for t in drawn["data"]}
    assert {"80% interval", "forecast", "actual"} <= set(traces)
    assert len(traces["forecast"]["x"]) == 8
    assert traces["80% interval"]["fill"] == "tonexty"
    assert sum(traces["actual"]["y"]) > 0  # the eight weeks before, as they happened
    rows = tab.locator("#table-forecast tbody tr")
    assert rows.count() == 8
    highs = []
    for i in range(8):
        row = rows.nth(i)
        low, mean, high = (_number(row, f"customers_{k}") for k in ("low", "mean", "high"))
        assert low <= mean <= high
        assert low < high
        highs.append(high)
    # The band drawn is the table's: its upper edge, week by week.
    assert drawn["data"][0]["y"] == pytest.approx(highs)
    assert tab.locator("#table-inputs tbody tr").count() == 4  # the open stages
    assert "Numbers as of" in tab.inner_text("main")
    shot(tab, artifacts, "forecast")
    only_local(page)


def test_a_forecast_from_six_weeks_ago_sits_beside_what_happened(
    page: Recorded, history_server: tuple[Served, Any]
) -> None:
    served, _ = history_server
    origin = (datetime.now(UTC) - timedelta(weeks=6)).date().isoformat()
    tab = open_page(page, served, "/dashboard/forecast")
    tab.fill("input[name=origin]", origin)
    tab.click("form.period button[type=submit]")
    tab.wait_for_load_state()
    rows = tab.locator("#table-forecast tbody tr")
    actual = [
        rows.nth(i).locator("td[data-column=actual_customers]").inner_text() for i in range(8)
    ]
    over = [a for a in actual if a != "\u2013"]  # the dashboard's dash for "none yet"
    assert len(over) in (5, 6)
    drawn = chart(tab, "forecast-customers")
    [line] = [t for t in drawn["data"] if t.get("name") == "actual"]
    assert len(line["x"]) == 8 + len(over)  # the weeks before, then those already over


def test_a_bad_origin_is_named(page: Recorded, history_server: tuple[Served, Any]) -> None:
    served, _ = history_server
    sign_in(page.page, served, served.token, then="/dashboard/forecast?origin=soon")
    assert "origin='soon' is not a date" in page.page.inner_text("main")


def test_the_propensity_page_before_and_after_a_model(
    page: Recorded, history_server: tuple[Served, Any], artifacts: Path
) -> None:
    served, engine = history_server
    tab = open_page(page, served, "/dashboard/propensity")
    assert "no propensity model yet" in tab.inner_text("main")
    with AnalyticsStore(served.settings.data_dir / "p.duckdb") as store:
        assert retrain(engine, store, STAGES, TrainingConfig()).published
    tab.reload()
    tab.wait_for_load_state()
    drawn = chart(tab, "propensity-calibration")
    [model] = [t for t in drawn["data"] if t.get("name") == "model"]
    assert all(0 <= p <= 1 for p in model["x"])
    assert tab.locator("#table-models tbody tr").count() == 1
    assert tab.locator("#table-calibration tbody tr").count() == 10
    shot(tab, artifacts, "propensity")
    with Session(engine) as session:
        scored = session.exec(
            select(PropensityScore).order_by(col(PropensityScore.probability).desc())
        ).first()
        unscored = session.exec(select(Contact.id).where(Contact.stage == "customer")).first()
    assert scored is not None
    assert unscored is not None
    tab.goto(f"{served.url}/dashboard/contacts/{scored.contact_id}")
    line = tab.inner_text("#contact-propensity")
    shown = round(scored.probability, 3) * 100  # as the contact's propensity rounds it
    assert line.startswith(f"Propensity {shown:.1f}% to reach customer within 30 days")
    assert "model v1, as of" in line
    tab.goto(f"{served.url}/dashboard/contacts/{unscored}")
    assert "not scored yet" in tab.inner_text("#contact-propensity")
    only_local(page)
