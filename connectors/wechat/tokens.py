"""The WeChat access token: one per app, shared by every send in a worker, renewed once.

WeChat authenticates API calls with an access token that lives about two hours. We use
the *stable* token endpoint (``POST /cgi-bin/stable_token``): in its normal mode every
caller with the same appid gets the same token until shortly before it expires, so many
workers can share one app without invalidating each other's tokens. Its force-refresh mode
invalidates the current token for everybody and is limited to a few calls a day, so we
use it only when WeChat refused a token that the normal mode hands back again.

Renewal is single-flight: every renewal runs under one lock, and a caller that waited for
the lock first checks whether the token it wanted replaced has already been replaced.
A burst of sends that all meet an expired token therefore causes one token request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from stagecoach.connectors.wechat.errors import (
    CREDENTIALS_REJECTED,
    SYSTEM_BUSY,
    WeChatCredentialsRejected,
    credentials_error,
)
from stagecoach.engine.protocol.connector import DeliveryError, RetryableDeliveryError

DEFAULT_API_BASE = "https://api.weixin.qq.com"
STABLE_TOKEN_PATH = "/cgi-bin/stable_token"  # noqa: S105 (a path, not a password)

MAX_REFRESH_MARGIN = 240.0
"""Renew four minutes before the end: WeChat's stable endpoint issues a new token only in
the last five minutes of the old one's life (and keeps both valid across that handover),
so asking earlier just returns the old token again; the spare minute absorbs clock skew."""
REFRESH_MARGIN_RATIO = 0.1
"""...and at most a tenth of the lifetime early, for short-lived tokens (tests, sandboxes)."""
FAILURE_COOLDOWN = 1.0
"""Seconds a failed renewal is remembered, so a burst of sends shares one failed request."""
CREDENTIALS_COOLDOWN = 30.0
"""...and a refusal of the credentials: nobody corrects an AppSecret within a second."""

log = structlog.get_logger("stagecoach.connectors.wechat")


@dataclass(frozen=True)
class _Token:
    value: str
    refresh_at: float
    expires_at: float


@dataclass(frozen=True)
class _Failure:
    error: DeliveryError
    until: float


class AccessTokenService:
    """The access token of one Official Account, renewed before expiry and on refusal.

    Build one per worker and app, and hand it to every ``WeChatConnector`` for that app.

    Args:
        appid: The Official Account's AppID.
        secret: Its AppSecret.
        client: The worker's pooled HTTP client (the service does not close it).
        api_base: WeChat's API origin; a local peer in tests.
        clock: Monotonic seconds; tests pass a fake.
    """

    def __init__(
        self,
        appid: str,
        secret: str,
        *,
        client: httpx.AsyncClient,
        api_base: str = DEFAULT_API_BASE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.appid = appid
        self._secret = secret
        self._client = client
        self._url = api_base.rstrip("/") + STABLE_TOKEN_PATH
        self._clock = clock
        self._lock = asyncio.Lock()
        self._current: _Token | None = None
        self._failure: _Failure | None = None
        self.requests = 0
        """Token requests sent to WeChat so far (for tests and benchmarks)."""

    def __repr__(self) -> str:
        return f"AccessTokenService(appid={self.appid!r})"

    async def token(self) -> str:
        """A token valid for a while yet; renews it first when it is due.

        Raises:
            WeChatCredentialsRejected: WeChat refused the appid, secret or server address.
            RetryableDeliveryError: The token endpoint failed or could not be reached.
        """
        current = self._current
        if current is not None and self._clock() < current.refresh_at:
            return current.value
        return await self._renew(refused=None)

    async def replace(self, refused: str) -> str:
        """A token other than ``refused``, which WeChat just refused (40001, 40014, 42001).

        Sends that were refused with the same token share one renewal; a send refused
        with a token that has already been replaced gets the current one at no cost.
        """
        return await self._renew(refused=refused)

    async def verify(self) -> None:
        """Fetch a token now, so a worker with wrong credentials fails at start-up."""
        await self.token()

    def _usable(self, current: _Token | None, refused: str | None, now: float) -> bool:
        """Whether a caller that waited for the lock can use the token renewed meanwhile."""
        if current is None:
            return False
        if refused is None:
            return now < current.refresh_at
        return current.value != refused and now < current.expires_at

    async def _renew(self, *, refused: str | None) -> str:
        async with self._lock:
            now = self._clock()
            current = self._current
            if self._usable(current, refused, now):
                assert current is not None
                return current.value
            failure = self._failure
            if failure is not None and now < failure.until:
                raise failure.error
            try:
                fresh = await self._fetch(force=False)
                if refused is not None and fresh.value == refused:
                    # WeChat refused the token it still hands out: make it issue another.
                    log.warning("wechat.token_force_refresh", appid=self.appid)
                    fresh = await self._fetch(force=True)
                    if fresh.value == refused:
                        raise RetryableDeliveryError(
                            "WeChat refuses the access token it keeps issuing; "
                            "the send is retried with the next one"
                        )
            except WeChatCredentialsRejected as exc:
                self._failure = _Failure(exc, now + CREDENTIALS_COOLDOWN)
                raise
            except DeliveryError as exc:
                self._failure = _Failure(exc, now + FAILURE_COOLDOWN)
                raise
            self._failure = None
            self._current = fresh
            return fresh.value

    async def _fetch(self, *, force: bool) -> _Token:
        started = self._clock()
        self.requests += 1
        body = {
            "grant_type": "client_credential",
            "appid": self.appid,
            "secret": self._secret,
            "force_refresh": force,
        }
        try:
            response = await self._client.post(self._url, json=body)
        except httpx.HTTPError as exc:
            raise RetryableDeliveryError(
                f"could not reach WeChat's token endpoint: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code != 200:
            raise RetryableDeliveryError(
                f"WeChat's token endpoint answered HTTP {response.status_code}"
            )
        try:
            data: Any = response.json()
        except ValueError as exc:
            raise RetryableDeliveryError("WeChat's token endpoint answered with no JSON") from exc
        if not isinstance(data, dict):
            raise RetryableDeliveryError("WeChat's token endpoint answered with no JSON object")
        errcode = data.get("errcode", 0)
        if errcode:
            errmsg = str(data.get("errmsg", ""))
            if errcode in CREDENTIALS_REJECTED:
                error = credentials_error(int(errcode), errmsg, appid=self.appid)
                log.error("wechat.credentials_rejected", appid=self.appid, errcode=errcode)
                raise error
            if errcode == SYSTEM_BUSY:
                raise RetryableDeliveryError(
                    f"WeChat's token endpoint is busy (errcode -1: {errmsg})"
                )
            # Anything else from the token endpoint is about our request or our account.
            raise credentials_error(int(errcode), errmsg, appid=self.appid)
        value = data.get("access_token")
        lifetime = data.get("expires_in")
        if not isinstance(value, str) or not value or not isinstance(lifetime, int | float):
            raise RetryableDeliveryError(
                "WeChat's token endpoint answered without access_token and expires_in"
            )
        if lifetime <= 0:
            raise RetryableDeliveryError(f"WeChat issued a token that expires in {lifetime}s")
        margin = min(MAX_REFRESH_MARGIN, REFRESH_MARGIN_RATIO * lifetime)
        log.info("wechat.token_renewed", appid=self.appid, expires_in=lifetime, forced=force)
        return _Token(
            value=value,
            # Expiry counts from the request (WeChat's clock started no earlier); renewal
            # from the answer, so that it falls inside WeChat's handover, which began no
            # later, and never fetches the old token again.
            refresh_at=min(self._clock() + lifetime - margin, started + lifetime),
            expires_at=started + lifetime,
        )
