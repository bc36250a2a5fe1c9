"""The store's bulk path writes rows in the driver's own terms (``_Statements``): what it
writes must read back exactly as SQLAlchemy's own types would have written it, on SQLite
and on PostgreSQL, and the parser's fast ``Incoming`` must equal the dataclass's own."""

from __future__ import annotations

import inspect
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import DateTime, Engine, text
from sqlmodel import Session, col, select

from stagecoach.engine.services.ingest import Incoming, Ingestor, parse_batch
from stagecoach.engine.services.ingest._segment import _incoming
from stagecoach.engine.services.storage.models import Contact, Event, Identity, Outbox

WHEN = datetime(2026, 11, 22, 9, 0, 0, 123456, tzinfo=UTC)

DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest) -> Engine:
    db: Engine = request.getfixturevalue("db_engine")
    return db


def track(message_id: str, user_id: str, type_: str = "video.watched", **extra: Any) -> Incoming:
    fields: dict[str, Any] = {"occurred_at": WHEN, "source": "website", **extra}
    return Incoming(
        kind="track",
        message_id=message_id,
        type=type_,
        user_id=user_id,
        identities={"user_id": user_id},
        **fields,
    )


def test_bulk_rows_read_back_as_sqlalchemy_writes_them(engine: Engine) -> None:
    properties = {"title": "数字化转型白皮书", "nested": {"a": [1, 2.5, None, True]}, 7: "int key"}
    context = {"locale": "zh-CN", "page": {"url": "https://example.cn/价格"}}
    message = track(
        "m-1",
        "u-1",
        properties=properties,
        traits={"plan": "pro"},
        context=context,
        channel="web",
    )
    before = datetime.now(UTC)
    [[outcome]] = Ingestor(engine).store([[message]])
    after = datetime.now(UTC)

    with Session(engine) as session:
        row = session.exec(select(Event).where(col(Event.message_id) == "m-1")).one()
        contact = session.get(Contact, outcome.contact_id)
        identity = session.get(Identity, ("user_id", "u-1"))
    assert (row.contact_id, row.kind, row.name, row.source, row.channel) == (
        outcome.contact_id,
        "track",
        "video.watched",
        "website",
        "web",
    )
    # Non-string keys become strings, as the standard library's json.dumps makes them.
    assert row.properties == {**{k: v for k, v in properties.items() if k != 7}, "7": "int key"}
    assert row.context == {**context, "traits": {"plan": "pro"}}
    assert _utc(row.occurred_at) == WHEN
    assert before - timedelta(seconds=1) <= _utc(row.received_at) <= after
    assert contact is not None
    assert (contact.stage, contact.traits) == (None, {})
    assert _utc(contact.created_at) == _utc(row.received_at)
    assert identity is not None
    assert (identity.contact_id, identity.source) == (
        outcome.contact_id,
        "website",
    )


def test_times_are_stored_as_sqlalchemys_sqlite_text(db_engine: Engine) -> None:
    """Reports compare stored times as text on SQLite: the bulk path must write the very
    text SQLAlchemy's ``DATETIME`` writes (wall time, microseconds, no zone)."""
    shanghai = WHEN.astimezone(timezone(timedelta(hours=8)))
    Ingestor(db_engine).store([[track("m-utc", "u-1"), track("m-sh", "u-2", occurred_at=shanghai)]])
    bind = DateTime(timezone=True).dialect_impl(db_engine.dialect).bind_processor(db_engine.dialect)
    assert bind is not None
    with db_engine.connect() as connection:
        rows = connection.execute(text("SELECT message_id, occurred_at FROM events"))
        stored = {message_id: at for message_id, at in rows}
    assert stored == {"m-utc": bind(WHEN), "m-sh": bind(shanghai)}
    assert stored["m-utc"] == "2026-11-22 09:00:00.123456"


def test_outbox_rows_follow_the_events_order_and_relevance(engine: Engine) -> None:
    types = ["video.watched", "page.viewed", "video.watched", "page.viewed", "video.watched"]
    messages = [track(f"m-{n}", "u-1", type_) for n, type_ in enumerate(types)]
    ingestor = Ingestor(engine, relevant=lambda: frozenset({"video.watched"}))
    [outcomes] = ingestor.store([messages])
    assert [o.signalled for o in outcomes] == [t == "video.watched" for t in types]
    with Session(engine) as session:
        rows = session.exec(
            select(Outbox.event_id, Event.message_id)
            .join(Event, col(Event.id) == col(Outbox.event_id))
            .order_by(col(Outbox.id))
        ).all()
    assert [message_id for _, message_id in rows] == ["m-0", "m-2", "m-4"]
    event_ids = [event_id or 0 for event_id, _ in rows]
    assert event_ids == sorted(event_ids)


def test_duplicates_in_and_across_groups_store_once(engine: Engine) -> None:
    ingestor = Ingestor(engine)
    [first, again] = ingestor.store([[track("m-1", "u-1")], [track("m-1", "u-1")]])
    [later] = ingestor.store([[track("m-1", "u-1")]])
    assert (first[0].duplicate, again[0].duplicate, later[0].duplicate) == (False, True, True)
    assert first[0].contact_id == again[0].contact_id == later[0].contact_id
    with Session(engine) as session:
        assert len(session.exec(select(Event)).all()) == 1
        assert len(session.exec(select(Outbox)).all()) == 1


def test_fast_incoming_is_the_dataclass() -> None:
    """``_incoming`` fills the instance's fields itself: it must name every one."""
    assert set(inspect.signature(_incoming).parameters) == {f.name for f in fields(Incoming)}
    received = datetime.now(UTC)
    batch = {
        "batch": [
            {"type": "page", "anonymousId": "a-1", "name": "Pricing", "properties": {"x": 1}},
            {"type": "identify", "userId": "u-1", "traits": {"email": "Li@Example.cn"}},
            {"type": "track", "userId": 7, "event": " demo.requested ", "messageId": "m"},
        ]
    }
    good, bad = parse_batch(batch, received_at=received, source="website")
    assert bad == []
    for parsed in good:
        assert parsed == Incoming(**{f.name: getattr(parsed, f.name) for f in fields(Incoming)})
        with pytest.raises(AttributeError):
            parsed.kind = "changed"  # type: ignore[misc]
    assert [m.type for m in good] == ["page.viewed", "identify", "demo.requested"]
    assert good[1].identities == {"user_id": "u-1", "email": "li@example.cn"}


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
