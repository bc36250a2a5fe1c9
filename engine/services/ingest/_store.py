"""Accepted events, stored durably and tied to one contact, with their outbox rows.

``Ingestor.accept`` writes a request's messages in one transaction: the contact each
belongs to (found or created through its identities, merging contacts that turn out to
be one), the event rows (a ``message_id`` already stored is a duplicate and writes
nothing), consent records, and an outbox row for each event some definition can use.
Only after the commit is a message "accepted": what the API acknowledged is on disk.

Concurrent requests are committed together (group commit): a writer task takes every
request queued while the last transaction ran and writes them in the next one, so
throughput grows with load instead of queueing behind one commit per request. Inside the
transaction the common message costs no statement of its own (``_Bulk``): lookups and
inserts are made once for all messages, and only aliases, merges and consent are
written row by row.

A message that names its contact (``Incoming.contact_id``: our own links, hand-off
feedback) is stored on that contact, or on the one it was merged into; its identities
that no contact has yet are added to it, and identities of other contacts stay theirs:
knowing an id is no evidence that two contacts are one, so it never merges. An id no
contact has (erased, or never ours) is ignored and the identities decide as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import secrets
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Dialect,
    Engine,
    bindparam,
    delete,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col

from stagecoach.engine import metrics
from stagecoach.engine.domain.errors import DatabaseError
from stagecoach.engine.services.ingest._identity import KINDS
from stagecoach.engine.services.ingest._segment import Incoming
from stagecoach.engine.services.storage.db import driver_reason
from stagecoach.engine.services.storage.models import (
    OUTBOX_BUCKET_SQL,
    Consent,
    Contact,
    Event,
    Identity,
    Merge,
    Outbox,
    outbox_bucket,
)

ALWAYS_SIGNALLED = frozenset({"identify", "group"})
"""Traits change who the contact is: these always reach the workflow."""


@dataclass(slots=True)
class Outcome:
    """What happened to one message."""

    message_id: str
    contact_id: str
    duplicate: bool = False
    signalled: bool = False
    merged: list[str] = field(default_factory=list)
    created: bool = False
    """The message's contact was created by it (no contact had its identities)."""


@dataclass
class _Pending:
    messages: Sequence[Incoming]
    future: asyncio.Future[list[Outcome]]


def _settle(pending: _Pending, result: list[Outcome] | BaseException) -> None:
    if pending.future.done():
        return  # the caller went away
    if isinstance(result, BaseException):
        reason = "database" if isinstance(result, DatabaseError) else "error"
        metrics.count_refused(reason, len(pending.messages))
        pending.future.set_exception(result)
    else:
        pending.future.set_result(result)


def _unavailable(exc: BaseException) -> bool:
    """The database as a whole failed (locked, unreachable, restarting), not a message."""
    return isinstance(exc, DatabaseError) and isinstance(exc.__cause__, OperationalError)


class Ingestor:
    """Stores messages; ``relevant()`` is the set of event types worth a signal."""

    def __init__(
        self,
        db: Engine,
        *,
        relevant: Callable[[], frozenset[str] | None] = lambda: None,
        max_group: int = 5000,
    ) -> None:
        self._db = db
        self._relevant = relevant
        self._max_group = max_group
        self._queue: asyncio.Queue[_Pending] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def accept(self, messages: Sequence[Incoming]) -> list[Outcome]:
        """Store ``messages`` (in order) and return one outcome each, once committed.

        Raises:
            DatabaseError: nothing of this call was stored; the client should retry.
        """
        if not messages:
            return []
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="ingest-writer")
            self._writer = asyncio.create_task(self._write_loop(), name="ingest-writer")
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(messages, future))
        return await future

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
            self._queue = None
        if self._thread is not None:
            self._thread.shutdown(wait=False)
            self._thread = None

    async def _write_loop(self) -> None:
        assert self._queue is not None
        while True:
            group = [await self._queue.get()]
            size = len(group[0].messages)
            while not self._queue.empty() and size < self._max_group:
                nxt = self._queue.get_nowait()
                group.append(nxt)
                size += len(nxt.messages)
            try:
                results = await self._store_off_loop([p.messages for p in group])
            except Exception as exc:  # every waiter must hear of it
                if _unavailable(exc):
                    # Locked or unreachable: no request is to blame, and each write
                    # alone would wait out the busy timeout again. Answer the group and
                    # every call queued behind it now (503: the client resends).
                    while not self._queue.empty():
                        group.append(self._queue.get_nowait())
                    for pending in group:
                        _settle(pending, exc)
                    continue
                if len(group) == 1:
                    _settle(group[0], exc)
                    continue
                # One request's failure must not fail the others: write them one by one.
                for pending in group:
                    try:
                        [outcome] = await self._store_off_loop([pending.messages])
                    except Exception as one:
                        _settle(pending, one)
                    else:
                        _settle(pending, outcome)
                continue
            for pending, outcome in zip(group, results, strict=True):
                _settle(pending, outcome)

    async def _store_off_loop(self, requests: Sequence[Sequence[Incoming]]) -> list[list[Outcome]]:
        """:meth:`store` on the writer's own thread. Not the loop's shared pool: other
        database work there (the forwarder opening contacts, each waiting out a held lock)
        would leave ingestion queued behind it, and calls unanswered past any timeout."""
        assert self._thread is not None
        call = functools.partial(contextvars.copy_context().run, self.store, requests)
        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    # --- the transaction (runs in a thread) --------------------------------------------

    def store(self, requests: Sequence[Sequence[Incoming]]) -> list[list[Outcome]]:
        """Write every request's messages in one transaction; outcomes per request."""
        messages = [m for request in requests for m in request]
        try:
            relevant = self._relevant()  # may read the definitions from the database
            with Session(self._db) as session:
                outcomes = _Bulk(session, relevant, self._one).write(messages)
                session.commit()
        except (OperationalError, SADatabaseError) as exc:
            raise DatabaseError(
                f"events not stored: {driver_reason(exc)}",
                fix="retry with the same messageId; check the database (stagecoach doctor)",
            ) from exc
        results: list[list[Outcome]] = []
        at = 0
        for request in requests:
            results.append(outcomes[at : at + len(request)])
            at += len(request)
        metrics.count_events(
            (m.source, o.duplicate) for m, o in zip(messages, outcomes, strict=True)
        )
        return results

    def _one(self, session: Session, m: Incoming, relevant: frozenset[str] | None) -> Outcome:
        """One message the general way, row by row: aliases, merges and consent (see
        ``_Bulk`` for the common case)."""
        existing = session.execute(
            select(col(Event.contact_id)).where(col(Event.message_id) == m.message_id)
        ).first()
        if existing is not None:
            return Outcome(m.message_id, existing[0], duplicate=True)
        named = survivors(session.connection(), [m.contact_id] if m.contact_id else [])
        merged: list[str] = []
        created = False
        if m.contact_id in named:
            contact_id = named[m.contact_id]
            self._attach(session, contact_id, m)
        elif m.kind == "alias" and m.previous_id:
            contact_id, merged, created = self._alias(session, m, m.previous_id)
        else:
            contact_id, merged, created = self._resolve(session, dict(m.identities), m)
        traits = m.traits
        event = Event(
            message_id=m.message_id,
            contact_id=contact_id,
            kind=m.kind,
            name=m.type,
            properties=m.properties,
            context={**m.context, "traits": traits} if traits else m.context,
            source=m.source,
            channel=m.channel,
            occurred_at=m.occurred_at,
            received_at=datetime.now(UTC),
        )
        session.add(event)
        session.flush()
        signalled = _signalled(m, relevant)
        if signalled:
            session.add(
                Outbox(
                    contact_id=contact_id, bucket=outbox_bucket(contact_id), event_id=event.id or 0
                )
            )
        consent = traits.get("consent")
        if isinstance(consent, dict):
            self._record_consent(session, contact_id, m, consent)
        return Outcome(
            m.message_id, contact_id, signalled=signalled, merged=merged, created=created
        )

    def _attach(self, session: Session, contact_id: str, m: Incoming) -> None:
        """Add the message's identities no contact has yet to ``contact_id``, the contact
        the message named; an alias's previous id counts as an anonymous id. Identities
        another contact has stay with it: no merge."""
        wanted = _keys(m)
        previous = m.previous_id if m.kind == "alias" else None
        if previous:
            wanted.append(("anonymous_id", previous))
        if not wanted:
            return
        probe = wanted + ([("user_id", previous)] if previous else [])
        rows = session.execute(
            select(col(Identity.kind), col(Identity.value)).where(
                tuple_(col(Identity.kind), col(Identity.value)).in_(probe)
            )
        ).all()
        taken = {(kind, value) for kind, value in rows}
        if ("user_id", previous) in taken:  # _alias looks the previous id up as either
            taken.add(("anonymous_id", previous))
        for kind, value in dict.fromkeys(wanted):
            if (kind, value) not in taken:
                session.add(
                    Identity(kind=kind, value=value, contact_id=contact_id, source=m.source)
                )
        session.flush()

    def _alias(self, session: Session, m: Incoming, previous: str) -> tuple[str, list[str], bool]:
        """alias(previousId -> userId): the previous id was a user id or an anonymous id
        (Segment allows both); its contact, if any, merges into the user's."""
        contact_id, merged, created = self._resolve(session, dict(m.identities), m)
        rows = session.execute(
            select(col(Identity.contact_id)).where(
                col(Identity.value) == previous,
                col(Identity.kind).in_(("user_id", "anonymous_id")),
            )
        ).all()
        others = {r[0] for r in rows} - {contact_id}
        for other in sorted(others):
            self._merge(session, other, contact_id, m)
            merged.append(other)
        if not rows:
            session.add(
                Identity(
                    kind="anonymous_id", value=previous, contact_id=contact_id, source=m.source
                )
            )
            session.flush()
        return contact_id, merged, created

    def _resolve(
        self, session: Session, identities: dict[str, str], m: Incoming
    ) -> tuple[str, list[str], bool]:
        """The contact these identities belong to (and whether it was created for them);
        merges the others into it."""
        identities = {k: v for k, v in identities.items() if v}
        pairs = list(identities.items())
        found: dict[str, str] = {}
        if pairs:
            rows = session.execute(
                select(col(Identity.kind), col(Identity.value), col(Identity.contact_id)).where(
                    tuple_(col(Identity.kind), col(Identity.value)).in_(pairs)
                )
            ).all()
            found = {kind: contact for kind, _, contact in rows}
        owners = [found[k] for k in KINDS if k in found]
        created = not owners
        if owners:
            survivor = owners[0]
        else:
            survivor = "c_" + secrets.token_hex(12)
            session.add(Contact(id=survivor, stage=None, traits={}))
            session.flush()
        merged: list[str] = []
        for other in dict.fromkeys(owners):
            if other != survivor:
                self._merge(session, other, survivor, m)
                merged.append(other)
        for kind, value in identities.items():
            if found.get(kind) is None:
                session.add(Identity(kind=kind, value=value, contact_id=survivor, source=m.source))
        session.flush()
        return survivor, merged, created

    def _merge(self, session: Session, merged: str, survivor: str, m: Incoming) -> None:
        """``merged`` turns out to be ``survivor``: identities, history and consent move
        over. The survivor's workflow is sent the merged contact's events (they dedupe by
        message id): that is how it receives the other's state. The merged workflow is
        told to end, pointing to the survivor, by a control row."""
        moved = [
            row[0]
            for row in session.execute(
                select(col(Event.id)).where(col(Event.contact_id) == merged).order_by(col(Event.id))
            ).all()
        ]
        for table in (Identity, Event, Consent):
            session.execute(
                update(table).where(col(table.contact_id) == merged).values(contact_id=survivor)
            )
        session.execute(delete(Outbox).where(col(Outbox.contact_id) == merged))
        at = datetime.now(UTC)
        rows: list[dict[str, Any]] = [
            {
                "contact_id": survivor,
                "bucket": outbox_bucket(survivor),
                "event_id": event_id,
                "attempts": 0,
                "created_at": at,
            }
            for event_id in moved
        ]
        rows.append(
            {
                "contact_id": merged,
                "bucket": outbox_bucket(merged),
                "event_id": None,
                "merged_into": survivor,
                "attempts": 0,
                "created_at": at,
            }
        )
        session.execute(insert(Outbox), rows)
        session.add(
            Merge(
                merged_id=merged,
                into_id=survivor,
                reason=f"{m.kind} {m.message_id}"[:256],
                message_id=m.message_id,
            )
        )
        contact = session.get(Contact, merged)
        if contact is not None:
            contact.stage = "merged"
            contact.traits = {"merged_into": survivor}
            session.add(contact)
        session.flush()

    def _record_consent(
        self, session: Session, contact_id: str, m: Incoming, consent: dict[str, Any]
    ) -> None:
        previous = session.execute(
            select(col(Consent.proof))
            .where(col(Consent.contact_id) == contact_id)
            .order_by(col(Consent.id).desc())
            .limit(1)
        ).first()
        proof = previous[0] if previous else ""
        wording = str(m.traits.get("consent_wording") or m.context.get("consent_wording") or "")
        for channel, granted in sorted(consent.items()):
            row = Consent(
                contact_id=contact_id,
                channel=str(channel)[:32],
                granted=bool(granted),
                source=m.source,
                wording=wording[:2048],
                message_id=m.message_id,
                at=m.occurred_at,
                proof="",
            )
            proof = row.proof = _next_proof(proof, row)
            session.add(row)


_CHUNK = 500
"""Values per ``IN (...)`` lookup, well under every database's parameter limit."""

# Built once: a statement built per transaction costs more than a small one runs.
_MERGED_INTO = select(col(Merge.merged_id), col(Merge.into_id)).where(
    col(Merge.merged_id).in_(bindparam("ids", expanding=True))
)
_CONTACTS = select(col(Contact.id)).where(col(Contact.id).in_(bindparam("ids", expanding=True)))
_MAX_MERGE_HOPS = 16
"""A merge chain longer than this is a loop (it cannot happen; it must not hang us)."""


def survivors(connection: Connection, contact_ids: Iterable[str]) -> dict[str, str]:
    """Each id that is, or was merged into, a stored contact -> that contact's id now.

    Merges are followed to their end (``a`` merged into ``b``, ``b`` into ``c``: ``a``
    -> ``c``); ids of no contact (unknown, or erased) are left out.
    """
    now = {given: given for given in dict.fromkeys(contact_ids) if given}
    for _ in range(_MAX_MERGE_HOPS):
        into: dict[str, str] = {}
        for chunk in _chunks(sorted(set(now.values()))):
            into.update(
                (merged, to) for merged, to in connection.execute(_MERGED_INTO, {"ids": chunk})
            )
        if not into:
            break
        now = {given: into.get(current, current) for given, current in now.items()}
    stored: set[str] = set()
    for chunk in _chunks(sorted(set(now.values()))):
        stored.update(row[0] for row in connection.execute(_CONTACTS, {"ids": chunk}))
    return {given: current for given, current in now.items() if current in stored}


def _signalled(m: Incoming, relevant: frozenset[str] | None) -> bool:
    return relevant is None or m.type in relevant or m.type in ALWAYS_SIGNALLED or bool(m.traits)


def _chunks(values: Sequence[str]) -> list[Sequence[str]]:
    return [values[n : n + _CHUNK] for n in range(0, len(values), _CHUNK)]


class _Bulk:
    """One transaction's messages, written with a few statements for all of them.

    The common message (a new event whose identities point to at most one contact, no
    alias, no consent) needs no row-by-row work: which message ids are stored and which
    contacts own the identities are read once for all messages, new contacts, identities,
    events and outbox rows are inserted in bulk (``_Statements``). Anything else is
    written by ``slow`` (``Ingestor._one``) after the rows before it are flushed, in order,
    so the result is the one a message-by-message write would give.
    """

    def __init__(
        self,
        session: Session,
        relevant: frozenset[str] | None,
        slow: Callable[[Session, Incoming, frozenset[str] | None], Outcome],
    ) -> None:
        self._session = session
        self._relevant = relevant
        self._slow = slow
        self._sql = _Statements.of(session.connection().dialect)
        self._stored: dict[str, str] = {}
        """message id -> contact id, for ids stored before or in this transaction."""
        self._owners: dict[tuple[str, str], str] = {}
        """(kind, value) -> contact id, for the identities of the messages to write."""
        self._named: dict[str, str] = {}
        """contact id a message names -> the stored contact it is now (``survivors``)."""
        self._contacts: list[tuple[Any, ...]] = []
        self._identities: list[tuple[Any, ...]] = []
        self._events: list[tuple[Any, ...]] = []
        self._outbox: list[str] = []
        """Message ids of the queued events that get an outbox row, in order."""
        self._now = datetime.now(UTC)
        self._stamp = self._sql.time(self._now)

    def write(self, messages: Sequence[Incoming]) -> list[Outcome]:
        self._read(messages)
        outcomes: list[Outcome] = []
        for n, m in enumerate(messages):
            outcome = self._add(m)
            if outcome is None:
                self._flush()
                outcome = self._slow(self._session, m, self._relevant)
                self._session.flush()
                if outcome.merged or m.kind == "alias":
                    self._read(messages[n + 1 :])  # identities and events moved
                elif not outcome.duplicate:
                    self._stored[m.message_id] = outcome.contact_id
                    for key in _keys(m):  # a named contact leaves others' identities alone
                        self._owners.setdefault(key, outcome.contact_id)
            outcomes.append(outcome)
        self._flush()
        return outcomes

    def _read(self, messages: Sequence[Incoming]) -> None:
        """What the database holds for these messages' ids and identities."""
        connection = self._session.connection()
        sql = self._sql
        ids = list(dict.fromkeys(m.message_id for m in messages))
        if ids:
            rows = connection.exec_driver_sql(sql.stored, (sql.values(ids),))
            self._stored.update({mid: cid for mid, cid in rows})
        by_kind: dict[str, dict[str, None]] = {}
        for m in messages:
            for kind, value in m.identities.items():
                if value:
                    by_kind.setdefault(kind, {})[value] = None
        owners = self._owners
        for kind, values in by_kind.items():
            rows = connection.exec_driver_sql(sql.owners, (kind, sql.values(list(values))))
            owners.update({(kind, value): cid for value, cid in rows})
        named = [m.contact_id for m in messages if m.contact_id]
        if named:
            self._named.update(survivors(connection, named))

    def _add(self, m: Incoming) -> Outcome | None:
        """Queue the rows of a common message; None when it needs ``slow``."""
        known = self._stored.get(m.message_id)
        if known is not None:
            return Outcome(m.message_id, known, duplicate=True)
        if (m.kind == "alias" and m.previous_id) or isinstance(m.traits.get("consent"), dict):
            return None
        keys = _keys(m)
        owners = {self._owners[key] for key in keys if key in self._owners}
        named = self._named.get(m.contact_id) if m.contact_id else None
        if named is None and len(owners) > 1:
            return None  # a merge
        stamp = self._stamp
        created = False
        if named is not None:
            contact_id = named  # the identities others have stay theirs (below)
        elif owners:
            contact_id = owners.pop()
        else:
            contact_id = "c_" + secrets.token_hex(12)
            self._contacts.append((contact_id, stamp, stamp))
            created = True
        for key in keys:
            if key not in self._owners:
                self._owners[key] = contact_id
                self._identities.append((*key, contact_id, m.source, stamp))
        sql = self._sql
        traits = m.traits
        context = {**m.context, "traits": traits} if traits else m.context
        self._events.append(
            (
                m.message_id,
                contact_id,
                m.kind,
                m.type,
                sql.json(m.properties),
                sql.json(context),
                m.source,
                m.channel,
                sql.time(m.occurred_at),
                stamp,
            )
        )
        signalled = _signalled(m, self._relevant)
        if signalled:
            self._outbox.append(m.message_id)
        self._stored[m.message_id] = contact_id
        return Outcome(m.message_id, contact_id, signalled=signalled, created=created)

    def _flush(self) -> None:
        """Insert the queued rows: contacts, then identities, events and outbox rows."""
        if not (self._contacts or self._identities or self._events):
            return
        connection = self._session.connection()
        sql = self._sql
        if self._contacts:
            connection.exec_driver_sql(sql.insert_contacts, self._contacts)
        if self._identities:
            connection.exec_driver_sql(sql.insert_identities, self._identities)
        if self._events:
            connection.exec_driver_sql(sql.insert_events, self._events)
        if self._outbox:
            # The events' ids are read by the database itself: no row comes back here.
            connection.exec_driver_sql(sql.insert_outbox, (self._stamp, sql.values(self._outbox)))
        self._contacts, self._identities, self._events, self._outbox = [], [], [], []


_SQLITE_LIST = "IN (SELECT value FROM json_each(?))"
"""A list of values as one parameter (a JSON array), so a statement is prepared once
whatever the list's length; PostgreSQL takes an array: ``= ANY(%s)``."""


@dataclass(frozen=True)
class _Statements:
    """The bulk path's statements in the driver's own terms, for SQLite or PostgreSQL.

    They are run with ``exec_driver_sql``: one prepared statement for all rows
    (``executemany``), with values already in the form SQLAlchemy's types would bind
    (JSON; on SQLite, times as SQLAlchemy's ``DATETIME`` text), because its per-row
    compiling and binding cost more than the database's own insert.
    """

    stored: str
    owners: str
    insert_contacts: str
    insert_identities: str
    insert_events: str
    insert_outbox: str
    time: Callable[[datetime], Any]
    json: Callable[[Any], Any]
    values: Callable[[list[str]], Any]

    @classmethod
    def of(cls, dialect: Dialect) -> _Statements:
        known = _STATEMENTS.get((dialect.name, dialect.paramstyle))
        if known is not None:
            return known
        if dialect.name == "sqlite":
            made = cls(**_SQLITE_STATEMENTS, time=_sqlite_time, json=_json_text, values=_json_text)
        else:
            from psycopg.types.json import Json

            def adapted(sql: str) -> str:
                sql = sql.replace(OUTBOX_BUCKET_SQL["sqlite"], OUTBOX_BUCKET_SQL["postgresql"])
                return sql.replace(_SQLITE_LIST, "= ANY(?)").replace("?", "%s")

            made = cls(
                **{name: adapted(sql) for name, sql in _SQLITE_STATEMENTS.items()},
                time=_same,
                json=lambda value: Json(value, dumps=_json_text),
                values=_same,
            )
        _STATEMENTS[dialect.name, dialect.paramstyle] = made
        return made


_SQLITE_STATEMENTS = {
    "stored": "SELECT message_id, contact_id FROM events "
    "WHERE message_id IN (SELECT value FROM json_each(?))",
    "owners": "SELECT value, contact_id FROM identities "
    "WHERE kind = ? AND value IN (SELECT value FROM json_each(?))",
    "insert_contacts": "INSERT INTO contacts (id, stage, traits, created_at, updated_at) "
    "VALUES (?, NULL, '{}', ?, ?)",
    "insert_identities": "INSERT INTO identities (kind, value, contact_id, source, created_at) "
    "VALUES (?, ?, ?, ?, ?)",
    "insert_events": "INSERT INTO events (message_id, contact_id, kind, name, properties, "
    "context, source, channel, occurred_at, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    # In event order, so each contact's outbox rows keep its events' order; the bucket is
    # OUTBOX_BUCKET_SQL["sqlite"], swapped for PostgreSQL's by _Statements.of.
    "insert_outbox": "INSERT INTO outbox (contact_id, bucket, event_id, merged_into, attempts, "
    "last_error, created_at) SELECT contact_id, outbox_bucket(contact_id), id, NULL, 0, "
    "NULL, ? FROM events "
    "WHERE message_id IN (SELECT value FROM json_each(?)) ORDER BY id",
}
"""The bulk statements as SQLite takes them; ``_Statements.of`` adapts them."""

_STATEMENTS: dict[tuple[str, str], _Statements] = {}


def _sqlite_time(at: datetime) -> str:
    """``at`` as SQLAlchemy's SQLite ``DATETIME`` stores it: its wall time, no zone."""
    return at.replace(tzinfo=None).isoformat(" ", "microseconds")


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _same(value: Any) -> Any:
    return value


def _keys(m: Incoming) -> list[tuple[str, str]]:
    """The message's identities as (kind, value), empty values left out."""
    return [(kind, value) for kind, value in m.identities.items() if value]


def _next_proof(previous: str, row: Consent) -> str:
    at = row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)
    fields = {
        "contact_id": row.contact_id,
        "channel": row.channel,
        "granted": row.granted,
        "source": row.source,
        "wording": row.wording,
        "message_id": row.message_id,
        "at": at.isoformat(),
    }
    body = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(previous.encode() + body).hexdigest()


def verify_consent_chain(rows: Sequence[Consent]) -> int | None:
    """Index of the first row whose proof does not follow (None: the chain holds)."""
    proof = ""
    for n, row in enumerate(rows):
        proof = _next_proof(proof, row)
        if proof != row.proof:
            return n
    return None
