"""A broadcast's WeChat mass-send jobs: started (our ``clientmsgid``, WeChat's ``msg_id``)
and finished (the counts of WeChat's ``MASSSENDJOBFINISH`` callback), in ``broadcast_jobs``.

The broadcast's batch activity records a job twice: before sending it (``msg_id=None``)
and when WeChat accepted it (or answered that its clientmsgid was already used: the same
job, already sent), with its ``msg_id``; the callback route records its end, finding the
row by ``msg_id``. Both are idempotent, because both are retried: the activity by
Temporal, the callback by WeChat (three times, 5 seconds apart, when our answer is slow).

A callback can arrive before the row has its ``msg_id``: a small job finishes within
the moment between WeChat's answer and the second record, or the worker is killed in
between and its retry records the job later. WeChat does not repeat a callback answered
``success``, so such a callback is kept as it came, in a row of its own with no broadcast
(``EARLY`` prefixes its key), and the record that brings the ``msg_id`` takes its result
and removes it. A callback for a job that never becomes ours (sent from WeChat's admin
page, or by another system on the same account) stays such a row, logged once.

A job's ``status`` is ``sending`` until its callback, then ``finished`` (WeChat's
``send success``, though a few followers may have failed: ``errors``), ``failed``
(``send fail``) or ``rejected_<n>`` (WeChat's content review refused it: ``err(<n>)``).
``total`` is the followers targeted, ``filtered`` those WeChat's filters took out
(refused the account's messages, or had their four mass sends of the month), ``sent``
and ``errors`` the outcome for the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from stagecoach.engine.domain.wechat_callback import MassSendFinished
from stagecoach.engine.services.storage.models import BroadcastJob

SENDING = "sending"
EARLY = "early:"
"""The key prefix of a callback kept until its job's ``msg_id`` is recorded."""

log = structlog.get_logger("stagecoach.broadcasts.wechat")


@dataclass(frozen=True)
class JobState:
    """One mass-send job as stored."""

    clientmsgid: str
    broadcast_id: str
    appid: str
    msg_id: str | None
    target: str
    status: str
    total: int | None
    filtered: int | None
    sent: int | None
    errors: int | None
    finished_at: datetime | None

    @classmethod
    def of(cls, row: BroadcastJob) -> JobState:
        return cls(
            clientmsgid=row.clientmsgid,
            broadcast_id=row.broadcast_id,
            appid=row.appid,
            msg_id=row.msg_id,
            target=row.target,
            status=row.status,
            total=row.total,
            filtered=row.filtered,
            sent=row.sent,
            errors=row.errors,
            finished_at=row.finished_at,
        )


def record_job_started(
    db: Engine,
    *,
    broadcast_id: str,
    appid: str,
    clientmsgid: str,
    msg_id: str | None,
    target: str,
) -> JobState:
    """Record that WeChat accepted job ``clientmsgid`` as ``msg_id`` (idempotent).

    A repeat keeps the stored row, filling in ``msg_id`` if it was not known yet (WeChat
    does not always name the first job when it refuses a repeat).

    Raises:
        ValueError: the clientmsgid is already another broadcast's or another account's.
    """
    for attempt in (1, 2):
        try:
            with Session(db) as session:
                row = session.get(BroadcastJob, clientmsgid)
                if row is None:
                    row = BroadcastJob(
                        clientmsgid=clientmsgid,
                        broadcast_id=broadcast_id,
                        appid=appid,
                        msg_id=msg_id,
                        target=target,
                        status=SENDING,
                    )
                    session.add(row)
                else:
                    if (row.broadcast_id, row.appid) != (broadcast_id, appid):
                        raise ValueError(
                            f"clientmsgid {clientmsgid} is already the job of broadcast "
                            f"{row.broadcast_id} on app {row.appid}: derive each job's "
                            "clientmsgid from its own broadcast (clientmsgid_for)"
                        )
                    if row.msg_id is None and msg_id is not None:
                        row.msg_id = msg_id
                        session.add(row)
                if row.msg_id is not None and row.status == SENDING:
                    _take_early_result(session, row)
                session.commit()
                session.refresh(row)
                return JobState.of(row)
        except IntegrityError:
            # Another worker inserted the same job between our read and our insert.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _early_key(appid: str, msg_id: str) -> str:
    return f"{EARLY}{msg_id}:{appid}"[:64]


def _take_early_result(session: Session, row: BroadcastJob) -> None:
    """Give ``row`` the result of a callback that came before its ``msg_id`` did."""
    assert row.msg_id is not None
    early = session.get(BroadcastJob, _early_key(row.appid, row.msg_id))
    if early is None or early.broadcast_id:
        return
    row.status, row.total, row.filtered = early.status, early.total, early.filtered
    row.sent, row.errors, row.finished_at = early.sent, early.errors, early.finished_at
    session.add(row)
    session.delete(early)
    log.info(
        "wechat mass-send job finished (its callback came first)",
        broadcast_id=row.broadcast_id,
        clientmsgid=row.clientmsgid,
        msg_id=row.msg_id,
        status=row.status,
    )


def record_job_finished(
    db: Engine, *, appid: str, finished: MassSendFinished, at: datetime
) -> Literal["recorded", "repeat", "early"]:
    """Record the end of the job WeChat calls ``finished.msg_id`` on ``appid``.

    Returns ``recorded``; ``repeat`` when the same report was already stored (nothing
    changes, ``finished_at`` stays the first one's); ``early`` when no job of ours has
    that msg_id yet: the result is kept for the job's record to take (see the module's
    docstring), and logged, since it may be a job that is not ours at all.
    """
    with Session(db) as session:
        row = session.exec(
            select(BroadcastJob)
            .where(col(BroadcastJob.msg_id) == finished.msg_id)
            .where(col(BroadcastJob.appid) == appid)
            .order_by(col(BroadcastJob.broadcast_id).desc())  # a job of ours before a kept one
        ).first()
        if row is None:
            log.warning(
                "wechat mass-send callback for an unknown job",
                appid=appid,
                msg_id=finished.msg_id,
                status=finished.status,
            )
            session.add(
                BroadcastJob(
                    clientmsgid=_early_key(appid, finished.msg_id),
                    broadcast_id="",
                    appid=appid,
                    msg_id=finished.msg_id,
                    target="",
                    status=finished.outcome,
                    total=finished.total,
                    filtered=finished.filtered_out,
                    sent=finished.sent,
                    errors=finished.errors,
                    finished_at=at,
                )
            )
            try:
                session.commit()
            except IntegrityError:
                return "repeat"  # the same early callback, stored meanwhile
            return "early"
        counts = (
            finished.outcome,
            finished.total,
            finished.filtered_out,
            finished.sent,
            finished.errors,
        )
        if (row.status, row.total, row.filtered, row.sent, row.errors) == counts:
            return "repeat"
        row.status, row.total, row.filtered, row.sent, row.errors = counts
        if row.finished_at is None:
            row.finished_at = at
        session.add(row)
        session.commit()
        log.info(
            "wechat mass-send job finished",
            broadcast_id=row.broadcast_id,
            clientmsgid=row.clientmsgid,
            msg_id=finished.msg_id,
            status=finished.outcome,
            total=finished.total,
            sent=finished.sent,
            errors=finished.errors,
        )
        return "recorded"


def jobs_of(db: Engine, broadcast_id: str) -> list[JobState]:
    """The broadcast's mass-send jobs, oldest first."""
    with Session(db) as session:
        rows = session.exec(
            select(BroadcastJob)
            .where(col(BroadcastJob.broadcast_id) == broadcast_id)
            .order_by(col(BroadcastJob.created_at), col(BroadcastJob.clientmsgid))
        ).all()
        return [JobState.of(row) for row in rows]
