"""WeChat sends per second while the access token keeps expiring, and what that costs.

Fifty concurrent senders push rendered messages (four template messages to one
customer-service text) through one ``WeChatConnector`` to the local WeChat peer for a few
seconds, while the peer's tokens expire every second, in two ways:

- ``unannounced``: tokens claim two hours but die at every whole second (the peer's
  ``expire_every``); the connector learns from 42001 answers and renews reactively.
- ``announced``: tokens live one second and say so; the connector renews them before
  they expire.

A send that fails retryably is retried at once, as the delivery activity's retries would.
Printed: sends per second, token expiries, token requests (refreshes), 42001 answers,
retries, latency, and lost or duplicated sends. Asserted: nothing lost or duplicated, and
at most one token request per expiry plus the first. Timings never fail the run.
Run with ``make bench`` or
``pytest tests/bench/test_wechat_throughput.py --run-bench -s``; the run length is
``STAGECOACH_BENCH_WECHAT_SECONDS`` (default 6).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from stagecoach.connectors.wechat import WeChatConfig, WeChatConnector
from stagecoach.engine.domain.content import BUNDLED_CONTENT_DIR, ContentLibrary, RenderContact
from stagecoach.engine.protocol.connector import OutgoingMessage, RetryableDeliveryError
from tests.peers.wechat import running_peer

CONCURRENCY = 50
EXPIRY_SECONDS = 1.0
SECONDS = float(os.environ.get("STAGECOACH_BENCH_WECHAT_SECONDS") or 6)
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
TEMPLATE_ITEM = "wp-digital-transformation"
TEXT_ITEM = "survey-nps"


@dataclass
class Tally:
    attempted: int = 0
    succeeded: int = 0
    retries: int = 0
    gave_up: int = 0
    latencies: list[float] = field(default_factory=list)


async def _interacted_an_hour_ago(contact_id: str) -> datetime | None:
    return NOW - timedelta(hours=1)


def _outgoing(library: ContentLibrary, n: int) -> OutgoingMessage:
    content_id = TEXT_ITEM if n % 5 == 4 else TEMPLATE_ITEM
    openid = f"o-bench-{n:07d}"
    key = f"bench:{n}"
    rendered = library.render(
        content_id,
        channel="wechat",
        locale="zh-CN",
        contact=RenderContact(f"c-{n}", {"first_name": f"用户{n}"}, openid=openid),
        now=NOW,
        signer=None,
        idempotency_key=key,
    )
    return OutgoingMessage(
        channel="wechat",
        to=openid,
        idempotency_key=key,
        contact_id=f"c-{n}",
        rendered=rendered.to_dict(),
    )


async def _sender(
    connector: WeChatConnector,
    library: ContentLibrary,
    numbers: itertools.count[int],
    deadline: float,
    tally: Tally,
) -> None:
    while time.monotonic() < deadline:
        message = _outgoing(library, next(numbers))
        tally.attempted += 1
        started = time.perf_counter()
        for _attempt in range(20):
            try:
                await connector.send(message)
            except RetryableDeliveryError:
                tally.retries += 1
                await asyncio.sleep(0.01)
                continue
            tally.succeeded += 1
            tally.latencies.append(time.perf_counter() - started)
            break
        else:
            tally.gave_up += 1


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


@pytest.mark.bench
@pytest.mark.parametrize("expiry", ["unannounced", "announced"])
async def test_wechat_throughput_while_tokens_expire(expiry: str) -> None:
    library = ContentLibrary.load(BUNDLED_CONTENT_DIR)
    options = (
        {"token_lifetime": 7200.0, "expire_every": EXPIRY_SECONDS}
        if expiry == "unannounced"
        else {"token_lifetime": EXPIRY_SECONDS}
    )
    with running_peer(**options) as peer:
        connector = WeChatConnector(
            WeChatConfig(appid=peer.appid, secret=peer.secret, api_base=peer.url),
            last_interaction=_interacted_an_hour_ago,
            now=lambda: NOW,
        )
        tally = Tally()
        numbers = itertools.count()
        try:
            await connector.tokens.verify()  # the first token is not part of the run
            started = time.monotonic()
            deadline = started + SECONDS
            await asyncio.gather(
                *(_sender(connector, library, numbers, deadline, tally) for _ in range(CONCURRENCY))
            )
            elapsed = time.monotonic() - started
        finally:
            await connector.aclose()
        # Let every token issued reach its end, so each one counts as an expiry.
        await asyncio.sleep(EXPIRY_SECONDS + 0.2)
        accepted = peer.accepted
        expiries = peer.expiries
        token_requests = peer.token_requests
        tokens_issued = peer.tokens_issued
        refused_expired = peer.refused(42001)
        forced = peer.force_refreshes

    per_openid = Counter(m.openid for m in accepted)
    expected = {f"o-bench-{n:07d}" for n in range(tally.attempted)}
    lost = len(expected - set(per_openid))
    duplicated = sum(count - 1 for count in per_openid.values() if count > 1)
    kinds = Counter(m.kind for m in accepted)
    p50, p99 = _percentile(tally.latencies, 0.5), _percentile(tally.latencies, 0.99)
    print(
        f"\nWeChat send throughput, tokens expiring every {EXPIRY_SECONDS:g} s ({expiry}), "
        f"{CONCURRENCY} concurrent senders, {elapsed:.1f} s "
        f"({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"peer in-process on loopback):\n"
        f"  sends accepted: {len(accepted)} ({kinds['template']} template, "
        f"{kinds['custom']} customer-service), {len(accepted) / elapsed:,.0f}/s\n"
        f"  latency per message incl. retries: p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms\n"
        f"  token expiries: {expiries}; token requests (refreshes): {token_requests} "
        f"(tokens issued {tokens_issued}, force refreshes {forced})\n"
        f"  42001 answers: {refused_expired}; retries by the caller: {tally.retries}\n"
        f"  lost sends: {lost}; duplicated: {duplicated}; gave up: {tally.gave_up}"
    )

    assert tally.attempted > 0
    assert tally.gave_up == 0
    assert lost == 0
    assert duplicated == 0
    assert len(accepted) == tally.succeeded == tally.attempted
    assert token_requests <= expiries + 1
