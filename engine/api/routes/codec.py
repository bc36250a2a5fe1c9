"""The codec server: Temporal's Web UI and CLI decode encrypted payloads here.

Temporal's codec-server protocol: ``POST <endpoint>/decode`` (or ``/encode``) with a
``Payloads`` message as protobuf JSON, ``{"payloads": [{"metadata": {"encoding":
"<base64>"}, "data": "<base64>"}]}``, answers the same shape, decoded (or encoded) with
the payload keys this API holds (``stagecoach.engine.temporal.codec``). The endpoint is
``<api>/codec``::

    POST    /codec/decode   payloads -> payloads, decrypted; unencrypted ones unchanged
    POST    /codec/encode   payloads -> payloads, encrypted with the current key
    OPTIONS /codec/decode, /codec/encode   CORS preflight, for the Web UI's origin only
    GET     /codec/login, POST     the admin token in, a session cookie out (browsers)
    POST    /codec/logout   ends the session for good (same origin only)

Decoded payloads are personal data, so only operators get them:

- ``Authorization: Bearer <STAGECOACH_ADMIN_TOKEN>``: the ``temporal`` CLI
  (``--codec-endpoint <api>/codec --codec-auth "Bearer <token>"``) and scripts;
- or the session cookie from signing in at ``/codec/login`` with the admin token: the
  Web UI, which cannot send a header of our choosing (its "Pass the user access token"
  sends its own OIDC token, to https endpoints only), but sends cookies when its codec
  setting "Include cross-origin credentials" is on (``stagecoach up`` runs a UI server
  configured so, docs/codec.md). The cookie is the dashboard's kind
  of session (``stagecoach.engine.api.sessions.Sessions``) scoped to ``/codec``: ``HttpOnly``,
  ``SameSite=Strict`` (the UI and the API must be on the same site, as
  ``127.0.0.1:8233`` and ``127.0.0.1:8000`` are), ``Secure`` on an https API.

Browsers get CORS answers (with credentials) only for ``STAGECOACH_CODEC_ORIGINS``,
default the Web UI's URL; a request carrying any other ``Origin`` is refused (403), and
a body that is not ``application/json`` is refused (415), so no other site's form can
make a browser call it. Answers are never cached. Without payload keys the endpoints
answer 503, and without ``STAGECOACH_ADMIN_TOKEN`` nobody is let in (503).
"""

from __future__ import annotations

import asyncio
import html
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qs

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from stagecoach.engine.api._common import client_address, read_body, too_many_failures
from stagecoach.engine.api.sessions import COOKIE, Sessions
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.codec import PayloadDecryptionError, payload_codec

PREFIX = "/codec"
BODY_LIMIT = 8 * 1024 * 1024
"""The largest request: Temporal caps a payload at 2 MB, the UI sends an event's few."""
FORM_LIMIT = 4096

_log = structlog.get_logger("stagecoach.codec")

_HELP = (
    "send 'Authorization: Bearer <STAGECOACH_ADMIN_TOKEN>' (temporal CLI: --codec-auth), "
    f"or sign in at {PREFIX}/login from the Web UI's browser; a UI that 'stagecoach up' did "
    "not start needs its codec setting 'Include cross-origin credentials' on (docs/codec.md)"
)
_PAYLOADS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["payloads"],
    "properties": {
        "payloads": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "metadata": {
                        "type": "object",
                        "additionalProperties": {"type": "string", "format": "byte"},
                    },
                    "data": {"type": "string", "format": "byte"},
                },
            },
        }
    },
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"schema": _PAYLOADS_SCHEMA}}},
    400: {"description": "Not a Payloads message, or a payload that does not decrypt"},
    401: {"description": "Neither the admin bearer token nor a codec session"},
    403: {"description": "A browser origin other than the Temporal Web UI's"},
    413: {"description": "Body over 8 MiB"},
    415: {"description": "Body not application/json"},
    503: {"description": "No payload keys configured, or STAGECOACH_ADMIN_TOKEN unset"},
}


def allowed_origins(settings: Settings) -> frozenset[str]:
    """Origins whose pages may call the codec: ``STAGECOACH_CODEC_ORIGINS`` or the Web UI."""
    raw = settings.codec_origins or settings.temporal_ui_url
    return frozenset(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


def codec_router(settings: Settings) -> APIRouter:
    """The codec routes for ``settings``: its keys (read now, so a bad key stops the API
    at start), its admin token and its Web UI origin."""
    codec = payload_codec(settings)
    origins = allowed_origins(settings)
    sessions = Sessions(settings, path=PREFIX)
    router = APIRouter(prefix=PREFIX, tags=["codec"])

    def cors(request: Request, response: Response) -> Response:
        origin = request.headers.get("origin")
        response.headers["Cache-Control"] = "no-store"
        response.headers["Vary"] = "Origin"
        if origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
        return response

    def refuse(request: Request, status: int, detail: str, **headers: str) -> Response:
        return cors(request, JSONResponse({"detail": detail}, status, headers=headers or None))

    def who(request: Request) -> str | int | None:
        """How the caller proved to be an operator (bearer or session), None, or the
        seconds a client throttled for wrong bearer tokens must wait."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            attempt = sessions.attempt(request, token.strip())
            return "bearer" if attempt.granted else attempt.retry_after or None
        cookie = request.cookies.get(COOKIE)
        db = request.app.state.db
        if cookie and sessions.problem(cookie, datetime.now(UTC), db) is None:
            return "session"
        return None

    @router.options("/decode", include_in_schema=False)
    @router.options("/encode", include_in_schema=False)
    def preflight(request: Request) -> Response:
        origin = request.headers.get("origin")
        method = request.headers.get("access-control-request-method", "")
        if origin not in origins or method.upper() != "POST":
            return Response(status_code=403, headers={"Vary": "Origin"})
        headers = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Namespace",
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        }
        if request.headers.get("access-control-request-private-network") == "true":
            headers["Access-Control-Allow-Private-Network"] = "true"
        return Response(status_code=204, headers=headers)

    async def convert(operation: Literal["encode", "decode"], request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and origin not in origins:
            return Response(
                "this origin may not use the codec: set STAGECOACH_CODEC_ORIGINS",
                status_code=403,
                headers={"Vary": "Origin", "Cache-Control": "no-store"},
            )
        if not sessions.enabled:
            return refuse(
                request,
                503,
                "the codec endpoint is off because STAGECOACH_ADMIN_TOKEN is not set: set "
                "it and restart the API",
            )
        caller = await asyncio.to_thread(who, request)  # a session is a database read
        if isinstance(caller, int):
            return refuse(request, 429, too_many_failures(caller), **{"Retry-After": str(caller)})
        if caller is None:
            _log.warning("codec refused", operation=operation, origin=origin or "")
            return refuse(
                request,
                401,
                f"missing or wrong admin token, and no codec session: {_HELP}",
                **{"WWW-Authenticate": 'Bearer realm="stagecoach"'},
            )
        if codec is None:
            return refuse(
                request,
                503,
                "no payload keys are configured here (STAGECOACH_PAYLOAD_KEYS, or "
                "payload-keys under the data directory), so nothing is encrypted: remove "
                "the codec endpoint from the Web UI, or give this API the workers' keys",
            )
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            return refuse(request, 415, "send the payloads as application/json")
        body = await read_body(request, BODY_LIMIT)
        if body is None:
            return refuse(request, 413, f"the body is over {BODY_LIMIT} bytes")
        message = Payloads()
        try:
            json_format.Parse(body, message, ignore_unknown_fields=True)
        except (json_format.ParseError, UnicodeDecodeError, RecursionError) as exc:
            return refuse(request, 400, f"not a Payloads message in protobuf JSON: {exc}")
        try:
            if operation == "decode":
                result = await codec.decode(message.payloads)
            else:
                result = await codec.encode(message.payloads)
        except PayloadDecryptionError as exc:
            _log.warning("codec could not decrypt", key_id=exc.key_id)
            return refuse(request, 400, exc.one_line())
        _log.info("codec", operation=operation, payloads=len(result), caller=caller)
        out = json_format.MessageToDict(Payloads(payloads=result))
        out.setdefault("payloads", [])  # protobuf JSON leaves an empty list out
        return cors(request, JSONResponse(out))

    body_doc: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _PAYLOADS_SCHEMA}},
        }
    }

    @router.post(
        "/decode",
        summary="Temporal codec server: decrypt payloads",
        description="Temporal's codec-server protocol, for the Web UI and the CLI: "
        "encrypted payloads in, their originals out (others unchanged). Needs the admin "
        "bearer token or a codec session (/codec/login). See docs/codec.md.",
        responses=_RESPONSES,
        openapi_extra=body_doc,
    )
    async def decode(request: Request) -> Response:
        return await convert("decode", request)

    @router.post(
        "/encode",
        summary="Temporal codec server: encrypt payloads",
        description="Temporal's codec-server protocol: payloads in, encrypted with the "
        "current payload key. Needs the admin bearer token or a codec session.",
        responses=_RESPONSES,
        openapi_extra=body_doc,
    )
    async def encode(request: Request) -> Response:
        return await convert("encode", request)

    # --- sign-in for browsers ------------------------------------------------------------

    @router.get("/login", include_in_schema=False)
    def login_page() -> HTMLResponse:
        if not sessions.enabled:
            return _page(503, "The codec endpoint is off: STAGECOACH_ADMIN_TOKEN is not set.")
        return _page(200, "", form=True)

    @router.post("/login", include_in_schema=False)
    async def login(request: Request) -> HTMLResponse:
        if not sessions.enabled:
            return _page(503, "The codec endpoint is off: STAGECOACH_ADMIN_TOKEN is not set.")
        body = await read_body(request, FORM_LIMIT)
        form = parse_qs(body.decode("utf-8", "replace")) if body is not None else {}
        attempt = sessions.attempt(request, (form.get("token") or [""])[0])
        if attempt.retry_after:
            page = _page(429, too_many_failures(attempt.retry_after))
            page.headers["Retry-After"] = str(attempt.retry_after)
            return page
        if not attempt.granted:
            _log.warning("codec sign-in refused", client=client_address(request))
            return _page(401, "That is not the admin token.", form=True)
        hours = int(sessions.ttl.total_seconds() // 3600)
        response = _page(
            200,
            f"Signed in for {hours} hours. Open (or reload) a workflow in the Temporal Web "
            "UI: payloads show decrypted. The UI that 'stagecoach up' and the compose file "
            f"start sends this session to {settings.api_base_url}{PREFIX} already; any other "
            "needs that endpoint with 'Include cross-origin credentials' on in its codec "
            "settings (docs/codec.md).",
        )
        sessions.issue(response, datetime.now(UTC), db=request.app.state.db)
        return response

    @router.post("/logout", include_in_schema=False)
    def logout(request: Request) -> HTMLResponse:
        if not sessions.same_origin(request):
            return _page(403, "Not signed out: the request did not come from this page.")
        sessions.end(request)
        response = _page(200, "Signed out.")
        sessions.clear(response)
        return response

    return router


def _page(status: int, message: str, *, form: bool = False) -> HTMLResponse:
    """A small self-contained page: no script, no resource from anywhere."""
    body = f"<p>{html.escape(message)}</p>" if message else ""
    if form:
        body += (
            f'<form method="post" action="{PREFIX}/login">'
            '<label>Admin token <input type="password" name="token" autofocus required>'
            "</label> <button>Sign in</button></form>"
        )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>Stagecoach codec sign-in</title></head><body>"
        "<h1>Decrypt payloads in the Temporal Web UI</h1>"
        f"{body}</body></html>"
    )
    return HTMLResponse(
        page,
        status_code=status,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; form-action 'self'; "
            "frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
        },
    )
