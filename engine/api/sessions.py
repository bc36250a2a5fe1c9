"""The dashboard's login: the admin token once, then a signed session cookie.

``POST /dashboard/login`` with the right ``STAGECOACH_ADMIN_TOKEN`` sets the cookie
:data:`COOKIE`: a :class:`stagecoach.engine.domain.content.LinkSigner` token (the signer the
unsubscribe links use) for the purpose :data:`PURPOSE`, with an expiry and a random session id. The
id is stored (table ``admin_sessions``) and checked on every request, so signing out
(``POST``, same origin only) ends the session at once, on every API replica, even for a
copy of the cookie taken before. Its key is derived from both
``STAGECOACH_LINK_SECRET`` and the admin token, so rotating either signs every session
out, and no session token can stand in for a link token or the other way round. The
cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page
or form sends it), scoped to ``/dashboard``, and ``Secure`` when the API's public URL
is https.

A missing, tampered, expired or signed-out cookie is refused the same way: a redirect to
the login page, which says why when it can.

Guessing the admin token is throttled per client (:class:`FailureThrottle`): past
``STAGECOACH_AUTH_FAILURE_LIMIT`` wrong tokens within ``STAGECOACH_AUTH_FAILURE_WINDOW``
seconds, the dashboard and codec sign-ins and the admin bearer API answer that client 429
with ``Retry-After``, without looking at what it sent, until its oldest failure leaves
the window. The client is the TCP peer, or what a proxy listed in
``STAGECOACH_TRUSTED_PROXIES`` says (uvicorn's proxy headers support, set up by
``stagecoach api``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlsplit

from fastapi import HTTPException, Request, Response
from sqlalchemy import Engine, delete
from sqlmodel import Session, col

from stagecoach.engine.api._common import client_address, failure_throttle
from stagecoach.engine.domain.content import LinkSigner, TokenExpired, TokenInvalid
from stagecoach.engine.services.storage.models import AdminSession
from stagecoach.engine.settings import Settings

COOKIE = "stagecoach_dashboard"
PURPOSE = "dashboard-session"
SESSION_TTL = timedelta(hours=12)
"""How long a sign-in lasts."""

_KEY_LABEL = b"stagecoach dashboard session key\x00"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Attempt:
    """The answer to one sign-in: ``granted``, or refused (``retry_after`` > 0: throttled,
    the token was not even compared)."""

    granted: bool
    retry_after: int = 0


class Sessions:
    """Checks the admin token and signs and verifies session cookies.

    Args:
        settings: Gives the admin token, the link secret and the public URL.
        ttl: How long a session lasts.
        path: The cookie's path: the dashboard's URL prefix.
    """

    def __init__(
        self, settings: Settings, *, ttl: timedelta = SESSION_TTL, path: str = "/dashboard"
    ) -> None:
        token = settings.admin_token.get_secret_value() if settings.admin_token else ""
        self.enabled = bool(token.strip())
        """False while ``STAGECOACH_ADMIN_TOKEN`` is unset: nobody can sign in."""
        self._expected = _digest(token)
        key = hmac.digest(
            settings.link_secret.get_secret_value().encode(),
            _KEY_LABEL + token.encode("utf-8", "surrogatepass"),
            "sha256",
        )
        self._signer = LinkSigner(key, settings.api_base_url, ttl)
        self.ttl = ttl
        self.path = path
        self.secure = settings.api_base_url.startswith("https://")
        public = urlsplit(settings.api_base_url)
        self._public_origin = f"{public.scheme}://{public.netloc}"

    def token_matches(self, given: str) -> bool:
        """Whether ``given`` is the admin token: constant-time over SHA-256 digests, so
        neither its content nor its length leaks through timing."""
        return self.enabled and hmac.compare_digest(_digest(given), self._expected)

    def attempt(self, request: Request, given: str) -> Attempt:
        """Check ``given`` as the admin token for ``request``'s client, throttled: a
        throttled client is refused unheard, a wrong token counts against it."""
        throttle = failure_throttle(request)
        client = client_address(request)
        wait = throttle.retry_after(client)
        if wait:
            return Attempt(False, wait)
        if self.token_matches(given):
            return Attempt(True)
        throttle.failed(client)
        return Attempt(False)

    def issue(self, response: Response, now: datetime, *, db: Engine | None = None) -> None:
        """Set a fresh session cookie on ``response``, its id stored in ``db`` (a
        cookie whose id is not stored is refused: without ``db``, tests' cookies)."""
        sid = secrets.token_urlsafe(24)
        if db is not None:
            with Session(db) as session:
                # Sessions past their expiry can never be used again: drop them here.
                session.exec(delete(AdminSession).where(col(AdminSession.expires_at) < now))
                session.add(AdminSession(id=sid, created_at=now, expires_at=now + self.ttl))
                session.commit()
        response.set_cookie(
            COOKIE,
            self._signer.sign(PURPOSE, {"sub": "admin", "sid": sid}, now),
            max_age=int(self.ttl.total_seconds()),
            path=self.path,
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )

    def clear(self, response: Response) -> None:
        """Expire the session cookie on ``response``."""
        response.delete_cookie(
            COOKIE, path=self.path, secure=self.secure, httponly=True, samesite="strict"
        )

    def end(self, request: Request) -> None:
        """Sign ``request``'s session out for good: its stored id is deleted, so the
        cookie (and any copy of it) is refused from now on."""
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return
        try:
            body = self._signer.verify(PURPOSE, cookie, datetime.now(UTC))
        except (TokenInvalid, TokenExpired):
            return  # forged or expired: no live session to end
        sid = body.get("sid")
        if isinstance(sid, str):
            with Session(request.app.state.db) as session:
                session.exec(delete(AdminSession).where(col(AdminSession.id) == sid))
                session.commit()

    def same_origin(self, request: Request) -> bool:
        """Whether a state-changing request comes from this API's own pages: its
        ``Origin`` (browsers send one with every POST) is the API's, or it has none (not a
        browser). A cross-site form is refused, whatever cookies it carries."""
        origin = request.headers.get("origin")
        if origin is None:
            return request.headers.get("sec-fetch-site", "same-origin") in (
                "same-origin",
                "none",
            )
        own = {self._public_origin, f"{request.url.scheme}://{request.headers.get('host', '')}"}
        return origin.rstrip("/") in own

    def problem(self, cookie: str | None, now: datetime, db: Engine) -> str | None:
        """Why ``cookie`` is no session (``""`` when there is none), or None when it is one."""
        if not self.enabled:
            return "the dashboard is off until STAGECOACH_ADMIN_TOKEN is set"
        if not cookie:
            return ""
        try:
            body = self._signer.verify(PURPOSE, cookie, now)
        except TokenExpired:
            return "your session expired: sign in again"
        except TokenInvalid:
            return "your session is not valid here: sign in again"
        sid = body.get("sid")
        if not isinstance(sid, str):
            return "your session is not valid here: sign in again"
        with Session(db) as session:
            stored = session.get(AdminSession, sid)
        if stored is None:
            return "your session ended (signed out): sign in again"
        return None

    def require(self, request: Request) -> None:
        """A route dependency: let a signed-in request through, send others to log in.

        Raises:
            HTTPException: 303 to the login page, carrying the page asked for.
        """
        why = self.problem(request.cookies.get(COOKIE), datetime.now(UTC), request.app.state.db)
        if why is None:
            return
        wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        location = f"{self.path}/login?next={quote(wanted, safe='/')}"
        if why:
            location += "&expired=1"
        raise HTTPException(303, detail="sign in first", headers={"Location": location})

    def safe_next(self, wanted: str | None) -> str:
        """Where to go after signing in: a dashboard page, never another site."""
        if (
            wanted
            and wanted.startswith(self.path)
            and "\\" not in wanted
            and all(ord(ch) > 31 for ch in wanted)
        ):
            return wanted
        return self.path
