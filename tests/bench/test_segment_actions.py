"""What segments cost in Temporal Cloud actions, per membership change and per event
that changes none. Goal: at most one more action per membership change, none for an
event that changes no membership.

Two rounds in the same run, on the dev server with the production worker, each on its
own database and task queue: the baseline with no segment published, then the same
contacts' story with three segments published (``trial``: the ``plan`` trait is
``trial``; ``pricing-week``: a ``pricing.viewed`` in the last 7 days, which can flip by
time alone; ``vip``: a manual list, not touched). Each of ``CONTACTS`` contacts is sent,
one signal at a time as the outbox forwarder does, and with a pause so each gets its own
workflow task: an ``identify`` (an address, ``plan`` free: the bundled journeys start
on it), three ``page.viewed``, ``identify`` plan trial (enters ``trial``), two
``page.viewed``, ``identify`` plan paid (leaves ``trial``), one ``pricing.viewed``
(enters ``pricing-week``, whose window now has an end: one timer). Every run's history is
counted with the actions benchmark's definition (``tests.bench._support.Actions``) plus
local activities: Temporal Cloud bills the local activities of one workflow task as one
action, and the segment record is one.

Figures are printed, never asserted; asserted is correctness (each contact entered and
left as scripted, and recorded three changes). Run with ``pytest
tests/bench/test_segment_actions.py --run-bench -s -q``;
``STAGECOACH_BENCH_SEGMENT_ACTION_CONTACTS`` (default 10).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.conditions import performed, trait
from stagecoach.engine.domain.segments import Segment
from stagecoach.engine.protocol.messages import EventMessage
from stagecoach.engine.services.segments.catalog import publish_segments
from stagecoach.engine.services.storage.models import SegmentChange
from stagecoach.engine.temporal.gateway import send_event
from stagecoach.workflows.runtime import ContactOpener
from tests.bench._support import (
    Actions,
    contact_histories,
    contact_worker,
    env_int,
    fresh_task_queue,
    machine,
    terminate_contacts,
)
from tests.helpers import runtime_settings

CONTACTS = env_int("STAGECOACH_BENCH_SEGMENT_ACTION_CONTACTS", 10)
SEGMENTS = [
    Segment("trial", when=trait("plan", "eq", "trial")),
    Segment("pricing-week", when=performed("pricing.viewed", within=timedelta(days=7))),
    Segment("vip", manual=True),
]
STORY: list[tuple[str, dict[str, Any]]] = [
    ("identify", {"email": "{id}@example.cn", "locale": "en", "plan": "free"}),
    ("page.viewed", {}),
    ("page.viewed", {}),
    ("page.viewed", {}),
    ("identify", {"plan": "trial"}),
    ("page.viewed", {}),
    ("page.viewed", {}),
    ("identify", {"plan": "paid"}),
    ("pricing.viewed", {}),
]
CHANGES = 3
QUIET = 5  # the page views and the first identify change no membership


def local_activity_tasks(histories: Sequence[WorkflowHistory]) -> int:
    """Workflow tasks that recorded at least one local-activity marker: one action each."""
    tasks = 0
    for history in histories:
        seen_in_task = False
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                seen_in_task = False
            elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED and not seen_in_task:
                tasks += 1
                seen_in_task = True
    return tasks


async def run_round(
    client: Client, tmp_path: Path, name: str, *, segments: bool
) -> tuple[list[Actions], list[int], int]:
    settings = runtime_settings(
        tmp_path / name,
        fresh_task_queue(f"bench-seg-{name}"),
        temporal_address=client.service_client.config.target_host,
    )
    ids = [f"{name}-{uuid.uuid4().hex[:6]}-{n}" for n in range(CONTACTS)]
    async with contact_worker(client, settings) as engine:
        if segments:
            publish_segments(engine, [s.spec() for s in SEGMENTS], source="bench")
        opener = ContactOpener(engine, settings)
        base = datetime.now(UTC)
        for step, (kind, traits) in enumerate(STORY):
            for cid in ids:
                message = EventMessage(
                    message_id=f"{cid}-{step}",
                    type=kind,
                    occurred_at=base + timedelta(seconds=step),
                    properties={},
                    traits={k: v.format(id=cid) for k, v in traits.items()},
                    source="bench",
                )
                opening = await opener.open(cid, event=message) if step == 0 else None
                await send_event(client, settings, cid, message, opening=opening)
            await asyncio.sleep(1.0)  # each event in its own workflow task
        await asyncio.sleep(2.0)
        histories = [await contact_histories(client, cid) for cid in ids]
        with Session(engine) as session:
            changes = session.exec(
                select(SegmentChange.contact_id).order_by(col(SegmentChange.id))
            ).all()
    await terminate_contacts(client, ids)
    rows = [Actions.from_histories(h) for h in histories]
    return rows, [local_activity_tasks(h) for h in histories], len(changes)


@pytest.mark.bench
@pytest.mark.timeout(900)
async def test_segment_actions(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    client = dev_env.client
    plain, plain_la, _ = await run_round(client, tmp_path, "plain", segments=False)
    seg, seg_la, changes = await run_round(client, tmp_path, "segments", segments=True)

    def mean(values: Sequence[float]) -> float:
        return sum(values) / len(values)

    def per(rows: list[Actions], la: list[int], what: str) -> float:
        if what == "local":
            return mean(la)
        return mean([getattr(r, what) for r in rows])

    cats = [*Actions.CATEGORIES, "local"]
    lines = []
    for c in cats:
        before, after = per(plain, plain_la, c), per(seg, seg_la, c)
        lines.append(
            f"  {c:<16} baseline {before:6.2f}   with segments {after:6.2f}   "
            f"difference {after - before:+.2f}"
        )
    total_plain = mean([r.total for r in plain]) + mean(plain_la)
    total_seg = mean([r.total for r in seg]) + mean(seg_la)
    extra = total_seg - total_plain
    print(
        f"\nsegment actions per contact ({machine()}): {CONTACTS} contacts, {len(STORY)} "
        f"events each, {CHANGES} membership changes, {QUIET} events that change none; "
        f"Temporal Cloud actions from every run's history (local activities: one per "
        f"workflow task that ran any):\n" + "\n".join(lines) + "\n"
        f"  total {total_plain:.2f} -> {total_seg:.2f}: {extra:+.2f} per contact, "
        f"{extra / CHANGES:+.2f} per membership change (goal: at most +1; the "
        f"time-driven segment's window adds its one timer)"
    )
    assert changes == CONTACTS * CHANGES
