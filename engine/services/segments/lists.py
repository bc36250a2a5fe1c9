"""Manual segments: lists fed by a CSV upload, the API or the CLI.

A list change is not written to the membership tables here. Each added or removed
contact becomes one stored event, ``segment.list_added`` or ``segment.list_removed``
(properties ``{"segment": name, "actor": who}``), written by the ingestion store with
its outbox row like any other event. The forwarder delivers it, in order with the
contact's other events, to the contact's workflow. The workflow adopts it and records
the entry or exit (source ``list``, with the actor). So a list member is a member for
journeys (``segment_entered``, ``in_segment``) exactly like a computed segment's, and
a list change that races another event for the same contact is applied in the order
they were stored.

Who is meant:

- a value with ``@`` is an email address, normalised as ingestion does
  (``normalise_email``), and found through the contact's identities. Adding an address
  no contact has creates the contact (the event carries the address as its ``email``
  trait), as a CSV import would: uploading a list of people you met at an event is how
  they become contacts. Removing an unknown address is refused for that row;
- anything else is a contact id (``c_...``). An id merged into another contact means
  the contact it was merged into. An id of no contact is refused for that row: a list
  never creates a contact without an address to reach it by.

Retries and repeats:

- a contact already on the list (its last list event for this segment is an addition)
  is not added again, and one not on it is not removed: the result counts them as
  ``unchanged``. A retried upload therefore stores nothing twice;
- each event's message id is derived from the segment, the contact and how many list
  changes of this segment the contact already has, so two identical uploads racing
  each other store each change once (the second is a duplicate message id), while
  adding a contact again after it was removed is a new change with a new id.

List events are always written with an outbox row, whatever the definitions' event
filter says: only the workflow records membership, so a list change it never hears of
would be lost.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.domain.segments import LIST_ADDED, LIST_REMOVED, SegmentSpec
from stagecoach.engine.services.ingest import (
    IdentityError,
    Incoming,
    Ingestor,
    Outcome,
    normalise_email,
)
from stagecoach.engine.services.ingest._store import survivors
from stagecoach.engine.services.segments.catalog import latest_segments
from stagecoach.engine.services.segments.queries import UnknownSegment
from stagecoach.engine.services.storage.models import Event, Identity

if TYPE_CHECKING:
    from stagecoach.engine.settings import Settings

Action = Literal["add", "remove"]

SOURCE = "list"
"""The ``source`` of list events and of the identities an addition creates."""
MAX_ACTOR = 128
"""The longest actor the change rows hold."""
MAX_REFS = 100_000
"""Contacts one change may name: a bigger list is uploaded in parts."""
_BATCH = 1000
"""Events a transaction."""
_CONTACT_ID_MAX = 64
_CHUNK = 500
_DECODINGS = ("utf-8-sig", "gb18030")
"""UTF-8 (with or without BOM), then GB18030, which Excel on Chinese Windows saves."""


class ListError(StagecoachError):
    """The change cannot be made at all (nothing was stored): the message says why."""


class NotAManualSegment(ListError):
    """The segment is computed from its condition; only manual segments take changes."""

    def __init__(self, name: str, manual: list[str]) -> None:
        self.name = name
        self.manual = manual
        super().__init__(
            f"segment {name!r} is computed from its condition, not a manual list: its"
            " members cannot be added or removed by hand",
            fix="change its condition in the project, or use a manual segment: "
            + (
                ", ".join(manual)
                if manual
                else 'none is published (define Segment("name", manual=True) and deploy)'
            ),
        )


@dataclass(frozen=True)
class ListRef:
    """Who to add or remove: a contact id or an email address, and where it came from.

    Attributes:
        value: The contact id or email address as given.
        line: The CSV line it was read from (``None`` for the API's and CLI's lists).
        field: The column or field it was read from (``contact_id``, ``email``), or
            ``contact`` when the shape of the value decides.
    """

    value: str
    line: int | None = None
    field: str = "contact"


@dataclass(frozen=True)
class RejectedRow:
    """A row (or a value) left out, with what was wrong: the rest are stored."""

    line: int | None
    field: str
    reason: str
    value: str = ""

    def describe(self) -> str:
        where = f"line {self.line}, " if self.line is not None else ""
        return f"{where}{self.field}: {self.reason}"


@dataclass(frozen=True)
class ParsedList:
    """A CSV file read: the contacts it names, and the rows it cannot."""

    refs: list[ListRef]
    rejected: list[RejectedRow]


@dataclass
class ListResult:
    """What a list change did.

    Attributes:
        segment: The manual segment.
        action: ``add`` or ``remove``.
        actor: Who made the change, as recorded.
        accepted: Contacts taken: changed now, or already so.
        stored: Events stored by this call (each becomes one entry or exit).
        unchanged: Already on the list (add) or not on it (remove), a contact named
            twice, or stored by a concurrent identical call: nothing to store.
        created: Contacts created for addresses no contact had (add only).
        contacts: The contact ids changed by this call, in order.
        rejected: Rows (or values) left out, with line, field and reason.
    """

    segment: str
    action: Action
    actor: str
    accepted: int = 0
    stored: int = 0
    unchanged: int = 0
    created: int = 0
    contacts: list[str] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The result as the CLI prints it."""
        verb = "added to" if self.action == "add" else "removed from"
        already = "already on the list" if self.action == "add" else "not on the list"
        out = [
            f"{self.stored:,} {verb} {self.segment} (by {self.actor})",
            f"{self.unchanged:,} unchanged ({already}, or named twice)",
        ]
        if self.created:
            contacts = "contact" if self.created == 1 else "contacts"
            out.append(f"{self.created:,} new {contacts} created for unknown addresses")
        out.append(f"{len(self.rejected):,} rejected")
        out.extend(f"  {row.describe()}" for row in self.rejected)
        return out


# --- which segment ------------------------------------------------------------------------


def manual_segment(db: Engine, name: str) -> SegmentSpec:
    """The published manual segment ``name``.

    Raises:
        UnknownSegment: no published segment has this name (it lists the known ones).
        NotAManualSegment: it is computed (it lists the manual ones).
    """
    specs = latest_segments(db)
    spec = specs.get(name)
    if spec is None:
        raise UnknownSegment(name, sorted(specs))
    if not spec.manual:
        raise NotAManualSegment(name, sorted(n for n, s in specs.items() if s.manual))
    return spec


def check_actor(actor: str) -> str:
    """``actor`` stripped, or :class:`ListError` if it is empty or too long."""
    actor = actor.strip()
    if not actor or len(actor) > MAX_ACTOR:
        raise ListError(
            f"actor {actor[:40]!r} is empty or longer than {MAX_ACTOR} characters",
            fix="name who makes the change, e.g. 'events-team' or an email address",
        )
    return actor


# --- CSV ----------------------------------------------------------------------------------


def _decode(data: bytes, name: str) -> str:
    for encoding in _DECODINGS:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ListError(
        f"{name} is neither UTF-8 nor GBK/GB18030 text",
        fix="save the list as CSV UTF-8 (a header row with contact_id or email)",
    )


def _delimiter(first_line: str) -> str:
    counts = {d: first_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _column(cell: str) -> str:
    return "_".join(cell.strip().lstrip("\ufeff").strip().lower().replace("-", " ").split())


def parse_list_csv(data: bytes | str, *, name: str = "the file") -> ParsedList:
    """The contacts a CSV file names: a header row with a ``contact_id`` or an ``email``
    column (or both: a row's ``contact_id`` is used when filled, else its ``email``),
    then one contact a row. Other columns are ignored. Blank lines are skipped.

    A row that names nobody (both empty), or whose email address is not one, is
    rejected with its line, field and reason; the rest are returned.

    Raises:
        ListError: the file is empty, has no rows, or has neither column.
    """
    text = _decode(data, name) if isinstance(data, bytes) else data.lstrip("\ufeff")
    lines = text.splitlines(keepends=True)
    skipped = 0
    while skipped < len(lines) and not lines[skipped].strip():
        skipped += 1
    if skipped == len(lines):
        raise ListError(
            f"{name} is empty",
            fix="upload a CSV file with a header row naming a contact_id or email column,"
            " then one contact a row",
        )
    reader = csv.reader(io.StringIO("".join(lines[skipped:])), delimiter=_delimiter(lines[skipped]))
    header = [_column(cell) for cell in next(reader)]
    id_at = header.index("contact_id") if "contact_id" in header else None
    email_at = header.index("email") if "email" in header else None
    if id_at is None and email_at is None:
        shown = ", ".join(repr(h) for h in header if h) or "none"
        raise ListError(
            f"{name} has no contact_id or email column (its columns: {shown})",
            fix="name the column of contact ids 'contact_id' or the column of addresses"
            " 'email' in the header row",
        )
    refs: list[ListRef] = []
    rejected: list[RejectedRow] = []
    rows = 0
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue
        rows += 1
        line = skipped + reader.line_num
        if len(cells) > len(header) and any(c.strip() for c in cells[len(header) :]):
            rejected.append(
                RejectedRow(
                    line,
                    "row",
                    f"{len(cells)} cells but {len(header)} columns in the header: quote"
                    " cells that contain the delimiter",
                )
            )
            continue
        contact_id = cells[id_at].strip() if id_at is not None and id_at < len(cells) else ""
        email = cells[email_at].strip() if email_at is not None and email_at < len(cells) else ""
        if contact_id:
            refs.append(ListRef(contact_id, line, "contact_id"))
        elif email:
            refs.append(ListRef(email, line, "email"))
        else:
            named = " or ".join(
                c for c, at in (("contact_id", id_at), ("email", email_at)) if at is not None
            )
            rejected.append(RejectedRow(line, named, f"empty: fill in {named}"))
    if rows == 0:
        raise ListError(
            f"{name} has a header and no rows", fix="add one contact a row below the header"
        )
    return ParsedList(refs, rejected)


def refs_from(values: Iterable[str]) -> list[ListRef]:
    """Contact ids and email addresses given one by one (API body, CLI options)."""
    return [ListRef(value) for value in values]


# --- the change ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Who:
    ref: ListRef
    email: str | None = None
    contact_id: str | None = None


def _read(ref: ListRef) -> _Who | RejectedRow:
    value = ref.value.strip()
    as_email = ref.field == "email" or (ref.field == "contact" and "@" in value)
    field_name = ref.field if ref.field != "contact" else ("email" if as_email else "contact_id")
    if not value:
        return RejectedRow(ref.line, field_name, "empty: give a contact id or an email address")
    if as_email:
        try:
            return _Who(ListRef(value, ref.line, field_name), email=normalise_email(value))
        except IdentityError as exc:
            return RejectedRow(ref.line, field_name, exc.message, value)
    if len(value) > _CONTACT_ID_MAX:
        return RejectedRow(
            ref.line,
            field_name,
            f"longer than {_CONTACT_ID_MAX} characters: not a contact id",
            value[:80],
        )
    return _Who(ListRef(value, ref.line, field_name), contact_id=value)


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for at in range(0, len(values), _CHUNK):
        yield values[at : at + _CHUNK]


def _message_id(segment: str, key: str, seq: int, action: Action) -> str:
    digest = hashlib.sha256(f"{segment}\n{key}\n{seq}\n{action}".encode()).hexdigest()
    return f"list-{digest[:48]}"


@dataclass
class PreparedChange:
    """A list change worked out and not yet stored: its events, and what it left out.

    :meth:`result` turns the store's outcomes for :attr:`messages` into the
    :class:`ListResult`."""

    segment: str
    action: Action
    actor: str
    messages: list[Incoming]
    unchanged: int
    rejected: list[RejectedRow]

    def result(self, outcomes: Sequence[Outcome]) -> ListResult:
        out = ListResult(self.segment, self.action, self.actor, rejected=list(self.rejected))
        out.unchanged = self.unchanged
        for outcome in outcomes:
            if outcome.duplicate:
                out.unchanged += 1
                continue
            out.stored += 1
            out.created += 1 if outcome.created else 0
            out.contacts.append(outcome.contact_id)
        out.accepted = out.stored + out.unchanged
        out.rejected.sort(key=lambda r: (r.line is None, r.line or 0))
        return out


def prepare_change(
    db: Engine,
    segment: str,
    refs: ParsedList | Sequence[ListRef | str],
    *,
    action: Action,
    actor: str,
    now: datetime | None = None,
) -> PreparedChange:
    """Check the segment, find each contact and its place on the list, and build the
    events to store (nothing is written). ``refs`` may be a parsed CSV file: its
    rejected rows are reported with the rest.

    Raises:
        UnknownSegment: no such segment (the known ones are listed).
        NotAManualSegment: a computed segment.
        ListError: a bad actor, or more than :data:`MAX_REFS` contacts.
    """
    spec = manual_segment(db, segment)
    actor = check_actor(actor)
    rejected: list[RejectedRow] = []
    if isinstance(refs, ParsedList):
        rejected, refs = list(refs.rejected), refs.refs
    if len(refs) > MAX_REFS:
        raise ListError(
            f"{len(refs):,} contacts in one change; the limit is {MAX_REFS:,}",
            fix="split the list into parts and upload each",
        )
    now = now or datetime.now(UTC)
    who: list[_Who] = []
    for ref in refs:
        read = _read(ListRef(ref) if isinstance(ref, str) else ref)
        (rejected if isinstance(read, RejectedRow) else who).append(read)  # type: ignore[arg-type]

    with Session(db) as session:
        connection = session.connection()
        by_email: dict[str, str] = {}
        emails = sorted({w.email for w in who if w.email})
        for chunk in _chunks(emails):
            by_email.update(
                (value, owner)
                for value, owner in session.exec(
                    select(Identity.value, Identity.contact_id).where(
                        Identity.kind == "email", col(Identity.value).in_(chunk)
                    )
                ).all()
            )
        named = sorted({w.contact_id for w in who if w.contact_id} | set(by_email.values()))
        alive = survivors(connection, named)
        # Each contact's list changes of this segment so far: their count and the last.
        seq: dict[str, int] = {}
        on_list: dict[str, bool] = {}
        for chunk in _chunks(sorted(set(alive.values()))):
            rows = session.exec(
                select(Event.contact_id, Event.name, Event.properties)
                .where(
                    col(Event.contact_id).in_(chunk),
                    col(Event.name).in_((LIST_ADDED, LIST_REMOVED)),
                )
                .order_by(col(Event.id))
            ).all()
            for owner_id, kind, said in rows:
                if isinstance(said, dict) and said.get("segment") == spec.name:
                    seq[owner_id] = seq.get(owner_id, 0) + 1
                    on_list[owner_id] = kind == LIST_ADDED

    adding = action == "add"
    event_type = LIST_ADDED if adding else LIST_REMOVED
    properties: dict[str, Any] = {"segment": spec.name, "actor": actor}
    messages: list[Incoming] = []
    unchanged = 0
    for w in who:
        contact_id: str | None = None
        if w.contact_id is not None:
            contact_id = alive.get(w.contact_id)
            if contact_id is None:
                rejected.append(
                    RejectedRow(
                        w.ref.line,
                        w.ref.field,
                        f"no contact has the id {w.contact_id!r}: give a contact id as"
                        " 'stagecoach contact show' prints it, or the email address",
                        w.contact_id,
                    )
                )
                continue
        else:
            assert w.email is not None
            owner = by_email.get(w.email)
            contact_id = alive.get(owner) if owner is not None else None
            if contact_id is None and not adding:
                rejected.append(
                    RejectedRow(
                        w.ref.line, w.ref.field, f"no contact has the address {w.email}", w.email
                    )
                )
                continue
        key = contact_id if contact_id is not None else f"email:{w.email}"
        if on_list.get(key, False) == adding:
            unchanged += 1
            continue
        n = seq.get(key, 0)
        seq[key] = n + 1
        on_list[key] = adding
        traits: dict[str, Any] = {"email": w.email} if contact_id is None and w.email else {}
        messages.append(
            Incoming(
                kind="track",
                message_id=_message_id(spec.name, key, n, action),
                type=event_type,
                occurred_at=now,
                properties=dict(properties),
                traits=traits,
                identities={"email": w.email} if traits and w.email else {},
                source=SOURCE,
                contact_id=contact_id,
            )
        )
    return PreparedChange(spec.name, action, actor, messages, unchanged, rejected)


def store_change(db: Engine, change: PreparedChange) -> ListResult:
    """Store a prepared change's events with their outbox rows, a batch a transaction.

    Raises:
        DatabaseError: the database refused a batch (the batches before it are stored;
            the same change again stores only the rest).
    """
    # Its own Ingestor with no event filter: list events always get their outbox row.
    ingestor = Ingestor(db)
    outcomes: list[Outcome] = []
    for at in range(0, len(change.messages), _BATCH):
        [done] = ingestor.store([change.messages[at : at + _BATCH]])
        outcomes.extend(done)
    return change.result(outcomes)


def add_to_list(
    db: Engine,
    settings: Settings | None,
    segment: str,
    refs: ParsedList | Sequence[ListRef | str],
    *,
    actor: str,
) -> ListResult:
    """Add contacts (ids or email addresses) to the manual segment ``segment``.

    ``settings`` is the deployment's (unused for now: everything needed is in ``db``).
    Rows that cannot be added are in the result's ``rejected``; the rest are stored.

    Raises:
        UnknownSegment, NotAManualSegment, ListError: nothing was stored.
    """
    return store_change(db, prepare_change(db, segment, refs, action="add", actor=actor))


def remove_from_list(
    db: Engine,
    settings: Settings | None,
    segment: str,
    refs: ParsedList | Sequence[ListRef | str],
    *,
    actor: str,
) -> ListResult:
    """Remove contacts (ids or email addresses) from the manual segment ``segment``;
    see :func:`add_to_list`."""
    return store_change(db, prepare_change(db, segment, refs, action="remove", actor=actor))


__all__ = [
    "MAX_REFS",
    "SOURCE",
    "ListError",
    "ListRef",
    "ListResult",
    "NotAManualSegment",
    "ParsedList",
    "PreparedChange",
    "RejectedRow",
    "add_to_list",
    "check_actor",
    "manual_segment",
    "parse_list_csv",
    "prepare_change",
    "refs_from",
    "remove_from_list",
    "store_change",
]
