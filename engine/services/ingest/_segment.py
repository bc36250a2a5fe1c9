"""The Segment HTTP Tracking API's messages, parsed into ``Incoming`` events (pure).

Field names and meanings follow Segment's spec, so its client libraries work unchanged:
``type``, ``userId``, ``anonymousId``, ``messageId``, ``timestamp``, ``sentAt``,
``context``, ``traits``, ``properties``, ``event`` (track), ``name``/``category`` (page),
``previousId`` (alias), ``groupId`` (group). Our choices where Segment leaves room:

- ``track``'s ``event`` is the event type the pipeline and journeys match
  (``content.downloaded``); ``page`` becomes ``page.viewed``.
- A message without ``messageId`` gets one derived from its content, so an identical
  retry is still applied once.
- ``timestamp`` is corrected for the client's clock skew with ``sentAt`` as Segment does.
  More than 24 hours in the future, or before 2000, is refused; without one, the time
  received is used.
- Size limits: 32 KB a message, 500 KB a batch, and JSON nested at most
  ``MAX_DEPTH`` levels: the store writes properties, traits and context as JSON with
  orjson, whose writer stops past 254 levels, and no event needs more. A batch item over
  it is refused by index like any other bad item; the rest of the batch is stored.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from stagecoach.engine.services.ingest._identity import IdentityError, identities_from

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_DEPTH = 254
"""Levels of JSON nesting a message may have (orjson's own limit for writing JSON)."""
FUTURE_LIMIT = timedelta(hours=24)
PAST_LIMIT = datetime(2000, 1, 1, tzinfo=UTC)

Kind = Literal["identify", "track", "page", "screen", "alias", "group"]


@dataclass(frozen=True)
class Incoming:
    """One accepted message, ready to store: who, what, when, and where from."""

    kind: str
    message_id: str
    type: str
    occurred_at: datetime
    user_id: str | None = None
    anonymous_id: str | None = None
    previous_id: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    identities: dict[str, str] = field(default_factory=dict)
    """Normalised identities found in the message: ``{"email": ..., "phone": ...}``."""
    source: str = "api"
    channel: str | None = None
    contact_id: str | None = None
    """The internal contact id, when the sender already knows it (our own signed links,
    hand-off feedback, peers): the event goes to that contact (or the one it was merged
    into) and the message's identities are attached to it, never merging anyone. An
    unknown id falls back to resolving the identities. Never read from a Segment body."""


@dataclass(frozen=True)
class Problem:
    """A refused message: which one (batch index), which field, and what to do."""

    index: int | None
    field: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "message": self.message}
        if self.index is not None:
            out["index"] = self.index
        return out


Id = Annotated[str, StringConstraints(max_length=256)] | int
"""Segment allows string or numeric ids; they are stored as strings."""


class _Base(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    userId: Id | None = None
    anonymousId: Id | None = None
    messageId: str | None = Field(default=None, max_length=128, min_length=1)
    timestamp: datetime | None = None
    sentAt: datetime | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    integrations: dict[str, Any] = Field(default_factory=dict)


class IdentifyIn(_Base):
    type: Literal["identify"]
    traits: dict[str, Any] = Field(default_factory=dict)


class TrackIn(_Base):
    type: Literal["track"]
    event: str = Field(min_length=1, max_length=128)
    properties: dict[str, Any] = Field(default_factory=dict)


class PageIn(_Base):
    type: Literal["page", "screen"]
    name: str | None = Field(default=None, max_length=256)
    category: str | None = Field(default=None, max_length=256)
    properties: dict[str, Any] = Field(default_factory=dict)


class AliasIn(_Base):
    type: Literal["alias"]
    previousId: Id


class GroupIn(_Base):
    type: Literal["group"]
    groupId: Id
    traits: dict[str, Any] = Field(default_factory=dict)


Message = Annotated[IdentifyIn | TrackIn | PageIn | AliasIn | GroupIn, Field(discriminator="type")]
_MESSAGE: TypeAdapter[IdentifyIn | TrackIn | PageIn | AliasIn | GroupIn] = TypeAdapter(Message)

_TYPE_FIX = "send one of identify, track, page, screen, alias, group"


def _loc(error: Mapping[str, Any]) -> str:
    return ".".join(str(p) for p in error.get("loc", ()) if p not in _KIND_TAGS) or "body"


_KIND_TAGS = {"identify", "track", "page", "screen", "alias", "group"}


def _fix_for(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    where = _loc(error)
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        return f"type is missing or unknown: {_TYPE_FIX}"
    if kind == "missing":
        return f"{where} is required"
    if kind in ("string_too_long", "too_long"):
        return f"{where} is too long: {error.get('msg', '')}"
    if kind.startswith("datetime"):
        return f"{where} is not a timestamp: send ISO 8601 with a zone, e.g. 2026-11-22T09:00:00Z"
    if kind == "dict_type":
        return f"{where} must be a JSON object"
    return f"{where}: {error.get('msg', 'invalid')}"


def parse_message(
    raw: Any,
    *,
    received_at: datetime,
    index: int | None = None,
    defaults: Mapping[str, Any] | None = None,
    source: str = "api",
) -> Incoming | Problem:
    """One Segment message (already JSON-decoded) as an ``Incoming``, or the problem."""
    if not isinstance(raw, dict):
        return Problem(index, "body", "each message must be a JSON object")
    if defaults:
        own = raw.get("context", {})
        # A context that is not an object is left as sent, for validation to name.
        merged = {**defaults.get("context", {}), **own} if isinstance(own, dict) else own
        raw = {**defaults, **raw, "context": merged}
    try:
        size = len(orjson.dumps(raw))
    except orjson.JSONEncodeError as exc:
        return Problem(index, "body", _unwritable(exc))
    if size > MAX_MESSAGE_BYTES:
        return Problem(index, "body", f"message is {size} bytes; the limit is 32 KB")
    try:
        message = _MESSAGE.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "type" if str(first.get("type", "")).startswith("union_tag") else _loc(first)
        return Problem(index, where, _fix_for(first))
    user_id = None if message.userId is None else str(message.userId)
    anonymous_id = None if message.anonymousId is None else str(message.anonymousId)
    if not user_id and not anonymous_id:
        return Problem(index, "userId", "userId or anonymousId is required: say who did it")
    occurred, problem = _when(message, received_at)
    if problem is not None:
        return Problem(index, "timestamp", problem)
    assert occurred is not None
    traits: dict[str, Any] = dict(message.context.get("traits") or {})
    properties: dict[str, Any] = {}
    previous_id: str | None = None
    match message:
        case IdentifyIn():
            kind, type_ = "identify", "identify"
            traits.update(message.traits)
        case TrackIn():
            kind, type_ = "track", message.event.strip()
            properties = message.properties  # the model's own copy (pydantic copies)
        case PageIn():
            kind, type_ = message.type, f"{message.type}.viewed"
            properties = message.properties
            for key in ("name", "category"):
                value = getattr(message, key)
                if value is not None:
                    properties.setdefault(key, value)
        case AliasIn():
            kind, type_ = "alias", "alias"
            previous_id = str(message.previousId)
        case GroupIn():
            kind, type_ = "group", "group"
            properties = {"group_id": str(message.groupId)}
            traits["company"] = {**message.traits, "id": str(message.groupId)}
    if not type_:
        return Problem(index, "event", "event is empty: name the behaviour")
    if type_ == "nps.answered":
        score = properties.get("score")
        if (
            isinstance(score, bool)
            or not isinstance(score, int | float)
            or not (0 <= score <= 10 and float(score).is_integer())
        ):
            return Problem(
                index,
                "properties.score",
                f"an NPS answer is a whole number from 0 to 10, not {score!r}",
            )
    if type_ == "survey.answered":
        refused = _survey_problem(properties)
        if refused is not None:
            return Problem(index, *refused)
    for key in ("locale", "timezone"):
        value = message.context.get(key)
        if isinstance(value, str) and value and key not in traits:
            traits[key] = value
    try:
        identities = identities_from(traits, user_id=user_id, anonymous_id=anonymous_id)
    except IdentityError as exc:
        return Problem(index, f"traits.{exc.field}", exc.message)
    message_id = message.messageId or _derived_id(raw)
    channel = message.context.get("channel")
    return _incoming(
        kind=kind,
        message_id=message_id,
        type=type_,
        occurred_at=occurred,
        user_id=user_id,
        anonymous_id=anonymous_id,
        previous_id=previous_id,
        properties=properties,
        traits=traits,
        context=message.context,  # the model's own copy, which nobody else holds
        identities=identities,
        source=source,
        channel=channel if isinstance(channel, str) else None,
        contact_id=None,
    )


def _survey_problem(properties: Mapping[str, Any]) -> tuple[str, str] | None:
    """What is wrong with a ``survey.answered`` event's answer (the field, the message), if
    anything: the value tier's attitude reads ``score`` out of ``max``, and an answer it
    cannot read would silently count as no answer."""

    def number(value: Any) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value) if math.isfinite(value) else None

    raw_top = properties.get("max", 5)
    top = number(raw_top)
    if top is None or top <= 0:
        return (
            "properties.max",
            f"a survey's max is the top of its scale, a number above 0 (leave it out for a"
            f" five-point scale), not {raw_top!r}",
        )
    raw_score = properties.get("score")
    score = number(raw_score)
    if score is None or not 0 <= score <= top:
        return (
            "properties.score",
            f"a survey answer is a number from 0 to max ({top:g}), not {raw_score!r}",
        )
    return None


def _incoming(
    *,
    kind: str,
    message_id: str,
    type: str,
    occurred_at: datetime,
    user_id: str | None,
    anonymous_id: str | None,
    previous_id: str | None,
    properties: dict[str, Any],
    traits: dict[str, Any],
    context: dict[str, Any],
    identities: dict[str, str],
    source: str,
    channel: str | None,
    contact_id: str | None,
) -> Incoming:
    """``Incoming(...)`` with every field given, built without the frozen dataclass's
    ``__init__``: its ``object.__setattr__`` per field was a fifth of a message's parse.
    The same object (equal, frozen); a test checks the fields match ``Incoming``'s."""
    made: Incoming = object.__new__(Incoming)
    made.__dict__.update(
        kind=kind,
        message_id=message_id,
        type=type,
        occurred_at=occurred_at,
        user_id=user_id,
        anonymous_id=anonymous_id,
        previous_id=previous_id,
        properties=properties,
        traits=traits,
        context=context,
        identities=identities,
        source=source,
        channel=channel,
        contact_id=contact_id,
    )
    return made


def parse_batch(
    raw: Any, *, received_at: datetime, source: str = "api"
) -> tuple[list[Incoming], list[Problem]]:
    """A ``/v1/batch`` body: the good messages, and the bad ones by index."""
    if not isinstance(raw, dict) or not isinstance(raw.get("batch"), list):
        return [], [Problem(None, "batch", 'send {"batch": [message, ...]}')]
    defaults: dict[str, Any] = {}
    if isinstance(raw.get("context"), dict):
        defaults["context"] = raw["context"]
    if raw.get("sentAt") is not None:
        defaults["sentAt"] = raw["sentAt"]
    good: list[Incoming] = []
    bad: list[Problem] = []
    for n, item in enumerate(raw["batch"]):
        parsed = parse_message(
            item, received_at=received_at, index=n, defaults=defaults, source=source
        )
        (bad if isinstance(parsed, Problem) else good).append(parsed)  # type: ignore[arg-type]
    return good, bad


def _unwritable(exc: orjson.JSONEncodeError) -> str:
    """Why a decoded message cannot be written back as JSON, and what to send instead."""
    if "recursion" in str(exc).lower():
        return (
            f"message is nested more than {MAX_DEPTH} levels deep; the limit is {MAX_DEPTH}: "
            "send flatter properties, traits and context"
        )
    return f"message cannot be stored as JSON ({exc}): send plain JSON values"


def _when(message: _Base, received_at: datetime) -> tuple[datetime | None, str | None]:
    stamp = message.timestamp
    if stamp is None:
        return received_at, None
    if stamp.tzinfo is None:
        return None, "timestamp has no time zone: send it with an offset, e.g. ...T09:00:00Z"
    if message.sentAt is not None and message.sentAt.tzinfo is not None:
        # Segment's skew correction: the client's clock is off by received - sent.
        try:
            stamp = stamp + (received_at - message.sentAt)
        except OverflowError:
            return None, "timestamp and sentAt are too far apart: check the client's clock"
    if stamp > received_at + FUTURE_LIMIT:
        return None, "timestamp is more than 24 hours in the future: check the client's clock"
    if stamp < PAST_LIMIT:
        return None, "timestamp is before 2000: send when it happened, or omit it"
    return stamp.astimezone(UTC), None


def _derived_id(raw: Mapping[str, Any]) -> str:
    body = orjson.dumps(
        {k: v for k, v in raw.items() if k != "sentAt"}, option=orjson.OPT_SORT_KEYS
    )
    return "derived-" + hashlib.sha256(body).hexdigest()[:40]
