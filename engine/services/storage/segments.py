"""Segment membership rows: who is in each segment now (``segment_members``) and every
entry and exit that got them there (``segment_changes``).

Written by the contact workflow's record activity (the deciding event or time), by the
backfill of a new version, and by manual list changes. One write is one transaction:
the change rows and the member rows move together, and a retried write (same key)
changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete
from sqlmodel import Session, select

from stagecoach.engine.protocol.messages import SegmentChanges
from stagecoach.engine.services.storage.models import SegmentChange, SegmentMember


def _at(raw: Any) -> datetime:
    return raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw))


def save_segment_changes(db: Engine, record: SegmentChanges, *, actor: str | None = None) -> int:
    """Apply a contact's entries and exits; returns how many were new (0 on a retry)."""
    written = 0
    with Session(db) as session:
        for n, change in enumerate(record.changes):
            key = f"{record.key}:{n}"
            if session.exec(select(SegmentChange.id).where(SegmentChange.key == key)).first():
                continue
            segment, version = str(change["segment"]), str(change["version"])
            at, reason = _at(change["at"]), str(change.get("reason", ""))[:512]
            entered = bool(change["entered"])
            session.add(
                SegmentChange(
                    key=key,
                    segment=segment,
                    version=version,
                    contact_id=record.contact_id,
                    entered=entered,
                    at=at,
                    reason=reason,
                    source=record.source,
                    actor=actor if actor is not None else change.get("actor"),
                )
            )
            # An exit removes the contact under every version: a member row of an older
            # version would otherwise outlive the exit when that version is read again.
            stale = delete(SegmentMember).where(
                SegmentMember.segment == segment,  # type: ignore[arg-type]
                SegmentMember.contact_id == record.contact_id,  # type: ignore[arg-type]
            )
            if entered:
                stale = stale.where(SegmentMember.version == version)  # type: ignore[arg-type]
            session.execute(stale)
            if entered:
                session.add(
                    SegmentMember(
                        segment=segment,
                        version=version,
                        contact_id=record.contact_id,
                        since=at,
                        reason=reason,
                    )
                )
            written += 1
        session.commit()
    return written


def contact_segment_rows(db: Engine, contact_id: str) -> list[SegmentMember]:
    """The contact's member rows (every version), oldest first."""
    with Session(db) as session:
        rows = session.exec(
            select(SegmentMember)
            .where(SegmentMember.contact_id == contact_id)
            .order_by(SegmentMember.since)  # type: ignore[arg-type]
        ).all()
        return list(rows)


__all__ = ["contact_segment_rows", "save_segment_changes"]
