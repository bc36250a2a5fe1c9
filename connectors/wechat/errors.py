"""WeChat ``errcode`` values and the one function that turns them into delivery errors.

The table lives in the docstring of ``stagecoach.connectors.wechat.connector``; this module is its
code.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from stagecoach.engine.protocol.connector import (
    ConsentRevoked,
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)

CHANNEL = "wechat"

SYSTEM_BUSY = -1
INVALID_CREDENTIAL = 40001
INVALID_OPENID = 40003
INVALID_APPID = 40013
INVALID_ACCESS_TOKEN = 40014
INVALID_APPSECRET = 40125
IP_NOT_WHITELISTED = 40164
ACCESS_TOKEN_EXPIRED = 42001
REQUIRE_SUBSCRIBE = 43004
DAILY_QUOTA = 45009
MINUTE_QUOTA = 45011
RESPONSE_OUT_OF_TIME = 45015
API_UNAUTHORIZED = 48001
USER_LIMITED = 50002

TOKEN_REJECTED = frozenset({INVALID_CREDENTIAL, INVALID_ACCESS_TOKEN, ACCESS_TOKEN_EXPIRED})
"""A send refused because of its access token: renew the token and send again."""

CREDENTIALS_REJECTED = frozenset(
    {INVALID_CREDENTIAL, INVALID_APPID, INVALID_APPSECRET, IP_NOT_WHITELISTED}
)
"""The token endpoint refused the app's credentials (or this server's address)."""

BUSY_DELAY = timedelta(seconds=3)
MINUTE_QUOTA_DELAY = timedelta(seconds=60)
QUOTA_RESET_MARGIN = timedelta(minutes=1)
"""Retry a little after midnight: our clock and WeChat's need not agree to the second."""
CREDENTIALS_RETRY = timedelta(minutes=5)
"""How far apart sends retry while the app's credentials are refused."""

CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "Asia/Shanghai")
"""WeChat's daily quotas reset at midnight Beijing time; China keeps no daylight saving."""

WINDOW_CLOSED = "wechat_window_closed"
"""``PermanentDeliveryError.code`` when a customer-service message is refused before sending
because the contact's 48-hour interaction window is closed."""

BAD_MESSAGE = "wechat_bad_message"
"""``PermanentDeliveryError.code`` when the rendered message is not a WeChat API body."""


class WeChatCredentialsRejected(RetryableDeliveryError):
    """WeChat refused the appid, the AppSecret or this server's IP address.

    Retryable on purpose: every WeChat send fails until an operator corrects the settings,
    and failing those messages for good would punish contacts for a configuration slip.
    The delivery activity retries them, ``retry_after`` apart, until the fix is deployed.
    """

    def __init__(self, message: str, *, fix: str, retry_after: timedelta) -> None:
        super().__init__(message, retry_after=retry_after)
        self.fix = fix


def until_quota_reset(now: datetime) -> timedelta:
    """Time from ``now`` until the next midnight in Beijing, plus a small margin."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    local = now.astimezone(CHINA_STANDARD_TIME)
    midnight = datetime.combine(
        local.date() + timedelta(days=1), datetime.min.time(), CHINA_STANDARD_TIME
    )
    return midnight - local + QUOTA_RESET_MARGIN


def classify(errcode: int, errmsg: str, *, contact_id: str, now: datetime) -> DeliveryError:
    """The delivery error for a send WeChat refused with ``errcode`` (never 0).

    Token errors (40001, 40014, 42001) are not classified here: the connector renews the
    token and sends again first, and only a second refusal reaches the caller.
    """
    said = f"errcode {errcode}: {errmsg}" if errmsg else f"errcode {errcode}"
    if errcode == SYSTEM_BUSY:
        return RetryableDeliveryError(f"WeChat is busy ({said})", retry_after=BUSY_DELAY)
    if errcode == MINUTE_QUOTA:
        return RetryableDeliveryError(
            f"WeChat's per-minute API limit was reached ({said}); slow the send rate "
            "(the connector's rate limiter) if this repeats",
            retry_after=MINUTE_QUOTA_DELAY,
        )
    if errcode == DAILY_QUOTA:
        return RetryableDeliveryError(
            f"WeChat's daily quota for this API is used up ({said}); sending resumes after "
            "midnight Beijing time, or clear the quota in the Official Account admin",
            retry_after=until_quota_reset(now),
        )
    if errcode == INVALID_OPENID:
        return PermanentDeliveryError(
            f"WeChat does not know contact {contact_id}'s openid ({said}): it belongs to "
            "another Official Account or is mistyped; correct the contact's wechat_openid",
            code=f"wechat_{errcode}",
        )
    if errcode == API_UNAUTHORIZED:
        return PermanentDeliveryError(
            f"this Official Account may not call the API for this message ({said}): enable "
            "template or customer-service messages for the account, or use another content item",
            code=f"wechat_{errcode}",
        )
    if errcode == USER_LIMITED:
        return PermanentDeliveryError(
            f"WeChat restricts contact {contact_id}'s account ({said}); nothing can be sent "
            "to them on WeChat for now",
            code=f"wechat_{errcode}",
        )
    if errcode == REQUIRE_SUBSCRIBE:
        return ConsentRevoked(
            f"contact {contact_id} does not follow the Official Account ({said}); WeChat "
            "stays closed for them until they follow again",
            channel=CHANNEL,
        )
    if errcode == RESPONSE_OUT_OF_TIME:
        return ConsentRevoked(
            f"contact {contact_id} is outside WeChat's customer-service window ({said}); "
            "the channel stays closed until their next interaction with the Official Account",
            channel=CHANNEL,
        )
    return PermanentDeliveryError(
        f"WeChat refused the message for contact {contact_id} ({said})",
        code=f"wechat_{errcode}",
    )


def credentials_error(errcode: int, errmsg: str, *, appid: str) -> WeChatCredentialsRejected:
    """The error for a token request refused because of the app's settings."""
    said = f"errcode {errcode}: {errmsg}" if errmsg else f"errcode {errcode}"
    if errcode == INVALID_APPID:
        what = f"WeChat does not know appid {appid!r}"
        fix = "set STAGECOACH_WECHAT_APPID to the Official Account's AppID"
    elif errcode == IP_NOT_WHITELISTED:
        what = "WeChat refuses token requests from this server's IP address"
        fix = "add the worker's public IP to the Official Account's IP whitelist"
    else:
        what = f"WeChat rejected the AppSecret for appid {appid!r}"
        fix = (
            "set STAGECOACH_WECHAT_SECRET to the AppSecret shown in the Official Account's "
            "developer settings (reset it there if unknown)"
        )
    return WeChatCredentialsRejected(
        f"{what} ({said})",
        fix=f"{fix}; sends are retried until then",
        retry_after=CREDENTIALS_RETRY,
    )
