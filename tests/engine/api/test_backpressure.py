"""Admission control on the ingestion routes, through real HTTP on loopback.

The app is served by uvicorn in the test's event loop, so a test can hold the gate's
only slot itself (``gate.enter()``) and know that every ingestion call meanwhile is
refused: 429, a ``Retry-After``, and nothing stored. The concurrent test sends many
batches at once to a gate of one slot and one waiter, then resends the refused ones
with the same message ids, and counts rows: every message stored exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from stagecoach.engine.api._admission import AdmissionGate, Overloaded
from stagecoach.engine.api.routes.events import create_write_key
from stagecoach.engine.api.routes.wechat import drain
from stagecoach.engine.app import create_app
from stagecoach.engine.domain.errors import ConfigurationError
from stagecoach.engine.domain.wechat_callback import sign
from stagecoach.engine.services.storage.models import Event
from stagecoach.engine.settings import Settings, load_settings
from tests.helpers import free_port, migrated_engine

ADMIN = "admin-token-for-backpressure"
WECHAT_TOKEN = "stagecoach-token"
OPENID = "oAbC1234567890defGHIjklMNOpq"
SINGLE: dict[str, dict[str, Any]] = {
    "track": {"event": "content.downloaded", "properties": {"content_id": "wp-1"}},
    "identify": {"traits": {"email": "li.lei@example.cn"}},
    "page": {"name": "Pricing"},
    "screen": {"name": "Home"},
    "alias": {"previousId": "a-77"},
    "group": {"groupId": "acme"},
}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = migrated_engine(f"sqlite:///{tmp_path}/backpressure.db")
    yield db
    db.dispose()


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path}/backpressure.db",
        admin_token=ADMIN,
        metrics_public=True,
        **overrides,
    )


@contextlib.asynccontextmanager
async def served(app: FastAPI, key: str) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` on a loopback port (uvicorn, in this event loop); a client with ``key``."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", auth=(key, ""), limits=limits, timeout=30
        ) as http:
            yield http
    finally:
        server.should_exit = True
        await task


def gate_of(app: FastAPI) -> AdmissionGate:
    gate = app.state.admission
    assert isinstance(gate, AdmissionGate)
    return gate


def batch(prefix: str, n: int, size: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "track",
            "userId": f"{prefix}-u{n % 7}",
            "messageId": f"{prefix}-{n}-{i}",
            "event": "video.watched",
            "properties": {"percent": i},
        }
        for i in range(size)
    ]


def stored_ids(engine: Engine, prefix: str) -> list[str]:
    """Message ids of the events table starting with ``prefix``, one per row."""
    with Session(engine) as session:
        return list(
            session.exec(
                select(col(Event.message_id)).where(col(Event.message_id).startswith(prefix))
            ).all()
        )


def count_events(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(Event)).one())


def assert_refused(response: httpx.Response) -> int:
    """The 429 contract: a whole-second Retry-After, the same in the body, and words
    that say what to do. Returns the seconds."""
    assert response.status_code == 429, response.text
    seconds = response.headers["retry-after"]
    assert seconds.isdigit(), seconds
    assert int(seconds) >= 1
    body = response.json()
    assert body["success"] is False
    assert body["retryAfter"] == int(seconds)
    [error] = body["errors"]
    assert "overloaded" in error["message"]
    assert f"retry after {seconds} s with the same messageIds" in error["message"]
    return int(seconds)


async def scrape(http: httpx.AsyncClient) -> dict[str, float]:
    text = (await http.get("/metrics")).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("stagecoach_ingest"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


# --- the gate alone ------------------------------------------------------------------------


async def test_waiters_get_slots_in_arrival_order_and_a_gone_waiter_passes_its_slot() -> None:
    gate = AdmissionGate(concurrency=1, queue=3, max_wait=5.0)
    held = await gate.enter()
    order: list[str] = []

    async def call(name: str) -> None:
        entered = await gate.enter()
        order.append(name)
        await asyncio.sleep(0)
        gate.leave(entered)

    first = asyncio.create_task(call("first"))
    gone = asyncio.create_task(call("gone"))
    last = asyncio.create_task(call("last"))
    await asyncio.sleep(0.01)
    assert (gate.in_flight, gate.waiting) == (1, 3)
    gone.cancel()
    await asyncio.sleep(0)
    gate.leave(held)
    await asyncio.gather(first, last)
    assert gone.cancelled()
    assert order == ["first", "last"]
    assert (gate.in_flight, gate.waiting) == (0, 0)


async def test_a_waiter_is_refused_after_max_wait_and_a_full_queue_at_once() -> None:
    gate = AdmissionGate(concurrency=1, queue=1, max_wait=0.2)
    held = await gate.enter()
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiter = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as full:
        await gate.enter()
    assert loop.time() - started < 0.1  # the queue was full: no wait
    assert full.value.refusal.reason == "queue_full"
    with pytest.raises(Overloaded) as timed_out:
        await waiter
    assert loop.time() - started >= 0.2
    assert timed_out.value.refusal.reason == "timeout"
    assert timed_out.value.refusal.retry_after >= 1
    gate.leave(held)
    assert (gate.in_flight, gate.waiting) == (0, 0)


async def test_a_call_that_would_wait_longer_than_max_wait_is_refused_at_once() -> None:
    now = [0.0]
    gate = AdmissionGate(concurrency=2, queue=100, max_wait=1.0, clock=lambda: now[0])
    a, b = await gate.enter(), await gate.enter()
    now[0] = 0.8  # each call held its slot 0.8 s
    gate.leave(a)
    gate.leave(b)
    slots = [await gate.enter(), await gate.enter()]
    waiting = [asyncio.create_task(gate.enter()) for _ in range(2)]  # 0.4 s, 0.8 s
    await asyncio.sleep(0)
    assert gate.waiting == 2
    with pytest.raises(Overloaded) as refused:
        await gate.enter()  # third in the queue: 1.2 s
    assert refused.value.refusal.reason == "expected_wait"
    assert refused.value.refusal.retry_after == 2  # 4 calls ahead at 0.4 s each: 1.6 s
    for entered in slots:
        gate.leave(entered)
    for entered in await asyncio.gather(*waiting):
        gate.leave(entered)
    assert (gate.in_flight, gate.waiting) == (0, 0)


def test_bad_admission_settings_name_the_variable() -> None:
    with pytest.raises(ConfigurationError) as bad:
        load_settings(ingest_concurrency=-1)
    assert "STAGECOACH_INGEST_CONCURRENCY" in str(bad.value)
    with pytest.raises(ConfigurationError) as zero:
        load_settings(ingest_max_wait=0)
    assert "STAGECOACH_INGEST_MAX_WAIT" in str(zero.value)


# --- through HTTP ----------------------------------------------------------------------------


async def test_a_full_gate_answers_429_with_retry_after_and_stores_nothing(
    tmp_path: Path, engine: Engine
) -> None:
    app = create_app(settings_for(tmp_path, ingest_concurrency=1, ingest_queue=0), db=engine)
    key = create_write_key(engine, "web", source="web")
    messages = batch("full", 0, 5)
    async with served(app, key) as http:
        before = await scrape(http)
        held = await gate_of(app).enter()  # the only slot: every ingestion call is refused
        assert_refused(await http.post("/v1/batch", json={"batch": messages}))
        for kind, fields in SINGLE.items():
            body = {"userId": "u-1", "messageId": f"full-{kind}", **fields}
            assert_refused(await http.post(f"/v1/{kind}", json=body))
        after = await scrape(http)
        assert count_events(engine) == 0
        gate_of(app).leave(held)

        # The refused batch, resent with the same message ids: stored once, then a duplicate.
        first = await http.post("/v1/batch", json={"batch": messages})
        assert first.status_code == 200, first.text
        assert first.json()["accepted"] == 5
        assert first.json()["duplicates"] == 0
        again = await http.post("/v1/batch", json={"batch": messages})
        assert again.json()["duplicates"] == 5
    assert sorted(stored_ids(engine, "full-")) == sorted(m["messageId"] for m in messages)
    refused = 'stagecoach_ingest_refused_total{reason="queue_full"}'
    assert after[refused] - before.get(refused, 0) == 1 + len(SINGLE)
    assert after["stagecoach_ingest_in_flight"] == 1
    assert after["stagecoach_ingest_concurrency"] == 1


async def test_a_call_waits_at_most_max_wait_then_is_refused(
    tmp_path: Path, engine: Engine
) -> None:
    settings = settings_for(tmp_path, ingest_concurrency=1, ingest_queue=4, ingest_max_wait=0.3)
    app = create_app(settings, db=engine)
    key = create_write_key(engine, "web", source="web")
    async with served(app, key) as http:
        held = await gate_of(app).enter()
        loop = asyncio.get_running_loop()
        started = loop.time()
        call = asyncio.create_task(http.post("/v1/batch", json={"batch": batch("wait", 0, 3)}))
        await asyncio.sleep(0.1)
        assert gate_of(app).waiting == 1
        assert_refused(await call)
        assert loop.time() - started >= 0.3
        # A waiter that gets the slot within max_wait is served.
        call = asyncio.create_task(http.post("/v1/batch", json={"batch": batch("wait", 1, 3)}))
        await asyncio.sleep(0.1)
        gate_of(app).leave(held)
        answer = await call
        assert answer.status_code == 200, answer.text
    assert sorted(stored_ids(engine, "wait-")) == [f"wait-1-{i}" for i in range(3)]


async def test_other_routes_are_never_refused_while_the_gate_is_full(
    tmp_path: Path, engine: Engine
) -> None:
    app = create_app(settings_for(tmp_path, ingest_concurrency=1, ingest_queue=0), db=engine)
    app.state.wechat_apps = {"main": {"token": WECHAT_TOKEN, "appid": "wx5823bf96d3bd56c7"}}
    key = create_write_key(engine, "web", source="web")
    async with served(app, key) as http:
        held = await gate_of(app).enter()
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/metrics")).status_code == 200
        assert (await http.get("/openapi.json")).status_code == 200
        async with httpx.AsyncClient(
            base_url=http.base_url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
        ) as admin:
            contact = await admin.get("/v1/contacts/c_nobody")
            assert contact.status_code == 404, contact.text  # answered, not refused
            code = await admin.post("/v1/contacts/c_nobody/referral-code")
            assert code.status_code == 404, code.text
            report = await admin.get("/v1/reports/funnel")
            assert report.status_code == 200, report.text
        assert (await http.get("/v1/batch")).status_code == 405  # not POST: not gated
        # WeChat must always be answered: its callback stores an event, and is not gated.
        xml = (
            f"<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><FromUserName>"
            f"<![CDATA[{OPENID}]]></FromUserName><CreateTime>1763802000</CreateTime>"
            "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event></xml>"
        )
        now = str(int(time.time()))  # WeChat signs the call when it sends it
        params = {
            "signature": sign(WECHAT_TOKEN, now, "1320562325"),
            "timestamp": now,
            "nonce": "1320562325",
            "openid": OPENID,
        }
        callback = await http.post(
            "/wechat/main", params=params, content=xml, headers={"Content-Type": "text/xml"}
        )
        assert (callback.status_code, callback.text) == (200, "success")
        await drain(app)
        assert_refused(await http.post("/v1/track", json={"userId": "u", "messageId": "t-1"}))
        gate_of(app).leave(held)
    assert stored_ids(engine, "wechat:main:") == [f"wechat:main:{OPENID}:1763802000:subscribe"]


async def test_concurrent_callers_are_refused_or_stored_exactly_once(
    tmp_path: Path, engine: Engine
) -> None:
    app = create_app(settings_for(tmp_path, ingest_concurrency=1, ingest_queue=1), db=engine)
    key = create_write_key(engine, "web", source="web")
    batches = [batch("many", n, 200) for n in range(24)]
    async with served(app, key) as http:
        answers = await asyncio.gather(
            *(http.post("/v1/batch", json={"batch": b}) for b in batches)
        )
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 429}, statuses
        assert 429 in statuses, "24 batches at once through one slot and one waiter"
        assert 200 in statuses
        for answer in answers:
            if answer.status_code == 429:
                assert_refused(answer)
        accepted = [b for b, a in zip(batches, answers, strict=True) if a.status_code == 200]
        refused = [b for b, a in zip(batches, answers, strict=True) if a.status_code == 429]
        assert sum(a.json()["accepted"] for a in answers if a.status_code == 200) == 200 * len(
            accepted
        )
        # What was acknowledged is stored, once; nothing of a refused call is.
        ids = stored_ids(engine, "many-")
        assert len(ids) == len(set(ids))
        assert sorted(ids) == sorted(m["messageId"] for b in accepted for m in b)

        # The refused ones, resent with the same ids one at a time, as their Retry-After
        # says: each is stored once, none is a duplicate.
        for b in refused:
            answer = await http.post("/v1/batch", json={"batch": b})
            assert answer.status_code == 200, answer.text
            assert (answer.json()["accepted"], answer.json()["duplicates"]) == (200, 0)
    ids = stored_ids(engine, "many-")
    assert len(ids) == len(set(ids)) == 200 * len(batches)


async def test_concurrency_zero_turns_admission_control_off(tmp_path: Path, engine: Engine) -> None:
    app = create_app(settings_for(tmp_path, ingest_concurrency=0), db=engine)
    assert app.state.admission is None
    key = create_write_key(engine, "web", source="web")
    batches = [batch("off", n, 50) for n in range(16)]
    async with served(app, key) as http:
        spec = (await http.get("/openapi.json")).json()
        assert "429" not in spec["paths"]["/v1/batch"]["post"]["responses"]
        answers = await asyncio.gather(
            *(http.post("/v1/batch", json={"batch": b}) for b in batches)
        )
        metrics = await scrape(http)
    assert [a.status_code for a in answers] == [200] * len(batches)
    assert len(stored_ids(engine, "off-")) == 50 * len(batches)
    assert "stagecoach_ingest_in_flight" not in metrics


async def test_openapi_documents_429_on_the_ingestion_routes_only(
    tmp_path: Path, engine: Engine
) -> None:
    app = create_app(settings_for(tmp_path), db=engine)
    spec = app.openapi()
    documented = {
        (path, method)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if "429" in operation.get("responses", {})
        # The admin routes' 429 is the wrong-token throttle (stagecoach.engine.api.auth), not this.
        and "wrong admin tokens" not in operation["responses"]["429"]["description"]
    }
    kinds = ["batch", *SINGLE]
    assert documented == {(f"/v1/{kind}", "post") for kind in kinds}
    header = spec["paths"]["/v1/batch"]["post"]["responses"]["429"]["headers"]
    assert header["Retry-After"]["schema"]["type"] == "integer"
