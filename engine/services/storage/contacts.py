"""Contact rows and stage transitions: written by the contact workflow's activities and,
for a new contact, by whoever starts its workflow (so the workflow need not).

Both writers go through these functions, keyed so that a retry or a race inserts nothing
twice: a transition's key is ``<contact_id>:<n>`` (its position in the contact's story).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from stagecoach.engine.protocol.messages import OpenRequest, TransitionRecord
from stagecoach.engine.services.storage.models import Contact, StageTransition


def creation_record(request: OpenRequest, first_stage: str) -> TransitionRecord:
    """The contact's first transition: created, at the pipeline's first stage."""
    return TransitionRecord(
        key=f"{request.contact_id}:1",
        contact_id=request.contact_id,
        transition={
            "from_stage": "",
            "to_stage": first_stage,
            "at": request.at.isoformat(),
            "reason": "created",
            "trigger_event_type": request.trigger_event_type,
            "trigger_message_id": request.trigger_message_id,
            "source": "workflow",
            "kind": "manual",
        },
        contact={"stage": first_stage, "traits": {}, "rehearsal": request.rehearsal},
    )


def save_transition(db: Engine, record: TransitionRecord) -> None:
    """Upsert the contact row and insert the transition; a retry inserts nothing."""
    t = record.transition
    with Session(db) as session:
        contact = session.get(Contact, record.contact_id)
        if contact is None:
            contact = Contact(id=record.contact_id)
        contact.stage = record.contact.get("stage")
        contact.locale = record.contact.get("locale")
        contact.timezone = record.contact.get("timezone")
        contact.traits = dict(record.contact.get("traits") or {})
        if record.contact.get("rehearsal"):
            contact.rehearsal = True  # set at creation, never cleared by a later change
        contact.updated_at = datetime.now(UTC)
        session.add(contact)
        session.commit()
        exists = session.exec(
            select(StageTransition.id).where(StageTransition.key == record.key)
        ).first()
        if exists is not None:
            return
        session.add(
            StageTransition(
                key=record.key,
                contact_id=record.contact_id,
                from_stage=t.get("from_stage") or None,
                to_stage=t["to_stage"],
                kind=t.get("kind", "rule"),
                reason=str(t.get("reason", ""))[:512],
                source=t.get("source", "") or "workflow",
                trigger_event_type=t.get("trigger_event_type"),
                trigger_message_id=t.get("trigger_message_id"),
                at=datetime.fromisoformat(t["at"]),
            )
        )
        try:
            session.commit()
        except IntegrityError:
            session.rollback()  # a concurrent retry won: the row is there once


def open_contact(db: Engine, request: OpenRequest, first_stage: str) -> bool:
    """Record a new contact at ``first_stage``; False (and nothing written) if it was
    already opened.

    A row the ingestion API created for the contact's first events has no stage yet;
    opening claims it. Only the caller whose insert or claim took effect gets True, so
    of two racing first events for one contact exactly one opens it."""
    record = creation_record(request, first_stage)
    with Session(db) as session:
        row = session.get(Contact, request.contact_id)
        if row is None:
            session.add(
                Contact(
                    id=request.contact_id,
                    stage=first_stage,
                    traits={},
                    updated_at=datetime.now(UTC),
                    rehearsal=request.rehearsal,
                )
            )
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                return False
        elif row.stage is None:
            claimed = session.execute(
                update(Contact)
                .where(col(Contact.id) == request.contact_id, col(Contact.stage).is_(None))
                .values(
                    stage=first_stage,
                    updated_at=datetime.now(UTC),
                    **({"rehearsal": True} if request.rehearsal else {}),
                )
            )
            session.commit()
            if getattr(claimed, "rowcount", 0) != 1:
                return False
        else:
            return False
    save_transition(db, record)
    return True
