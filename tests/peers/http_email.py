"""A real local HTTP email provider for tests: uvicorn on its own thread, with faults.

Two APIs on one server (``base_url``):

- The generic JSON contract of ``stagecoach.connectors.email.http`` at ``POST /v1/send``: a bearer
  token, an ``Idempotency-Key`` header it deduplicates on (the same key again answers 409
  with the first message's id, or replays the first answer with ``Idempotent-Replayed:
  true`` when ``replay=True``; the same key with a different body answers 422
  ``idempotency_key_reused``), errors as ``{"error": {"code", "message"}}``.
- Postmark's shapes as its documentation gives them: ``POST /email`` with
  ``X-Postmark-Server-Token`` (401 and ErrorCode 10 without the right one), a 200 of
  ``To``, ``SubmittedAt``, ``MessageID``, ``ErrorCode`` 0, ``Message`` "OK"; 422 with an
  ErrorCode for a bad request (300) or an inactive recipient (406); and the outbound
  message search ``GET /messages/outbound`` with ``count``, ``offset``, ``recipient`` and
  ``metadata_<name>`` filters. Postmark has no idempotency key, so this peer, like
  Postmark, takes every POST as a new message: ``copies`` counts what a retry duplicated.

Faults: ``fail_next`` (any status, body and headers: 429 with Retry-After, 500, 503),
``reject`` (a provider error for one address), ``stall_next`` (take the message, then
answer only after a delay, so the client times out without knowing it was accepted).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.helpers import free_port

GENERIC = "generic"
POSTMARK = "postmark"


@dataclass(frozen=True)
class ReceivedRequest:
    """One send the peer took in (after auth and validation passed)."""

    api: str
    headers: dict[str, str]
    body: dict[str, Any]
    message_id: str
    at: float = field(default_factory=time.time)
    """When the peer took it in (``time.time()``)."""

    @property
    def key_digest(self) -> str | None:
        if self.api == POSTMARK:
            value = (self.body.get("Metadata") or {}).get("stagecoach_key")
        else:
            value = (self.body.get("headers") or {}).get("X-Stagecoach-Idempotency-Key")
        return str(value) if value is not None else None


@dataclass
class _Planned:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    api: str | None
    delay: float = 0.0


@dataclass
class _State:
    received: list[ReceivedRequest] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    planned: list[_Planned] = field(default_factory=list)
    rejections: dict[tuple[str, str], _Planned] = field(default_factory=dict)
    stalls: list[float] = field(default_factory=list)
    idempotency: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    inactive: set[str] = field(default_factory=set)


class HttpEmailPeer:
    """The provider; start it in a fixture, point connectors at ``base_url``.

    Args:
        generic_token: The bearer token ``/v1/send`` requires.
        postmark_token: The server token ``/email`` requires.
        replay: Answer a repeated idempotency key by replaying the first answer (200 with
            ``Idempotent-Replayed: true``) instead of 409.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        generic_token: str = "generic-token",  # noqa: S107 - a test peer's fixed token
        postmark_token: str = "postmark-server-token",  # noqa: S107
        replay: bool = False,
    ) -> None:
        self.generic_token = generic_token
        self.postmark_token = postmark_token
        self.replay = replay
        self.port = free_port()
        self._lock = threading.Lock()
        self._state = _State()
        app = Starlette(
            routes=[
                Route("/v1/send", self._generic, methods=["POST"]),
                Route("/email", self._postmark_send, methods=["POST"]),
                Route("/messages/outbound", self._postmark_search, methods=["GET"]),
            ]
        )
        config = uvicorn.Config(
            app,
            host=self.host,
            port=self.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, name="http-email-peer", daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def generic_url(self) -> str:
        return f"{self.base_url}/v1/send"

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> HttpEmailPeer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert self._thread.is_alive(), "the HTTP email peer failed to start"
            assert time.monotonic() < deadline, "the HTTP email peer did not start in 10 s"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> HttpEmailPeer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget everything received, every fault and every idempotency key."""
        with self._lock:
            self._state = _State()

    # --- what happened ------------------------------------------------------------------------

    def received(self, api: str | None = None) -> list[ReceivedRequest]:
        with self._lock:
            return [r for r in self._state.received if api is None or r.api == api]

    @property
    def requests(self) -> Counter[str]:
        """Requests per route (``POST /v1/send``...), whatever they were answered."""
        with self._lock:
            return Counter(self._state.requests)

    def copies(self, key_digest: str) -> int:
        """Messages taken in that carry this idempotency-key digest."""
        return sum(1 for r in self.received() if r.key_digest == key_digest)

    # --- faults -------------------------------------------------------------------------------

    def fail_next(
        self,
        count: int,
        status: int,
        *,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        api: str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer the next ``count`` sends (of ``api``, or any) with this, taking nothing;
        after ``delay`` seconds (a client that times out first never learns the answer)."""
        with self._lock:
            self._state.planned.extend(
                _Planned(status, dict(body or {}), dict(headers or {}), api, delay)
                for _ in range(count)
            )

    def reject(self, api: str, address: str, status: int, body: dict[str, Any]) -> None:
        """Answer every send of ``api`` to ``address`` with ``status`` and ``body``."""
        with self._lock:
            self._state.rejections[(api, address.lower())] = _Planned(status, body, {}, api)

    def deactivate(self, address: str) -> None:
        """Postmark: mark ``address`` inactive (as after a hard bounce or complaint)."""
        with self._lock:
            self._state.inactive.add(address.lower())

    def stall_next(self, seconds: float, count: int = 1) -> None:
        """Take the next ``count`` sends, then wait ``seconds`` before answering."""
        with self._lock:
            self._state.stalls.extend([seconds] * count)

    # --- handlers -----------------------------------------------------------------------------

    def _planned(self, api: str) -> _Planned | None:
        with self._lock:
            for plan in self._state.planned:
                if plan.api in (None, api):
                    self._state.planned.remove(plan)
                    return plan
        return None

    def _stall(self) -> float:
        with self._lock:
            return self._state.stalls.pop(0) if self._state.stalls else 0.0

    async def _body(self, request: Request) -> dict[str, Any] | None:
        try:
            data = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    async def _generic(self, request: Request) -> Response:
        with self._lock:
            self._state.requests["POST /v1/send"] += 1
        if request.headers.get("authorization") != f"Bearer {self.generic_token}":
            return _error(401, "unauthorized", "missing or wrong bearer token")
        plan = self._planned(GENERIC)
        if plan is not None:
            return await _answer(plan)
        body = await self._body(request)
        if body is None:
            return _error(400, "invalid_json", "the body is not a JSON object")
        key = request.headers.get("idempotency-key")
        if not key:
            return _error(400, "idempotency_key_required", "send an Idempotency-Key header")
        for name in ("from", "to", "subject"):
            if not body.get(name):
                return _error(422, "invalid_request", f"'{name}' is required")
        if not body.get("text") and not body.get("html"):
            return _error(422, "invalid_request", "'text' or 'html' is required")
        fingerprint = json.dumps(body, sort_keys=True)
        with self._lock:
            rejection = self._state.rejections.get((GENERIC, str(body["to"]).lower()))
            seen = self._state.idempotency.get(key)
            if seen is None and rejection is None:
                message_id = f"gen-{uuid.uuid4().hex}"
                answer = {"id": message_id, "status": "queued"}
                self._state.idempotency[key] = (fingerprint, answer)
                self._state.received.append(
                    ReceivedRequest(GENERIC, dict(request.headers), body, message_id)
                )
        if rejection is not None:
            return JSONResponse(rejection.body, status_code=rejection.status)
        if seen is not None:
            first_fingerprint, first_answer = seen
            if first_fingerprint != fingerprint:
                return _error(
                    422, "idempotency_key_reused", "this key was used with a different body"
                )
            if self.replay:
                return JSONResponse(
                    first_answer, status_code=202, headers={"Idempotent-Replayed": "true"}
                )
            return JSONResponse(
                {**first_answer, "error": {"code": "already_accepted", "message": "duplicate"}},
                status_code=409,
            )
        await asyncio.sleep(self._stall())
        return JSONResponse(answer, status_code=202)

    async def _postmark_send(self, request: Request) -> Response:
        with self._lock:
            self._state.requests["POST /email"] += 1
        if request.headers.get("x-postmark-server-token") != self.postmark_token:
            return _postmark(401, 10, "The Server Token you provided in the request was invalid.")
        plan = self._planned(POSTMARK)
        if plan is not None:
            return await _answer(plan)
        if "json" not in request.headers.get("content-type", ""):
            return _postmark(415, 409, "JSON required.")
        body = await self._body(request)
        if body is None:
            return _postmark(422, 402, "Invalid JSON.")
        for name in ("From", "To"):
            if not body.get(name):
                return _postmark(422, 300, f"Invalid '{name}' address: empty.")
        if not body.get("TextBody") and not body.get("HtmlBody"):
            return _postmark(422, 300, "Provide either email TextBody or HtmlBody or both.")
        metadata = body.get("Metadata") or {}
        for name, value in metadata.items():
            if len(name) > 20 or len(str(value)) > 80:
                return _postmark(422, 300, f"Metadata field {name!r} is too long.")
        to = str(body["To"]).lower()
        with self._lock:
            rejection = self._state.rejections.get((POSTMARK, to))
            inactive = to in self._state.inactive
            if rejection is None and not inactive:
                message_id = str(uuid.uuid4())
                self._state.received.append(
                    ReceivedRequest(POSTMARK, dict(request.headers), body, message_id)
                )
        if rejection is not None:
            return JSONResponse(rejection.body, status_code=rejection.status)
        if inactive:
            return _postmark(
                422,
                406,
                "You tried to send to recipient(s) that have been marked as inactive. Found "
                f"inactive addresses: {to}. Inactive recipients are ones that have generated "
                "a hard bounce, a spam complaint, or a manual suppression.",
            )
        await asyncio.sleep(self._stall())
        return JSONResponse(
            {
                "To": body["To"],
                "SubmittedAt": datetime.now(UTC).isoformat(),
                "MessageID": message_id,
                "ErrorCode": 0,
                "Message": "OK",
            }
        )

    async def _postmark_search(self, request: Request) -> Response:
        with self._lock:
            self._state.requests["GET /messages/outbound"] += 1
        if request.headers.get("x-postmark-server-token") != self.postmark_token:
            return _postmark(401, 10, "The Server Token you provided in the request was invalid.")
        params = request.query_params
        try:
            count, offset = int(params["count"]), int(params["offset"])
        except (KeyError, ValueError):
            return _postmark(422, 300, "count and offset are required.")
        recipient = params.get("recipient", "").lower()
        wanted = {
            k.removeprefix("metadata_"): v for k, v in params.items() if k.startswith("metadata_")
        }
        found = [
            r
            for r in self.received(POSTMARK)
            if (not recipient or str(r.body["To"]).lower() == recipient)
            and all((r.body.get("Metadata") or {}).get(k) == v for k, v in wanted.items())
        ]
        page = found[offset : offset + count]
        return JSONResponse(
            {
                "TotalCount": len(found),
                "Messages": [
                    {
                        "MessageID": r.message_id,
                        "Recipients": [r.body["To"]],
                        "Subject": r.body.get("Subject"),
                        "MessageStream": r.body.get("MessageStream"),
                        "Metadata": r.body.get("Metadata") or {},
                        "Status": "Sent",
                    }
                    for r in page
                ],
            }
        )


async def _answer(plan: _Planned) -> Response:
    await asyncio.sleep(plan.delay)
    return JSONResponse(plan.body, status_code=plan.status, headers=plan.headers)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _postmark(status: int, error_code: int, message: str) -> JSONResponse:
    return JSONResponse({"ErrorCode": error_code, "Message": message}, status_code=status)
