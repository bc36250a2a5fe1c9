"""The WeChat Official Account callback through HTTP: the URL check, plaintext and safe
mode, what is stored (once, after the reply) and what is refused (and not stored)."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from structlog.testing import capture_logs

from stagecoach.engine.api.routes.wechat import drain
from stagecoach.engine.app import create_app
from stagecoach.engine.domain.errors import DatabaseError
from stagecoach.engine.domain.wechat_callback import sign
from stagecoach.engine.services.ingest import Incoming, Ingestor, Outcome
from stagecoach.engine.services.storage.interactions import (
    contact_last_interaction,
    interaction_hook,
    last_interaction,
)
from stagecoach.engine.services.storage.models import Event, Identity
from stagecoach.engine.settings import Settings
from tests.helpers import migrated_engine

TOKEN = "stagecoach-token"
ENCODING_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APPID = "wx5823bf96d3bd56c7"
OPENID = "oAbC1234567890defGHIjklMNOpq"
APPS = {
    "main": {"token": TOKEN, "appid": APPID},
    "safe": {"token": TOKEN, "aes_key": ENCODING_AES_KEY, "appid": APPID},
}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = migrated_engine(f"sqlite:///{tmp_path}/wechat.db")
    yield db
    db.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/wechat.db")


@pytest.fixture
def db_engine(engine: Engine) -> Engine:
    """The shared ``api`` fixture is built on this module's database file."""
    return engine


@pytest.fixture
def api_app(api_app: FastAPI) -> FastAPI:
    """The shared app, serving this module's two WeChat official accounts."""
    api_app.state.wechat_apps = APPS
    return api_app


def app_of(api: TestClient) -> FastAPI:
    assert isinstance(api.app, FastAPI)
    return api.app


def settle(api: TestClient) -> None:
    """Wait for the stores the callbacks left running after their replies."""
    assert api.portal is not None
    api.portal.call(drain, app_of(api))


def events(engine: Engine) -> list[Event]:
    with Session(engine) as session:
        return list(session.exec(select(Event).order_by(col(Event.id))).all())


def xml(**fields: str | int) -> bytes:
    inner = "".join(
        f"<{k}>{v}</{k}>" if isinstance(v, int) else f"<{k}><![CDATA[{v}]]></{k}>"
        for k, v in fields.items()
    )
    return f"<xml>{inner}</xml>".encode()


def message(create_time: int = 1763802000, **more: str | int) -> bytes:
    return xml(ToUserName="gh_0123456789ab", FromUserName=OPENID, CreateTime=create_time, **more)


def signed(nonce: str | None = None, timestamp: str | None = None) -> dict[str, str]:
    """The query WeChat signs a call with: now, and a nonce of its own (as WeChat does)."""
    timestamp = str(int(time.time())) if timestamp is None else timestamp
    nonce = str(secrets.randbelow(10**10)) if nonce is None else nonce
    return {
        "signature": sign(TOKEN, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
        "openid": OPENID,
    }


def post(api: TestClient, body: bytes, app: str = "main", **params: str) -> Any:
    return api.post(
        f"/wechat/{app}",
        params=params or signed(),
        content=body,
        headers={"Content-Type": "text/xml"},
    )


def wechat_encrypt(plain: bytes, random: bytes = b"0123456789abcdef") -> str:
    """What WeChat's servers do, written from the published scheme for these tests."""
    key = base64.b64decode(ENCODING_AES_KEY + "=")
    data = random + len(plain).to_bytes(4, "big") + plain + APPID.encode()
    pad = 32 - len(data) % 32
    data += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(data) + encryptor.finalize()).decode()


def safe_post(api: TestClient, plain: bytes, *, tamper: bool = False) -> Any:
    encrypted = wechat_encrypt(plain)
    params = signed()
    stamp, nonce = params["timestamp"], params["nonce"]
    params |= {
        "encrypt_type": "aes",
        "msg_signature": sign(TOKEN, stamp, nonce, encrypted),
    }
    if tamper:
        params["msg_signature"] = sign("not-the-token", stamp, nonce, encrypted)
    body = xml(ToUserName="gh_0123456789ab", Encrypt=encrypted)
    return post(api, body, app="safe", **params)


# --- the URL check ---------------------------------------------------------------------


def test_url_check_echoes_echostr(api: TestClient) -> None:
    response = api.get("/wechat/main", params=signed() | {"echostr": "5837397520183462011"})
    assert response.status_code == 200
    assert response.text == "5837397520183462011"


def test_a_bad_signature_is_403_and_stores_nothing(api: TestClient, engine: Engine) -> None:
    right = signed()
    wrong = right | {"signature": sign("guess", right["timestamp"], right["nonce"])}
    assert api.get("/wechat/main", params=wrong | {"echostr": "x"}).status_code == 403
    assert api.get("/wechat/main", params={"echostr": "x"}).status_code == 403
    body = message(MsgType="event", Event="subscribe")
    assert post(api, body, **wrong).status_code == 403
    assert post(api, body, timestamp=right["timestamp"], nonce="1").status_code == 403
    settle(api)
    assert events(engine) == []


def test_an_unknown_app_is_404(api: TestClient) -> None:
    assert api.get("/wechat/nope", params=signed() | {"echostr": "x"}).status_code == 404
    response = post(api, message(MsgType="event", Event="subscribe"), app="nope")
    assert response.status_code == 404
    assert "wechat_apps" in response.text


# --- plaintext and safe mode -----------------------------------------------------------


def test_a_follow_through_a_qr_code_is_stored_with_its_scene(
    api: TestClient, engine: Engine
) -> None:
    body = message(MsgType="event", Event="subscribe", EventKey="qrscene_expo2026", Ticket="T")
    response = post(api, body)
    assert response.status_code == 200
    assert response.text == "success"
    settle(api)
    [event] = events(engine)
    assert (event.name, event.source, event.channel) == ("wechat.subscribed", "wechat", "wechat")
    assert event.message_id == f"wechat:main:{OPENID}:1763802000:subscribe"
    assert event.properties == {"scene": "expo2026", "ticket": "T"}
    assert event.context["campaign"] == {
        "source": "qrscene",
        "medium": "wechat",
        "name": "expo2026",
    }
    assert event.occurred_at.replace(tzinfo=UTC) == datetime.fromtimestamp(1763802000, UTC)
    with Session(engine) as session:
        identity = session.get(Identity, ("wechat_openid", OPENID))
    assert identity is not None
    assert identity.contact_id == event.contact_id


def test_safe_mode_is_decrypted_and_stored(api: TestClient, engine: Engine) -> None:
    response = safe_post(api, message(MsgType="text", Content="还能下载吗?", MsgId=246))
    assert response.status_code == 200, response.text
    assert response.text == "success"
    settle(api)
    [event] = events(engine)
    assert event.name == "wechat.message_received"
    assert event.properties["content"] == "还能下载吗?"
    assert event.message_id == f"wechat:safe:{OPENID}:1763802000:246"


def test_safe_mode_refuses_a_bad_msg_signature_or_another_appid(
    api: TestClient, engine: Engine
) -> None:
    body = message(MsgType="event", Event="subscribe")
    assert safe_post(api, body, tamper=True).status_code == 403
    app_of(api).state.wechat_apps = APPS | {
        "safe": {"token": TOKEN, "aes_key": ENCODING_AES_KEY, "appid": "wx_someone_else"}
    }
    assert safe_post(api, body).status_code == 403
    settle(api)
    assert events(engine) == []


def test_safe_mode_for_an_app_without_a_key_is_400(api: TestClient) -> None:
    app_of(api).state.wechat_apps = {"safe": {"token": TOKEN, "appid": APPID}}
    assert safe_post(api, message(MsgType="event", Event="subscribe")).status_code == 400


def test_a_retried_callback_is_stored_once(api: TestClient, engine: Engine) -> None:
    body = message(MsgType="text", Content="hi", MsgId=24600000000000001)
    for attempt in range(4):  # WeChat's first try and its three retries
        assert post(api, body, **signed(nonce=str(attempt))).text == "success"
    settle(api)
    assert len(events(engine)) == 1
    # A second follow later is a new event; the same second is the same one.
    post(api, message(MsgType="event", Event="subscribe"))
    post(api, message(MsgType="event", Event="subscribe"))
    post(api, message(1763802500, MsgType="event", Event="subscribe"))
    settle(api)
    assert [e.name for e in events(engine)] == [
        "wechat.message_received",
        "wechat.subscribed",
        "wechat.subscribed",
    ]


# --- refusals --------------------------------------------------------------------------

BOMB = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">'
    b'<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>'
    b"<xml><ToUserName>gh</ToUserName><FromUserName>" + OPENID.encode() + b"</FromUserName>"
    b"<CreateTime>1763802000</CreateTime><MsgType>text</MsgType>"
    b"<Content>&lol4;</Content><MsgId>1</MsgId></xml>"
)
EXTERNAL = (
    b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b"<xml><ToUserName>gh</ToUserName><FromUserName>" + OPENID.encode() + b"</FromUserName>"
    b"<CreateTime>1763802000</CreateTime><MsgType>text</MsgType>"
    b"<Content>&x;</Content><MsgId>2</MsgId></xml>"
)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (BOMB, 400),
        (EXTERNAL, 400),
        (message(MsgType="text", Content="x" * (65 * 1024), MsgId=3), 413),
        (b"<xml><FromUserName>", 400),
        (xml(MsgType="text", Content="no sender"), 400),
    ],
    ids=["xml-bomb", "external-entity", "oversized", "not-xml", "not-a-message"],
)
def test_unsafe_or_broken_bodies_are_refused_and_store_nothing(
    api: TestClient, engine: Engine, body: bytes, status: int
) -> None:
    response = post(api, body)
    assert response.status_code == status, response.text
    settle(api)
    assert events(engine) == []


def test_a_safe_mode_bomb_inside_the_ciphertext_is_refused(api: TestClient, engine: Engine) -> None:
    assert safe_post(api, BOMB).status_code == 400
    settle(api)
    assert events(engine) == []


# --- replays (issue 17) -------------------------------------------------------------------

ATTACKER = "oAttacker0000000000000000000"


def test_a_signed_url_replayed_with_another_body_stores_nothing(
    api: TestClient, engine: Engine
) -> None:
    # Plaintext mode signs the query, not the body: the URL below, once seen, used to
    # authenticate any body, e.g. a message "from" another openid reopening its window.
    seen = signed()
    assert post(api, message(MsgType="event", Event="subscribe"), **seen).text == "success"
    forged = xml(
        ToUserName="gh_0123456789ab",
        FromUserName=ATTACKER,
        CreateTime=int(time.time()),
        MsgType="text",
        Content="replayed",
        MsgId=77,
    )
    with capture_logs() as logs:
        again = post(api, forged, **seen)
    # Answered as WeChat expects (a retry of ours must not show the user an error) ...
    assert (again.status_code, again.text) == (200, "success")
    settle(api)
    # ... but nothing of the replay is stored, and the log says why.
    assert [e.name for e in events(engine)] == ["wechat.subscribed"]
    assert last_interaction(engine, ATTACKER) is None
    assert any(entry["event"] == "wechat callback replayed" for entry in logs)
    # A fresh call from WeChat (a new nonce) is stored as ever.
    assert post(api, forged).text == "success"
    settle(api)
    assert len(events(engine)) == 2


@pytest.mark.parametrize(
    # "ahead" leaves 30 s for the request to arrive: time passing only brings it closer.
    "offset",
    [-3600, -301, 330, 86_400],
    ids=["hour-old", "past-window", "ahead", "day-ahead"],
)
def test_a_timestamp_outside_the_window_is_403_however_signed(
    api: TestClient, engine: Engine, offset: int
) -> None:
    stale = signed(timestamp=str(int(time.time()) + offset))
    body = message(MsgType="event", Event="subscribe")
    response = post(api, body, **stale)
    assert response.status_code == 403, response.text
    assert "window is 300 s" in response.text
    check = api.get("/wechat/main", params=stale | {"echostr": "x"})
    assert check.status_code == 403
    settle(api)
    assert events(engine) == []


@pytest.mark.parametrize("timestamp", ["", "soon", "١٧٦٣٨٠٢٠٠٠", "9" * 40])
def test_a_timestamp_that_is_not_unix_seconds_is_403(
    api: TestClient, engine: Engine, timestamp: str
) -> None:
    response = post(api, message(MsgType="event", Event="subscribe"), **signed(timestamp=timestamp))
    assert response.status_code == 403, response.text
    settle(api)
    assert events(engine) == []


def test_the_replay_window_is_a_setting(engine: Engine, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path}/wechat.db",
        wechat_replay_window_seconds=30,
    )
    app = create_app(settings, db=engine)
    app.state.wechat_apps = APPS
    with TestClient(app) as client:
        minute_old = signed(timestamp=str(int(time.time()) - 60))
        response = post(client, message(MsgType="event", Event="subscribe"), **minute_old)
        assert response.status_code == 403
        assert "window is 30 s" in response.text
        assert post(client, message(MsgType="event", Event="subscribe")).text == "success"


def test_safe_mode_replays_are_not_stored_twice(api: TestClient, engine: Engine) -> None:
    encrypted = wechat_encrypt(message(MsgType="text", Content="hi", MsgId=31))
    params = signed()
    params |= {
        "encrypt_type": "aes",
        "msg_signature": sign(TOKEN, params["timestamp"], params["nonce"], encrypted),
    }
    body = xml(ToUserName="gh_0123456789ab", Encrypt=encrypted)
    with capture_logs() as logs:
        assert post(api, body, app="safe", **params).text == "success"
        assert post(api, body, app="safe", **params).text == "success"
    settle(api)
    assert len(events(engine)) == 1
    assert [e["event"] for e in logs].count("wechat callback replayed") == 1


def test_every_reply_says_nosniff(api: TestClient) -> None:
    # echostr comes back as sent: no browser may sniff it into HTML or script.
    echoed = api.get("/wechat/main", params=signed() | {"echostr": "<script>alert(1)</script>"})
    assert echoed.status_code == 200
    assert echoed.text == "<script>alert(1)</script>"
    assert echoed.headers["x-content-type-options"] == "nosniff"
    assert echoed.headers["content-type"].startswith("text/plain")
    accepted = post(api, message(MsgType="event", Event="subscribe"))
    refused = post(api, message(MsgType="event", Event="subscribe"), signature="0" * 40)
    unknown = api.get("/wechat/nope", params=signed() | {"echostr": "x"})
    for response in (accepted, refused, unknown):
        assert response.headers["x-content-type-options"] == "nosniff", response.text


def test_kinds_we_do_not_record_are_answered_and_not_stored(
    api: TestClient, engine: Engine
) -> None:
    body = message(MsgType="event", Event="LOCATION", Latitude="31.2", Longitude="121.5")
    assert post(api, body).text == "success"
    settle(api)
    assert events(engine) == []


def test_apps_come_from_settings_and_bad_settings_are_503(api: TestClient) -> None:
    state = app_of(api).state
    state.wechat_apps = None
    state.settings = SimpleNamespace(wechat_apps=json.dumps({"fromenv": APPS["main"]}))
    check = signed() | {"echostr": "ok"}
    assert api.get("/wechat/fromenv", params=check).text == "ok"
    assert api.get("/wechat/main", params=check).status_code == 404
    state.settings = SimpleNamespace(wechat_apps={"main": {"token": TOKEN}})  # no appid
    with capture_logs() as logs:
        assert api.get("/wechat/main", params=check).status_code == 503
    assert any(line["event"] == "wechat_apps settings are invalid" for line in logs)
    state.settings = SimpleNamespace()  # a Settings without the field: nothing configured
    assert api.get("/wechat/main", params=check).status_code == 404


# --- the customer-service window -------------------------------------------------------


def test_inbound_messages_and_follows_date_the_last_interaction(
    api: TestClient, engine: Engine
) -> None:
    assert last_interaction(engine, OPENID) is None
    post(api, message(1763802000, MsgType="event", Event="subscribe"))
    settle(api)
    assert last_interaction(engine, OPENID) == datetime.fromtimestamp(1763802000, UTC)
    post(api, message(1763809200, MsgType="text", Content="在吗", MsgId=7))
    post(api, message(1763812800, MsgType="event", Event="unsubscribe"))  # not an interaction
    settle(api)
    latest = datetime.fromtimestamp(1763809200, UTC)
    assert last_interaction(engine, OPENID) == latest
    contact = events(engine)[0].contact_id
    assert contact_last_interaction(engine, contact) == latest
    hook = interaction_hook(engine)

    async def ask() -> datetime | None:
        return await hook(contact)

    assert asyncio.run(ask()) == latest
    assert last_interaction(engine, "oSomeoneElse") is None


# --- replying first --------------------------------------------------------------------


class HeldIngestor:
    """The real ingestor behind a database that answers only when ``release`` is set."""

    def __init__(self, real: Ingestor) -> None:
        self.real = real
        self.release = threading.Event()
        self.waiting = threading.Event()

    async def accept(self, messages: Sequence[Incoming]) -> list[Outcome]:
        self.waiting.set()
        await asyncio.to_thread(self.release.wait, 30)
        return await self.real.accept(messages)


class BrokenIngestor:
    async def accept(self, messages: Sequence[Incoming]) -> list[Outcome]:
        raise DatabaseError("events not stored: disk I/O error", fix="check the database")


def test_the_reply_does_not_wait_for_a_slow_store(api: TestClient, engine: Engine) -> None:
    state = app_of(api).state
    held = HeldIngestor(state.ingestor)
    state.ingestor = held
    response = post(api, message(MsgType="text", Content="hi", MsgId=8))
    # Answered while the store is still held (a reply that waited for it would find
    # the event stored by now): the reply never waited for it.
    assert response.text == "success"
    assert held.waiting.wait(10)
    assert events(engine) == []  # still on its way
    held.release.set()
    settle(api)
    assert [e.name for e in events(engine)] == ["wechat.message_received"]


def test_a_store_that_fails_after_the_reply_is_logged(api: TestClient, engine: Engine) -> None:
    app_of(api).state.ingestor = BrokenIngestor()
    with capture_logs() as logs:
        assert post(api, message(MsgType="text", Content="hi", MsgId=9)).text == "success"
        settle(api)
    [line] = [line for line in logs if line["event"] == "wechat event not stored"]
    assert line["log_level"] == "error"
    assert (line["app"], line["event_type"], line["openid"]) == (
        "main",
        "wechat.message_received",
        OPENID,
    )
    assert line["occurred_at"] == "2025-11-22T09:00:00+00:00"
    assert "disk I/O error" in line["error"]
    assert events(engine) == []


# --- documentation ---------------------------------------------------------------------


def test_openapi_documents_both_routes_with_examples(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    check = spec["paths"]["/wechat/{app}"]["get"]
    callback = spec["paths"]["/wechat/{app}"]["post"]
    assert "echostr" in check["summary"]
    assert check["responses"]["200"]["content"]["text/plain"]["example"]
    assert callback["summary"]
    xml_body = callback["requestBody"]["content"]["application/xml"]
    assert set(xml_body["examples"]) >= {"subscribe_with_qr_scene", "text_message", "safe_mode"}
    assert callback["responses"]["200"]["content"]["text/plain"]["example"] == "success"
    assert {"403", "404", "413"} <= set(callback["responses"])
