"""``/v1/segments``: the published segments, their members, and manual list changes.

Every route needs the admin bearer token (:func:`stagecoach.engine.api.auth.require_admin`).
Readers see each segment's newest **ready** version (``list`` for a manual segment): a
version still being backfilled is never what a member list or a count shows.

``GET /v1/segments``
    The catalogue: kind, status, size and definition of every segment.
``GET /v1/segments/{name}``
    One segment, with entries, exits and size per UTC day over the last 30 days.
``GET /v1/segments/{name}/members?after=&limit=``
    A page of members by contact id; ``next`` is the ``after`` of the next page (null
    on the last).
``POST /v1/segments/{name}/members``, ``POST /v1/segments/{name}/members/remove``
    Add to or remove from a manual segment: a JSON body ``{"contacts": [...], "actor":
    ...}`` of contact ids and email addresses, or a CSV file sent as the body with
    ``Content-Type: text/csv`` (a header row naming a ``contact_id`` or ``email``
    column). Each change is stored as an event the contact's workflow records
    (``stagecoach.engine.services.segments.lists``); the answer counts what was stored.
    **200** when every row was taken, **207** when some were rejected (each with its
    line, field and reason; the rest are stored).
``DELETE /v1/segments/{name}/members/{contact}``
    Remove one contact.

An unknown segment answers **404** naming the known ones; a list change to a computed
segment **409** naming the manual ones; a file that cannot be read as a list (empty, no
``contact_id``/``email`` column) **400**, with nothing stored.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from stagecoach.engine.api._common import read_body
from stagecoach.engine.api.auth import ADMIN_RESPONSES, require_admin
from stagecoach.engine.services.segments.lists import (
    MAX_REFS,
    Action,
    ListError,
    ListRef,
    ListResult,
    NotAManualSegment,
    ParsedList,
    parse_list_csv,
    prepare_change,
    refs_from,
    store_change,
)
from stagecoach.engine.services.segments.queries import (
    UnknownSegment,
    daily_activity,
    members,
    segment_summaries,
    segment_summary,
)

BODY_LIMIT = 20 * 1024 * 1024
"""Bytes a list upload may have (about 400,000 email addresses)."""
DAYS = 30

router = APIRouter(
    prefix="/v1/segments",
    tags=["segments"],
    dependencies=[Depends(require_admin)],
    responses=ADMIN_RESPONSES,
)

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {
        "description": "No published segment has this name: the detail names the known ones",
        "content": {
            "application/json": {
                "example": {
                    "detail": "segment 'vip' is not published (did you mean 'vips'?). Fix: use"
                    " one of: trial-users, vips"
                }
            }
        },
    }
}


# --- response models ----------------------------------------------------------------------


class SegmentOut(BaseModel):
    """A segment as the catalogue shows it."""

    name: str
    description: str
    kind: Literal["computed", "manual"] = Field(
        description="computed from its condition, or a manual list fed by upload"
    )
    searchable: bool = Field(description="Listed in the contact workflows' Segments attribute")
    version: str = Field(description="The newest published version: what workflows decide by")
    ready_version: str | None = Field(
        description="The version whose members are read ('list' for a manual segment); "
        "null while the first backfill runs"
    )
    status: str = Field(description="ready, or backfilling while the newest version is computed")
    members: int = Field(description="Members of ready_version")
    condition: dict[str, Any] | None = Field(
        description="The condition as data (null for a manual segment)"
    )


class DayOut(BaseModel):
    day: date = Field(description="A UTC day")
    entered: int
    exited: int
    size: int = Field(description="Members at the end of the day")


class SegmentDetailOut(SegmentOut):
    days: list[DayOut] = Field(description=f"The last {DAYS} days, oldest first")


class MemberOut(BaseModel):
    contact_id: str
    since: datetime
    reason: str = Field(description="Why the contact entered")


class MembersPage(BaseModel):
    segment: str
    members: list[MemberOut]
    next: str | None = Field(
        description="Pass as `after` for the next page; null when this is the last"
    )


class ListChangeIn(BaseModel):
    """Contacts to add or remove, one by one."""

    contacts: list[str] = Field(
        min_length=1,
        max_length=MAX_REFS,
        description="Contact ids (c_...) and email addresses; an address no contact has is"
        " a new contact when adding",
    )
    actor: str | None = Field(
        default=None,
        max_length=128,
        description="Who makes the change (default: the actor query parameter)",
    )


class RejectedOut(BaseModel):
    line: int | None = Field(description="The CSV line (null for a JSON body's value)")
    field: str = Field(description="contact_id, email, row, or contact")
    reason: str
    value: str = ""


class ListChangeOut(BaseModel):
    """What a list change did: the rest of the rows are stored even if some are rejected."""

    segment: str
    action: Literal["add", "remove"]
    actor: str
    accepted: int = Field(description="Contacts taken: changed now, or already so")
    stored: int = Field(description="Changes stored now (each becomes an entry or exit)")
    unchanged: int = Field(
        description="Already on the list (add) or not on it (remove), or named twice"
    )
    created: int = Field(description="Contacts created for addresses no contact had")
    contacts: list[str] = Field(description="The contacts changed now")
    rejected: list[RejectedOut]


_CHANGE_EXAMPLE = {
    "segment": "vip-list",
    "action": "add",
    "actor": "events-team",
    "accepted": 2,
    "stored": 2,
    "unchanged": 0,
    "created": 1,
    "contacts": ["c_5f0c9a2e41d7b3a8c6e19f04", "c_0a1b2c3d4e5f60718293a4b5"],
    "rejected": [
        {
            "line": 4,
            "field": "email",
            "reason": "'wang@' is not an email address: ...",
            "value": "wang@",
        }
    ],
}
_CHANGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    200: {"description": "Every row was taken", "model": ListChangeOut},
    207: {
        "description": "Some rows were rejected (line, field, reason); the rest are stored",
        "model": ListChangeOut,
        "content": {"application/json": {"example": _CHANGE_EXAMPLE}},
    },
    400: {"description": "Not a list: an empty file, no contact_id or email column, bad JSON"},
    409: {"description": "The segment is computed, not a manual list: the detail names those"},
    413: {"description": f"Body over {BODY_LIMIT // (1024 * 1024)} MB: upload in parts"},
    415: {"description": "Send application/json or text/csv"},
}
_CHANGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": ListChangeIn.model_json_schema(),
                "example": {"contacts": ["c_5f0c9a2e41d7b3a8c6e19f04", "li.lei@example.cn"]},
            },
            "text/csv": {
                "schema": {"type": "string"},
                "example": "email,name\nli.lei@example.cn,Li Lei\nwang.fang@example.cn,Wang\n",
            },
        },
    }
}

NamePath = Annotated[
    str, Path(min_length=1, max_length=200, description="The segment's name", examples=["vips"])
]
ActorQuery = Annotated[
    str,
    Query(
        min_length=1,
        max_length=128,
        description="Who makes the change, recorded with each entry and exit (a JSON body's "
        "actor wins)",
    ),
]


# --- helpers ------------------------------------------------------------------------------


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _not_found(exc: UnknownSegment) -> HTTPException:
    return HTTPException(404, detail=exc.one_line())


async def _refs(request: Request) -> tuple[ParsedList | list[ListRef], str | None]:
    """The contacts a request names (a parsed CSV file, or a JSON body's list), and a
    JSON body's actor."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("application/json", "text/csv", "application/csv"):
        raise HTTPException(
            415,
            detail=f"content type {kind or 'none'!r} is not a list: send application/json "
            '({"contacts": [...]}) or text/csv (a header row with contact_id or email)',
        )
    body = await read_body(request, BODY_LIMIT)
    if body is None:
        raise HTTPException(
            413, detail=f"the body is over {BODY_LIMIT // (1024 * 1024)} MB: upload in parts"
        )
    if kind != "application/json":
        return parse_list_csv(body, name="the uploaded file"), None
    try:
        given = ListChangeIn.model_validate(orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        raise HTTPException(400, detail=f"the body is not JSON ({exc})") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise HTTPException(
            400, detail=f'{where}: {first.get("msg", "invalid")}; send {{"contacts": [...]}}'
        ) from exc
    return refs_from(given.contacts), given.actor


async def _change(
    request: Request,
    name: str,
    refs: ParsedList | list[ListRef],
    *,
    action: Action,
    actor: str,
) -> JSONResponse:
    db = request.app.state.db

    def run() -> ListResult:
        return store_change(db, prepare_change(db, name, refs, action=action, actor=actor))

    try:
        result = await run_in_threadpool(run)
    except UnknownSegment as exc:
        raise _not_found(exc) from exc
    except NotAManualSegment as exc:
        raise HTTPException(409, detail=exc.one_line()) from exc
    except ListError as exc:
        raise HTTPException(400, detail=exc.one_line()) from exc
    forwarder = getattr(request.app.state, "forwarder", None)
    if forwarder is not None and result.stored:
        forwarder.wake()
    body = ListChangeOut(
        segment=result.segment,
        action=result.action,
        actor=result.actor,
        accepted=result.accepted,
        stored=result.stored,
        unchanged=result.unchanged,
        created=result.created,
        contacts=result.contacts,
        rejected=[RejectedOut(**r.__dict__) for r in result.rejected],
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=207 if result.rejected else 200)


async def _change_from_body(
    request: Request, name: str, action: Action, actor: str
) -> JSONResponse:
    try:
        refs, said = await _refs(request)
    except ListError as exc:
        raise HTTPException(400, detail=exc.one_line()) from exc
    return await _change(request, name, refs, action=action, actor=said or actor)


# --- routes -------------------------------------------------------------------------------


@router.get("", summary="Every published segment", response_model=list[SegmentOut])
async def list_segments(request: Request) -> list[dict[str, Any]]:
    summaries = await run_in_threadpool(segment_summaries, request.app.state.db)
    return [s.to_dict() for s in summaries]


@router.get(
    "/{name}",
    summary=f"One segment, with entries, exits and size per day over the last {DAYS} days",
    response_model=SegmentDetailOut,
    responses=_NOT_FOUND,
)
async def get_segment(request: Request, name: NamePath) -> dict[str, Any]:
    db = request.app.state.db

    def read() -> dict[str, Any]:
        summary = segment_summary(db, name)
        days = daily_activity(db, name, days=DAYS)
        return {**summary.to_dict(), "days": [d.__dict__ for d in days]}

    try:
        return await run_in_threadpool(read)
    except UnknownSegment as exc:
        raise _not_found(exc) from exc


@router.get(
    "/{name}/members",
    summary="A page of the segment's members, by contact id",
    response_model=MembersPage,
    responses=_NOT_FOUND,
)
async def get_members(
    request: Request,
    name: NamePath,
    after: Annotated[
        str | None,
        Query(max_length=64, description="The last contact id of the previous page"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Members a page")] = 100,
) -> MembersPage:
    try:
        rows = await run_in_threadpool(
            lambda: members(request.app.state.db, name, after=after, limit=limit + 1)
        )
    except UnknownSegment as exc:
        raise _not_found(exc) from exc
    page = rows[:limit]
    return MembersPage(
        segment=name,
        members=[
            MemberOut(contact_id=r.contact_id, since=_aware(r.since), reason=r.reason) for r in page
        ],
        next=page[-1].contact_id if len(rows) > limit else None,
    )


@router.post(
    "/{name}/members",
    summary="Add contacts to a manual segment (JSON list or CSV upload)",
    response_model=ListChangeOut,
    responses=_CHANGE_RESPONSES,
    openapi_extra=_CHANGE_BODY,
)
async def add_members(request: Request, name: NamePath, actor: ActorQuery = "api") -> JSONResponse:
    return await _change_from_body(request, name, "add", actor)


@router.post(
    "/{name}/members/remove",
    summary="Remove contacts from a manual segment (JSON list or CSV upload)",
    response_model=ListChangeOut,
    responses=_CHANGE_RESPONSES,
    openapi_extra=_CHANGE_BODY,
)
async def remove_members(
    request: Request, name: NamePath, actor: ActorQuery = "api"
) -> JSONResponse:
    return await _change_from_body(request, name, "remove", actor)


@router.delete(
    "/{name}/members/{contact_id}",
    summary="Remove one contact from a manual segment",
    response_model=ListChangeOut,
    responses=_CHANGE_RESPONSES,
)
async def remove_member(
    request: Request,
    name: NamePath,
    contact_id: Annotated[
        str, Path(min_length=1, max_length=320, description="A contact id or an email address")
    ],
    actor: ActorQuery = "api",
) -> JSONResponse:
    return await _change(request, name, refs_from([contact_id]), action="remove", actor=actor)
