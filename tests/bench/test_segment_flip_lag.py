"""Time-driven segment flips: ``CONTACTS`` contacts whose "inactive for 30 days" comes
due within the same minute, on the dev server with the production worker. Goal: every
flip within 60 s of its time.

Each contact is opened with one ``site.visited`` whose ``occurred_at`` is 30 days before
a moment in the target minute (``LEAD`` seconds after the run starts, spread over the
minute's 60 seconds), signalled with start as the outbox forwarder does, ``CONCURRENCY``
at a time. The segment, published first, is ``last_performed("site.visited",
before=30 days)``: each workflow arms one timer at its contact's moment. Nothing polls.
Measured, for each contact, from its due moment: ``decided``, the ``at`` of its
``segment_changes`` row (the workflow task the timer woke); and when the last row of
all was in the database. The baseline in the same run: the lag of the contacts due in
the minute's first second (1/60 of them, before the minute's load builds up), against
which the whole minute's lag is the cost of the burst.

Figures are printed, never asserted; asserted is correctness: every contact flipped
once, none before its time. Run with ``pytest tests/bench/test_segment_flip_lag.py
--run-bench -s -q``; ``STAGECOACH_BENCH_FLIP_CONTACTS`` (default 10000),
``STAGECOACH_BENCH_FLIP_LEAD`` (seconds from the start to the target minute, default
long enough to open every contact first: 0.03 s a contact plus 60 s),
``STAGECOACH_BENCH_FLIP_CONCURRENCY`` (default 64), ``STAGECOACH_BENCH_FLIP_CACHE`` (the
worker's workflow cache; default ``build_worker``'s).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import Session, select
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.conditions import last_performed
from stagecoach.engine.domain.segments import Segment
from stagecoach.engine.protocol.messages import EventMessage
from stagecoach.engine.services.segments.catalog import publish_segments
from stagecoach.engine.services.storage.models import SegmentChange
from stagecoach.engine.temporal.gateway import send_event
from stagecoach.workflows.runtime import ContactOpener
from tests.bench._support import (
    bounded,
    contact_worker,
    env_int,
    fresh_task_queue,
    machine,
    terminate_contacts,
)
from tests.helpers import runtime_settings

CONTACTS = env_int("STAGECOACH_BENCH_FLIP_CONTACTS", 10_000)
LEAD = env_int("STAGECOACH_BENCH_FLIP_LEAD", int(CONTACTS * 0.03) + 60)
CONCURRENCY = env_int("STAGECOACH_BENCH_FLIP_CONCURRENCY", 64)
CACHE = env_int("STAGECOACH_BENCH_FLIP_CACHE", 0)
"""The worker's workflow cache (0: ``build_worker``'s default, 400). A contact that is
not cached when its timer fires is replayed from its history first."""
MONTH = timedelta(days=30)
SEGMENT = Segment(
    "inactive-30",
    description="No visit in 30 days",
    when=last_performed("site.visited", before=MONTH),
)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@pytest.mark.bench
@pytest.mark.timeout(3600)
async def test_segment_flip_lag(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    client = dev_env.client
    run = f"fl{uuid.uuid4().hex[:6]}"
    settings = runtime_settings(
        tmp_path,
        fresh_task_queue("bench-flip"),
        temporal_address=client.service_client.config.target_host,
    )
    start = datetime.now(UTC)
    target = (start + timedelta(seconds=LEAD)).replace(second=0, microsecond=0)
    if target < start + timedelta(seconds=LEAD):
        target += timedelta(minutes=1)
    due = {f"{run}-{n}": target + timedelta(seconds=n % 60) for n in range(CONTACTS)}
    async with contact_worker(client, settings, max_cached_workflows=CACHE or None) as engine:
        publish_segments(engine, [SEGMENT.spec()], source="bench")
        opener = ContactOpener(engine, settings)
        opened_at: dict[str, float] = {}

        async def open_one(contact_id: str) -> None:
            message = EventMessage(
                message_id=f"{contact_id}-visit",
                type="site.visited",
                occurred_at=due[contact_id] - MONTH,
                properties={},
                traits={"locale": "en"},
                source="bench",
            )
            opened_at[contact_id] = time.time()
            opening = await opener.open(contact_id, event=message)
            await send_event(client, settings, contact_id, message, opening=opening)

        began = time.perf_counter()
        await bounded([open_one(c) for c in due], CONCURRENCY)
        opening_seconds = time.perf_counter() - began
        opened_by = datetime.now(UTC)
        assert opened_by < target, (
            f"opening {CONTACTS} contacts took {opening_seconds:.0f} s, past the target "
            f"minute: raise STAGECOACH_BENCH_FLIP_LEAD"
        )
        load_before = os.getloadavg()[0]
        last_row_seen = 0.0
        deadline = time.time() + (target - datetime.now(UTC)).total_seconds() + 600
        while True:
            with Session(engine) as session:
                count = session.exec(select(func.count()).select_from(SegmentChange)).one()
            if count >= CONTACTS:
                last_row_seen = time.time()
                break
            assert time.time() < deadline, f"only {count} of {CONTACTS} flipped"
            await asyncio.sleep(0.5)
        with Session(engine) as session:
            rows = session.exec(select(SegmentChange.contact_id, SegmentChange.at)).all()
        load_after = os.getloadavg()[0]
    await terminate_contacts(client, list(due))

    lags = sorted((_aware(at) - due[cid]).total_seconds() for cid, at in rows)
    first_second = sorted(
        (_aware(at) - due[cid]).total_seconds() for cid, at in rows if due[cid] == target
    )
    early = [lag for lag in lags if lag < 0]
    within = sum(1 for lag in lags if lag <= 60)
    last_due = max(due.values()).timestamp()

    def q(p: float) -> float:
        return lags[min(len(lags) - 1, int(p * len(lags)))]

    print(
        f"\nsegment flip lag ({machine()}): {CONTACTS} contacts whose 'inactive for 30 "
        f"days' came due in the minute from {target:%H:%M} UTC (opened in "
        f"{opening_seconds:.0f} s at {CONTACTS / opening_seconds:.0f}/s, {CONCURRENCY} in "
        f"flight; worker cache {CACHE or 'default'}; load average {load_before:.1f} then "
        f"{load_after:.1f}); one timer per "
        f"contact, no polling:\n"
        f"  decided after its moment: p50 {q(0.5):.2f} s, p99 {q(0.99):.2f} s, max "
        f"{lags[-1]:.2f} s, mean {statistics.fmean(lags):.2f} s; {within} of {len(lags)} "
        f"within 60 s (goal: all)\n"
        f"  baseline, the {len(first_second)} due in the minute's first second: p50 "
        f"{statistics.median(first_second):.2f} s, max {first_second[-1]:.2f} s\n"
        f"  last row in the database {last_row_seen - last_due:.1f} s after the last moment"
    )
    assert len(rows) == len({cid for cid, _ in rows}) == CONTACTS
    assert not early, f"{len(early)} flipped before their time"
