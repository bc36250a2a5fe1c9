"""SQLModel tables: the read model and the event store.

A family per entity, as SQLModel recommends: ``XBase`` holds the shared fields,
``X(table=True)`` the row, ``XPublic`` what the API returns. The first migration
creates contacts and events; later issues add identities, transitions, deliveries,
handoffs and the outbox, each in its own migration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(*, index: bool = False, nullable: bool = False) -> Any:
    return Field(
        default_factory=utcnow,
        sa_column=Column(DateTime(timezone=True), nullable=nullable, index=index),
    )


class ContactBase(SQLModel):
    stage: str | None = Field(default=None, max_length=64, index=True)
    locale: str | None = Field(default=None, max_length=35)
    timezone: str | None = Field(default=None, max_length=64)
    traits: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Contact(ContactBase, table=True):
    __tablename__ = "contacts"

    id: str = Field(primary_key=True, max_length=64)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class ContactPublic(ContactBase):
    id: str
    created_at: datetime
    updated_at: datetime


class EventBase(SQLModel):
    message_id: str = Field(max_length=128, unique=True)
    contact_id: str = Field(foreign_key="contacts.id", max_length=64)
    kind: str = Field(default="track", max_length=16, description="identify, track, page, ...")
    name: str = Field(max_length=128, index=True, description="event type, e.g. page.viewed")
    properties: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    context: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    source: str = Field(default="api", max_length=64)
    channel: str | None = Field(default=None, max_length=32)


class Event(EventBase, table=True):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_contact_occurred", "contact_id", "occurred_at"),)

    id: int | None = Field(default=None, primary_key=True)
    occurred_at: datetime = _ts()
    received_at: datetime = _ts()


class EventPublic(EventBase):
    id: int
    occurred_at: datetime
    received_at: datetime
