"""A contact not reachable yet is not lost: through the public HTTP surface to real
peers, a QR-code follower gets the nurture's whitepaper as a WeChat template message,
and an anonymous visitor who identifies hours later gets it by email then."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select
from temporalio.testing import WorkflowEnvironment

from stagecoach.connectors.smtp import SmtpConfig, SmtpConnector
from stagecoach.connectors.wechat import WeChatConfig, WeChatConnector
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.domain.journeys import (
    Journey,
    NoChannel,
    compile_journey,
    on_event,
    send,
)
from stagecoach.engine.domain.wechat_callback import sign
from stagecoach.engine.services.publishing import definitions_context, publish
from stagecoach.engine.services.storage.models import Identity
from stagecoach.engine.temporal.gateway import ContactNotFound, contact_view
from stagecoach.engine.temporal.timeline import contact_timeline
from stagecoach.engine.temporal.why import NOT_SENT, PENDING, SENT, contact_why
from tests.peers.smtp import SmtpPeer
from tests.peers.wechat import WeChatPeer
from tests.workflows.conftest import Runtime, eventually, open_runtime, record_history

TOKEN = "expo-callback-token"
OPENID = "oQrExpo2026follower0000001"
WHITEPAPER = ("b2b_nurture", "awareness-whitepaper")


def _api(runtime: Runtime, **wechat_apps: Any) -> TestClient:
    """The production API with its outbox forwarder sending to the test's Temporal."""

    app = runtime.app()
    if wechat_apps:
        app.state.wechat_apps = wechat_apps
    return TestClient(app, headers=runtime.write_auth("web"))


def _contact_with(runtime: Runtime, kind: str, value: str) -> str | None:
    with Session(runtime.engine) as session:
        row = session.exec(
            select(Identity).where(col(Identity.kind) == kind, col(Identity.value) == value)
        ).first()
    if row is not None:
        runtime.touched.add(row.contact_id)
    return None if row is None else row.contact_id


async def _contact(runtime: Runtime, kind: str, value: str) -> str:
    for _ in range(200):
        found = _contact_with(runtime, kind, value)
        if found is not None:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no contact with {kind} {value}")


async def test_a_qr_code_follower_gets_the_whitepaper_as_a_template_message(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    with WeChatPeer() as peer:
        connector = WeChatConnector(
            WeChatConfig(appid=peer.appid, secret=peer.secret, api_base=peer.url)
        )
        try:
            async with open_runtime(
                env, task_queue, tmp_path, content_library, connectors={"wechat": connector}
            ) as runtime:
                apps = {"expo": {"token": TOKEN, "appid": peer.appid}}
                with _api(runtime, **apps) as api:
                    # What WeChat posts when a new user follows through the expo's QR code.
                    stamp, nonce = str(int(time.time())), "90210"
                    body = (
                        "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>"
                        f"<FromUserName><![CDATA[{OPENID}]]></FromUserName>"
                        f"<CreateTime>{stamp}</CreateTime>"
                        "<MsgType><![CDATA[event]]></MsgType>"
                        "<Event><![CDATA[subscribe]]></Event>"
                        "<EventKey><![CDATA[qrscene_expo2026]]></EventKey>"
                        "<Ticket><![CDATA[gQH47joAAAAAAAAAASxodHRwOi8v]]></Ticket></xml>"
                    )
                    reply = api.post(
                        "/wechat/expo",
                        params={
                            "signature": sign(TOKEN, stamp, nonce),
                            "timestamp": stamp,
                            "nonce": nonce,
                            "openid": OPENID,
                        },
                        content=body.encode(),
                        headers={"Content-Type": "text/xml"},
                    )
                    assert (reply.status_code, reply.text) == (200, "success")
                    contact_id = await _contact(runtime, "wechat_openid", OPENID)

                    async def delivered() -> bool:
                        return any(m.openid == OPENID for m in peer.accepted)

                    await eventually(delivered, within=30)

                    async def recorded() -> bool:
                        # The peer has the message before the activity's completion is in
                        # the history that ``why`` reads.
                        answer = await contact_why(runtime.client, contact_id, *WHITEPAPER)
                        return answer.status != PENDING

                    await eventually(recorded, within=30)
                    why = await contact_why(runtime.client, contact_id, *WHITEPAPER)
                    view = await contact_view(runtime.client, contact_id)
                    await record_history(runtime, contact_id, "qr_follower_whitepaper_by_wechat")
        finally:
            await connector.aclose()
    [message] = [m for m in peer.accepted if m.openid == OPENID]
    assert message.kind == "template"
    assert why.status == SENT, why.lines()
    assert " via wechat at " in why.answer
    assert view.state["consent"] == {"wechat": True}
    assert view.state["attributes"]["wechat_openid"] == OPENID
    assert [j["journey"] for j in view.journeys] == ["b2b_nurture"]  # still nurturing


@pytest.mark.time_skipping
async def test_an_anonymous_visitor_who_identifies_two_hours_later_gets_it_by_email(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    with SmtpPeer() as peer:
        connector = SmtpConnector(
            SmtpConfig(
                host=peer.host, port=peer.port, from_addr="news@example.com", security="none"
            )
        )
        try:
            async with open_runtime(
                env, task_queue, tmp_path, content_library, connectors={"email": connector}
            ) as runtime:
                with _api(runtime) as api:
                    page = {
                        "anonymousId": "anon-visitor-7",
                        "messageId": "anon-visitor-7-page",
                        "name": "Blog",
                        "properties": {"category": "blog", "url": "https://example.cn/blog/1"},
                    }
                    assert api.post("/v1/page", json=page).status_code == 200
                    contact_id = await _contact(runtime, "anonymous_id", "anon-visitor-7")

                    async def waiting_for_a_channel() -> bool:
                        try:
                            view = await contact_view(runtime.client, contact_id)
                        except ContactNotFound:
                            return False
                        record = view.state["journeys"].get("b2b_nurture") or {}
                        if record and not record.get("active"):
                            raise AssertionError(f"the nurture ended: {record}")
                        waits = [(j.get("waiting") or {}).get("kind") for j in view.journeys]
                        return waits == ["channel"]

                    await eventually(waiting_for_a_channel, within=30)
                    waiting = await contact_why(runtime.client, contact_id, *WHITEPAPER)
                    await env.sleep(timedelta(hours=2))
                    identify = {
                        "anonymousId": "anon-visitor-7",
                        "messageId": "anon-visitor-7-identify",
                        "traits": {"email": "wang.wei@example.cn", "locale": "en"},
                    }
                    assert api.post("/v1/identify", json=identify).status_code == 200

                    async def mailed() -> bool:
                        return any("wang.wei@example.cn" in m.rcpt_tos for m in peer.accepted)

                    await eventually(mailed, within=30)
                    why = await contact_why(runtime.client, contact_id, *WHITEPAPER)
                    story = await contact_timeline(runtime.client, contact_id)
                    await record_history(runtime, contact_id, "anonymous_visitor_identified_later")
        finally:
            await connector.aclose()
    assert waiting.status == PENDING, waiting.lines()
    assert waiting.answer.startswith("not sent yet: waiting for a channel until ")
    assert waiting.answer.endswith("no email address; no wechat address")
    assert why.status == SENT, why.lines()
    assert " via email at " in why.answer
    kinds = [link.kind for link in why.links]
    assert kinds == ["entry", "reached", "channel", "consent", "delivery"], why.lines()
    channel = why.links[2]
    assert channel.verdict == "waited"
    assert channel.detail.startswith("no channel the contact may be sent on (no_address:preferred)")
    # Sent once the identify arrived: two skipped hours after the page view.
    sent_at = next(e.at for e in story if e.kind == "sent")
    created = next(e.at for e in story if e.kind == "created")
    assert timedelta(hours=2) <= sent_at - created < timedelta(hours=3)
    assert any(e.kind == "wait" and "waiting for a channel" in e.summary for e in story)
    assert len([m for m in peer.accepted if "wang.wei@example.cn" in m.rcpt_tos]) == 1


async def test_everything_delivered_with_the_opening_event_applies_before_the_first_send(
    runtime: Runtime,
) -> None:
    """A sign-up form that posts the address and, in the same batch, the unticked email
    box: the contact's first journeys start only once both are applied, so no email goes
    to someone who said no in the very batch that created them."""
    with _api(runtime) as api:
        batch = {
            "batch": [
                {
                    "type": "identify",
                    "anonymousId": "form-9",
                    "messageId": "form-9-identify",
                    "traits": {"email": "no.mail@example.cn", "locale": "en"},
                },
                {
                    "type": "identify",
                    "anonymousId": "form-9",
                    "messageId": "form-9-consent",
                    "traits": {"consent": {"email": False}},
                },
            ]
        }
        assert api.post("/v1/batch", json=batch).status_code == 200
        contact_id = await _contact(runtime, "anonymous_id", "form-9")

        async def held() -> bool:
            try:
                view = await contact_view(runtime.client, contact_id)
            except ContactNotFound:
                return False
            waits = [(j.get("waiting") or {}).get("kind") for j in view.journeys]
            return view.state["consent"] == {"email": False} and waits == ["channel"]

        await eventually(held, within=30)
    assert runtime.sent(contact_id) == []


SKIP_THEN_EXIT = Journey(
    "reach_declared",
    entry=on_event("webinar.attended"),
    on_no_channel=NoChannel.exit("unreachable"),
    steps=[
        send("wp-digital-transformation", id="optional", on_no_channel=NoChannel.skip()),
        send("video-product-tour", id="required"),
    ],
)
PATIENT = Journey(
    "reach_patient",
    entry=on_event("webinar.attended"),
    steps=[send("wp-digital-transformation", id="only", on_no_channel=NoChannel.wait(days=2))],
)


async def test_skip_and_exit_as_declared_and_why_and_the_timeline_say_so(
    runtime: Runtime, content_library: ContentLibrary
) -> None:
    ctx = definitions_context(runtime.settings, content=content_library)
    publish(runtime.engine, compile_journey(SKIP_THEN_EXIT, ctx), source="test")
    await runtime.event("reach-decl", "webinar.attended")

    async def exited() -> bool:
        view = await contact_view(runtime.client, "reach-decl")
        record = view.state["journeys"].get("reach_declared") or {}
        return record.get("enrolments") == 1 and not record.get("active")

    await eventually(exited, within=30)
    skipped = await contact_why(runtime.client, "reach-decl", "reach_declared", "optional")
    assert skipped.status == NOT_SENT
    assert skipped.answer == (
        "not sent: skipped, no channel the contact may be sent on (no_address:preferred):"
        " no email address; no wechat address"
    )
    assert [link.kind for link in skipped.links] == ["entry", "reached", "channel"]
    left = await contact_why(runtime.client, "reach-decl", "reach_declared", "required")
    assert left.status == NOT_SENT
    assert left.answer.startswith(
        "not sent: no channel the contact may be sent on (no_address:preferred): no email"
        " address; no wechat address; the journey exited (unreachable) at "
    )
    assert left.links[-1].verdict == "exited"
    story = [e.summary for e in await contact_timeline(runtime.client, "reach-decl")]
    assert "skipped: no channel [reach_declared/optional] (no_address:preferred)" in story
    assert "exited: no channel [reach_declared/required] (unreachable)" in story
    assert runtime.sent("reach-decl") == []


@pytest.mark.time_skipping
async def test_a_wait_for_a_channel_ends_at_its_limit_with_no_channel(
    runtime: Runtime, content_library: ContentLibrary
) -> None:
    ctx = definitions_context(runtime.settings, content=content_library)
    publish(runtime.engine, compile_journey(PATIENT, ctx), source="test")
    await runtime.event("reach-late", "webinar.attended")
    await runtime.env.sleep(timedelta(days=1))
    waiting = await contact_why(runtime.client, "reach-late", "reach_patient", "only")
    assert waiting.status == PENDING, waiting.lines()
    await runtime.env.sleep(timedelta(days=1, hours=1))
    why = await contact_why(runtime.client, "reach-late", "reach_patient", "only")
    assert why.status == NOT_SENT, why.lines()
    assert why.answer.startswith(
        "not sent: no channel within 2d (no email address; no wechat address); the"
        " enrolment exited at "
    )
    assert why.links[-1].verdict == "gave up"
    view = await contact_view(runtime.client, "reach-late")
    assert view.state["journeys"]["reach_patient"]["active"] is False
    rows = [e.summary for e in await contact_timeline(runtime.client, "reach-late")]
    assert "exited: no channel [reach_patient/only] (no_channel)" in rows
