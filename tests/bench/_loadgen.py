"""The ingestion benchmarks' load generator, run as its own process on loopback.

    python -m tests.bench._loadgen '{"url": "http://127.0.0.1:8000", "key": "sk_...", ...}'

It speaks to the API as a Segment client library would: HTTP/1.1 with keep-alive
(``concurrency`` connections, asyncio), the write key as the basic-auth user name. Three
ways of loading (``Load.mode``):

- ``batch``: closed loop, ``concurrency`` callers each posting ``/v1/batch`` with
  ``batch`` messages, for ``warmup`` then ``seconds``;
- ``single``: the same with one ``track`` per ``/v1/track`` call;
- ``paced``: open loop, ``rate`` ``page`` calls a second (one message each) for other
  contacts, until its stdin is closed: the background of the reaction benchmark;
- ``open``: open loop, ``rate`` ``/v1/batch`` calls a second of ``batch`` messages for
  ``seconds``, on schedule whatever the answers take, on as many connections as it
  needs up to ``concurrency``. A call answered 429 is sent again, same body and message
  ids, once its ``Retry-After`` has passed (``honour_retry_after``), until ``drain``
  seconds after the window; then every call still out is awaited. Latency is counted
  from when a call was due, so a wait for a connection counts: the backpressure
  benchmark.

It prints one JSON line (``Report``): what was acknowledged (the ``accepted`` of every
200 answer, summed), what failed, the measured window and latency percentiles. Message ids
start with ``prefix``, so the benchmark can count exactly this run's rows in the store.

``echo_app`` is the baseline server: the same uvicorn and FastAPI stack, answering like the
ingestion API after parsing the body and doing nothing else.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

PATHS = {"batch": "/v1/batch", "single": "/v1/track", "paced": "/v1/page", "open": "/v1/batch"}


@dataclass(frozen=True)
class Load:
    """What to send, where, and for how long."""

    url: str
    key: str
    mode: str
    prefix: str
    concurrency: int = 16
    seconds: float = 8.0
    warmup: float = 2.0
    batch: int = 100
    rate: float = 200.0
    users: int = 2000
    honour_retry_after: bool = True
    drain: float = 30.0


@dataclass
class Report:
    """What the load generator saw; ``acked`` counts every acknowledged message."""

    requests: int = 0
    ok: int = 0
    acked: int = 0
    duplicates: int = 0
    refused: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    window_seconds: float = 0.0
    window_requests: int = 0
    window_acked: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    cpu_seconds: float = 0.0
    # --- the open mode ------------------------------------------------------------------
    offered: int = 0
    """New calls due in the window (retries not counted)."""
    offered_messages: int = 0
    throttled: int = 0
    """Answers 429."""
    throttled_with_retry_after: int = 0
    """Answers 429 with a whole number of seconds in ``Retry-After``."""
    retry_after_max: int = 0
    retries: int = 0
    """Calls sent again after a 429."""
    gave_up: int = 0
    """Batches still refused when the drain ended (never acknowledged, so never counted)."""
    drain_seconds: float = 0.0
    """From the window's end until the last call was answered."""
    p50_all_ms: float = 0.0
    """Latency of every call answered in the window, 429s included."""
    p99_all_ms: float = 0.0
    p99_thirds_ms: list[float] = field(default_factory=list)
    """p99 of accepted calls due in each third of the window: flat, or growing."""
    delivery_p50_ms: float = 0.0
    """From a batch first due to its acknowledgement, Retry-After waits included."""
    delivery_p99_ms: float = 0.0

    @classmethod
    def from_json(cls, line: str) -> Report:
        return cls(**orjson.loads(line))


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def message(prefix: str, seq: int, users: int) -> dict[str, Any]:
    """The ``seq``-th message of a run: mostly page views and tracks, some identifies,
    for ``users`` users (so identities are both created and found)."""
    user = f"{prefix}-u{seq % users}"
    base: dict[str, Any] = {"userId": user, "messageId": f"{prefix}-{seq}"}
    match seq % 20:
        case 0:
            return {
                **base,
                "type": "identify",
                "traits": {"email": f"{user}@example.com", "locale": "zh-CN"},
            }
        case n if n % 2:
            return {
                **base,
                "type": "page",
                "name": "Pricing",
                "properties": {"category": "pricing", "url": "https://example.cn/pricing"},
            }
        case _:
            return {
                **base,
                "type": "track",
                "event": "video.watched",
                "properties": {"video_id": "product-tour", "percent": seq % 100},
            }


def track(prefix: str, seq: int, users: int) -> dict[str, Any]:
    return {
        "userId": f"{prefix}-u{seq % users}",
        "messageId": f"{prefix}-{seq}",
        "event": "video.watched",
        "properties": {"video_id": "product-tour", "percent": seq % 100},
    }


def page(prefix: str, seq: int, users: int) -> dict[str, Any]:
    return {
        "anonymousId": f"{prefix}-a{seq % users}",
        "messageId": f"{prefix}-{seq}",
        "name": "Pricing",
        "properties": {"category": "pricing"},
    }


class Connection:
    """One keep-alive HTTP/1.1 connection, one call at a time, as a client library's pooled
    connection is used. Hand-written rather than httpx: httpx spends about a millisecond
    of CPU a call, which on a small machine would make the load generator the bottleneck
    of what it measures."""

    def __init__(self, url: str, key: str) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        auth = base64.b64encode(f"{key}:".encode()).decode()
        self._head = (
            f"Host: {parts.netloc}\r\nAuthorization: Basic {auth}\r\n"
            "Content-Type: application/json\r\n"
        )
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.head = b""
        """The status line and headers of the last answer, lower-cased."""

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """The status and body of one ``POST``; raises ``OSError`` or
        ``asyncio.IncompleteReadError`` if the connection broke (it reconnects next call)."""
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        assert self._reader is not None
        request = f"POST {path} HTTP/1.1\r\n{self._head}Content-Length: {len(body)}\r\n\r\n"
        self._writer.write(request.encode() + body)
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            headers = head.lower()
            at = headers.index(b"content-length:") + 15
            length = int(headers[at : headers.index(b"\r\n", at)])
            content = await self._reader.readexactly(length)
        except BaseException:
            self.close()
            raise
        self.head = headers
        if b"connection: close" in headers:
            self.close()
        return status, content

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def retry_after(head: bytes) -> int | None:
    """The ``Retry-After`` seconds in a lower-cased answer head; None if absent or not a
    whole number (an HTTP date is not what the API sends)."""
    at = head.find(b"\r\nretry-after:")
    if at < 0:
        return None
    value = head[at + 14 : head.index(b"\r\n", at + 2)].strip()
    return int(value) if value.isdigit() else None


KEEP_ALIVE = 4.0
"""Seconds an idle connection is reused for: under uvicorn's keep-alive timeout (5 s),
after which the server closes it and a call sent on it would be lost in flight."""


def _reuse(idle: list[tuple[float, Connection]]) -> Connection | None:
    """The most recently used idle connection, closing those idle too long to trust."""
    while idle:
        used, connection = idle.pop()
        if time.perf_counter() - used < KEEP_ALIVE:
            return connection
        connection.close()
        for _, stale in idle:  # older still
            stale.close()
        idle.clear()
    return None


class _Run:
    def __init__(self, load: Load) -> None:
        self.load = load
        self.report = Report()
        self.failures: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.seq = 0
        self.window = (float("inf"), float("inf"))

    def body(self) -> bytes:
        load, seq = self.load, self.seq
        if load.mode in ("batch", "open"):
            self.seq += load.batch
            return orjson.dumps(
                {"batch": [message(load.prefix, seq + n, load.users) for n in range(load.batch)]}
            )
        self.seq += 1
        make = track if load.mode == "single" else page
        return orjson.dumps(make(load.prefix, seq, load.users))

    async def send(self, connection: Connection, body: bytes) -> None:
        report = self.report
        report.requests += 1
        started = time.perf_counter()
        try:
            status, content = await connection.post(PATHS[self.load.mode], body)
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            self.failures[type(exc).__name__] += 1
            return
        done = time.perf_counter()
        if status != 200:
            self.failures[str(status)] += 1
            return
        answer = orjson.loads(content)
        acked = int(answer.get("accepted", 0))
        report.ok += 1
        report.acked += acked
        report.duplicates += int(answer.get("duplicates", 0))
        report.refused += len(answer.get("errors", ()))
        if self.window[0] <= started and done <= self.window[1]:
            report.window_requests += 1
            report.window_acked += acked
            self.latencies.append(done - started)

    async def closed_loop(self) -> None:
        start = time.perf_counter()
        self.window = (start + self.load.warmup, start + self.load.warmup + self.load.seconds)

        async def caller() -> None:
            connection = Connection(self.load.url, self.load.key)
            try:
                while time.perf_counter() < self.window[1]:
                    await self.send(connection, self.body())
            finally:
                connection.close()

        await asyncio.gather(*(caller() for _ in range(self.load.concurrency)))
        self.report.window_seconds = self.load.seconds

    async def paced(self) -> None:
        """``rate`` calls a second, on schedule whatever the answers take (open loop), on
        up to ``concurrency`` connections, until stdin closes."""
        # Most recently used last, so a connection idle past the server's keep-alive
        # timeout is closed rather than sent a call the server will not read.
        idle: list[tuple[float, Connection]] = []
        gate = asyncio.Semaphore(self.load.concurrency)
        stop = asyncio.ensure_future(asyncio.to_thread(sys.stdin.read))
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        self.window = (start, float("inf"))

        async def one(body: bytes) -> None:
            async with gate:
                connection = _reuse(idle) or Connection(self.load.url, self.load.key)
                try:
                    await self.send(connection, body)
                finally:
                    idle.append((time.perf_counter(), connection))

        n = 0
        while not stop.done():
            delay = start + n / self.load.rate - time.perf_counter()
            if delay > 0:
                await asyncio.wait([stop], timeout=delay)
                continue
            task = asyncio.create_task(one(self.body()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.gather(*tasks)
        self.report.window_seconds = time.perf_counter() - start
        for _, connection in idle:
            connection.close()

    async def open_loop(self) -> None:
        """``rate`` batch calls a second for ``seconds``; 429s resent after Retry-After
        until ``drain`` seconds after the window (see the module docstring)."""
        load, report = self.load, self.report
        idle: list[tuple[float, Connection]] = []  # most recently used last
        gate = asyncio.Semaphore(load.concurrency)
        start = time.perf_counter()
        end, stop_retrying = start + load.seconds, start + load.seconds + load.drain
        self.window = (start, end)
        answered_all: list[float] = []
        thirds: list[list[float]] = [[], [], []]
        delivery: list[float] = []

        async def call(body: bytes, due: float) -> tuple[int, bytes, int | None]:
            """One call; its status, body and Retry-After (0 status: no answer)."""
            async with gate:
                connection = _reuse(idle) or Connection(load.url, load.key)
                report.requests += 1
                try:
                    status, content = await connection.post(PATHS["open"], body)
                except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                    self.failures[type(exc).__name__] += 1
                    return 0, b"", None
                finally:
                    idle.append((time.perf_counter(), connection))
            done = time.perf_counter()
            in_window = start <= due < end
            if in_window:
                answered_all.append(done - due)
            if status == 200:
                answer = orjson.loads(content)
                acked = int(answer.get("accepted", 0))
                report.ok += 1
                report.acked += acked
                report.duplicates += int(answer.get("duplicates", 0))
                report.refused += len(answer.get("errors", ()))
                if done <= end:
                    report.window_acked += acked
                    report.window_requests += 1
                if in_window:
                    self.latencies.append(done - due)
                    thirds[min(2, int(3 * (due - start) / load.seconds))].append(done - due)
                return status, content, None
            if status != 429:
                self.failures[str(status)] += 1
                return status, content, None
            report.throttled += 1
            seconds = retry_after(connection.head)
            if seconds is not None and seconds >= 1:
                report.throttled_with_retry_after += 1
                report.retry_after_max = max(report.retry_after_max, seconds)
            return status, content, seconds

        async def deliver(body: bytes, first_due: float) -> None:
            due = first_due
            while True:
                status, _, seconds = await call(body, due)
                if status == 200:
                    delivery.append(time.perf_counter() - first_due)
                    return
                if status != 429 or seconds is None or not load.honour_retry_after:
                    return
                due = time.perf_counter() + seconds
                if due > stop_retrying:
                    report.gave_up += 1
                    return
                report.retries += 1
                await asyncio.sleep(max(0.0, due - time.perf_counter()))

        tasks: set[asyncio.Task[None]] = set()
        n = 0
        while (due := start + n / load.rate) < end:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(deliver(self.body(), due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        report.offered, report.offered_messages = n, n * load.batch
        if tasks:
            await asyncio.gather(*tasks)
        report.window_seconds = load.seconds
        report.drain_seconds = max(0.0, time.perf_counter() - end)
        report.p50_all_ms = percentile(answered_all, 0.50) * 1000
        report.p99_all_ms = percentile(answered_all, 0.99) * 1000
        report.p99_thirds_ms = [percentile(third, 0.99) * 1000 for third in thirds]
        report.delivery_p50_ms = percentile(delivery, 0.50) * 1000
        report.delivery_p99_ms = percentile(delivery, 0.99) * 1000
        for _, connection in idle:
            connection.close()

    def finish(self) -> Report:
        report = self.report
        report.failures = dict(self.failures)
        report.p50_ms = percentile(self.latencies, 0.50) * 1000
        report.p99_ms = percentile(self.latencies, 0.99) * 1000
        report.max_ms = max(self.latencies, default=0.0) * 1000
        report.cpu_seconds = time.process_time()
        return report


async def run(load: Load) -> Report:
    loader = _Run(load)
    if load.mode == "paced":
        await loader.paced()
    elif load.mode == "open":
        await loader.open_loop()
    else:
        await loader.closed_loop()
    return loader.finish()


def main(argv: list[str]) -> None:
    load = Load(**orjson.loads(argv[1]))
    report = asyncio.run(run(load))
    sys.stdout.write(orjson.dumps(asdict(report)).decode() + "\n")


# --- the baseline server ----------------------------------------------------------------

echo_app = FastAPI()


@echo_app.get("/healthz")
async def echo_health() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@echo_app.post("/v1/{kind}")
async def echo(kind: str, request: Request) -> Response:
    """Parse the body and answer as the ingestion API does; store nothing."""
    payload = orjson.loads(await request.body())
    count = len(payload.get("batch", ())) if kind == "batch" else 1
    body = {"success": True, "accepted": count, "duplicates": 0}
    return Response(orjson.dumps(body), media_type="application/json")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv)
