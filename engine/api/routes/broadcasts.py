"""``/v1/broadcasts``: one-off campaigns to a segment, created, previewed, test-sent,
launched, steered and reported over HTTP.

Every route needs the admin bearer token (:func:`stagecoach.engine.api.auth.require_admin`).
The routes are the HTTP face of ``stagecoach.engine.services.broadcasts``; the CLI's
``stagecoach broadcasts`` commands go through the same functions, so both answer alike.

``GET /v1/broadcasts``
    Every broadcast, newest first, with its report's numbers.
``POST /v1/broadcasts``
    Create (or replace) a draft from JSON. The spec is checked when it is created, not
    only at launch: an unknown segment or content item, a send time in the past, a
    content item without a variant for a locale in the audience, or a spec that cannot
    be (a bad A/B test) is **422** naming the field and the fix, and nothing is kept.
    The same spec again is **200** (nothing changes); another spec under the name of a
    launched broadcast is **409**.
``GET /v1/broadcasts/{id}``
    The spec and the report.
``GET /v1/broadcasts/{id}/preview?sample=N``
    The audience as it is now (size, locales, zones, a sample) and what would stop a
    launch.
``POST /v1/broadcasts/{id}/test-send``
    The content (each A/B arm's) to seed addresses now, through the channel's connector;
    no delivery record, no effect on caps.
``POST /v1/broadcasts/{id}/schedule``
    Launch: **202** with ``"first": true``; a repeat is **200** with the first launch's
    answer and ``"first": false`` (nothing starts twice). Problems are **422** with
    ``problems``, and nothing is sent.
``POST /v1/broadcasts/{id}/pause``, ``.../resume``, ``.../cancel``
    Signals the broadcast's workflow acts on between batches (**202**); **409** when
    the broadcast is a draft or has finished.
``GET /v1/broadcasts/{id}/report``
    Sent, held back by reason, engagement, conversions, the A/B decision, WeChat jobs.
``GET /v1/reports/broadcasts?format=json|csv``
    Every broadcast's numbers, as ``stagecoach report broadcasts`` gives them.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from stagecoach.engine.api.auth import ADMIN_RESPONSES, require_admin
from stagecoach.engine.api.deps import connectors, get_signer, temporal_client
from stagecoach.engine.domain.addresses import AddressError, parse_email
from stagecoach.engine.domain.broadcasts import (
    CHANNELS,
    ABTest,
    Broadcast,
    BroadcastError,
    Variant,
)
from stagecoach.engine.domain.content import ContentError, ContentLibrary
from stagecoach.engine.domain.errors import ConfigurationError, TemporalUnavailable
from stagecoach.engine.services.broadcasts import launch as steer
from stagecoach.engine.services.broadcasts import store
from stagecoach.engine.services.broadcasts.metrics import broadcast_report, broadcast_reports
from stagecoach.engine.services.broadcasts.preview import (
    content_catalogue,
    preview,
    send_to_seeds,
)
from stagecoach.engine.services.project import load_project
from stagecoach.engine.services.storage.models import BroadcastRow

if TYPE_CHECKING:
    from temporalio.client import Client

router = APIRouter(
    prefix="/v1/broadcasts",
    tags=["broadcasts"],
    dependencies=[Depends(require_admin)],
    responses=ADMIN_RESPONSES,
)
reports_router = APIRouter(
    prefix="/v1/reports",
    tags=["reports"],
    dependencies=[Depends(require_admin)],
    responses=ADMIN_RESPONSES,
)

MAX_SEEDS = 50
"""Seed addresses one test send may name: a team's own inboxes, not a list."""

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {
        "description": "No broadcast has this id",
        "content": {
            "application/json": {
                "example": {
                    "detail": "no broadcast 'dec-news'. Fix: list them with 'stagecoach"
                    " broadcasts list'"
                }
            }
        },
    }
}
_PROBLEMS_EXAMPLE = {
    "detail": "broadcast 'dec-news': segment 'vip' is unknown; use one of: newsletter-readers",
    "problems": [
        "broadcast 'dec-news': segment 'vip' is unknown; use one of: newsletter-readers",
        "broadcast 'dec-news': send_at 2020-01-05T09:00:00+08:00 is in the past; give a"
        " later time, or leave it out to send at launch",
    ],
}
_UNPROCESSABLE: dict[int | str, dict[str, Any]] = {
    422: {
        "description": "The broadcast cannot be: each problem names the field and the fix,"
        " and nothing was kept or sent. A body that does not parse (a missing field, a"
        " send_at without a zone) is answered in FastAPI's validation form, each error with"
        " its `loc` (the field) and `msg`.",
        "content": {"application/json": {"example": _PROBLEMS_EXAMPLE}},
    }
}
_STEER_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "The broadcast is a draft (schedule it first) or has finished",
        "content": {
            "application/json": {
                "example": {
                    "detail": "broadcast 'dec-news' is completed: it cannot be cancelled."
                    " Fix: see where it is with 'stagecoach broadcasts show dec-news'"
                }
            }
        },
    }
}

IdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        description="The broadcast's id (its name)",
        examples=["dec-news"],
    ),
]
ActorQuery = Annotated[
    str,
    Query(min_length=1, max_length=128, description="Who does this, recorded with the broadcast"),
]


# --- request models -----------------------------------------------------------------------


MAX_SECONDS = 366 * 86400
"""The longest A/B window or attribution window a broadcast may declare: a year."""


class VariantIn(BaseModel):
    name: str = Field(min_length=1, max_length=64, description="The arm's name", examples=["a"])
    content: str | None = Field(
        default=None, description="A content item id; null sends the broadcast's own content"
    )
    subject: str | None = Field(
        default=None, description="An email subject replacing the content's; null keeps it"
    )


class ABIn(BaseModel):
    """Variants to a sample first; after the window the winner goes to everyone else."""

    variants: list[VariantIn] = Field(description="Two or more arms")
    default: str = Field(description="The arm the rest get when no arm wins significantly")
    sample: float = Field(
        default=0.1, description="The fraction of the audience each arm gets (0.1: 2 x 10%)"
    )
    window_seconds: int = Field(
        default=4 * 3600,
        gt=0,
        le=MAX_SECONDS,
        description="Seconds after the sample's sends the metric is read (at most a year)",
    )
    metric: str = Field(default="clicked", description="opened, clicked or event:<type>")
    alpha: float = Field(default=0.05, description="The significance level of the test")


class BroadcastIn(BaseModel):
    """A broadcast as JSON: what ``Broadcast(...)`` takes in a project."""

    name: str = Field(
        description="Unique: lowercase letters, digits, '-' and '_' (at most 64); the id",
        examples=["dec-news"],
    )
    segment: str = Field(description="The audience: a published segment's name")
    content: str = Field(description="The content item sent")
    channel: str = Field(default="email", description=f"One of {', '.join(CHANNELS)}")
    description: str = ""
    send_at: datetime | None = Field(
        default=None,
        description="When sending starts, ISO 8601 with a zone (2027-01-05T09:00:00+08:00);"
        " null sends at launch. With local_time, only its date is read.",
    )
    local_time: time | None = Field(
        default=None, description="Send at this wall time (09:00) in each recipient's zone"
    )
    when_passed: Literal["send", "skip"] = Field(
        default="send",
        description="Local-time sends: a recipient whose time has passed at launch is sent"
        " at once (send) or skipped (skip)",
    )
    override_caps: bool = Field(
        default=False, description="Transactional notices only: sent despite the frequency cap"
    )
    seeds: list[str] = Field(default_factory=list, description="Default test-send addresses")
    conversion: str | None = Field(
        default=None, description="An event type counted as a conversion in the report"
    )
    attribution_seconds: int = Field(
        default=7 * 86400,
        gt=0,
        le=MAX_SECONDS,
        description="Seconds after its send a recipient's conversion counts (at most a year)",
    )
    ab: ABIn | None = None

    @field_validator("send_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(
                "send_at has no time zone: write it as ISO 8601 with an offset, e.g."
                " 2027-01-05T09:00:00+08:00 or 2027-01-05T01:00:00Z"
            )
        return value

    def build(self) -> Broadcast:
        """The spec; raises ``BroadcastError`` naming the field and the fix."""
        ab = None
        if self.ab is not None:
            ab = ABTest(
                variants=tuple(
                    Variant(name=v.name, content=v.content, subject=v.subject)
                    for v in self.ab.variants
                ),
                default=self.ab.default,
                sample=self.ab.sample,
                window=timedelta(seconds=self.ab.window_seconds),
                metric=self.ab.metric,
                alpha=self.ab.alpha,
            )
        return Broadcast(
            name=self.name,
            segment=self.segment,
            content=self.content,
            channel=self.channel,
            description=self.description,
            send_at=self.send_at,
            local_time=self.local_time,
            when_passed=self.when_passed,
            override_caps=self.override_caps,
            ab=ab,
            seeds=tuple(self.seeds),
            conversion=self.conversion,
            attribution=timedelta(seconds=self.attribution_seconds),
        )


class TestSendIn(BaseModel):
    to: list[str] = Field(
        default_factory=list,
        max_length=MAX_SEEDS,
        description="Seed addresses (email addresses, openids, phone numbers, as the"
        " channel takes); empty: the broadcast's own seeds",
    )
    locale: str = Field(default="en", max_length=35, description="The variant to render")


class ReasonIn(BaseModel):
    reason: str | None = Field(
        default=None, max_length=400, description="Why, shown on the report and dashboard"
    )


# --- response models ----------------------------------------------------------------------


class ReportOut(BaseModel):
    """A broadcast's numbers (``BroadcastReport``)."""

    id: str
    status: str = Field(description="draft, scheduled, running, paused, completed, cancelled")
    reason: str | None = Field(description="Why it paused or was cancelled")
    segment: str
    channel: str
    content: str
    audience: int = Field(description="Recipients in the snapshot taken when sending started")
    late_joiners: int = Field(description="Segment members who joined after the snapshot")
    sent: int
    pending: int
    failed: int
    skipped: int = Field(description="Local time already passed, with when_passed=skip")
    cancelled: int
    done: int = Field(description="Recipients settled: sent, held, failed, skipped, cancelled")
    held: dict[str, int] = Field(description="Held back, by reason (consent, suppression, cap)")
    engagement: dict[str, int] = Field(
        description="Recipients who were delivered, opened, clicked, unsubscribed, bounced,"
        " complained after their send (each counted once per kind)"
    )
    conversions: int | None = Field(description="Conversions within the attribution window")
    conversion_event: str | None
    winner: str | None = Field(description="The A/B arm the rest got")
    ab: dict[str, Any] | None = Field(
        description="The A/B decision: arms (sent, successes), metric, p_value, alpha,"
        " significant, winner, reason"
    )
    wechat_jobs: list[dict[str, Any]] = Field(description="WeChat mass-send jobs and counts")
    scheduled_at: str | None
    started_at: str | None
    finished_at: str | None


class BroadcastOut(BaseModel):
    id: str
    status: str
    source: str = Field(description="project, cli or api")
    actor: str | None
    version: str = Field(description="The spec's content hash")
    created_at: datetime
    spec: dict[str, Any] = Field(description="The spec as stored (Broadcast.to_dict())")
    report: ReportOut


class PreviewOut(BaseModel):
    broadcast_id: str
    segment: str
    audience: int = Field(description="Members of the segment's ready version now")
    locales: dict[str, int]
    timezones: dict[str, int]
    sample: list[dict[str, Any]]
    problems: list[str] = Field(description="What would stop a launch now (empty: none)")


class SeedOut(BaseModel):
    address: str
    arm: str | None
    ok: bool
    detail: str = Field(description="The provider's message id, or why it failed")


class TestSendOut(BaseModel):
    broadcast_id: str
    channel: str
    sent: int
    failed: int
    results: list[SeedOut]


class LaunchOut(BaseModel):
    broadcast_id: str
    workflow_id: str
    status: str
    send_at: datetime
    first: bool = Field(description="False when this answered a second launch with the first")


class SteerOut(BaseModel):
    broadcast_id: str
    action: Literal["pause", "resume", "cancel"]
    status: str = Field(description="The status when the signal was sent; it acts in seconds")


# --- helpers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Project:
    library: ContentLibrary
    events: frozenset[str]


def _project(request: Request) -> _Project:
    """The content library and event types a broadcast is checked against.

    The library is loaded once per content folder and kept on ``app.state`` (loading
    parses every item: about half a second), as the worker loads it once per process:
    content is deployed with the project, and both restart to take a new one."""
    settings = request.app.state.settings
    try:
        project = load_project(settings)
        folder = project.content_dir(settings)
        kept: dict[Any, ContentLibrary] | None = getattr(
            request.app.state, "broadcast_content", None
        )
        if kept is None:
            kept = request.app.state.broadcast_content = {}
        library = kept.get(folder)
        if library is None:
            library = kept[folder] = ContentLibrary.load(folder)
    except (ConfigurationError, ContentError) as exc:  # the deployment's, not the caller's
        raise HTTPException(503, detail=exc.one_line()) from exc
    return _Project(library, frozenset(project.definitions.events.names()))


def _refused(problems: list[str]) -> JSONResponse:
    return JSONResponse({"detail": problems[0], "problems": problems}, status_code=422)


def _not_found(exc: store.BroadcastNotFound) -> HTTPException:
    return HTTPException(404, detail=exc.one_line())


async def _row(request: Request, broadcast_id: str) -> BroadcastRow:
    try:
        return await run_in_threadpool(store.get_row, request.app.state.db, broadcast_id)
    except store.BroadcastNotFound as exc:
        raise _not_found(exc) from exc


async def _temporal(request: Request) -> Client:
    try:
        client = await temporal_client(request)
    except TemporalUnavailable as exc:
        raise HTTPException(503, detail=exc.one_line()) from exc
    if client is None:
        raise HTTPException(
            503,
            detail="Temporal is not wired to this API, so broadcasts cannot be launched or"
            " steered here. Fix: start the API with 'stagecoach api' (or 'stagecoach up')",
        )
    return client


def _detail(row: BroadcastRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "status": row.status,
        "source": row.source,
        "actor": row.actor,
        "version": row.version,
        "created_at": row.created_at
        if row.created_at.tzinfo
        else row.created_at.replace(tzinfo=UTC),
        "spec": row.spec,
    }


# --- routes -------------------------------------------------------------------------------


@router.get(
    "",
    summary="Every broadcast, newest first, with its numbers",
    response_model=list[ReportOut],
)
async def list_broadcasts(request: Request) -> list[dict[str, Any]]:
    reports = await run_in_threadpool(broadcast_reports, request.app.state.db)
    return [r.to_dict() for r in reports]


@router.post(
    "",
    summary="Create a draft broadcast (or replace a draft's spec)",
    description="Checked as it is created: the segment and content must exist, a send"
    " time must be ahead, the content must have a variant for every locale in the"
    " audience. The same spec again changes nothing (200).",
    status_code=201,
    response_model=BroadcastOut,
    responses={
        200: {"description": "This spec was already kept: nothing changed", "model": BroadcastOut},
        **_UNPROCESSABLE,
        409: {
            "description": "A launched broadcast has this name with another spec: use a new name"
        },
    },
)
async def create_broadcast(
    request: Request, body: BroadcastIn, actor: ActorQuery = "api"
) -> JSONResponse:
    try:
        broadcast = body.build()
    except BroadcastError as exc:
        return _refused([str(exc)])
    project = await run_in_threadpool(_project, request)
    db = request.app.state.db

    def save() -> tuple[list[str], Any, bool]:
        problems = store.check_launch(
            db,
            broadcast,
            content=content_catalogue(project.library),
            events=project.events,
            now=datetime.now(UTC),
        )
        if problems:
            return problems, None, False
        try:
            before = store.get_row(db, broadcast.name)
        except store.BroadcastNotFound:
            before = None
        row = store.save_broadcast(db, broadcast, source="api", actor=actor)
        return [], row, before is not None and before.version == row.version

    try:
        problems, row, unchanged = await run_in_threadpool(save)
    except store.BroadcastRefused as exc:
        raise HTTPException(409, detail=exc.one_line()) from exc
    if problems:
        return _refused(problems)
    report = await run_in_threadpool(broadcast_report, db, row.id)
    out = BroadcastOut.model_validate({**_detail(row), "report": report.to_dict()})
    return JSONResponse(out.model_dump(mode="json"), status_code=200 if unchanged else 201)


@router.get(
    "/{broadcast_id}",
    summary="One broadcast: its spec and its report",
    response_model=BroadcastOut,
    responses=_NOT_FOUND,
)
async def get_broadcast(request: Request, broadcast_id: IdPath) -> dict[str, Any]:
    row = await _row(request, broadcast_id)
    report = await run_in_threadpool(broadcast_report, request.app.state.db, broadcast_id)
    return {**_detail(row), "report": report.to_dict()}


@router.get(
    "/{broadcast_id}/preview",
    summary="The audience now (size, locales, zones, a sample) and what would stop a launch",
    description="The segment's ready version as it is now: the audience is fixed only"
    " when sending starts, so these numbers can move until then.",
    response_model=PreviewOut,
    responses=_NOT_FOUND,
)
async def preview_broadcast(
    request: Request,
    broadcast_id: IdPath,
    sample: Annotated[int, Query(ge=0, le=100, description="Members to list")] = 10,
) -> dict[str, Any]:
    row = await _row(request, broadcast_id)
    project = await run_in_threadpool(_project, request)
    found = await run_in_threadpool(
        lambda: preview(
            request.app.state.db,
            store.broadcast_of(row),
            library=project.library,
            events=project.events,
            now=datetime.now(UTC),
            sample=sample,
        )
    )
    return found.to_dict()


@router.post(
    "/{broadcast_id}/test-send",
    summary="Send the content (every A/B arm's) to seed addresses now",
    description="Through the channel's configured connector, subject prefixed [test]; no"
    " delivery record and no effect on caps: seeds are the team's inboxes, not contacts."
    " 200 when every seed was sent, 207 when some failed (each says why).",
    response_model=TestSendOut,
    responses={
        **_NOT_FOUND,
        207: {"description": "Some seeds failed: each result says why", "model": TestSendOut},
        422: {
            "description": "No seed addresses, or one that is not an address for the"
            " channel: the detail names it (`to[1]`), and nothing was sent"
        },
        503: {"description": "No connector is configured for the broadcast's channel"},
    },
)
async def test_send(request: Request, broadcast_id: IdPath, body: TestSendIn) -> JSONResponse:
    row = await _row(request, broadcast_id)
    broadcast = store.broadcast_of(row)
    seeds = body.to or list(broadcast.seeds)
    if not seeds:
        raise HTTPException(
            422,
            detail='to: no seed addresses. Fix: send {"to": ["you@example.com"]} or give'
            " the broadcast seeds",
        )
    channel = "wechat" if broadcast.channel == "wechat_mass" else broadcast.channel
    if channel == "email":
        for n, address in enumerate(seeds):
            try:
                parse_email(address)
            except AddressError as exc:
                field = f"to[{n}]" if body.to else f"seeds[{n}]"
                raise HTTPException(
                    422, detail=f"{field}: {exc.message}; nothing was sent"
                ) from exc
    configured = await connectors(request)
    if configured is None:
        raise HTTPException(
            503,
            detail="this API was built without connectors, so it cannot send. Fix: run it"
            " with 'stagecoach api' or 'stagecoach up', which configure them from settings",
        )
    connector = configured.get(channel)
    if connector is None:
        raise HTTPException(
            503,
            detail=f"no {channel} connector is configured on this API. Fix: configure the"
            f" {channel} connector in settings (see docs/settings.md) and restart the API",
        )
    project = await run_in_threadpool(_project, request)
    results = await send_to_seeds(
        broadcast,
        seeds=seeds,
        library=project.library,
        connector=connector,
        now=datetime.now(UTC),
        locale=body.locale,
        signer=get_signer(request),
    )
    out = TestSendOut(
        broadcast_id=broadcast.name,
        channel=channel,
        sent=sum(r.ok for r in results),
        failed=sum(not r.ok for r in results),
        results=[SeedOut(address=r.address, arm=r.arm, ok=r.ok, detail=r.detail) for r in results],
    )
    return JSONResponse(out.model_dump(mode="json"), status_code=207 if out.failed else 200)


@router.post(
    "/{broadcast_id}/schedule",
    summary="Launch: check the broadcast and start sending (now, or at its send time)",
    description="202 with `first: true` when this call launched it; any later call is 200"
    " with the first launch's answer and `first: false`: nothing starts twice. Problems"
    " (unknown segment, a send time now past, content missing a variant) are 422 with"
    " `problems`, and nothing is sent.",
    status_code=202,
    response_model=LaunchOut,
    responses={
        **_NOT_FOUND,
        200: {"description": "Already launched: the first launch's answer", "model": LaunchOut},
        **_UNPROCESSABLE,
    },
)
async def schedule_broadcast(
    request: Request, broadcast_id: IdPath, actor: ActorQuery = "api"
) -> JSONResponse:
    await _row(request, broadcast_id)
    client = await _temporal(request)
    project = await run_in_threadpool(_project, request)
    try:
        launched = await steer.launch(
            client,
            request.app.state.db,
            broadcast_id,
            task_queue=request.app.state.settings.temporal_task_queue,
            content=content_catalogue(project.library),
            events=project.events,
            now=datetime.now(UTC),
            actor=actor,
            batch_size=request.app.state.settings.broadcast_batch_size,
            batch_queue=request.app.state.settings.broadcast_task_queue,
        )
    except store.BroadcastRefused as exc:
        return _refused(exc.problems)
    except store.BroadcastNotFound as exc:
        raise _not_found(exc) from exc
    out = LaunchOut(
        broadcast_id=launched.broadcast_id,
        workflow_id=launched.workflow_id,
        status=launched.status,
        send_at=launched.send_at
        if launched.send_at.tzinfo
        else launched.send_at.replace(tzinfo=UTC),
        first=launched.first,
    )
    return JSONResponse(out.model_dump(mode="json"), status_code=202 if launched.first else 200)


async def _steer(
    request: Request,
    broadcast_id: str,
    action: Literal["pause", "resume", "cancel"],
    reason: str | None,
) -> SteerOut:
    await _row(request, broadcast_id)
    client = await _temporal(request)
    db = request.app.state.db
    try:
        if action == "pause":
            await steer.pause(client, db, broadcast_id, reason)
        elif action == "resume":
            await steer.resume(client, db, broadcast_id)
        else:
            await steer.cancel(client, db, broadcast_id, reason)
    except steer.BroadcastNotSteerable as exc:
        raise HTTPException(409, detail=exc.one_line()) from exc
    row = await _row(request, broadcast_id)
    return SteerOut(broadcast_id=broadcast_id, action=action, status=row.status)


@router.post(
    "/{broadcast_id}/pause",
    summary="Pause sending after the batch in flight",
    status_code=202,
    response_model=SteerOut,
    responses={**_NOT_FOUND, **_STEER_CONFLICT},
)
async def pause_broadcast(
    request: Request, broadcast_id: IdPath, body: ReasonIn | None = None
) -> SteerOut:
    return await _steer(request, broadcast_id, "pause", body.reason if body else None)


@router.post(
    "/{broadcast_id}/resume",
    summary="Resume a paused broadcast where it stopped",
    status_code=202,
    response_model=SteerOut,
    responses={**_NOT_FOUND, **_STEER_CONFLICT},
)
async def resume_broadcast(request: Request, broadcast_id: IdPath) -> SteerOut:
    return await _steer(request, broadcast_id, "resume", None)


@router.post(
    "/{broadcast_id}/cancel",
    summary="Cancel: nobody not yet sent is sent; they are counted as cancelled",
    status_code=202,
    response_model=SteerOut,
    responses={**_NOT_FOUND, **_STEER_CONFLICT},
)
async def cancel_broadcast(
    request: Request, broadcast_id: IdPath, body: ReasonIn | None = None
) -> SteerOut:
    return await _steer(request, broadcast_id, "cancel", body.reason if body else None)


@router.get(
    "/{broadcast_id}/report",
    summary="Sent, held back by reason, engagement, conversions, A/B decision, WeChat jobs",
    response_model=ReportOut,
    responses=_NOT_FOUND,
)
async def report_broadcast(request: Request, broadcast_id: IdPath) -> dict[str, Any]:
    try:
        report = await run_in_threadpool(broadcast_report, request.app.state.db, broadcast_id)
    except store.BroadcastNotFound as exc:
        raise _not_found(exc) from exc
    return report.to_dict()


# --- /v1/reports/broadcasts -----------------------------------------------------------------

CSV_COLUMNS = (
    "id",
    "status",
    "reason",
    "segment",
    "channel",
    "content",
    "audience",
    "late_joiners",
    "done",
    "sent",
    "pending",
    "failed",
    "skipped",
    "cancelled",
    "held",
    "delivered",
    "opened",
    "clicked",
    "unsubscribed",
    "bounced",
    "complained",
    "conversions",
    "winner",
    "started_at",
    "finished_at",
)
"""One CSV row per broadcast; ``held`` totals every reason (``held:<reason>`` columns
follow, one per reason any broadcast has)."""


def broadcasts_csv(reports: list[dict[str, Any]]) -> str:
    reasons = sorted({reason for r in reports for reason in r["held"]})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *(f"held:{reason}" for reason in reasons)])
    for r in reports:
        flat = {**r, **r["engagement"], "held": sum(r["held"].values())}
        writer.writerow(
            [
                *("" if flat.get(c) is None else flat[c] for c in CSV_COLUMNS),
                *(r["held"].get(reason, 0) for reason in reasons),
            ]
        )
    return out.getvalue()


@reports_router.get(
    "/broadcasts",
    summary="Every broadcast's numbers, as JSON or CSV",
    description="The numbers `stagecoach report broadcasts` prints, read live from the"
    " database: audience, sent, held back by reason, engagement, conversions, winner.",
    responses={
        200: {
            "description": 'JSON (`{"broadcasts": [...]}`) or CSV, one row per broadcast',
            "content": {"text/csv": {"example": ",".join(CSV_COLUMNS) + "\n"}},
        }
    },
)
async def broadcasts_report(
    request: Request,
    format: Annotated[str, Query(pattern="^(json|csv)$", description="json or csv")] = "json",
) -> Response:
    reports = [
        r.to_dict() for r in await run_in_threadpool(broadcast_reports, request.app.state.db)
    ]
    if format == "csv":
        return Response(broadcasts_csv(reports), media_type="text/csv; charset=utf-8")
    return JSONResponse({"broadcasts": reports})
