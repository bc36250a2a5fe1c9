"""The dashboard's broadcasts pages through the real app over HTTP: what a draft and a
scheduled broadcast look like before anything is sent, the reload while one is live,
the 404 for an unknown id, the login for a stranger, and a WeChat mass send's jobs.
What a finished run shows is read in Chromium from a real run
(``tests/browser/test_broadcasts.py``).

Broadcasts are kept and launched here with the store functions the API and the CLI call
(``save_broadcast``, ``mark_launched``): these pages only read what those rows say.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from html import unescape
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from stagecoach.engine.app import create_app
from stagecoach.engine.domain.broadcasts import ABTest, Broadcast, Variant
from stagecoach.engine.domain.wechat_callback import MassSendFinished
from stagecoach.engine.services.broadcasts.store import mark_launched, save_broadcast
from stagecoach.engine.services.broadcasts.wechat_jobs import (
    record_job_finished,
    record_job_started,
)
from stagecoach.engine.settings import Settings
from tests.browser.conftest import ADMIN_TOKEN, seeded_settings
from tests.engine.dashboard.test_segments_pages import FORM, rows

DRAFT = Broadcast(name="spring-draft", segment="readers", content="newsletter-monthly")
LIVE = Broadcast(
    name="spring-test",
    segment="readers",
    content="newsletter-monthly",
    ab=ABTest(variants=(Variant("a"), Variant("b", subject="Hello")), default="a"),
)


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


@pytest.mark.parametrize("path", ["/dashboard/broadcasts", "/dashboard/broadcasts/spring-draft"])
def test_broadcasts_pages_send_strangers_to_the_login(
    db_engine: Engine, settings: Settings, path: str
) -> None:
    with TestClient(create_app(settings, db=db_engine), follow_redirects=False) as stranger:
        answer = stranger.get(path)

    assert answer.status_code == 303
    assert answer.headers["location"] == f"/dashboard/login?next={path}"


def test_no_broadcasts_says_how_to_make_one(client: TestClient) -> None:
    page = client.get("/dashboard/broadcasts")

    assert page.status_code == 200
    assert "No broadcasts yet" in page.text
    assert 'http-equiv="refresh"' not in page.text
    assert 'href="/dashboard/broadcasts" aria-current="page"' in page.text


def test_a_draft_and_a_scheduled_broadcast_before_anything_is_sent(
    client: TestClient, db_engine: Engine
) -> None:
    save_broadcast(db_engine, DRAFT, source="test")
    save_broadcast(db_engine, LIVE, source="test")
    mark_launched(db_engine, LIVE.name)

    listing = client.get("/dashboard/broadcasts")
    listed = {r["name"]: r for r in rows(listing.text, "broadcasts")}
    assert {n: (r["status"], r["progress"], r["sent"]) for n, r in listed.items()} == {
        "spring-draft": ("draft", "–", "0"),
        "spring-test": ("scheduled", "–", "0"),
    }
    assert '<meta http-equiv="refresh" content="10">' in listing.text  # one is live

    draft = client.get("/dashboard/broadcasts/spring-draft")
    assert draft.status_code == 200
    assert "The audience is fixed when sending starts." in draft.text
    assert 'http-equiv="refresh"' not in draft.text
    assert 'id="broadcast-ab"' not in draft.text
    assert "Nobody held back." in draft.text

    live = client.get("/dashboard/broadcasts/spring-test")
    assert '<meta http-equiv="refresh" content="10">' in live.text
    text = unescape(live.text)
    assert "Arms: a, b." in text
    assert "the test's window has not closed yet: no winner" in text


def test_an_unknown_broadcast_is_a_404_page_saying_how_to_find_them(client: TestClient) -> None:
    page = client.get("/dashboard/broadcasts/nope")

    assert page.status_code == 404
    text = unescape(page.text)
    assert "no broadcast 'nope'" in text
    assert "stagecoach broadcasts list" in text


def test_a_wechat_mass_send_shows_its_jobs_with_the_callbacks_counts(
    client: TestClient, db_engine: Engine
) -> None:
    mass = Broadcast(
        name="wechat-news", segment="followers", content="newsletter-monthly", channel="wechat_mass"
    )
    save_broadcast(db_engine, mass, source="test")
    mark_launched(db_engine, mass.name)
    for n, msg_id in enumerate(("1000001", "1000002")):
        record_job_started(
            db_engine,
            broadcast_id=mass.name,
            appid="wx-app",
            clientmsgid=f"wechat-news-{n}",
            msg_id=msg_id,
            target="openids:10000" if n == 0 else "openids:2500",
        )
    finished = MassSendFinished(
        msg_id="1000001",
        status="send success",
        total=10000,
        filter_count=9800,
        sent=9790,
        errors=10,
    )
    assert record_job_finished(db_engine, appid="wx-app", finished=finished, at=datetime.now(UTC))

    page = client.get("/dashboard/broadcasts/wechat-news")

    jobs = {r["msg_id"]: r for r in rows(page.text, "broadcast-wechat-jobs")}
    assert set(jobs) == {"1000001", "1000002"}
    done = jobs["1000001"]
    assert (done["target"], done["total"], done["sent"], done["errors"]) == (
        "openids:10000",
        "10,000",
        "9,790",
        "10",
    )
    assert done["filtered"] == f"{finished.filtered_out:,}"
    waiting = jobs["1000002"]
    assert (waiting["status"], waiting["sent"]) == ("sending", "–")
