"""The HTTP application: the API's routes and the dashboard's pages, mounted together.

It sits above both ``stagecoach.engine.api`` and ``stagecoach.engine.dashboard`` (which uses the
API's dependencies and sessions), so neither imports the other back.

Routes get their database session from ``stagecoach.engine.api.deps.get_session``, a dependency
that tests override; the Engine (``app.state.db``) is built from settings unless one is handed in.
The routers import their dependencies from ``stagecoach.engine.api.deps``, never this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from stagecoach.engine import __version__
from stagecoach.engine.api._admission import (
    OVERLOADED_RESPONSES,
    AdmissionGate,
    AdmissionMiddleware,
)
from stagecoach.engine.api._common import database_unavailable
from stagecoach.engine.api._docs import install_docs
from stagecoach.engine.api._pages import Pages
from stagecoach.engine.api.auth import ADMIN_RESPONSES, require_admin
from stagecoach.engine.api.routes.broadcasts import reports_router as broadcast_reports_router
from stagecoach.engine.api.routes.broadcasts import router as broadcasts_router
from stagecoach.engine.api.routes.codec import codec_router
from stagecoach.engine.api.routes.contacts import router as contacts_router
from stagecoach.engine.api.routes.events import WriteKeys, keys_router
from stagecoach.engine.api.routes.events import router as events_router
from stagecoach.engine.api.routes.handoffs import router as handoffs_router
from stagecoach.engine.api.routes.postmark_webhook import router as postmark_router
from stagecoach.engine.api.routes.prediction import router as prediction_router
from stagecoach.engine.api.routes.preference_pages import router as preference_router
from stagecoach.engine.api.routes.referrals import router as referrals_router
from stagecoach.engine.api.routes.reports import router as reports_router
from stagecoach.engine.api.routes.segments import router as segments_router
from stagecoach.engine.api.routes.tracking import router as tracking_router
from stagecoach.engine.api.routes.value import router as value_router
from stagecoach.engine.api.routes.wechat import drain
from stagecoach.engine.api.routes.wechat import router as wechat_router
from stagecoach.engine.dashboard import dashboard_router, default_reports
from stagecoach.engine.domain.errors import DatabaseError
from stagecoach.engine.metrics import (
    AdmissionCollector,
    OutboxCollector,
    registry_with,
    render,
)
from stagecoach.engine.services.analytics.service import reports_for
from stagecoach.engine.services.analytics.store import default_path
from stagecoach.engine.services.ingest import Ingestor, relevant_event_types
from stagecoach.engine.services.leases import ERASURES, follow, generation
from stagecoach.engine.services.links import link_signer
from stagecoach.engine.services.storage import check_connection, make_engine, session_factory
from stagecoach.engine.settings import Settings

if TYPE_CHECKING:
    from temporalio.client import Client

    from stagecoach.engine.protocol.connector import Connector
    from stagecoach.engine.services.ingest._forwarder import Opener


_bearer = HTTPBearer(auto_error=False)


async def metrics_access(request: Request) -> None:
    """``/metrics`` takes the admin token, unless ``STAGECOACH_METRICS_PUBLIC`` says the
    port is private: the counters name sources, teams and volumes, and the API is
    reachable from the internet (webhooks, tracking links, browsers)."""
    if request.app.state.settings.metrics_public:
        return
    try:
        require_admin(request, await _bearer(request))
    except HTTPException as exc:
        if exc.status_code != 503:
            raise
        raise HTTPException(
            503,
            detail="/metrics needs the admin token and STAGECOACH_ADMIN_TOKEN is not set: "
            "set it and scrape with 'Authorization: Bearer <token>', or set "
            "STAGECOACH_METRICS_PUBLIC=true when only Prometheus can reach this port",
        ) from exc


def admission_gate(settings: Settings) -> AdmissionGate | None:
    """The ingestion routes' admission gate, or None when ``ingest_concurrency`` is 0."""
    if settings.ingest_concurrency == 0:
        return None
    return AdmissionGate(
        concurrency=settings.ingest_concurrency,
        queue=settings.ingest_queue,
        max_wait=settings.ingest_max_wait,
    )


def _in_memory(db: Engine) -> bool:
    return db.url.get_backend_name() == "sqlite" and db.url.database in (None, "", ":memory:")


def resync_copy(app: FastAPI) -> None:
    """Sync this replica's analytics copy now, if it has one: another replica erased a
    person, and the copy must forget them too. A replica that never served a report has
    no copy, and is not made to build one."""
    settings: Settings = app.state.settings
    path = settings.analytics_path or default_path(settings.data_dir)
    if path.exists():
        app.state.reports.sync_soon(app.state.db)


def create_app(
    settings: Settings,
    *,
    db: Engine | None = None,
    temporal: Callable[[], Awaitable[Client]] | None = None,
    opener: Opener | None = None,
    connectors: Callable[[], Mapping[str, Connector]] | None = None,
) -> FastAPI:
    """Build the API for ``settings``; pass ``db`` (an Engine) to share one (tests do).

    With ``temporal`` (a client factory) the outbox forwarder runs beside the API and
    sends stored events to contact workflows; ``opener`` (``stagecoach.workflows.runtime.
    ContactOpener``) opens new contacts first and says which event types matter.
    Without ``temporal`` events are stored and wait in the outbox.

    ``connectors`` (a factory, called on first use) gives the channels' connectors for
    what the API itself sends: a broadcast's test send to seed addresses. Without it
    those routes answer 503 naming the fix.
    """
    db = db or make_engine(settings.resolved_database_url)
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
        # An erasure served by another replica reaches this one's analytics copy too; a
        # copy kept from before a restart catches up at once (erasures meanwhile). An
        # in-memory database has no other replica (and one connection for every thread).
        follower = None
        if not _in_memory(db):
            seen = None
            with contextlib.suppress(Exception):  # no database yet: the first check will do
                seen = await asyncio.to_thread(generation, db, ERASURES)
                await asyncio.to_thread(resync_copy, app)
            follower = asyncio.create_task(
                follow(db, ERASURES, settings.lease_seconds, lambda: resync_copy(app), seen=seen),
                name="analytics-erasures",
            )
        if temporal is not None:
            from stagecoach.engine.services.ingest._forwarder import Forwarder
            from stagecoach.engine.services.leases import Leases

            # Every replica runs one: leases split the outbox (docs/operations/replicas.md).
            # An in-memory database has no other replica to split it with.
            leases = None if _in_memory(db) else Leases(db, ttl=settings.lease_seconds)
            forwarder = Forwarder(db, settings, temporal, opener=opener, leases=leases)
            app.state.forwarder = forwarder
            task = asyncio.create_task(forwarder.run(), name="outbox-forwarder")
        try:
            yield
        finally:
            for running in (task, follower):
                if running is not None:
                    running.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await running
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await drain(app)  # callbacks answered before their events were stored
            await ingestor.close()

    app = FastAPI(
        title="Stagecoach",
        version=__version__,
        description="Lifecycle marketing automation on durable Temporal workflows.",
        lifespan=lifespan,
        docs_url=None,  # served by install_docs, with Swagger UI from this API, not a CDN
        redoc_url=None,
    )
    install_docs(app)
    # A database locked past its busy timeout or unreachable is a 503 to retry, not a 500.
    app.add_exception_handler(OperationalError, database_unavailable)
    app.add_exception_handler(DatabaseError, database_unavailable)
    app.state.settings = settings
    app.state.db = db
    app.state.session_factory = session_factory(db)
    app.state.ingestor = ingestor
    app.state.write_keys = WriteKeys(
        db, settings.write_key_cache_seconds, size=settings.write_key_cache_size
    )
    app.state.clock = time.monotonic
    app.state.forwarder = None
    app.state.temporal = temporal  # a client factory, or None when Temporal is not wired
    app.state.connectors = connectors  # a factory, or None: the API sends nothing itself
    app.state.link_signer = link_signer(settings)  # an unusable secret fails at start
    # Incomplete page templates fail at start, not on a reader's unsubscribe link.
    app.state.pages = Pages.for_content(settings.resolved_content_dir)
    # Admission control in front of the ingestion routes only (see _admission): the
    # WeChat callback, tracking links and feedback must be answered, never told to wait.
    gate = admission_gate(settings)
    app.state.admission = gate
    if gate is None:
        app.include_router(events_router)
    else:
        app.include_router(events_router, responses=OVERLOADED_RESPONSES)
        app.add_middleware(
            AdmissionMiddleware,
            gate=gate,
            paths=[route.path for route in events_router.routes if isinstance(route, APIRoute)],
        )
    app.include_router(wechat_router)
    app.include_router(preference_router)
    app.include_router(tracking_router)
    app.include_router(postmark_router)
    app.include_router(contacts_router)
    app.include_router(keys_router)
    app.include_router(handoffs_router)
    app.include_router(referrals_router)
    app.include_router(reports_router)
    app.include_router(prediction_router)
    app.include_router(segments_router)
    app.include_router(broadcasts_router)
    app.include_router(broadcast_reports_router)
    app.include_router(value_router)
    # One report cache for the dashboard and /v1/reports: each report computed once per copy.
    app.state.reports = reports_for(settings, defaults=default_reports)
    app.include_router(dashboard_router(settings, numbers=app.state.reports))
    app.include_router(codec_router(settings))  # the payload keys: a bad one fails at start

    def outbox() -> dict[str, Any]:
        from stagecoach.engine.services.ingest._forwarder import backlog

        return backlog(db)

    collectors: list[Collector] = [OutboxCollector(outbox)]  # the outbox: at scrape time
    if gate is not None:
        collectors.append(AdmissionCollector(gate.snapshot))
    exported = registry_with(*collectors)

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics: ingestion, outbox, process",
        description="Needs the admin bearer token unless STAGECOACH_METRICS_PUBLIC=true "
        "(for an API port only Prometheus can reach). See docs/ops.md.",
        response_class=PlainTextResponse,
        responses=ADMIN_RESPONSES,
        dependencies=[Depends(metrics_access)],
    )
    def metrics(request: Request) -> Response:
        body, content_type = render(exported, request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

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
