"""Browser tests: the real API app on a loopback port, driven by headless Chromium.

- ``seed_dashboard``: known contacts, stage transitions, events, deliveries, journey
  enrolments and NPS answers, written through the storage models; ``TRUTH`` is what the
  dashboard must show for them. The route tests in tests/engine/dashboard use it too.
- ``dashboard_server`` (session): a migrated SQLite file seeded so, the analytics store
  synced from it, and ``create_app`` served by uvicorn on a free 127.0.0.1 port in a
  thread. Yields its base URL, settings and admin token.
- ``chromium``: the Debian Chromium from ``scripts/chromium.sh`` (installed on
  first use when run as root), launched by Playwright with ``executable_path``: no
  browser download (``chromium`` is per module: see its docstring). ``page``: a fresh
  context and page per test, with every request and console error recorded.
- ``artifacts``: where screenshots go: ``$STAGECOACH_ARTIFACTS`` or
  ``.stagecoach/artifacts/``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import Engine
from sqlmodel import Session

from stagecoach.engine.app import create_app
from stagecoach.engine.domain.bounces import key_digest
from stagecoach.engine.services.analytics.store import AnalyticsStore
from stagecoach.engine.services.storage.models import (
    Contact,
    Delivery,
    Event,
    JourneyEnrolment,
    StageTransition,
)
from stagecoach.engine.settings import Settings
from tests.helpers import ROOT, free_port, migrated_engine

ADMIN_TOKEN = "browser-test-admin-token-0123456789"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# --- the seeded truth -----------------------------------------------------------------------

PATHS: dict[str, tuple[str, ...]] = {
    "c01": ("suspect", "prospect", "lead", "opportunity", "customer", "fan"),
    "c02": ("suspect", "prospect", "lead", "opportunity", "customer"),
    "c03": ("suspect", "prospect", "lead", "opportunity"),
    "c04": ("suspect", "prospect", "lead"),
    "c05": ("suspect", "prospect", "lead", "prospect"),  # recycled: a detour back
    "c06": ("suspect", "prospect", "lead"),
    "c07": ("suspect", "prospect"),
    "c08": ("suspect", "prospect"),
    "c09": ("suspect",),
    "c10": ("suspect",),
}
"""Each contact's stages, in order; the last is where it is now."""

NPS_SCORES = {"c01": 10, "c02": 9, "c03": 8, "c04": 3}
"""2 promoters, 1 passive, 1 detractor: NPS 25.0."""

JOURNEY = "welcome"
VERSION = "a1b2c3d4e5f6a7b8c9d0"
WELCOME, WAIT, CASE = "welcome_email", "wait_3d", "case_study"


@dataclass(frozen=True)
class Truth:
    """What the dashboard must show for the seeded rows."""

    width: dict[str, int] = field(
        default_factory=lambda: {
            "suspect": 2,
            "prospect": 3,
            "lead": 2,
            "opportunity": 1,
            "customer": 1,
            "fan": 1,
            "advocate": 0,
        }
    )
    flows: dict[tuple[str, str], int] = field(
        default_factory=lambda: {
            ("(new)", "suspect"): 10,
            ("suspect", "prospect"): 8,
            ("prospect", "lead"): 6,
            ("lead", "opportunity"): 3,
            ("lead", "prospect"): 1,
            ("opportunity", "customer"): 2,
            ("customer", "fan"): 1,
        }
    )
    detour: tuple[str, str] = ("lead", "prospect")
    nps: float = 25.0
    nps_responses: int = 4
    journey_flow: dict[tuple[str, str], int] = field(
        default_factory=lambda: {
            (WELCOME, WAIT): 4,
            (WELCOME, "Still in the journey"): 2,  # active
            (WAIT, CASE): 2,
            (CASE, "Goal reached"): 2,  # goal
            (WAIT, "Exit: Unsubscribed"): 2,  # exit:unsubscribed
            ("holdout", "Exit: Held out"): 1,  # exit:holdout
        }
    )
    welcome_sent: int = 6
    welcome_opened: int = 4
    welcome_clicked: int = 2
    recycled_contact: str = "c05"


TRUTH = Truth()


def seed_dashboard(engine: Engine, now: datetime) -> Truth:
    """Write the known rows (times a few days before ``now``) through the models."""
    start = now - timedelta(days=12)
    with Session(engine) as session:
        for n, (contact_id, stages) in enumerate(PATHS.items()):
            born = start + timedelta(hours=n)
            session.add(
                Contact(
                    id=contact_id,
                    stage=stages[-1],
                    locale="en",
                    timezone="Europe/London",
                    traits={"email": f"{contact_id}@example.com"},
                    created_at=born,
                    updated_at=born,
                )
            )
            previous: str | None = None
            for k, stage in enumerate(stages):
                detour = previous == "lead" and stage == "prospect"
                session.add(
                    StageTransition(
                        key=f"{contact_id}:{k}",
                        contact_id=contact_id,
                        from_stage=previous,
                        to_stage=stage,
                        kind="detour" if detour else "rule",
                        reason="recycled" if detour else f"rule:{stage}",
                        source="seed",
                        at=born + timedelta(hours=30 * k),
                    )
                )
                previous = stage
        session.flush()
        answered = now - timedelta(days=1)
        for contact_id, score in NPS_SCORES.items():
            session.add(
                Event(
                    message_id=f"nps-{contact_id}",
                    contact_id=contact_id,
                    name="nps.answered",
                    properties={"score": score, "touchpoint": "onboarding"},
                    occurred_at=answered,
                    received_at=answered,
                )
            )
        _seed_journey(session, start)
        session.commit()
    return TRUTH


def _seed_journey(session: Session, start: datetime) -> None:
    """Six enrolments in ``welcome`` plus one held out; sends, opens and clicks."""

    def step(name: str, at: datetime) -> dict[str, Any]:
        return {"step": name, "kind": "send", "outcome": "ok", "at": at.isoformat()}

    plans = {
        "c01": ((WELCOME, WAIT, CASE), "completed", "goal", "a"),
        "c02": ((WELCOME, WAIT, CASE), "completed", "goal", "b"),
        "c03": ((WELCOME, WAIT), "exited", "unsubscribed", "a"),
        "c04": ((WELCOME, WAIT), "exited", "unsubscribed", "b"),
        "c05": ((WELCOME,), "active", None, "a"),
        "c06": ((WELCOME,), "active", None, "b"),
    }
    for n, (contact_id, (steps, status, reason, arm)) in enumerate(plans.items()):
        began = start + timedelta(days=1, hours=n)
        session.add(
            JourneyEnrolment(
                contact_id=contact_id,
                journey=JOURNEY,
                version=VERSION,
                status=status,
                reason=reason,
                arms={"subject_test": arm},
                trail=[step(s, began + timedelta(hours=k)) for k, s in enumerate(steps)],
                started_at=began,
                finished_at=None if status == "active" else began + timedelta(days=4),
                updated_at=began,
            )
        )
        for s in steps:
            if s == WAIT:
                continue
            key = f"{contact_id}:{JOURNEY}:{VERSION}:{s}:1"
            session.add(
                Delivery(
                    idempotency_key=key,
                    contact_id=contact_id,
                    journey=JOURNEY,
                    journey_version=VERSION,
                    step_id=s,
                    channel="email",
                    content_id="welcome" if s == WELCOME else "case-study-manufacturing",
                    status="sent",
                    created_at=began,
                    sent_at=began,
                )
            )
            if s != WELCOME:
                continue
            tracked = ["email.opened"] if n < 4 else []
            tracked += ["email.clicked"] if n < 2 else []
            for name in tracked:
                session.add(
                    Event(
                        message_id=f"{name}-{contact_id}",
                        contact_id=contact_id,
                        name=name,
                        properties={"message_id": key_digest(key)},
                        occurred_at=began + timedelta(hours=2),
                        received_at=began + timedelta(hours=2),
                    )
                )
    began = start + timedelta(days=1, hours=7)
    session.add(
        JourneyEnrolment(
            contact_id="c07",
            journey=JOURNEY,
            version=VERSION,
            status="exited",
            reason="holdout",
            arms={"holdout": "holdout"},
            trail=[step("holdout", began)],
            started_at=began,
            finished_at=began,
            updated_at=began,
        )
    )


def seeded_settings(tmp: Path, **overrides: Any) -> Settings:
    """Settings for a seeded dashboard under ``tmp``: SQLite file, store, admin token."""
    values: dict[str, Any] = {
        "data_dir": tmp / ".stagecoach",
        "database_url": f"sqlite:///{tmp / 'stagecoach.db'}",
        "analytics_path": tmp / "analytics.duckdb",
        "admin_token": ADMIN_TOKEN,
        "dashboard_cache_seconds": 3600,
        "cache_dir": tmp / "cache",
    }
    values.update(overrides)
    return Settings(**values)


def seeded_database(settings: Settings) -> Engine:
    """A migrated database at ``settings``' URL, seeded, and its analytics store synced."""
    engine = migrated_engine(settings.resolved_database_url)
    seed_dashboard(engine, datetime.now(UTC))
    assert settings.analytics_path is not None
    AnalyticsStore(settings.analytics_path).sync(engine)
    return engine


# --- the server -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    url: str
    settings: Settings
    token: str = ADMIN_TOKEN


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free 127.0.0.1 port in a thread; yields its URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the API did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def dashboard_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The real Stagecoach API (``create_app``) with the seeded database, on loopback."""
    settings = seeded_settings(tmp_path_factory.mktemp("dashboard"))
    engine = seeded_database(settings)
    try:
        with serving(create_app(settings, db=engine)) as url:
            yield Served(url, settings)
    finally:
        engine.dispose()


# --- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Chromium from Debian, installed by scripts/chromium.sh when missing."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "chromium.sh")], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/chromium.sh failed: {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def chromium(chromium_path: str) -> Iterator[Any]:
    """Headless Chromium, per module: Playwright's sync API keeps an event loop running
    while it is open, and pytest-asyncio cannot start its own loop beside it, so the
    browser is gone before the async tests of other modules run."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Recorded:
    """A page with what it asked the network for and what it complained about."""

    page: Any
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def page(chromium: Any) -> Iterator[Recorded]:
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    recorded = Recorded(tab)
    tab.on("request", lambda request: recorded.requests.append(request.url))
    tab.on(
        "console",
        lambda message: recorded.errors.append(message.text) if message.type == "error" else None,
    )
    tab.on("pageerror", lambda error: recorded.errors.append(str(error)))
    try:
        yield recorded
    finally:
        context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go ($STAGECOACH_ARTIFACTS, default .stagecoach/artifacts)."""
    root = Path(os.environ.get("STAGECOACH_ARTIFACTS") or ROOT / ".stagecoach" / "artifacts")
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def temporal_ui_server_path() -> str:
    """Temporal's UI server: scripts/temporal-ui.sh prints $TEMPORAL_UI_SERVER_PATH when
    set, else the cached build, building it with Go on first use."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "temporal-ui.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/temporal-ui.sh failed: {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[-1]
