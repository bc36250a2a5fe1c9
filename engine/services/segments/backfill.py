"""Backfilling a new or changed segment version from stored history, and previews.

A published computed version starts ``backfilling`` (``catalog``): its members are
computed here, over every stored contact at one instant, and written in batches. Only
when every batch is written is the version marked ready, so people and broadcasts
(``queries``) go on reading the previous ready version until the new one is complete:
a half-done backfill is never visible.

How one version is backfilled:

1. The analytics store is synced, and the condition is compiled to one DuckDB query
   (``_sql``); a condition with no exact SQL form (score, grade, tags) is evaluated
   row by row instead, in batches, over facts assembled from the same stored rows
   (:func:`stored_facts`), which is also the reference the tests hold the SQL to.
2. The members are compared with the previous ready version's: only contacts whose
   membership differs get a change row (``segment_changes``, source ``backfill``) and
   a notification. A brand-new segment has no previous members: every member enters.
   Members carried over keep their ``since`` and reason.
3. The contacts (old members and new ones) are written in id order, ``batch`` at a
   time. Each batch first ingests one ``segment.membership`` event per changed contact
   (``{"segment", "version", "member"}``) through the normal ingest store and outbox,
   with message id ``backfill:<version>:<contact>``, and then writes the member rows,
   the change rows and the version's ``cursor`` (the batch's last contact id) in one
   transaction. Killed between the two, the batch is done again on resume: the events
   are duplicates by message id and stored once, and rows are inserted only where
   their key is new. Killed anywhere, a resumed backfill starts after the cursor and
   writes nothing twice. Notifying before the rows rather than after is the choice
   that cannot lose a notification.
4. ``mark_ready``: the new version is read from now on; the old one retires.

Each version is backfilled under a lease (``segments/backfill/<version>``,
``stagecoach.engine.services.leases``): two processes running at once (two hosts
publishing the same project) do not both compute it; the second waits, then finds it
ready. Each batch renews the lease and its transaction is fenced: a process that stalled
past its lease stops, and the one that took over resumes after the cursor.

Workflows decide by the newest published version from the moment it is published
(``latest_segments``), so a contact active during the backfill may have decided under the
new version already, from facts newer than the store's copy: such a contact (a change row
of source ``workflow`` for this version) is left as its workflow recorded it, with no row
and no event from the backfill.

Contacts whose membership does not change get no event, so no signal and no workflow
task: the backfill spends zero Temporal actions on them. A resumed backfill evaluates
again at its own ``now``; contacts written before the interruption keep the answer of
the first run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa
from sqlalchemy import Connection, Engine, func, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from stagecoach.engine.domain.conditions import Condition, EventRecord, Facts
from stagecoach.engine.domain.contact import CHANNELS, CONSENT_EVENTS, EVENT_WINDOW
from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.domain.pipeline import Pipeline
from stagecoach.engine.domain.scoring import ScoreState, apply_event, grade, score_at
from stagecoach.engine.domain.segments import (
    MEMBERSHIP,
    SYSTEM_EVENTS,
    SegmentSpec,
    evaluation_order,
    walk,
)
from stagecoach.engine.services.analytics.store import AnalyticsStore, default_path
from stagecoach.engine.services.ingest import Incoming, Ingestor
from stagecoach.engine.services.leases import Held, Leases
from stagecoach.engine.services.segments import _sql
from stagecoach.engine.services.segments.catalog import (
    BACKFILLING,
    RETIRED,
    latest_segments,
    mark_ready,
    member_version,
    ready_version,
)
from stagecoach.engine.services.segments.queries import UnknownSegment, read_versions
from stagecoach.engine.services.storage.models import (
    Contact,
    SegmentChange,
    SegmentMember,
    SegmentVersion,
)
from stagecoach.engine.settings import Settings

BATCH = 50_000
"""Contacts written per transaction (and evaluated per round in the row-by-row path)."""
_IN_CHUNK = 500
"""Ids per ``IN (...)`` lookup, well under every database's parameter limit."""


BACKFILL_LEASE = "segments/backfill/"
"""Lease name prefix of one version's backfill: one process computes it at a time."""


class NotBackfillable(StagecoachError):
    """A segment's condition asks what stored history does not hold (tags)."""


@dataclass(frozen=True)
class SegmentPreview:
    """What a segment would hold now: how many contacts, and a few of them."""

    count: int
    sample: list[str]


@dataclass(frozen=True)
class BackfillResult:
    """One version backfilled.

    Attributes:
        segment: The segment.
        version: The version now ready.
        members: Its members.
        entered: Contacts that were not members of the previous ready version and are.
        exited: Contacts that were and are not.
        notified: ``segment.membership`` events stored for contacts (changed ones only):
            the Temporal actions the backfill causes.
        compiled: Evaluated by one SQL query (``False``: row by row).
        resumed_after: The cursor an earlier, interrupted run left, if any.
        seconds: Wall time, sync excluded.
    """

    segment: str
    version: str
    members: int
    entered: int
    exited: int
    notified: int
    compiled: bool
    resumed_after: str | None
    seconds: float


def _store(settings: Settings, store: AnalyticsStore | None) -> AnalyticsStore:
    if store is not None:
        return store
    return AnalyticsStore(settings.analytics_path or default_path(settings.data_dir))


def _pipeline(settings: Settings) -> Pipeline:
    from stagecoach.engine.services.project import load_project

    return load_project(settings).definitions.pipeline


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _json(raw: Any) -> Any:
    return json.loads(raw) if isinstance(raw, str) else raw


# --- the row-by-row reference -----------------------------------------------------------


def stored_facts(
    con: duckdb.DuckDBPyConnection,
    contact_ids: Sequence[str],
    *,
    now: datetime,
    pipeline: Pipeline | None = None,
    segments: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, Facts]:
    """Facts of each contact as the store's rows tell them (``_sql``'s docstring says
    how each field is read); with ``pipeline``, the score is its scoring model replayed
    over the contact's events, the grade its grading model over the traits."""
    now = _aware(now)
    ids = list(contact_ids)
    if not ids:
        return {}
    con.register("_wanted", pa.table({"id": pa.array(ids, type=pa.string())}))
    try:
        return _facts_of(con, now=now, pipeline=pipeline, segments=segments)
    finally:
        con.unregister("_wanted")


def _facts_of(
    con: duckdb.DuckDBPyConnection,
    *,
    now: datetime,
    pipeline: Pipeline | None,
    segments: Mapping[str, Iterable[str]] | None,
) -> dict[str, Facts]:
    """:func:`stored_facts` of the contacts in the registered relation ``_wanted``."""
    rows = con.execute(
        "SELECT c.id, c.stage, c.traits, c.updated_at FROM contacts c JOIN _wanted w ON w.id = c.id"
    ).fetchall()
    events: dict[str, list[tuple[Any, ...]]] = {}
    for row in con.execute(
        "SELECT e.contact_id, e.id, e.name, e.occurred_at, e.received_at, e.properties,"
        " e.context FROM events e JOIN _wanted w ON w.id = e.contact_id ORDER BY e.id"
    ).fetchall():
        events.setdefault(row[0], []).append(row[1:])
    journeys: dict[str, set[str]] = {}
    for cid, journey in con.execute(
        "SELECT j.contact_id, j.journey FROM journey_enrolments j JOIN _wanted w"
        " ON w.id = j.contact_id WHERE j.status = 'active'"
    ).fetchall():
        journeys.setdefault(cid, set()).add(journey)
    received: dict[str, set[str]] = {}
    for cid, content in con.execute(
        "SELECT d.contact_id, d.content_id FROM deliveries d JOIN _wanted w"
        " ON w.id = d.contact_id WHERE d.status = 'sent' AND d.content_id IS NOT NULL"
    ).fetchall():
        received.setdefault(cid, set()).add(content)
    member_sets = {name: set(members) for name, members in (segments or {}).items()}
    out: dict[str, Facts] = {}
    for cid, stage, raw_traits, updated_at in rows:
        row_traits = _json(raw_traits) or {}
        before: dict[str, Any] = {}
        after: dict[str, Any] = {}
        explicit: dict[str, bool] = {}
        history: list[EventRecord] = []
        for _id, name, occurred, received_at, props, context in events.get(cid, []):
            ctx = _json(context)
            given = ctx.get("traits") if isinstance(ctx, dict) else None
            if isinstance(given, dict):
                into = after if received_at > updated_at else before
                into.update({k: v for k, v in given.items() if k != "consent"})
                consent = given.get("consent")
                if isinstance(consent, dict):
                    explicit.update({str(k): bool(v) for k, v in consent.items()})
            if name in CONSENT_EVENTS:
                channel, allowed = CONSENT_EVENTS[name]
                explicit[channel] = allowed
            if name not in SYSTEM_EVENTS:
                properties = _json(props)
                history.append(
                    EventRecord(
                        type=name,
                        at=_aware(occurred),
                        properties=properties if isinstance(properties, dict) else {},
                    )
                )
        traits = {**before, **(row_traits if isinstance(row_traits, dict) else {}), **after}
        traits.pop("merged_into", None)
        counts = Counter(record.type for record in history)
        last_seen: dict[str, datetime] = {}
        for record in history:
            if record.type not in last_seen or record.at > last_seen[record.type]:
                last_seen[record.type] = record.at
        consent = {
            channel: explicit[channel]
            if channel in explicit
            else channel == "email" and bool(traits.get("email"))
            for channel in CHANNELS
        }
        score, letter, half_life = 0.0, None, None
        stages: tuple[str, ...] = ()
        if pipeline is not None:
            state = ScoreState()
            for record in history:
                state, _ = apply_event(pipeline.scoring, state, record)
            score = score_at(pipeline.scoring, state, now) if state.as_of else 0.0
            letter = grade(pipeline.grading, Facts(now=now, attributes=traits)).grade
            stages, half_life = pipeline.stage_names, pipeline.scoring.half_life
        out[cid] = Facts(
            now=now,
            stage=stage or "",
            score=score,
            grade=letter,
            attributes=traits,
            events=tuple(history[-EVENT_WINDOW:]),
            stages=stages,
            score_half_life=half_life,
            consent=consent,
            journeys=frozenset(journeys.get(cid, ())),
            received=frozenset(received.get(cid, ())),
            segments=frozenset(n for n, m in member_sets.items() if cid in m),
            counts=dict(counts),
            last_seen=last_seen,
            contact_id=cid,
        )
    return out


def row_members(
    con: duckdb.DuckDBPyConnection,
    cond: Condition,
    *,
    now: datetime,
    pipeline: Pipeline | None = None,
    segments: Mapping[str, Iterable[str]] | None = None,
    batch: int = BATCH,
) -> list[str]:
    """Ids (sorted) for which ``cond.evaluate`` holds over :func:`stored_facts`,
    ``batch`` contacts at a time.

    Raises:
        NotBackfillable: ``cond`` tests tags, which are not stored.
    """
    tagged = [c for c in walk(cond) if c.kind == "has_tag"]
    if tagged:
        raise NotBackfillable(
            "the condition tests a tag (has_tag), and tags are not stored: the backfill"
            " cannot compute it from history",
            fix="test a trait instead (journeys can set one), or make it a manual segment",
        )
    ids = [row[0] for row in con.execute("SELECT id FROM contacts ORDER BY id").fetchall()]
    kept = {name: set(m) for name, m in (segments or {}).items()}
    found: list[str] = []
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        for cid, facts in stored_facts(
            con, chunk, now=now, pipeline=pipeline, segments=kept
        ).items():
            if cond.evaluate(facts):
                found.append(cid)
    return sorted(found)


# --- evaluating and writing -------------------------------------------------------------


def _reference_members(db: Engine, spec: SegmentSpec) -> dict[str, set[str]]:
    """Members of the read version of each segment ``spec`` names (``in_segment``)."""
    names = spec.references()
    if not names:
        return {}
    versions = read_versions(db)
    out: dict[str, set[str]] = {name: set() for name in names}
    with Session(db) as session:
        for name in names:
            version = versions.get(name)
            if version is None:
                continue
            out[name] = set(
                session.exec(
                    select(SegmentMember.contact_id).where(
                        SegmentMember.segment == name, SegmentMember.version == version
                    )
                ).all()
            )
    return out


def _evaluate(
    con: duckdb.DuckDBPyConnection,
    spec: SegmentSpec,
    *,
    now: datetime,
    pipeline: Pipeline,
    segments: Mapping[str, set[str]],
    batch: int,
) -> tuple[list[str], bool]:
    assert spec.condition is not None
    try:
        found = _sql.members(
            con, spec.condition, now=now, stages=pipeline.stage_names, segments=segments
        )
        return found, True
    except _sql.NotCompilable:
        found = row_members(
            con, spec.condition, now=now, pipeline=pipeline, segments=segments, batch=batch
        )
        return found, False


def preview(
    db: Engine,
    settings: Settings,
    spec: SegmentSpec,
    *,
    sample: int = 10,
    now: datetime | None = None,
    store: AnalyticsStore | None = None,
) -> SegmentPreview:
    """How many contacts ``spec`` would hold now, and up to ``sample`` of them (a stable
    pseudo-random pick). Syncs the analytics store; writes nothing to the database."""
    if spec.manual or spec.condition is None:
        raise NotBackfillable(
            f"segment {spec.name!r} is a manual list: it has no condition to preview",
            fix=f"read its members with 'stagecoach segments members {spec.name}'",
        )
    now = _aware(now or datetime.now(UTC))
    analytics = _store(settings, store)
    analytics.sync(db)
    segments = _reference_members(db, spec)
    with analytics.read() as con:
        found, _ = _evaluate(
            con, spec, now=now, pipeline=_pipeline(settings), segments=segments, batch=BATCH
        )
    picked = sorted(found, key=lambda cid: hashlib.sha256(cid.encode()).digest())[:sample]
    return SegmentPreview(count=len(found), sample=sorted(picked))


def _backfilling(db: Engine, name: str | None) -> list[SegmentVersion]:
    with Session(db) as session:
        query = select(SegmentVersion).where(SegmentVersion.status == BACKFILLING)
        if name is not None:
            query = query.where(SegmentVersion.name == name)
        rows = list(session.exec(query.order_by(col(SegmentVersion.published_at))).all())
        for row in rows:
            session.expunge(row)
    return rows


def _previous(db: Engine, spec: SegmentSpec) -> dict[str, tuple[datetime, str]]:
    """The previous ready version's members: contact id -> (since, reason)."""
    row = ready_version(db, spec.name)
    if row is None or row.version == spec.version:
        return {}
    version = member_version(SegmentSpec.from_dict(row.spec))
    with Session(db) as session:
        return {
            m.contact_id: (m.since, m.reason)
            for m in session.exec(
                select(SegmentMember).where(
                    SegmentMember.segment == spec.name, SegmentMember.version == version
                )
            ).all()
        }


def _insert_ignoring(db: Engine, table: Any, rows: list[dict[str, Any]], session: Session) -> None:
    if not rows:
        return
    dialect = db.dialect.name
    if dialect == "sqlite":
        statement: Any = sqlite.insert(table).on_conflict_do_nothing()
    elif dialect == "postgresql":
        statement = postgresql.insert(table).on_conflict_do_nothing()
    else:  # pragma: no cover - the two databases Stagecoach runs on
        statement = insert(table)
    session.execute(statement, rows)


def _message_id(version: str, contact_id: str) -> str:
    return f"backfill:{version[:24]}:{contact_id}"


def _notify(db: Engine, spec: SegmentSpec, changed: Mapping[str, bool], now: datetime) -> int:
    """Ingest one ``segment.membership`` event per changed contact still stored."""
    if not changed:
        return 0
    ids = sorted(changed)
    stored: set[str] = set()
    with Session(db) as session:
        for start in range(0, len(ids), _IN_CHUNK):
            part = ids[start : start + _IN_CHUNK]
            stored.update(session.exec(select(Contact.id).where(col(Contact.id).in_(part))).all())
    messages = [
        Incoming(
            kind="track",
            message_id=_message_id(spec.version, cid),
            type=MEMBERSHIP,
            occurred_at=now,
            properties={"segment": spec.name, "version": spec.version, "member": member},
            source="backfill",
            contact_id=cid,
        )
        for cid, member in sorted(changed.items())
        if cid in stored
    ]
    if not messages:
        return 0
    [outcomes] = Ingestor(db).store([messages])
    return sum(1 for outcome in outcomes if not outcome.duplicate)


def _decided_by_workflows(db: Engine, spec: SegmentSpec, chunk: Sequence[str]) -> set[str]:
    """Contacts of ``chunk`` whose workflow recorded a change under this version."""
    found: set[str] = set()
    with Session(db) as session:
        for start in range(0, len(chunk), _IN_CHUNK):
            part = chunk[start : start + _IN_CHUNK]
            found.update(
                session.exec(
                    select(SegmentChange.contact_id).where(
                        SegmentChange.version == spec.version,
                        SegmentChange.source == "workflow",
                        col(SegmentChange.contact_id).in_(part),
                    )
                ).all()
            )
    return found


def _member_count(db: Engine, spec: SegmentSpec) -> int:
    with Session(db) as session:
        return int(
            session.exec(
                select(func.count()).where(
                    SegmentMember.segment == spec.name, SegmentMember.version == spec.version
                )
            ).one()
        )


def _write_batch(
    db: Engine,
    spec: SegmentSpec,
    chunk: Sequence[str],
    *,
    now: datetime,
    new: set[str],
    old: Mapping[str, tuple[datetime, str]],
    reason: str,
    skip: set[str],
    fence: Callable[[Connection], None] | None = None,
) -> None:
    """Member rows, change rows and the cursor of one batch, in one transaction
    (contacts in ``skip`` get no row); ``fence`` refuses it if this process's lease on
    the version moved to another."""
    members: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    for cid in chunk:
        if cid in skip:
            continue
        inside, was = cid in new, cid in old
        if inside:
            since, why = old[cid] if was else (now, reason)
            members.append(
                {
                    "segment": spec.name,
                    "version": spec.version,
                    "contact_id": cid,
                    "since": since,
                    "reason": why,
                }
            )
        if inside != was:
            changes.append(
                {
                    "key": f"backfill:{spec.version}:{cid}",
                    "segment": spec.name,
                    "version": spec.version,
                    "contact_id": cid,
                    "entered": inside,
                    "at": now,
                    "reason": reason,
                    "source": "backfill",
                    "actor": None,
                }
            )
    with Session(db) as session:
        _insert_ignoring(db, SegmentMember.__table__, members, session)  # type: ignore[attr-defined]
        _insert_ignoring(db, SegmentChange.__table__, changes, session)  # type: ignore[attr-defined]
        row = session.get(SegmentVersion, spec.version)
        if row is None or row.status != BACKFILLING:
            raise LookupError(f"segment version {spec.version!r} is no longer backfilling")
        row.cursor = chunk[-1]
        session.add(row)
        session.flush()
        if fence is not None:
            fence(session.connection())
        session.commit()


def _retire(db: Engine, versions: Sequence[str]) -> None:
    if not versions:
        return
    with Session(db) as session:
        for version in versions:
            row = session.get(SegmentVersion, version)
            if row is not None and row.status == BACKFILLING:
                row.status = RETIRED
                session.add(row)
        session.commit()


def _version_row(db: Engine, version: str) -> SegmentVersion | None:
    with Session(db) as session:
        row = session.get(SegmentVersion, version)
        if row is not None:
            session.expunge(row)
    return row


def _backfill_one(
    db: Engine,
    analytics: AnalyticsStore,
    spec: SegmentSpec,
    row: SegmentVersion,
    *,
    now: datetime,
    pipeline: Pipeline,
    batch: int,
    notify: bool,
    progress: Callable[[str, int, int], None] | None,
    held: Held,
) -> BackfillResult | None:
    """One version, under ``held`` (its lease); None for a version with nothing to
    compute (manual, or no condition)."""
    segment = spec.name
    started = time.perf_counter()
    if spec.manual or spec.condition is None:
        mark_ready(db, spec.version)
        return None
    with analytics.read() as con:
        found, compiled = _evaluate(
            con,
            spec,
            now=now,
            pipeline=pipeline,
            segments=_reference_members(db, spec),
            batch=batch,
        )
    new = set(found)
    old = _previous(db, spec)
    everyone = sorted(new | set(old))
    resumed = row.cursor
    todo = [cid for cid in everyone if resumed is None or cid > resumed]
    reason = f"backfill of version {spec.version[:12]}"
    notified = 0
    overruled: set[str] = set()
    for start in range(0, len(todo), batch):
        held.keep()
        chunk = todo[start : start + batch]
        # A workflow that already decided under this version saw later facts than
        # the store's copy: its decision stands, and the backfill leaves it alone.
        decided = _decided_by_workflows(db, spec, chunk)
        overruled |= decided
        if notify:
            changed = {
                cid: cid in new
                for cid in chunk
                if (cid in new) != (cid in old) and cid not in decided
            }
            notified += _notify(db, spec, changed, now)
        _write_batch(
            db,
            spec,
            chunk,
            now=now,
            new=new,
            old=old,
            reason=reason,
            skip=decided,
            fence=held.fence,
        )
        if progress is not None:
            progress(segment, len(everyone) - len(todo) + start + len(chunk), len(everyone))
    mark_ready(db, spec.version)
    return BackfillResult(
        segment=segment,
        version=spec.version,
        members=_member_count(db, spec),
        entered=len(new - set(old) - overruled),
        exited=len(set(old) - new - overruled),
        notified=notified,
        compiled=compiled,
        resumed_after=resumed,
        seconds=time.perf_counter() - started,
    )


def backfill(
    db: Engine,
    settings: Settings,
    name: str | None = None,
    *,
    batch: int = BATCH,
    now: datetime | None = None,
    notify: bool = True,
    store: AnalyticsStore | None = None,
    sync: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[BackfillResult]:
    """Backfill every version still ``backfilling`` (of segment ``name`` only, if given),
    referenced segments first. See the module docstring for how; ``notify=False``
    writes the rows without telling the workflows (their next decision catches up);
    ``sync=False`` reads ``store`` as it is (a caller that just synced it).

    ``progress(segment, done, total)`` is called after each batch.

    Raises:
        UnknownSegment: ``name`` is not a published segment (the known ones are named).
        NotBackfillable: a condition tests what history does not hold (tags).
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    pending = _backfilling(db, name)
    if not pending:
        known = sorted(latest_segments(db))
        if name is not None and name not in known:
            raise UnknownSegment(name, known)
        return []
    now = _aware(now or datetime.now(UTC))
    pipeline = _pipeline(settings)
    analytics = _store(settings, store)
    if sync:
        analytics.sync(db)
    # Oldest first, so each name keeps its newest pending version; an older one pending
    # beside it is superseded: retired, never computed (nobody would read it).
    specs = {row.name: SegmentSpec.from_dict(row.spec) for row in pending}
    by_name = {row.name: row for row in pending}
    superseded = [row.version for row in pending if by_name[row.name].version != row.version]
    results: list[BackfillResult] = []
    _retire(db, superseded)
    leases = Leases(db, ttl=settings.lease_seconds)
    for segment in evaluation_order(specs):
        spec = specs[segment]
        # One process per version at a time (two hosts running publish): the other
        # waits, then finds it ready; a run that lost its lease stops before writing.
        with Held(leases, f"{BACKFILL_LEASE}{spec.version}") as held:
            row = _version_row(db, spec.version)
            if row is None or row.status != BACKFILLING:
                continue  # done (or retired) by another process while this one waited
            result = _backfill_one(
                db,
                analytics,
                spec,
                row,
                now=now,
                pipeline=pipeline,
                batch=batch,
                notify=notify,
                progress=progress,
                held=held,
            )
        if result is not None:
            results.append(result)
    return results


__all__ = [
    "BATCH",
    "BackfillResult",
    "NotBackfillable",
    "SegmentPreview",
    "backfill",
    "preview",
    "row_members",
    "stored_facts",
]
