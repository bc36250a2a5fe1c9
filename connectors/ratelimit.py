"""A per-worker rate limit shared by every concurrent send of one connector.

A token bucket: ``rate`` tokens a second, at most ``burst`` saved up. ``acquire`` waits
until a token is free, so concurrent activities in one worker queue fairly behind one
limit instead of each keeping its own. Across many workers, bound the total with the
task queue's activity rate limit (see the README, "Connectors").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class RateLimiter:
    """``rate`` per second with a burst of ``burst``; ``rate`` of ``None`` means unlimited."""

    def __init__(
        self,
        rate: float | None,
        *,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be positive or None, not {rate!r}")
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, int(rate or 1)))
        self._clock = clock
        self._tokens = self.burst
        self._updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        assert self.rate is not None
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    async def acquire(self) -> None:
        """Wait for one token. Waiters are served in arrival order."""
        if self.rate is None:
            return
        async with self._lock:
            self._refill()
            if self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1
