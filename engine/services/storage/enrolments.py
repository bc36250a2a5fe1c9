"""Journey enrolment rows: where each enrolment went, written by the contact workflow's
activities (the delivery activity while it sends, a record activity when it finishes).

One row per (contact, journey, enrolment). Writes are idempotent and only move forward:
a retried or late ``active`` write never reopens a finished row, and a longer trail is
never replaced by a shorter one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from stagecoach.engine.protocol.messages import EnrolmentRecord, split_arms
from stagecoach.engine.services.storage.models import JourneyEnrolment

ACTIVE = "active"


def save_enrolment(db: Engine, record: EnrolmentRecord) -> None:
    """Record a finished enrolment (insert, or complete the active row)."""
    _upsert(
        db,
        contact_id=record.contact_id,
        journey=record.journey,
        version=record.version,
        enrolment=record.enrolment,
        status=record.status,
        reason=record.reason,
        trail=record.trail,
        arms=record.arms(),
        started_at=record.started_at,
        finished_at=record.finished_at,
    )


def save_active_enrolment(
    db: Engine,
    *,
    contact_id: str,
    journey: str,
    version: str,
    enrolment: int,
    started_at: datetime,
    trail: list[dict[str, Any]],
) -> None:
    """Record an enrolment still in flight, with its trail so far."""
    _upsert(
        db,
        contact_id=contact_id,
        journey=journey,
        version=version,
        enrolment=enrolment,
        status=ACTIVE,
        reason=None,
        trail=trail,
        arms=split_arms(trail),
        started_at=started_at,
        finished_at=None,
    )


def _upsert(db: Engine, **values: Any) -> None:
    for _ in range(2):  # a concurrent insert of the same row: read it and merge once
        with Session(db) as session:
            row = session.exec(
                select(JourneyEnrolment).where(
                    JourneyEnrolment.contact_id == values["contact_id"],
                    JourneyEnrolment.journey == values["journey"],
                    JourneyEnrolment.enrolment == values["enrolment"],
                )
            ).first()
            if row is None:
                session.add(JourneyEnrolment(**values, updated_at=datetime.now(UTC)))
            elif _moves_forward(row, values):
                for key, value in values.items():
                    setattr(row, key, value)
                row.updated_at = datetime.now(UTC)
                session.add(row)
            else:
                return
            try:
                session.commit()
                return
            except IntegrityError:
                session.rollback()


def _moves_forward(row: JourneyEnrolment, values: dict[str, Any]) -> bool:
    if row.status != ACTIVE:
        return False  # finished rows are final
    if values["status"] != ACTIVE:
        return True
    return len(values["trail"]) > len(row.trail)
