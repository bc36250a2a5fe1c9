"""The dashboard's routes through the real app (``create_app``): sign-in and sessions,
the locally served plotly.js, the pages' numbers, the report cache, and the contact page
against a real Temporal dev server."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.responses import Response
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.client import Client

from stagecoach.engine.api.sessions import COOKIE, Sessions
from stagecoach.engine.app import create_app
from stagecoach.engine.dashboard import Numbers, Period
from stagecoach.engine.services.analytics import Params
from stagecoach.engine.services.analytics.store import AnalyticsStore
from stagecoach.engine.services.storage.models import Contact, StageTransition
from stagecoach.engine.settings import Settings
from tests.browser.conftest import ADMIN_TOKEN, TRUTH, seed_dashboard, seeded_settings

FORM = {"content-type": "application/x-www-form-urlencoded"}
PAGES = ("/dashboard", "/dashboard/journeys", "/dashboard/contacts/c05")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return seeded_settings(tmp_path)


@pytest.fixture
def seeded(db_engine: Engine, settings: Settings) -> Engine:
    seed_dashboard(db_engine, datetime.now(UTC))
    assert settings.analytics_path is not None
    AnalyticsStore(settings.analytics_path).sync(db_engine)
    return db_engine


@pytest.fixture
def client(seeded: Engine, settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, db=seeded)
    with TestClient(app) as test_client:
        yield test_client
    app.state.reports.wait(30)  # no background copy outlives the test


def sign_in(client: TestClient, token: str = ADMIN_TOKEN, then: str = "/dashboard") -> Any:
    return client.post(
        "/dashboard/login",
        content=f"token={token}&next={then}",
        headers=FORM,
        follow_redirects=False,
    )


def figure(html: str, chart_id: str) -> dict[str, Any]:
    found = re.search(
        rf'<script type="application/json" id="{chart_id}-figure">(.*?)</script>', html
    )
    assert found, f"no chart {chart_id}"
    data: dict[str, Any] = json.loads(found.group(1))
    return data


# --- sign-in -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_pages_send_strangers_to_the_login(client: TestClient, path: str) -> None:
    answer = client.get(path, follow_redirects=False)

    assert answer.status_code == 303
    assert answer.headers["location"] == f"/dashboard/login?next={path}"


def test_the_right_token_sets_a_strict_http_only_session_cookie(client: TestClient) -> None:
    answer = sign_in(client, then="/dashboard/journeys")

    assert answer.status_code == 303
    assert answer.headers["location"] == "/dashboard/journeys"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for flag in ("HttpOnly", "SameSite=strict", "Path=/dashboard", "Max-Age=43200"):
        assert flag in cookie
    assert client.get("/dashboard/journeys").status_code == 200


def test_a_wrong_token_is_refused_without_a_cookie(client: TestClient) -> None:
    answer = sign_in(client, token="guess")

    assert answer.status_code == 401
    assert "set-cookie" not in answer.headers
    assert "not the admin token" in answer.text
    assert client.get("/dashboard", follow_redirects=False).status_code == 303


def test_after_login_only_dashboard_pages_are_destinations(client: TestClient) -> None:
    answer = sign_in(client, then="https://evil.example/dashboard")

    assert answer.headers["location"] == "/dashboard"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda token: token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        lambda token: "eyJzdWIiOiJhZG1pbiIsImV4cCI6OTk5OTk5OTk5OX0." + token.partition(".")[2],
        lambda token: "not-a-token",
    ],
    ids=["mac", "payload", "garbage"],
)
def test_a_tampered_cookie_is_refused(client: TestClient, tamper: Any) -> None:
    sign_in(client)
    good = client.cookies[COOKIE]
    client.cookies.clear()
    client.cookies.set(COOKIE, tamper(good), path="/dashboard")

    answer = client.get("/dashboard", follow_redirects=False)

    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/dashboard/login?next=/dashboard&expired=1")


def _cookie(sessions: Sessions, at: datetime) -> str:
    response = Response()
    sessions.issue(response, at)
    return response.headers["set-cookie"].split(";")[0].partition("=")[2]


def test_an_expired_cookie_is_refused(client: TestClient, settings: Settings) -> None:
    stale = _cookie(Sessions(settings), datetime.now(UTC) - timedelta(hours=13))
    client.cookies.set(COOKIE, stale, path="/dashboard")

    answer = client.get("/dashboard", follow_redirects=False)

    assert answer.status_code == 303
    assert "expired=1" in answer.headers["location"]
    assert "Your session ended" in client.get(answer.headers["location"]).text


def test_a_new_admin_token_signs_every_session_out(client: TestClient, settings: Settings) -> None:
    rotated = SecretStr("the-token-before-rotation")
    old = Sessions(settings.model_copy(update={"admin_token": rotated}))
    client.cookies.set(COOKIE, _cookie(old, datetime.now(UTC)), path="/dashboard")

    assert client.get("/dashboard", follow_redirects=False).status_code == 303


def test_logout_clears_the_cookie(client: TestClient) -> None:
    sign_in(client)

    answer = client.post("/dashboard/logout", follow_redirects=False)

    assert answer.status_code == 303
    assert 'stagecoach_dashboard=""' in answer.headers["set-cookie"]
    assert client.get("/dashboard", follow_redirects=False).status_code == 303


def test_without_an_admin_token_nobody_can_sign_in(seeded: Engine, tmp_path: Path) -> None:
    settings = seeded_settings(tmp_path, admin_token=None)
    with TestClient(create_app(settings, db=seeded)) as client:
        assert client.get("/dashboard/login").status_code == 503
        assert sign_in(client, token="").status_code == 503
        assert client.get("/dashboard", follow_redirects=False).status_code == 303


# --- plotly.js, served from the plotly package ---------------------------------------------


def test_plotly_js_comes_from_this_server(client: TestClient) -> None:
    sign_in(client)
    page = client.get("/dashboard")
    sources = re.findall(r'<script src="([^"]+)"', page.text)

    assert sources
    assert all(src.startswith("/dashboard/static/") for src in sources)
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script>" not in page.text  # no inline script: figures are JSON data blocks
    [plotly] = [src for src in sources if "plotly" in src]
    script = client.get(plotly, headers={"accept-encoding": "identity"})
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.content.startswith(b"/**\n* plotly.js v")
    assert "immutable" in script.headers["cache-control"]
    zipped = client.get(plotly, headers={"accept-encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == script.content  # httpx decodes it


def test_the_static_files_need_no_session(client: TestClient) -> None:
    assert client.get("/dashboard/static/dashboard.js").status_code == 200


# --- pages ------------------------------------------------------------------------------------


def test_overview_figures_carry_the_numbers(client: TestClient) -> None:
    sign_in(client)
    page = client.get("/dashboard")

    assert page.status_code == 200
    [funnel] = figure(page.text, "funnel-width")["data"]
    assert dict(zip(funnel["y"], funnel["x"], strict=True)) == TRUTH.width
    nps = {t["name"]: t["y"] for t in figure(page.text, "nps-trend")["data"]}
    assert nps["NPS"] == [TRUTH.nps]
    assert 'data-report="funnel" data-section="width"' in page.text
    assert "Numbers as of" in page.text


def test_journeys_page_has_a_sankey_per_journey_version(client: TestClient) -> None:
    sign_in(client)
    page = client.get("/dashboard/journeys")

    assert page.status_code == 200
    [chart_id] = re.findall(r'<div class="chart" id="([^"]+)"', page.text)
    [sankey] = figure(page.text, chart_id)["data"]
    labels = sankey["node"]["label"]
    link = sankey["link"]
    flows = {
        (labels[s], labels[t]): v
        for s, t, v in zip(link["source"], link["target"], link["value"], strict=True)
    }
    assert flows == TRUTH.journey_flow
    assert 'id="table-lift"' in page.text
    assert 'id="table-splits"' in page.text


def test_a_bad_period_falls_back_to_the_default_and_says_so(client: TestClient) -> None:
    sign_in(client)
    page = client.get("/dashboard?since=yesterday")

    assert page.status_code == 200
    assert "dates are YYYY-MM-DD" in page.text


def test_an_unknown_contact_is_a_404_page(client: TestClient) -> None:
    sign_in(client)
    page = client.get("/dashboard/contacts/nobody")

    assert page.status_code == 404
    assert "no contact with id &#39;nobody&#39;" in page.text


def test_page_text_is_escaped(client: TestClient, seeded: Engine) -> None:
    with Session(seeded) as session:
        session.add(Contact(id="x<script>", stage="<b>lead</b>"))
        session.commit()
    sign_in(client)

    page = client.get("/dashboard/contacts/x%3Cscript%3E")

    assert page.status_code == 200
    assert "<b>lead</b>" not in page.text
    assert "&lt;b&gt;lead&lt;/b&gt;" in page.text


# --- the report cache ------------------------------------------------------------------------


def test_a_report_is_computed_once_per_sync(seeded: Engine) -> None:
    store = AnalyticsStore()
    store.sync(seeded)
    clock = [datetime.now(UTC)]
    numbers = Numbers(lambda: store, sync_every=60, clock=lambda: clock[0])
    params = Period.parse(None, None, today=clock[0].date()).params()

    fresh = numbers.freshness(seeded)
    [first] = numbers.reports([("funnel", params)])
    [again] = numbers.reports([("funnel", params)])

    assert not fresh.syncing
    assert fresh.as_of == first.as_of
    assert again is first
    assert numbers.computed == 1

    with Session(seeded) as session:  # a new suspect arrives
        session.add(Contact(id="c11", stage="suspect"))
        session.add(StageTransition(key="c11:0", contact_id="c11", to_stage="suspect",
                                    reason="rule:suspect", source="test"))  # fmt: skip
        session.commit()
    assert numbers.freshness(seeded).syncing is False  # not due yet: the old numbers
    clock[0] += timedelta(seconds=61)
    assert numbers.freshness(seeded).syncing is True
    numbers.wait(30)

    assert numbers.computed == 2  # the recent report was computed again after the sync
    [after] = numbers.reports([("funnel", params)])
    assert numbers.computed == 2  # and the page after the sync found it ready
    assert after.as_of is not None
    assert first.as_of is not None
    assert after.as_of > first.as_of
    width = dict((s, n) for s, n, _ in after.section("width").rows)
    assert width["suspect"] == TRUTH.width["suspect"] + 1


def test_a_never_synced_store_is_synced_by_the_first_page(seeded: Engine) -> None:
    store = AnalyticsStore()
    numbers = Numbers(lambda: store, sync_every=60)

    fresh = numbers.freshness(seeded)

    assert fresh.as_of is not None
    assert not fresh.syncing
    [report] = numbers.reports([("nps", Params.last(30))])
    assert [row[-1] for row in report.section("trend").rows] == [TRUTH.nps]


def test_the_default_reports_are_ready_before_anyone_asks(seeded: Engine) -> None:
    store = AnalyticsStore()
    store.sync(seeded)
    params = Period.parse(None, None, today=datetime.now(UTC).date()).params()
    numbers = Numbers(lambda: store, sync_every=60, defaults=lambda: [("nps", params)])

    assert numbers.prepare(seeded) is True  # the warm-up runs in the background
    numbers.wait(30)
    assert numbers.computed == 1

    numbers.reports([("nps", params)])
    assert numbers.computed == 1
    assert numbers.prepare(seeded) is False  # nothing left to do for this copy


# --- the contact page, with a real Temporal server ------------------------------------------


async def test_contact_page_shows_the_workflow_history(
    seeded: Engine, settings: Settings, env: Any
) -> None:
    temporal: Client = env.client
    handle = await temporal.start_workflow(
        "ContactWorkflow",  # nothing polls this queue: the history holds what we send
        {"contact_id": "c05"},
        id="contact-c05",
        task_queue=f"dashboard-{uuid.uuid4().hex}",
    )
    await handle.signal("event", {"type": "page.viewed", "properties": {"page": "/pricing"}})

    async def factory() -> Client:
        return temporal

    app = create_app(settings, db=seeded, temporal=factory)
    transport = httpx.ASGITransport(app=app)  # on this loop, where the Temporal client lives
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            signed = await http.post(
                "/dashboard/login", content=f"token={ADMIN_TOKEN}", headers=FORM
            )
            assert signed.status_code == 303
            page = await http.get("/dashboard/contacts/c05")
            missing = await http.get("/dashboard/contacts/c06")
            unknown = await http.get("/dashboard/contacts/nobody")
    finally:
        await handle.terminate(reason="test done")

    assert page.status_code == 200
    assert "contact c05" in page.text
    assert "page.viewed (page=/pricing)" in page.text
    assert (
        f'href="http://127.0.0.1:{settings.temporal_ui_port}/namespaces/default'
        '/workflows/contact-c05"' in page.text
    )
    assert missing.status_code == 200
    assert "no workflow contact-c06" in missing.text
    assert unknown.status_code == 404
