"""The FastAPI app factory: one of the composition roots.

Routes get their database session from ``get_session``, a dependency that tests
override; the engine is built here from settings unless one is handed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import Engine
from sqlmodel import Session

from engine import __version__
from engine.errors import DatabaseError
from engine.settings import Settings
from engine.storage import check_connection, make_engine, session_factory

if TYPE_CHECKING:
    from temporalio.client import Client

    from engine.ingest._forwarder import Opener


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, closed after the response."""
    factory: Callable[[], Session] = request.app.state.session_factory
    with factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    temporal: Callable[[], Awaitable[Client]] | None = None,
    opener: Opener | None = None,
) -> FastAPI:
    """Build the API for ``settings``; pass ``engine`` to share one (tests do).

    With ``temporal`` (a client factory) the outbox forwarder runs beside the API and
    sends stored events to contact workflows; ``opener`` (``workflows.runtime.
    ContactOpener``) opens new contacts first and says which event types matter.
    Without ``temporal`` events are stored and wait in the outbox.
    """
    from engine.api.contacts import router as contacts_router
    from engine.api.email_routes import link_signer
    from engine.api.email_routes import router as email_router
    from engine.api.events import WriteKeys
    from engine.api.events import router as events_router
    from engine.api.handoffs import router as handoffs_router
    from engine.api.referrals import router as referrals_router
    from engine.api.wechat_routes import router as wechat_router
    from engine.ingest import Ingestor, relevant_event_types

    db = engine or make_engine(settings.resolved_database_url)
    relevance: dict[str, Any] = {}

    def relevant() -> frozenset[str] | None:
        definitions = getattr(opener, "definitions", None)
        if definitions is None:
            return None  # no definitions known: signal everything
        current = definitions()
        if relevance.get("at") != current.loaded_at:
            relevance.update(at=current.loaded_at, types=relevant_event_types(current))
        types: frozenset[str] = relevance["types"]
        return types

    ingestor = Ingestor(db, relevant=relevant)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = None
        if temporal is not None:
            from engine.ingest._forwarder import Forwarder

            forwarder = Forwarder(db, settings, temporal, opener=opener)
            app.state.forwarder = forwarder
            task = asyncio.create_task(forwarder.run(), name="outbox-forwarder")
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            from engine.api.wechat_routes import drain

            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await drain(app)  # callbacks answered before their events were stored
            await ingestor.close()

    app = FastAPI(
        title="Stagecoach",
        version=__version__,
        description="Lifecycle marketing automation on durable Temporal workflows.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = db
    app.state.session_factory = session_factory(db)
    app.state.ingestor = ingestor
    app.state.write_keys = WriteKeys(db)
    app.state.clock = time.monotonic
    app.state.forwarder = None
    app.state.temporal = temporal  # a client factory, or None when Temporal is not wired
    app.state.link_signer = link_signer(settings)  # an unusable secret fails at start
    app.include_router(events_router)
    app.include_router(wechat_router)
    app.include_router(email_router)
    app.include_router(contacts_router)
    app.include_router(handoffs_router)
    app.include_router(referrals_router)

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Ingestion and outbox counters (Prometheus text format)",
        response_class=PlainTextResponse,
    )
    def metrics() -> PlainTextResponse:
        from engine.ingest._forwarder import backlog

        outbox = backlog(db)
        forwarder = app.state.forwarder
        lines = [
            "# TYPE stagecoach_events_accepted_total counter",
            f"stagecoach_events_accepted_total {ingestor.accepted}",
            "# TYPE stagecoach_events_stored_total counter",
            f"stagecoach_events_stored_total {ingestor.stored}",
            "# TYPE stagecoach_outbox_backlog gauge",
            f"stagecoach_outbox_backlog {outbox['outbox_backlog']}",
            "# TYPE stagecoach_outbox_oldest_seconds gauge",
            f"stagecoach_outbox_oldest_seconds {outbox['outbox_oldest_seconds'] or 0:.3f}",
        ]
        if forwarder is not None:
            lines += [
                "# TYPE stagecoach_outbox_forwarded_total counter",
                f"stagecoach_outbox_forwarded_total {forwarder.stats.forwarded}",
                "# TYPE stagecoach_outbox_failures_total counter",
                f"stagecoach_outbox_failures_total {forwarder.stats.failures}",
            ]
        return PlainTextResponse("\n".join(lines) + "\n")

    @app.get(
        "/healthz",
        tags=["ops"],
        summary="Liveness and database reachability",
        responses={503: {"description": "The database is unreachable"}},
    )
    def healthz() -> JSONResponse:
        body: dict[str, Any] = {"status": "ok", "version": __version__, "database": "ok"}
        try:
            check_connection(db)
        except DatabaseError as exc:
            body.update(status="unavailable", database=exc.one_line())
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    return app
