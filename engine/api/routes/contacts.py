"""``/v1/contacts/{contact_id}``: one contact as an administrator sees it, and its erasure.

Both routes need the admin bearer token (:func:`stagecoach.engine.api.auth.require_admin`).

``{contact_id}`` is whoever the caller knows: a contact id, or a ``userId``,
``anonymousId``, email address, phone number, WeChat openid or unionid, or CRM id, found
by :func:`stagecoach.engine.services.lookup.find_person` (``?by=`` names the kind; without it the
value's shape decides, as that module documents). A value that cannot be the kind asked
for answers **400** naming the field; one that matches several people (an ``auto``
search only) answers **409** listing them with what matched.

``GET /v1/contacts/{contact_id}``
    The contact's state, identities, stage history, consent records, merges and recent
    deliveries. ``traits`` are the ones ``stagecoach contact show`` lists: the workflow's
    attributes, or, when it cannot answer, the stored row with every stored event's
    traits applied in order. ``state`` comes from the contact workflow's ``state`` query
    when Temporal is wired and the workflow answers within :data:`QUERY_TIMEOUT`;
    otherwise it is the stored row, with ``state.source == "database"`` and
    ``state.note`` saying why.

    *A merged id* answers **200** with the survivor's record and ``merged_into`` set to
    the survivor's id (not a redirect: an admin tool wants to see that the id it holds
    is now another, and a 308 would be followed silently by most clients). A person is
    the survivor plus every id merged into it, so transitions and deliveries of merged
    ids are listed too, each with its ``contact_id``.

    *An unknown id* answers **404** naming what was searched ("no contact with email
    li.lei@example.cn"); so does an erased id, and the message says when it was erased.

``DELETE /v1/contacts/{contact_id}``: the right to erasure
    Erases the person: the contact and every id merged into it (a merged id erases its
    survivor, since they are one person). Personal data goes; anonymous aggregates stay,
    so counts of contacts by stage, events by name and day, and sends by journey and
    step are the same before and after. Table by table:

    ==============  ==========================================================================
    contacts        each erased id's row is replaced by a pseudonymous row
                    ``erased-<sha256(id)[:16]>`` (:func:`pseudonym`) that keeps ``stage`` and
                    ``created_at``; locale, timezone and traits are cleared, and
                    ``traits.erased_at`` records when: it is the erasure record that proves
                    the request was honoured, without personal data. The hash is unkeyed:
                    whoever still holds the old id (a CRM, an old link) can find the
                    anonymous rows, but learns only event names, times and stages
    events          re-pointed to the pseudonym; ``properties`` and ``context`` (which holds
                    the traits) emptied; kind, name, source, channel, message id and both
                    times kept. The message id stays so that a client replaying an old
                    message cannot bring the person back: it is acknowledged as a duplicate
    transitions     re-pointed (key ``<id>:<n>`` becomes ``<pseudonym>:<n>``); a manual
                    transition's reason, free text typed by a person, becomes ``(erased)``
    deliveries      re-pointed; ``provider_message_id`` and ``error`` (which can quote the
                    address) cleared; journey, step, channel, content and status kept
    identities      deleted
    consents        deleted (their hash chain would not survive a rewrite, and with no
                    address left there is nothing they could permit)
    merges          deleted (they link the erased ids to each other)
    propensity      the contact's propensity score (with the feature values behind it)
                    deleted; the next refresh scores the pseudonym, if anything
    outbox          deleted: no stored event is forwarded again
    suppressions    **kept**, address included, with ``contact_id`` cleared: they protect
                    the person, who must not be emailed again if someone re-imports the
                    address. Hashing the address would need the delivery path to look up by
                    hash; until then the plain address is the minimum that still works
    ==============  ==========================================================================

    In Temporal, every run of each erased id's ``contact-<id>`` workflow (continue-as-new
    makes several) is deleted with its history through ``DeleteWorkflowExecution``, which
    terminates a running one in the same request (see :func:`_sweep` for why there is no
    separate terminate call). The server deletes asynchronously (an open execution at
    once, a closed one, such as a merged contact's, some seconds later): hence **202**.

    Order: Temporal first, then one database transaction, then both again. Temporal
    first because its histories can only be found by the ids the database still holds:
    if Temporal fails the answer is 503 and the database is untouched, so a retry starts
    over. The second pass catches what ran concurrently with the first: a forwarder that
    had read the contact's outbox before the transaction and signalled afterwards, or an
    activity that was mid-write when its workflow was terminated. An activity that writes
    even later recreates a contact row under the old id, which a new DELETE erases.

    Idempotent: a second DELETE answers **404**, like any id that is not a contact now,
    with a message saying when it was erased; so does a DELETE of a pseudonym.

    Refused with **503**, nothing changed: Temporal not wired to this API or
    unreachable (an erasure that left the histories behind would not be one), or the
    database unavailable.

    The other stores that hold personal data:

    - the file sink: every ``<sink>/<channel>/<contact id>`` folder of the erased ids
      under this API's ``STAGECOACH_SINK_DIR`` (default ``<data_dir>/sink``) is removed
      (``stores.sink_folders`` lists them). That is the worker's sink when they share
      the data directory, as ``stagecoach up`` and the compose file run them; a worker
      on another host with a sink of its own keeps its folders, for the operator;
    - the analytics copy (``analytics.duckdb``): the erasure asks the API's report cache
      for a sync (``stores.analytics``), which replaces the person's copied rows with
      the pseudonymous ones (``stagecoach.engine.services.analytics.store``); any later sync, by a
      page, the reports API or ``stagecoach report``, does the same if this one could not run;
    - Temporal: the histories are deleted (above), payloads and all; see docs/codec.md.

    Not reached from here, for the operator to handle: application logs (they mask
    emails and phones, but keep contact ids), a worker's own file sink on another host,
    and data already handed to providers and the CRM.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, func, or_, update
from sqlalchemy.engine import Result
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import TemporalError
from temporalio.service import RPCError, RPCStatusCode

from stagecoach.engine.api._common import in_thread
from stagecoach.engine.api.auth import ADMIN_RESPONSES, require_admin
from stagecoach.engine.api.deps import SessionDep, temporal_client
from stagecoach.engine.domain.errors import DatabaseError, TemporalUnavailable
from stagecoach.engine.protocol.messages import contact_workflow_id
from stagecoach.engine.services.leases import ERASURES, bump
from stagecoach.engine.services.lookup import ERASED_PREFIX as ERASED_PREFIX
from stagecoach.engine.services.lookup import (
    AmbiguousContact,
    ContactNotMatched,
    LookupKind,
    MalformedLookup,
    Person,
    find_person,
)
from stagecoach.engine.services.lookup import pseudonym as pseudonym
from stagecoach.engine.services.segments.queries import contact_segments
from stagecoach.engine.services.storage.models import (
    Consent,
    Contact,
    Delivery,
    Event,
    Handoff,
    Identity,
    JourneyEnrolment,
    Merge,
    Outbox,
    PropensityScore,
    Referral,
    ReferralCode,
    Reward,
    StageTransition,
    Suppression,
)
from stagecoach.engine.temporal.gateway import ContactNotFound, contact_view

router = APIRouter(
    prefix="/v1",
    tags=["contacts"],
    dependencies=[Depends(require_admin)],
    responses=ADMIN_RESPONSES,
)

_log = structlog.get_logger("stagecoach.api.contacts")

QUERY_TIMEOUT = 3.0
"""Seconds the ``state`` query may take before the stored row is shown instead."""
_RPC_TIMEOUT = timedelta(seconds=10)
_ERASED_REASON = "(erased)"


# --- response models --------------------------------------------------------------------


class _FromRow(BaseModel):
    """Built from a table row; SQLite's naive datetimes read as the UTC they are."""

    model_config = ConfigDict(from_attributes=True)

    @field_validator("*", mode="after")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        return _aware(value) if isinstance(value, datetime) else value


class IdentityPublic(_FromRow):
    kind: str = Field(description="user_id, anonymous_id, email, phone, wechat_openid, ...")
    value: str
    source: str
    created_at: datetime


class TransitionPublic(_FromRow):
    contact_id: str
    from_stage: str | None
    to_stage: str
    kind: str = Field(description="rule, detour or manual")
    reason: str
    source: str
    trigger_event_type: str | None
    trigger_message_id: str | None
    at: datetime


class ConsentPublic(_FromRow):
    channel: str
    granted: bool
    source: str
    wording: str
    message_id: str | None
    at: datetime


class MergePublic(_FromRow):
    merged_id: str = Field(description="The id that turned out to be this contact")
    into_id: str
    reason: str
    message_id: str | None
    at: datetime


class DeliveryPublic(_FromRow):
    contact_id: str
    journey: str
    step_id: str
    enrolment: int
    channel: str
    content_id: str | None
    status: str
    provider_message_id: str | None
    error: str | None
    created_at: datetime
    sent_at: datetime | None


class SegmentPublic(_FromRow):
    segment: str
    version: str = Field(description="The version that decided it ('list' for a manual one)")
    since: datetime
    reason: str = Field(description="Why the contact entered")


class ContactState(BaseModel):
    """What the contact is now: live from its workflow, else the stored row."""

    source: Literal["workflow", "database"]
    stage: str | None
    score: float | None = None
    grade: str | None = None
    stage_entered_at: datetime | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    consent: dict[str, bool] = Field(default_factory=dict)
    journeys: list[dict[str, Any]] = Field(default_factory=list)
    run_events: int | None = Field(
        default=None, description="Events applied in the workflow's current run"
    )
    note: str | None = Field(default=None, description="Why the stored row is shown")


class ContactDetail(BaseModel):
    """A contact: the survivor's record when the id asked for was merged."""

    id: str
    merged_into: str | None = Field(
        default=None,
        description="Set when the id asked for was merged: the id it lives on as (= id)",
    )
    stage: str | None
    locale: str | None
    timezone: str | None
    traits: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    state: ContactState
    identities: list[IdentityPublic]
    transitions: list[TransitionPublic] = Field(description="Stage history, oldest first")
    consents: list[ConsentPublic] = Field(description="Consent decisions, oldest first")
    merges: list[MergePublic] = Field(description="Ids merged into this contact")
    deliveries: list[DeliveryPublic] = Field(description="Most recent first")
    event_count: int
    segments: list[SegmentPublic] = Field(
        default_factory=list, description="The segments the contact is in, oldest first"
    )


class _Counts(BaseModel):
    def add(self, other: _Counts) -> None:
        for name in type(self).model_fields:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class Anonymised(_Counts):
    """Rows kept without personal data, re-pointed to pseudonyms."""

    contacts: int = 0
    events: int = 0
    transitions: int = 0
    deliveries: int = 0
    enrolments: int = 0
    referral_codes: int = 0
    referrals: int = 0
    rewards: int = 0


class Removed(_Counts):
    """Rows deleted."""

    identities: int = 0
    consents: int = 0
    merges: int = 0
    outbox: int = 0
    propensity_scores: int = 0


class Kept(_Counts):
    """Rows kept as they are because they protect the person, unlinked from the contact."""

    suppressions: int = 0


class WorkflowErasure(BaseModel):
    terminated: list[str] = Field(
        default_factory=list, description="Were running: terminated by their deletion"
    )
    deleted: list[str] = Field(
        default_factory=list,
        description="Workflow ids whose runs and histories the server is deleting",
    )
    errors: list[str] = Field(
        default_factory=list, description="Problems on the second pass (the first must succeed)"
    )


class OtherStores(BaseModel):
    """The stores outside the database and Temporal that held the person's data."""

    sink_folders: list[str] = Field(
        default_factory=list,
        description="File-sink folders removed (<sink>/<channel>/<contact id>), under this "
        "API's STAGECOACH_SINK_DIR",
    )
    analytics: str = Field(
        default="",
        description="The analytics copy: 'syncing' (the erasure started a sync that "
        "replaces the person's rows) or why it could not",
    )


class ErasureSummary(BaseModel):
    contact_id: str = Field(description="The id asked for")
    erased: list[str] = Field(description="The person's ids: the contact and those merged in")
    erased_at: datetime
    anonymised: Anonymised
    removed: Removed
    kept: Kept
    workflows: WorkflowErasure
    stores: OtherStores = Field(default_factory=OtherStores)


_WHEN = "2026-11-22T09:00:00Z"
_CONTACT_EXAMPLE: dict[str, Any] = {
    "id": "c_5f0c9a2e41d7b3a8c6e19f04",
    "merged_into": None,
    "stage": "prospect",
    "locale": "zh-CN",
    "timezone": "Asia/Shanghai",
    "traits": {"email": "li.lei@example.cn", "company": "Acme"},
    "created_at": _WHEN,
    "updated_at": _WHEN,
    "state": {
        "source": "workflow",
        "stage": "prospect",
        "score": 35.0,
        "grade": None,
        "stage_entered_at": _WHEN,
        "attributes": {"email": "li.lei@example.cn", "locale": "zh-CN"},
        "tags": [],
        "consent": {"email": True},
        "journeys": [
            {"journey": "b2b_nurture", "enrolment": 1, "step": "wait-3d", "waiting": "timer"}
        ],
        "run_events": 4,
        "note": None,
    },
    "identities": [
        {"kind": "user_id", "value": "u-1001", "source": "web", "created_at": _WHEN},
        {"kind": "email", "value": "li.lei@example.cn", "source": "web", "created_at": _WHEN},
    ],
    "transitions": [
        {
            "contact_id": "c_5f0c9a2e41d7b3a8c6e19f04",
            "from_stage": None,
            "to_stage": "prospect",
            "kind": "manual",
            "reason": "created",
            "source": "workflow",
            "trigger_event_type": "content.downloaded",
            "trigger_message_id": "m-track-1",
            "at": _WHEN,
        }
    ],
    "consents": [
        {
            "channel": "email",
            "granted": True,
            "source": "web",
            "wording": "I agree to receive product news by email.",
            "message_id": "m-identify-1",
            "at": _WHEN,
        }
    ],
    "merges": [
        {
            "merged_id": "c_0a1b2c3d4e5f60718293a4b5",
            "into_id": "c_5f0c9a2e41d7b3a8c6e19f04",
            "reason": "alias m-alias-1",
            "message_id": "m-alias-1",
            "at": _WHEN,
        }
    ],
    "deliveries": [
        {
            "contact_id": "c_5f0c9a2e41d7b3a8c6e19f04",
            "journey": "b2b_nurture",
            "step_id": "whitepaper",
            "enrolment": 1,
            "channel": "email",
            "content_id": "wp-digital-transformation",
            "status": "sent",
            "provider_message_id": "0a1f6c1e-5b8e-4f0e-9d4c-2f7e3b1a9c55",
            "error": None,
            "created_at": _WHEN,
            "sent_at": _WHEN,
        }
    ],
    "event_count": 4,
    "segments": [
        {
            "segment": "vip-list",
            "version": "list",
            "since": _WHEN,
            "reason": "added to the list by events-team",
        }
    ],
}
_ERASURE_EXAMPLE: dict[str, Any] = {
    "contact_id": "c_5f0c9a2e41d7b3a8c6e19f04",
    "erased": ["c_5f0c9a2e41d7b3a8c6e19f04", "c_0a1b2c3d4e5f60718293a4b5"],
    "erased_at": _WHEN,
    "anonymised": {"contacts": 2, "events": 4, "transitions": 3, "deliveries": 1},
    "removed": {"identities": 3, "consents": 1, "merges": 1, "outbox": 0},
    "kept": {"suppressions": 1},
    "workflows": {
        "terminated": ["contact-c_5f0c9a2e41d7b3a8c6e19f04"],
        "deleted": ["contact-c_5f0c9a2e41d7b3a8c6e19f04", "contact-c_0a1b2c3d4e5f60718293a4b5"],
        "errors": [],
    },
    "stores": {
        "sink_folders": [".stagecoach/sink/email/c_5f0c9a2e41d7b3a8c6e19f04"],
        "analytics": "syncing",
    },
}
_NOT_FOUND_EXAMPLES = {
    "unknown": {
        "summary": "No such contact",
        "value": {"detail": "no contact with email li.lei@example.cn. Fix: search by ..."},
    },
    "erased": {
        "summary": "Erased before",
        "value": {"detail": "contact 'c_123' was erased at 2026-11-22T09:00:00+00:00 ..."},
    },
}

ContactIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=320,
        description="Who: a contact id (the contact-<id> workflow's id without 'contact-', "
        "or an id merged into one), a userId, an anonymousId, an email address, a phone "
        "number, a WeChat openid or unionid, or a CRM id; `by` names which, or the shape "
        "decides (see `by`)",
        examples=["c_5f0c9a2e41d7b3a8c6e19f04", "li.lei@example.cn", "+8613800138000"],
    ),
]
ByQuery = Annotated[
    LookupKind,
    Query(
        description="The kind of id in the path. `auto` (the default) goes by its shape: "
        "with `@` an email address; `+` or digits a phone number (national numbers in the "
        "deployment's referral_phone_country) and also any id as typed; anything else a "
        "contact id, userId, anonymousId, openid, unionid or CRM id. Several people "
        "matching answer 409 with the candidates",
    ),
]
_LOOKUP_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "The value cannot be the kind asked for: the detail names the field "
        "(email, phone, id)",
        "content": {
            "application/json": {
                "example": {"detail": "email: 'li.lei@' is not an email address ..."}
            }
        },
    },
    409: {
        "description": "An `auto` search matched several people: the detail lists them "
        "with what matched; ask again with `by`",
        "content": {
            "application/json": {
                "example": {
                    "detail": "'13800138000' matches 2 contacts: c_1 (user_id 13800138000); "
                    "c_2 (phone +8613800138000). Fix: name the kind of id: by=..."
                }
            }
        },
    },
}


# --- who the id is -----------------------------------------------------------------------


def _region(request: Request) -> str | None:
    settings = getattr(request.app.state, "settings", None)
    return getattr(settings, "referral_phone_country", None)


async def _person(request: Request, session: Session, contact_id: str, by: str) -> Person:
    """The one person ``contact_id`` leads to, searched as ``by``, or the HTTP error:
    400 naming the field, 404 naming what was searched, 409 listing the candidates."""
    try:
        region = _region(request)
        return await in_thread(session, lambda s: find_person(s, contact_id, by, region=region))
    except DatabaseError as exc:
        raise _unavailable(exc.one_line()) from exc
    except MalformedLookup as exc:
        raise HTTPException(400, detail=f"{exc.field}: {exc.one_line()}") from exc
    except ContactNotMatched as exc:
        raise HTTPException(404, detail=exc.one_line()) from exc
    except AmbiguousContact as exc:
        raise HTTPException(409, detail=exc.one_line()) from exc


def _unavailable(detail: str) -> HTTPException:
    return HTTPException(503, detail=detail, headers={"Retry-After": "5"})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _aware(at: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return at if at.tzinfo else at.replace(tzinfo=UTC)


# --- Temporal ----------------------------------------------------------------------------


@dataclass
class _Sweep:
    terminated: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)


def _missing(exc: RPCError) -> bool:
    return exc.status == RPCStatusCode.NOT_FOUND


async def _sweep(client: Client, contact_ids: Sequence[str], found: _Sweep) -> None:
    """Delete every run of each contact's workflow, with its history.

    ``DeleteWorkflowExecution`` on the latest run terminates it first if it is running,
    in the same request, so no activity starts once it returns. Terminating in a separate
    call first would be worse: the server defers deleting a closed execution (about 30 s
    on the dev server) while an open one is deleted at once. Older runs (continue-as-new
    leaves one per run) are found through visibility and deleted by run id.

    Raises:
        RPCError: Temporal refused or did not answer (NOT_FOUND means done already).
    """
    for contact_id in contact_ids:
        workflow_id = contact_workflow_id(contact_id)
        try:
            latest = await client.get_workflow_handle(workflow_id).describe(
                rpc_timeout=_RPC_TIMEOUT
            )
        except RPCError as exc:
            if not _missing(exc):
                raise
        else:
            if latest.status == WorkflowExecutionStatus.RUNNING:
                found.terminated.add(workflow_id)
        runs: list[str] = [""]  # "": the latest run, whether or not visibility lists it yet
        if not any(c in workflow_id for c in "'\"\\"):
            query = f"WorkflowId = '{workflow_id}'"
            async for execution in client.list_workflows(query, rpc_timeout=_RPC_TIMEOUT):
                runs.append(execution.run_id)
        for run_id in dict.fromkeys(runs):
            request = DeleteWorkflowExecutionRequest(
                namespace=client.namespace,
                workflow_execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
            )
            try:
                await client.workflow_service.delete_workflow_execution(
                    request, retry=True, timeout=_RPC_TIMEOUT
                )
                found.deleted.add(workflow_id)
            except RPCError as exc:
                if not _missing(exc):
                    raise


async def _live_state(request: Request, survivor: Contact, traits: dict[str, Any]) -> ContactState:
    """The workflow's ``state`` query, or the stored row (with ``traits``, the stored
    events' fold) and a note saying why."""
    try:
        client = await temporal_client(request)
    except TemporalUnavailable as exc:
        return _stored_state(survivor, traits, f"Temporal is unreachable ({exc.message})")
    if client is None:
        return _stored_state(survivor, traits, "Temporal is not wired to this API")
    try:
        async with asyncio.timeout(QUERY_TIMEOUT):
            view = await contact_view(client, survivor.id)
    except ContactNotFound:
        note = "its workflow has not started yet (its events may wait in the outbox)"
    except TimeoutError:
        note = f"its workflow did not answer within {QUERY_TIMEOUT:g} s: is a worker running?"
    except (TemporalError, RuntimeError) as exc:
        note = f"its workflow's state query failed: {_first_line(exc)}"
    else:
        state = view.state
        entered = state.get("stage_entered_at")
        return ContactState(
            source="workflow",
            stage=view.stage,
            score=view.score,
            grade=view.grade,
            stage_entered_at=datetime.fromisoformat(entered) if entered else None,
            attributes=dict(state.get("attributes") or {}),
            tags=list(state.get("tags") or []),
            consent=dict(state.get("consent") or {}),
            journeys=view.journeys,
            run_events=view.run_events,
        )
    _log.info("contact state from the database", contact_id=survivor.id, reason=note)
    return _stored_state(survivor, traits, note)


def _stored_state(row: Contact, traits: dict[str, Any], why: str) -> ContactState:
    return ContactState(
        source="database",
        stage=row.stage,
        attributes=dict(traits),
        note=f"{why}: the stored row is shown",
    )


# --- GET ---------------------------------------------------------------------------------


@dataclass
class _Record:
    identities: list[IdentityPublic]
    transitions: list[TransitionPublic]
    consents: list[ConsentPublic]
    merges: list[MergePublic]
    deliveries: list[DeliveryPublic]
    event_count: int
    traits: dict[str, Any]


def stored_traits(session: Session, person: Person) -> dict[str, Any]:
    """The person's traits as the workflow folds them
    (``stagecoach.engine.domain.contact.observe``), from
    what is stored: the row is the workflow's attributes as of its last stage change
    (``updated_at``), so events stored before then are folded under it and later ones
    over it, in the order they were stored, consent aside (it has records of its own).
    The row alone misses what arrived since (a referral sign-up's email, phone, name)."""
    row = person.survivor
    rows = session.exec(
        select(Event.context, Event.received_at)
        .where(col(Event.contact_id).in_(person.ids))
        .order_by(col(Event.id))
    ).all()
    snapshot = _aware(row.updated_at)
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for context, received in rows:
        given = context.get("traits") if isinstance(context, dict) else None
        if isinstance(given, dict):
            into = before if _aware(received) <= snapshot else after
            into.update({k: v for k, v in given.items() if k != "consent"})
    traits = {**before, **row.traits, **after}
    traits.pop("merged_into", None)
    return traits


def _record(session: Session, person: Person, deliveries: int) -> _Record:
    ids = person.ids
    identities = session.exec(
        select(Identity)
        .where(col(Identity.contact_id).in_(ids))
        .order_by(col(Identity.created_at), col(Identity.kind), col(Identity.value))
    ).all()
    transitions = session.exec(
        select(StageTransition)
        .where(col(StageTransition.contact_id).in_(ids))
        .order_by(col(StageTransition.at), col(StageTransition.id))
    ).all()
    consents = session.exec(
        select(Consent).where(col(Consent.contact_id).in_(ids)).order_by(col(Consent.id))
    ).all()
    merges = session.exec(
        select(Merge).where(col(Merge.into_id).in_(ids)).order_by(col(Merge.at))
    ).all()
    sent = session.exec(
        select(Delivery)
        .where(col(Delivery.contact_id).in_(ids))
        .order_by(col(Delivery.created_at).desc(), col(Delivery.id).desc())
        .limit(deliveries)
    ).all()
    events = session.exec(
        select(func.count()).select_from(Event).where(col(Event.contact_id).in_(ids))
    ).one()
    return _Record(
        identities=[IdentityPublic.model_validate(i) for i in identities],
        transitions=[TransitionPublic.model_validate(t) for t in transitions],
        consents=[ConsentPublic.model_validate(c) for c in consents],
        merges=[MergePublic.model_validate(m) for m in merges],
        deliveries=[DeliveryPublic.model_validate(d) for d in sent],
        event_count=int(events),
        traits=stored_traits(session, person),
    )


@router.get(
    "/contacts/{contact_id}",
    summary="A contact: state, identities, stage history, consent, merges, deliveries",
    response_model=ContactDetail,
    responses={
        200: {
            "description": "The contact (the survivor's record if the id was merged)",
            "content": {"application/json": {"example": _CONTACT_EXAMPLE}},
        },
        404: {
            "description": "No contact has this id (never, or not since it was erased); "
            "the detail names what was searched",
            "content": {"application/json": {"examples": _NOT_FOUND_EXAMPLES}},
        },
        **_LOOKUP_RESPONSES,
    },
)
async def get_contact(
    *,
    request: Request,
    session: SessionDep,
    contact_id: ContactIdPath,
    by: ByQuery = "auto",
    deliveries: Annotated[
        int, Query(ge=0, le=500, description="How many of the most recent deliveries")
    ] = 20,
) -> ContactDetail:
    """Everything stored about the contact; ``state`` is live from its workflow when
    Temporal answers, else the stored row (``state.source`` says which)."""
    person = await _person(request, session, contact_id, by)
    try:
        record = await in_thread(session, _record, person, deliveries)
    except DatabaseError as exc:
        raise _unavailable(exc.one_line()) from exc
    row = person.survivor
    segments = await in_thread(session, lambda s: contact_segments(s.get_bind(), row.id))
    state = await _live_state(request, row, record.traits)
    return ContactDetail(
        id=row.id,
        merged_into=person.merged_into,
        stage=row.stage,
        locale=row.locale,
        timezone=row.timezone,
        # What `stagecoach contact show` lists: the workflow's attributes when it
        # answers, else the same fold of the stored events.
        traits=dict(state.attributes),
        created_at=_aware(row.created_at),
        updated_at=_aware(row.updated_at),
        state=state,
        identities=record.identities,
        transitions=record.transitions,
        consents=record.consents,
        merges=record.merges,
        deliveries=record.deliveries,
        event_count=record.event_count,
        segments=[SegmentPublic.model_validate(m) for m in segments],
    )


# --- DELETE ------------------------------------------------------------------------------


@dataclass
class _Scrubbed:
    anonymised: Anonymised = field(default_factory=Anonymised)
    removed: Removed = field(default_factory=Removed)
    kept: Kept = field(default_factory=Kept)

    def add(self, other: _Scrubbed) -> None:
        self.anonymised.add(other.anonymised)
        self.removed.add(other.removed)
        self.kept.add(other.kept)


def _rowcount(result: Result[Any]) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _repoint(text: str, old: str, new: str, limit: int) -> str:
    """``text`` with the contact id ``old`` replaced by ``new``, within ``limit`` chars.

    Keys are ``<contact_id>:<rest>``; a key too long once rewritten becomes the
    pseudonym and a digest of its old form, still unique."""
    rewritten = text.replace(old, new)
    if len(rewritten) <= limit:
        return rewritten
    return f"{new}:{hashlib.sha256(text.encode()).hexdigest()[: limit - len(new) - 1]}"


def _taken(
    session: Session,
    table: type[StageTransition | Delivery],
    column: str,
    key: str,
    own: int | None,
) -> bool:
    """Whether another row of ``table`` already holds ``key`` (unique) in ``column``."""
    found = session.exec(
        select(table.id).where(getattr(table, column) == key, col(table.id) != own)
    ).first()
    return found is not None


def scrub(session: Session, ids: Sequence[str], at: datetime) -> _Scrubbed:
    """Erase the personal data of ``ids`` from the database, keeping anonymous rows (see
    the module docstring). Safe to run again: a second run touches only rows written
    under the old ids since the first."""
    done = _Scrubbed()
    alias = {cid: pseudonym(cid) for cid in ids}
    # Pseudonymous contact rows first: the rows re-pointed below refer to them.
    for cid in ids:
        row = session.get(Contact, cid)
        if row is None:
            continue
        done.anonymised.contacts += 1
        if session.get(Contact, alias[cid]) is None:
            session.add(
                Contact(
                    id=alias[cid],
                    stage=row.stage,
                    locale=None,
                    timezone=None,
                    traits={"erased_at": at.isoformat()},
                    created_at=row.created_at,
                    updated_at=at,
                )
            )
    session.flush()
    # Outbox rows are found through their events too, so before the events move.
    moving = select(col(Event.id)).where(col(Event.contact_id).in_(ids))
    done.removed.outbox = _rowcount(
        session.execute(
            delete(Outbox).where(
                or_(
                    col(Outbox.contact_id).in_(ids),
                    col(Outbox.merged_into).in_(ids),
                    col(Outbox.event_id).in_(moving),
                )
            )
        )
    )
    for cid in ids:
        done.anonymised.events += _rowcount(
            session.execute(
                update(Event)
                .where(col(Event.contact_id) == cid)
                .values(contact_id=alias[cid], properties={}, context={})
            )
        )
    for transition in session.exec(
        select(StageTransition).where(col(StageTransition.contact_id).in_(ids))
    ).all():
        key = _repoint(transition.key, transition.contact_id, alias[transition.contact_id], 160)
        if _taken(session, StageTransition, "key", key, transition.id):
            session.delete(transition)  # a late retry of a row already scrubbed
            continue
        done.anonymised.transitions += 1
        transition.key = key
        transition.contact_id = alias[transition.contact_id]
        if transition.kind == "manual" and transition.reason != "created":
            transition.reason = _ERASED_REASON
        session.add(transition)
    for delivery in session.exec(select(Delivery).where(col(Delivery.contact_id).in_(ids))).all():
        key = _repoint(
            delivery.idempotency_key, delivery.contact_id, alias[delivery.contact_id], 256
        )
        if _taken(session, Delivery, "idempotency_key", key, delivery.id):
            session.delete(delivery)
            continue
        done.anonymised.deliveries += 1
        delivery.idempotency_key = key
        delivery.contact_id = alias[delivery.contact_id]
        delivery.provider_message_id = None
        delivery.error = None
        session.add(delivery)
    for enrolment in session.exec(
        select(JourneyEnrolment).where(col(JourneyEnrolment.contact_id).in_(ids))
    ).all():
        # Kept for journey analytics; a failed send's error may quote an address.
        done.anonymised.enrolments += 1
        enrolment.contact_id = alias[enrolment.contact_id]
        enrolment.trail = [
            {**p, "outcome": "failed"} if str(p.get("outcome", "")).startswith("failed") else p
            for p in enrolment.trail
        ]
        if (enrolment.reason or "").startswith(("delivery_failed", "handoff_failed")):
            enrolment.reason = enrolment.reason.split(":", 1)[0] if enrolment.reason else None
        session.add(enrolment)
    for handoff in session.exec(select(Handoff).where(col(Handoff.contact_id).in_(ids))).all():
        # Kept for the funnel (handed off, accepted, converted); who and why are personal.
        handoff.idempotency_key = _repoint(
            handoff.idempotency_key, handoff.contact_id, alias[handoff.contact_id], 256
        )
        handoff.contact_id = alias[handoff.contact_id]
        handoff.owner = None
        handoff.payload = {}
        handoff.feedback_reason = None
        session.add(handoff)
    for code in session.exec(
        select(ReferralCode).where(col(ReferralCode.referrer_id).in_(ids))
    ).all():
        # Kept for the referral counts; a code no person stands behind any more expires.
        done.anonymised.referral_codes += 1
        code.referrer_id = alias[code.referrer_id]
        code.expires_at = min(_aware(code.expires_at), at)
        session.add(code)
    for cid in ids:
        done.anonymised.referrals += _rowcount(
            session.execute(
                update(Referral)
                .where(col(Referral.referrer_id) == cid)
                .values(referrer_id=alias[cid])
            )
        )
        # The device id identifies a browser, so it goes with the person referred.
        done.anonymised.referrals += _rowcount(
            session.execute(
                update(Referral)
                .where(col(Referral.referee_id) == cid)
                .values(referee_id=alias[cid], device_id=None)
            )
        )
        done.anonymised.rewards += _rowcount(
            session.execute(
                update(Reward).where(col(Reward.referrer_id) == cid).values(referrer_id=alias[cid])
            )
        )
    session.flush()
    done.removed.identities = _rowcount(
        session.execute(delete(Identity).where(col(Identity.contact_id).in_(ids)))
    )
    done.removed.consents = _rowcount(
        session.execute(delete(Consent).where(col(Consent.contact_id).in_(ids)))
    )
    done.removed.merges = _rowcount(
        session.execute(
            delete(Merge).where(or_(col(Merge.merged_id).in_(ids), col(Merge.into_id).in_(ids)))
        )
    )
    done.removed.propensity_scores = _rowcount(
        session.execute(delete(PropensityScore).where(col(PropensityScore.contact_id).in_(ids)))
    )
    done.kept.suppressions = _rowcount(
        session.execute(
            update(Suppression).where(col(Suppression.contact_id).in_(ids)).values(contact_id=None)
        )
    )
    session.execute(delete(Contact).where(col(Contact.id).in_(ids)))
    return done


def sink_folder(contact_id: str) -> str:
    """The folder the file sink (``stagecoach.connectors.filesink``) writes a contact's messages
    to, under each channel's directory: the id with unsafe characters replaced."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in contact_id)


def scrub_sink(sink: FilePath, ids: Sequence[str]) -> list[str]:
    """Remove every channel's folder of ``ids`` under the file sink ``sink`` (what the
    sink "sent": addresses, names, rendered messages); the folders removed."""
    removed: list[str] = []
    if not sink.is_dir():
        return removed
    for channel in sorted(p for p in sink.iterdir() if p.is_dir()):
        for contact_id in ids:
            folder = channel / sink_folder(contact_id)
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder)
                removed.append(str(folder))
    return removed


def _resync_analytics(request: Request) -> str:
    """Ask the API's report cache for a sync: it replaces the person's copied rows. The
    other API replicas, each with its own copy, are told through the database."""
    with contextlib.suppress(SQLAlchemyError):  # the others then sync when next asked
        bump(request.app.state.db, ERASURES)
    numbers = getattr(request.app.state, "reports", None)
    if numbers is None:
        return "not served by this API: its next sync replaces the person's rows"
    try:
        numbers.sync_soon(request.app.state.db)
    except DatabaseError as exc:
        return f"not synced ({exc.one_line()}): its next sync replaces the person's rows"
    return "syncing"


@router.delete(
    "/contacts/{contact_id}",
    status_code=202,
    summary="Erase a contact (right to erasure): personal data everywhere, workflows too",
    response_model=ErasureSummary,
    responses={
        202: {
            "description": "Erased from the database; Temporal is deleting the workflow "
            "histories (asynchronously)",
            "content": {"application/json": {"example": _ERASURE_EXAMPLE}},
        },
        404: {
            "description": "No contact has this id: never, or erased before (the message "
            "says when). A repeated DELETE answers this.",
            "content": {"application/json": {"examples": _NOT_FOUND_EXAMPLES}},
        },
        **_LOOKUP_RESPONSES,
    },
)
async def erase_contact(
    *,
    request: Request,
    session: SessionDep,
    contact_id: ContactIdPath,
    by: ByQuery = "auto",
) -> ErasureSummary:
    """Remove the contact's personal data from the database and its workflows (with
    their histories) from Temporal; keep anonymous rows so aggregates stay right.

    A merged id erases the contact it was merged into: they are one person. What is kept
    and what goes, table by table, is in the module docstring of
    ``stagecoach.engine.api.routes.contacts``.
    """
    person = await _person(request, session, contact_id, by)
    try:
        client = await temporal_client(request)
    except TemporalUnavailable as exc:
        raise _unavailable(f"nothing was erased: {exc.one_line()}") from exc
    if client is None:
        raise _unavailable(
            "nothing was erased: erasure also deletes the contact's workflow histories, and "
            "this API runs without Temporal. Fix: serve the API with Temporal wired "
            "('stagecoach api')"
        )
    log = _log.bind(contact_id=contact_id, erased=list(person.ids))
    found = _Sweep()
    try:
        await _sweep(client, person.ids, found)
    except (RPCError, RuntimeError) as exc:
        log.warning("erasure refused by Temporal", error=str(exc))
        raise _unavailable(
            f"nothing was erased from the database: Temporal refused to remove the "
            f"contact's workflows ({exc}). Fix: retry; check Temporal"
        ) from exc
    at = datetime.now(UTC)
    try:
        done = await in_thread(session, scrub, person.ids, at)
    except DatabaseError as exc:
        log.warning("erasure not stored", error=exc.one_line())
        raise _unavailable(
            f"the contact's workflows were removed but its data was not: {exc.one_line()}"
        ) from exc
    errors: list[str] = []
    try:
        await _sweep(client, person.ids, found)
        done.add(await in_thread(session, scrub, person.ids, at))
    except (RPCError, RuntimeError, DatabaseError) as exc:
        # The first pass succeeded; what this pass would catch is a race. Reported, and
        # a new DELETE finds whatever it left (a contact row recreated under the old id).
        errors.append(f"second pass: {exc}")
        log.warning("erasure second pass failed", error=str(exc))
    summary = ErasureSummary(
        contact_id=contact_id,
        erased=list(person.ids),
        erased_at=at,
        anonymised=done.anonymised,
        removed=done.removed,
        kept=done.kept,
        workflows=WorkflowErasure(
            terminated=sorted(found.terminated), deleted=sorted(found.deleted), errors=errors
        ),
        stores=OtherStores(
            sink_folders=await asyncio.to_thread(
                scrub_sink, request.app.state.settings.resolved_sink_dir, person.ids
            ),
            analytics=_resync_analytics(request),
        ),
    )
    log.info(
        "contact erased",
        anonymised=done.anonymised.model_dump(exclude_defaults=True),
        removed=done.removed.model_dump(exclude_defaults=True),
        workflows_deleted=len(found.deleted),
    )
    return summary
