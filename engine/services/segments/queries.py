"""Reading segments: the catalogue, members, size over time, and a contact's segments.

Every reader sees one version per segment: the newest **ready** one (``catalog``), or
``list`` for a manual segment. Rows of other versions (a backfill in progress, a retired
version) are never counted, so old and new definitions never mix in an answer.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.domain.segments import SegmentSpec
from stagecoach.engine.services.segments.catalog import (
    MANUAL_VERSION,
    READY,
    latest_segments,
)
from stagecoach.engine.services.storage.models import (
    SegmentChange,
    SegmentMember,
    SegmentVersion,
)


class UnknownSegment(StagecoachError, LookupError):
    """No published segment has this name; ``known`` lists those that exist."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        super().__init__(
            f"segment {name!r} is not published{hint}",
            fix="use one of: "
            + (", ".join(known) if known else "none yet (deploy a project with segments)"),
        )


@dataclass(frozen=True)
class SegmentSummary:
    """One segment as the catalogue shows it.

    Attributes:
        name: The segment.
        description: What it is.
        manual: A list fed by upload or the API.
        searchable: Listed in the ``Segments`` search attribute.
        version: Its newest published version (what workflows decide by).
        ready_version: The version whose members are read (``list`` for manual ones),
            or ``None`` while the first backfill runs.
        status: ``ready``, or ``backfilling`` while the newest version is computed.
        members: Members of ``ready_version``.
        spec: The newest published spec.
    """

    name: str
    description: str
    manual: bool
    searchable: bool
    version: str
    ready_version: str | None
    status: str
    members: int
    spec: SegmentSpec

    def to_dict(self) -> dict[str, Any]:
        """The summary as the CLI's ``--json`` and the API answer it."""
        return {
            "name": self.name,
            "description": self.description,
            "kind": "manual" if self.manual else "computed",
            "searchable": self.searchable,
            "version": self.version,
            "ready_version": self.ready_version,
            "status": self.status,
            "members": self.members,
            "condition": self.spec.to_dict()["condition"],
        }


@dataclass(frozen=True)
class MemberRow:
    contact_id: str
    since: datetime
    reason: str


@dataclass(frozen=True)
class DayCount:
    """One day of a segment: entries, exits, and its size at the day's end (UTC)."""

    day: date
    entered: int
    exited: int
    size: int


@dataclass(frozen=True)
class ContactSegment:
    """A segment a contact is in: since when, and why."""

    segment: str
    version: str
    since: datetime
    reason: str


def _read_versions(session: Session) -> dict[str, str]:
    """Segment name -> the member version read for it."""
    rows = session.exec(select(SegmentVersion).where(SegmentVersion.status == READY)).all()
    newest: dict[str, SegmentVersion] = {}
    for row in rows:
        held = newest.get(row.name)
        if held is None or (row.ready_at or row.published_at) > (
            held.ready_at or held.published_at
        ):
            newest[row.name] = row
    return {
        name: MANUAL_VERSION if bool(row.spec.get("manual")) else row.version
        for name, row in newest.items()
    }


def read_versions(db: Engine) -> dict[str, str]:
    """Segment name -> the version whose member rows answer for it."""
    with Session(db) as session:
        return _read_versions(session)


def segment_summaries(db: Engine) -> list[SegmentSummary]:
    """Every published segment, by name."""
    specs = latest_segments(db)
    with Session(db) as session:
        versions = _read_versions(session)
        exact = {
            name: int(
                session.exec(
                    select(func.count()).where(
                        SegmentMember.segment == name, SegmentMember.version == version
                    )
                ).one()
            )
            for name, version in versions.items()
        }
        newest_status = {
            row.version: row.status for row in session.exec(select(SegmentVersion)).all()
        }
    out: list[SegmentSummary] = []
    for name, spec in sorted(specs.items()):
        read = versions.get(name)
        out.append(
            SegmentSummary(
                name=name,
                description=spec.description,
                manual=spec.manual,
                searchable=spec.searchable,
                version=spec.version,
                ready_version=read,
                status=newest_status.get(spec.version, READY),
                members=exact.get(name, 0),
                spec=spec,
            )
        )
    return out


def segment_summary(db: Engine, name: str) -> SegmentSummary:
    """One segment; :class:`UnknownSegment` naming the known ones if it does not exist."""
    summaries = segment_summaries(db)
    for summary in summaries:
        if summary.name == name:
            return summary
    raise UnknownSegment(name, [s.name for s in summaries])


def _require(db: Engine, name: str) -> None:
    """Raise :class:`UnknownSegment` unless ``name`` is published (no member counts)."""
    known = latest_segments(db)
    if name not in known:
        raise UnknownSegment(name, sorted(known))


def members(
    db: Engine, name: str, *, after: str | None = None, limit: int = 100
) -> list[MemberRow]:
    """Members of the segment's read version, by contact id, ``limit`` after ``after``
    (keyset pagination: pass the last id of a page to get the next)."""
    _require(db, name)
    with Session(db) as session:
        version = _read_versions(session).get(name)
        if version is None:
            return []
        query = select(SegmentMember).where(
            SegmentMember.segment == name, SegmentMember.version == version
        )
        if after is not None:
            query = query.where(col(SegmentMember.contact_id) > after)
        rows = session.exec(query.order_by(col(SegmentMember.contact_id)).limit(limit)).all()
        return [MemberRow(r.contact_id, r.since, r.reason) for r in rows]


def daily_activity(
    db: Engine, name: str, *, days: int = 30, now: datetime | None = None
) -> list[DayCount]:
    """Entries, exits and size per UTC day for the last ``days`` days (oldest first).

    Entries and exits are the changes of the segment's read version. The size is counted
    back from the version's members now (each later entry taken off, each later exit put
    back), so members a new version carried over from the old one, which are not entries
    of it, count from the start."""
    _require(db, name)
    now = now or datetime.now(UTC)
    first = (now - timedelta(days=days - 1)).date()
    with Session(db) as session:
        version = _read_versions(session).get(name)
        if version is None:
            return [DayCount(first + timedelta(days=n), 0, 0, 0) for n in range(days)]
        current = int(
            session.exec(
                select(func.count()).where(
                    SegmentMember.segment == name, SegmentMember.version == version
                )
            ).one()
        )
        rows = session.exec(
            select(SegmentChange.entered, SegmentChange.at).where(
                SegmentChange.segment == name, SegmentChange.version == version
            )
        ).all()
    entered: dict[date, int] = {}
    exited: dict[date, int] = {}
    for is_entry, at in rows:
        day = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).date()
        bucket = entered if is_entry else exited
        bucket[day] = bucket.get(day, 0) + 1
    # Net change after each day, counted from the newest change backwards.
    last = max([*entered, *exited, now.date()])
    size = current
    sizes: dict[date, int] = {}
    day = last
    while day >= first:
        sizes[day] = size
        size -= entered.get(day, 0) - exited.get(day, 0)
        day -= timedelta(days=1)
    return [
        DayCount(
            first + timedelta(days=n),
            entered.get(first + timedelta(days=n), 0),
            exited.get(first + timedelta(days=n), 0),
            sizes[first + timedelta(days=n)],
        )
        for n in range(days)
    ]


def contact_segments(db: Engine, contact_id: str) -> list[ContactSegment]:
    """The segments a contact is in (read versions only), with since when and why."""
    with Session(db) as session:
        versions = _read_versions(session)
        rows = session.exec(
            select(SegmentMember)
            .where(SegmentMember.contact_id == contact_id)
            .order_by(col(SegmentMember.since))
        ).all()
    return [
        ContactSegment(r.segment, r.version, r.since, r.reason)
        for r in rows
        if versions.get(r.segment) == r.version
    ]


__all__ = [
    "ContactSegment",
    "DayCount",
    "MemberRow",
    "SegmentSummary",
    "UnknownSegment",
    "contact_segments",
    "daily_activity",
    "members",
    "read_versions",
    "segment_summaries",
    "segment_summary",
]
