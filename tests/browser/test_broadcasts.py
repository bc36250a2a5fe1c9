"""The broadcasts pages in headless Chromium, reading a broadcast that really ran.

From nothing: a manual segment's members (one who said no to email, one whose address
is suppressed), a broadcast created and scheduled over ``/v1/broadcasts`` and sent by
the production worker on a Temporal dev server of this module's own, to the file sink;
two recipients then open it. The pages must show what the run did: sent, held back by
reason, opened, and the progress bar full.

The run happens in a thread with its own event loop before the browser opens:
Playwright's sync API keeps a loop of its own running (see ``chromium`` in conftest).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlmodel import Session, col, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.app import create_app
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.protocol.search_keys import ALL_KEYS
from stagecoach.engine.services.storage import make_engine
from stagecoach.engine.services.storage.models import (
    BroadcastRecipient,
    Consent,
    Event,
    Suppression,
)
from stagecoach.engine.settings import Settings
from tests.browser.conftest import ADMIN_TOKEN, Recorded, Served, serving
from tests.browser.test_dashboard import only_local, shot, sign_in
from tests.browser.test_segments import ROWS
from tests.helpers import ROOT
from tests.workflows.conftest import eventually, open_runtime
from tests.workflows.test_broadcasts import AUDIENCE, CONTENT, seed_audience

pytestmark = pytest.mark.browser

NAME = "spring-launch"
AB_NAME = "spring-subject-test"
MEMBERS = [f"b{i}" for i in range(6)]


@dataclass(frozen=True)
class Ran:
    """What the run did, as the database and the sink saw it."""

    settings: Settings
    sent: int
    held: dict[str, int]
    opened: int
    ab: dict[str, Any]


async def _run(tmp: Path, cli: str) -> Ran:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=cli, search_attributes=ALL_KEYS, ui=False
    )
    try:
        library = ContentLibrary.load(ROOT / "content")
        queue = f"browser-{uuid.uuid4().hex}"
        async with open_runtime(env, queue, tmp, library, admin_token=ADMIN_TOKEN) as runtime:
            seed_audience(runtime.engine, [{"id": m} for m in MEMBERS])
            with Session(runtime.engine) as session:
                session.add(
                    Consent(
                        contact_id="b1",
                        channel="email",
                        granted=False,
                        source="test",
                        wording="",
                        proof="x",
                    )
                )
                session.add(
                    Suppression(channel="email", address="b2@example.com", reason="hard_bounce")
                )
                session.commit()

            async def temporal() -> Client:
                return runtime.client

            app = create_app(runtime.settings, db=runtime.engine, temporal=temporal)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://api.test",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as api:
                plain: dict[str, Any] = {"conversion": "order.paid"}
                ab: dict[str, Any] = {
                    "ab": {
                        "variants": [{"name": "a"}, {"name": "b", "subject": "Spring is here"}],
                        "default": "a",
                        "sample": 0.4,
                        "window_seconds": 1,
                        "metric": "clicked",
                    },
                }
                for name, fields in ((NAME, plain), (AB_NAME, ab)):
                    body = {"name": name, "segment": AUDIENCE.name, "content": CONTENT, **fields}
                    assert (await api.post("/v1/broadcasts", json=body)).status_code == 201
                    assert (await api.post(f"/v1/broadcasts/{name}/schedule")).status_code == 202

                    async def completed(name: str = name) -> bool:
                        report = (await api.get(f"/v1/broadcasts/{name}/report")).json()
                        return bool(report["status"] == "completed")

                    await eventually(completed, within=60)
                decision = (await api.get(f"/v1/broadcasts/{AB_NAME}/report")).json()["ab"]
            app.state.reports.wait(30)
            with Session(runtime.engine) as session:
                sent = session.exec(
                    select(BroadcastRecipient).where(
                        col(BroadcastRecipient.broadcast_id) == NAME,
                        col(BroadcastRecipient.status) == "sent",
                    )
                ).all()
                # Two recipients open it (what the tracking pixel records) after the send;
                # the first also buys within the attribution window.
                for n, r in enumerate(sent[:2]):
                    at = (r.sent_at or datetime.now(UTC)) + timedelta(minutes=5)
                    kinds = ["email.opened"] + (["order.paid"] if n == 0 else [])
                    for kind in kinds:
                        session.add(
                            Event(
                                message_id=f"{kind}-{r.contact_id}",
                                contact_id=r.contact_id,
                                name=kind,
                                properties={},
                                occurred_at=at,
                                received_at=at,
                            )
                        )
                by_reason: dict[str, int] = {}
                for reason in session.exec(
                    select(BroadcastRecipient.reason).where(
                        col(BroadcastRecipient.broadcast_id) == NAME,
                        col(BroadcastRecipient.status) == "held",
                    )
                ).all():
                    by_reason[str(reason)] = by_reason.get(str(reason), 0) + 1
                count = len(sent)
                session.commit()
            return Ran(runtime.settings, count, by_reason, min(2, count), decision)
    finally:
        await env.shutdown()


@pytest.fixture(scope="module")
def broadcast_server(
    tmp_path_factory: pytest.TempPathFactory, temporal_cli_path: str
) -> Iterator[tuple[Served, Ran]]:
    tmp = tmp_path_factory.mktemp("broadcasts")
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["ran"] = asyncio.run(_run(tmp, temporal_cli_path))
        except BaseException as exc:  # handed to the test's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="broadcast-run")
    thread.start()
    thread.join(timeout=180)
    if "error" in outcome:
        raise outcome["error"]
    ran: Ran = outcome["ran"]
    engine = make_engine(ran.settings.resolved_database_url)  # the run's own database
    try:
        with serving(create_app(ran.settings, db=engine)) as url:
            yield Served(url, ran.settings), ran
    finally:
        engine.dispose()


def test_broadcast_pages_show_what_the_run_sent_and_held_back(
    page: Recorded, broadcast_server: tuple[Served, Ran], artifacts: Path
) -> None:
    served, ran = broadcast_server
    # The run's own truth first: four sent, two held, by reason.
    assert ran.sent == 4
    assert ran.held == {"no_consent:email": 1, "suppressed:email": 1}

    tab = page.page
    sign_in(tab, served, served.token, then="/dashboard")
    with tab.expect_navigation():
        tab.click("header nav >> text=Broadcasts")
    assert urlsplit(tab.url).path == "/dashboard/broadcasts"
    shot(tab, artifacts, "broadcasts")

    rows = {r["name"]: r for r in tab.evaluate(ROWS, "broadcasts")}
    assert set(rows) == {NAME, AB_NAME}
    listed = rows[NAME]
    assert (listed["name"], listed["status"]) == (NAME, "completed")
    assert (int(listed["audience"]), int(listed["sent"]), int(listed["held"])) == (6, 4, 2)
    assert listed["progress"] == "6 / 6"
    bar = tab.locator(f"#broadcasts tr[data-broadcast={NAME}] [role=progressbar]")
    assert (bar.get_attribute("aria-valuenow"), bar.get_attribute("aria-valuemax")) == ("6", "6")

    with tab.expect_navigation():
        tab.click(f"#broadcasts >> text={NAME}")
    assert urlsplit(tab.url).path == f"/dashboard/broadcasts/{NAME}"
    shot(tab, artifacts, "broadcast")

    assert tab.inner_text("#broadcast-status") == "completed"
    figures = tab.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#broadcast-outcomes > div')]
            .map(d => [d.dataset.figure, d.querySelector('strong').innerText.trim()]))"""
    )
    assert figures["sent"] == str(ran.sent)
    assert figures["held back"] == "2"
    assert figures["audience"] == "6"
    held = {r["reason"]: int(r["recipients"]) for r in tab.evaluate(ROWS, "broadcast-held")}
    assert held == ran.held
    engagement = {r["what"]: r for r in tab.evaluate(ROWS, "broadcast-engagement")}
    assert engagement["sent"]["recipients"] == "4"
    assert engagement["opened"]["recipients"] == str(ran.opened)
    assert engagement["opened"]["rate"] == "50.0%"
    assert engagement["clicked"]["recipients"] == "0"
    converted = engagement["converted (order.paid within 7 days of the send)"]
    assert (converted["recipients"], converted["rate"]) == ("1", "25.0%")
    assert tab.locator("#broadcast-ab").count() == 0  # no A/B test declared

    # A recipient's own page shows the send on their timeline, though no workflow made it.
    with tab.expect_navigation():
        tab.goto(f"{served.url}/dashboard/contacts/{MEMBERS[0]}")
    story = tab.inner_text("body")
    assert f"[broadcast {NAME}]: sent" in story
    only_local(page)


def test_the_ab_page_shows_each_arm_the_test_and_the_winner(
    page: Recorded, broadcast_server: tuple[Served, Ran], artifacts: Path
) -> None:
    served, ran = broadcast_server
    tab = page.page
    sign_in(tab, served, served.token, then=f"/dashboard/broadcasts/{AB_NAME}")
    shot(tab, artifacts, "broadcast-ab")

    arms = {r["arm"]: r for r in tab.evaluate(ROWS, "broadcast-arms")}
    expected = {a["name"]: a for a in ran.ab["arms"]}
    assert set(arms) == {"a (winner)", "b"}  # nobody clicked: the declared default goes
    for label, shown in arms.items():
        arm = expected[label.removesuffix(" (winner)")]
        assert (int(shown["sent"]), int(shown["successes"])) == (arm["sent"], 0)
    assert tab.inner_text("#ab-winner") == ran.ab["winner"] == "a"
    assert tab.inner_text("#ab-reason") == ran.ab["reason"]
    assert "default sent" in ran.ab["reason"]
    assert tab.inner_text("#ab-p-value") == "–"  # no test: the rates cannot differ
    only_local(page)


def test_an_unknown_broadcast_is_a_404_page(
    page: Recorded, broadcast_server: tuple[Served, Ran]
) -> None:
    served, _ = broadcast_server
    tab = page.page
    sign_in(tab, served, served.token, then="/dashboard/broadcasts")
    response = tab.goto(f"{served.url}/dashboard/broadcasts/nope")
    assert response is not None
    assert response.status == 404
    assert "no broadcast 'nope'" in tab.inner_text("main")
