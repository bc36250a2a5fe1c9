"""What routes ask FastAPI for: the request's database session, the link signer, the
Temporal client. Every router imports its dependencies from here, never from the app
factory (``stagecoach.engine.app``), which imports the routers: the arrows point one way.

Each dependency reads what the app factory put on ``app.state``; tests override them
with ``app.dependency_overrides`` like any FastAPI dependency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Path, Request
from sqlmodel import Session

from stagecoach.engine.domain.content import LinkSigner, TokenInvalid
from stagecoach.engine.domain.errors import StagecoachError, TemporalUnavailable
from stagecoach.engine.services.links import link_signer

if TYPE_CHECKING:
    from temporalio.client import Client

    from stagecoach.engine.protocol.connector import Connector

CONNECT_TIMEOUT = 10.0
"""Seconds the first request that needs Temporal waits for the client to connect."""


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, closed after the response."""
    factory: Callable[[], Session] = request.app.state.session_factory
    with factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_signer(request: Request) -> LinkSigner:
    """The app's link signer (``app.state.link_signer``), built from settings on first use."""
    signer: LinkSigner | None = getattr(request.app.state, "link_signer", None)
    if signer is None:
        try:
            signer = link_signer(request.app.state.settings)
        except TokenInvalid as exc:
            raise HTTPException(503, f"links cannot be checked: {exc.one_line()}") from exc
        request.app.state.link_signer = signer
    return signer


SignerDep = Annotated[LinkSigner, Depends(get_signer)]

TokenPath = Annotated[
    str,
    Path(
        description="The signed token from the link, exactly as sent: <payload>.<mac>.",
        examples=[
            "eyJjIjoiY18xIiwibSI6Im5ld3NsZXR0ZXItbW9udGhseSIsImV4cCI6MTc5OTk5OTk5OX0"
            ".Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eHF1dXh"
        ],
    ),
]
"""A signed link's token in the path (``/u/{token}``, ``/t/c/{token}``)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def temporal_client(request: Request) -> Client | None:
    """The app's Temporal client (None when the API runs without Temporal), made once
    from ``app.state.temporal`` and kept in ``app.state.temporal_client``.

    Raises:
        TemporalUnavailable: the factory failed or took over :data:`CONNECT_TIMEOUT`.
    """
    factory = getattr(request.app.state, "temporal", None)
    if factory is None:
        return None
    client: Client | None = getattr(request.app.state, "temporal_client", None)
    if client is None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                client = await factory()
        except TemporalUnavailable:
            raise
        except Exception as exc:  # a foreign factory: this is its one translation point
            raise TemporalUnavailable(
                f"cannot reach Temporal: {_first_line(exc)}",
                fix="check that Temporal is running and STAGECOACH_TEMPORAL_ADDRESS",
            ) from exc
        request.app.state.temporal_client = client
    return client


async def connectors(request: Request) -> Mapping[str, Connector] | None:
    """The channels' connectors (by channel), built once from ``app.state.connectors``
    (a factory the composition root hands ``create_app``) and kept in
    ``app.state.connector_map``; None when the API was built without connectors.

    Raises:
        HTTPException: 503 when the factory fails (a connector's settings are wrong).
    """
    built: Mapping[str, Connector] | None = getattr(request.app.state, "connector_map", None)
    if built is not None:
        return built
    factory: Callable[[], Mapping[str, Connector]] | None = getattr(
        request.app.state, "connectors", None
    )
    if factory is None:
        return None
    try:
        built = dict(factory())
    except StagecoachError as exc:
        raise HTTPException(503, detail=exc.one_line()) from exc
    request.app.state.connector_map = built
    return built
