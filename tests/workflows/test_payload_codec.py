"""Personal data encrypted in Temporal histories, on the real dev server with the
production worker and the file sink: a contact identified by email and WeChat openid
gets its whitepaper, and its history, read by a client without the keys, holds neither
identifier anywhere, nor does a failure message that names the address; Stagecoach's
own clients (connect(), the timeline, contact why, the API's codec endpoint) read it all
back."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from google.protobuf import json_format
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.history.v1 import History
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.app import create_app
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.protocol.connector import (
    OutgoingMessage,
    PermanentDeliveryError,
    RetryableDeliveryError,
    SendResult,
)
from stagecoach.engine.protocol.messages import contact_workflow_id
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.codec import ENCODING, PayloadDecryptionError
from stagecoach.engine.temporal.gateway import contact_view
from stagecoach.engine.temporal.timeline import contact_timeline
from stagecoach.engine.temporal.why import NOT_SENT, SENT, UnknownJourneyStep, Why, contact_why
from stagecoach.workflows.client import connect
from tests.workflows.conftest import Runtime, eventually, open_runtime

EMAIL = "lin.yue@example.cn"
OPENID = "oX7q-secret-openid-4711"
PERSON = {
    "email": EMAIL,
    "wechat_openid": OPENID,
    "first_name": "Yue",
    "locale": "en",
    "timezone": "UTC",
}
BLOG = {"category": "blog"}
WHITEPAPER = ("b2b_nurture", "awareness-whitepaper")
KEYS = "k2025:" + base64.b64encode(b"K" * 32).decode()
ADMIN = "codec-test-admin"


async def _until(runtime: Runtime, contact_id: str, status: str) -> Why:
    async def settled() -> bool:
        try:
            why = await contact_why(runtime.client, contact_id, *WHITEPAPER)
        except UnknownJourneyStep:
            return False
        return why.status == status

    await eventually(settled, within=30)
    return await contact_why(runtime.client, contact_id, *WHITEPAPER)


async def _raw_history(plain: Client, contact_id: str) -> History:
    """The history as stored, read by a client with Temporal's default converter."""
    handle = plain.get_workflow_handle(contact_workflow_id(contact_id))
    return History(events=[ev async for ev in handle.fetch_history_events()])


def _payloads(message: Any) -> list[Payload]:
    """Every Payload anywhere in ``message`` (walked independently of
    stagecoach.engine.temporal.codec)."""
    if message.DESCRIPTOR.full_name == Payload.DESCRIPTOR.full_name:
        return [message]
    found: list[Payload] = []
    for descriptor, value in message.ListFields():
        kind = descriptor.message_type
        if kind is None:
            continue
        if kind.GetOptions().map_entry:
            children = list(value.values()) if kind.fields_by_name["value"].message_type else []
        else:
            children = list(value) if descriptor.is_repeated else [value]
        for child in children:
            found += _payloads(child)
    return found


def _assert_no_plaintext(message: Any, *secrets: str) -> None:
    """Neither the stored bytes nor the JSON the Web UI and CLI show hold a secret."""
    raw = message.SerializeToString()
    shown = json_format.MessageToJson(message)
    for secret in secrets:
        assert secret.encode() not in raw, f"{secret} in the stored bytes"
        assert secret not in shown, f"{secret} in the JSON rendering"
        encoded = base64.b64encode(secret.encode()).decode()[:-4]
        assert encoded not in shown, f"{secret} base64-encoded in the JSON rendering"


@pytest.fixture
def runtime_overrides(tmp_path: Path) -> dict[str, Any]:
    return {"payload_keys": SecretStr(KEYS), "admin_token": SecretStr(ADMIN)}


async def test_the_history_holds_no_email_or_openid_while_stagecoach_reads_them(
    runtime: Runtime, env: WorkflowEnvironment
) -> None:
    await runtime.event("codec-1", "page.viewed", properties=BLOG, traits=PERSON)
    why = await _until(runtime, "codec-1", SENT)
    [sent] = runtime.sent("codec-1")
    assert sent["to"] == EMAIL  # the world got the real address

    # Stored: ciphertext only, in every payload of every event, and in describe.
    history = await _raw_history(env.client, "codec-1")
    _assert_no_plaintext(history, EMAIL, OPENID)
    payloads = _payloads(history)
    assert len(payloads) > 5
    user_data = [
        p
        for p in payloads
        if p.metadata.get("encoding") != ENCODING
        and p.metadata.get("encoding") != b"binary/null"  # an empty result: no data
    ]
    # The only plaintext payloads are the search attributes Temporal indexes.
    for p in user_data:
        assert p.metadata.get("type") in (b"Keyword", b"Double", b"KeywordList"), p
    handle = env.client.get_workflow_handle(contact_workflow_id("codec-1"))
    description = await handle.describe()
    _assert_no_plaintext(description.raw_description, EMAIL, OPENID)
    assert description.search_attributes  # Stage & co. stay searchable

    # Stagecoach's clients read it back: the query, the timeline and contact why.
    view = await contact_view(runtime.client, "codec-1")
    assert view.state["attributes"]["email"] == EMAIL
    assert view.state["attributes"]["wechat_openid"] == OPENID
    story = await contact_timeline(runtime.client, "codec-1")
    assert any(e.kind == "sent" for e in story)
    assert any(EMAIL in str(e.data) for e in story)
    assert f"to {EMAIL}, provider message " in why.links[-1].detail

    # A client without the keys cannot: the worker's answer is encrypted too.
    with pytest.raises(KeyError, match="Unknown payload encoding binary/encrypted"):
        await contact_view(env.client, "codec-1")


async def test_connect_gives_the_production_client_the_codec(
    runtime: Runtime, env: WorkflowEnvironment
) -> None:
    """``stagecoach.workflows.client.connect`` (the worker's, the API's and the CLI's client)
    decodes what the worker encoded; one with other keys names the key it lacks."""
    await runtime.event("codec-2", "page.viewed", properties=BLOG, traits=PERSON)
    await _until(runtime, "codec-2", SENT)
    address = env.client.service_client.config.target_host
    production = await connect(runtime.settings.model_copy(update={"temporal_address": address}))
    assert (await contact_view(production, "codec-2")).contact_id == "codec-2"
    assert any(e.kind == "sent" for e in await contact_timeline(production, "codec-2"))

    other_keys = "k2026:" + base64.b64encode(b"Z" * 32).decode()
    stranger = await connect(
        runtime.settings.model_copy(
            update={"temporal_address": address, "payload_keys": SecretStr(other_keys)}
        )
    )
    with pytest.raises(PayloadDecryptionError, match="'k2025'") as caught:
        await contact_timeline(stranger, "codec-2")
    assert "not among the payload keys configured here (k2026)" in str(caught.value)


async def test_the_codec_endpoint_decodes_what_the_worker_encoded(
    runtime: Runtime, env: WorkflowEnvironment
) -> None:
    await runtime.event("codec-3", "page.viewed", properties=BLOG, traits=PERSON)
    await _until(runtime, "codec-3", SENT)
    history = await _raw_history(env.client, "codec-3")
    sealed = [p for p in _payloads(history) if p.metadata.get("encoding") == ENCODING]
    body = json_format.MessageToDict(Payloads(payloads=sealed))

    app = create_app(_api_settings(runtime.settings), db=runtime.engine)
    with TestClient(app) as api:
        refused = api.post("/codec/decode", json=body)
        assert refused.status_code == 401
        assert EMAIL not in refused.text
        answer = api.post("/codec/decode", json=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert answer.status_code == 200, answer.text
    decoded = Payloads()
    json_format.ParseDict(answer.json(), decoded)
    assert len(decoded.payloads) == len(sealed)
    assert all(p.metadata.get("encoding") != ENCODING for p in decoded.payloads)
    plain = b"".join(p.data for p in decoded.payloads)
    assert EMAIL.encode() in plain
    assert OPENID.encode() in plain


def _api_settings(worker: Settings) -> Settings:
    """The API's own settings object, sharing only what production shares: the keys."""
    return Settings(
        data_dir=worker.data_dir,
        database_url=worker.database_url,
        payload_keys=worker.payload_keys,
        admin_token=SecretStr(ADMIN),
    )


class RefusesTheAddress:
    """Greylists twice, then refuses, naming the address as mail servers do."""

    channel = "email"

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, message: OutgoingMessage) -> SendResult:
        self.calls += 1
        if self.calls <= 2:
            raise RetryableDeliveryError(f"421 {message.to} greylisted, try later")
        raise PermanentDeliveryError(f"550 {message.to}: no such user", code="bounce")


async def test_a_failure_message_naming_the_address_is_encrypted_too(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    refusing = RefusesTheAddress()
    async with open_runtime(
        env,
        task_queue,
        tmp_path,
        content_library,
        connectors={"email": refusing},
        payload_keys=SecretStr(KEYS),
    ) as runtime:
        await runtime.event("codec-4", "page.viewed", properties=BLOG, traits=PERSON)
        why = await _until(runtime, "codec-4", NOT_SENT)
        history = await _raw_history(env.client, "codec-4")

    _assert_no_plaintext(history, EMAIL, OPENID)
    failed = [
        e.activity_task_failed_event_attributes.failure
        for e in history.events
        if e.HasField("activity_task_failed_event_attributes")
    ]
    assert failed
    assert failed[0].message == "Encoded failure"
    assert failed[0].application_failure_info.type == "PermanentDeliveryError"  # plaintext
    # contact why decrypts the failure and the attempt before it.
    assert why.links[-1].detail == (
        f"PermanentDeliveryError: 550 {EMAIL}: no such user; attempt 3 (2 retried); last "
        f"failure before it: RetryableDeliveryError: 421 {EMAIL} greylisted, try later"
    )
    assert refusing.calls == 3
