"""``/v1/identify|track|page|screen|alias|group|batch``: the Segment HTTP Tracking API.

Point a Segment client library at our base URL and it works unchanged: write keys go as
HTTP basic auth (the key as user name, empty password) or as ``writeKey`` in the body,
and a good call answers ``200 {"success": true}``. Ours adds what a client can act on:

- 400 names the bad field (``errors[].field``) and says what to send;
- 401 for an unknown or revoked write key; 413 for a body over the limit (32 KB a call,
  500 KB a batch); 503 when the database cannot take the write (retry, same ids);
- in a batch the good messages are stored and the bad ones listed by ``index``: the
  first ``MAX_PROBLEMS`` of them, with ``omitted`` counting the rest, so a bad batch
  never answers more than a few KB;
- ``messageId`` makes retries safe: a message stored before is acknowledged again and
  counted as a duplicate, never stored or signalled twice.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from cachetools import LRUCache
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from stagecoach.engine.api._common import ingest, read_body
from stagecoach.engine.api.auth import ADMIN_RESPONSES, require_admin
from stagecoach.engine.domain.errors import DatabaseError, StagecoachError
from stagecoach.engine.services.ingest import (
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    Problem,
    parse_batch,
    parse_message,
)
from stagecoach.engine.services.ingest._segment import (
    AliasIn,
    GroupIn,
    IdentifyIn,
    Message,
    PageIn,
    TrackIn,
)
from stagecoach.engine.services.storage.models import WriteKey

router = APIRouter(prefix="/v1", tags=["events"])


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


RESERVED_SOURCES = frozenset(
    {
        # services.storage.interactions: WeChat's callback opens the 48-hour window
        "wechat",
        "unsubscribe_link",
        "preference_page",
        "email_tracking",
        "postmark",
        "sales_feedback",
        "referral_page",
        "referral",
    }
)
"""Sources the API records only for what it attests itself (signed callbacks, tracking,
feedback, referral pages). A write key records its source (or its name), so none may
carry one of these: a key named ``wechat`` could otherwise reopen the customer-service
window."""


class ReservedSource(StagecoachError, ValueError):
    """A write key asked for a source only the API itself may record."""


def create_write_key(db: Engine, name: str, *, source: str | None = None) -> str:
    """A new write key; only its hash is stored, so this is the one time it is seen.

    Raises:
        ReservedSource: the key would record one of ``RESERVED_SOURCES``.
    """
    recorded = source or name
    if recorded in RESERVED_SOURCES:
        raise ReservedSource(
            f"a write key cannot record source {recorded!r}: the API records it only for "
            "events it attests itself",
            fix="give the key another name or --source (e.g. 'website', 'crm', 'app')",
        )
    key = "sk_" + secrets.token_urlsafe(24)
    with Session(db) as session:
        session.add(WriteKey(key_hash=hash_key(key), name=name, source=source))
        session.commit()
    return key


class WriteKeys:
    """Write-key lookups, cached by hash: known and unknown keys alike, so a flood of
    made-up keys does not reach the database.

    The cache is a ``cachetools.LRUCache`` of ``size`` entries (a maintained bounded
    mapping; the least recently used lookup goes first), so unauthenticated traffic
    cannot grow memory. An entry is trusted for ``ttl`` seconds: a key revoked through
    this instance (:meth:`revoke`) is refused at once, one revoked elsewhere (another
    replica, ``stagecoach keys revoke``) within ``ttl``.
    """

    def __init__(self, db: Engine, ttl: float = 30.0, *, size: int = 10_000) -> None:
        self._db = db
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cache: LRUCache[str, tuple[float, WriteKey | None]] = LRUCache(maxsize=size)

    def __len__(self) -> int:
        return len(self._cache)

    def find(self, key: str, now: float) -> WriteKey | None:
        digest = hash_key(key)
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        with Session(self._db) as session:
            row = session.exec(
                select(WriteKey).where(
                    col(WriteKey.key_hash) == digest, col(WriteKey.revoked_at).is_(None)
                )
            ).first()
        with self._lock:
            self._cache[digest] = (now, row)
        return row

    def revoke(self, key: str) -> WriteKey | None:
        """Revoke ``key`` (stored, and forgotten here at once); None if it is unknown.
        Revoking a revoked key changes nothing and answers it again."""
        digest = hash_key(key)
        row = revoke_write_key(self._db, key)
        with self._lock:
            self._cache.pop(digest, None)
        return row


def revoke_write_key(db: Engine, key: str) -> WriteKey | None:
    """Mark ``key`` revoked in the database; None if no such key was ever created. API
    instances that looked it up in the last ``STAGECOACH_WRITE_KEY_CACHE_SECONDS`` still
    accept it until then, except the one that revoked it (``WriteKeys.revoke``)."""
    with Session(db, expire_on_commit=False) as session:
        row = session.get(WriteKey, hash_key(key))
        if row is None:
            return None
        if row.revoked_at is None:
            row.revoked_at = datetime.now(UTC)
            session.add(row)
            session.commit()
            session.refresh(row)
        return row


MAX_PROBLEMS = 100
"""Problems listed in one answer; ``omitted`` counts the others. A 500 KB batch of empty
objects holds some 160,000 bad messages: listing each made a 20 MB answer."""


def _problems(problems: Sequence[Problem]) -> dict[str, Any]:
    """``errors`` (the first ``MAX_PROBLEMS``), and ``omitted`` when there were more."""
    out: dict[str, Any] = {"errors": [p.to_dict() for p in problems[:MAX_PROBLEMS]]}
    if len(problems) > MAX_PROBLEMS:
        out["omitted"] = len(problems) - MAX_PROBLEMS
    return out


def _error(status: int, problems: Sequence[Problem], **extra: Any) -> JSONResponse:
    return JSONResponse({"success": False, **_problems(problems), **extra}, status_code=status)


async def _read(request: Request, limit: int) -> bytes | Response:
    body = await read_body(request, limit)
    if body is None:
        return _error(413, [Problem(None, "body", f"body over {limit // 1024} KB: send less")])
    return body


def _write_key(request: Request, payload: Any) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            user = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user.partition(":")[0] or None
    if isinstance(payload, dict) and isinstance(payload.get("writeKey"), str):
        return str(payload["writeKey"])
    return None


async def _handle(request: Request, kind: str | None) -> Response:
    limit = MAX_BATCH_BYTES if kind is None else MAX_MESSAGE_BYTES
    body = await _read(request, limit)
    if isinstance(body, Response):
        return body
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _error(400, [Problem(None, "body", f"malformed JSON ({exc}): send a JSON object")])
    key = _write_key(request, payload)
    keys: WriteKeys = request.app.state.write_keys
    found = keys.find(key, request.app.state.clock()) if key else None
    if found is None:
        return JSONResponse(
            {
                "success": False,
                "errors": [
                    {
                        "field": "authorization",
                        "message": (
                            "unknown or missing write key: send it as HTTP basic auth user name"
                        ),
                    }
                ],
            },
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="stagecoach"'},
        )
    source = found.source or found.name
    received = datetime.now(UTC)
    if kind is None:
        good, bad = parse_batch(payload, received_at=received, source=source)
    else:
        if isinstance(payload, dict):
            payload.pop("writeKey", None)
            payload.setdefault("type", kind)
            if payload["type"] != kind and not (kind == "page" and payload["type"] == "screen"):
                return _error(
                    400, [Problem(None, "type", f"type is {payload['type']!r} at /v1/{kind}")]
                )
        parsed = parse_message(payload, received_at=received, source=source)
        good, bad = ([], [parsed]) if isinstance(parsed, Problem) else ([parsed], [])
    if not good:
        return _error(400, bad)
    # While the store works, only the parsed messages are kept: the raw body's objects,
    # alive through the wait, would each be walked by the garbage collector for nothing.
    del body, payload
    try:
        outcomes = await ingest(request.app, good)
    except DatabaseError as exc:
        return JSONResponse(
            {"success": False, "errors": [{"field": "database", "message": exc.one_line()}]},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    body_out: dict[str, Any] = {
        "success": True,
        "accepted": len(outcomes),
        "duplicates": sum(1 for o in outcomes if o.duplicate),
    }
    if bad:
        body_out |= _problems(bad)
    return JSONResponse(body_out)


def _doc(model: type[Any], example: dict[str, Any], summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": model.model_json_schema(),
                        "examples": {"example": {"value": example}},
                    }
                },
            }
        },
        "responses": {
            200: {"description": "Stored (or already stored: see duplicates)"},
            400: {"description": "A field is wrong: errors[].field names it"},
            401: {"description": "Unknown or missing write key"},
            413: {"description": "Body over the limit"},
            503: {"description": "Not stored; retry with the same messageId"},
        },
    }


_WHEN = "2026-11-22T09:00:00Z"
EXAMPLES: dict[str, tuple[type[Any], dict[str, Any], str]] = {
    "identify": (
        IdentifyIn,
        {
            "userId": "u-1001",
            "messageId": "m-identify-1",
            "timestamp": _WHEN,
            "traits": {
                "email": "Li.Lei@Example.cn",
                "phone": "+86 138 0013 8000",
                "locale": "zh-CN",
                "timezone": "Asia/Shanghai",
                "consent": {"email": True},
                "consent_wording": "I agree to receive product news by email.",
            },
        },
        "Who the contact is: traits, identities and consent",
    ),
    "track": (
        TrackIn,
        {
            "userId": "u-1001",
            "messageId": "m-track-1",
            "event": "content.downloaded",
            "timestamp": _WHEN,
            "properties": {"content_id": "wp-digital-transformation", "kind": "whitepaper"},
        },
        "Something the contact did",
    ),
    "page": (
        PageIn,
        {
            "anonymousId": "a-77",
            "messageId": "m-page-1",
            "name": "Pricing",
            "properties": {"category": "pricing", "url": "https://example.cn/pricing"},
        },
        "A page view (stored as page.viewed)",
    ),
    "screen": (
        PageIn,
        {"anonymousId": "a-77", "messageId": "m-screen-1", "type": "screen", "name": "Home"},
        "An app screen view (stored as screen.viewed)",
    ),
    "alias": (
        AliasIn,
        {"previousId": "a-77", "userId": "u-1001", "messageId": "m-alias-1"},
        "Join an earlier id (anonymous or not) to this user: their histories merge",
    ),
    "group": (
        GroupIn,
        {
            "userId": "u-1001",
            "groupId": "acme",
            "messageId": "m-group-1",
            "traits": {"name": "Acme", "industry": "manufacturing", "employees": 800},
        },
        "The contact's company (traits.company)",
    ),
}


def _route(kind: str) -> None:
    model, example, summary = EXAMPLES[kind]

    async def endpoint(request: Request) -> Response:
        return await _handle(request, kind)

    endpoint.__name__ = f"ingest_{kind}"
    router.add_api_route(f"/{kind}", endpoint, methods=["POST"], **_doc(model, example, summary))


for _kind in EXAMPLES:
    _route(_kind)


class BatchIn(BaseModel):
    """``/v1/batch``: messages of any type, each with its ``type``."""

    batch: list[Message]
    context: dict[str, Any] | None = None
    sentAt: datetime | None = None


@router.post(
    "/batch",
    **_doc(
        BatchIn,
        {
            "batch": [
                EXAMPLES["identify"][1] | {"type": "identify"},
                EXAMPLES["track"][1] | {"type": "track"},
            ]
        },
        "Up to 500 KB of messages; the good ones are stored, the bad ones listed by index",
    ),
)
async def ingest_batch(request: Request) -> Response:
    return await _handle(request, None)


keys_router = APIRouter(
    prefix="/v1/write-keys",
    tags=["write keys"],
    dependencies=[Depends(require_admin)],
    responses=ADMIN_RESPONSES,
)
"""Admin routes over write keys (creating one stays a CLI command: it prints the key)."""


class RevokeIn(BaseModel):
    """The write key to revoke, as it was printed by ``stagecoach keys create``."""

    key: str


class RevokedOut(BaseModel):
    name: str
    source: str | None
    revoked_at: datetime


@keys_router.post(
    "/revoke",
    summary="Revoke a write key: refused at once by this API, by others within the cache time",
    response_model=RevokedOut,
    responses={404: {"description": "No such write key was ever created"}},
)
def revoke_key(*, request: Request, body: RevokeIn) -> RevokedOut:
    keys: WriteKeys = request.app.state.write_keys
    row = keys.revoke(body.key)
    if row is None or row.revoked_at is None:
        raise HTTPException(
            404,
            detail="no such write key: send the key itself as 'stagecoach keys create' "
            "printed it (sk_...)",
        )
    return RevokedOut(name=row.name, source=row.source, revoked_at=row.revoked_at)
