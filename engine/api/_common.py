"""What the API's routers share: reading a bounded body, storing events through the
app's Ingestor (waking the outbox forwarder), and running session work off the loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import OperationalError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from engine.errors import DatabaseError
from engine.ingest import Incoming, Ingestor, Outcome
from engine.storage.db import driver_reason

_T = TypeVar("_T")


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
