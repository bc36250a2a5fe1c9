"""Admin authentication: ``Authorization: Bearer <STAGECOACH_ADMIN_TOKEN>``.

Every admin route depends on :func:`require_admin`, at route or router level::

    router = APIRouter(dependencies=[Depends(require_admin)], responses=ADMIN_RESPONSES)

- token configured, header right: the route runs;
- header missing, not ``Bearer``, or the wrong token: **401** with
  ``WWW-Authenticate: Bearer``;
- a client that sent more than ``STAGECOACH_AUTH_FAILURE_LIMIT`` wrong tokens within
  ``STAGECOACH_AUTH_FAILURE_WINDOW`` seconds: **429** with ``Retry-After``, whatever it
  sends now, until its oldest failure leaves the window (the throttle the dashboard and
  codec sign-ins share, ``stagecoach.engine.dashboard.FailureThrottle``); right tokens are never
  slowed;
- ``STAGECOACH_ADMIN_TOKEN`` unset (or blank): **503** naming the setting, for every
  caller: the admin API is off until an operator turns it on, and no request can change
  that (a 401 would send the caller looking for a token that does not exist).

The comparison is constant-time over SHA-256 digests of both sides, so neither the
token's content nor its length leaks through timing, and a token with non-ASCII
characters is refused like any other wrong token instead of raising.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from stagecoach.engine.api._common import client_address, failure_throttle, too_many_failures

_ENV_NAME = "STAGECOACH_ADMIN_TOKEN"

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="adminToken",
    description=f"The admin token: `Authorization: Bearer <{_ENV_NAME}>`.",
)

_UNAUTHORIZED = (
    f"missing or wrong admin token: send 'Authorization: Bearer <token>' with the value "
    f"of {_ENV_NAME}"
)
_DISABLED = (
    f"the admin API is off because {_ENV_NAME} is not set: set it to a long "
    "random secret (e.g. 'openssl rand -hex 32') and restart the API"
)

ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "Missing or wrong admin bearer token",
        "content": {"application/json": {"example": {"detail": _UNAUTHORIZED}}},
    },
    429: {
        "description": "Too many wrong admin tokens from this client: wait Retry-After seconds",
        "content": {"application/json": {"example": {"detail": too_many_failures(60)}}},
    },
    503: {
        "description": f"The admin API is off ({_ENV_NAME} unset), or a "
        "dependency (database, Temporal) is unavailable: nothing was changed, retry",
        "content": {"application/json": {"example": {"detail": _DISABLED}}},
    },
}
"""OpenAPI ``responses`` for every admin route (routes add their own 404s and such)."""


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Let the request through only with the configured admin bearer token.

    Raises:
        HTTPException: 503 when ``STAGECOACH_ADMIN_TOKEN`` is unset, 429 while the
            client is throttled, 401 when the token is missing or wrong.
    """
    configured: SecretStr | None = getattr(request.app.state.settings, "admin_token", None)
    expected = configured.get_secret_value() if configured is not None else ""
    if not expected.strip():
        raise HTTPException(503, detail=_DISABLED)
    throttle = failure_throttle(request)
    client = client_address(request)
    wait = throttle.retry_after(client)
    if wait:
        raise HTTPException(429, detail=too_many_failures(wait), headers={"Retry-After": str(wait)})
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(_digest(given), _digest(expected)):
        if given:  # a guess; a call that sent no token at all guesses nothing
            throttle.failed(client)
        raise HTTPException(
            401, detail=_UNAUTHORIZED, headers={"WWW-Authenticate": 'Bearer realm="stagecoach"'}
        )


AdminDep = Annotated[None, Depends(require_admin)]
"""For a single route: ``def route(*, _: AdminDep) -> ...``."""
