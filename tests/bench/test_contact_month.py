"""Temporal Cloud actions and history bytes per contact-month on the bundled journeys.

The capacity model (``tests/bench/capacity_model.py``, ``docs/capacity.md``) needs what
one contact costs in a month, not in one phase of one journey. This runs a few contacts
of three kinds through two months of their journeys on the Java time-skipping server,
with the production worker and activities, events signalled as the forwarder signals
them:

- ``silent``: a first blog view makes a suspect; the B2B nurture's awareness phase runs
  on its silent path (whitepaper, 3 days, product tour, 7 days, exit); one more blog
  view on day 45, in a month with no journey running;
- ``engaged``: a blog view, the whitepaper download on day 2 (prospect, evaluation
  content), the pricing page on day 6, another view on day 10, a trial on day 15 and a
  last view on day 25;
- ``customer``: a paid order (customer: onboarding, and the NPS survey three days
  later), onboarding finished on day 4, a passive NPS answer on day 5 (the value
  nurture: a customer story, the newsletter on day 14).

Each contact's histories are counted at day 30 (its first month) and again at day 60;
the second month is the difference: what a contact costs once its journeys have
(mostly) run out, with no new events but the silent kind's one view. Quiet hours and
the frequency cap are off, as in every runtime test, so no send is deferred (a deferred
send adds a timer).

Run with ``pytest tests/bench/test_contact_month.py --run-bench -s -q``
(``STAGECOACH_BENCH_MONTH_CONTACTS`` per kind, default 2).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.content import ContentLibrary
from tests.bench._support import ROOT, Actions, contact_histories, env_int, machine
from tests.workflows.conftest import Runtime, open_runtime

RESULTS = ROOT / ".stagecoach" / "bench" / "contact-month.jsonl"
MONTH = timedelta(days=30)
BLOG = {"category": "blog"}
PRICING = {"category": "pricing"}
WHITEPAPER = {"content_id": "wp-digital-transformation", "kind": "whitepaper"}


@dataclass(frozen=True)
class Touch:
    """One event a contact sends, ``at`` after the run's start."""

    at: timedelta
    type: str
    properties: dict[str, Any]


def _person(contact_id: str) -> dict[str, str]:
    return {"email": f"{contact_id}@example.com", "locale": "en", "timezone": "UTC"}


KINDS: dict[str, list[Touch]] = {
    "silent": [
        Touch(timedelta(0), "page.viewed", BLOG),
        # The second month's one event: what a quiet contact's visit costs.
        Touch(timedelta(days=45), "page.viewed", BLOG),
    ],
    "engaged": [
        Touch(timedelta(0), "page.viewed", BLOG),
        Touch(timedelta(days=2), "content.downloaded", WHITEPAPER),
        Touch(timedelta(days=6), "page.viewed", PRICING),
        Touch(timedelta(days=10), "page.viewed", BLOG),
        Touch(timedelta(days=15), "trial.started", {}),
        Touch(timedelta(days=25), "page.viewed", BLOG),
    ],
    "customer": [
        Touch(timedelta(0), "order.paid", {"amount": 9800}),
        Touch(timedelta(days=4), "onboarding.finished", {}),
        Touch(timedelta(days=5), "nps.answered", {"score": 8, "touchpoint": "order"}),
    ],
}


def _bytes(histories: Sequence[WorkflowHistory]) -> int:
    return sum(e.ByteSize() for h in histories for e in h.events)


def _definitions_bytes(histories: Sequence[WorkflowHistory]) -> int:
    """Bytes of the completed ``contact.load_definitions`` activities: the published
    definitions, stored in the history as the activity's result."""
    total = 0
    for history in histories:
        loads: set[int] = set()
        for e in history.events:
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                name = e.activity_task_scheduled_event_attributes.activity_type.name
                if name == "contact.load_definitions":
                    loads.add(e.event_id)
            elif (
                e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
                and e.activity_task_completed_event_attributes.scheduled_event_id in loads
            ):
                total += e.ByteSize()
    return total


def _minus(later: Actions, earlier: Actions) -> dict[str, int]:
    return {
        name: int(getattr(later, name)) - int(getattr(earlier, name))
        for name in (*Actions.CATEGORIES, "sends")
    }


def _counts(actions: Actions) -> dict[str, int]:
    return {name: int(getattr(actions, name)) for name in (*Actions.CATEGORIES, "sends")}


async def _advance_to(runtime: Runtime, start: datetime, offset: timedelta) -> None:
    ahead = start + offset - await runtime.now()
    if ahead > timedelta(0):
        await runtime.env.sleep(ahead)


@pytest.mark.bench
@pytest.mark.time_skipping
@pytest.mark.timeout(900)
async def test_actions_and_history_per_contact_month(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    per_kind = env_int("STAGECOACH_BENCH_MONTH_CONTACTS", 2)
    library = ContentLibrary.load(ROOT / "content")
    people = {kind: [f"m-{kind}-{n}" for n in range(per_kind)] for kind in KINDS}
    async with open_runtime(env, task_queue, tmp_path, library) as runtime:
        start = await runtime.now()
        touches = sorted(
            ((touch.at, kind, touch) for kind, script in KINDS.items() for touch in script),
            key=lambda row: row[0],
        )
        everyone = [cid for ids in people.values() for cid in ids]
        snapshots: list[dict[str, list[WorkflowHistory]]] = []
        for month_end in (MONTH, 2 * MONTH):
            while touches and touches[0][0] < month_end:
                at, kind, touch = touches.pop(0)
                await _advance_to(runtime, start, at + timedelta(hours=1))
                for contact_id in people[kind]:
                    first = touch.at == timedelta(0)
                    await runtime.event(
                        contact_id,
                        touch.type,
                        properties=dict(touch.properties),
                        traits=_person(contact_id) if first else None,
                    )
            await _advance_to(runtime, start, month_end)
            snapshots.append(
                {cid: await contact_histories(runtime.client, cid) for cid in everyone}
            )
        first_month, both_months = snapshots

    rows: list[dict[str, Any]] = []
    for kind, ids in people.items():
        for cid in ids:
            one = Actions.from_histories(first_month[cid])
            two = Actions.from_histories(both_months[cid])
            rows.append(
                {
                    "kind": kind,
                    "contact": cid,
                    "events": len(KINDS[kind]),
                    "month_1": {**_counts(one), "total": one.total},
                    "month_2": {**_minus(two, one), "total": two.total - one.total},
                    "activity_types": two.activity_types,
                    "history_bytes_month_1": _bytes(first_month[cid]),
                    "history_bytes_month_2": _bytes(both_months[cid]) - _bytes(first_month[cid]),
                    "definitions_bytes": _definitions_bytes(both_months[cid]),
                    "runs": len(both_months[cid]),
                }
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a", encoding="utf-8") as out:
        out.write(json.dumps({"machine": machine(), "rows": rows}) + "\n")

    lines = [f"\nactions and history bytes per contact-month ({machine()}), {per_kind} a kind:"]
    for kind in KINDS:
        mine = [r for r in rows if r["kind"] == kind]

        def mean(month: str, key: str, mine: list[dict[str, Any]] = mine) -> float:
            return float(sum(r[month][key] for r in mine)) / len(mine)

        def mean_bytes(key: str, mine: list[dict[str, Any]] = mine) -> float:
            return float(sum(r[key] for r in mine)) / len(mine)

        for month in ("month_1", "month_2"):
            parts = ", ".join(
                f"{k} {mean(month, k):.1f}"
                for k in (*Actions.CATEGORIES, "sends")
                if mean(month, k)
            )
            lines.append(
                f"  {kind:<9} {month}: {mean(month, 'total'):5.1f} actions ({parts or 'none'}); "
                f"history {mean_bytes('history_bytes_' + month):,.0f} bytes"
            )
        lines.append(
            f"  {kind:<9} activities over both months: {mine[0]['activity_types']}; "
            f"definitions loaded into the history: {mean_bytes('definitions_bytes'):,.0f} bytes"
        )
    print("\n".join(lines))

    # Correctness only: every contact was created by its first event and its journeys
    # sent something; nothing was retried.
    for row in rows:
        assert row["month_1"]["started"] == 1, row
        assert row["month_1"]["signals"] + row["month_2"]["signals"] >= row["events"], row
        assert row["month_1"]["sends"] >= 2, row
        assert row["month_1"]["retries"] == 0, row
