"""A local WeChat Official Account API: the endpoints Stagecoach calls, over real HTTP.

A FastAPI app served by uvicorn on a free loopback port, in a background thread, so the
connector under test talks to it exactly as to ``api.weixin.qq.com``:

- ``POST /cgi-bin/stable_token``: JSON ``grant_type``, ``appid``, ``secret``,
  ``force_refresh``; answers ``access_token`` and ``expires_in``. Normal mode hands out
  the current token until its last ``handover`` seconds, then issues a new one while the
  old one stays valid to its end; force mode revokes the current token and issues another.
  Wrong appid: 40013; wrong secret: 40125.
- ``GET /cgi-bin/token``: the legacy endpoint; every call issues a new token.
- ``POST /cgi-bin/message/template/send?access_token=``: answers ``msgid``. A repeat of
  ``(touser, client_msg_id)`` within ten minutes is accepted without a second message.
- ``POST /cgi-bin/message/custom/send?access_token=``: ``msgtype`` text, news, ...
- ``POST /cgi-bin/message/mass/sendall?access_token=``: a mass send to a tag's
  followers (``filter: {is_to_all: false, tag_id}``); ``POST /cgi-bin/message/mass/send``
  to an openid list (``touser``, 2 to 10,000 openids, else 40130). Both take ``mpnews``
  (``media_id``, else 40007) or ``text`` (``content``); another msgtype is 40008. They
  answer ``msg_id`` (and ``msg_data_id`` for ``mpnews``). A ``clientmsgid`` seen within
  24 hours is refused with 45065 and the first job's ``msg_id``, and no second job is
  made; one over 64 bytes is 45067. The account type, ``subscription`` (one mass send a
  calendar day, China time) or ``service`` (four a calendar month), is set when the peer
  is built; a job past the quota is refused with 45028. Tag membership is the test's:
  ``tag_users(tag_id, openids)``. ``POST /cgi-bin/message/mass/get`` answers a job's
  ``msg_status`` (unknown msg_id: 40059). ``finish_job(msg_id, callback_url=, token=)``
  then plays WeChat's ``MASSSENDJOBFINISH`` callback to our server URL, signed as WeChat
  signs it (plaintext, or safe mode with ``aes_key``).
- Tokens: unknown or revoked: 40001; expired: 42001; missing: 41001.

Tokens expire for real: after ``token_lifetime`` seconds (announced in ``expires_in``),
or, with ``expire_every``, at every multiple of that many seconds since the peer started,
which the client is not told about (the "expire early" fault). ``expire_tokens()`` expires
every token at once. Faults are queued from the test: ``fail_next(45011, times=3)``,
``fail_openid("o-1", 43004)``, ``http_error_next(502)``, ``slow_next(2.0)``.

The peer records every message and mass-send job it accepted and counts token requests,
issued tokens and expiries, so tests assert effects here rather than in the client.
Integer ``expires_in`` as WeChat sends it, except for lifetimes under a minute, which are
reported to the millisecond so sub-second expiry can be exercised.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import math
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import uvicorn
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

ERRMSG = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40007: "invalid media_id",
    40008: "invalid message type",
    40013: "invalid appid",
    40037: "invalid template_id",
    40059: "invalid msg id",
    40125: "invalid appsecret",
    40130: "invalid openid list size, at least two openid",
    41001: "access_token missing",
    41002: "appid missing",
    41004: "appsecret missing",
    42001: "access_token expired",
    43004: "require subscribe",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit mustslower retry next minute",
    45015: "response out of time limit or subscription is canceled",
    45028: "has no masssend quota",
    45065: "clientmsgid exist",
    45066: "same clientmsgid retry too fast",
    45067: "clientmsgid size out of limit",
    47001: "data format error",
    48001: "api unauthorized",
    50002: "user limited",
}
"""Errmsg texts as WeChat words them (abridged); a ``rid`` hint is appended like WeChat's."""

CUSTOM_MSGTYPES = frozenset(
    {"text", "image", "voice", "video", "music", "news", "mpnews", "msgmenu", "wxcard"}
)
PEER_APPID = "wx5f2e0c0ffee00001"
PEER_SECRET = "peer-appsecret-0123456789abcdef"
DEDUP_SECONDS = 600.0
"""WeChat keeps a template message's client_msg_id for about ten minutes."""
MASS_DEDUP_SECONDS = 24 * 3600.0
"""...and a mass send's clientmsgid for 24 hours."""
MASS_QUOTA = {"subscription": 1, "service": 4}
"""Mass sends per period: a subscription account's calendar day, a service account's
calendar month, both in China time."""
MASS_MSGTYPES = frozenset({"mpnews", "text"})
MIN_OPENIDS, MAX_OPENIDS = 2, 10_000
CHINA = timezone(timedelta(hours=8))
PEER_ORIGINAL_ID = "gh_5f2e0c0ffee0"
"""The account's original id: ``ToUserName`` of its callbacks."""
MASS_SEND_HELPER = "oMassSendHelper0000000000000"
"""``FromUserName`` of a MASSSENDJOBFINISH callback (WeChat's mass-send assistant)."""


@dataclass(frozen=True)
class AcceptedMessage:
    """One message the peer accepted (and WeChat would deliver)."""

    kind: str
    """``template`` or ``custom``."""
    openid: str
    body: dict[str, Any]
    msgid: int | None
    token: str
    client_msg_id: str | None


@dataclass
class MassJob:
    """One mass-send job the peer accepted, with the followers it goes to."""

    msg_id: int
    msg_data_id: int | None
    clientmsgid: str | None
    kind: str
    """``tag`` (sendall) or ``openids`` (send)."""
    tag_id: int | None
    recipients: tuple[str, ...]
    body: dict[str, Any]
    accepted_at: float
    status: str = "SENDING"
    """``SENDING``, then ``SEND_SUCCESS`` or ``SEND_FAIL`` after ``finish_job``."""


@dataclass
class _Fault:
    endpoint: str | None
    """``template``, ``custom``, ``sendall``, ``mass_send``, ``mass_get``, ``token`` or
    None (any endpoint but ``token``)."""
    openid: str | None
    remaining: int | None
    """Calls left; None: until ``clear_faults``."""
    errcode: int | None = None
    http_status: int | None = None
    delay: float = 0.0

    def matches(self, endpoint: str, openid: str | None) -> bool:
        if self.endpoint is None:
            if endpoint == "token":
                return False
        elif self.endpoint != endpoint:
            return False
        return self.openid is None or self.openid == openid


@dataclass
class _Token:
    value: str
    issued_at: float
    announced_expiry: float
    expires_at: float
    revoked: bool = False


@dataclass
class _Counters:
    token_requests: int = 0
    force_refreshes: int = 0
    send_calls: dict[str, int] = field(default_factory=lambda: {"template": 0, "custom": 0})
    mass_calls: dict[str, int] = field(
        default_factory=lambda: {"sendall": 0, "mass_send": 0, "mass_get": 0}
    )
    duplicates_suppressed: int = 0
    refused: dict[int, int] = field(default_factory=dict)


class WeChatPeer:
    """The fake WeChat API; use as a context manager or ``start()`` / ``stop()``.

    Args:
        appid: The only AppID it knows.
        secret: That app's AppSecret.
        token_lifetime: Seconds a token lives, as announced in ``expires_in``.
        expire_every: Expire every token at each multiple of this many seconds since
            ``start()``, unannounced.
        handover: Seconds before its end in which a normal token request issues the next
            token; default: WeChat's 5 minutes, or a fifth of a shorter lifetime. (Clients
            renew a little inside the handover; for second-long lifetimes a fifth leaves
            them the slack that WeChat's spare minute gives for two-hour tokens.)
        account_type: ``subscription`` (one mass send a day) or ``service`` (four a
            month).
        clock: The wall clock (Unix seconds) for mass-send quotas and clientmsgid expiry.
    """

    def __init__(
        self,
        *,
        appid: str = PEER_APPID,
        secret: str = PEER_SECRET,
        token_lifetime: float = 7200.0,
        expire_every: float | None = None,
        handover: float | None = None,
        account_type: str = "service",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if account_type not in MASS_QUOTA:
            raise ValueError(
                f"account_type is {account_type!r}: use one of {', '.join(MASS_QUOTA)}"
            )
        self.appid = appid
        self.account_type = account_type
        self._clock = clock
        self.secret = secret
        self.token_lifetime = token_lifetime
        self.expire_every = expire_every
        self.handover = handover if handover is not None else min(300.0, token_lifetime / 5)
        self._lock = threading.Lock()
        self._tokens: dict[str, _Token] = {}
        self._current: str | None = None
        self._faults: list[_Fault] = []
        self._accepted: list[AcceptedMessage] = []
        self._dedup: dict[tuple[str, str], tuple[int, float]] = {}
        self._counters = _Counters()
        self._msgids = itertools.count(3_100_000_000)
        self._mass_ids = itertools.count(1_000_000_001)
        self._mass_jobs: list[MassJob] = []
        self._mass_dedup: dict[str, MassJob] = {}
        self._mass_used: dict[tuple[int, ...], int] = {}
        self._tags: dict[int, list[str]] = {}
        self._epoch = time.monotonic()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.app = self._build_app()

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> WeChatPeer:
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
        # without it every response waits out the client's delayed ACK (40 ms).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off", backlog=2048
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="wechat-peer", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the WeChat peer did not start")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}"
        with self._lock:
            self._epoch = time.monotonic()
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> WeChatPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what the test controls -------------------------------------------------------

    def fail_next(
        self,
        errcode: int,
        times: int = 1,
        *,
        endpoint: str | None = None,
        openid: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching calls with ``errcode``.

        ``endpoint`` is ``template``, ``custom``, ``sendall``, ``mass_send``, ``mass_get``
        or ``token``; None means any but ``token``. ``openid`` narrows it to sends to one
        recipient (template and custom messages).
        """
        self._add(_Fault(endpoint, openid, times, errcode=errcode))

    def fail_openid(self, openid: str, errcode: int, *, endpoint: str | None = None) -> None:
        """Answer every send to ``openid`` with ``errcode`` until ``clear_faults``."""
        self._add(_Fault(endpoint, openid, None, errcode=errcode))

    def http_error_next(self, status: int, times: int = 1, *, endpoint: str | None = None) -> None:
        """Answer the next ``times`` calls with a bare HTTP ``status``."""
        self._add(_Fault(endpoint, None, times, http_status=status))

    def slow_next(self, seconds: float, times: int = 1, *, endpoint: str | None = None) -> None:
        """Delay the next ``times`` calls by ``seconds`` before handling them."""
        self._add(_Fault(endpoint, None, times, delay=seconds))

    def tag_users(self, tag_id: int, openids: list[str]) -> None:
        """Tag ``openids`` with ``tag_id`` (added to the tag's followers, in order)."""
        with self._lock:
            members = self._tags.setdefault(tag_id, [])
            members.extend(o for o in openids if o not in members)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (sends with it get 42001)."""
        now = time.monotonic()
        with self._lock:
            for token in self._tokens.values():
                token.expires_at = min(token.expires_at, now)

    # --- what the test reads ----------------------------------------------------------

    @property
    def accepted(self) -> list[AcceptedMessage]:
        with self._lock:
            return list(self._accepted)

    @property
    def token_requests(self) -> int:
        """Calls to either token endpoint, answered or refused."""
        with self._lock:
            return self._counters.token_requests

    @property
    def tokens_issued(self) -> int:
        with self._lock:
            return len(self._tokens)

    @property
    def force_refreshes(self) -> int:
        with self._lock:
            return self._counters.force_refreshes

    @property
    def expiries(self) -> int:
        """Tokens that have expired or been revoked by now."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for t in self._tokens.values() if t.revoked or t.expires_at <= now)

    @property
    def duplicates_suppressed(self) -> int:
        with self._lock:
            return self._counters.duplicates_suppressed

    def send_calls(self, endpoint: str | None = None) -> int:
        """Calls to a message endpoint (``template``, ``custom``, or both), any outcome."""
        with self._lock:
            calls = self._counters.send_calls
            return sum(calls.values()) if endpoint is None else calls[endpoint]

    @property
    def mass_jobs(self) -> list[MassJob]:
        """The mass-send jobs accepted so far, oldest first."""
        with self._lock:
            return list(self._mass_jobs)

    def mass_calls(self, endpoint: str | None = None) -> int:
        """Calls to a mass endpoint (``sendall``, ``mass_send``, ``mass_get``, or all)."""
        with self._lock:
            calls = self._counters.mass_calls
            return sum(calls.values()) if endpoint is None else calls[endpoint]

    def finish_job(
        self,
        msg_id: int | str,
        *,
        callback_url: str,
        token: str,
        status: str = "send success",
        filtered: int = 0,
        errors: int = 0,
        aes_key: str | None = None,
        client: httpx.Client | None = None,
    ) -> httpx.Response:
        """Report job ``msg_id`` finished, as WeChat does: POST MASSSENDJOBFINISH to
        ``callback_url`` (the account's server URL), signed with ``token``.

        ``filtered`` followers are taken out by WeChat's filters (refused the account's
        messages, over their four a month), ``errors`` of the rest failed; the counts
        follow: TotalCount is the job's recipients, FilterCount those left after the
        filter, SentCount those of them without an error (none unless ``status`` is
        ``send success``). With ``aes_key`` (the EncodingAESKey) the callback goes in
        safe mode. ``client`` posts it (a ``TestClient``); default: a fresh one.
        """
        with self._lock:
            job = next((j for j in self._mass_jobs if j.msg_id == int(msg_id)), None)
            if job is None:
                raise KeyError(f"the peer never accepted mass-send job {msg_id}")
            total = len(job.recipients)
            succeeded = status == "send success"
            job.status = "SEND_SUCCESS" if succeeded else "SEND_FAIL"
        left = max(total - filtered, 0)
        sent = max(left - errors, 0) if succeeded else 0
        fields: list[tuple[str, str | int]] = [
            ("ToUserName", PEER_ORIGINAL_ID),
            ("FromUserName", MASS_SEND_HELPER),
            ("CreateTime", int(time.time())),
            ("MsgType", "event"),
            ("Event", "MASSSENDJOBFINISH"),
            ("MsgID", int(msg_id)),
            ("Status", status),
            ("TotalCount", total),
            ("FilterCount", left),
            ("SentCount", sent),
            ("ErrorCount", errors),
        ]
        body = _xml(fields)
        return self.post_callback(
            body, callback_url=callback_url, token=token, aes_key=aes_key, client=client
        )

    def post_callback(
        self,
        body: bytes,
        *,
        callback_url: str,
        token: str,
        aes_key: str | None = None,
        client: httpx.Client | None = None,
    ) -> httpx.Response:
        """POST a callback ``body`` (XML) to ``callback_url``, signed as WeChat signs it."""
        timestamp = str(int(time.time()))
        nonce = str(secrets.randbelow(10**10))
        params = {
            "signature": _sign(token, timestamp, nonce),
            "timestamp": timestamp,
            "nonce": nonce,
        }
        if aes_key is not None:
            encrypted = _encrypt(body, aes_key=aes_key, appid=self.appid)
            params |= {
                "encrypt_type": "aes",
                "msg_signature": _sign(token, timestamp, nonce, encrypted),
            }
            body = _xml([("ToUserName", PEER_ORIGINAL_ID), ("Encrypt", encrypted)])
        headers = {"Content-Type": "text/xml"}
        if client is not None:
            return client.post(callback_url, params=params, content=body, headers=headers)
        with httpx.Client(timeout=10) as own:
            return own.post(callback_url, params=params, content=body, headers=headers)

    def refused(self, errcode: int) -> int:
        """How many calls were answered with ``errcode``."""
        with self._lock:
            return self._counters.refused.get(errcode, 0)

    # --- internals --------------------------------------------------------------------

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, endpoint: str, openid: str | None) -> _Fault | None:
        for fault in self._faults:
            if not fault.delay and fault.matches(endpoint, openid):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    def _error(self, errcode: int) -> JSONResponse:
        self._counters.refused[errcode] = self._counters.refused.get(errcode, 0) + 1
        hint = f" rid: {secrets.token_hex(4)}-{secrets.token_hex(4)}"
        return JSONResponse({"errcode": errcode, "errmsg": ERRMSG.get(errcode, "error") + hint})

    def _expiry_for(self, issued_at: float) -> tuple[float, float]:
        announced = issued_at + self.token_lifetime
        if self.expire_every is None:
            return announced, announced
        period = self.expire_every
        boundary = self._epoch + (math.floor((issued_at - self._epoch) / period) + 1) * period
        return announced, min(announced, boundary)

    def _issue(self, now: float) -> _Token:
        announced, expires_at = self._expiry_for(now)
        token = _Token(secrets.token_urlsafe(48), now, announced, expires_at)
        self._tokens[token.value] = token
        self._current = token.value
        return token

    def _expires_in(self, token: _Token, now: float) -> float | int:
        remaining = token.announced_expiry - now
        if self.token_lifetime >= 60:
            return int(remaining)
        return round(remaining, 3)

    def _check_token(self, value: str | None, now: float) -> int:
        if not value:
            return 41001
        token = self._tokens.get(value)
        if token is None or token.revoked:
            return 40001
        if now >= token.expires_at:
            return 42001
        return 0

    def _stable_token(self, body: Any) -> JSONResponse:
        now = time.monotonic()
        with self._lock:
            self._counters.token_requests += 1
            fault = self._take_fault("token", None)
            if fault is not None and fault.errcode is not None:
                return self._error(fault.errcode)
            if not isinstance(body, dict):
                return self._error(47001)
            if body.get("grant_type") != "client_credential":
                return self._error(40002)
            if not body.get("appid"):
                return self._error(41002)
            if body.get("appid") != self.appid:
                return self._error(40013)
            if not body.get("secret"):
                return self._error(41004)
            if body.get("secret") != self.secret:
                return self._error(40125)
            current = self._tokens.get(self._current or "")
            if body.get("force_refresh") is True:
                self._counters.force_refreshes += 1
                if current is not None:
                    current.revoked = True
                current = self._issue(now)
            elif (
                current is None
                or current.revoked
                or now >= current.expires_at
                or current.announced_expiry - now <= self.handover
            ):
                current = self._issue(now)
            return JSONResponse(
                {"access_token": current.value, "expires_in": self._expires_in(current, now)}
            )

    def _legacy_token(self, params: dict[str, str]) -> JSONResponse:
        now = time.monotonic()
        with self._lock:
            self._counters.token_requests += 1
            if params.get("grant_type") != "client_credential":
                return self._error(40002)
            if params.get("appid") != self.appid:
                return self._error(40013)
            if params.get("secret") != self.secret:
                return self._error(40125)
            token = self._issue(now)
            return JSONResponse(
                {"access_token": token.value, "expires_in": self._expires_in(token, now)}
            )

    def _send(self, endpoint: str, access_token: str | None, body: Any) -> Response:
        now = time.monotonic()
        with self._lock:
            self._counters.send_calls[endpoint] += 1
            refused = self._check_token(access_token, now)
            if refused:
                return self._error(refused)
            if not isinstance(body, dict):
                return self._error(47001)
            openid = body.get("touser")
            fault = self._take_fault(endpoint, openid if isinstance(openid, str) else None)
            if fault is not None and fault.http_status is not None:
                return Response(status_code=fault.http_status, content=b"upstream trouble")
            if fault is not None and fault.errcode is not None:
                return self._error(fault.errcode)
            if not isinstance(openid, str) or not openid:
                return self._error(40003)
            invalid = _template_problem(body) if endpoint == "template" else _custom_problem(body)
            if invalid:
                return self._error(invalid)
            assert access_token is not None
            if endpoint == "custom":
                self._accepted.append(
                    AcceptedMessage("custom", openid, body, None, access_token, None)
                )
                return JSONResponse({"errcode": 0, "errmsg": "ok"})
            client_msg_id = body.get("client_msg_id")
            if isinstance(client_msg_id, str) and client_msg_id:
                seen = self._dedup.get((openid, client_msg_id))
                if seen is not None and now - seen[1] < DEDUP_SECONDS:
                    self._counters.duplicates_suppressed += 1
                    return JSONResponse({"errcode": 0, "errmsg": "ok", "msgid": seen[0]})
            msgid = next(self._msgids)
            if isinstance(client_msg_id, str) and client_msg_id:
                self._dedup[(openid, client_msg_id)] = (msgid, now)
            self._accepted.append(
                AcceptedMessage(
                    "template",
                    openid,
                    body,
                    msgid,
                    access_token,
                    client_msg_id if isinstance(client_msg_id, str) else None,
                )
            )
            return JSONResponse({"errcode": 0, "errmsg": "ok", "msgid": msgid})

    def _mass_period(self) -> tuple[int, ...]:
        local = datetime.fromtimestamp(self._clock(), UTC).astimezone(CHINA)
        if self.account_type == "subscription":
            return (local.year, local.month, local.day)
        return (local.year, local.month)

    def _mass_send(self, endpoint: str, access_token: str | None, body: Any) -> Response:
        now = time.monotonic()
        with self._lock:
            self._counters.mass_calls[endpoint] += 1
            refused = self._check_token(access_token, now)
            if refused:
                return self._error(refused)
            fault = self._take_fault(endpoint, None)
            if fault is not None and fault.http_status is not None:
                return Response(status_code=fault.http_status, content=b"upstream trouble")
            if fault is not None and fault.errcode is not None:
                return self._error(fault.errcode)
            if not isinstance(body, dict):
                return self._error(47001)
            recipients = self._mass_recipients(endpoint, body)
            if isinstance(recipients, int):
                return self._error(recipients)
            problem = _mass_problem(body)
            if problem:
                return self._error(problem)
            clientmsgid = body.get("clientmsgid")
            if clientmsgid is not None:
                if not isinstance(clientmsgid, str) or len(clientmsgid.encode()) > 64:
                    return self._error(45067)
                seen = self._mass_dedup.get(clientmsgid)
                if seen is not None and self._clock() - seen.accepted_at < MASS_DEDUP_SECONDS:
                    self._counters.duplicates_suppressed += 1
                    self._counters.refused[45065] = self._counters.refused.get(45065, 0) + 1
                    return JSONResponse(
                        {"errcode": 45065, "errmsg": ERRMSG[45065], "msg_id": seen.msg_id}
                    )
            period = self._mass_period()
            if self._mass_used.get(period, 0) >= MASS_QUOTA[self.account_type]:
                return self._error(45028)
            self._mass_used[period] = self._mass_used.get(period, 0) + 1
            msgtype = body["msgtype"]
            job = MassJob(
                msg_id=next(self._mass_ids),
                msg_data_id=next(self._msgids) if msgtype == "mpnews" else None,
                clientmsgid=clientmsgid,
                kind="tag" if endpoint == "sendall" else "openids",
                tag_id=body["filter"].get("tag_id") if endpoint == "sendall" else None,
                recipients=recipients,
                body=body,
                accepted_at=self._clock(),
            )
            self._mass_jobs.append(job)
            if clientmsgid is not None:
                self._mass_dedup[clientmsgid] = job
            answer: dict[str, Any] = {
                "errcode": 0,
                "errmsg": "send job submission success",
                "msg_id": job.msg_id,
            }
            if job.msg_data_id is not None:
                answer["msg_data_id"] = job.msg_data_id
            return JSONResponse(answer)

    def _mass_recipients(self, endpoint: str, body: dict[str, Any]) -> tuple[str, ...] | int:
        """The job's followers, or the errcode that refuses its target."""
        if endpoint == "sendall":
            target = body.get("filter")
            if not isinstance(target, dict):
                return 47001
            if target.get("is_to_all") is True:
                return tuple(dict.fromkeys(o for tag in self._tags.values() for o in tag))
            tag_id = target.get("tag_id")
            if isinstance(tag_id, bool) or not isinstance(tag_id, int):
                return 47001
            return tuple(self._tags.get(tag_id, ()))
        touser = body.get("touser")
        if not isinstance(touser, list) or not all(isinstance(o, str) and o for o in touser):
            return 40003
        if not MIN_OPENIDS <= len(touser) <= MAX_OPENIDS:
            return 40130
        return tuple(touser)

    def _mass_get(self, access_token: str | None, body: Any) -> Response:
        with self._lock:
            self._counters.mass_calls["mass_get"] += 1
            refused = self._check_token(access_token, time.monotonic())
            if refused:
                return self._error(refused)
            raw = body.get("msg_id") if isinstance(body, dict) else None
            job = next((j for j in self._mass_jobs if str(j.msg_id) == str(raw)), None)
            if job is None:
                return self._error(40059)
            return JSONResponse({"msg_id": job.msg_id, "msg_status": job.status})

    def _pending_delay(self, endpoint: str) -> float:
        with self._lock:
            for fault in self._faults:
                if fault.delay and fault.matches(endpoint, None):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault.delay
        return 0.0

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="WeChat Official Account API (test peer)", openapi_url=None)

        async def json_body(request: Request) -> Any:
            try:
                return await request.json()
            except ValueError:
                return None

        @app.post("/cgi-bin/stable_token")
        async def stable_token(request: Request) -> Response:
            await _sleep(self._pending_delay("token"))
            return self._stable_token(await json_body(request))

        @app.get("/cgi-bin/token")
        async def legacy_token(request: Request) -> Response:
            return self._legacy_token(dict(request.query_params))

        @app.post("/cgi-bin/message/template/send")
        async def template_send(request: Request) -> Response:
            await _sleep(self._pending_delay("template"))
            token = request.query_params.get("access_token")
            return self._send("template", token, await json_body(request))

        @app.post("/cgi-bin/message/custom/send")
        async def custom_send(request: Request) -> Response:
            await _sleep(self._pending_delay("custom"))
            token = request.query_params.get("access_token")
            return self._send("custom", token, await json_body(request))

        @app.post("/cgi-bin/message/mass/sendall")
        async def mass_sendall(request: Request) -> Response:
            body = await json_body(request)  # read first: a slow job outlives its caller
            await _sleep(self._pending_delay("sendall"))
            token = request.query_params.get("access_token")
            return self._mass_send("sendall", token, body)

        @app.post("/cgi-bin/message/mass/send")
        async def mass_send(request: Request) -> Response:
            body = await json_body(request)  # read first: a slow job outlives its caller
            await _sleep(self._pending_delay("mass_send"))
            token = request.query_params.get("access_token")
            return self._mass_send("mass_send", token, body)

        @app.post("/cgi-bin/message/mass/get")
        async def mass_get(request: Request) -> Response:
            token = request.query_params.get("access_token")
            return self._mass_get(token, await json_body(request))

        return app


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def _template_problem(body: dict[str, Any]) -> int:
    template_id = body.get("template_id")
    if not isinstance(template_id, str) or not template_id:
        return 40037
    data = body.get("data")
    if not isinstance(data, dict):
        return 47001
    for value in data.values():
        if not isinstance(value, dict) or not isinstance(value.get("value"), str):
            return 47001
    url = body.get("url")
    if url is not None and not isinstance(url, str):
        return 47001
    return 0


def _custom_problem(body: dict[str, Any]) -> int:
    msgtype = body.get("msgtype")
    if msgtype not in CUSTOM_MSGTYPES:
        return 40008
    part = body.get(msgtype)
    if not isinstance(part, dict):
        return 47001
    if msgtype == "text" and not (isinstance(part.get("content"), str) and part["content"]):
        return 47001
    if msgtype == "news":
        articles = part.get("articles")
        if not isinstance(articles, list) or not 1 <= len(articles) <= 8:
            return 47001
        if not all(isinstance(a, dict) and a.get("title") for a in articles):
            return 47001
    return 0


def _mass_problem(body: dict[str, Any]) -> int:
    msgtype = body.get("msgtype")
    if msgtype not in MASS_MSGTYPES:
        return 40008
    part = body.get(msgtype)
    if not isinstance(part, dict):
        return 47001
    if msgtype == "mpnews":
        media_id = part.get("media_id")
        return 0 if isinstance(media_id, str) and media_id else 40007
    content = part.get("content")
    return 0 if isinstance(content, str) and content else 47001


def _xml(fields: list[tuple[str, str | int]]) -> bytes:
    """A callback body as WeChat writes it: numbers bare, text in CDATA."""
    inner = "".join(
        f"<{tag}>{value}</{tag}>"
        if isinstance(value, int)
        else f"<{tag}><![CDATA[{value}]]></{tag}>"
        for tag, value in fields
    )
    return f"<xml>{inner}</xml>".encode()


def _sign(token: str, timestamp: str, nonce: str, *more: str) -> str:
    """WeChat's callback signature, from its published scheme: SHA-1 of the sorted parts."""
    joined = "".join(sorted((token, timestamp, nonce, *more)))
    return hashlib.sha1(joined.encode(), usedforsecurity=False).hexdigest()


def _encrypt(message: bytes, *, aes_key: str, appid: str) -> str:
    """Safe mode's ``<Encrypt>``, from WeChat's published scheme (AES-256-CBC, IV the
    key's first 16 bytes, 16 random bytes + length + message + appid, padded to 32)."""
    key = base64.b64decode(aes_key + "=")
    plain = secrets.token_bytes(16) + len(message).to_bytes(4, "big") + message + appid.encode()
    pad = 32 - len(plain) % 32
    plain += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


@contextmanager
def running_peer(**options: Any) -> Iterator[WeChatPeer]:
    """A started peer, stopped on exit: ``with running_peer(token_lifetime=2) as peer``."""
    peer = WeChatPeer(**options)
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()
