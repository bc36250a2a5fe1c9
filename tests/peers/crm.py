"""Real local HTTP peers for the CRM hand-off connectors, with fault injection.

Each peer is a Starlette app served by uvicorn on a free port in a background thread:
``with WebhookReceiver(...) as peer:`` starts it, leaving the block stops it. Tests
talk to it over real sockets and assert on what it recorded.

- :class:`WebhookReceiver` verifies ``Stagecoach-Signature`` with
  ``stagecoach.connectors.crm.verify_signature`` and dedupes on ``Idempotency-Key`` the way
  ``docs/webhooks.md`` tells receivers to.
- :class:`HubSpotPeer` follows HubSpot's documented CRM v3/v4 request and response
  shapes for the endpoints the connector uses, its error JSON (``status``,
  ``message``, ``correlationId``, ``category``), Bearer private-app tokens and the
  ``X-HubSpot-RateLimit-*`` headers. It is a model written from the documentation, not
  a copy of HubSpot: where the documentation is silent (what exactly HubSpot answers
  when a lifecycle stage would move backwards) it answers a ``VALIDATION_ERROR`` naming
  the property, which is what the connector must survive.

Faults, for the next ``times`` matching requests (``match`` is a prefix of
``"METHOD /path"``; ``None`` matches all):

- ``fail(status, ...)``: answer ``status`` without doing anything;
- ``slow(seconds, ...)``: do the work, then wait before answering (the client times
  out although the peer acted: the hard case for idempotency);
- ``down()`` / ``up()``: answer 503 to everything until told otherwise;
- ``stop()`` / ``start()``: really stop listening (connection refused), same port.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stagecoach.connectors.crm import (
    DEFAULT_TOLERANCE,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    InvalidSignature,
    verify_signature,
)
from tests.helpers import free_port

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
TEST_TOKEN = "pat-na1-test-token"


@dataclass
class Fault:
    """One injected misbehaviour, for the next ``times`` matching requests."""

    times: int
    match: str | None = None
    status: int | None = None
    """Answer this status without processing; ``None`` processes the request."""
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds to wait before answering (after processing, when ``status`` is None)."""

    def matches(self, signature: str) -> bool:
        return self.match is None or signature.startswith(self.match)


@dataclass(frozen=True)
class Seen:
    """One request as the peer received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class HttpPeer:
    """A uvicorn server in a thread, with a fault queue shared by every subclass."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: list[Seen] = []
        self._faults: list[Fault] = []
        self._down = False
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=[Route("/{path:path}", self._entry, methods=METHODS)])

    # --- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Listen on ``self.port`` (the same port after a ``stop()``)."""
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{type(self).__name__} did not start on port {self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop listening: clients now get "connection refused"."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- faults -------------------------------------------------------------------

    def fail(
        self,
        status: int,
        *,
        times: int = 1,
        match: str | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer ``status`` to the next ``times`` matching requests, doing nothing."""
        with self._lock:
            self._faults.append(
                Fault(times, match, status=status, body=body, headers=dict(headers or {}))
            )

    def slow(self, seconds: float, *, times: int = 1, match: str | None = None) -> None:
        """Process the next ``times`` matching requests, then wait before answering."""
        with self._lock:
            self._faults.append(Fault(times, match, delay=seconds))

    def down(self) -> None:
        """Answer 503 to everything until :meth:`up`."""
        self._down = True

    def up(self) -> None:
        self._down = False

    def _take_fault(self, signature: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(signature):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # --- dispatch -----------------------------------------------------------------

    async def _entry(self, request: Request) -> Response:
        body = await request.body()
        seen = Seen(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
        )
        self.seen.append(seen)
        if self._down:
            return self.fault_response(Fault(1, status=503))
        fault = self._take_fault(f"{seen.method} {seen.path}")
        if fault is not None and fault.status is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            return self.fault_response(fault)
        response = await self.handle(seen)
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        return response

    async def handle(self, request: Seen) -> Response:
        raise NotImplementedError

    def fault_response(self, fault: Fault) -> Response:
        assert fault.status is not None
        body = fault.body if fault.body is not None else {"error": f"injected {fault.status}"}
        return JSONResponse(body, status_code=fault.status, headers=fault.headers)


# --- the webhook receiver -----------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One accepted webhook: what a receiver would act on exactly once."""

    id: str
    key: str
    payload: dict[str, Any]
    signed_at: datetime
    raw_body: bytes
    signature: str


class WebhookReceiver(HttpPeer):
    """A receiver that verifies the signature and dedupes on the idempotency key.

    Args:
        secrets: The secrets it accepts (several while rotating).
        path: Where it listens; other paths answer 404.
        success_status: The status of a first acceptance (200, 201 or 202).
        duplicate_status: The status for a key it already has (409, or 200 for
            receivers that answer duplicates as plain successes).
        tolerance: The signature timestamp tolerance.
    """

    def __init__(
        self,
        secrets: str | Sequence[str] = "whsec-test-secret",
        *,
        path: str = "/hooks/stagecoach",
        success_status: int = 201,
        duplicate_status: int = 409,
        tolerance: timedelta = DEFAULT_TOLERANCE,
    ) -> None:
        super().__init__()
        self.secrets = [secrets] if isinstance(secrets, str) else list(secrets)
        self.path = path
        self.endpoint = self.url + path
        self.success_status = success_status
        self.duplicate_status = duplicate_status
        self.tolerance = tolerance
        self.deliveries: list[Delivery] = []
        self.rejections: list[tuple[int, str]] = []
        self._by_key: dict[str, Delivery] = {}
        self._ids = itertools.count(1)

    async def handle(self, request: Seen) -> Response:
        if request.method != "POST" or request.path != self.path:
            return JSONResponse({"error": "not found"}, status_code=404)
        try:
            signed_at = verify_signature(
                self.secrets,
                request.headers.get(SIGNATURE_HEADER.lower()),
                request.body,
                tolerance=self.tolerance,
            )
        except InvalidSignature as exc:
            return self._reject(401, exc.message)
        key = request.headers.get(IDEMPOTENCY_HEADER.lower())
        if not key:
            return self._reject(400, f"the {IDEMPOTENCY_HEADER} header is missing")
        try:
            payload = json.loads(request.body)
        except ValueError:
            return self._reject(400, "the body is not JSON")
        if payload.get("idempotency_key") != key:
            return self._reject(400, "the body's idempotency_key differs from the header")
        existing = self._by_key.get(key)
        if existing is not None:
            return JSONResponse(
                {"id": existing.id, "duplicate": True}, status_code=self.duplicate_status
            )
        delivery = Delivery(
            id=f"evt_{next(self._ids)}",
            key=key,
            payload=payload,
            signed_at=signed_at,
            raw_body=request.body,
            signature=request.headers[SIGNATURE_HEADER.lower()],
        )
        self._by_key[key] = delivery
        self.deliveries.append(delivery)
        return JSONResponse({"id": delivery.id}, status_code=self.success_status)

    def _reject(self, status: int, reason: str) -> Response:
        self.rejections.append((status, reason))
        return JSONResponse({"error": reason}, status_code=status)


# --- the HubSpot peer ---------------------------------------------------------------

STANDARD_CONTACT_PROPERTIES = frozenset(
    {
        "email",
        "firstname",
        "lastname",
        "company",
        "phone",
        "jobtitle",
        "website",
        "city",
        "country",
        "lifecyclestage",
        "hs_lead_status",
    }
)
LIFECYCLE_STAGES = (
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
)
LEAD_STATUSES = frozenset(
    {"NEW", "OPEN", "IN_PROGRESS", "OPEN_DEAL", "UNQUALIFIED", "ATTEMPTED_TO_CONTACT"}
)
CATEGORIES = {
    400: "VALIDATION_ERROR",
    401: "INVALID_AUTHENTICATION",
    403: "MISSING_SCOPES",
    404: "OBJECT_NOT_FOUND",
    409: "CONFLICT",
    429: "RATE_LIMITS",
}


@dataclass
class CrmObject:
    id: str
    properties: dict[str, str]
    created_at: str
    updated_at: str
    contact_ids: list[str] = field(default_factory=list)
    """For notes: the contacts it is associated with."""

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "properties": {**self.properties, "hs_object_id": self.id},
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "archived": False,
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HubSpotPeer(HttpPeer):
    """HubSpot's contacts, notes and associations endpoints, in memory.

    Args:
        token: The private-app token it accepts as ``Authorization: Bearer <token>``.
        max_per_window: Requests allowed per rolling ``interval`` before a 429
            (``TEN_SECONDLY_ROLLING``); HubSpot's private apps get 100 to 190 per 10 s.
        interval: The rolling window.
        daily: The daily allowance reported in ``X-HubSpot-RateLimit-Daily``.
    """

    def __init__(
        self,
        token: str = TEST_TOKEN,
        *,
        max_per_window: int = 190,
        interval: timedelta = timedelta(seconds=10),
        daily: int = 500_000,
    ) -> None:
        super().__init__()
        self.token = token
        self.max_per_window = max_per_window
        self.interval = interval
        self.daily = daily
        self.contact_properties: set[str] = set(STANDARD_CONTACT_PROPERTIES)
        self.contacts: dict[str, CrmObject] = {}
        self.notes: dict[str, CrmObject] = {}
        self._ids = itertools.count(1001)
        self._window: deque[float] = deque()
        self._used_today = 0

    # --- what tests look at -------------------------------------------------------

    def define_property(self, name: str) -> None:
        """Create a custom contact property, as an admin would in HubSpot's settings."""
        self.contact_properties.add(name)

    def contact_by_email(self, email: str) -> CrmObject | None:
        wanted = email.strip().lower()
        for contact in self.contacts.values():
            if contact.properties.get("email", "").lower() == wanted:
                return contact
        return None

    def notes_of(self, contact_id: str) -> list[CrmObject]:
        return [n for n in self.notes.values() if contact_id in n.contact_ids]

    def add_contact(self, **properties: str) -> CrmObject:
        """Seed a contact that exists before Stagecoach hands anyone off."""
        contact = CrmObject(str(next(self._ids)), dict(properties), _now(), _now())
        self.contacts[contact.id] = contact
        return contact

    def rate_limited(
        self,
        *,
        times: int = 1,
        policy: str = "TEN_SECONDLY_ROLLING",
        retry_after: str | None = None,
        match: str | None = None,
    ) -> None:
        """Answer the next requests with HubSpot's 429 body and rate-limit headers."""
        headers = self._limit_headers(remaining=0)
        if policy == "DAILY":
            headers["X-HubSpot-RateLimit-Daily-Remaining"] = "0"
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        self.fail(
            429,
            times=times,
            match=match,
            headers=headers,
            body=self.error_body(
                429,
                f"You have reached your {policy.lower()} limit.",
                errorType="RATE_LIMIT",
                policyName=policy,
            ),
        )

    # --- HubSpot's shapes ---------------------------------------------------------

    def error_body(
        self, status: int, message: str, *, category: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "error",
            "message": message,
            "correlationId": str(uuid.uuid4()),
        }
        if category or status in CATEGORIES:
            body["category"] = category or CATEGORIES[status]
        body.update(extra)
        return body

    def _limit_headers(self, *, remaining: int | None = None) -> dict[str, str]:
        left = self.max_per_window - len(self._window) if remaining is None else remaining
        return {
            "X-HubSpot-RateLimit-Max": str(self.max_per_window),
            "X-HubSpot-RateLimit-Remaining": str(max(0, left)),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(
                int(self.interval.total_seconds() * 1000)
            ),
            "X-HubSpot-RateLimit-Daily": str(self.daily),
            "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, self.daily - self._used_today)),
        }

    def fault_response(self, fault: Fault) -> Response:
        assert fault.status is not None
        body = fault.body
        if body is None:
            body = self.error_body(fault.status, f"injected {fault.status}")
        return JSONResponse(
            body, status_code=fault.status, headers={**self._limit_headers(), **fault.headers}
        )

    def _answer(self, status: int, body: Any) -> Response:
        return JSONResponse(body, status_code=status, headers=self._limit_headers())

    def _error(self, status: int, message: str, **extra: Any) -> Response:
        return self._answer(status, self.error_body(status, message, **extra))

    def _invalid(self, problems: list[dict[str, str]]) -> Response:
        # HubSpot lists the failing properties as JSON inside the message, and newer
        # endpoints repeat them in "errors" with the property name in the context.
        listing = [{"isValid": False, **p} for p in problems]
        return self._error(
            400,
            "Property values were not valid: " + json.dumps(listing),
            errors=[
                {
                    "message": p["message"],
                    "code": p["error"],
                    "context": {"propertyName": [p["name"]]},
                }
                for p in problems
            ],
        )

    # --- dispatch -----------------------------------------------------------------

    async def handle(self, request: Seen) -> Response:
        auth = request.headers.get("authorization", "")
        if not auth:
            return self._error(
                401, "Authentication credentials not found. Send a private app access token."
            )
        if auth != f"Bearer {self.token}":
            return self._error(401, "The access token provided is not valid.")
        now = time.monotonic()
        while self._window and now - self._window[0] > self.interval.total_seconds():
            self._window.popleft()
        if len(self._window) >= self.max_per_window:
            return self._answer(
                429,
                self.error_body(
                    429,
                    "You have reached your ten_secondly_rolling limit.",
                    errorType="RATE_LIMIT",
                    policyName="TEN_SECONDLY_ROLLING",
                ),
            )
        self._window.append(now)
        self._used_today += 1
        parts = request.path.strip("/").split("/")
        body = request.json() if request.body else None
        match request.method, parts:
            case "POST", ["crm", "v3", "objects", "contacts"]:
                return self._create_contact(body)
            case "PATCH", ["crm", "v3", "objects", "contacts", ref]:
                return self._update_contact(ref, request.query.get("idProperty"), body)
            case "GET", ["crm", "v4", "objects", "contacts", ref, "associations", "notes"]:
                return self._contact_notes(ref, request.query)
            case "POST", ["crm", "v3", "objects", "notes", "batch", "read"]:
                return self._read_notes(body)
            case "POST", ["crm", "v3", "objects", "notes"]:
                return self._create_note(body)
        return self._error(404, f"No route for {request.method} {request.path}")

    # --- contacts -----------------------------------------------------------------

    def _check_contact(
        self, props: Mapping[str, Any], current: CrmObject | None
    ) -> list[dict[str, str]]:
        problems = []
        for name, value in props.items():
            if name not in self.contact_properties:
                problems.append(
                    {
                        "name": name,
                        "error": "PROPERTY_DOESNT_EXIST",
                        "message": f'Property "{name}" does not exist',
                    }
                )
            elif name == "email" and ("@" not in str(value) or " " in str(value)):
                problems.append(
                    {"name": name, "error": "INVALID_EMAIL", "message": "Email address is invalid"}
                )
            elif name == "lifecyclestage" and value not in LIFECYCLE_STAGES:
                problems.append(
                    {"name": name, "error": "INVALID_OPTION", "message": f"{value} is not valid"}
                )
            elif name == "lifecyclestage" and current is not None:
                before = current.properties.get("lifecyclestage")
                if before in LIFECYCLE_STAGES and LIFECYCLE_STAGES.index(
                    value
                ) < LIFECYCLE_STAGES.index(before):
                    problems.append(
                        {
                            "name": name,
                            "error": "INVALID_OPTION",
                            "message": f"lifecycle stage cannot move back from {before}",
                        }
                    )
            elif name == "hs_lead_status" and value not in LEAD_STATUSES:
                problems.append(
                    {"name": name, "error": "INVALID_OPTION", "message": f"{value} is not valid"}
                )
        return problems

    def _create_contact(self, body: Any) -> Response:
        props = (body or {}).get("properties")
        if not isinstance(props, dict):
            return self._error(400, "Invalid input JSON: properties is required")
        if problems := self._check_contact(props, None):
            return self._invalid(problems)
        email = props.get("email")
        if email and (existing := self.contact_by_email(email)) is not None:
            return self._error(409, f"Contact already exists. Existing ID: {existing.id}")
        contact = CrmObject(
            str(next(self._ids)), {k: str(v) for k, v in props.items()}, _now(), _now()
        )
        self.contacts[contact.id] = contact
        return self._answer(201, contact.public())

    def _update_contact(self, ref: str, id_property: str | None, body: Any) -> Response:
        if id_property == "email":
            contact = self.contact_by_email(ref)
        elif id_property:
            return self._error(400, f"{id_property} is not a unique property")
        else:
            contact = self.contacts.get(ref)
        if contact is None:
            return self._error(404, "resource not found")
        props = (body or {}).get("properties")
        if not isinstance(props, dict):
            return self._error(400, "Invalid input JSON: properties is required")
        if problems := self._check_contact(props, contact):
            return self._invalid(problems)
        contact.properties.update({k: str(v) for k, v in props.items()})
        contact.updated_at = _now()
        return self._answer(200, contact.public())

    # --- notes and associations ---------------------------------------------------

    def _contact_notes(self, contact_id: str, query: Mapping[str, str]) -> Response:
        if contact_id not in self.contacts:
            return self._error(404, "resource not found")
        limit = int(query.get("limit", "500"))
        start = int(query.get("after", "0"))
        ids = [n.id for n in self.notes_of(contact_id)]
        page = ids[start : start + limit]
        body: dict[str, Any] = {
            "results": [
                {
                    "toObjectId": int(i),
                    "associationTypes": [
                        {"category": "HUBSPOT_DEFINED", "typeId": 202, "label": None}
                    ],
                }
                for i in page
            ]
        }
        if start + limit < len(ids):
            body["paging"] = {"next": {"after": str(start + limit)}}
        return self._answer(200, body)

    def _read_notes(self, body: Any) -> Response:
        inputs = (body or {}).get("inputs") or []
        wanted = set((body or {}).get("properties") or [])
        found, missing = [], []
        for item in inputs:
            note = self.notes.get(str(item.get("id")))
            if note is None:
                missing.append(str(item.get("id")))
                continue
            public = note.public()
            if wanted:
                public["properties"] = {
                    k: v for k, v in public["properties"].items() if k in wanted
                }
            found.append(public)
        started = _now()
        answer: dict[str, Any] = {
            "status": "COMPLETE",
            "results": found,
            "startedAt": started,
            "completedAt": _now(),
        }
        if missing:
            answer["numErrors"] = 1
            answer["errors"] = [
                {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": "Could not get some NOTE objects, they may be deleted or not exist.",
                    "context": {"ids": missing},
                }
            ]
        return self._answer(207 if missing else 200, answer)

    def _create_note(self, body: Any) -> Response:
        props = (body or {}).get("properties")
        if not isinstance(props, dict):
            return self._error(400, "Invalid input JSON: properties is required")
        if not props.get("hs_timestamp"):
            return self._invalid(
                [
                    {
                        "name": "hs_timestamp",
                        "error": "REQUIRED",
                        "message": "hs_timestamp is required",
                    }
                ]
            )
        contact_ids = []
        for association in (body or {}).get("associations") or []:
            target = str((association.get("to") or {}).get("id"))
            types = association.get("types") or []
            if target not in self.contacts:
                return self._error(400, f"Association target {target} does not exist")
            if not any(
                t.get("associationTypeId") == 202
                and t.get("associationCategory") == "HUBSPOT_DEFINED"
                for t in types
            ):
                return self._error(400, "Unsupported association type for note to contact")
            contact_ids.append(target)
        note = CrmObject(
            str(next(self._ids)),
            {k: str(v) for k, v in props.items()},
            _now(),
            _now(),
            contact_ids=contact_ids,
        )
        self.notes[note.id] = note
        return self._answer(201, note.public())
