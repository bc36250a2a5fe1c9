"""The dashboard in headless Chromium: sign-in, every page, the charts' numbers against
the seeded truth, and no request to any host but the API itself.

Run with ``pytest tests/browser -m browser -s`` (the first run installs Debian's
Chromium as root); screenshots land in ``$STAGECOACH_ARTIFACTS`` or
``.stagecoach/artifacts/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser.conftest import JOURNEY, TRUTH, Recorded, Served

pytestmark = pytest.mark.browser

DRAWN = """() => [...document.querySelectorAll('div.chart')].every(
    d => Array.isArray(d.data) && d._fullLayout !== undefined)"""
"""True once plotly.js drew every chart on the page."""

CHART = """id => {
    const d = document.getElementById(id);
    return {report: d.dataset.report, section: d.dataset.section, data: d.data};
}"""


def sign_in(page: Any, served: Served, token: str, then: str = "/dashboard") -> None:
    page.goto(f"{served.url}{then}")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def open_page(recorded: Recorded, served: Served, path: str) -> Any:
    page = recorded.page
    sign_in(page, served, served.token, then=path)
    assert urlsplit(page.url).path == path
    page.wait_for_function(DRAWN)
    return page


def chart(page: Any, chart_id: str) -> dict[str, Any]:
    found: dict[str, Any] = page.evaluate(CHART, chart_id)
    return found


def shot(page: Any, artifacts: Path, name: str) -> None:
    path = artifacts / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def only_local(recorded: Recorded) -> None:
    hosts = {urlsplit(url).hostname for url in recorded.requests if not url.startswith("data:")}
    assert hosts == {"127.0.0.1"}, f"requests left the machine: {recorded.requests}"
    assert not recorded.errors, f"the page reported errors: {recorded.errors}"


def test_wrong_token_is_refused(page: Recorded, dashboard_server: Served) -> None:
    sign_in(page.page, dashboard_server, "not-the-token")

    assert urlsplit(page.page.url).path == "/dashboard/login"
    assert "not the admin token" in page.page.inner_text("[role=alert]")
    assert not page.page.context.cookies()


def test_right_token_opens_the_overview(page: Recorded, dashboard_server: Served) -> None:
    sign_in(page.page, dashboard_server, dashboard_server.token)

    assert urlsplit(page.page.url).path == "/dashboard"
    [cookie] = page.page.context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (
        True,
        "Strict",
        "/dashboard",
    )


def test_overview_charts_carry_the_seeded_numbers(
    page: Recorded, dashboard_server: Served, artifacts: Path
) -> None:
    tab = open_page(page, dashboard_server, "/dashboard")
    shot(tab, artifacts, "overview")

    funnel = chart(tab, "funnel-width")
    assert (funnel["report"], funnel["section"]) == ("funnel", "width")
    [trace] = funnel["data"]
    assert dict(zip(trace["y"], trace["x"], strict=True)) == TRUTH.width

    [sankey] = chart(tab, "funnel-flows")["data"]
    labels, link = sankey["node"]["label"], sankey["link"]
    links = {
        (labels[s], labels[t]): (v, kind)
        for s, t, v, kind in zip(
            link["source"], link["target"], link["value"], link["customdata"], strict=True
        )
    }
    assert {pair: value for pair, (value, _) in links.items()} == TRUTH.flows
    assert links[TRUTH.detour] == (1, "detour")

    bars = chart(tab, "funnel-time-in-stage")["data"]
    assert {b["name"] for b in bars} >= {"suspect", "prospect", "lead"}

    nps = {t["name"]: t for t in chart(tab, "nps-trend")["data"]}
    assert nps["NPS"]["y"] == [TRUTH.nps]
    assert nps["answers"]["y"] == [TRUTH.nps_responses]

    assert "Numbers as of" in tab.inner_text("#freshness")
    only_local(page)


def test_journeys_page_shows_steps_and_flows(
    page: Recorded, dashboard_server: Served, artifacts: Path
) -> None:
    tab = open_page(page, dashboard_server, "/dashboard/journeys")
    shot(tab, artifacts, "journeys")

    flows = tab.eval_on_selector_all(
        f"div.chart[data-journey='{JOURNEY}']", "divs => divs.map(d => d.id)"
    )
    assert len(flows) == 1
    [sankey] = chart(tab, flows[0])["data"]
    labels, link = sankey["node"]["label"], sankey["link"]
    got = {
        (labels[s], labels[t]): v
        for s, t, v in zip(link["source"], link["target"], link["value"], strict=True)
    }
    assert got == TRUTH.journey_flow

    rows = tab.eval_on_selector_all(
        "#journey-steps tbody tr",
        """trs => trs.map(tr => Object.fromEntries([...tr.cells].map(
            td => [td.dataset.column, td.textContent])))""",
    )
    welcome = next(r for r in rows if r["step_id"] == "welcome_email")
    assert (welcome["sent"], welcome["opened"], welcome["clicked"]) == (
        str(TRUTH.welcome_sent),
        str(TRUTH.welcome_opened),
        str(TRUTH.welcome_clicked),
    )
    assert tab.query_selector("#table-lift") is not None
    assert tab.query_selector("#table-splits") is not None
    assert "Numbers as of" in tab.inner_text("#freshness")
    only_local(page)


def test_contact_page_shows_transitions_and_the_temporal_link(
    page: Recorded, dashboard_server: Served, artifacts: Path
) -> None:
    contact = TRUTH.recycled_contact
    tab = open_page(page, dashboard_server, f"/dashboard/contacts/{contact}")
    shot(tab, artifacts, "contact")

    cells = tab.eval_on_selector_all(
        "#transitions tbody tr", "trs => trs.map(tr => [...tr.cells].map(td => td.textContent))"
    )
    assert [(c[1], c[2], c[3]) for c in cells] == [
        ("(new)", "suspect", "rule"),
        ("suspect", "prospect", "rule"),
        ("prospect", "lead", "rule"),
        ("lead", "prospect", "detour"),
    ]
    link = tab.get_attribute("#temporal-ui", "href")
    settings = dashboard_server.settings
    assert link == (
        f"{settings.temporal_ui_url}/namespaces/{settings.temporal_namespace}"
        f"/workflows/contact-{contact}"
    )
    assert "Temporal is not wired" in tab.inner_text("#timeline-note")
    only_local(page)


def test_period_picker_reloads_with_the_dates(page: Recorded, dashboard_server: Served) -> None:
    tab = open_page(page, dashboard_server, "/dashboard")
    tab.fill("input[name=since]", "2000-01-01")
    tab.fill("input[name=until]", "2000-01-31")
    with tab.expect_navigation():
        tab.click("form.period button")
    tab.wait_for_function(DRAWN)

    assert "since=2000-01-01" in tab.url
    assert tab.input_value("input[name=since]") == "2000-01-01"
    assert tab.query_selector("#funnel-flows") is None  # nothing moved in January 2000
    [trace] = chart(tab, "funnel-width")["data"]
    assert dict(zip(trace["y"], trace["x"], strict=True)) == TRUTH.width  # width is now
    only_local(page)
