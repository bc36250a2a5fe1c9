"""Admission control for the ingestion routes: a bounded gate in front of storage.

Without it an overloaded API accepts every call, and the calls it cannot serve pile up
in the event loop: latency grows for as long as the overload lasts, until clients time
out and resend what may already be stored. With it, at most ``concurrency`` calls are
handled at once, at most ``queue`` wait for a slot in arrival order, and a call that
would not get one within ``max_wait`` seconds is answered at once::

    429 Too Many Requests
    Retry-After: 2
    {"success": false, "retryAfter": 2, "errors": [{"field": "load", "message":
     "the API is overloaded: nothing of this call was stored; retry after 2 s with the
      same messageIds"}]}

A refused call is answered before its body is read, so nothing of it is written: a retry
cannot double anything (events are idempotent by ``messageId`` in any case). A call the
gate admits is handled exactly as before; what the API acknowledged is on disk.

When a call must wait, the gate first estimates how long: its place in the queue times
the average time a slot is held (an exponential moving average of handled calls),
divided by ``concurrency``. A call whose estimate is over ``max_wait`` is refused
without waiting, so under overload refusals cost microseconds and accepted calls wait at
most about ``max_wait``. The estimate can only err towards admitting (a slot held
briefly when the API was idle makes it optimistic), and ``max_wait`` still bounds the
wait of any call admitted to the queue. ``Retry-After`` is the time the calls ahead take
to clear at that rate, at least 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from stagecoach.engine import metrics

Reason = Literal["queue_full", "expected_wait", "timeout"]
"""Why a call was refused: the wait queue was full; the calls ahead would take longer
than ``max_wait``; or it waited ``max_wait`` without getting a slot."""

_EWMA = 0.1
"""Weight of the newest slot-hold time in the moving average."""
_MAX_RETRY_AFTER = 60


@dataclass(frozen=True)
class Refusal:
    """A call the gate will not handle now, and when to send it again."""

    reason: Reason
    retry_after: int


class Overloaded(Exception):
    """Raised by :meth:`AdmissionGate.enter`; carries the :class:`Refusal`."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(f"overloaded ({refusal.reason}); retry after {refusal.retry_after} s")
        self.refusal = refusal


class AdmissionGate:
    """At most ``concurrency`` holders at once, ``queue`` waiters, ``max_wait`` seconds.

    ``enter`` takes a slot (waiting in arrival order if none is free) or raises
    :class:`Overloaded`; ``leave`` gives it back, straight to the oldest waiter. One gate
    per app, used from the app's event loop only.
    """

    def __init__(
        self,
        *,
        concurrency: int,
        queue: int,
        max_wait: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1 (0 means no gate: build none)")
        self.concurrency = concurrency
        self.queue = queue
        self.max_wait = max_wait
        self._clock = clock
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._hold = 0.0
        """Moving average of the seconds a slot is held (0 until a call has left)."""

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot now."""
        return len(self._waiters)

    def expected_wait(self, position: int) -> float:
        """Seconds until the call at ``position`` in the queue (1: next) gets a slot."""
        return position * self._hold / self.concurrency

    def retry_after(self) -> int:
        """Whole seconds until the calls in and ahead of the queue have cleared; >= 1."""
        clear = self.expected_wait(self.waiting + self._in_flight)
        if clear <= 0:
            clear = self.max_wait  # nothing measured yet: the longest a waiter waits
        return max(1, min(_MAX_RETRY_AFTER, math.ceil(clear)))

    def _refuse(self, reason: Reason) -> Overloaded:
        return Overloaded(Refusal(reason, self.retry_after()))

    async def enter(self) -> float:
        """Take a slot; returns the clock reading when it was taken (give it to ``leave``).

        Raises:
            Overloaded: no slot within ``max_wait`` (or none expected): nothing was done.
        """
        if self._in_flight < self.concurrency and not self._waiters:
            self._in_flight += 1
            return self._clock()
        position = len(self._waiters) + 1
        if position > self.queue:
            raise self._refuse("queue_full")
        if self.expected_wait(position) > self.max_wait:
            raise self._refuse("expected_wait")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.max_wait):
                await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return self._clock()  # the slot came as the time ran out: keep it
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            raise self._refuse("timeout") from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.leave(None)  # handed a slot, but the caller went away: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        return self._clock()

    def leave(self, entered: float | None) -> None:
        """Give a slot back; ``entered`` (from ``enter``) feeds the hold-time average."""
        if entered is not None:
            held = self._clock() - entered
            self._hold = held if self._hold == 0 else self._hold + _EWMA * (held - self._hold)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to it: in_flight stays
                return
        self._in_flight -= 1

    def snapshot(self) -> dict[str, float]:
        """Gauges for ``/metrics``: slots in use, waiters, and the average hold time."""
        return {
            "in_flight": self._in_flight,
            "waiting": len(self._waiters),
            "concurrency": self.concurrency,
            "hold_seconds": self._hold,
        }


def refusal_body(refusal: Refusal) -> dict[str, Any]:
    """The JSON of a 429: the Segment-style error list, plus ``retryAfter``."""
    return {
        "success": False,
        "retryAfter": refusal.retry_after,
        "errors": [
            {
                "field": "load",
                "message": "the API is overloaded: nothing of this call was stored; retry "
                f"after {refusal.retry_after} s with the same messageIds",
            }
        ],
    }


OVERLOADED_RESPONSES: dict[int | str, dict[str, Any]] = {
    429: {
        "description": "Overloaded: nothing was stored. Retry after the Retry-After "
        "header's seconds with the same messageIds (STAGECOACH_INGEST_* settings)",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before retrying (an integer, at least 1)",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    }
}
"""The 429 in OpenAPI, for the routes behind the gate."""


class AdmissionMiddleware:
    """ASGI middleware: ``POST`` calls to ``paths`` pass through ``gate``; others go by.

    A pure ASGI middleware rather than a dependency, so that a refusal costs no routing,
    no request object and no body read: under overload most calls are refusals.
    """

    def __init__(self, app: ASGIApp, *, gate: AdmissionGate, paths: Iterable[str]) -> None:
        self.app = app
        self.gate = gate
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not self._gated(scope):
            await self.app(scope, receive, send)
            return
        try:
            entered = await self.gate.enter()
        except Overloaded as exc:
            metrics.count_ingest_refused(exc.refusal.reason)
            await _answer_429(send, exc.refusal)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.leave(entered)

    def _gated(self, scope: Scope) -> bool:
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return path in self.paths


async def _answer_429(send: Send, refusal: Refusal) -> None:
    body = orjson.dumps(refusal_body(refusal))
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(refusal.retry_after).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
