"""The dashboard's customer-value page and the contact page's value panel, through the
real app over HTTP, before and after a value refresh."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from stagecoach.engine.app import create_app
from stagecoach.engine.services.ingest import Ingestor
from stagecoach.engine.services.value import refresh_values
from stagecoach.engine.settings import Settings
from tests.browser.conftest import ADMIN_TOKEN, seeded_settings
from tests.engine.dashboard.test_segments_pages import FORM
from tests.engine.services.value.test_refresh import DEFS, NOW, history, order


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return seeded_settings(tmp_path)


@pytest.fixture
def client(db_engine: Engine, settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, db=db_engine)
    with TestClient(app, follow_redirects=False) as client:
        signed = client.post("/dashboard/login", content=f"token={ADMIN_TOKEN}", headers=FORM)
        assert signed.status_code == 303
        yield client
    app.state.reports.wait(30)


def test_the_value_page_shows_tiers_the_clv_distribution_and_cross_sell_pairs(
    client: TestClient, db_engine: Engine
) -> None:
    empty = client.get("/dashboard/value")
    assert empty.status_code == 200
    assert "No value refresh has run yet" in empty.text
    assert "stagecoach value refresh" in empty.text

    Ingestor(db_engine).store([[*history(30), order("odd", NOW)]])
    result = refresh_values(db_engine, DEFS, as_of=NOW, signal=False)
    page = client.get("/dashboard/value")
    assert page.status_code == 200
    text = page.text
    assert 'id="value-tiers"' in text
    tiers = sum(1 for t in ("A", "B", "C") if f'data-tier="{t}"' in text)
    assert tiers >= 2
    assert text.count("<meter ") == 10  # the CLV distribution's buckets
    assert 'data-pair="tea:cup"' in text
    assert 'data-flag="no_items"' in text
    assert result.version in text
    high = result.run.summary["churn"]["high"]
    row = '<tr data-churn="high"><td>high</td><td class="n" data-column="customers">'
    assert f"{row}{high}<" in text

    contact_id = sorted(result.values)[0]
    shown = client.get(f"/dashboard/contacts/{contact_id}")
    assert shown.status_code == 200
    expected = result.values[contact_id]
    assert f'<dd data-field="value_tier">{expected["value_tier"]} ' in shown.text
    assert f"model {result.version}" in shown.text
    [churn] = re.findall(r'data-field="churn_risk">([^<]*)</dd>', shown.text)
    assert churn.endswith(f" ({expected['churn_risk_level']})")
    assert 'href="/dashboard/value"' in shown.text  # the nav links the value page
