"""Backpressure: the ingestion API at twice its sustainable rate, with and without
admission control.

As in ``test_ingest_throughput.py`` everything crosses loopback between processes: the
API is ``python -m stagecoach.engine.cli api`` (uvicorn, fresh SQLite file, Temporal unreachable so
events wait in the outbox) and the load comes from ``tests/bench/_loadgen.py`` in its
own process. In one run:

1. the sustainable rate: ``/v1/batch`` calls of 100 messages, closed loop, as many
   callers as admission control has slots at its defaults (``STAGECOACH_INGEST_
   CONCURRENCY``, 32): the most the gated API takes in, and it must refuse none of it;
2. open loop at twice that many calls a second, for a window, with the defaults: a call
   answered 429 is sent again with the same body after its ``Retry-After``, until a
   drain period after the window ends;
3. the same offered load against an API started with ``STAGECOACH_INGEST_CONCURRENCY=0``
   (admission control off).

Latency is counted from when a call was due, so a call that waited for a connection on
the client counts its wait (no coordinated omission); up to 512 connections.

Printed: offered and accepted events a second, calls refused with ``Retry-After``, p50
and p99 of accepted calls and of all calls (429s included), p99 by thirds of the window
(flat, or growing), and the delay from a batch first due to its acknowledgement. Timings
are printed, never asserted. Asserted is correctness: every acknowledged message is in
the events table exactly once and nothing else of the run is; every offered message was
acknowledged or is accounted for as still refused when the drain ended; the API's
refusal counter equals the 429s the client saw.

``pytest tests/bench/test_backpressure.py --run-bench -s -q``;
``STAGECOACH_BENCH_BACKPRESSURE_SECONDS`` (default 15) sets the overload window.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from stagecoach.engine.api.routes.events import create_write_key
from stagecoach.engine.services.storage import make_engine
from stagecoach.engine.settings import Settings
from tests.bench._loadgen import Load, Report
from tests.bench._support import env_int, fresh_task_queue, machine
from tests.bench.test_ingest_throughput import (
    api_env,
    api_server,
    cli,
    run_load,
    stored,
)
from tests.helpers import free_port, runtime_settings

SECONDS = float(env_int("STAGECOACH_BENCH_BACKPRESSURE_SECONDS", 15))
SUSTAINED_SECONDS = 8.0
DEFAULTS = {
    name: Settings.model_fields[name].default
    for name in ("ingest_concurrency", "ingest_queue", "ingest_max_wait")
}
"""Admission control as shipped (the API under test is started with no such setting)."""
CALLERS: int = DEFAULTS["ingest_concurrency"]  # as many callers as slots: none waits
BATCH = 100
CONNECTIONS = 512
OVERLOAD = 2.0
ON = "admission control on (defaults)"
OFF = "admission control off (STAGECOACH_INGEST_CONCURRENCY=0)"


def _api_cpu() -> float:
    """CPU seconds so far of the API processes this test started (``stagecoach.engine.cli api``)."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "stagecoach.engine.cli api" in " ".join(child.cmdline()):
                total += sum(child.cpu_times()[:2])
    return total


async def _refusals(url: str) -> dict[str, float]:
    """``stagecoach_ingest_refused_total`` by reason, from the API's /metrics."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{url}/metrics")).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("stagecoach_ingest_refused_total{"):
            series, _, value = line.rpartition(" ")
            found[series.split('reason="')[1].split('"')[0]] = float(value)
    return found


def _load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def _open_row(name: str, report: Report, rows: int, refused: dict[str, float], cpu: float) -> str:
    accepted = report.window_acked / report.window_seconds
    offered = report.offered_messages / report.window_seconds
    thirds = " / ".join(f"{p:.0f}" for p in report.p99_thirds_ms)
    failed = f"; failed calls {report.failures}" if report.failures else ""
    reasons = ", ".join(f"{k} {v:.0f}" for k, v in sorted(refused.items()) if v) or "none"
    per_event = f"{cpu / report.acked * 1e6:.0f} µs" if report.acked else "n/a"
    return (
        f"  {name}:\n"
        f"    offered {offered:7.0f} events/s ({report.offered} calls), accepted in the "
        f"window {accepted:7.0f} events/s ({report.window_requests} calls)\n"
        f"    refused: {report.throttled} calls answered 429, {report.throttled_with_retry_after}"
        f" with Retry-After (max {report.retry_after_max} s); {report.retries} resent; "
        f"{report.gave_up} batches still refused when the drain ended{failed}\n"
        f"    latency of accepted calls: p50 {report.p50_ms:.0f} ms, p99 {report.p99_ms:.0f} ms,"
        f" max {report.max_ms:.0f} ms; p99 by thirds of the window {thirds} ms\n"
        f"    latency of all calls (429s included): p50 {report.p50_all_ms:.0f} ms, p99 "
        f"{report.p99_all_ms:.0f} ms\n"
        f"    batch first due -> acknowledged (Retry-After waits included): p50 "
        f"{report.delivery_p50_ms:.0f} ms, p99 {report.delivery_p99_ms:.0f} ms; drain after "
        f"the window {report.drain_seconds:.1f} s\n"
        f"    API process CPU {cpu:.1f} s, {per_event} per accepted event; refusals counted "
        f"by the API, by reason: {reasons}\n"
        f"    correctness: accepted {report.acked} (acknowledged at the client), stored {rows} "
        f"(events table), duplicates {report.duplicates}"
    )


@pytest.mark.bench
@pytest.mark.timeout(900)
async def test_backpressure_at_twice_the_sustainable_rate(tmp_path: Path) -> None:
    run = f"bp{uuid.uuid4().hex[:8]}"
    unreachable = f"127.0.0.1:{free_port()}"  # nobody there: events wait in the outbox
    gated = runtime_settings(
        tmp_path,
        fresh_task_queue("bench-backpressure"),
        api_port=free_port(),
        temporal_address=unreachable,
    )
    ungated = runtime_settings(
        tmp_path,
        gated.temporal_task_queue,
        api_port=free_port(),
        temporal_address=unreachable,
        ingest_concurrency=0,
    )
    await cli(api_env(gated), "db", "upgrade")
    engine = make_engine(gated.resolved_database_url)
    key = create_write_key(engine, "bench", source="bench")
    load_before = _load_average()

    async with api_server(gated, tmp_path / "api-gated.log") as url:
        sustained = await run_load(
            Load(
                url=url, key=key, mode="batch", prefix=f"{run}-s", concurrency=CALLERS,
                seconds=SUSTAINED_SECONDS, warmup=2.0, batch=BATCH,
            )
        )  # fmt: skip
        sustainable = sustained.window_acked / sustained.window_seconds
        rate = OVERLOAD * sustainable / BATCH  # calls a second

        def overload(prefix: str, at: str) -> Load:
            return Load(
                url=at, key=key, mode="open", prefix=prefix, concurrency=CONNECTIONS,
                seconds=SECONDS, batch=BATCH, rate=rate, drain=3 * SECONDS,
            )  # fmt: skip

        assert await _refusals(url) == {}  # the closed loop was never refused
        cpu = _api_cpu()
        on = await run_load(overload(f"{run}-on", url))
        cpu_on = _api_cpu() - cpu
        refused_on = await _refusals(url)
    async with api_server(ungated, tmp_path / "api-ungated.log") as url:
        cpu = _api_cpu()
        off = await run_load(overload(f"{run}-off", url))
        cpu_off = _api_cpu() - cpu
        refused_off = await _refusals(url)
    load_after = _load_average()
    rows = {name: stored(engine, f"{run}-{name}") for name in ("s", "on", "off")}
    engine.dispose()

    print(
        f"\nbackpressure ({machine()}); {load_before} before, {load_after} after; API: "
        f"python -m stagecoach.engine.cli api (uvicorn), SQLite file, Temporal unreachable; "
        f"load: one "
        f"process, HTTP/1.1 keep-alive, /v1/batch calls of {BATCH} messages\n"
        f"  sustainable rate (closed loop, {CALLERS} callers, {SUSTAINED_SECONDS:.0f} s after "
        f"2 s warm-up, admission control at its defaults: {CALLERS} "
        f"slots, queue {DEFAULTS['ingest_queue']}, max wait {DEFAULTS['ingest_max_wait']:g} s): "
        f"{sustainable:.0f} events/s, p50 {sustained.p50_ms:.0f} ms, p99 "
        f"{sustained.p99_ms:.0f} ms; refused {sustained.failures.get('429', 0)} calls; "
        f"accepted {sustained.acked}, stored {rows['s']}\n"
        f"  open loop at {OVERLOAD:g}x: {rate:.1f} calls/s for {SECONDS:.0f} s, up to "
        f"{CONNECTIONS} connections, latency counted from when each call was due; 429s "
        f"resent after Retry-After until {3 * SECONDS:.0f} s after the window\n"
        f"{_open_row(ON, on, rows['on'], refused_on, cpu_on)}\n"
        f"{_open_row(OFF, off, rows['off'], refused_off, cpu_off)}\n"
        f"  load generator CPU: {sustained.cpu_seconds:.1f} s, {on.cpu_seconds:.1f} s, "
        f"{off.cpu_seconds:.1f} s"
    )  # fmt: skip

    assert sustained.acked > 0
    assert sustained.failures == {}, sustained  # as many callers as slots: none waits
    assert sustained.acked == rows["s"], (sustained, rows)
    for report, name in ((on, "on"), (off, "off")):
        assert report.acked > 0
        assert report.acked == rows[name], (name, report, rows)  # accepted = stored
        assert report.duplicates == 0, report  # a refused call stored nothing
        assert report.refused == 0, report  # no message of an accepted call was bad
        assert report.failures == {}, report  # every call was answered 200 or 429
        # Every offered message was acknowledged, or its batch was still refused at the end.
        assert report.acked + report.gave_up * BATCH == report.offered_messages, report
    assert on.throttled == sum(refused_on.values())  # every 429 the client saw was counted
    assert on.throttled == on.throttled_with_retry_after  # and each carried Retry-After
    assert off.throttled == 0
    assert refused_off == {}
