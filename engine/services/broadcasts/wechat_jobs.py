"""A broadcast's WeChat mass-send jobs: started (our ``clientmsgid``, WeChat's ``msg_id``)
and finished (the counts of WeChat's ``MASSSENDJOBFINISH`` callback), in ``broadcast_jobs``.

The broadcast's batch activity records a job twice: before sending it (``msg_id=None``)
and when WeChat accepted it (or answered that its clientmsgid was already used: the same
job, already sent), with its ``msg_id``; the callback route records its end, finding the
row by ``msg_id``. Both are idempotent, because both are retried: the activity by
Temporal, the callback by WeChat (three times, 5 seconds apart, when our answer is slow).

A callback that arrives before the row has its ``msg_id`` (a worker killed between
WeChat's answer and the second record, and a job small enough to finish first) finds no
job and is lost, since WeChat does not repeat a callback answered ``success``; such a
job stays ``sending``, and ``WeChatMassSender.status(msg_id)`` tells how it ended.

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
                session.commit()
                session.refresh(row)
                return JobState.of(row)
        except IntegrityError:
            # Another worker inserted the same job between our read and our insert.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def record_job_finished(
    db: Engine, *, appid: str, finished: MassSendFinished, at: datetime
) -> Literal["recorded", "repeat", "unknown"]:
    """Record the end of the job WeChat calls ``finished.msg_id`` on ``appid``.

    Returns ``recorded``; ``repeat`` when the same report was already stored (nothing
    changes, ``finished_at`` stays the first one's); ``unknown`` when no job of ours has
    that msg_id (logged, nothing stored: a job sent from WeChat's admin page, or by
    another system on the same account).
    """
    with Session(db) as session:
        row = session.exec(
            select(BroadcastJob)
            .where(col(BroadcastJob.msg_id) == finished.msg_id)
            .where(col(BroadcastJob.appid) == appid)
        ).first()
        if row is None:
            log.warning(
                "wechat mass-send callback for an unknown job",
                appid=appid,
                msg_id=finished.msg_id,
                status=finished.status,
            )
            return "unknown"
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
