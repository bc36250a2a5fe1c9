"""``POST /v1/handoffs/{handoff_id}/feedback``: what sales did with a handed-off lead.

The CRM, or whatever received the hand-off webhook, answers with one decision::

    {"handoff_id": "h_7f3a9c2e",  # the id in the path: the signature binds the two
     "decision": "accepted" | "rejected" | "converted",
     "reason": "no_budget",       # required for rejected, optional otherwise
     "owner": "wang.wei",         # optional: who took the lead (updates the hand-off)
     "at": "2026-11-23T10:00:00Z"}  # optional: when it was decided; now by default

Authentication is the hand-off webhook's own signature, the other way round: the body is
signed with ``Stagecoach-Signature: t=<unix>,v1=<hmac>`` using the shared secret
``STAGECOACH_WEBHOOK_SECRET`` (any of them while rotating), exactly as
``stagecoach.connectors.crm.sign`` does and ``docs/webhooks.md`` describes. Unsigned, wrongly
signed, or signed more than five minutes away from our clock: **401**, nothing read.
The signature covers the body but not the URL, so the body names its hand-off: a body
whose ``handoff_id`` is not the path's is **401** too, and a decision captured for one
hand-off cannot be replayed against another within the five minutes. Secret unset:
**503**, naming the setting.

Effects, once per decision:

- the ``handoffs`` row: ``status``, ``feedback_reason``, ``feedback_at`` and (when given)
  ``owner``;
- the event ``sales.<decision>`` on the hand-off's contact, properties
  ``{handoff_id, owner, reason}``, through the Ingestor with ``contact_id`` set, message
  id ``handoff:<id>:<decision>``. The contact workflow stops the hand-off's reminder
  and escalation and the pipeline moves the stage (accepted: opportunity, converted:
  customer, rejected: recycled).

Idempotent, and decisions only move forward, so no decision is ever given twice
(:data:`FOLLOWS` is the table; ``docs/webhooks.md`` prints it):

- ``sent`` (no answer yet): any decision;
- ``accepted``: only ``converted`` (sales took the lead; a lead sales own is not sent
  back to nurture by a later rejection);
- ``rejected``: only ``converted`` (the deal closed anyway; a rejected lead is back in
  nurture and comes back to sales as a new hand-off, never as a late ``accepted``);
- ``converted`` is final.

- the decision the hand-off already has: **200** with ``"duplicate": true``, nothing new
  recorded (a lost event from an earlier attempt is written now, under the same id);
- an ``Idempotency-Key`` header seen with an earlier decision of this hand-off: that
  answer again (**200** duplicate), even if another decision came after it;
- any other decision: **409**, naming the hand-off's status and what may follow it.

The row is written first and the event second, in their own transactions (the Ingestor
group-commits): when the event cannot be stored the answer is **503**, and the retry,
seen as a duplicate, stores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import update
from sqlmodel import Session, col, select

from stagecoach.connectors.crm import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    InvalidSignature,
    verify_signature,
)
from stagecoach.engine.api._common import in_thread, ingest_one, read_body
from stagecoach.engine.api.deps import SessionDep
from stagecoach.engine.domain.errors import DatabaseError
from stagecoach.engine.services.ingest import Incoming
from stagecoach.engine.services.ingest._segment import FUTURE_LIMIT, PAST_LIMIT
from stagecoach.engine.services.storage.models import Event, Handoff

router = APIRouter(prefix="/v1", tags=["sales"])

_log = structlog.get_logger("stagecoach.api.handoffs")

Decision = Literal["accepted", "rejected", "converted"]
DECISIONS: tuple[Decision, ...] = ("accepted", "rejected", "converted")
FOLLOWS: dict[str, tuple[Decision, ...]] = {
    "sent": DECISIONS,
    "accepted": ("converted",),
    "rejected": ("converted",),
    "converted": (),
}
"""What may follow a hand-off's status; any other status (``failed``) is treated as sent."""
_WHY = {
    "accepted": "sales took the lead, so only the deal closing can follow",
    "rejected": (
        "a rejected lead is back in nurture and returns to sales as a new hand-off "
        "(send converted if the deal closed anyway)"
    ),
    "converted": "converted is final: the deal is closed",
}

BODY_LIMIT = 16 * 1024
SOURCE = "sales_feedback"
CHANNEL = "crm"
_ENV_NAME = "STAGECOACH_WEBHOOK_SECRET"
_MAX_KEY = 256


class FeedbackIn(BaseModel):
    """Sales' decision on one hand-off."""

    model_config = ConfigDict(extra="forbid")

    handoff_id: str = Field(
        max_length=64,
        description="The hand-off this decides: the id in the path. The signature covers "
        "the body, so naming it here binds the decision to that one hand-off",
    )
    decision: Decision = Field(description="accepted, rejected or converted")
    reason: str | None = Field(
        default=None,
        max_length=512,
        description="Why; required for rejected (e.g. no_budget, wrong_contact)",
    )
    owner: str | None = Field(
        default=None, max_length=128, description="Who on the sales team has the lead now"
    )
    at: datetime | None = Field(
        default=None, description="When sales decided (ISO 8601 with a zone); now if omitted"
    )


class FeedbackOut(BaseModel):
    """What the hand-off is now, and whether this request changed it."""

    success: bool = True
    handoff_id: str
    contact_id: str
    decision: Decision
    status: str = Field(description="The hand-off's status now")
    duplicate: bool = Field(description="True when the decision was already recorded")
    event: str = Field(description="The event type recorded on the contact")
    message_id: str = Field(description="The event's message id (one per decision)")


def message_id(handoff_id: str, decision: str) -> str:
    """The id of the event a decision records: the same for every retry."""
    return f"handoff:{handoff_id}:{decision}"


# --- refusals -----------------------------------------------------------------------------


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"success": False, "error": message}, status_code=status, headers=headers)


def _invalid(errors: list[tuple[str, str]]) -> JSONResponse:
    return JSONResponse(
        {"success": False, "errors": [{"field": f, "message": m} for f, m in errors]},
        status_code=400,
    )


_SIGN_FIX = (
    f"sign the raw body as the hand-off webhook is signed, with {_ENV_NAME}'s secret and "
    f"t= the current Unix time, in the {SIGNATURE_HEADER} header"
)
_CHALLENGE = {"WWW-Authenticate": f'{SIGNATURE_HEADER} realm="stagecoach"'}
_DISABLED = (
    f"hand-off feedback is off because {_ENV_NAME} is not set: set it to the secret the "
    "hand-off webhook is signed with (the receiver signs its feedback with the same one) "
    "and restart the API"
)


def webhook_secrets(request: Request) -> list[str]:
    """``STAGECOACH_WEBHOOK_SECRET`` as a list (comma-separated while rotating)."""
    secrets: list[str] = request.app.state.settings.webhook_secrets
    return secrets


# --- the body -----------------------------------------------------------------------------


_FIELDS = "handoff_id, decision, reason, owner, at"


def _problem(error: Any) -> tuple[str, str]:
    where = ".".join(str(p) for p in error.get("loc", ())) or "body"
    kind = str(error.get("type", ""))
    if kind == "missing":
        if where == "handoff_id":
            return where, (
                "handoff_id is required: the hand-off's id, as in the path, so that the "
                "signature binds this decision to it"
            )
        return where, f"{where} is required" + (
            f": one of {', '.join(DECISIONS)}" if where == "decision" else ""
        )
    if kind == "literal_error":
        return where, f"{where} must be one of {', '.join(DECISIONS)}"
    if kind == "extra_forbidden":
        return where, f"unknown field {where!r}: send only {_FIELDS}"
    if kind.startswith("datetime"):
        return where, f"{where} is not a time: send ISO 8601 with a zone, e.g. 2026-11-23T10:00:00Z"
    return where, f"{where}: {error.get('msg', 'invalid')}"


@dataclass(frozen=True)
class _Feedback:
    handoff_id: str
    decision: Decision
    reason: str | None
    owner: str | None
    at: datetime


def parse_feedback(raw: bytes, *, now: datetime) -> _Feedback | list[tuple[str, str]]:
    """The request body as a decision, or the problems by field."""
    try:
        body = FeedbackIn.model_validate_json(raw or b"null")
    except ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0].get("type") in ("json_invalid", "model_type"):
            return [("body", f"send a JSON object with {_FIELDS}")]
        return [_problem(e) for e in errors]
    reason = (body.reason or "").strip() or None
    owner = (body.owner or "").strip() or None
    problems: list[tuple[str, str]] = []
    if body.decision == "rejected" and reason is None:
        problems.append(("reason", "reason is required when rejecting: say why, e.g. no_budget"))
    at = body.at or now
    if at.tzinfo is None:
        problems.append(("at", "at has no time zone: send it with an offset, e.g. ...T10:00:00Z"))
    elif at > now + FUTURE_LIMIT:
        problems.append(("at", "at is more than 24 hours in the future: check the clock"))
    elif at < PAST_LIMIT:
        problems.append(("at", "at is before 2000: send when sales decided, or omit it"))
    if problems:
        return problems
    return _Feedback(body.handoff_id, body.decision, reason, owner, at.astimezone(UTC))


# --- the decision -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Decided:
    """The hand-off after this request, and whether its event is (re)sent."""

    handoff_id: str
    contact_id: str
    status: str
    owner: str | None
    reason: str | None
    at: datetime
    duplicate: bool
    record: bool


@dataclass(frozen=True)
class _Refused:
    status: int
    message: str


def _as_stored(row: Handoff, feedback: _Feedback, *, duplicate: bool, record: bool) -> _Decided:
    at = row.feedback_at or feedback.at
    return _Decided(
        row.id,
        row.contact_id,
        row.status,
        row.owner,
        row.feedback_reason,
        at if at.tzinfo else at.replace(tzinfo=UTC),  # SQLite hands back naive times
        duplicate,
        record,
    )


def refusal(handoff_id: str, status: str, decision: Decision) -> str | None:
    """Why ``decision`` cannot follow a hand-off now ``status``, or ``None`` if it may."""
    allowed = FOLLOWS.get(status, DECISIONS)
    if decision in allowed or decision == status:
        return None
    may = (
        "nothing may follow it"
        if not allowed
        else "only " + " or ".join(repr(d) for d in allowed) + " may follow it"
    )
    return (
        f"hand-off {handoff_id!r} is already {status}, so {decision!r} cannot follow: "
        f"{may} ({_WHY.get(status, 'decisions only move forward')})"
    )


def _keyed(session: Session, handoff_id: str, key: str | None) -> str | None:
    """The decision an earlier request with this ``Idempotency-Key`` recorded, if any."""
    ids = {message_id(handoff_id, d): d for d in DECISIONS}
    events = session.exec(select(Event).where(col(Event.message_id).in_(ids))).all()
    for event in events:
        if event.context.get("idempotency_key") == key:
            return ids[event.message_id]
    return None


def _decide(
    session: Session, handoff_id: str, feedback: _Feedback, key: str | None
) -> _Decided | _Refused:
    """Check ``feedback`` against the hand-off and apply it; runs in one transaction.

    The status is compared and set in one statement (``WHERE status = <as read>``), so
    two concurrent answers cannot both apply: the loser reads again and is a duplicate or
    a conflict."""
    decision = feedback.decision
    for _ in range(3):
        session.expire_all()
        row = session.get(Handoff, handoff_id)
        if row is None:
            return _Refused(
                404,
                f"no hand-off {handoff_id!r}: use the id from the hand-off webhook's "
                "data.handoff_id (or the CRM record it created)",
            )
        earlier = _keyed(session, handoff_id, key) if key is not None else None
        if earlier is not None and earlier != decision:
            return _Refused(
                409,
                f"{IDEMPOTENCY_HEADER} {key!r} was used for this hand-off's {earlier!r} "
                f"decision: send {decision!r} with a new key",
            )
        if earlier is not None or row.status == decision:
            same = row.status == decision
            return _as_stored(row, feedback, duplicate=True, record=same)
        refused = refusal(handoff_id, row.status, decision)
        if refused is not None:
            return _Refused(409, refused)
        values: dict[str, Any] = {
            "status": decision,
            "feedback_reason": feedback.reason,
            "feedback_at": feedback.at,
        }
        if feedback.owner is not None:
            values["owner"] = feedback.owner
        result = session.execute(
            update(Handoff)
            .where(col(Handoff.id) == handoff_id, col(Handoff.status) == row.status)
            .values(**values)
        )
        if int(getattr(result, "rowcount", 0) or 0) == 1:
            return _Decided(
                row.id,
                row.contact_id,
                decision,
                feedback.owner if feedback.owner is not None else row.owner,
                feedback.reason,
                feedback.at,
                duplicate=False,
                record=True,
            )
        session.rollback()  # answered concurrently: read it again
    return _Refused(409, f"hand-off {handoff_id!r} changed while this answer was applied: retry")


def _event(decided: _Decided, decision: Decision, key: str | None) -> Incoming:
    properties: dict[str, Any] = {"handoff_id": decided.handoff_id}
    if decided.owner is not None:
        properties["owner"] = decided.owner
    if decided.reason is not None:
        properties["reason"] = decided.reason
    return Incoming(
        kind="track",
        message_id=message_id(decided.handoff_id, decision),
        type=f"sales.{decision}",
        occurred_at=decided.at,
        properties=properties,
        context={"idempotency_key": key} if key else {},
        source=SOURCE,
        channel=CHANNEL,
        contact_id=decided.contact_id,
    )


# --- the route ----------------------------------------------------------------------------

_EXAMPLE_OK = {
    "success": True,
    "handoff_id": "h_7f3a9c2e41d7b3a8",
    "contact_id": "c_0123456789abcdef01234567",
    "decision": "rejected",
    "status": "rejected",
    "duplicate": False,
    "event": "sales.rejected",
    "message_id": "handoff:h_7f3a9c2e41d7b3a8:rejected",
}

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Recorded; or already recorded (duplicate: true), nothing new",
        "content": {
            "application/json": {
                "examples": {
                    "recorded": {"value": _EXAMPLE_OK},
                    "duplicate": {"value": {**_EXAMPLE_OK, "duplicate": True}},
                }
            }
        },
    },
    400: {
        "description": "A field is wrong: errors[].field names it; nothing recorded",
        "content": {
            "application/json": {
                "example": {
                    "success": False,
                    "errors": [
                        {
                            "field": "reason",
                            "message": "reason is required when rejecting: say why, e.g. no_budget",
                        }
                    ],
                }
            }
        },
    },
    401: {
        "description": f"The {SIGNATURE_HEADER} header is missing, wrong or stale",
        "content": {
            "application/json": {
                "example": {
                    "success": False,
                    "error": "no signature matches: wrong secret, or the body was altered: "
                    + _SIGN_FIX,
                }
            }
        },
    },
    404: {
        "description": "No hand-off has this id",
        "content": {
            "application/json": {
                "example": {
                    "success": False,
                    "error": "no hand-off 'h_nope': use the id from the hand-off webhook's "
                    "data.handoff_id (or the CRM record it created)",
                }
            }
        },
    },
    409: {
        "description": "The decision cannot follow the hand-off's current one",
        "content": {
            "application/json": {
                "example": {
                    "success": False,
                    "error": "hand-off 'h_7f3a9c2e41d7b3a8' is already accepted, so "
                    "'rejected' cannot follow: only 'converted' may follow it (sales took "
                    "the lead, so only the deal closing can follow)",
                }
            }
        },
    },
    413: {"description": "Body over 16 KB"},
    503: {
        "description": f"{_ENV_NAME} is unset, or the database is unavailable: retry",
        "content": {"application/json": {"example": {"success": False, "error": _DISABLED}}},
    },
}

_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": FeedbackIn.model_json_schema(),
                "examples": {
                    "accepted": {
                        "summary": "Sales took the lead",
                        "value": {
                            "handoff_id": "h_7f3a9c2e",
                            "decision": "accepted",
                            "owner": "wang.wei",
                        },
                    },
                    "rejected": {
                        "summary": "Not a fit: the reason is required",
                        "value": {
                            "handoff_id": "h_7f3a9c2e",
                            "decision": "rejected",
                            "reason": "no_budget",
                            "owner": "wang.wei",
                            "at": "2026-11-23T10:00:00Z",
                        },
                    },
                    "converted": {
                        "summary": "The deal closed",
                        "value": {
                            "handoff_id": "h_7f3a9c2e",
                            "decision": "converted",
                            "at": "2027-01-15T08:30:00Z",
                        },
                    },
                },
            }
        },
    }
}


@router.post(
    "/handoffs/{handoff_id}/feedback",
    summary="Sales feedback on a hand-off: accepted, rejected (with a reason) or converted",
    description=(
        f"Sign the raw body as the hand-off webhook is signed ({SIGNATURE_HEADER}: "
        f"t=<unix>,v1=<HMAC-SHA256 of '<t>.' + body>, keyed with {_ENV_NAME}). Updates "
        "the hand-off and records sales.accepted, sales.rejected or sales.converted on its "
        "contact, once. The body's handoff_id must be the path's: the signature covers the "
        "body, so that binds the decision to this hand-off. Repeating a decision answers "
        "duplicate: true, and so does a "
        f"repeated {IDEMPOTENCY_HEADER}. Decisions move forward: accepted, then converted; "
        "rejected, then converted. converted is final; anything else is 409."
    ),
    response_model=FeedbackOut,
    responses=_RESPONSES,
    openapi_extra=_REQUEST_BODY,
)
async def handoff_feedback(
    *,
    request: Request,
    session: SessionDep,
    handoff_id: Annotated[
        str,
        Path(description="The hand-off's id, as in the webhook's data", examples=["h_7f3a9c2e"]),
    ],
    signature: Annotated[
        str | None,
        Header(alias=SIGNATURE_HEADER, description="t=<unix seconds>,v1=<hex HMAC-SHA256>"),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=IDEMPOTENCY_HEADER,
            description="Optional: a retry with the same key gets the first answer again",
        ),
    ] = None,
) -> Response:
    secrets = webhook_secrets(request)
    if not secrets:
        return _error(503, _DISABLED)
    raw = await read_body(request, BODY_LIMIT)
    if raw is None:
        return _error(413, "body over 16 KB: send only decision, reason, owner and at")
    try:
        verify_signature(secrets, signature, raw)
    except InvalidSignature as exc:
        return _error(401, f"{exc.message}: {_SIGN_FIX}", **_CHALLENGE)
    now = datetime.now(UTC)
    feedback = parse_feedback(raw, now=now)
    if isinstance(feedback, list):
        return _invalid(feedback)
    if feedback.handoff_id != handoff_id:
        # A signed decision captured for one hand-off, replayed against another.
        return _error(
            401,
            f"the signed body decides hand-off {feedback.handoff_id!r}, not {handoff_id!r}: "
            "post each decision to its own hand-off's URL",
            **_CHALLENGE,
        )
    key = (idempotency_key or "").strip() or None
    if key is not None and len(key) > _MAX_KEY:
        return _invalid([(IDEMPOTENCY_HEADER, f"{IDEMPOTENCY_HEADER} is over {_MAX_KEY} chars")])
    try:
        decided = await in_thread(session, _decide, handoff_id, feedback, key)
        if isinstance(decided, _Refused):
            return _error(decided.status, decided.message)
        if decided.record:  # a duplicate too: its event may have been lost last time
            await ingest_one(request, _event(decided, feedback.decision, key))
    except DatabaseError as exc:
        return JSONResponse(
            {"success": False, "error": exc.one_line()},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    _log.info(
        "handoff.feedback",
        handoff_id=handoff_id,
        contact_id=decided.contact_id,
        decision=feedback.decision,
        status=decided.status,
        duplicate=decided.duplicate,
    )
    out = FeedbackOut(
        handoff_id=decided.handoff_id,
        contact_id=decided.contact_id,
        decision=feedback.decision,
        status=decided.status,
        duplicate=decided.duplicate,
        event=f"sales.{feedback.decision}",
        message_id=message_id(decided.handoff_id, feedback.decision),
    )
    return JSONResponse(out.model_dump())
