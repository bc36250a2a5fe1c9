"""The one delivery activity on the real server: retries, permanent failures, revoked
consent, a crash after the provider accepted, quiet hours and the frequency cap."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session, select
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from stagecoach.connectors.filesink import FileSinkConnector
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.protocol.connector import (
    ConsentRevoked,
    OutgoingMessage,
    PermanentDeliveryError,
    RetryableDeliveryError,
    SendResult,
)
from stagecoach.engine.protocol.messages import EVENT_SIGNAL, EventMessage, contact_workflow_id
from stagecoach.engine.services.storage.models import Delivery, Suppression
from stagecoach.engine.temporal.gateway import InvalidEvent, contact_view, send_event
from stagecoach.engine.temporal.timeline import contact_timeline
from tests.workflows.conftest import Runtime, eventually, open_runtime

PERSON = {"email": "wang.fang@example.cn", "locale": "zh-CN", "timezone": "Asia/Shanghai"}


class Faulty:
    """Wraps the file sink; fails the first ``times`` sends with ``error``."""

    def __init__(self, sink: FileSinkConnector, error: Exception, times: int) -> None:
        self.channel = sink.channel
        self.sink = sink
        self.error = error
        self.times = times
        self.calls = 0

    async def send(self, message: OutgoingMessage) -> SendResult:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return await self.sink.send(message)


class AcceptsThenCrashes:
    """The provider accepts the message, then the worker dies before it can record that:
    modelled as a retryable error raised after a successful send."""

    def __init__(self, sink: FileSinkConnector) -> None:
        self.channel = sink.channel
        self.sink = sink
        self.calls = 0

    async def send(self, message: OutgoingMessage) -> SendResult:
        self.calls += 1
        result = await self.sink.send(message)
        if self.calls == 1:
            raise RetryableDeliveryError("connection reset after DATA")
        return result


def _sink(tmp_path: Path) -> FileSinkConnector:
    return FileSinkConnector(tmp_path / "sink-email", channel="email")


def _rows(runtime: Runtime, contact_id: str) -> list[Delivery]:
    with Session(runtime.engine) as session:
        return list(session.exec(select(Delivery).where(Delivery.contact_id == contact_id)))


async def _attempts(runtime: Runtime, contact_id: str) -> list[int]:
    handle = runtime.client.get_workflow_handle(contact_workflow_id(contact_id))
    return [
        e.activity_task_started_event_attributes.attempt
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]


async def test_retryable_errors_are_retried_and_the_message_arrives_once(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    sink = _sink(tmp_path)
    flaky = Faulty(sink, RetryableDeliveryError("421 try later"), times=2)
    async with open_runtime(
        env, task_queue, tmp_path, content_library, connectors={"email": flaky}
    ) as runtime:
        await runtime.event("c-r", "page.viewed", properties={"category": "blog"}, traits=PERSON)

        async def delivered() -> bool:
            return [r.status for r in _rows(runtime, "c-r")] == ["sent"]

        await eventually(delivered, within=30)
        assert flaky.calls == 3
        assert len(list((tmp_path / "sink-email").glob("*/*.json"))) == 1

        async def third_attempt_recorded() -> bool:
            # A retried activity's start is written to history when it completes, a
            # moment after its row says sent.
            return 3 in await _attempts(runtime, "c-r")

        await eventually(third_attempt_recorded)


async def test_a_permanent_failure_exits_the_journey_once_and_is_recorded(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    bounce = Faulty(_sink(tmp_path), PermanentDeliveryError("550 no such user", code="bounce"), 99)
    async with open_runtime(
        env, task_queue, tmp_path, content_library, connectors={"email": bounce}
    ) as runtime:
        await runtime.event("c-b", "page.viewed", properties={"category": "blog"}, traits=PERSON)

        async def exited() -> bool:
            view = await contact_view(runtime.client, "c-b")
            return not view.journeys and "b2b_nurture" in view.state["journeys"]

        await eventually(exited)
        assert bounce.calls == 1  # non-retryable: never tried again
        (row,) = _rows(runtime, "c-b")
        assert (row.status, row.error) == ("failed", "550 no such user")
        story = await contact_timeline(runtime.client, "c-b")
        assert any(e.kind == "not_sent" and "PermanentDeliveryError" in e.summary for e in story)


async def test_revoked_consent_suppresses_the_address_for_later_sends(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    revoked = Faulty(_sink(tmp_path), ConsentRevoked("user unsubscribed", channel="email"), 1)
    async with open_runtime(
        env, task_queue, tmp_path, content_library, connectors={"email": revoked}
    ) as runtime:
        await runtime.event("c-u", "page.viewed", properties={"category": "blog"}, traits=PERSON)

        async def suppressed() -> bool:
            with Session(runtime.engine) as session:
                return session.get(Suppression, ("email", PERSON["email"])) is not None

        await eventually(suppressed)
        # A second contact at the same address is blocked before any connector call.
        await runtime.event("c-u2", "page.viewed", properties={"category": "blog"}, traits=PERSON)

        async def blocked() -> bool:
            return [r.status for r in _rows(runtime, "c-u2")] == ["blocked"]

        await eventually(blocked)
        assert revoked.calls == 1
        assert _rows(runtime, "c-u2")[0].error == "suppressed:email"


async def test_a_crash_after_the_provider_accepted_does_not_send_twice(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    crashing = AcceptsThenCrashes(_sink(tmp_path))
    async with open_runtime(
        env, task_queue, tmp_path, content_library, connectors={"email": crashing}
    ) as runtime:
        await runtime.event("c-x", "page.viewed", properties={"category": "blog"}, traits=PERSON)

        async def recorded() -> bool:
            return [r.status for r in _rows(runtime, "c-x")] == ["sent"]

        await eventually(recorded, within=30)
        assert crashing.calls == 2
        assert len(list((tmp_path / "sink-email").glob("*/*.json"))) == 1


async def test_a_malformed_event_is_refused_and_one_that_slips_through_is_dropped(
    runtime: Runtime,
) -> None:
    naive = EventMessage(
        message_id="m-naive", type="page.viewed", occurred_at=datetime(2026, 11, 22, 9, 0)
    )
    with pytest.raises(InvalidEvent, match="occurred_at"):
        await send_event(runtime.client, runtime.settings, "c-bad", naive)
    # Signalled directly, past the gateway: the workflow drops it and carries on.
    await runtime.event("c-bad", "page.viewed", properties={"category": "blog"})
    handle = runtime.client.get_workflow_handle(contact_workflow_id("c-bad"))
    await handle.signal(EVENT_SIGNAL, naive)
    await runtime.event("c-bad", "page.viewed", properties={"category": "pricing"})

    async def applied() -> bool:
        return len((await contact_view(runtime.client, "c-bad")).state["events"]) == 2

    await eventually(applied)


def _quiet_around(now: datetime, zone: str) -> dict[str, Any]:
    local = now.astimezone(ZoneInfo(zone))
    start = (local - timedelta(hours=1)).time().replace(second=0, microsecond=0)
    end = (local + timedelta(hours=2)).time().replace(second=0, microsecond=0)
    return {"quiet_hours_start": start.strftime("%H:%M"), "quiet_hours_end": end.strftime("%H:%M")}


@pytest.mark.time_skipping
async def test_quiet_hours_delay_the_send_until_they_end(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    now = await env.get_current_time()
    quiet = _quiet_around(now, PERSON["timezone"])
    async with open_runtime(env, task_queue, tmp_path, content_library, **quiet) as runtime:
        await runtime.event("c-q", "page.viewed", properties={"category": "blog"}, traits=PERSON)
        await env.sleep(timedelta(minutes=30))
        assert runtime.sent("c-q") == []
        await env.sleep(timedelta(hours=2))
        assert [m["message"]["content_id"] for m in runtime.sent("c-q")] == [
            "wp-digital-transformation"
        ]
        story = await contact_timeline(runtime.client, "c-q")
        created = next(e.at for e in story if e.kind == "created")
        sent_at = next(e.at for e in story if e.kind == "send")
        end = time.fromisoformat(quiet["quiet_hours_end"])
        local_sent = sent_at.astimezone(ZoneInfo(PERSON["timezone"]))
        assert timedelta(hours=1) < sent_at - created <= timedelta(hours=2, minutes=1)
        assert (local_sent.hour, local_sent.minute) == (end.hour, end.minute)


@pytest.mark.time_skipping
async def test_the_frequency_cap_defers_a_send_until_the_window_allows_it(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    async with open_runtime(
        env, task_queue, tmp_path, content_library, frequency_cap=1, frequency_window_hours=96
    ) as runtime:
        await runtime.event("c-f", "page.viewed", properties={"category": "blog"}, traits=PERSON)
        await env.sleep(timedelta(days=3, hours=1))  # the video is due on day 3
        assert len(runtime.sent("c-f")) == 1
        await env.sleep(timedelta(days=1))  # the cap frees up 96 hours after the whitepaper
        assert [m["message"]["content_id"] for m in runtime.sent("c-f")] == [
            "wp-digital-transformation",
            "video-product-tour",
        ]
