"""Broadcasts in the database: saved, launched once, snapshotted, sent in batches.

- :func:`save_broadcast` keeps a broadcast as a draft (from the project, the CLI or the
  API). A second save of the same spec is a no-op; another spec under a launched name
  is refused.
- :func:`check_launch` lists what stops a launch (``broadcast_problems`` against the
  published segments and the content library, over the audience's locales).
- :func:`mark_launched` moves a draft to scheduled; a second launch answers the first.
- :func:`take_snapshot` fixes the audience: one ``broadcast_recipients`` row per member
  of the segment's ready version, each with its send time and A/B arm. Idempotent: a
  retried snapshot finds the rows and reads them back.
- :func:`due_recipients` and :func:`settle` are a batch's read and write.

Every function is synchronous; activities run them in threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from stagecoach.engine.domain.broadcasts import (
    FINISHED,
    Broadcast,
    Catalogues,
    arm_of,
    broadcast_problems,
    send_time,
)
from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.services.segments.catalog import ready_version
from stagecoach.engine.services.storage.models import (
    BroadcastRecipient,
    BroadcastRow,
    Consent,
    Contact,
    Delivery,
    Event,
    Identity,
    SegmentMember,
    Suppression,
)

SNAPSHOT_CHUNK = 5_000
"""Recipients inserted per statement while the audience is snapshotted."""


class BroadcastNotFound(StagecoachError, LookupError):
    def __init__(self, broadcast_id: str) -> None:
        super().__init__(
            f"no broadcast {broadcast_id!r}",
            fix="list them with 'stagecoach broadcasts list'",
        )


class BroadcastRefused(StagecoachError, ValueError):
    """A save or launch that cannot be: ``problems`` name each field and its fix."""

    def __init__(self, broadcast_id: str, problems: Sequence[str]) -> None:
        super().__init__(
            f"broadcast {broadcast_id!r} cannot launch: " + "; ".join(problems),
            fix="correct the broadcast and launch it again; nothing was sent",
        )
        self.problems = list(problems)


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def broadcast_of(row: BroadcastRow) -> Broadcast:
    return Broadcast.from_dict(row.spec)


def get_row(db: Engine, broadcast_id: str) -> BroadcastRow:
    with Session(db) as session:
        row = session.get(BroadcastRow, broadcast_id)
    if row is None:
        raise BroadcastNotFound(broadcast_id)
    return row


def list_rows(db: Engine) -> list[BroadcastRow]:
    with Session(db) as session:
        return list(
            session.exec(select(BroadcastRow).order_by(col(BroadcastRow.created_at).desc())).all()
        )


def save_broadcast(
    db: Engine, broadcast: Broadcast, *, source: str = "project", actor: str | None = None
) -> BroadcastRow:
    """Keep ``broadcast`` as a draft, or find the same spec already kept.

    A draft may be replaced by another spec (it has sent nothing). A launched broadcast
    keeps its spec: another one under its name is refused, naming the fix."""
    spec = broadcast.to_dict()
    with Session(db) as session:
        row = session.get(BroadcastRow, broadcast.name)
        if row is not None:
            if row.version == broadcast.version:
                return row
            if row.status != "draft":
                raise BroadcastRefused(
                    broadcast.name,
                    [
                        f"it was launched ({row.status}) with another spec; give the changed"
                        " broadcast a new name"
                    ],
                )
            row.spec, row.version, row.source, row.actor = spec, broadcast.version, source, actor
        else:
            row = BroadcastRow(
                id=broadcast.name,
                spec=spec,
                version=broadcast.version,
                source=source,
                actor=actor,
                scheduled_at=broadcast.send_at,
            )
        row.scheduled_at = broadcast.send_at
        session.add(row)
        session.commit()
        session.refresh(row)
        return row


def audience_locales(db: Engine, segment: str) -> set[str]:
    """The locales the segment's current members read (the content check's input)."""
    version = ready_version(db, segment)
    if version is None:
        return set()
    with Session(db) as session:
        rows = session.execute(
            select(col(Contact.locale))
            .join(SegmentMember, col(SegmentMember.contact_id) == col(Contact.id))
            .where(
                col(SegmentMember.segment) == segment,
                col(SegmentMember.version) == _member_version(session, segment, version.version),
            )
            .distinct()
        ).all()
    return {str(r[0] or "en") for r in rows}


def _member_version(session: Session, segment: str, version: str) -> str:
    """The version a ready segment's member rows carry: its own, or ``list`` for a
    manual segment (``catalog.member_version``)."""
    from stagecoach.engine.domain.segments import SegmentSpec
    from stagecoach.engine.services.segments.catalog import member_version
    from stagecoach.engine.services.storage.models import SegmentVersion

    row = session.get(SegmentVersion, version)
    return member_version(SegmentSpec.from_dict(row.spec)) if row is not None else version


def ready_segments(db: Engine) -> frozenset[str]:
    from stagecoach.engine.services.storage.models import SegmentVersion

    with Session(db) as session:
        rows = session.exec(
            select(SegmentVersion.name).where(SegmentVersion.status == "ready").distinct()
        ).all()
    return frozenset(rows)


def check_launch(
    db: Engine,
    broadcast: Broadcast,
    *,
    content: Mapping[str, frozenset[tuple[str, str]]],
    events: frozenset[str] | None = None,
    now: datetime,
) -> list[str]:
    """Everything that stops ``broadcast`` launching now (empty: it may)."""
    catalogues = Catalogues(segments=ready_segments(db), content=content, events=events)
    locales = audience_locales(db, broadcast.segment) if broadcast.segment else set()
    return broadcast_problems(broadcast, catalogues, locales=locales, now=now)


def mark_launched(db: Engine, broadcast_id: str, *, actor: str | None = None) -> BroadcastRow:
    """Draft to scheduled; any later status is answered as it is (a second launch)."""
    with Session(db) as session:
        row = session.get(BroadcastRow, broadcast_id)
        if row is None:
            raise BroadcastNotFound(broadcast_id)
        if row.status == "draft":
            row.status = "scheduled"
            row.actor = actor or row.actor
            session.add(row)
            session.commit()
            session.refresh(row)
        return row


def set_status(
    db: Engine,
    broadcast_id: str,
    status: str,
    *,
    reason: str | None = None,
    at: datetime | None = None,
) -> None:
    """Record where the broadcast is; a finished broadcast stays finished."""
    with Session(db) as session:
        row = session.get(BroadcastRow, broadcast_id)
        if row is None or row.status in FINISHED:
            return
        row.status = status
        row.reason = reason
        if status == "running" and row.started_at is None:
            row.started_at = at or datetime.now(UTC)
        if status in FINISHED:
            row.finished_at = at or datetime.now(UTC)
        session.add(row)
        session.commit()


def record_ab(db: Engine, broadcast_id: str, *, winner: str, decision: dict[str, Any]) -> None:
    with Session(db) as session:
        row = session.get(BroadcastRow, broadcast_id)
        if row is None:
            return
        row.winner, row.ab = winner, decision
        session.add(row)
        session.commit()


# --- the audience snapshot --------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    size: int
    skipped: int
    first_due: datetime | None


def take_snapshot(db: Engine, broadcast_id: str, *, launched: datetime) -> Snapshot:
    """Fix the audience: the members of the segment's ready version now, each with a
    send time and an arm. A second call (a retried activity) writes nothing more."""
    row = get_row(db, broadcast_id)
    broadcast = broadcast_of(row)
    with Session(db) as session:
        existing = session.exec(
            select(func.count()).where(col(BroadcastRecipient.broadcast_id) == broadcast_id)
        ).one()
    if not existing:
        version = ready_version(db, broadcast.segment)
        if version is None:
            raise BroadcastRefused(
                broadcast_id,
                [f"segment {broadcast.segment!r} has no ready version; publish or backfill it"],
            )
        with Session(db) as session:
            member_version = _member_version(session, broadcast.segment, version.version)
            members = session.execute(
                select(col(SegmentMember.contact_id), col(Contact.timezone))
                .join(Contact, col(Contact.id) == col(SegmentMember.contact_id), isouter=True)
                .where(
                    col(SegmentMember.segment) == broadcast.segment,
                    col(SegmentMember.version) == member_version,
                )
                .order_by(col(SegmentMember.contact_id))
            ).all()
            batch: list[dict[str, Any]] = []
            zones: dict[str, str | None] = {}
            for seq, (contact_id, zone) in enumerate(members):
                if broadcast.local_time is not None and seq % SNAPSHOT_CHUNK == 0:
                    zones = _latest_zones(session, members[seq : seq + SNAPSHOT_CHUNK])
                at = send_time(broadcast, zone=zones.get(contact_id, zone), launched=launched)
                batch.append(
                    {
                        "broadcast_id": broadcast_id,
                        "contact_id": contact_id,
                        "seq": seq,
                        "send_at": at or launched,
                        "variant": arm_of(broadcast, contact_id),
                        "status": "pending" if at is not None else "skipped",
                        "reason": None if at is not None else "local_time_passed",
                    }
                )
                if len(batch) >= SNAPSHOT_CHUNK:
                    session.execute(insert(BroadcastRecipient), batch)
                    batch = []
            if batch:
                session.execute(insert(BroadcastRecipient), batch)
            target = session.get(BroadcastRow, broadcast_id)
            if target is not None:
                target.audience_version = member_version
                target.audience_size = len(members)
                session.add(target)
            session.commit()
    with Session(db) as session:
        size = session.exec(
            select(func.count()).where(col(BroadcastRecipient.broadcast_id) == broadcast_id)
        ).one()
        skipped = session.exec(
            select(func.count()).where(
                col(BroadcastRecipient.broadcast_id) == broadcast_id,
                col(BroadcastRecipient.status) == "skipped",
            )
        ).one()
    return Snapshot(size=size, skipped=skipped, first_due=next_due(db, broadcast_id))


def next_due(db: Engine, broadcast_id: str, *, arms_only: bool = False) -> datetime | None:
    """The earliest send time of a recipient still pending."""
    with Session(db) as session:
        query = select(func.min(col(BroadcastRecipient.send_at))).where(
            col(BroadcastRecipient.broadcast_id) == broadcast_id,
            col(BroadcastRecipient.status) == "pending",
        )
        if arms_only:
            query = query.where(col(BroadcastRecipient.variant).is_not(None))
        return _aware(session.exec(query).one())


# --- one batch --------------------------------------------------------------------------


@dataclass
class Recipient:
    """What a batch needs to decide and send for one contact."""

    contact_id: str
    seq: int
    variant: str | None
    locale: str
    timezone: str | None
    traits: dict[str, Any]
    addresses: dict[str, str] = field(default_factory=dict)
    consent: dict[str, bool] = field(default_factory=dict)
    delivered: str | None = None
    """The status of this recipient's delivery row, if one exists (a crashed batch)."""
    reason: str | None = None
    """Why the recipient is pending again, if it is: ``retry:<n>``, ``quiet_hours``."""

    def address(self, channel: str) -> str | None:
        key = {"email": "email", "wechat": "wechat_openid", "sms": "phone"}.get(channel, channel)
        raw = self.traits.get(key) or self.addresses.get(key)
        return str(raw) if raw else None

    def consented(self, channel: str) -> bool:
        """The latest recorded decision, else the contact's consent trait, else email is
        opt-out and every other channel needs an opt-in (as for journeys)."""
        if channel in self.consent:
            return self.consent[channel]
        declared = self.traits.get("consent")
        if isinstance(declared, Mapping) and channel in declared:
            return bool(declared[channel])
        return channel == "email" and self.address("email") is not None


def delivery_key(broadcast_id: str, contact_id: str) -> str:
    """The idempotency key of a broadcast's send to one contact."""
    return f"broadcast:{broadcast_id}:{contact_id}"


_ADDRESS_KINDS = frozenset({"email", "wechat_openid", "phone"})


def due_recipients(
    db: Engine,
    broadcast_id: str,
    *,
    now: datetime,
    limit: int,
    arms_only: bool = False,
) -> list[Recipient]:
    """The next ``limit`` pending recipients due by ``now``, in snapshot order, with
    their addresses, consent and any delivery row an earlier attempt left."""
    # A Core connection, not an ORM session: these are plain row reads, and the ORM's
    # row processing was a tenth of a batch's CPU (the broadcast benchmark's profile).
    with db.connect() as session:
        query = (
            sa_select(
                col(BroadcastRecipient.contact_id),
                col(BroadcastRecipient.seq),
                col(BroadcastRecipient.variant),
                col(Contact.locale),
                col(Contact.timezone),
                col(Contact.traits),
                col(BroadcastRecipient.reason),
            )
            .join(Contact, col(Contact.id) == col(BroadcastRecipient.contact_id), isouter=True)
            .where(
                col(BroadcastRecipient.broadcast_id) == broadcast_id,
                col(BroadcastRecipient.status) == "pending",
                col(BroadcastRecipient.send_at) <= now,
            )
            # The batch index's own order: a batch reads its rows, it does not sort the
            # audience (snapshot order within each send time).
            .order_by(col(BroadcastRecipient.send_at), col(BroadcastRecipient.seq))
            .limit(limit)
        )
        if arms_only:
            query = query.where(col(BroadcastRecipient.variant).is_not(None))
        rows = session.execute(query).all()
        recipients = [
            Recipient(
                contact_id=r[0],
                seq=r[1],
                variant=r[2],
                locale=r[3] or "en",
                timezone=r[4],
                traits=dict(r[5] or {}),
                reason=r[6],
            )
            for r in rows
        ]
        if not recipients:
            return []
        by_id = {r.contact_id: r for r in recipients}
        ids = list(by_id)
        _overlay_traits(session, by_id)
        # The kinds are filtered here, not in SQL: with them in the WHERE clause SQLite
        # reads the (kind, value) index, every email identity there is, for each batch,
        # instead of the contact index (a batch's cost grew with the database).
        for kind, value, contact_id in session.execute(
            select(col(Identity.kind), col(Identity.value), col(Identity.contact_id)).where(
                col(Identity.contact_id).in_(ids)
            )
        ).all():
            if kind in _ADDRESS_KINDS:
                by_id[contact_id].addresses.setdefault(kind, value)
        latest = (
            select(func.max(col(Consent.id)))
            .where(col(Consent.contact_id).in_(ids))
            .group_by(col(Consent.contact_id), col(Consent.channel))
        )
        for contact_id, channel, granted in session.execute(
            select(col(Consent.contact_id), col(Consent.channel), col(Consent.granted)).where(
                col(Consent.id).in_(latest)
            )
        ).all():
            by_id[contact_id].consent[channel] = bool(granted)
        keys = {delivery_key(broadcast_id, cid): cid for cid in ids}
        for key, status in session.execute(
            select(col(Delivery.idempotency_key), col(Delivery.status)).where(
                col(Delivery.idempotency_key).in_(list(keys))
            )
        ).all():
            by_id[keys[key]].delivered = status
    return recipients


def _latest_zones(session: Session, members: Sequence[Any]) -> dict[str, str | None]:
    """Each member's zone as they last said it (see :func:`_overlay_traits`)."""
    recipients = {
        contact_id: Recipient(
            contact_id=contact_id, seq=0, variant=None, locale="", timezone=zone, traits={}
        )
        for contact_id, zone in members
    }
    _overlay_traits(session, recipients)
    return {contact_id: r.timezone for contact_id, r in recipients.items()}


def _overlay_traits(session: Session | Connection, by_id: Mapping[str, Recipient]) -> None:
    """The traits events brought since the contact row was last written, newest last.

    The contact row's traits, locale and zone are written at stage changes; an identify
    (a new address, a move to another zone) between two changes is in the events table
    only. A broadcast must use what the contact said last, so the traits each recipient's
    events carry are laid over the row, in the order they arrived."""
    from sqlalchemy import String, cast

    rows = session.execute(
        select(col(Event.contact_id), col(Event.context))
        .where(
            col(Event.contact_id).in_(list(by_id)),
            cast(col(Event.context), String).like('%"traits"%'),
        )
        .order_by(col(Event.id))
    ).all()
    for contact_id, context in rows:
        traits = (context or {}).get("traits")
        if not isinstance(traits, Mapping):
            continue
        r = by_id[contact_id]
        r.traits.update({k: v for k, v in traits.items() if v is not None})
        if isinstance(traits.get("locale"), str):
            r.locale = traits["locale"]
        if isinstance(traits.get("timezone"), str):
            r.timezone = traits["timezone"]


def suppressed(db: Engine, channel: str, addresses: Iterable[str]) -> set[str]:
    """Which of ``addresses`` are suppressed on ``channel``."""
    wanted = list(addresses)
    if not wanted:
        return set()
    with Session(db) as session:
        return set(
            session.exec(
                select(Suppression.address).where(
                    Suppression.channel == channel,
                    col(Suppression.address).in_(wanted),
                )
            ).all()
        )


def recent_sends(
    db: Engine, contact_ids: Iterable[str], since: datetime
) -> dict[str, list[datetime]]:
    """Each contact's sends since ``since``, journeys' and broadcasts' alike: the
    frequency cap is one budget."""
    ids = list(contact_ids)
    found: dict[str, list[datetime]] = {}
    if not ids:
        return found
    with db.connect() as connection:
        # The status is filtered here, not in SQL: with ``status = 'sent'`` in the WHERE
        # clause SQLite reads the status index, every sent row there is, for each batch,
        # instead of the (contact, created) index.
        for contact_id, status, sent_at in connection.execute(
            select(col(Delivery.contact_id), col(Delivery.status), col(Delivery.sent_at)).where(
                col(Delivery.contact_id).in_(ids),
                col(Delivery.sent_at) >= since,
            )
        ).all():
            if status != "sent":
                continue
            moment = _aware(sent_at)
            if moment is not None:
                found.setdefault(contact_id, []).append(moment)
    return found


@dataclass(frozen=True)
class Settled:
    """One recipient's outcome: ``sent``, ``held`` (reason), ``failed`` (reason),
    ``pending`` again at ``send_at`` (quiet hours, a retry)."""

    contact_id: str
    status: str
    reason: str | None = None
    send_at: datetime | None = None
    sent_at: datetime | None = None
    variant: str | None = None


def settle(db: Engine, broadcast_id: str, outcomes: Sequence[Settled]) -> None:
    """Write a batch's outcomes to the snapshot: one statement, executed for every
    recipient, in one transaction (a column an outcome leaves as ``None`` keeps its
    value)."""
    if not outcomes:
        return
    table = _table(BroadcastRecipient)

    def keep(name: str, column: Any) -> Any:
        return func.coalesce(bindparam(name, type_=column.type), column)

    statement = (
        update(table)
        .where(
            table.c.broadcast_id == bindparam("b_id"),
            table.c.contact_id == bindparam("c_id"),
        )
        .values(
            status=bindparam("b_status"),
            reason=bindparam("b_reason"),
            send_at=func.coalesce(
                bindparam("b_send_at", type_=table.c.send_at.type), table.c.send_at
            ),
            sent_at=func.coalesce(
                bindparam("b_sent_at", type_=table.c.sent_at.type), table.c.sent_at
            ),
            variant=func.coalesce(
                bindparam("b_variant", type_=table.c.variant.type), table.c.variant
            ),
        )
    )
    rows = [
        {
            "b_id": broadcast_id,
            "c_id": o.contact_id,
            "b_status": o.status,
            "b_reason": o.reason,
            "b_send_at": o.send_at,
            "b_sent_at": o.sent_at,
            "b_variant": o.variant,
        }
        for o in outcomes
    ]
    with db.begin() as connection:
        connection.execute(statement, rows)


@dataclass(frozen=True)
class DeliveryWrite:
    """One delivery row to write for a broadcast's recipient (see :func:`write_deliveries`)."""

    contact_id: str
    status: str
    arm: str | None = None
    content_id: str | None = None
    content_version: str | None = None
    provider_message_id: str | None = None
    error: str | None = None
    sent_at: datetime | None = None


def write_deliveries(
    db: Engine, broadcast: Broadcast, version: str, channel: str, writes: Sequence[DeliveryWrite]
) -> None:
    """Insert or update many of a broadcast's delivery rows in one transaction: the rows
    journeys write too (``journey`` ``broadcast:<name>``, ``step_id`` the arm), so caps,
    reports and the contact's history count both. Missing contact rows are added. A value
    a write leaves as ``None`` keeps what the row has."""
    if not writes:
        return
    table = _table(Delivery)
    contacts = _table(Contact)
    by_key = {delivery_key(broadcast.name, w.contact_id): w for w in writes}
    now = datetime.now(UTC)
    with db.begin() as connection:
        existing = {
            row[0]
            for row in connection.execute(
                sa_select(table.c.idempotency_key).where(table.c.idempotency_key.in_(list(by_key)))
            )
        }
        ids = list({w.contact_id for w in writes})
        known = {
            row[0]
            for row in connection.execute(sa_select(contacts.c.id).where(contacts.c.id.in_(ids)))
        }
        missing = [cid for cid in ids if cid not in known]
        if missing:
            connection.execute(
                insert(contacts),
                [
                    {
                        "id": cid,
                        "traits": {},
                        "created_at": now,
                        "updated_at": now,
                        "rehearsal": False,
                    }
                    for cid in missing
                ],
            )
        new = [
            {
                "idempotency_key": key,
                "contact_id": w.contact_id,
                "journey": f"broadcast:{broadcast.name}",
                "journey_version": version,
                "step_id": w.arm or "all",
                "enrolment": 1,
                "channel": channel,
                "content_id": w.content_id,
                "content_version": w.content_version,
                "status": w.status,
                "provider_message_id": w.provider_message_id,
                "error": w.error[:1024] if w.error else None,
                "created_at": now,
                "sent_at": w.sent_at,
            }
            for key, w in by_key.items()
            if key not in existing
        ]
        if new:
            connection.execute(insert(table), new)
        changed = [
            {
                "d_key": key,
                "d_status": w.status,
                "d_content_id": w.content_id,
                "d_content_version": w.content_version,
                "d_provider": w.provider_message_id,
                "d_error": w.error[:1024] if w.error else None,
                "d_sent_at": w.sent_at,
            }
            for key, w in by_key.items()
            if key in existing
        ]
        if changed:
            connection.execute(_DELIVERY_UPDATE, changed)


def update_deliveries(
    db: Engine, broadcast: Broadcast, version: str, channel: str, writes: Sequence[DeliveryWrite]
) -> None:
    """:func:`write_deliveries` for rows already written (a batch writes every row as
    ``sending`` before its first send): one ``executemany`` update in one transaction,
    without the reads an insert needs. Should a row be missing after all, the whole group
    goes through :func:`write_deliveries` instead, in the same transaction's place."""
    if not writes:
        return
    rows = [
        {
            "d_key": delivery_key(broadcast.name, w.contact_id),
            "d_status": w.status,
            "d_content_id": w.content_id,
            "d_content_version": w.content_version,
            "d_provider": w.provider_message_id,
            "d_error": w.error[:1024] if w.error else None,
            "d_sent_at": w.sent_at,
        }
        for w in writes
    ]
    try:
        with db.begin() as connection:
            if connection.execute(_DELIVERY_UPDATE, rows).rowcount != len(rows):
                raise _RowsMissing
        return
    except _RowsMissing:
        pass
    write_deliveries(db, broadcast, version, channel, writes)


class _RowsMissing(Exception):
    """An update found fewer rows than it was given (rolls its transaction back)."""


def _table(model: type[Any]) -> Any:
    """A model's Core table, for executemany statements (SQLModel does not type it)."""
    return model.__table__


def _delivery_update() -> Any:
    table = _table(Delivery)

    def keep(name: str, column: Any) -> Any:
        return func.coalesce(bindparam(name, type_=column.type), column)

    return (
        update(table)
        .where(table.c.idempotency_key == bindparam("d_key"))
        .values(
            status=bindparam("d_status"),
            content_id=keep("d_content_id", table.c.content_id),
            content_version=keep("d_content_version", table.c.content_version),
            provider_message_id=keep("d_provider", table.c.provider_message_id),
            error=keep("d_error", table.c.error),
            sent_at=keep("d_sent_at", table.c.sent_at),
        )
    )


_DELIVERY_UPDATE = _delivery_update()


def suppress(db: Engine, channel: str, address: str, reason: str, contact_id: str) -> None:
    """Suppress ``address`` on ``channel`` (a hard bounce, consent revoked), as a
    journey's delivery does; an address already suppressed keeps its first reason."""
    with Session(db) as session:
        if session.get(Suppression, (channel, address)) is None:
            session.add(
                Suppression(channel=channel, address=address, reason=reason, contact_id=contact_id)
            )
            session.commit()


def assign_rest(db: Engine, broadcast_id: str, winner: str) -> int:
    """The recipients outside the sample get the winning arm."""
    with Session(db) as session:
        result = session.execute(
            update(BroadcastRecipient)
            .where(
                col(BroadcastRecipient.broadcast_id) == broadcast_id,
                col(BroadcastRecipient.variant).is_(None),
            )
            .values(variant=winner)
        )
        session.commit()
        return int(getattr(result, "rowcount", 0) or 0)


def cancel_pending(db: Engine, broadcast_id: str) -> int:
    """Cancelled: every recipient not yet sent stays unsent, counted as cancelled."""
    with Session(db) as session:
        result = session.execute(
            update(BroadcastRecipient)
            .where(
                col(BroadcastRecipient.broadcast_id) == broadcast_id,
                col(BroadcastRecipient.status) == "pending",
            )
            .values(status="cancelled", reason="broadcast_cancelled")
        )
        session.commit()
        return int(getattr(result, "rowcount", 0) or 0)


def arm_sent_since(db: Engine, broadcast_id: str) -> dict[str, tuple[int, datetime | None]]:
    """Each arm's sends so far and its first send time."""
    with Session(db) as session:
        rows = session.execute(
            select(
                col(BroadcastRecipient.variant),
                func.count(),
                func.min(col(BroadcastRecipient.sent_at)),
            )
            .where(
                col(BroadcastRecipient.broadcast_id) == broadcast_id,
                col(BroadcastRecipient.status) == "sent",
                col(BroadcastRecipient.variant).is_not(None),
            )
            .group_by(col(BroadcastRecipient.variant))
        ).all()
    return {str(v): (int(n), _aware(first)) for v, n, first in rows}


@dataclass(frozen=True)
class BroadcastSend:
    """One broadcast's delivery to a contact, for the contact's timeline."""

    at: datetime
    broadcast: str
    channel: str
    content_id: str | None
    status: str
    arm: str


def contact_broadcast_sends(db: Engine, contact_id: str) -> list[BroadcastSend]:
    """Every broadcast delivery row of the contact, oldest first."""
    with Session(db) as session:
        rows = session.exec(
            select(Delivery)
            .where(
                Delivery.contact_id == contact_id,
                col(Delivery.journey).startswith("broadcast:"),
            )
            .order_by(col(Delivery.created_at))
        ).all()
    return [
        BroadcastSend(
            at=_aware(r.sent_at or r.created_at) or datetime.now(UTC),
            broadcast=r.journey.removeprefix("broadcast:"),
            channel=r.channel,
            content_id=r.content_id,
            status=r.status,
            arm=r.step_id,
        )
        for r in rows
    ]
