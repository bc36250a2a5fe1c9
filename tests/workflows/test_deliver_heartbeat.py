"""``contact.deliver`` heartbeats while the connector's send is in flight, so the
workflow's short heartbeat timeout (10 s) retries a send lost with its worker within
seconds; a send that is merely slow keeps beating and is not retried. Cancelling the
attempt ends the beats with it. The SIGKILL end of this is
``test_exactly_once_kill.py``; here the real HTTP email connector and its local peer,
stalled longer than the heartbeat timeout the activity is given."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from stagecoach.engine.cli.compose import build_activities
from stagecoach.engine.protocol.messages import DeliverRequest
from stagecoach.engine.services.storage import make_engine, upgrade
from stagecoach.workflows.contact import ContactActivities
from tests.helpers import runtime_settings
from tests.peers.http_email import GENERIC, HttpEmailPeer

HEARTBEAT_TIMEOUT = timedelta(seconds=1)
STALL = 2.0
"""Seconds the peer holds each answer: twice the heartbeat timeout."""


def _request(key: str) -> DeliverRequest:
    return DeliverRequest(
        contact_id="c-beat",
        idempotency_key=key,
        journey="probe",
        journey_version="v",
        step_id="whitepaper",
        enrolment=1,
        channel="email",
        address="chen.jie@example.com",
        locale="en",
        content_id="wp-digital-transformation",
        consented=True,
        now=datetime.now(UTC),
    )


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[tuple[HttpEmailPeer, ContactActivities]]:
    with HttpEmailPeer() as peer:
        settings = runtime_settings(
            tmp_path,
            "unused",
            email_connector="http",
            email_http_url=peer.generic_url,
            email_http_token=peer.generic_token,
        )
        engine = make_engine(settings.resolved_database_url)
        upgrade(engine)
        try:
            yield peer, build_activities(engine, settings)
        finally:
            engine.dispose()


def _environment(beats: list[float]) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = replace(env.info, heartbeat_timeout=HEARTBEAT_TIMEOUT)
    loop = asyncio.get_running_loop()
    env.on_heartbeat = lambda *details: beats.append(loop.time())
    return env


async def test_a_slow_send_heartbeats_all_along(
    wired: tuple[HttpEmailPeer, ContactActivities],
) -> None:
    peer, activities = wired
    peer.stall_next(STALL)
    beats: list[float] = []
    started = asyncio.get_running_loop().time()
    outcome = await _environment(beats).run(activities.deliver, _request("c-beat:slow"))
    ended = asyncio.get_running_loop().time()

    assert outcome.status == "sent"
    assert len(peer.received(GENERIC)) == 1
    # Beats from the start to the end, never a heartbeat timeout's silence between two.
    marks = [started, *beats, ended]
    gaps = [b - a for a, b in itertools.pairwise(marks)]
    assert max(gaps) < HEARTBEAT_TIMEOUT.total_seconds(), gaps
    assert len(beats) >= STALL / HEARTBEAT_TIMEOUT.total_seconds() * 2


async def test_a_cancelled_attempt_stops_beating(
    wired: tuple[HttpEmailPeer, ContactActivities],
) -> None:
    peer, activities = wired
    peer.stall_next(STALL)
    beats: list[float] = []
    env = _environment(beats)
    before = set(asyncio.all_tasks())

    attempt: asyncio.Task[Any] = asyncio.create_task(
        env.run(activities.deliver, _request("c-beat:cancelled"))
    )
    await asyncio.sleep(STALL / 2)
    assert beats, "no heartbeat while the send was in flight"
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    counted = len(beats)
    await asyncio.sleep(HEARTBEAT_TIMEOUT.total_seconds())
    assert len(beats) == counted, "heartbeats went on after the attempt was cancelled"
    assert set(asyncio.all_tasks()) - before <= {asyncio.current_task()}
