"""Dashboard page loads over a million contacts and twenty million events.

The analytics store is filled by ``stagecoach.engine.services.analytics.synthetic.generate`` (a B2B
pipeline with detours, two journeys with holdouts and a split, opens and clicks, NPS answers),
then the real API (``create_app``) is served by uvicorn and each page is fetched with
httpx, signed in: **cold** is the first load (its reports computed; the first page also
starts computing the other pages' in the background), **warm** the
median of the next loads (the report cache answers), **new period** a period nobody asked
for yet (computed again). Then a fresh API is met as an operator meets it: the login
page starts computing the pages' reports in the background, and the first pages are
timed right after it and after ``STAGECOACH_BENCH_THINK`` seconds (default 10: typing
the token). The goal is a page under a second; nothing here asserts it.

Run with ``pytest tests/bench/test_dashboard_load.py --run-bench -s -q``;
``STAGECOACH_BENCH_CONTACTS`` (default 1,000,000) and ``STAGECOACH_BENCH_EVENTS``
(events per contact, default 20) scale it.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import pytest
from sqlmodel import Session

from stagecoach.engine.app import create_app
from stagecoach.engine.dashboard import Period
from stagecoach.engine.services.analytics import run_report
from stagecoach.engine.services.analytics.store import AnalyticsStore, create_tables
from stagecoach.engine.services.analytics.synthetic import generate
from stagecoach.engine.services.storage import make_engine, upgrade
from stagecoach.engine.services.storage.models import Contact, StageTransition
from tests.bench._support import env_int, machine
from tests.browser.conftest import ADMIN_TOKEN, seeded_settings, serving

WARM_LOADS = 5


def _fill(path: Path, contacts: int, events: int, now: datetime) -> dict[str, int]:
    """Synthetic data in the store file, stamped as synced ``now``."""
    con = duckdb.connect(str(path))
    try:
        create_tables(con)
        added = generate(con, contacts, events, start=now - timedelta(days=200), days=180)
        con.execute(
            "INSERT OR REPLACE INTO sync_state VALUES ('sync', 0, ?)", [now.replace(tzinfo=None)]
        )
    finally:
        con.close()
    return added


def _sign_in(client: httpx.Client) -> None:
    signed = client.post(
        "/dashboard/login",
        content=f"token={ADMIN_TOKEN}",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert signed.status_code == 303


def _timed(client: httpx.Client, path: str) -> tuple[float, int, int]:
    started = time.perf_counter()
    answer = client.get(path)
    seconds = time.perf_counter() - started
    return seconds, answer.status_code, answer.num_bytes_downloaded


@pytest.mark.bench
def test_dashboard_page_loads(tmp_path: Path) -> None:
    contacts = env_int("STAGECOACH_BENCH_CONTACTS", 1_000_000)
    events = env_int("STAGECOACH_BENCH_EVENTS", 20)
    now = datetime.now(UTC)
    settings = seeded_settings(tmp_path)
    assert settings.analytics_path is not None
    database = make_engine(settings.resolved_database_url)
    upgrade(database)
    with Session(database) as session:  # the contact page reads the database, not the store
        session.add(Contact(id="bench-1", stage="lead"))
        for k, stage in enumerate(("suspect", "prospect", "lead")):
            key = f"bench-1:{k}"
            session.add(
                StageTransition(
                    key=key, contact_id="bench-1", to_stage=stage, reason="bench", source="bench"
                )
            )
        session.commit()

    started = time.perf_counter()
    added = _fill(settings.analytics_path, contacts, events, now)
    generated = time.perf_counter() - started
    size = settings.analytics_path.stat().st_size / 2**20

    period = Period.parse(None, None, today=now.date())
    computed: dict[str, float] = {}
    with AnalyticsStore(settings.analytics_path).read() as con:
        for name in ("funnel", "nps", "journeys"):
            started = time.perf_counter()
            run_report(name, con, period.params())
            computed[name] = time.perf_counter() - started

    pages = ("/dashboard", "/dashboard/journeys", "/dashboard/contacts/bench-1")
    other = Period(period.since - timedelta(days=30), period.until - timedelta(days=30)).query
    rows: list[str] = []
    with (
        serving(create_app(settings, db=database)) as url,
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        _sign_in(client)  # straight to the pages: no warm-up started by the login page
        for page in pages:
            cold, status, size_bytes = _timed(client, page)
            assert status == 200, page
            warm = statistics.median(_timed(client, page)[0] for _ in range(WARM_LOADS))
            fresh = _timed(client, page + other)[0] if "contacts" not in page else float("nan")
            rows.append(
                f"    {page:<30} cold {cold * 1000:8.1f} ms   warm {warm * 1000:7.1f} ms   "
                f"new period {fresh * 1000:8.1f} ms   {size_bytes / 1024:6.1f} KiB"
            )
        js_seconds, _, js_bytes = _timed(client, "/dashboard/static/dashboard.js")
        page_html = client.get("/dashboard").text
        plotly = page_html.split('<script src="')[1].split('"')[0]
        plotly_seconds, _, plotly_bytes = _timed(client, plotly)

    # A fresh API, as an operator meets it: the login page starts computing the pages'
    # reports; the first page waits for what is left of that, or finds it ready.
    think = env_int("STAGECOACH_BENCH_THINK", 10)
    after_login: list[str] = []
    for pause in (0, think):
        with (
            serving(create_app(settings, db=database)) as url,
            httpx.Client(base_url=url, timeout=120) as client,
        ):
            assert client.get("/dashboard/login").status_code == 200
            time.sleep(pause)
            _sign_in(client)
            first = [_timed(client, page)[0] for page in pages[:2]]
        after_login.append(
            f"    {pause:3d} s after the login page: "
            + ", ".join(f"{p} {t * 1000:.0f} ms" for p, t in zip(pages, first, strict=False))
        )

    print(f"\ndashboard page loads ({machine()})")
    print(
        f"  store: {added['contacts']:,} contacts, {added['events']:,} events, "
        f"{added['stage_transitions']:,} transitions, {added['deliveries']:,} deliveries, "
        f"{added['journey_enrolments']:,} enrolments; generated in {generated:.1f} s, "
        f"{size:.0f} MiB"
    )
    print(
        "  reports computed directly (last 90 days): "
        + ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in computed.items())
    )
    print("  pages (server response, signed in, httpx over loopback):")
    print("\n".join(rows))
    print("  a fresh API, first pages after the login page started the warm-up:")
    print("\n".join(after_login))
    print(
        f"  static: plotly.min.js {plotly_bytes / 2**20:.1f} MiB gzipped in "
        f"{plotly_seconds * 1000:.0f} ms, dashboard.js {js_bytes} B in {js_seconds * 1000:.1f} ms"
    )
