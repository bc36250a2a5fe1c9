"""A WeChat mass-send job from send to ``MASSSENDJOBFINISH``: the local WeChat API
(tests/peers/wechat.py) accepts the job, then posts the finish callback, signed as WeChat
signs it, to the API's ``/wechat/<app>`` route, which records the counts on the job's
``broadcast_jobs`` row. Refused callbacks record nothing; repeats change nothing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from structlog.testing import capture_logs

from stagecoach.connectors.wechat import WeChatConfig
from stagecoach.connectors.wechat.masssend import WeChatMassSender, jobs_for
from stagecoach.engine.api.routes.wechat import drain
from stagecoach.engine.app import create_app
from stagecoach.engine.services.broadcasts.wechat_jobs import (
    JobState,
    jobs_of,
    record_job_started,
)
from stagecoach.engine.settings import Settings
from tests.helpers import free_port, migrated_engine
from tests.peers.wechat import PEER_APPID, WeChatPeer, running_peer

TOKEN = "stagecoach-token"
ENCODING_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APPS = {
    "main": {"token": TOKEN, "appid": PEER_APPID},
    "safe": {"token": TOKEN, "aes_key": ENCODING_AES_KEY, "appid": PEER_APPID},
}
MEDIA_ID = "VmuCOhkqjAeYPpIxLYSjwq4BlENjq7Idqb9xrBL1bPQ"
FANS = ["oFan000000000000000000000001", "oFan000000000000000000000002", "oFan0000000000003"]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = migrated_engine(f"sqlite:///{tmp_path}/masssend.db")
    yield db
    db.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/masssend.db")


@pytest.fixture
def db_engine(engine: Engine) -> Engine:
    return engine


@pytest.fixture
def api_app(api_app: FastAPI) -> FastAPI:
    api_app.state.wechat_apps = APPS
    return api_app


@pytest.fixture
def peer() -> Iterator[WeChatPeer]:
    with running_peer(account_type="service") as started:
        started.tag_users(42, FANS)
        yield started


def settle(api: TestClient) -> None:
    """Wait for the records the callbacks left running after their replies."""
    assert api.portal is not None
    assert isinstance(api.app, FastAPI)
    api.portal.call(drain, api.app)


async def send_job(peer: WeChatPeer, engine: Engine, broadcast_id: str) -> JobState:
    """What the broadcast's batch activity does: send the job, record it started."""
    [job] = jobs_for(broadcast_id, FANS, msgtype="mpnews", media_id=MEDIA_ID)
    sender = WeChatMassSender(
        WeChatConfig(appid=peer.appid, secret=peer.secret, api_base=peer.url, timeout=5)
    )
    try:
        result = await sender.send(job)
    finally:
        await sender.aclose()
    return record_job_started(
        engine,
        broadcast_id=broadcast_id,
        appid=peer.appid,
        clientmsgid=job.clientmsgid,
        msg_id=result.msg_id,
        target=job.target,
    )


def job_of(engine: Engine, broadcast_id: str) -> JobState:
    [job] = jobs_of(engine, broadcast_id)
    return job


def finish(peer: WeChatPeer, api: TestClient, msg_id: str | None, **options: Any) -> Any:
    assert msg_id is not None
    options.setdefault("token", TOKEN)
    return peer.finish_job(msg_id, callback_url="/wechat/main", client=api, **options)


# --- through a real HTTP server, from nothing --------------------------------------------


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


async def test_a_mass_send_job_finishes_through_the_callback_over_http(
    settings: Settings, engine: Engine, peer: WeChatPeer
) -> None:
    app = create_app(settings, db=engine)
    app.state.wechat_apps = APPS
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started)
        started = await send_job(peer, engine, "bc-newsletter-03")
        assert (started.status, started.total, started.finished_at) == ("sending", None, None)
        assert started.target == "openids:3"

        response = peer.finish_job(
            started.msg_id or "",
            callback_url=f"http://127.0.0.1:{port}/wechat/main",
            token=TOKEN,
            filtered=1,
            errors=1,
        )

        assert (response.status_code, response.text) == (200, "success")
        wait_until(lambda: job_of(engine, "bc-newsletter-03").status != "sending")
        job = job_of(engine, "bc-newsletter-03")
        assert (job.status, job.total, job.filtered, job.sent, job.errors) == (
            "finished",
            3,
            1,
            1,
            1,
        )
        assert job.finished_at is not None
        [at_peer] = peer.mass_jobs
        assert at_peer.status == "SEND_SUCCESS"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --- through the in-process client ------------------------------------------------------


async def test_safe_mode_and_a_refused_review_are_recorded(
    api: TestClient, engine: Engine, peer: WeChatPeer
) -> None:
    started = await send_job(peer, engine, "bc-safe")
    response = peer.finish_job(
        started.msg_id or "",
        callback_url="/wechat/safe",
        token=TOKEN,
        aes_key=ENCODING_AES_KEY,
        status="err(10001)",
        client=api,
    )
    assert response.status_code == 200
    settle(api)
    job = job_of(engine, "bc-safe")
    assert (job.status, job.total, job.filtered, job.sent, job.errors) == (
        "rejected_10001",
        3,
        0,
        0,
        0,
    )


async def test_an_unsigned_or_badly_signed_callback_is_refused_and_records_nothing(
    api: TestClient, engine: Engine, peer: WeChatPeer
) -> None:
    started = await send_job(peer, engine, "bc-forged")

    forged = finish(peer, api, started.msg_id, token="not-the-token")
    unsigned = api.post(
        "/wechat/main",
        content=(
            "<xml><FromUserName>oMassSendHelper0000000000000</FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType>event</MsgType>"
            f"<Event>MASSSENDJOBFINISH</Event><MsgID>{started.msg_id}</MsgID>"
            "<Status>send success</Status><TotalCount>3</TotalCount>"
            "<FilterCount>3</FilterCount><SentCount>3</SentCount><ErrorCount>0</ErrorCount></xml>"
        ).encode(),
        headers={"Content-Type": "text/xml"},
    )

    assert forged.status_code == 403
    assert unsigned.status_code == 403
    settle(api)
    assert job_of(engine, "bc-forged") == started


async def test_a_malformed_count_is_400_and_records_nothing(
    api: TestClient, engine: Engine, peer: WeChatPeer
) -> None:
    started = await send_job(peer, engine, "bc-malformed")
    body = (
        "<xml><ToUserName><![CDATA[gh_5f2e0c0ffee0]]></ToUserName>"
        "<FromUserName><![CDATA[oMassSendHelper0000000000000]]></FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        "<Event><![CDATA[MASSSENDJOBFINISH]]></Event>"
        f"<MsgID>{started.msg_id}</MsgID><Status><![CDATA[send success]]></Status>"
        "<TotalCount>three</TotalCount><FilterCount>3</FilterCount>"
        "<SentCount>3</SentCount><ErrorCount>0</ErrorCount></xml>"
    ).encode()

    response = peer.post_callback(body, callback_url="/wechat/main", token=TOKEN, client=api)

    assert response.status_code == 400
    assert "TotalCount" in response.text
    settle(api)
    assert job_of(engine, "bc-malformed") == started


async def test_a_repeated_callback_changes_nothing(
    api: TestClient, engine: Engine, peer: WeChatPeer
) -> None:
    started = await send_job(peer, engine, "bc-repeat")
    assert finish(peer, api, started.msg_id, errors=2).status_code == 200
    settle(api)
    first = job_of(engine, "bc-repeat")
    assert (first.status, first.sent, first.errors) == ("finished", 1, 2)

    await asyncio.sleep(0.01)  # a later finished_at, were it overwritten
    assert finish(peer, api, started.msg_id, errors=2).status_code == 200
    settle(api)

    assert job_of(engine, "bc-repeat") == first  # finished_at included
    # And the job's start recorded again (a retried batch activity) keeps the result.
    again = record_job_started(
        engine,
        broadcast_id="bc-repeat",
        appid=PEER_APPID,
        clientmsgid=started.clientmsgid,
        msg_id=started.msg_id,
        target=started.target,
    )
    assert again == first


async def test_a_callback_for_an_unknown_job_is_answered_success_and_changes_nothing(
    api: TestClient, engine: Engine, peer: WeChatPeer
) -> None:
    ours = await send_job(peer, engine, "bc-ours")
    # A job sent on the same account by someone else (the admin page, another system).
    sender = WeChatMassSender(
        WeChatConfig(appid=peer.appid, secret=peer.secret, api_base=peer.url, timeout=5)
    )
    try:
        [theirs] = jobs_for("not-ours", FANS, msgtype="text", content="hello")
        foreign = await sender.send(theirs)
    finally:
        await sender.aclose()

    with capture_logs() as logs:
        response = finish(peer, api, foreign.msg_id)
        settle(api)

    assert (response.status_code, response.text) == (200, "success")
    assert job_of(engine, "bc-ours") == ours
    assert jobs_of(engine, "not-ours") == []
    [warning] = [e for e in logs if e["event"] == "wechat mass-send callback for an unknown job"]
    assert warning["msg_id"] == foreign.msg_id


async def test_a_callback_that_comes_before_the_jobs_msg_id_is_kept_for_it(
    api: TestClient, engine: Engine, peer: WeChatPeer
) -> None:
    """The batch recorded the job before sending it, WeChat accepted it, and the worker
    was killed before recording the msg_id; the job finished and WeChat called back."""
    [job] = jobs_for("bc-early", FANS, msgtype="mpnews", media_id=MEDIA_ID)
    record_job_started(
        engine,
        broadcast_id="bc-early",
        appid=peer.appid,
        clientmsgid=job.clientmsgid,
        msg_id=None,
        target=job.target,
    )
    sender = WeChatMassSender(
        WeChatConfig(appid=peer.appid, secret=peer.secret, api_base=peer.url, timeout=5)
    )
    try:
        accepted = await sender.send(job)
    finally:
        await sender.aclose()

    assert finish(peer, api, accepted.msg_id, errors=1).status_code == 200
    settle(api)
    assert job_of(engine, "bc-early").status == "sending"  # not ours to know yet
    # The same callback again (WeChat's retry of a slow answer) keeps one result.
    assert finish(peer, api, accepted.msg_id, errors=1).status_code == 200
    settle(api)

    # The retried batch records the job's msg_id: it takes the kept result.
    recorded = record_job_started(
        engine,
        broadcast_id="bc-early",
        appid=peer.appid,
        clientmsgid=job.clientmsgid,
        msg_id=accepted.msg_id,
        target=job.target,
    )

    assert (recorded.status, recorded.sent, recorded.errors) == ("finished", 2, 1)
    assert recorded.finished_at is not None
    assert job_of(engine, "bc-early") == recorded
    assert jobs_of(engine, "") == []  # the kept callback is gone


def test_record_job_started_refuses_another_broadcasts_clientmsgid(engine: Engine) -> None:
    record_job_started(
        engine, broadcast_id="bc-a", appid="wx1", clientmsgid="sc-1", msg_id="1", target="tag:1"
    )
    with pytest.raises(ValueError, match="clientmsgid_for"):
        record_job_started(
            engine, broadcast_id="bc-b", appid="wx1", clientmsgid="sc-1", msg_id="2", target="tag:1"
        )
    [job] = jobs_of(engine, "bc-a")
    assert job.msg_id == "1"
