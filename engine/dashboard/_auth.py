"""The dashboard's login: the admin token once, then a signed session cookie.

``POST /dashboard/login`` with the right ``STAGECOACH_ADMIN_TOKEN`` sets the cookie
:data:`COOKIE`: a :class:`engine.content.LinkSigner` token (the signer the unsubscribe
links use) for the purpose :data:`PURPOSE`, with an expiry. Its key is derived from both
``STAGECOACH_LINK_SECRET`` and the admin token, so rotating either signs every session
out, and no session token can stand in for a link token or the other way round. The
cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page
or form sends it), scoped to ``/dashboard``, and ``Secure`` when the API's public URL
is https.

A missing, tampered or expired cookie is refused the same way: a redirect to the login
page, which says why when it can.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from fastapi import HTTPException, Request, Response

from engine.content import LinkSigner, TokenExpired, TokenInvalid
from engine.settings import Settings

COOKIE = "stagecoach_dashboard"
PURPOSE = "dashboard-session"
SESSION_TTL = timedelta(hours=12)
"""How long a sign-in lasts."""

_KEY_LABEL = b"stagecoach dashboard session key\x00"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


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

    def token_matches(self, given: str) -> bool:
        """Whether ``given`` is the admin token: constant-time over SHA-256 digests, so
        neither its content nor its length leaks through timing."""
        return self.enabled and hmac.compare_digest(_digest(given), self._expected)

    def issue(self, response: Response, now: datetime) -> None:
        """Set a fresh session cookie on ``response``."""
        response.set_cookie(
            COOKIE,
            self._signer.sign(PURPOSE, {"sub": "admin"}, now),
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

    def problem(self, cookie: str | None, now: datetime) -> str | None:
        """Why ``cookie`` is no session (``""`` when there is none), or None when it is one."""
        if not self.enabled:
            return "the dashboard is off until STAGECOACH_ADMIN_TOKEN is set"
        if not cookie:
            return ""
        try:
            self._signer.verify(PURPOSE, cookie, now)
        except TokenExpired:
            return "your session expired: sign in again"
        except TokenInvalid:
            return "your session is not valid here: sign in again"
        return None

    def require(self, request: Request) -> None:
        """A route dependency: let a signed-in request through, send others to log in.

        Raises:
            HTTPException: 303 to the login page, carrying the page asked for.
        """
        why = self.problem(request.cookies.get(COOKIE), datetime.now(UTC))
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
