"""When a contact last interacted with the WeChat Official Account, from stored events.

Inbound WeChat behaviour (a message, a follow, a QR scan, a menu click) opens the
48-hour customer-service window and ends a 43004/45015 revocation. Only events the
WeChat callback stored count (source ``wechat``), so a write key cannot reopen the
window. Read by the WeChat connector (through :func:`interaction_hook`) and by the
delivery activity.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Engine, func
from sqlmodel import Session, col, select

from stagecoach.engine.domain.wechat_callback import INTERACTION_EVENTS
from stagecoach.engine.services.storage.models import Event, Identity

SOURCE = "wechat"
"""The source the WeChat callback stores its events under."""


def _latest(db: Engine, contact: ColumnElement[bool]) -> datetime | None:
    with Session(db) as session:
        latest = session.exec(
            select(func.max(col(Event.occurred_at))).where(
                contact,
                col(Event.name).in_(INTERACTION_EVENTS),
                col(Event.source) == SOURCE,
            )
        ).one()
    if latest is None:
        return None
    return latest if latest.tzinfo is not None else latest.replace(tzinfo=UTC)


def last_interaction(db: Engine, openid: str) -> datetime | None:
    """When the contact with this openid last interacted with the Official Account
    (sent a message, followed, scanned a QR code, clicked the menu); ``None`` if never.

    The time is the callback's ``CreateTime``, in UTC. It counts the contact's callbacks
    from every configured app: an openid belongs to one account, but contacts merged
    through another identity may have followed several.
    """
    owner = (
        select(col(Identity.contact_id))
        .where(col(Identity.kind) == "wechat_openid", col(Identity.value) == openid)
        .scalar_subquery()
    )
    return _latest(db, col(Event.contact_id) == owner)


def contact_last_interaction(db: Engine, contact_id: str) -> datetime | None:
    """``last_interaction`` by contact id, as the WeChat connector asks."""
    return _latest(db, col(Event.contact_id) == contact_id)


def interaction_hook(db: Engine) -> Callable[[str], Awaitable[datetime | None]]:
    """The WeChat connector's ``last_interaction`` hook: ``async (contact_id) -> ...``."""

    async def hook(contact_id: str) -> datetime | None:
        return await asyncio.to_thread(contact_last_interaction, db, contact_id)

    return hook
