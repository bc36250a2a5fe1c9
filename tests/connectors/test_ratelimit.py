"""The per-worker rate limit shared by concurrent sends of one connector."""

from __future__ import annotations

import asyncio
import time

import pytest

from stagecoach.connectors.ratelimit import RateLimiter


async def _elapsed(limiter: RateLimiter, calls: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(limiter.acquire() for _ in range(calls)))
    return time.perf_counter() - started


async def test_concurrent_acquires_share_one_limit() -> None:
    # 20/s with a burst of 5: 25 acquires need at least (25 - 5) / 20 = 1 s.
    limited = await _elapsed(RateLimiter(20, burst=5), 25)
    unlimited = await _elapsed(RateLimiter(None), 25)
    assert limited >= 0.95
    assert unlimited < limited


def test_a_non_positive_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        RateLimiter(0)
