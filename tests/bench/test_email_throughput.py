"""Emails per second from one worker's SMTP connector: pooled sessions vs one per message.

Both runs use the same ``SmtpConnector`` with the same concurrency (``pool_size``
sessions at once) against the same aiosmtpd peer; the baseline sets
``max_messages_per_session=1``, so every message pays connect, greeting, EHLO (and
STARTTLS and AUTH when on) and QUIT, as a connector without a pool would. The messages
are rendered before timing (rendering has its own benchmark), so the figures are the
connector's: MIME to bytes, the rate of SMTP transactions, the pool.

The peer runs in a subprocess (``python -m tests.peers.smtp``), so the server has its
own interpreter and GIL and does not take CPU time from the client being measured; on a
machine with one core they still share it. Two configurations are measured: plain SMTP
and STARTTLS with AUTH (what a production relay asks for, where a fresh session costs a
TLS handshake). Goal from the issue: at least 300 messages/s from one worker and at least
5x the one-session-per-message baseline. Timings are printed, not asserted; each run
asserts that every message arrived exactly once.

Run with ``make bench`` or
``pytest tests/bench/test_email_throughput.py --run-bench -s``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.smtp import SmtpConfig, SmtpConnector, prepare_email
from engine.bounces import key_digest
from engine.content import BUNDLED_CONTENT_DIR, ContentLibrary, LinkSigner, RenderContact
from engine.delivery import OutgoingMessage
from tests.bench._support import env_int, machine

ROOT = Path(__file__).resolve().parents[2]
COUNT = env_int("STAGECOACH_BENCH_EMAILS", 1500)
POOL = env_int("STAGECOACH_BENCH_SMTP_POOL", 8)
LATENCY_MS = 5.0
DISTANT_COUNT = max(COUNT // 6, 50)
FROM = "Northwind IoT <news@northwind.example>"
NOW = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
USER, PASSWORD = "bench", "bench-password"


class PeerProcess:
    """The SMTP test peer in a child interpreter, driven over its stdin/stdout."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.peers.smtp", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = self._read()
        self.port: int = hello["port"]
        self.cafile: str | None = hello["cafile"]

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the SMTP peer exited with {self.process.poll()}"
        data: dict[str, Any] = json.loads(line)
        return data

    def command(self, name: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(name + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def plain_peer() -> Iterator[PeerProcess]:
    peer = PeerProcess()
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def tls_peer() -> Iterator[PeerProcess]:
    peer = PeerProcess("--tls", "starttls", "--auth", f"{USER}:{PASSWORD}")
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def distant_peer() -> Iterator[PeerProcess]:
    peer = PeerProcess(
        "--tls", "starttls", "--auth", f"{USER}:{PASSWORD}", "--latency-ms", str(LATENCY_MS)
    )
    yield peer
    peer.close()


def messages(count: int, run: str) -> list[OutgoingMessage]:
    library = ContentLibrary.load(BUNDLED_CONTENT_DIR)
    signer = LinkSigner(os.urandom(32), "https://mkt.example.com", timedelta(days=60))
    out = []
    for n in range(count):
        key = f"c-{n}:b2b_nurture:v1:case_study:{run}"
        rendered = library.render(
            "case-study-manufacturing",
            channel="email",
            locale="en",
            contact=RenderContact(f"c-{n}", {"first_name": f"Name{n}", "company": "Plant & Co"}),
            now=NOW,
            signer=signer,
            idempotency_key=key,
        )
        out.append(
            OutgoingMessage(
                channel="email",
                to=f"person{n}@example.com",
                idempotency_key=key,
                contact_id=f"c-{n}",
                rendered=rendered.to_dict(),
            )
        )
    return out


@dataclass
class Run:
    count: int
    seconds: float
    sessions: int

    @property
    def rate(self) -> float:
        return self.count / self.seconds


async def measure(
    peer: PeerProcess, settings: SmtpConfig, label: str, batch: list[OutgoingMessage]
) -> Run:
    peer.command("reset")
    async with SmtpConnector(settings) as smtp:
        # Warm up outside the timing: the first session, the TLS context.
        await smtp.send(batch[0])
        started = time.perf_counter()
        await asyncio.gather(*(smtp.send(m) for m in batch[1:]))
        seconds = time.perf_counter() - started
    stats = peer.command("stats")
    expected = {key_digest(m.idempotency_key) for m in batch}
    assert stats["accepted"] == len(batch), f"{label}: {stats['accepted']} of {len(batch)}"
    assert set(stats["copies"]) == expected, f"{label}: wrong messages arrived"
    assert set(stats["copies"].values()) == {1}, f"{label}: a message arrived twice"
    return Run(len(batch) - 1, seconds, stats["sessions"])


def settings(peer: PeerProcess, *, tls: bool, per_message: bool) -> SmtpConfig:
    return SmtpConfig(
        host="127.0.0.1",
        port=peer.port,
        security="starttls" if tls else "none",
        username=USER if tls else None,
        password=PASSWORD if tls else None,
        ca_file=peer.cafile,
        from_addr=FROM,
        local_hostname="worker.stagecoach.bench",
        pool_size=POOL,
        max_messages_per_session=1 if per_message else 100,
        timeout=30,
    )


def mime_seconds(batch: list[OutgoingMessage]) -> float:
    """CPU time the connector spends building wire bytes for ``batch`` (no I/O)."""
    started = time.perf_counter()
    for message in batch:
        prepare_email(message, from_addr=FROM)
    return time.perf_counter() - started


@pytest.mark.bench
async def test_email_throughput(
    plain_peer: PeerProcess, tls_peer: PeerProcess, distant_peer: PeerProcess
) -> None:
    sample = messages(COUNT, "m")
    mime = mime_seconds(sample) / COUNT
    lines = [
        f"\nemail throughput, one SmtpConnector, case-study-manufacturing/en "
        f"({len(sample[0].rendered['html']) // 1024} KB HTML), {POOL} concurrent sessions, "
        "peer (aiosmtpd) in a subprocess",
        f"  machine: {machine()}",
        f"  building the wire bytes alone (prepare_email): {mime * 1e6:,.0f} us/message, "
        f"a ceiling of {1 / mime:,.0f} msg/s on one core",
    ]
    rows = (
        ("plain SMTP, loopback", plain_peer, False, COUNT),
        ("STARTTLS+AUTH, loopback", tls_peer, True, COUNT),
        (f"STARTTLS+AUTH, {LATENCY_MS:g} ms per reply", distant_peer, True, DISTANT_COUNT),
    )
    for name, peer, tls, count in rows:
        pooled = await measure(
            peer, settings(peer, tls=tls, per_message=False), name, messages(count + 1, "p")
        )
        baseline = await measure(
            peer, settings(peer, tls=tls, per_message=True), name, messages(count + 1, "b")
        )
        lines.append(
            f"  {name:<32} {count:>5} msgs   pooled {pooled.rate:6,.0f} msg/s "
            f"({pooled.sessions:>4} sessions)   one session per message {baseline.rate:6,.0f} "
            f"msg/s ({baseline.sessions:>4} sessions)   ratio {pooled.rate / baseline.rate:4.1f}x"
        )
    print("\n".join(lines))
