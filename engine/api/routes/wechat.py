"""``/wechat/{app}``: the WeChat Official Account server URL (callbacks).

Set the account's server URL to ``https://<public_url>/wechat/<app>`` with the Token,
EncodingAESKey and mode (plaintext, compatible or safe) entered in ``wechat_apps``
settings under ``<app>``. ``GET`` answers WeChat's URL check; ``POST`` receives follows,
QR-code scans, menu clicks and messages and stores each as an event of the sender's
contact (identity ``wechat_openid``). A ``MASSSENDJOBFINISH`` event (a broadcast's
mass-send job ended) records its counts on the job's ``broadcast_jobs`` row instead
(``stagecoach.engine.services.broadcasts.wechat_jobs``); one for a job we do not know is
answered ``success`` and changes nothing. The signatures, crypto and XML rules are in
``stagecoach.engine.domain.wechat_callback``.

Reply first, store after. WeChat waits 5 seconds for a reply, then drops the connection
and retries, three times in all; after that the user sees "this account cannot provide
service". So a callback is answered ``success`` as soon as it is authenticated and
parsed, and the event is handed to the ``Ingestor`` in a background task that commits
it and logs (``wechat event not stored``) if it cannot. The trade-off: the reply no
longer means "on disk". A crash, a shutdown or a database failure between the reply and
the commit loses that event, because WeChat does not retry a callback that was
answered. What we get for it: a slow database never makes WeChat retry or show the
user an error, and no request holds a connection open while a commit queues. Retries
that do happen (a reply lost on the way) are absorbed by the dedupe key, sender +
``CreateTime`` + ``MsgId`` or event name (``wechat:{app}:{openid}:{time}:{what}``).
``drain`` lets the app's shutdown wait for stores in flight.

Refusals: 403 for a bad signature, a timestamp outside the replay window
(``wechat_replay_window_seconds``, 300 s by default) or a message for another appid, 400
for XML with a DTD or entities or that is not a WeChat message, 413 over 64 KB, 404 for
an unknown app, 503 when ``wechat_apps`` cannot be read. None of them store anything.

A POST whose (timestamp, nonce, signature) was already accepted within the window is a
replay: it is answered ``success`` and stores nothing, with a ``wechat callback
replayed`` warning in the log. Not 403, because the only honest sender of a repeat is
WeChat itself retrying a call we were slow to answer, and a refusal there would show
the user "this account cannot provide service"; the first copy was already accepted.
A forged replay gains nothing either way: nothing is stored.

Every reply is ``text/plain`` with ``X-Content-Type-Options: nosniff``: ``echostr`` is
echoed as sent, and no browser may read it as HTML or script.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from stagecoach.engine.api._common import ingest, read_body
from stagecoach.engine.domain.wechat_callback import (
    MASS_SEND_FINISHED,
    MAX_BODY_BYTES,
    REPLAY_WINDOW_SECONDS,
    AppIdMismatch,
    BodyTooLarge,
    CallbackError,
    CallbackEvent,
    MalformedMessage,
    MassSendFinished,
    NonceMemory,
    SignatureMismatch,
    StaleRequest,
    UndecryptableMessage,
    WeChatApp,
    check_fresh,
    decrypt,
    event_from,
    mass_send_finished,
    parse_apps,
    parse_message,
    parse_xml,
    verify,
)
from stagecoach.engine.services.broadcasts.wechat_jobs import record_job_finished
from stagecoach.engine.services.ingest import Incoming
from stagecoach.engine.services.storage.interactions import SOURCE

__all__ = ["SOURCE", "drain", "router"]

router = APIRouter(prefix="/wechat", tags=["wechat"])
log = structlog.get_logger("stagecoach.api.wechat")

"""The ``source`` of events stored from callbacks: only WeChat attests an interaction."""

_STATUS: dict[type[CallbackError], int] = {
    SignatureMismatch: 403,
    AppIdMismatch: 403,
    StaleRequest: 403,
    BodyTooLarge: 413,
}


_NOSNIFF = {"X-Content-Type-Options": "nosniff"}


def _text(status: int, message: str) -> PlainTextResponse:
    return PlainTextResponse(message, status_code=status, headers=_NOSNIFF)


def _window(request: Request) -> float:
    settings = request.app.state.settings
    return float(getattr(settings, "wechat_replay_window_seconds", REPLAY_WINDOW_SECONDS))


def _fresh(request: Request, timestamp: str | None) -> int:
    """The timestamp, checked against this server's clock."""
    return check_fresh(timestamp, now=time.time(), window=_window(request))


def _first_time(request: Request, app: str, stamp: int, nonce: str, signature: str) -> bool:
    """Whether this signed call is new within the window (and remember it)."""
    memory: NonceMemory | None = getattr(request.app.state, "wechat_nonces", None)
    if memory is None:
        memory = NonceMemory(window=_window(request))
        request.app.state.wechat_nonces = memory
    return memory.first_time(app, str(stamp), nonce, signature, stamp=stamp, now=time.time())


def _config(request: Request, app: str) -> WeChatApp | Response:
    """The app's settings: ``app.state.wechat_apps`` (tests) over ``settings.wechat_apps``."""
    raw: object = getattr(request.app.state, "wechat_apps", None)
    if raw is None:
        raw = getattr(request.app.state.settings, "wechat_apps", None)
    try:
        apps = parse_apps(raw)
    except ValueError as exc:
        log.error("wechat_apps settings are invalid", error=str(exc))
        return _text(503, "WeChat app settings are invalid: see the server log")
    found = apps.get(app)
    if found is None:
        return _text(404, f"unknown WeChat app {app!r}: add it to the wechat_apps settings")
    return found


async def _read(request: Request) -> bytes | Response:
    body = await read_body(request, MAX_BODY_BYTES)
    if body is None:
        return _text(413, f"body over {MAX_BODY_BYTES // 1024} KB")
    return body


def _open(
    config: WeChatApp,
    body: bytes,
    *,
    signature: str | None,
    timestamp: str | None,
    nonce: str | None,
    encrypt_type: str | None,
    msg_signature: str | None,
) -> dict[str, str]:
    """The authenticated message's fields, decrypted in safe (and compatible) mode."""
    token = config.token.get_secret_value()
    safe = (encrypt_type or "raw").strip().lower() == "aes"
    if signature is not None or not safe:
        # Present in both modes: refuse a stranger before parsing anything of theirs.
        verify(signature, token, timestamp, nonce)
    if not safe:
        return parse_xml(body)
    key = config.key()
    if key is None:
        raise UndecryptableMessage("safe mode, but the app has no aes_key: add its EncodingAESKey")
    envelope = parse_xml(body)
    encrypted = envelope.get("Encrypt", "").strip()
    if not encrypted:
        raise MalformedMessage("safe mode, but the body has no <Encrypt>")
    verify(msg_signature, token, timestamp, nonce, encrypted)
    return parse_xml(decrypt(encrypted, key=key, appid=config.appid))


# --- storing after the reply -----------------------------------------------------------


def _pending(app: FastAPI) -> set[asyncio.Task[None]]:
    tasks: set[asyncio.Task[None]] | None = getattr(app.state, "wechat_pending", None)
    if tasks is None:
        tasks = set()
        app.state.wechat_pending = tasks
    return tasks


_ADDRESSING = frozenset({"wechat.subscribed", "wechat.scanned"})
"""A follow or a follower's scan: WeChat itself attests the openid as a follower's, so
the contact's workflow is told it as the trait it sends WeChat messages to."""


def _incoming(event: CallbackEvent) -> Incoming:
    return Incoming(
        kind="track",
        message_id=event.message_id,
        type=event.type,
        occurred_at=event.occurred_at,
        properties=event.properties,
        context=event.context,
        traits={"wechat_openid": event.openid} if event.type in _ADDRESSING else {},
        identities={"wechat_openid": event.openid},
        source=SOURCE,
        channel="wechat",
    )


async def _store(app: FastAPI, event: CallbackEvent) -> None:
    # Not the message_id: it holds the openid, which the log processor masks only by key.
    bound = log.bind(
        app=event.app,
        event_type=event.type,
        openid=event.openid,
        occurred_at=event.occurred_at.isoformat(),
    )
    try:
        [outcome] = await ingest(app, [_incoming(event)])
    except asyncio.CancelledError:
        bound.error("wechat event not stored: cancelled (shutdown)")
        raise
    except Exception as exc:
        # WeChat was told "success" and will not retry: this line is the only trace.
        bound.error("wechat event not stored", error=str(exc), exc_info=True)
        return
    bound.debug("wechat event stored", contact_id=outcome.contact_id, duplicate=outcome.duplicate)


async def _record_job(app: FastAPI, appid: str, finished: MassSendFinished) -> None:
    bound = log.bind(appid=appid, msg_id=finished.msg_id, status=finished.status)
    try:
        await run_in_threadpool(
            record_job_finished, app.state.db, appid=appid, finished=finished, at=datetime.now(UTC)
        )
    except asyncio.CancelledError:
        bound.error("wechat mass-send result not stored: cancelled (shutdown)")
        raise
    except Exception as exc:
        bound.error("wechat mass-send result not stored", error=str(exc), exc_info=True)


def _store_later(app: FastAPI, event: CallbackEvent | tuple[str, MassSendFinished]) -> None:
    tasks = _pending(app)
    work = _store(app, event) if isinstance(event, CallbackEvent) else _record_job(app, *event)
    task = asyncio.create_task(work, name="wechat-store")
    tasks.add(task)  # a task only weakly referenced by the loop can vanish mid-flight
    task.add_done_callback(tasks.discard)


async def drain(app: FastAPI) -> None:
    """Wait for callbacks' stores in flight; call it at shutdown before the ``Ingestor``
    closes, under ``asyncio.timeout(...)``. A store still waiting when the loop ends is
    cancelled and logged as not stored.
    """
    tasks = set(_pending(app))
    if tasks:
        await asyncio.wait(tasks)


# --- routes ----------------------------------------------------------------------------

_QUERY_DOC: dict[str, tuple[str, str]] = {
    "signature": ("SHA-1 of the sorted token, timestamp and nonce", "e6bb6e4d3b3d4b5f..."),
    "timestamp": ("Unix time, as WeChat sent it", "1763802000"),
    "nonce": ("WeChat's random number", "1320562325"),
}
_SUBSCRIBE_XML = (
    "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>"
    "<FromUserName><![CDATA[oAbC1234567890defGHIjklMNOpq]]></FromUserName>"
    "<CreateTime>1763802000</CreateTime><MsgType><![CDATA[event]]></MsgType>"
    "<Event><![CDATA[subscribe]]></Event><EventKey><![CDATA[qrscene_expo2026]]></EventKey>"
    "<Ticket><![CDATA[gQH47joAAAAAAAAAASxodHRwOi8v]]></Ticket></xml>"
)
_TEXT_XML = (
    "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>"
    "<FromUserName><![CDATA[oAbC1234567890defGHIjklMNOpq]]></FromUserName>"
    "<CreateTime>1763802060</CreateTime><MsgType><![CDATA[text]]></MsgType>"
    "<Content><![CDATA[白皮书还能下载吗?]]></Content><MsgId>24600000000000001</MsgId></xml>"
)
_SAFE_XML = (
    "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>"
    "<Encrypt><![CDATA[k3Jx...base64 of AES-256-CBC...Q==]]></Encrypt></xml>"
)
_REFUSALS: dict[int | str, dict[str, Any]] = {
    403: {"description": "Bad signature (or msg_signature), or a message for another appid"},
    404: {"description": "No such app in the wechat_apps settings"},
    503: {"description": "The wechat_apps settings cannot be read"},
}


# The three query parameters WeChat signs every call with.
_Signature = Annotated[
    str | None,
    Query(description=_QUERY_DOC["signature"][0], examples=[_QUERY_DOC["signature"][1]]),
]
_Timestamp = Annotated[
    str | None,
    Query(description=_QUERY_DOC["timestamp"][0], examples=[_QUERY_DOC["timestamp"][1]]),
]
_Nonce = Annotated[
    str | None, Query(description=_QUERY_DOC["nonce"][0], examples=[_QUERY_DOC["nonce"][1]])
]


@router.get(
    "/{app}",
    summary="WeChat server URL check: echo echostr when the signature matches",
    response_class=PlainTextResponse,
    responses={
        200: {
            "description": "The signature matches: echostr, unchanged",
            "content": {"text/plain": {"example": "5837397520183462011"}},
        },
        **_REFUSALS,
    },
)
async def wechat_check(
    request: Request,
    *,
    app: str,
    signature: _Signature = None,
    timestamp: _Timestamp = None,
    nonce: _Nonce = None,
    echostr: Annotated[
        str, Query(description="Echoed on success", examples=["5837397520183462011"])
    ] = "",
) -> Response:
    """WeChat calls this once when the account's server URL is saved."""
    config = _config(request, app)
    if isinstance(config, Response):
        return config
    try:
        verify(signature, config.token.get_secret_value(), timestamp, nonce)
        _fresh(request, timestamp)
    except (SignatureMismatch, StaleRequest) as exc:
        log.warning("wechat url check refused", app=app, reason=exc.message)
        return _text(403, exc.message)
    return _text(200, echostr)


@router.post(
    "/{app}",
    summary="WeChat callback: follows, QR scans, menu clicks, messages (answers success)",
    response_class=PlainTextResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/xml": {
                    "schema": {"type": "string"},
                    "examples": {
                        "subscribe_with_qr_scene": {
                            "summary": "Plaintext mode: a follow through a QR code",
                            "value": _SUBSCRIBE_XML,
                        },
                        "text_message": {
                            "summary": "Plaintext mode: the user sends a message",
                            "value": _TEXT_XML,
                        },
                        "safe_mode": {
                            "summary": "Safe mode (encrypt_type=aes): the message is in Encrypt",
                            "value": _SAFE_XML,
                        },
                    },
                }
            },
        }
    },
    responses={
        200: {
            "description": "Accepted; the event is stored right after this reply",
            "content": {"text/plain": {"example": "success"}},
        },
        400: {"description": "XML with a DTD or entities, undecryptable, or not a message"},
        413: {"description": "Body over 64 KB"},
        **_REFUSALS,
    },
)
async def wechat_callback(
    request: Request,
    *,
    app: str,
    signature: _Signature = None,
    timestamp: _Timestamp = None,
    nonce: _Nonce = None,
    openid: Annotated[
        str | None,
        Query(description="The sender (informational; the body's FromUserName is used)"),
    ] = None,
    encrypt_type: Annotated[
        str | None, Query(description="aes in safe and compatible mode", examples=["aes"])
    ] = None,
    msg_signature: Annotated[
        str | None, Query(description="Safe mode: SHA-1 of token, timestamp, nonce, Encrypt")
    ] = None,
) -> Response:
    """Authenticate, decrypt and parse the callback, answer ``success``, store after."""
    config = _config(request, app)
    if isinstance(config, Response):
        return config
    body = await _read(request)
    if isinstance(body, Response):
        return body
    try:
        fields = _open(
            config,
            body,
            signature=signature,
            timestamp=timestamp,
            nonce=nonce,
            encrypt_type=encrypt_type,
            msg_signature=msg_signature,
        )
        stamp = _fresh(request, timestamp)
        message = parse_message(fields)
        finished = (
            mass_send_finished(fields)
            if message.msg_type == "event" and message.event == MASS_SEND_FINISHED
            else None
        )
    except CallbackError as exc:
        status = _STATUS.get(type(exc), 400)
        log.warning("wechat callback refused", app=app, status=status, reason=exc.message)
        return _text(status, exc.message)
    # Authenticated and fresh, so the nonce and signature are present and WeChat's.
    seen = (nonce or "", (msg_signature or signature or "").strip().lower())
    if not _first_time(request, app, stamp, *seen):
        log.warning("wechat callback replayed", app=app, timestamp=stamp)
        return _text(200, "success")
    if finished is not None:
        # A broadcast's mass-send job ended: its counts go to broadcast_jobs, not to a
        # contact (the sender is WeChat's mass-send assistant, not a follower).
        _store_later(request.app, (config.appid, finished))
        return _text(200, "success")
    event = event_from(app, message)
    if event is not None:
        _store_later(request.app, event)
    return _text(200, "success")


# --- the customer-service window -------------------------------------------------------
