"""What the API's routers share: reading a bounded body, storing events through the
app's Ingestor (waking the outbox forwarder), running session work off the loop, who the
client is, and throttling its failed authentications."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import structlog
from cachetools import TTLCache
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import OperationalError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from stagecoach.engine.domain.errors import DatabaseError
from stagecoach.engine.services.ingest import Incoming, Ingestor, Outcome
from stagecoach.engine.services.storage.db import driver_reason

_T = TypeVar("_T")
_log = structlog.get_logger("stagecoach.api")

DATABASE_RETRY_AFTER = 5
"""Seconds a client is told to wait when the database could not take a call."""
THROTTLED_CLIENTS = 100_000
"""Clients whose recent failures are remembered; past that the least recently seen go."""


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is over ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def ingest(app: FastAPI, messages: Sequence[Incoming]) -> list[Outcome]:
    """Store ``messages`` through the app's Ingestor; wake the forwarder if any matters.

    Raises:
        DatabaseError: nothing was stored; the caller answers 503.
    """
    ingestor: Ingestor = app.state.ingestor
    outcomes = await ingestor.accept(messages)
    forwarder = getattr(app.state, "forwarder", None)
    if forwarder is not None and any(o.signalled for o in outcomes):
        forwarder.wake()
    return outcomes


async def in_thread(session: Session, call: Callable[..., _T], *args: Any) -> _T:
    """``call(session, *args)`` off the event loop, its transaction ended after it (the
    Ingestor then writes on its own connection); driver errors become ``DatabaseError``,
    answered 503, never 500."""

    def run() -> _T:
        try:
            result = call(session, *args)
            session.commit()
        except BaseException:
            session.rollback()
            raise
        return result

    try:
        return await run_in_threadpool(run)
    except (OperationalError, SADatabaseError) as exc:
        raise DatabaseError(
            f"the database did not answer: {driver_reason(exc)}",
            fix="retry; the request is idempotent",
        ) from exc


async def ingest_one(request: Request, incoming: Incoming) -> Outcome:
    """:func:`ingest` for one event of this request."""
    [outcome] = await ingest(request.app, [incoming])
    return outcome


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The app's answer to a database failure no route turned into its own answer: 503
    with ``Retry-After``, never 500. The database was locked past its busy timeout,
    unreachable or restarting (a write-key lookup, a definitions reload): the call can be
    repeated, and calls carrying a ``messageId`` are stored once however often they are.

    Registered for SQLAlchemy's ``OperationalError`` and for ``DatabaseError``."""
    if isinstance(exc, DatabaseError):
        message = exc.one_line()
    else:
        reason = driver_reason(exc) if isinstance(exc, OperationalError) else str(exc)
        message = DatabaseError(
            f"the database did not answer: {reason}",
            fix=f"retry in {DATABASE_RETRY_AFTER} s; a request with a messageId is safe to repeat",
        ).one_line()
    _log.warning(
        "database unavailable", method=request.method, path=request.url.path, error=message
    )
    return JSONResponse(
        {
            "success": False,
            "detail": message,
            "errors": [{"field": "database", "message": message}],
        },
        status_code=503,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
    )


def client_address(request: Request) -> str:
    """Who is asking, for throttling and logs: the TCP peer, or the client a trusted
    proxy named (uvicorn rewrites the peer only for ``STAGECOACH_TRUSTED_PROXIES``)."""
    return request.client.host if request.client else ""


class FailureThrottle:
    """Failed authentications per client over a sliding window.

    A bounded, expiring map (``cachetools.TTLCache``: maintained, and it evicts by age and
    by size, so a flood of addresses costs a fixed amount of memory) from client to the
    times of its last ``limit`` failures.

    Args:
        limit: Failures allowed within ``window``; the next attempt is refused.
        window: Seconds a failure counts.
        clock: Monotonic seconds (the app's clock, which tests move).
        clients: Clients remembered at most.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        clock: Callable[[], float],
        clients: int = THROTTLED_CLIENTS,
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: TTLCache[str, deque[float]] = TTLCache(
            maxsize=clients, ttl=window, timer=clock
        )

    def retry_after(self, client: str) -> int:
        """Seconds ``client`` must wait before its next attempt is looked at; 0: now."""
        now = self._clock()
        with self._lock:
            times = self._failures.get(client)
            if times is None or len(times) < self.limit:
                return 0
            wait = times[0] + self.window - now
        return max(1, math.ceil(wait)) if wait > 0 else 0

    def failed(self, client: str) -> None:
        """Count one failure of ``client``."""
        now = self._clock()
        with self._lock:
            times = self._failures.get(client) or deque(maxlen=self.limit)
            times.append(now)
            self._failures[client] = times  # re-set: the entry's age starts again


_THROTTLE_LOCK = threading.Lock()


def failure_throttle(request: Request) -> FailureThrottle:
    """The app's one throttle (``app.state.auth_throttle``), shared by the dashboard and
    codec sign-ins and the admin bearer API, made from its settings on first use."""
    state = request.app.state
    throttle: FailureThrottle | None = getattr(state, "auth_throttle", None)
    if throttle is None:
        with _THROTTLE_LOCK:
            throttle = getattr(state, "auth_throttle", None)
            if throttle is None:
                settings = state.settings
                throttle = FailureThrottle(
                    settings.auth_failure_limit,
                    settings.auth_failure_window,
                    clock=getattr(state, "clock", None) or time.monotonic,
                )
                state.auth_throttle = throttle
    return throttle


def too_many_failures(retry_after: int) -> str:
    """What a throttled client is told."""
    return (
        f"too many wrong admin tokens from this address: wait {retry_after} s (Retry-After) "
        "and send the right one"
    )
