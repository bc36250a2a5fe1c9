"""WeChat mass send ("群发"): one broadcast job to a tag's followers or to an openid list.

A broadcast on an Official Account can reach its followers in two ways: a template or
customer-service message per openid (``WeChatConnector``), or a *mass send*, one API
call for a whole tag or up to 10,000 openids, which WeChat delivers as an article
(``mpnews``) or a text in the followers' chat list. This module is the mass-send client::

    sender = WeChatMassSender(WeChatConfig(appid=..., secret=...), tokens=shared_tokens)
    for job in jobs_for(broadcast_id, openids, msgtype="mpnews", media_id=draft):
        result = await sender.send(job)        # MassSendResult(msg_id, msg_data_id, ...)
        # record_job_started(db, ..., clientmsgid=job.clientmsgid, msg_id=result.msg_id)

The published contract (``POST /cgi-bin/message/mass/sendall`` by tag,
``POST /cgi-bin/message/mass/send`` by openid list):

- an openid list holds at least 2 and at most 10,000 openids; ``jobs_for`` splits a
  longer list into near-equal chunks, so no chunk is ever left with a single openid;
- every job carries ``clientmsgid`` (at most 64 bytes). WeChat refuses a repeat of one
  within 24 hours with errcode 45065 and the first job's ``msg_id``: the job was sent
  already, so ``send`` answers ``MassSendResult(already_sent=True)`` with that msg_id,
  not an error. That makes a retried job (a worker killed after WeChat accepted it, a
  response lost to a timeout) safe: it is never delivered twice. ``clientmsgid_for``
  derives the id from the broadcast id and the job's place in it, so every retry of the
  same job carries the same one;
- quotas: a subscription account may mass send once a day, a service account four times
  a calendar month (each follower receives at most four a month). Past that WeChat
  answers 45028 "has no masssend quota"; 45009 is the API's daily call quota. Both are
  ``MassSendQuotaExhausted`` (permanent, ``code`` ``wechat_quota_exhausted``): retrying
  only burns attempts until a reset days away, so the broadcast pauses with that reason;
- WeChat reports the job's outcome later, in the ``MASSSENDJOBFINISH`` callback to the
  account's server URL (``engine/api/routes/wechat.py``), with its total, filtered, sent
  and error counts; ``status(msg_id)`` asks ``/cgi-bin/message/mass/get`` meanwhile.

How answers are classified (``errcode`` in the JSON body of an HTTP 200):

    errcode / failure            meaning                          outcome
    ---------------------------  -------------------------------  ---------------------------
    0                            job accepted                     MassSendResult
    45065                        clientmsgid already used (24 h)  MassSendResult(already_sent)
    40001, 40014, 42001          token invalid or expired         renew the token once, send
                                                                  again; then Retryable
    -1                           system busy                      Retryable, after 3 s
    45011                        per-minute API limit             Retryable, after 60 s
    45066                        same clientmsgid retried too     Retryable, after 60 s
                                 fast
    45028                        no mass-send quota left          MassSendQuotaExhausted
    45009                        daily API quota used up          MassSendQuotaExhausted
    any other errcode (40003     as errmsg says                   Permanent wechat_<errcode>
    openid, 40007 media_id, ...)
    (not sent) bad job           no target, 1 openid, msgtype...  Permanent wechat_bad_message
    HTTP 5xx, 408, 429           provider trouble                 Retryable
    other HTTP 4xx               wrong endpoint or proxy          Permanent wechat_http_<status>
    timeout, connection error    network                          Retryable

A timeout is retryable although WeChat may have accepted the job: the retry carries the
same ``clientmsgid`` and so ends in 45065, never in a second job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from stagecoach.connectors.ratelimit import RateLimiter
from stagecoach.connectors.wechat.connector import WeChatConfig, errcode_of, post_api
from stagecoach.connectors.wechat.errors import (
    BAD_MESSAGE,
    BUSY_DELAY,
    DAILY_QUOTA,
    MINUTE_QUOTA,
    MINUTE_QUOTA_DELAY,
    SYSTEM_BUSY,
    TOKEN_REJECTED,
    until_quota_reset,
)
from stagecoach.connectors.wechat.tokens import AccessTokenService
from stagecoach.engine.protocol.connector import PermanentDeliveryError, RetryableDeliveryError

SENDALL_PATH = "/cgi-bin/message/mass/sendall"
SEND_PATH = "/cgi-bin/message/mass/send"
GET_PATH = "/cgi-bin/message/mass/get"

MIN_OPENIDS = 2
MAX_OPENIDS = 10_000
"""WeChat's bounds on one mass send's openid list."""
MAX_CLIENTMSGID_BYTES = 64
MAX_TEXT_CHARS = 2048
"""A text message's limit on WeChat (a longer one is refused with 45002)."""
MSGTYPES = ("mpnews", "text")

NO_MASSSEND_QUOTA = 45028
CLIENTMSGID_EXISTS = 45065
CLIENTMSGID_TOO_FAST = 45066

QUOTA_EXHAUSTED = "wechat_quota_exhausted"
"""``PermanentDeliveryError.code`` when the account has no mass send (45028) or API call
(45009) left for now: the broadcast pauses with this reason instead of retrying."""

log = structlog.get_logger("stagecoach.connectors.wechat")


class MassSendQuotaExhausted(PermanentDeliveryError):
    """The account's mass-send quota (45028) or daily API quota (45009) is used up.

    Permanent for this attempt, so the broadcast pauses instead of burning through its
    jobs; ``errcode`` says which quota, and ``fix`` when it comes back.
    """

    def __init__(self, message: str, *, errcode: int, fix: str) -> None:
        super().__init__(message, code=QUOTA_EXHAUSTED)
        self.errcode = errcode
        self.fix = fix


class MassSendJobError(PermanentDeliveryError):
    """A mass-send job that cannot be sent as given; the message names the field and the
    fix. Raised before anything reaches WeChat."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        super().__init__(f"mass send {field} {problem}; {fix}", code=BAD_MESSAGE)
        self.field = field
        self.fix = fix


def clientmsgid_for(broadcast_id: str, part: int | str) -> str:
    """The ``clientmsgid`` of one job of a broadcast: the same for every retry of it.

    ``part`` tells the broadcast's jobs apart (a chunk index, ``"tag:12"``, an A/B arm
    and batch). A digest, so any broadcast id fits WeChat's 64 bytes.
    """
    if not broadcast_id:
        raise MassSendJobError("broadcast_id", "is empty", "pass the broadcast's id")
    digest = hashlib.sha256(f"{broadcast_id}\x1f{part}".encode()).hexdigest()
    return "sc-" + digest[:40]


@dataclass(frozen=True, kw_only=True)
class MassSendJob:
    """One mass send: to every follower with ``tag_id``, or to ``openids`` (2 to 10,000).

    Attributes:
        broadcast_id: The broadcast the job belongs to.
        clientmsgid: WeChat's dedupe key (``clientmsgid_for``); at most 64 bytes.
        msgtype: ``mpnews`` (an article already uploaded: ``media_id``) or ``text``
            (``content``).
        tag_id: The followers' tag (``sendall``); exclusive with ``openids``.
        openids: The recipients (``send``); exclusive with ``tag_id``.
        content: The text, for ``text``.
        media_id: The article's media_id, for ``mpnews``.
        send_ignore_reprint: Send an ``mpnews`` article even when WeChat judges it a
            reprint (and the original allows reprinting); by default WeChat stops the job.

    Raises:
        MassSendJobError: a field is missing, empty, or out of WeChat's bounds.
    """

    broadcast_id: str
    clientmsgid: str
    msgtype: str
    tag_id: int | None = None
    openids: tuple[str, ...] | None = None
    content: str | None = None
    media_id: str | None = None
    send_ignore_reprint: bool = False

    def __post_init__(self) -> None:
        if not self.broadcast_id:
            raise MassSendJobError("broadcast_id", "is empty", "pass the broadcast's id")
        if not self.clientmsgid or len(self.clientmsgid.encode()) > MAX_CLIENTMSGID_BYTES:
            raise MassSendJobError(
                "clientmsgid",
                f"must be 1 to {MAX_CLIENTMSGID_BYTES} bytes, is {len(self.clientmsgid.encode())}",
                "derive it with clientmsgid_for(broadcast_id, part)",
            )
        if self.msgtype not in MSGTYPES:
            raise MassSendJobError(
                "msgtype",
                f"is {self.msgtype!r}, not one of {', '.join(MSGTYPES)}",
                "send an uploaded article as mpnews (media_id) or a text as text (content)",
            )
        self._check_target()
        if self.msgtype == "mpnews":
            if not isinstance(self.media_id, str) or not self.media_id.strip():
                raise MassSendJobError(
                    "media_id",
                    "is missing for msgtype mpnews",
                    "upload the article as a draft or permanent material and pass its media_id",
                )
        else:
            if not isinstance(self.content, str) or not self.content.strip():
                raise MassSendJobError(
                    "content", "is empty for msgtype text", "give the text to send"
                )
            if len(self.content) > MAX_TEXT_CHARS:
                raise MassSendJobError(
                    "content",
                    f"has {len(self.content)} characters; WeChat takes {MAX_TEXT_CHARS}",
                    "shorten the text, or send it as an mpnews article",
                )

    def _check_target(self) -> None:
        if (self.tag_id is None) == (self.openids is None):
            raise MassSendJobError(
                "tag_id/openids",
                "are both missing" if self.tag_id is None else "are both given",
                "send to a tag (tag_id) or to an openid list (openids), one per job",
            )
        if self.tag_id is not None:
            if isinstance(self.tag_id, bool) or not isinstance(self.tag_id, int):
                raise MassSendJobError(
                    "tag_id", f"is {self.tag_id!r}, not a number", "pass WeChat's numeric tag id"
                )
            return
        openids = self.openids
        assert openids is not None
        if isinstance(openids, str) or not all(isinstance(o, str) and o for o in openids):
            raise MassSendJobError(
                "openids", "must be a list of non-empty openids", "pass the contacts' openids"
            )
        # A list passed in becomes a tuple: the job stays immutable and hashable.
        object.__setattr__(self, "openids", tuple(openids))
        _check_count(len(openids))

    @property
    def target(self) -> str:
        """``tag:<id>`` or ``openids:<n>``, as ``broadcast_jobs.target`` records it."""
        if self.tag_id is not None:
            return f"tag:{self.tag_id}"
        return f"openids:{len(self.openids or ())}"

    def body(self) -> dict[str, Any]:
        """The API body, for ``sendall`` (tag) or ``send`` (openids)."""
        body: dict[str, Any] = {"msgtype": self.msgtype, "clientmsgid": self.clientmsgid}
        if self.tag_id is not None:
            body["filter"] = {"is_to_all": False, "tag_id": self.tag_id}
        else:
            body["touser"] = list(self.openids or ())
        if self.msgtype == "mpnews":
            body["mpnews"] = {"media_id": self.media_id}
            body["send_ignore_reprint"] = 1 if self.send_ignore_reprint else 0
        else:
            body["text"] = {"content": self.content}
        return body

    @property
    def path(self) -> str:
        return SENDALL_PATH if self.tag_id is not None else SEND_PATH


def _check_count(count: int) -> None:
    if count == 0:
        raise MassSendJobError(
            "openids", "is empty: nobody to send to", "pass the audience's openids, or skip the job"
        )
    if count < MIN_OPENIDS:
        raise MassSendJobError(
            "openids",
            f"holds {count} openid; WeChat's mass send needs at least {MIN_OPENIDS}",
            "send to a single follower with a template or customer-service message",
        )
    if count > MAX_OPENIDS:
        raise MassSendJobError(
            "openids",
            f"holds {count} openids; WeChat takes at most {MAX_OPENIDS:,} per job",
            "split the list with jobs_for(), which chunks it",
        )


def jobs_for(
    broadcast_id: str,
    openids: Sequence[str],
    *,
    msgtype: str,
    content: str | None = None,
    media_id: str | None = None,
    send_ignore_reprint: bool = False,
    label: str = "",
    chunk_size: int = MAX_OPENIDS,
) -> list[MassSendJob]:
    """The jobs that send to ``openids``: near-equal chunks of at most ``chunk_size``.

    Repeated openids are sent once. The same list in the same order gives the same jobs
    with the same clientmsgids, so a retried batch is deduped by WeChat; ``label`` keeps
    apart several lists of one broadcast (its batches, its A/B arms), whose chunk indexes
    would otherwise collide.

    Raises:
        MassSendJobError: fewer than 2 distinct openids, or a bad message field.
    """
    if not MIN_OPENIDS <= chunk_size <= MAX_OPENIDS:
        raise MassSendJobError(
            "chunk_size",
            f"is {chunk_size}",
            f"use {MIN_OPENIDS} to {MAX_OPENIDS:,} (WeChat's bounds)",
        )
    unique = list(dict.fromkeys(openids))
    if len(unique) < MIN_OPENIDS:
        _check_count(len(unique))
    count = -(-len(unique) // chunk_size)
    # Near-equal chunks: 10,001 openids are 5,001 + 5,000, never 10,000 + a lone one.
    size, extra = divmod(len(unique), count)
    jobs: list[MassSendJob] = []
    start = 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        part = f"{label}:{index}" if label else index
        jobs.append(
            MassSendJob(
                broadcast_id=broadcast_id,
                clientmsgid=clientmsgid_for(broadcast_id, part),
                msgtype=msgtype,
                openids=tuple(unique[start:end]),
                content=content,
                media_id=media_id,
                send_ignore_reprint=send_ignore_reprint,
            )
        )
        start = end
    return jobs


@dataclass(frozen=True)
class MassSendResult:
    """What WeChat answered a job.

    Attributes:
        clientmsgid: The job's clientmsgid.
        msg_id: WeChat's job id, which ``MASSSENDJOBFINISH`` and ``status`` name; for a
            repeat, the first job's (when WeChat gives it).
        msg_data_id: The article's data id (``mpnews`` only), for statistics.
        already_sent: WeChat refused the job as a repeat of its clientmsgid (45065):
            the first one was accepted, and nothing was sent now.
    """

    clientmsgid: str
    msg_id: str | None
    msg_data_id: str | None
    already_sent: bool = False


def _utcnow() -> datetime:
    return datetime.now(UTC)


class WeChatMassSender:
    """Sends mass-send jobs for one Official Account.

    Args:
        config: The app's settings (``WeChatConfig``).
        client: A pooled HTTP client (not closed by ``aclose``); default: our own.
        tokens: The app's shared token service (share the connector's); default: one on
            this sender's client.
        limiter: Acquired before each API call.
        now: The wall clock, for quota reset times in messages.
    """

    def __init__(
        self,
        config: WeChatConfig,
        *,
        client: httpx.AsyncClient | None = None,
        tokens: AccessTokenService | None = None,
        limiter: RateLimiter | None = None,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.config = config
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(config.timeout))
        self.tokens = tokens or AccessTokenService(
            config.appid, config.secret, client=self._client, api_base=config.api_base
        )
        self._limiter = limiter
        self._now = now
        self._base = config.api_base.rstrip("/")

    async def aclose(self) -> None:
        """Close the HTTP client, if it is ours."""
        if self._owns_client:
            await self._client.aclose()

    async def send(self, job: MassSendJob) -> MassSendResult:
        """Submit one job; WeChat delivers it afterwards and reports in MASSSENDJOBFINISH.

        Raises:
            RetryableDeliveryError: try again later, with the same job.
            MassSendQuotaExhausted: no mass send (or API call) left for now.
            PermanentDeliveryError: WeChat refused the job; ``code`` ``wechat_<errcode>``.
        """
        data = await self._call(job.path, job.body())
        errcode = errcode_of(data)
        msg_id = _text_or_none(data.get("msg_id"))
        if errcode == CLIENTMSGID_EXISTS:
            log.info(
                "wechat.mass_send_repeat",
                broadcast_id=job.broadcast_id,
                clientmsgid=job.clientmsgid,
                msg_id=msg_id,
            )
            return MassSendResult(job.clientmsgid, msg_id, None, already_sent=True)
        if errcode:
            error = self._classify(errcode, str(data.get("errmsg", "")), job)
            log.info(
                "wechat.mass_send_refused",
                broadcast_id=job.broadcast_id,
                clientmsgid=job.clientmsgid,
                errcode=errcode,
                outcome=type(error).__name__,
            )
            raise error
        if msg_id is None:
            raise RetryableDeliveryError(
                "WeChat accepted the mass send without a msg_id; the retry carries the same "
                "clientmsgid and is deduped"
            )
        log.info(
            "wechat.mass_send_accepted",
            broadcast_id=job.broadcast_id,
            clientmsgid=job.clientmsgid,
            msg_id=msg_id,
            target=job.target,
        )
        return MassSendResult(job.clientmsgid, msg_id, _text_or_none(data.get("msg_data_id")))

    async def status(self, msg_id: str) -> str:
        """The job's state on WeChat: ``SENDING``, ``SEND_SUCCESS``, ``SEND_FAIL``, ``DELETE``.

        Raises:
            RetryableDeliveryError, PermanentDeliveryError: as for ``send``.
        """
        data = await self._call(GET_PATH, {"msg_id": msg_id})
        errcode = errcode_of(data)
        if errcode:
            raise self._classify(errcode, str(data.get("errmsg", "")), None)
        return str(data.get("msg_status", ""))

    async def _call(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST with the current token; on a refused token, once more with a new one."""
        token = await self.tokens.token()
        data = await self._post(path, token, body)
        errcode = errcode_of(data)
        if errcode in TOKEN_REJECTED:
            token = await self.tokens.replace(token)
            data = await self._post(path, token, body)
            errcode = errcode_of(data)
            if errcode in TOKEN_REJECTED:
                raise RetryableDeliveryError(
                    f"WeChat refused two access tokens in a row (errcode {errcode}: "
                    f"{data.get('errmsg', '')})"
                )
        return data

    def _classify(
        self, errcode: int, errmsg: str, job: MassSendJob | None
    ) -> PermanentDeliveryError | RetryableDeliveryError:
        said = f"errcode {errcode}: {errmsg}" if errmsg else f"errcode {errcode}"
        what = f"mass send {job.clientmsgid} ({job.target})" if job else "mass send status"
        if errcode == SYSTEM_BUSY:
            return RetryableDeliveryError(f"WeChat is busy ({said})", retry_after=BUSY_DELAY)
        if errcode in (MINUTE_QUOTA, CLIENTMSGID_TOO_FAST):
            return RetryableDeliveryError(
                f"WeChat asks to slow down ({said}); {what} is retried in a minute",
                retry_after=MINUTE_QUOTA_DELAY,
            )
        if errcode == NO_MASSSEND_QUOTA:
            return MassSendQuotaExhausted(
                f"{what} refused: the Official Account has no mass send left ({said}); a "
                "subscription account may mass send once a day, a service account four "
                "times a calendar month",
                errcode=errcode,
                fix="resume the broadcast after the quota resets (next day, or next month "
                "for a service account), or send by template message",
            )
        if errcode == DAILY_QUOTA:
            reset = self._now() + until_quota_reset(self._now())
            return MassSendQuotaExhausted(
                f"{what} refused: the account's daily API quota is used up ({said})",
                errcode=errcode,
                fix=f"resume the broadcast after {reset:%Y-%m-%d %H:%M} UTC (midnight Beijing "
                "time), or clear the quota in the Official Account admin",
            )
        return PermanentDeliveryError(f"WeChat refused {what} ({said})", code=f"wechat_{errcode}")

    async def _post(self, path: str, token: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await post_api(self._client, self._base, path, token, body, self._limiter)


def _text_or_none(value: object) -> str | None:
    return None if value is None or value == "" else str(value)
