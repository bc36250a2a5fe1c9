"""Temporal Cloud actions per contact through the B2B nurture journey, from the histories.

Rehearsal contacts, recorded by a ``ContactOpener`` and started with their ``identify``
and enrolment in the start input (as ``stagecoach journeys rehearse`` does),
time-scaled, run the nurture to its end with no further events: whitepaper, 3-day
wait, product-tour video, 7-day wait, exit. Every run of each contact's workflow is fetched
(continue-as-new followed) and its billable events counted, with Temporal Cloud's
definition: workflow started, signals, timers started, activities scheduled plus retries,
search-attribute upserts, accepted updates, continue-as-new. The goal is at most
``sends + waits + 3`` per contact, and no polling (no timer or activity the journey did
not ask for). The figures are printed; only correctness is asserted.
Run with ``pytest tests/bench/test_actions_per_contact.py --run-bench -s -q``.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from stagecoach.workflows.runtime import ContactOpener
from tests.bench._support import (
    JOURNEY,
    Actions,
    bounded,
    contact_histories,
    contact_worker,
    env_int,
    fresh_task_queue,
    machine,
    run_rehearsal_contact,
    summarise,
    table,
    terminate_contacts,
)
from tests.helpers import runtime_settings

TIME_SCALE = 2e-6
"""The nurture's 10 days of waits take ~1.7 s."""


@pytest.mark.bench
@pytest.mark.timeout(900)
async def test_actions_per_contact(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    count = env_int("STAGECOACH_BENCH_ACTION_CONTACTS", 20)
    client = dev_env.client
    settings = runtime_settings(tmp_path, fresh_task_queue("bench-actions"))
    run = f"act{int(time.time())}"
    ids = [f"{run}-{n}" for n in range(count)]
    started = time.perf_counter()
    async with contact_worker(client, settings) as engine:
        opener = ContactOpener(engine, settings)
        await bounded(
            [
                run_rehearsal_contact(client, settings, cid, time_scale=TIME_SCALE, opener=opener)
                for cid in ids
            ],
            concurrency=20,
        )
    rows = [Actions.from_histories(await contact_histories(client, cid)) for cid in ids]
    await terminate_contacts(client, ids)
    seconds = time.perf_counter() - started

    over = [r for r in rows if r.total > r.sends + r.timers + 3]
    summary = summarise(rows)
    types: Counter[str] = Counter()
    for r in rows:
        types.update(r.activity_types)
    summaries: Counter[str] = Counter(s for r in rows for s in r.timer_summaries)
    upserts: Counter[str] = Counter(
        f"#{n + 1} {keys}" for r in rows for n, keys in enumerate(r.upserted_keys)
    )
    journey_timers = sum(n for s, n in summaries.items() if s.startswith(f"{JOURNEY}/"))
    goal_mean = sum(r.sends + r.timers + 3 for r in rows) / len(rows)
    worst = max(rows, key=lambda r: r.total - (r.sends + r.timers + 3))
    print(
        f"\nactions per contact ({machine()}), {count} rehearsal contacts through {JOURNEY}, "
        f"time scale {TIME_SCALE:g}, {seconds:.1f} s:\n"
        f"  per contact, Temporal Cloud actions by category (from every run's history):\n"
        f"{table(summary)}\n"
        f"  activities by type (all contacts): {dict(sorted(types.items()))}\n"
        f"  timers by summary (all contacts):  {dict(sorted(summaries.items()))}\n"
        f"  search-attribute upserts by position and keys: {dict(sorted(upserts.items()))}\n"
        f"  goal: sends + waits + 3 = {goal_mean:.2f} (mean); actual total mean "
        f"{summary['total'][0]:.2f}, max {summary['total'][1]}\n"
        f"  contacts over the goal: {len(over)}/{count}; worst is over by "
        f"{worst.total - (worst.sends + worst.timers + 3)} "
        f"(started {worst.started}, signals {worst.signals}, updates {worst.updates}, "
        f"timers {worst.timers}, activities {worst.activities} of which sends {worst.sends}, "
        f"retries {worst.retries}, upserts {worst.upserts}, "
        f"continue-as-new {worst.continue_as_new})\n"
        f"  polling: timers not from a journey step: {sum(summaries.values()) - journey_timers}; "
        f"version/side-effect markers (not counted above): {summary['markers'][0]:.2f}/contact"
    )

    # Correctness only: every contact got both awareness sends and both waits, and ended.
    for r in rows:
        assert r.sends == 2, r
        assert r.timers >= 2, r
        assert r.started == 1
        assert r.updates == 0  # the enrolment travels in the start input
        assert r.activity_types.get("contact.record_enrolment", 0) == 1, r
        assert r.signals == 0
        assert r.activity_types.get("contact.open", 0) == 0, r
