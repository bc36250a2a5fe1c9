"""``/v1/broadcasts`` through the production app, on the dev server with the production
worker, its broadcast activities and the file sink.

- From nothing: a segment's members, then create, preview, test-send, schedule; the
  report shows each eligible member sent once and the held one by reason; a second
  schedule answers the first; the JSON and CSV reports carry the same numbers.
- Each kind of bad input is a 422 naming the field, and nothing is kept or sent.
- Pause, resume and cancel act on the running workflow; a draft or a finished broadcast
  cannot be steered (409); no token is 401 on every route.
- `stagecoach api`, started as an operator starts it, test-sends through the connectors
  its settings configure.

The audience is written the way a CSV upload leaves it (``seed_audience``: a published
manual segment and its members); the upload itself has its own tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, col, func, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stagecoach.connectors.filesink import FileSinkConnector
from stagecoach.engine.app import create_app
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.services.storage.models import (
    BroadcastRecipient,
    BroadcastRow,
    Consent,
    Delivery,
)
from tests.helpers import ROOT, free_port, migrated_engine
from tests.workflows.conftest import Runtime, eventually, open_runtime
from tests.workflows.test_broadcasts import AUDIENCE, CONTENT, seed_audience

TOKEN = "broadcasts-api-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Stack:
    runtime: Runtime
    api: httpx.AsyncClient
    seeds: Path

    async def status(self, broadcast_id: str) -> str:
        response = await self.api.get(f"/v1/broadcasts/{broadcast_id}/report")
        assert response.status_code == 200, response.text
        status: str = response.json()["status"]
        return status

    async def reaches(self, broadcast_id: str, status: str, within: float = 30) -> None:
        async def there() -> bool:
            return await self.status(broadcast_id) == status

        await eventually(there, within=within)


@pytest.fixture
async def stack(env: WorkflowEnvironment, task_queue: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """The production app on a runtime's database and Temporal, driven in the test's
    own event loop (the worker runs there too), with the file sink as the seeds'
    connector."""
    library = ContentLibrary.load(ROOT / "content")
    seeds = tmp_path / "seeds"
    async with open_runtime(env, task_queue, tmp_path, library, admin_token=TOKEN) as runtime:

        async def temporal() -> Client:
            return runtime.client

        app = create_app(
            runtime.settings,
            db=runtime.engine,
            temporal=temporal,
            connectors=lambda: {"email": FileSinkConnector(seeds, channel="email")},
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api.test", headers=AUTH
        ) as api:
            yield Stack(runtime, api, seeds)
        app.state.reports.wait(30)


def nothing_sent(stack: Stack) -> None:
    with Session(stack.runtime.engine) as session:
        recipients = session.exec(select(func.count()).select_from(BroadcastRecipient)).one()
        deliveries = session.exec(
            select(func.count()).where(col(Delivery.journey).startswith("broadcast:"))
        ).one()
    assert (recipients, deliveries) == (0, 0)
    assert not list((stack.runtime.sink / "email").glob("*/*.json"))


def kept(stack: Stack) -> list[str]:
    with Session(stack.runtime.engine) as session:
        return list(session.exec(select(BroadcastRow.id)).all())


def spec(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "segment": AUDIENCE.name, "content": CONTENT, **fields}


# --- from nothing ---------------------------------------------------------------------------


async def test_create_preview_test_send_schedule_and_report_each_member_once(
    stack: Stack,
) -> None:
    runtime = stack.runtime
    seed_audience(runtime.engine, [{"id": f"m{i}"} for i in range(5)])
    with Session(runtime.engine) as session:  # m4 said no to email: held, by reason
        session.add(
            Consent(
                contact_id="m4",
                channel="email",
                granted=False,
                source="test",
                wording="",
                proof="x",
            )
        )
        session.commit()
    body = spec("december-news", seeds=["team@example.com"], conversion="order.paid")

    created = await stack.api.post("/v1/broadcasts", json=body, params={"actor": "ops"})
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "draft"
    assert created.json()["actor"] == "ops"
    assert created.json()["spec"]["segment"] == AUDIENCE.name
    again = await stack.api.post("/v1/broadcasts", json=body)
    assert again.status_code == 200  # the same spec: nothing changed

    preview = await stack.api.get("/v1/broadcasts/december-news/preview", params={"sample": 2})
    assert preview.status_code == 200, preview.text
    seen = preview.json()
    assert (seen["audience"], seen["locales"], seen["problems"]) == (5, {"en": 5}, [])
    assert [s["contact_id"] for s in seen["sample"]] == ["m0", "m1"]

    tested = await stack.api.post("/v1/broadcasts/december-news/test-send", json={})
    assert tested.status_code == 200, tested.text
    assert tested.json()["sent"] == 1
    [seed_file] = list(stack.seeds.glob("**/*.json"))
    assert "team@example.com" in seed_file.read_text(encoding="utf-8")
    nothing_sent(stack)  # a test send is no delivery

    launched = await stack.api.post("/v1/broadcasts/december-news/schedule")
    assert launched.status_code == 202, launched.text
    first = launched.json()
    assert (first["first"], first["workflow_id"]) == (True, "broadcast-december-news")
    await stack.reaches("december-news", "completed")

    repeat = await stack.api.post("/v1/broadcasts/december-news/schedule")
    assert repeat.status_code == 200
    assert (repeat.json()["first"], repeat.json()["status"]) == (False, "completed")

    report = (await stack.api.get("/v1/broadcasts/december-news/report")).json()
    assert (report["audience"], report["sent"], report["done"]) == (5, 4, 5)
    assert report["held"] == {"no_consent:email": 1}
    assert report["conversion_event"] == "order.paid"
    assert [len(runtime.sent(f"m{i}")) for i in range(5)] == [1, 1, 1, 1, 0]

    shown = (await stack.api.get("/v1/broadcasts/december-news")).json()
    assert shown["report"] == report
    assert shown["spec"]["content"] == CONTENT
    listed = (await stack.api.get("/v1/broadcasts")).json()
    assert [(b["id"], b["sent"]) for b in listed] == [("december-news", 4)]

    as_json = (await stack.api.get("/v1/reports/broadcasts")).json()
    assert as_json["broadcasts"] == listed
    as_csv = await stack.api.get("/v1/reports/broadcasts", params={"format": "csv"})
    assert as_csv.headers["content-type"].startswith("text/csv")
    [row] = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert (row["id"], row["sent"], row["held"], row["held:no_consent:email"]) == (
        "december-news",
        "4",
        "1",
        "1",
    )

    # Launched: its spec is fixed. Another one under its name is refused.
    changed = await stack.api.post("/v1/broadcasts", json={**body, "content": "onboarding-welcome"})
    assert changed.status_code == 409
    assert "new name" in changed.json()["detail"]
    finished = await stack.api.post("/v1/broadcasts/december-news/cancel", json={})
    assert finished.status_code == 409
    assert "completed" in finished.json()["detail"]


# --- bad input ------------------------------------------------------------------------------


def _past() -> str:
    return (datetime.now(UTC) - timedelta(hours=1)).isoformat()


BAD: dict[str, tuple[dict[str, Any], str]] = {
    "unknown segment": ({"segment": "vips"}, "segment 'vips' is unknown"),
    "unknown content": ({"content": "no-such-item"}, "content 'no-such-item' is not in"),
    "past send_at": ({"send_at": "PAST"}, "is in the past"),
    "bad ab default": (
        {"ab": {"variants": [{"name": "a"}, {"name": "b", "subject": "Hi"}], "default": "c"}},
        "ab.default 'c' is not an arm",
    ),
    "ab sample too big": (
        {"ab": {"variants": [{"name": "a"}, {"name": "b"}], "default": "a", "sample": 0.5}},
        "ab.sample 0.5 x 2 arms",
    ),
    "bad channel": ({"channel": "fax"}, "channel 'fax' is not one of"),
    "bad name": ({"name": "Dec News!"}, "broadcast name 'Dec News!' is not valid"),
    "unknown conversion": ({"conversion": "no.such.event"}, "conversion event 'no.such.event'"),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_each_bad_broadcast_is_422_naming_the_field_and_nothing_is_kept_or_sent(
    stack: Stack, case: str
) -> None:
    seed_audience(stack.runtime.engine, [{"id": "b0"}])
    fields, says = BAD[case]
    if fields.get("send_at") == "PAST":
        fields = {**fields, "send_at": _past()}
    response = await stack.api.post("/v1/broadcasts", json={**spec("bad-one"), **fields})

    assert response.status_code == 422, response.text
    answer = response.json()
    assert says in answer["detail"]
    assert answer["problems"][0] == answer["detail"]
    assert kept(stack) == []
    nothing_sent(stack)


async def test_a_request_that_does_not_parse_is_422_with_the_field(stack: Stack) -> None:
    naive = await stack.api.post(
        "/v1/broadcasts", json=spec("naive", send_at="2099-01-05T09:00:00")
    )
    assert naive.status_code == 422
    [error] = naive.json()["detail"]
    assert error["loc"] == ["body", "send_at"]
    assert "time zone" in error["msg"]
    missing = await stack.api.post("/v1/broadcasts", json={"name": "x", "content": CONTENT})
    assert missing.status_code == 422
    assert ["body", "segment"] in [e["loc"] for e in missing.json()["detail"]]
    # Windows out of range (found by the schema fuzz: a huge one overflowed timedelta).
    for fields, where in (
        ({"attribution_seconds": -86399999913601}, ["body", "attribution_seconds"]),
        ({"attribution_seconds": 10**12}, ["body", "attribution_seconds"]),
        (
            {
                "ab": {
                    "variants": [{"name": "a"}, {"name": "b"}],
                    "default": "a",
                    "window_seconds": 10**15,
                }
            },
            ["body", "ab", "window_seconds"],
        ),
    ):
        refused = await stack.api.post("/v1/broadcasts", json=spec("windows", **fields))
        assert refused.status_code == 422, refused.text
        assert [e["loc"] for e in refused.json()["detail"]] == [where]
    assert kept(stack) == []
    nothing_sent(stack)


async def test_a_send_time_that_passed_before_launch_is_refused_and_nothing_sent(
    stack: Stack,
) -> None:
    seed_audience(stack.runtime.engine, [{"id": "late0"}])
    # Far enough ahead that a loaded machine still creates it before the time passes.
    soon = datetime.now(UTC) + timedelta(seconds=4)
    created = await stack.api.post(
        "/v1/broadcasts", json=spec("too-late", send_at=soon.isoformat())
    )
    assert created.status_code == 201, created.text
    await asyncio.sleep((soon - datetime.now(UTC)).total_seconds() + 0.1)

    launched = await stack.api.post("/v1/broadcasts/too-late/schedule")
    assert launched.status_code == 422
    [problem] = launched.json()["problems"]
    assert "send_at" in problem
    assert "in the past" in problem
    assert await stack.status("too-late") == "draft"
    nothing_sent(stack)


async def test_a_test_send_to_no_seeds_or_a_bad_address_is_422_and_sends_nothing(
    stack: Stack,
) -> None:
    seed_audience(stack.runtime.engine, [{"id": "t0"}])
    assert (await stack.api.post("/v1/broadcasts", json=spec("seedless"))).status_code == 201

    none = await stack.api.post("/v1/broadcasts/seedless/test-send", json={})
    assert none.status_code == 422
    assert none.json()["detail"].startswith("to: no seed addresses")
    bad = await stack.api.post(
        "/v1/broadcasts/seedless/test-send", json={"to": ["me@example.com", "wang@"]}
    )
    assert bad.status_code == 422
    assert bad.json()["detail"].startswith("to[1]: 'wang@' is not an email address")
    assert not stack.seeds.exists()
    nothing_sent(stack)


async def test_an_api_without_temporal_or_connectors_says_so_and_sends_nothing(
    stack: Stack,
) -> None:
    runtime = stack.runtime
    seed_audience(runtime.engine, [{"id": "w0"}])
    bare = create_app(runtime.settings, db=runtime.engine)  # no Temporal, no connectors
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=bare), base_url="http://api.test", headers=AUTH
    ) as api:
        assert (await api.post("/v1/broadcasts", json=spec("unwired"))).status_code == 201
        launched = await api.post("/v1/broadcasts/unwired/schedule")
        assert launched.status_code == 503
        assert "Temporal is not wired to this API" in launched.json()["detail"]
        tested = await api.post("/v1/broadcasts/unwired/test-send", json={"to": ["me@example.com"]})
        assert tested.status_code == 503
        assert "built without connectors" in tested.json()["detail"]
    bare.state.reports.wait(30)
    assert await stack.status("unwired") == "draft"
    nothing_sent(stack)


async def test_unknown_broadcast_is_404(stack: Stack) -> None:
    for method, path in (
        ("GET", "/v1/broadcasts/nope"),
        ("GET", "/v1/broadcasts/nope/report"),
        ("GET", "/v1/broadcasts/nope/preview"),
        ("POST", "/v1/broadcasts/nope/schedule"),
        ("POST", "/v1/broadcasts/nope/pause"),
    ):
        response = await stack.api.request(method, path)
        assert response.status_code == 404, (method, path)
        assert "no broadcast 'nope'" in response.json()["detail"]


async def test_no_token_is_401_and_nothing_is_kept(stack: Stack) -> None:
    seed_audience(stack.runtime.engine, [{"id": "u0"}])
    bare = httpx.AsyncClient(transport=stack.api._transport, base_url="http://api.test")
    async with bare:
        for method, path, body in (
            ("GET", "/v1/broadcasts", None),
            ("POST", "/v1/broadcasts", spec("sneaky")),
            ("POST", "/v1/broadcasts/sneaky/schedule", None),
            ("GET", "/v1/reports/broadcasts", None),
        ):
            response = await bare.request(method, path, json=body)
            assert response.status_code == 401, (method, path)
        wrong = await bare.get("/v1/broadcasts", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    assert kept(stack) == []
    nothing_sent(stack)


# --- steering -------------------------------------------------------------------------------


async def test_pause_resume_and_cancel_act_on_the_running_broadcast(stack: Stack) -> None:
    runtime = stack.runtime
    seed_audience(runtime.engine, [{"id": f"s{i}"} for i in range(3)])

    draft = await stack.api.post("/v1/broadcasts", json=spec("steered"))
    assert draft.status_code == 201
    not_yet = await stack.api.post("/v1/broadcasts/steered/pause", json={"reason": "wait"})
    assert not_yet.status_code == 409  # a draft: schedule it first
    assert "draft" in not_yet.json()["detail"]

    # Paused before its send time: nobody is sent until it resumes.
    later = datetime.now(UTC) + timedelta(seconds=4)
    await stack.api.post("/v1/broadcasts", json=spec("paused-one", send_at=later.isoformat()))
    assert (await stack.api.post("/v1/broadcasts/paused-one/schedule")).status_code == 202
    paused = await stack.api.post("/v1/broadcasts/paused-one/pause", json={"reason": "legal"})
    assert paused.status_code == 202
    assert paused.json()["action"] == "pause"
    await stack.reaches("paused-one", "paused")
    report = (await stack.api.get("/v1/broadcasts/paused-one/report")).json()
    # Paused at once, before its send time: the audience is fixed when sending starts,
    # so nobody is snapshotted yet, and the send time passing while paused sends nothing.
    assert (report["reason"], report["sent"], report["pending"]) == ("legal", 0, 0)
    await asyncio.sleep(max(0.0, (later - datetime.now(UTC)).total_seconds()) + 1.0)
    report = (await stack.api.get("/v1/broadcasts/paused-one/report")).json()
    assert (report["status"], report["sent"]) == ("paused", 0)
    assert not any(runtime.sent(f"s{i}") for i in range(3))

    resumed = await stack.api.post("/v1/broadcasts/paused-one/resume")
    assert resumed.status_code == 202
    await stack.reaches("paused-one", "completed")
    assert [len(runtime.sent(f"s{i}")) for i in range(3)] == [1, 1, 1]

    # Cancelled while it waits for its send time: nobody is sent.
    far = datetime.now(UTC) + timedelta(hours=1)
    await stack.api.post("/v1/broadcasts", json=spec("cancelled-one", send_at=far.isoformat()))
    assert (await stack.api.post("/v1/broadcasts/cancelled-one/schedule")).status_code == 202
    cancelled = await stack.api.post(
        "/v1/broadcasts/cancelled-one/cancel", json={"reason": "wrong list"}
    )
    assert cancelled.status_code == 202
    await stack.reaches("cancelled-one", "cancelled")
    report = (await stack.api.get("/v1/broadcasts/cancelled-one/report")).json()
    assert (report["reason"], report["sent"]) == ("wrong list", 0)
    assert [len(runtime.sent(f"s{i}")) for i in range(3)] == [1, 1, 1]
    again = await stack.api.post("/v1/broadcasts/cancelled-one/cancel", json={})
    assert again.status_code == 409
    assert (await stack.api.post("/v1/broadcasts/cancelled-one/resume")).status_code == 409


# --- the served API -------------------------------------------------------------------------


@pytest.mark.e2e
def test_stagecoach_api_test_sends_through_the_connector_settings_configure(
    tmp_path: Path,
) -> None:
    """``stagecoach api`` as an operator starts it builds the channels' connectors from
    settings (here the default file sink under the data directory), as the worker does."""
    data = tmp_path / ".stagecoach"
    engine = migrated_engine(f"sqlite:///{data / 'stagecoach.db'}")
    seed_audience(engine, [{"id": "e0"}])
    engine.dispose()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECOACH_")}
    env.update(
        STAGECOACH_DATA_DIR=str(data),
        STAGECOACH_CONTENT_DIR=str(ROOT / "content"),
        STAGECOACH_TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
        STAGECOACH_API_PORT=str(port),
        STAGECOACH_ADMIN_TOKEN=TOKEN,
    )
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "api.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stagecoach.engine.cli", "api"],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, (tmp_path / "api.log").read_text()
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                assert time.monotonic() < deadline, (tmp_path / "api.log").read_text()
                time.sleep(0.2)
            with httpx.Client(base_url=url, headers=AUTH, timeout=30) as api:
                assert api.post("/v1/broadcasts", json=spec("served")).status_code == 201
                tested = api.post(
                    "/v1/broadcasts/served/test-send", json={"to": ["qa@example.com"]}
                )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert tested.status_code == 200, tested.text
    [message] = [
        json.loads(p.read_text(encoding="utf-8"))
        for p in (data / "sink" / "email").glob("*/*.json")
    ]
    assert message["to"] == "qa@example.com"
    assert message["message"]["subject"].startswith("[test] ")
