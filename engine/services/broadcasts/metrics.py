"""What a broadcast achieved: the numbers its report, the CLI, the API and the dashboard
show, and the A/B test's successes per arm.

Outcomes come from the audience snapshot (sent, held by reason, failed, skipped,
cancelled, still pending); engagement from the events recipients performed after their
send: ``email.opened``, ``email.clicked``, ``email.unsubscribed``, ``email.bounced`` and
``email.complained`` (tracking and the provider's webhook record them), and the
broadcast's conversion event within its attribution window. A recipient counts once per
kind, however many times they opened. Late joiners are the segment's members now who
were not in the snapshot.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from stagecoach.engine.domain.broadcasts import Broadcast
from stagecoach.engine.services.broadcasts.store import delivery_key
from stagecoach.engine.services.storage.models import (
    BroadcastJob,
    BroadcastRecipient,
    BroadcastRow,
    Event,
    SegmentMember,
)

ENGAGEMENT = {
    "delivered": "email.delivered",
    "opened": "email.opened",
    "clicked": "email.clicked",
    "unsubscribed": "email.unsubscribed",
    "bounced": "email.bounced",
    "complained": "email.complained",
}
"""Report column -> the event type a recipient performs after the send."""


def _metric_event(metric: str) -> str:
    return metric.removeprefix("event:") if metric.startswith("event:") else ENGAGEMENT[metric]


def _engaged(
    session: Session,
    broadcast_id: str,
    event_type: str,
    *,
    until: datetime | None = None,
    window: Any = None,
    by_arm: bool = False,
) -> dict[str | None, int]:
    """How many recipients sent by ``broadcast_id`` performed ``event_type`` after their
    send (and within ``window`` of it, or by ``until``), per arm if asked.

    An event that names the message it is about (tracking's and the provider webhook's
    ``message_id``: the digest of the delivery's key, as the Message-ID header carries
    it) counts only for that message, so an open of another broadcast's email sent the
    same week is not this one's; an event that names none (a conversion) counts when it
    follows the send. Filtered here rather than in SQL, the same on SQLite and
    PostgreSQL, over the recipients who performed the event at all."""
    rows = session.execute(
        sa_select(
            col(BroadcastRecipient.contact_id),
            col(BroadcastRecipient.variant),
            col(BroadcastRecipient.sent_at),
            col(Event.occurred_at),
            col(Event.properties),
        )
        .join(Event, col(Event.contact_id) == col(BroadcastRecipient.contact_id))
        .where(
            col(BroadcastRecipient.broadcast_id) == broadcast_id,
            col(BroadcastRecipient.status) == "sent",
            col(Event.name) == event_type,
            col(Event.occurred_at) >= col(BroadcastRecipient.sent_at),
        )
    ).all()
    counted: dict[str | None, set[str]] = {}
    for contact_id, variant, sent_at, occurred, properties in rows:
        sent, at = _aware(sent_at), _aware(occurred)
        if sent is None or at is None:
            continue
        if until is not None and at > until:
            continue
        if window is not None and at - sent > window:
            continue
        named = (properties or {}).get("message_id")
        if named and named != message_digest(delivery_key(broadcast_id, contact_id)):
            continue
        counted.setdefault(variant if by_arm else None, set()).add(contact_id)
    return {key: len(found) for key, found in counted.items()}


def message_digest(key: str) -> str:
    """The digest a delivery's Message-ID carries (``<digest@domain>``), from its key:
    what tracking and webhook events name as ``message_id``."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def arm_successes(db: Engine, broadcast: Broadcast, *, until: datetime) -> dict[str, int]:
    """Each A/B arm's recipients who performed the test's metric after their send."""
    assert broadcast.ab is not None
    with Session(db) as session:
        found = _engaged(
            session, broadcast.name, _metric_event(broadcast.ab.metric), until=until, by_arm=True
        )
    return {str(k): v for k, v in found.items() if k is not None}


@dataclass
class BroadcastReport:
    """One broadcast's numbers."""

    id: str
    status: str
    reason: str | None
    segment: str
    channel: str
    content: str
    audience: int
    late_joiners: int
    sent: int
    pending: int
    failed: int
    skipped: int
    cancelled: int
    held: dict[str, int] = field(default_factory=dict)
    engagement: dict[str, int] = field(default_factory=dict)
    conversions: int | None = None
    conversion_event: str | None = None
    winner: str | None = None
    ab: dict[str, Any] | None = None
    wechat_jobs: list[dict[str, Any]] = field(default_factory=list)
    scheduled_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped + self.cancelled + sum(self.held.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "done": self.done}


def _iso(moment: datetime | None) -> str | None:
    aware = _aware(moment)
    return aware.isoformat() if aware else None


def broadcast_report(db: Engine, broadcast_id: str) -> BroadcastReport:
    """The report of one broadcast (``store.BroadcastNotFound`` if there is none)."""
    from stagecoach.engine.services.broadcasts.store import BroadcastNotFound

    with Session(db) as session:
        row = session.get(BroadcastRow, broadcast_id)
        if row is None:
            raise BroadcastNotFound(broadcast_id)
        broadcast = Broadcast.from_dict(row.spec)
        counts: dict[tuple[str, str | None], int] = {}
        for status, reason, n in session.execute(
            select(col(BroadcastRecipient.status), col(BroadcastRecipient.reason), func.count())
            .where(col(BroadcastRecipient.broadcast_id) == broadcast_id)
            .group_by(col(BroadcastRecipient.status), col(BroadcastRecipient.reason))
        ).all():
            counts[(str(status), reason)] = int(n)

        def total(status: str) -> int:
            return sum(n for (s, _), n in counts.items() if s == status)

        held = {str(reason or "held"): n for (s, reason), n in counts.items() if s == "held"}
        engagement = {
            name: _engaged(session, broadcast_id, event).get(None, 0)
            for name, event in ENGAGEMENT.items()
        }
        conversions = None
        if broadcast.conversion:
            conversions = _engaged(
                session, broadcast_id, broadcast.conversion, window=broadcast.attribution
            ).get(None, 0)
        late = 0
        if row.audience_version is not None:
            late = session.exec(
                select(func.count())
                .select_from(SegmentMember)
                .where(
                    col(SegmentMember.segment) == broadcast.segment,
                    col(SegmentMember.version) == row.audience_version,
                    col(SegmentMember.contact_id).not_in(
                        select(col(BroadcastRecipient.contact_id)).where(
                            col(BroadcastRecipient.broadcast_id) == broadcast_id
                        )
                    ),
                )
            ).one()
        jobs = [
            {
                "clientmsgid": j.clientmsgid,
                "msg_id": j.msg_id,
                "target": j.target,
                "status": j.status,
                "total": j.total,
                "filtered": j.filtered,
                "sent": j.sent,
                "errors": j.errors,
            }
            for j in session.exec(
                select(BroadcastJob).where(BroadcastJob.broadcast_id == broadcast_id)
            ).all()
        ]
    return BroadcastReport(
        id=row.id,
        status=row.status,
        reason=row.reason,
        segment=broadcast.segment,
        channel=broadcast.channel,
        content=broadcast.content,
        audience=row.audience_size,
        late_joiners=int(late),
        sent=total("sent"),
        pending=total("pending"),
        failed=total("failed"),
        skipped=total("skipped"),
        cancelled=total("cancelled"),
        held=held,
        engagement=engagement,
        conversions=conversions,
        conversion_event=broadcast.conversion,
        winner=row.winner,
        ab=row.ab,
        wechat_jobs=jobs,
        scheduled_at=_iso(row.scheduled_at),
        started_at=_iso(row.started_at),
        finished_at=_iso(row.finished_at),
    )


def broadcast_reports(db: Engine) -> list[BroadcastReport]:
    with Session(db) as session:
        ids = session.exec(
            select(BroadcastRow.id).order_by(col(BroadcastRow.created_at).desc())
        ).all()
    return [broadcast_report(db, i) for i in ids]
