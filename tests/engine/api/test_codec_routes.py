"""The codec endpoint through the real app: Temporal's codec-server protocol, operators
only (the admin bearer token or a codec session), CORS for the Web UI's origin only."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.responses import Response
from fastapi.testclient import TestClient
from google.protobuf import json_format
from pydantic import SecretStr
from sqlalchemy import Engine
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import DataConverter

from stagecoach.engine.api.sessions import COOKIE, Sessions
from stagecoach.engine.app import create_app
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.codec import EncryptionCodec, PayloadKeys

TOKEN = "codec-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
KEYS = "k1:" + base64.b64encode(b"1" * 32).decode()
UI = "http://127.0.0.1:8233"  # the Web UI's origin for the default settings
EMAIL = "lin.yue@example.cn"
FORM = {"content-type": "application/x-www-form-urlencoded"}


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / ".stagecoach",
        "admin_token": SecretStr(TOKEN),
        "payload_keys": SecretStr(KEYS),
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """What the shared ``api`` fixture is built from: an admin token and payload keys."""
    return _settings(tmp_path)


def _codec() -> EncryptionCodec:
    return EncryptionCodec(PayloadKeys.parse(KEYS))


def _payload(value: object) -> Payload:
    return DataConverter.default.payload_converter.to_payloads([value])[0]


def _body(*payloads: Payload) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(Payloads(payloads=list(payloads)))
    return out


def _payloads(answer: Any) -> list[Payload]:
    message = Payloads()
    json_format.ParseDict(answer.json(), message)
    return list(message.payloads)


async def test_decode_answers_the_originals_in_the_protocols_json(api: TestClient) -> None:
    original = _payload({"email": EMAIL})
    sealed = await _codec().encode([original])
    plain = _payload("never encrypted")
    answer = api.post("/codec/decode", json=_body(*sealed, plain), headers=ADMIN)
    assert answer.status_code == 200, answer.text
    assert _payloads(answer) == [original, plain]
    # The protocol's shape: metadata values and data in base64.
    first = answer.json()["payloads"][0]
    assert base64.b64decode(first["metadata"]["encoding"]) == b"json/plain"
    assert EMAIL in base64.b64decode(first["data"]).decode()
    assert answer.headers["cache-control"] == "no-store"


async def test_encode_encrypts_with_the_current_key(api: TestClient) -> None:
    answer = api.post("/codec/encode", json=_body(_payload("hi")), headers=ADMIN)
    assert answer.status_code == 200, answer.text
    [sealed] = _payloads(answer)
    assert sealed.metadata["encryption-key-id"] == b"k1"
    assert await _codec().decode([sealed]) == [_payload("hi")]


def test_an_empty_batch_answers_an_empty_list(api: TestClient) -> None:
    answer = api.post("/codec/decode", json={"payloads": []}, headers=ADMIN)
    assert (answer.status_code, answer.json()) == (200, {"payloads": []})


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}]
)
async def test_without_the_admin_token_nothing_is_decoded(
    api: TestClient, headers: dict[str, str]
) -> None:
    sealed = await _codec().encode([_payload({"email": EMAIL})])
    answer = api.post("/codec/decode", json=_body(*sealed), headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert "/codec/login" in answer.json()["detail"]
    assert EMAIL not in answer.text


def test_without_an_admin_token_configured_the_endpoint_is_off(
    tmp_path: Path, db_engine: Engine
) -> None:
    app = create_app(_settings(tmp_path, admin_token=None), db=db_engine)
    with TestClient(app) as client:
        answer = client.post("/codec/decode", json={"payloads": []}, headers=ADMIN)
        assert answer.status_code == 503
        assert "STAGECOACH_ADMIN_TOKEN" in answer.json()["detail"]
        assert client.get("/codec/login").status_code == 503


def test_without_payload_keys_the_endpoint_says_so(tmp_path: Path, db_engine: Engine) -> None:
    app = create_app(_settings(tmp_path, payload_keys=None), db=db_engine)
    with TestClient(app) as client:
        answer = client.post("/codec/decode", json={"payloads": []}, headers=ADMIN)
    assert answer.status_code == 503
    assert "no payload keys are configured here" in answer.json()["detail"]


async def test_a_payload_under_an_unknown_key_is_a_clear_400(api: TestClient) -> None:
    other = EncryptionCodec(PayloadKeys.parse("k9:" + base64.b64encode(b"9" * 32).decode()))
    sealed = await other.encode([_payload("x")])
    answer = api.post("/codec/decode", json=_body(*sealed), headers=ADMIN)
    assert answer.status_code == 400
    assert "key 'k9'" in answer.json()["detail"]
    assert "Fix:" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b'{"payloads": []}', "text/plain", 415),  # what a cross-site form could send
        (b"{not json", "application/json", 400),
        (b'{"payloads": "none"}', "application/json", 400),
        (b'{"payloads": [{"metadata": {"encoding": 7}}]}', "application/json", 400),
    ],
)
def test_bodies_that_are_not_payloads_json_are_refused(
    api: TestClient, content: bytes, content_type: str, status: int
) -> None:
    headers = {**ADMIN, "content-type": content_type}
    answer = api.post("/codec/decode", content=content, headers=headers)
    assert answer.status_code == status, answer.text


def test_the_preflight_answers_the_web_ui_with_credentials(api: TestClient) -> None:
    answer = api.options(
        "/codec/decode",
        headers={
            "Origin": UI,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace",
        },
    )
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == UI
    assert answer.headers["access-control-allow-credentials"] == "true"
    allowed = answer.headers["access-control-allow-headers"].lower()
    assert {"authorization", "content-type", "x-namespace"} <= {
        h.strip() for h in allowed.split(",")
    }


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "http://localhost:8233", "http://127.0.0.1:8000"]
)
async def test_other_origins_get_no_cors_answer_and_no_payloads(
    api: TestClient, origin: str
) -> None:
    preflight = api.options(
        "/codec/decode", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers
    sealed = await _codec().encode([_payload({"email": EMAIL})])
    answer = api.post("/codec/decode", json=_body(*sealed), headers={**ADMIN, "Origin": origin})
    assert answer.status_code == 403
    assert "access-control-allow-origin" not in answer.headers
    assert EMAIL not in answer.text


def test_the_web_ui_origin_can_read_answers_and_refusals(api: TestClient) -> None:
    ok = api.post("/codec/decode", json={"payloads": []}, headers={**ADMIN, "Origin": UI})
    refused = api.post("/codec/decode", json={"payloads": []}, headers={"Origin": UI})
    for answer in (ok, refused):
        assert answer.headers["access-control-allow-origin"] == UI
        assert answer.headers["access-control-allow-credentials"] == "true"
        assert "Origin" in answer.headers["vary"]
    assert (ok.status_code, refused.status_code) == (200, 401)


def test_codec_origins_replaces_the_default(tmp_path: Path, db_engine: Engine) -> None:
    ui = "https://temporal.example.com"
    app = create_app(_settings(tmp_path, codec_origins=f"{ui}/, {UI}"), db=db_engine)
    with TestClient(app) as client:
        for origin in (ui, UI):
            answer = client.options(
                "/codec/encode",
                headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
            )
            assert answer.headers["access-control-allow-origin"] == origin


async def test_the_web_ui_signs_in_once_and_then_decodes_with_its_cookie(
    api: TestClient,
) -> None:
    assert 'name="token"' in api.get("/codec/login").text
    wrong = api.post("/codec/login", content="token=nope", headers=FORM)
    assert wrong.status_code == 401
    assert COOKIE not in wrong.cookies
    signed = api.post("/codec/login", content=f"token={TOKEN}", headers=FORM)
    assert signed.status_code == 200
    cookie = signed.headers["set-cookie"]
    for attribute in ("Path=/codec", "HttpOnly", "SameSite=strict"):
        assert attribute.lower() in cookie.lower(), cookie
    assert "http://127.0.0.1:8000/codec" in signed.text  # the endpoint to configure

    sealed = await _codec().encode([_payload({"email": EMAIL})])
    answer = api.post("/codec/decode", json=_body(*sealed), headers={"Origin": UI})
    assert answer.status_code == 200, answer.text
    assert _payloads(answer) == [_payload({"email": EMAIL})]

    api.post("/codec/logout")
    after = api.post("/codec/decode", json=_body(*sealed), headers={"Origin": UI})
    assert after.status_code == 401


def test_an_expired_or_forged_session_is_refused(tmp_path: Path, api: TestClient) -> None:
    sessions = Sessions(_settings(tmp_path), path="/codec")
    old = Response()
    sessions.issue(old, datetime.now(UTC) - timedelta(days=2))
    expired = old.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    for value in (expired, expired[:-4] + "AAAA", "forged"):
        api.cookies.set(COOKIE, value, path="/codec")
        answer = api.post("/codec/decode", json={"payloads": []})
        assert answer.status_code == 401
        api.cookies.clear()


def test_the_endpoints_are_in_the_openapi_document(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for op in ("decode", "encode"):
        post = paths[f"/codec/{op}"]["post"]
        assert set(post["responses"]) >= {"200", "401", "403", "503"}
        assert json.dumps(post["requestBody"]).count("payloads") >= 1
