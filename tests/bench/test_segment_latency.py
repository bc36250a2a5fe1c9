"""Real-time segment membership: from the API acknowledging the deciding event to the
membership row, and to the enrolment of a journey entered on the segment, under load.

Everything crosses loopback between processes, as in the reaction benchmark
(``test_ingest_throughput.py``, whose processes and load generator this reuses): the API
is ``python -m stagecoach.engine.cli api`` with its own outbox forwarder, the production
contact worker runs in this process, the Temporal dev server in its own. A segment
(``pricing-now``: a ``pricing.viewed`` in the last day) and a journey entered on it are
published first. ``PROBES`` known contacts (opened by an ``identify`` each beforehand)
are then each sent one ``pricing.viewed`` through ``/v1/track``, one every
``PROBE_EVERY`` s, under ``BACKGROUND`` page calls a second for 100 other contacts.
Measured per probe, from the acknowledgement (wall clock, one machine, one clock):

- decided: the ``at`` of the ``segment_changes`` row, i.e. the workflow task that
  applied the event and decided the entry;
- recorded: when the row was first seen in the database (polled every ``POLL``);
- enrolled: when the journey's delivery row (written before its send) was first seen.

The baseline, in the same run and interleaved: the reaction benchmark's probe, a new
contact's whitepaper download acknowledged -> its stage move applied (the engine's
reaction without segments). The anchors are Dittofeed's 120 s recompute and Mautic's
cron. Figures are printed, never asserted; asserted is correctness (each probe entered
once and enrolled once). Run with ``pytest tests/bench/test_segment_latency.py
--run-bench -s -q``; ``STAGECOACH_BENCH_SEGMENT_PROBES`` (default 40),
``STAGECOACH_BENCH_SEGMENT_BACKGROUND`` (default 200).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.api.routes.events import create_write_key
from stagecoach.engine.domain.conditions import performed
from stagecoach.engine.domain.journeys import Journey, compile_journey, send
from stagecoach.engine.domain.segments import SEGMENT_EVENTS, Segment, segment_entered
from stagecoach.engine.services.publishing import definitions_context, publish
from stagecoach.engine.services.segments.catalog import publish_segments
from stagecoach.engine.services.storage.models import Delivery, SegmentChange
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.gateway import ContactNotFound, contact_view
from tests.bench._loadgen import Load, percentile
from tests.bench._support import (
    contact_worker,
    env_int,
    fresh_task_queue,
    machine,
    terminate_contacts,
)
from tests.bench.test_ingest_throughput import (
    api_server,
    background,
    contact_of,
    contacts_of,
    outbox,
    probe_api,
    steady,
)
from tests.helpers import free_port, runtime_settings

PROBES = env_int("STAGECOACH_BENCH_SEGMENT_PROBES", 40)
BACKGROUND = float(env_int("STAGECOACH_BENCH_SEGMENT_BACKGROUND", 200))
PROBE_EVERY = 0.5
POLL = 0.02
SEGMENT = Segment(
    "pricing-now",
    description="Looked at pricing in the last day",
    when=performed("pricing.viewed", within=timedelta(days=1)),
)
JOURNEY = Journey(
    "seg_bench_follow_up",
    entry=segment_entered("pricing-now"),
    steps=[send("product-sheet-edge-gateway", channel="email", id="sheet")],
)


@dataclass
class Probe:
    decided: float
    recorded: float
    enrolled: float


def _aware(at: datetime) -> float:
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def _change(engine: Engine, contact_id: str) -> SegmentChange | None:
    with Session(engine) as session:
        return session.exec(
            select(SegmentChange).where(SegmentChange.contact_id == contact_id)
        ).first()


def _delivery(engine: Engine, contact_id: str) -> Delivery | None:
    with Session(engine) as session:
        return session.exec(
            select(Delivery).where(
                Delivery.contact_id == contact_id, col(Delivery.journey) == JOURNEY.name
            )
        ).first()


async def probe(http: httpx.AsyncClient, engine: Engine, user: str, n: int) -> Probe:
    message_id = f"{user}-pricing-{n}"
    body = {"userId": user, "messageId": message_id, "event": "pricing.viewed"}
    response = await http.post("/v1/track", json=body)
    acked = time.time()
    assert response.status_code == 200, response.text
    contact_id = await asyncio.to_thread(contact_of, engine, message_id)
    recorded = enrolled = 0.0
    change: SegmentChange | None = None
    deadline = acked + 60
    while not (recorded and enrolled):
        now = time.time()
        assert now < deadline, f"{contact_id}: never entered and enrolled"
        if not recorded:
            change = await asyncio.to_thread(_change, engine, contact_id)
            if change is not None:
                recorded = now
        if not enrolled and await asyncio.to_thread(_delivery, engine, contact_id) is not None:
            enrolled = now
        await asyncio.sleep(POLL)
    assert change is not None
    return Probe(_aware(change.at) - acked, recorded - acked, enrolled - acked)


async def opened(client: Client, engine: Engine, users: list[str]) -> None:
    deadline = time.monotonic() + 120
    for user in users:
        contact_id = await asyncio.to_thread(contact_of, engine, f"{user}-identify")
        while True:
            try:
                await contact_view(client, contact_id)
                break
            except ContactNotFound:
                assert time.monotonic() < deadline, f"{user} never opened"
                await asyncio.sleep(0.2)


@pytest.mark.bench
@pytest.mark.timeout(900)
async def test_segment_latency(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    client = dev_env.client
    run = f"sl{uuid.uuid4().hex[:8]}"
    settings: Settings = runtime_settings(
        tmp_path,
        fresh_task_queue("bench-segments"),
        api_port=free_port(),
        temporal_address=client.service_client.config.target_host,
    )
    async with contact_worker(client, settings) as engine:
        publish_segments(engine, [SEGMENT.spec()], source="bench")
        ctx = definitions_context(settings)
        ctx = replace(ctx, known_event_types=ctx.known_event_types | SEGMENT_EVENTS)
        publish(engine, compile_journey(JOURNEY, ctx), source="bench")
        key = create_write_key(engine, "bench", source="bench")
        async with (
            api_server(settings, tmp_path / "api.log") as url,
            httpx.AsyncClient(base_url=url, auth=(key, "")) as http,
        ):
            users = [f"{run}-probe-{n}" for n in range(PROBES + 3)]
            for user in users:
                response = await http.post(
                    "/v1/identify",
                    json={
                        "userId": user,
                        "messageId": f"{user}-identify",
                        "traits": {"email": f"{user}@example.cn", "locale": "en"},
                    },
                )
                assert response.status_code == 200, response.text
            await opened(client, engine, users)
            warm = [await probe(http, engine, u, 0) for u in users[:3]]
            bg_load = Load(
                url=url, key=key, mode="paced", prefix=f"{run}-bg", concurrency=32,
                rate=BACKGROUND, users=100,
            )  # fmt: skip
            async with background(bg_load) as stop:
                await steady(engine, f"{run}-bg", bg_load.users)
                tasks: list[asyncio.Task[Probe]] = []
                base: list[asyncio.Task[object]] = []
                started = time.perf_counter()
                for n, user in enumerate(users[3:]):
                    tasks.append(asyncio.create_task(probe(http, engine, user, 1)))
                    await asyncio.sleep(PROBE_EVERY / 2)
                    base.append(
                        asyncio.create_task(probe_api(http, client, engine, f"{run}-base-{n}"))
                    )
                    await asyncio.sleep(PROBE_EVERY / 2)
                probes = list(await asyncio.gather(*tasks))
                baseline = [r.applied for r in await asyncio.gather(*base)]  # type: ignore[attr-defined]
                window = time.perf_counter() - started
                bg = await stop()
            deadline = time.monotonic() + 60
            while await asyncio.to_thread(outbox, engine):
                assert time.monotonic() < deadline, "the outbox did not drain"
                await asyncio.sleep(0.2)
        contacts = await asyncio.to_thread(contacts_of, engine, run)
        with Session(engine) as session:
            entries = session.exec(select(SegmentChange.contact_id)).all()
    await terminate_contacts(client, contacts)

    def ms(values: list[float], q: float) -> str:
        return f"{percentile(values, q) * 1000:5.0f} ms"

    def row(name: str, values: list[float]) -> str:
        return f"    {name}: p50 {ms(values, 0.5)}, p99 {ms(values, 0.99)}, max {ms(values, 1.0)}"

    print(
        f"\nsegment membership latency ({machine()}): {len(probes)} known contacts each "
        f"sent one deciding pricing.viewed through /v1/track, under "
        f"{bg.acked / bg.window_seconds:.0f} page calls/s for 100 other contacts, "
        f"{window:.0f} s; from the acknowledgement (goal p50 < 200 ms, p99 < 1 s):\n"
        + "\n".join(
            [
                row(
                    "decided (the workflow task that applied the event)",
                    [p.decided for p in probes],
                ),
                row("membership row in the database", [p.recorded for p in probes]),
                row(
                    "journey entered on the segment: its delivery row", [p.enrolled for p in probes]
                ),
                row(
                    "baseline, same run: a new contact's event -> its stage move applied",
                    baseline,
                ),
            ]
        )
        + f"\n  warm-up probes (idle): recorded {[round(p.recorded * 1000) for p in warm]} ms"
    )
    # Correctness: every probe (and warm-up) entered exactly once.
    assert len(entries) == len(set(entries)) == PROBES + 3
