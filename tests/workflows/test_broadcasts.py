"""Broadcasts on real Temporal servers, with the production worker, activities and sink.

- Sent now, on the dev server: every eligible member once; held back by reason
  (consent, suppression, the frequency cap a journey's send used up); a second launch
  answered with the first; a joiner after the snapshot not sent but counted.
- A provider refusing by policy pauses the broadcast with the reason; resume finishes it.
- Pause, resume and cancel mid-run.
- A local-time broadcast over three zones on the time-skipping server: each recipient at
  09:00 in their own zone, a zone already past sent at once or skipped.
- An A/B test: the arms go to the sample, the winner is chosen on clicks with a
  significance test, and the rest get the winner.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from temporalio.client import Client

from stagecoach.engine.domain.broadcasts import ABTest, Broadcast, Variant
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.domain.segments import MANUAL_VERSION, Segment
from stagecoach.engine.protocol.connector import (
    Connector,
    OutgoingMessage,
    PermanentDeliveryError,
    SendResult,
)
from stagecoach.engine.protocol.messages import SegmentChanges
from stagecoach.engine.services.broadcasts import launch as steer
from stagecoach.engine.services.broadcasts import store
from stagecoach.engine.services.broadcasts.metrics import broadcast_report
from stagecoach.engine.services.segments.catalog import publish_segments
from stagecoach.engine.services.storage.models import (
    BroadcastRecipient,
    Consent,
    Contact,
    Delivery,
    Event,
    Identity,
    Suppression,
)
from stagecoach.engine.services.storage.segments import save_segment_changes
from stagecoach.engine.temporal.timeline import Entry, broadcast_entry, with_entries
from tests.workflows.conftest import HISTORIES, Runtime, eventually, open_runtime

AUDIENCE = Segment("newsletter-readers", description="Uploaded readers", manual=True)
CONTENT = "newsletter-monthly"


def content_catalogue(library: ContentLibrary) -> dict[str, frozenset[tuple[str, str]]]:
    return {
        item.id: frozenset((loc, ch) for loc in item.locales for ch in item.channels)
        for item in library.items
    }


def seed_audience(
    db: Engine,
    contacts: Sequence[dict[str, Any]],
    *,
    segment: Segment = AUDIENCE,
    at: datetime | None = None,
) -> None:
    """Contacts with addresses, published as members of a manual segment: what a CSV
    upload leaves behind (its own tests drive the upload)."""
    when = at or datetime.now(UTC)
    publish_segments(db, [segment.spec()], source="test")
    with Session(db) as session:
        for c in contacts:
            if session.get(Contact, c["id"]) is not None:
                continue  # a contact the workflow already recorded: membership only
            email = c.get("email", f"{c['id']}@example.com")
            traits: dict[str, Any] = {"first_name": c["id"]}
            if email:
                traits["email"] = email
            if c.get("wechat_openid"):
                traits["wechat_openid"] = c["wechat_openid"]
                traits["consent"] = {"wechat": True}
            session.add(
                Contact(
                    id=c["id"],
                    stage="customer",
                    locale=c.get("locale", "en"),
                    timezone=c.get("timezone", "UTC"),
                    traits=traits,
                )
            )
            if email:
                session.add(Identity(kind="email", value=email, contact_id=c["id"]))
        session.commit()
    for c in contacts:
        save_segment_changes(
            db,
            SegmentChanges(
                key=f"{c['id']}:seed",
                contact_id=c["id"],
                changes=[
                    {
                        "segment": segment.name,
                        "version": MANUAL_VERSION,
                        "entered": True,
                        "at": when.isoformat(),
                        "reason": "uploaded",
                    }
                ],
                source="list",
            ),
        )


async def launch(
    runtime: Runtime,
    library: ContentLibrary,
    broadcast: Broadcast,
    *,
    now: datetime | None = None,
    batch_size: int = 200,
) -> steer.Launched:
    store.save_broadcast(runtime.engine, broadcast, source="test")
    return await steer.launch(
        runtime.client,
        runtime.engine,
        broadcast.name,
        task_queue=runtime.settings.temporal_task_queue,
        content=content_catalogue(library),
        events=None,
        now=now or await runtime.now(),
        batch_size=batch_size,
    )


async def finished(runtime: Runtime, broadcast_id: str, within: float = 30.0) -> str:
    async def done() -> bool:
        return store.get_row(runtime.engine, broadcast_id).status in ("completed", "cancelled")

    await eventually(done, within=within)
    return store.get_row(runtime.engine, broadcast_id).status


async def record_broadcast_history(runtime: Runtime, broadcast_id: str, name: str) -> None:
    """With STAGECOACH_RECORD_HISTORIES=1, keep the broadcast workflow's history for the
    replay tests (a recorded file is never rewritten)."""
    target = HISTORIES / f"{name}.json"
    if os.environ.get("STAGECOACH_RECORD_HISTORIES") != "1" or target.exists():
        return
    handle = runtime.client.get_workflow_handle(f"broadcast-{broadcast_id}")
    target.write_text((await handle.fetch_history()).to_json(), encoding="utf-8")


def sink_count(runtime: Runtime, contact_id: str) -> int:
    return len(runtime.sent(contact_id))


# --- sent now, on the dev server -------------------------------------------------------


@pytest.mark.settings(frequency_cap=3)
async def test_each_eligible_member_is_sent_once_and_each_hold_is_counted_by_reason(
    runtime: Runtime, content_library: ContentLibrary
) -> None:
    members = [{"id": f"r{i}"} for i in range(6)]
    seed_audience(runtime.engine, members)
    now = datetime.now(UTC)
    with Session(runtime.engine) as session:
        # r1 said no to email; r2's address is suppressed (a hard bounce).
        session.add(
            Consent(
                contact_id="r1",
                channel="email",
                granted=False,
                source="test",
                wording="",
                proof="x",
            )
        )
        session.add(Suppression(channel="email", address="r2@example.com", reason="hard_bounce"))
        # r3 already had three journey sends today: the cap is one budget.
        for n in range(3):
            session.add(
                Delivery(
                    idempotency_key=f"journey:r3:{n}",
                    contact_id="r3",
                    journey="onboarding",
                    journey_version="v",
                    step_id=f"s{n}",
                    channel="email",
                    status="sent",
                    sent_at=now - timedelta(hours=1 + n),
                )
            )
        session.commit()
    broadcast = Broadcast(name="december-news-wf", segment=AUDIENCE.name, content=CONTENT)
    first = await launch(runtime, content_library, broadcast)
    assert first.first
    assert first.workflow_id == "broadcast-december-news-wf"
    assert await finished(runtime, "december-news-wf") == "completed"

    # A joiner after the snapshot is not sent, but the report counts them.
    seed_audience(runtime.engine, [{"id": "late"}])
    again = await launch(runtime, content_library, broadcast)
    assert not again.first
    assert again.status == "completed"

    assert [sink_count(runtime, f"r{i}") for i in range(6)] == [1, 0, 0, 0, 1, 1]
    assert sink_count(runtime, "r0") == 1
    assert not runtime.sent("late")
    message = runtime.sent("r0")[0]
    assert message["to"] == "r0@example.com"
    assert message["message"]["subject"]
    report = broadcast_report(runtime.engine, "december-news-wf")
    assert (report.audience, report.sent, report.late_joiners) == (6, 3, 1)
    assert report.held == {
        "no_consent:email": 1,
        "suppressed:email": 1,
        "frequency_cap": 1,
    }
    with Session(runtime.engine) as session:
        keys = session.exec(
            select(Delivery.idempotency_key).where(Delivery.journey == "broadcast:december-news-wf")
        ).all()
    assert sorted(keys) == [f"broadcast:december-news-wf:r{i}" for i in (0, 4, 5)]
    # The contact's timeline shows the send, though no contact workflow made it.
    [send] = store.contact_broadcast_sends(runtime.engine, "r0")
    entry = broadcast_entry(
        send.at, send.broadcast, send.channel, send.content_id, send.status, send.arm
    )
    story = with_entries([Entry(send.at - timedelta(days=1), "event", "signed up")], [entry])
    assert [e.kind for e in story] == ["event", "broadcast"]
    assert story[1].summary == ("newsletter-monthly via email [broadcast december-news-wf]: sent")
    assert store.contact_broadcast_sends(runtime.engine, "r1") == []


@pytest.mark.settings(frequency_cap=1)
async def test_a_contact_a_journey_sent_to_today_is_held_unless_the_broadcast_overrides_caps(
    runtime: Runtime, content_library: ContentLibrary
) -> None:
    # A real journey send first: the bundled nurture's whitepaper, tracked through the
    # event API as a website would, and sent by the contact's workflow.
    from fastapi.testclient import TestClient

    with TestClient(runtime.app(), headers=runtime.write_auth("web")) as api:
        body: dict[str, Any] = {
            "userId": "j1",
            "messageId": "j1-download",
            "event": "content.downloaded",
            "properties": {"content_id": "wp-digital-transformation", "kind": "whitepaper"},
            "context": {"traits": {"email": "j1@example.com", "locale": "en"}},
        }
        assert api.post("/v1/track", json=body).status_code == 200
        with Session(runtime.engine) as session:
            j1 = session.exec(select(Event).where(Event.message_id == "j1-download")).one()
        runtime.touched.add(j1.contact_id)

        async def journey_sent() -> bool:
            with Session(runtime.engine) as session:
                rows = session.exec(
                    select(Delivery).where(
                        Delivery.contact_id == j1.contact_id, Delivery.status == "sent"
                    )
                ).all()
            return len(rows) == 1

        await eventually(journey_sent)
    seed_audience(runtime.engine, [{"id": j1.contact_id}, {"id": "j2"}])
    capped = Broadcast(name="promo", segment=AUDIENCE.name, content=CONTENT)
    await launch(runtime, content_library, capped)
    assert await finished(runtime, "promo") == "completed"
    report = broadcast_report(runtime.engine, "promo")
    assert (report.sent, report.held) == (1, {"frequency_cap": 1})
    assert [m["message"]["content_id"] for m in runtime.sent(j1.contact_id)] == [
        "wp-digital-transformation"
    ]
    # A transactional notice overrides the cap (consent and suppression still hold).
    notice = Broadcast(
        name="terms-update", segment=AUDIENCE.name, content=CONTENT, override_caps=True
    )
    await launch(runtime, content_library, notice)
    assert await finished(runtime, "terms-update") == "completed"
    assert broadcast_report(runtime.engine, "terms-update").sent == 2


class RefusingAfter:
    """A connector that accepts ``n`` messages, then refuses everything by policy, as a
    provider's 550 policy block does, until ``lift()``."""

    channel = "email"

    def __init__(self, inner: Connector, n: int) -> None:
        self.inner, self.left, self.sent = inner, n, 0

    def lift(self) -> None:
        self.left = 10**9

    async def send(self, message: OutgoingMessage) -> SendResult:
        if self.left <= 0:
            raise PermanentDeliveryError(
                "550 5.7.1 message refused by policy", code="policy_rejected"
            )
        self.left -= 1
        self.sent += 1
        return await self.inner.send(message)


async def test_a_provider_refusing_by_policy_pauses_the_broadcast_and_resume_finishes_it(
    env: Any, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    from stagecoach.connectors.filesink import FileSinkConnector

    sink = FileSinkConnector(tmp_path / "sink", channel="email")
    refusing = RefusingAfter(sink, 3)
    async with open_runtime(
        env, task_queue, tmp_path, content_library, connectors={"email": refusing}
    ) as runtime:
        seed_audience(runtime.engine, [{"id": f"p{i}"} for i in range(10)])
        broadcast = Broadcast(name="policy-block", segment=AUDIENCE.name, content=CONTENT)
        await launch(runtime, content_library, broadcast)

        async def paused() -> bool:
            return store.get_row(runtime.engine, "policy-block").status == "paused"

        await eventually(paused)
        row = store.get_row(runtime.engine, "policy-block")
        assert row.reason is not None
        assert "policy_rejected" in row.reason
        assert refusing.sent == 3  # it did not burn through the list
        report = broadcast_report(runtime.engine, "policy-block")
        assert (report.sent, report.pending, report.failed) == (3, 7, 0)

        refusing.lift()
        await steer.resume(runtime.client, runtime.engine, "policy-block")
        assert await finished(runtime, "policy-block") == "completed"
        assert refusing.sent == 10
        assert broadcast_report(runtime.engine, "policy-block").sent == 10
        await record_broadcast_history(runtime, "policy-block", "broadcast_refused_then_resumed")


class Slow:
    """The file sink, a fraction of a second per message: time to pause mid-run."""

    channel = "email"

    def __init__(self, inner: Connector, delay: float) -> None:
        self.inner, self.delay, self.sent = inner, delay, 0

    async def send(self, message: OutgoingMessage) -> SendResult:
        await asyncio.sleep(self.delay)
        self.sent += 1
        return await self.inner.send(message)


async def test_pause_resume_and_cancel_act_between_batches_and_lose_nothing(
    env: Any, task_queue: str, tmp_path: Path, content_library: ContentLibrary, monkeypatch: Any
) -> None:
    from stagecoach.connectors.filesink import FileSinkConnector
    from stagecoach.workflows.broadcasts import activities

    monkeypatch.setattr(activities, "CONCURRENCY", 2)
    slow = Slow(FileSinkConnector(tmp_path / "sink", channel="email"), 0.05)
    async with open_runtime(
        env, task_queue, tmp_path, content_library, connectors={"email": slow}
    ) as runtime:
        seed_audience(runtime.engine, [{"id": f"m{i:03}"} for i in range(120)])
        broadcast = Broadcast(name="steered-wf", segment=AUDIENCE.name, content=CONTENT)
        await launch(runtime, content_library, broadcast, batch_size=10)
        await eventually(lambda: _true(slow.sent >= 10))
        await steer.pause(runtime.client, runtime.engine, "steered-wf", "checking the copy")

        async def paused() -> bool:
            return store.get_row(runtime.engine, "steered-wf").status == "paused"

        await eventually(paused)
        held_at = slow.sent
        await asyncio.sleep(1.0)
        assert slow.sent == held_at < 120  # nothing goes out while paused
        assert store.get_row(runtime.engine, "steered-wf").reason == "checking the copy"

        await steer.resume(runtime.client, runtime.engine, "steered-wf")
        await eventually(lambda: _true(slow.sent >= held_at + 20))
        await steer.cancel(runtime.client, runtime.engine, "steered-wf", "wrong segment")
        assert await finished(runtime, "steered-wf") == "cancelled"
        report = broadcast_report(runtime.engine, "steered-wf")
        assert report.sent == slow.sent < 120
        assert report.cancelled == 120 - report.sent
        assert report.reason == "wrong segment"
        with Session(runtime.engine) as session:
            sent_rows = session.exec(
                select(col(Delivery.contact_id)).where(
                    Delivery.journey == "broadcast:steered-wf", Delivery.status == "sent"
                )
            ).all()
        assert len(sent_rows) == len(set(sent_rows)) == report.sent
        with pytest.raises(steer.BroadcastNotSteerable, match="cancelled"):
            await steer.resume(runtime.client, runtime.engine, "steered-wf")
        await record_broadcast_history(runtime, "steered-wf", "broadcast_paused_resumed_cancelled")


async def test_a_pause_before_the_send_time_shows_at_once_and_holds_the_start(
    runtime: Runtime, content_library: ContentLibrary
) -> None:
    seed_audience(runtime.engine, [{"id": f"w{i}"} for i in range(3)])
    start = datetime.now(UTC) + timedelta(seconds=3)
    broadcast = Broadcast(name="held-start", segment=AUDIENCE.name, content=CONTENT, send_at=start)
    await launch(runtime, content_library, broadcast)
    await steer.pause(runtime.client, runtime.engine, "held-start", "legal review")

    async def paused() -> bool:
        row = store.get_row(runtime.engine, "held-start")
        return (row.status, row.reason) == ("paused", "legal review")

    await eventually(paused)
    await asyncio.sleep((start - datetime.now(UTC)).total_seconds() + 1.0)
    assert store.get_row(runtime.engine, "held-start").status == "paused"
    assert not any(runtime.sent(f"w{i}") for i in range(3))
    await steer.resume(runtime.client, runtime.engine, "held-start")
    assert await finished(runtime, "held-start") == "completed"
    assert [sink_count(runtime, f"w{i}") for i in range(3)] == [1, 1, 1]
    await record_broadcast_history(runtime, "held-start", "broadcast_paused_before_start")


async def _true(value: bool) -> bool:
    return value


# --- bad input: nothing is sent --------------------------------------------------------


async def test_bad_broadcasts_are_refused_naming_the_field_and_nothing_is_sent(
    runtime: Runtime, content_library: ContentLibrary
) -> None:
    seed_audience(runtime.engine, [{"id": "zh1", "locale": "zh-CN"}, {"id": "en1"}])
    now = datetime.now(UTC)
    cases = {
        "unknown-segment": (
            Broadcast(name="unknown-segment", segment="nobody", content=CONTENT),
            "segment 'nobody' is unknown",
        ),
        "past": (
            Broadcast(
                name="past",
                segment=AUDIENCE.name,
                content=CONTENT,
                send_at=now - timedelta(hours=1),
            ),
            "is in the past",
        ),
        "no-such-content": (
            Broadcast(name="no-such-content", segment=AUDIENCE.name, content="nope"),
            "content 'nope' is not in the content library",
        ),
    }
    for name, (broadcast, message) in cases.items():
        with pytest.raises(store.BroadcastRefused, match=message):
            await launch(runtime, content_library, broadcast, now=now)
        assert store.get_row(runtime.engine, name).status == "draft"
    with Session(runtime.engine) as session:
        assert session.exec(select(BroadcastRecipient)).all() == []
        assert session.exec(select(Delivery)).all() == []


# --- local time, on the time-skipping server ------------------------------------------


@pytest.mark.time_skipping
async def test_a_local_time_broadcast_reaches_each_zone_at_nine_and_skips_a_passed_zone(
    runtime: Runtime, content_library: ContentLibrary
) -> None:
    now = await runtime.now()
    # Launch at 00:30 UTC on a day: 09:00 has passed in Tokyo (09:30 there), is ahead
    # in London (8.5 h) and New York (13.5 h in winter).
    day = (now + timedelta(days=2)).date()
    launch_at = datetime.combine(day, time(0, 30), tzinfo=UTC)
    seed_audience(
        runtime.engine,
        [
            {"id": "tokyo", "timezone": "Asia/Tokyo"},
            {"id": "london", "timezone": "Europe/London"},
            # The contact row still says UTC: the move to New York is in an identify
            # that came after the row was last written (rows change at stage changes).
            {"id": "newyork", "timezone": "UTC"},
        ],
    )
    with Session(runtime.engine) as session:
        session.add(
            Event(
                message_id="ny-moved",
                contact_id="newyork",
                kind="identify",
                name="identify",
                context={"traits": {"timezone": "America/New_York"}},
                occurred_at=now,
            )
        )
        session.commit()
    broadcast = Broadcast(
        name="morning-webinar",
        segment=AUDIENCE.name,
        content=CONTENT,
        send_at=launch_at,
        local_time=time(9, 0),
        when_passed="skip",
    )
    await launch(runtime, content_library, broadcast, now=now)
    await runtime.env.sleep(timedelta(days=3))  # the server skips time past each slot
    assert await finished(runtime, "morning-webinar") == "completed"
    with Session(runtime.engine) as session:
        rows = {
            r.contact_id: r
            for r in session.exec(
                select(BroadcastRecipient).where(
                    BroadcastRecipient.broadcast_id == "morning-webinar"
                )
            ).all()
        }
    assert rows["tokyo"].status == "skipped"
    assert rows["tokyo"].reason == "local_time_passed"
    expected = {
        "london": datetime.combine(day, time(9, 0), tzinfo=UTC),
        "newyork": datetime.combine(day, time(14, 0), tzinfo=UTC),
    }
    for contact_id, target in expected.items():
        row = rows[contact_id]
        assert row.status == "sent"
        assert row.sent_at is not None
        sent_at = row.sent_at if row.sent_at.tzinfo else row.sent_at.replace(tzinfo=UTC)
        assert abs((sent_at - target).total_seconds()) < 60, (contact_id, sent_at, target)
        assert sink_count(runtime, contact_id) == 1
    assert not runtime.sent("tokyo")
    report = broadcast_report(runtime.engine, "morning-webinar")
    assert (report.sent, report.skipped, report.status) == (2, 1, "completed")
    await record_broadcast_history(runtime, "morning-webinar", "broadcast_local_time_slots")


# --- A/B test, on the time-skipping server --------------------------------------------


@pytest.mark.time_skipping
async def test_an_ab_test_sends_the_arms_picks_the_winner_on_clicks_and_sends_it_to_the_rest(
    runtime: Runtime, content_library: ContentLibrary
) -> None:
    members = [{"id": f"ab{i:03}"} for i in range(400)]
    seed_audience(runtime.engine, members)
    broadcast = Broadcast(
        name="subject-test",
        segment=AUDIENCE.name,
        content=CONTENT,
        ab=ABTest(
            variants=(
                Variant("plain", subject="December news"),
                Variant("question", subject="Ready for 2027?"),
            ),
            default="plain",
            sample=0.2,
            window=timedelta(hours=4),
            metric="clicked",
        ),
    )
    await launch(runtime, content_library, broadcast)

    async def arms_sent() -> bool:
        return len(store.arm_sent_since(runtime.engine, "subject-test")) == 2

    await eventually(arms_sent, within=30)
    arms = {
        r.contact_id: r.variant
        for r in _recipients(runtime.engine, "subject-test")
        if r.status == "sent"
    }
    assert set(arms.values()) == {"plain", "question"}
    # Clicks during the window: most of the question arm, few of the plain arm.
    clicked_at = await runtime.now() + timedelta(minutes=30)
    with Session(runtime.engine) as session:
        for n, (contact_id, arm) in enumerate(arms.items(), start=1):
            if (arm == "question" and n % 4 != 0) or (arm == "plain" and n % 10 == 0):
                session.add(
                    Event(
                        message_id=f"click-{contact_id}",
                        contact_id=contact_id,
                        name="email.clicked",
                        properties={},
                        occurred_at=clicked_at,
                    )
                )
        session.commit()
    await runtime.env.sleep(timedelta(hours=5))  # past the window
    assert await finished(runtime, "subject-test") == "completed"
    row = store.get_row(runtime.engine, "subject-test")
    assert row.winner == "question"
    assert row.ab is not None
    assert row.ab["significant"]
    assert row.ab["p_value"] < 0.05
    rest = [r for r in _recipients(runtime.engine, "subject-test") if r.contact_id not in arms]
    assert rest
    assert all(r.status == "sent" and r.variant == "question" for r in rest)
    subjects = {runtime.sent(r.contact_id)[0]["message"]["subject"] for r in rest[:5]}
    assert subjects == {"Ready for 2027?"}
    assert all(sink_count(runtime, m["id"]) == 1 for m in members)
    await record_broadcast_history(runtime, "subject-test", "broadcast_ab_winner")


def _recipients(db: Engine, broadcast_id: str) -> list[BroadcastRecipient]:
    with Session(db) as session:
        return list(
            session.exec(
                select(BroadcastRecipient).where(BroadcastRecipient.broadcast_id == broadcast_id)
            ).all()
        )


# --- WeChat mass send, to the local WeChat API --------------------------------------------


async def test_a_wechat_mass_send_goes_as_one_job_per_locale_and_its_callback_counts_land(
    env: Any, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    from fastapi.testclient import TestClient

    from stagecoach.connectors.filesink import FileSinkConnector
    from stagecoach.connectors.wechat import WeChatConfig, WeChatConnector
    from stagecoach.engine.api.routes.wechat import drain
    from tests.peers.wechat import PEER_APPID, running_peer

    with running_peer(account_type="service") as peer:
        wechat = WeChatConnector(
            WeChatConfig(appid=peer.appid, secret=peer.secret, api_base=peer.url)
        )
        connectors: dict[str, Connector] = {
            "email": FileSinkConnector(tmp_path / "sink", channel="email"),
            "wechat": wechat,
        }
        async with open_runtime(
            env, task_queue, tmp_path, content_library, connectors=connectors
        ) as runtime:
            fans = [
                {"id": f"fan{i}", "wechat_openid": f"oFan{i:024}", "locale": "zh-CN"}
                for i in range(5)
            ] + [
                {"id": "fan-en-1", "wechat_openid": "oFanEn1", "locale": "en"},
                {"id": "fan-en-2", "wechat_openid": "oFanEn2", "locale": "en"},
                {"id": "no-openid"},
            ]
            seed_audience(runtime.engine, fans)
            broadcast = Broadcast(
                name="mass-news", segment=AUDIENCE.name, content=CONTENT, channel="wechat_mass"
            )
            await launch(runtime, content_library, broadcast)
            assert await finished(runtime, "mass-news") == "completed"
            jobs = peer.mass_jobs
            assert sorted(len(j.recipients) for j in jobs) == [2, 5]
            assert sorted(r for j in jobs for r in j.recipients) == sorted(
                f["wechat_openid"] for f in fans if "wechat_openid" in f
            )
            zh = next(j for j in jobs if len(j.recipients) == 5)
            assert "铁桥月刊" in zh.body["text"]["content"]
            report = broadcast_report(runtime.engine, "mass-news")
            assert (report.sent, report.held) == (7, {"no_address:wechat": 1})

            # WeChat reports each job finished; the counts land on the broadcast's report.
            app = runtime.app()
            app.state.wechat_apps = {"main": {"token": "tok", "appid": PEER_APPID}}
            with TestClient(app) as api:
                for job in jobs:
                    peer.finish_job(
                        job.msg_id,
                        callback_url="/wechat/main",
                        token="tok",
                        client=api,
                        filtered=1 if len(job.recipients) == 5 else 0,
                    )
                assert api.portal is not None
                api.portal.call(drain, app)
            report = broadcast_report(runtime.engine, "mass-news")
            by_size = {j["target"]: j for j in report.wechat_jobs}
            assert by_size["openids:5"]["status"] == "finished"
            assert (by_size["openids:5"]["total"], by_size["openids:5"]["sent"]) == (5, 4)
            assert by_size["openids:2"]["sent"] == 2


# --- the send rate across workers ---------------------------------------------------------


class Counting:
    """The file sink, counting what this worker sent and when."""

    channel = "email"

    def __init__(self, inner: Connector) -> None:
        self.inner = inner
        self.times: list[float] = []

    async def send(self, message: OutgoingMessage) -> SendResult:
        self.times.append(asyncio.get_running_loop().time())
        return await self.inner.send(message)


RATE = 30.0


async def test_the_broadcast_rate_holds_across_two_workers(
    env: Any, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    """Without the limit this broadcast takes about 2 s here (the sink's pace, measured
    with ``rate=None``); with it, at least the limit's 8 s, however the batches fall
    between the two workers. Only the lower bound is asserted: a loaded machine can make
    a run slower, never faster, so the check cannot flake under load."""
    rate = RATE
    from stagecoach.connectors.filesink import FileSinkConnector
    from stagecoach.engine.cli.compose import build_broadcast_activities
    from stagecoach.workflows.worker import build_broadcast_worker

    batch, audience = 10, 240
    name = "paced"
    sink = FileSinkConnector(tmp_path / "sink", channel="email")
    workers = [Counting(sink), Counting(sink)]
    async with open_runtime(env, task_queue, tmp_path, content_library) as runtime:
        # A queue of their own: the runtime's worker polls the settings' broadcast queue.
        queue = f"{task_queue}-paced"
        # Each worker on a connection of its own, as two worker processes would be.
        target = runtime.client.service_client.config.target_host
        clients = [
            await Client.connect(target, data_converter=runtime.client.data_converter)
            for _ in workers
        ]
        batch_workers = [
            build_broadcast_worker(
                client,
                task_queue=queue,
                activities=build_broadcast_activities(
                    runtime.engine,
                    runtime.settings,
                    connectors={"email": counting},
                    content=content_library,
                ).batches(),
                batch_size=batch,
                rate=rate,
            )
            for client, counting in zip(clients, workers, strict=True)
        ]
        seed_audience(runtime.engine, [{"id": f"q{i:03}"} for i in range(audience)])
        async with batch_workers[0], batch_workers[1]:
            store.save_broadcast(
                runtime.engine, Broadcast(name=name, segment=AUDIENCE.name, content=CONTENT)
            )
            await steer.launch(
                runtime.client,
                runtime.engine,
                name,
                task_queue=task_queue,
                content=content_catalogue(content_library),
                events=None,
                now=datetime.now(UTC),
                batch_size=batch,
                batch_queue=queue,
            )
            assert await finished(runtime, name, within=60) == "completed"
    times = sorted(t for w in workers for t in w.times)
    assert len(times) == audience == len(set(p.name for p in (tmp_path / "sink").rglob("*.json")))
    assert all(w.times for w in workers)  # both workers took batches
    elapsed = times[-1] - times[0]
    # 24 batches at 3 a second across both workers: about 8 s (a burst of one second's
    # batches allowed).
    assert elapsed >= audience / rate - 1.5, elapsed


# --- WeChat template messages, to the local WeChat API -------------------------------------


async def test_a_wechat_template_broadcast_pauses_on_the_daily_quota_and_resumes(
    env: Any, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    from stagecoach.connectors.filesink import FileSinkConnector
    from stagecoach.connectors.wechat import WeChatConfig, WeChatConnector
    from tests.peers.wechat import running_peer

    with running_peer() as peer:
        wechat = WeChatConnector(
            WeChatConfig(appid=peer.appid, secret=peer.secret, api_base=peer.url)
        )
        connectors: dict[str, Connector] = {
            "email": FileSinkConnector(tmp_path / "sink", channel="email"),
            "wechat": wechat,
        }
        async with open_runtime(
            env, task_queue, tmp_path, content_library, connectors=connectors
        ) as runtime:
            fans = [
                {"id": f"tf{i}", "wechat_openid": f"oTpl{i:024}", "locale": "zh-CN"}
                for i in range(4)
            ]
            seed_audience(runtime.engine, fans)
            peer.fail_openid(fans[3]["wechat_openid"], 43004)  # unfollowed meanwhile
            peer.fail_next(45009, times=1)  # the account's daily template quota is spent
            broadcast = Broadcast(
                name="story-invite-wechat",
                segment=AUDIENCE.name,
                content="customer-story-invite",
                channel="wechat",
            )
            await launch(runtime, content_library, broadcast)

            async def paused() -> bool:
                return store.get_row(runtime.engine, "story-invite-wechat").status == "paused"

            await eventually(paused)
            row = store.get_row(runtime.engine, "story-invite-wechat")
            assert row.reason is not None
            assert "daily quota" in row.reason
            await steer.resume(runtime.client, runtime.engine, "story-invite-wechat")
            assert await finished(runtime, "story-invite-wechat") == "completed"
            report = broadcast_report(runtime.engine, "story-invite-wechat")
            assert (report.sent, report.held) == (3, {"consent_revoked": 1})
            accepted = [m.openid for m in peer.accepted]
            assert sorted(accepted) == sorted(f["wechat_openid"] for f in fans[:3])
            assert all(m.kind == "template" for m in peer.accepted)
