"""The FastAPI app factory: one of the composition roots.

Routes get their database session from ``get_session``, a dependency that tests
override; the engine is built here from settings unless one is handed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlmodel import Session

from engine import __version__
from engine.errors import DatabaseError
from engine.settings import Settings
from engine.storage import check_connection, make_engine, session_factory


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, closed after the response."""
    factory: Callable[[], Session] = request.app.state.session_factory
    with factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def create_app(settings: Settings, *, engine: Engine | None = None) -> FastAPI:
    """Build the API for ``settings``; pass ``engine`` to share one (tests do)."""
    db = engine or make_engine(settings.resolved_database_url)
    app = FastAPI(
        title="Stagecoach",
        version=__version__,
        description="Lifecycle marketing automation on durable Temporal workflows.",
    )
    app.state.settings = settings
    app.state.engine = db
    app.state.session_factory = session_factory(db)

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
