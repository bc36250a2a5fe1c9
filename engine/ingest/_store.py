"""Accepted events, stored durably and tied to one contact, with their outbox rows.

``Ingestor.accept`` writes a request's messages in one transaction: the contact each
belongs to (found or created through its identities, merging contacts that turn out to
be one), the event rows (a ``message_id`` already stored is a duplicate and writes
nothing), consent records, and an outbox row for each event some definition can use.
Only after the commit is a message "accepted": what the API acknowledged is on disk.

Concurrent requests are committed together (group commit): a writer task takes every
request queued while the last transaction ran and writes them in the next one, so
throughput grows with load instead of queueing behind one commit per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine, delete, insert, select, tuple_, update
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col

from engine.errors import DatabaseError
from engine.ingest._identity import KINDS
from engine.ingest._segment import Incoming
from engine.storage.db import driver_reason
from engine.storage.models import Consent, Contact, Event, Identity, Merge, Outbox

ALWAYS_SIGNALLED = frozenset({"identify", "group"})
"""Traits change who the contact is: these always reach the workflow."""


@dataclass
class Outcome:
    """What happened to one message."""

    message_id: str
    contact_id: str
    duplicate: bool = False
    signalled: bool = False
    merged: list[str] = field(default_factory=list)


@dataclass
class _Pending:
    messages: Sequence[Incoming]
    future: asyncio.Future[list[Outcome]]


def _settle(pending: _Pending, result: list[Outcome] | BaseException) -> None:
    if pending.future.done():
        return  # the caller went away
    if isinstance(result, BaseException):
        pending.future.set_exception(result)
    else:
        pending.future.set_result(result)


class Ingestor:
    """Stores messages; ``relevant()`` is the set of event types worth a signal."""

    def __init__(
        self,
        engine: Engine,
        *,
        relevant: Callable[[], frozenset[str] | None] = lambda: None,
        max_group: int = 5000,
    ) -> None:
        self._engine = engine
        self._relevant = relevant
        self._max_group = max_group
        self._queue: asyncio.Queue[_Pending] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.accepted = 0
        self.stored = 0

    async def accept(self, messages: Sequence[Incoming]) -> list[Outcome]:
        """Store ``messages`` (in order) and return one outcome each, once committed.

        Raises:
            DatabaseError: nothing of this call was stored; the client should retry.
        """
        if not messages:
            return []
        if self._queue is None:
            self._queue = asyncio.Queue()
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
                results = await asyncio.to_thread(self.store, [p.messages for p in group])
            except Exception as exc:  # every waiter must hear of it
                if len(group) == 1:
                    _settle(group[0], exc)
                    continue
                # One request's failure must not fail the others: write them one by one.
                for pending in group:
                    try:
                        [outcome] = await asyncio.to_thread(self.store, [pending.messages])
                    except Exception as one:
                        _settle(pending, one)
                    else:
                        _settle(pending, outcome)
                continue
            for pending, outcome in zip(group, results, strict=True):
                _settle(pending, outcome)

    # --- the transaction (runs in a thread) --------------------------------------------

    def store(self, requests: Sequence[Sequence[Incoming]]) -> list[list[Outcome]]:
        """Write every request's messages in one transaction; outcomes per request."""
        relevant = self._relevant()
        try:
            with Session(self._engine) as session:
                results = [
                    [self._one(session, m, relevant) for m in messages] for messages in requests
                ]
                session.commit()
        except (OperationalError, SADatabaseError) as exc:
            raise DatabaseError(
                f"events not stored: {driver_reason(exc)}",
                fix="retry with the same messageId; check the database (stagecoach doctor)",
            ) from exc
        count = sum(len(r) for r in results)
        self.accepted += count
        self.stored += sum(1 for r in results for o in r if not o.duplicate)
        return results

    def _one(self, session: Session, m: Incoming, relevant: frozenset[str] | None) -> Outcome:
        existing = session.execute(
            select(col(Event.contact_id)).where(col(Event.message_id) == m.message_id)
        ).first()
        if existing is not None:
            return Outcome(m.message_id, existing[0], duplicate=True)
        if m.kind == "alias" and m.previous_id:
            contact_id, merged = self._alias(session, m, m.previous_id)
        else:
            contact_id, merged = self._resolve(session, dict(m.identities), m)
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
        signalled = (
            relevant is None or m.type in relevant or m.type in ALWAYS_SIGNALLED or bool(traits)
        )
        if signalled:
            session.add(Outbox(contact_id=contact_id, event_id=event.id or 0))
        consent = traits.get("consent")
        if isinstance(consent, dict):
            self._record_consent(session, contact_id, m, consent)
        return Outcome(m.message_id, contact_id, signalled=signalled, merged=merged)

    def _alias(self, session: Session, m: Incoming, previous: str) -> tuple[str, list[str]]:
        """alias(previousId -> userId): the previous id was a user id or an anonymous id
        (Segment allows both); its contact, if any, merges into the user's."""
        contact_id, merged = self._resolve(session, dict(m.identities), m)
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
        return contact_id, merged

    def _resolve(
        self, session: Session, identities: dict[str, str], m: Incoming
    ) -> tuple[str, list[str]]:
        """The contact these identities belong to; merges the others into it."""
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
        return survivor, merged

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
            {"contact_id": survivor, "event_id": event_id, "attempts": 0, "created_at": at}
            for event_id in moved
        ]
        rows.append(
            {
                "contact_id": merged,
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
