"""Published segment versions: storing a project's segments, and reading them back.

A segment's version is its spec's content hash (``SegmentSpec.version``). Publishing
stores a version once; like journeys, a version already stored that is not the newest of
its segment is refused, never reinstated (a worker from an out-of-date image publishes
at start too).

Two readers, two answers:

- the contact workflows decide membership by each segment's **newest published**
  version (:func:`latest_segments`), from the moment it is published;
- people and broadcasts read members of each segment's **newest ready** version
  (:func:`ready_version`): a new computed version is ``backfilling`` until its backfill
  from stored history completes, so nobody sees a half-computed audience. A manual
  segment, or the first version of a segment published before any contact exists, is
  ready at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from stagecoach.engine.domain.segments import MANUAL_VERSION, SegmentSpec
from stagecoach.engine.services.storage.models import Contact, SegmentVersion

BACKFILLING = "backfilling"
READY = "ready"
RETIRED = "retired"


_ATTEMPTS = 3


@dataclass(frozen=True)
class SegmentPublished:
    """What publishing one segment did.

    Attributes:
        name: The segment.
        version: The version offered.
        created: A new version was stored.
        status: The stored version's status (``backfilling`` or ``ready``).
        kept: When the offered version is an older one: the newest, which stays.
    """

    name: str
    version: str
    created: bool
    status: str
    kept: str | None = None


def publish_segments(
    db: Engine, specs: Sequence[SegmentSpec], *, source: str = "bundled"
) -> list[SegmentPublished]:
    """Store each spec's version, all in one transaction (idempotent)."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with Session(db) as session:
                anyone = session.exec(select(Contact.id).limit(1)).first() is not None
                results = [_publish_one(session, spec, source, anyone) for spec in specs]
                session.commit()
                return results
        except IntegrityError:
            if attempt == _ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _newest(session: Session, name: str) -> SegmentVersion | None:
    return session.exec(
        select(SegmentVersion)
        .where(SegmentVersion.name == name)
        .order_by(col(SegmentVersion.published_at).desc(), col(SegmentVersion.version))
        .limit(1)
    ).first()


def _publish_one(
    session: Session, spec: SegmentSpec, source: str, contacts_exist: bool
) -> SegmentPublished:
    row = session.get(SegmentVersion, spec.version)
    if row is not None:
        newest = _newest(session, spec.name)
        kept = newest.version if newest is not None and newest.version != spec.version else None
        return SegmentPublished(spec.name, spec.version, False, row.status, kept)
    # With no contact yet there is no history to compute members from.
    ready = spec.manual or not contacts_exist
    now = datetime.now(UTC)
    session.add(
        SegmentVersion(
            version=spec.version,
            name=spec.name,
            spec=spec.to_dict(),
            status=READY if ready else BACKFILLING,
            source=source,
            published_at=now,
            ready_at=now if ready else None,
        )
    )
    if ready:
        _retire_older(session, spec.name, spec.version)
    session.flush()
    return SegmentPublished(spec.name, spec.version, True, READY if ready else BACKFILLING)


def _retire_older(session: Session, name: str, version: str) -> None:
    for older in session.exec(
        select(SegmentVersion).where(
            SegmentVersion.name == name,
            SegmentVersion.version != version,
            SegmentVersion.status == READY,
        )
    ):
        older.status = RETIRED
        session.add(older)


def mark_ready(db: Engine, version: str) -> None:
    """A backfill finished: this version is what readers see now; older ones retire."""
    with Session(db) as session:
        row = session.get(SegmentVersion, version)
        if row is None:
            raise LookupError(f"segment version {version!r} is not published")
        row.status = READY
        row.ready_at = datetime.now(UTC)
        session.add(row)
        _retire_older(session, row.name, version)
        session.commit()


def latest_segments(db: Engine) -> dict[str, SegmentSpec]:
    """Each segment's newest published version, by name: what workflows decide by."""
    with Session(db) as session:
        newest = (
            select(SegmentVersion.name, func.max(SegmentVersion.published_at).label("at"))
            .group_by(col(SegmentVersion.name))
            .subquery()
        )
        rows = session.exec(
            select(SegmentVersion)
            .join(
                newest,
                (col(SegmentVersion.name) == newest.c.name)
                & (col(SegmentVersion.published_at) == newest.c.at),
            )
            .order_by(col(SegmentVersion.name), col(SegmentVersion.version))
        ).all()
        found: dict[str, SegmentSpec] = {}
        for row in rows:
            found.setdefault(row.name, SegmentSpec.from_dict(row.spec))
        return found


def ready_version(db: Engine, name: str) -> SegmentVersion | None:
    """The version of ``name`` whose members people see: the newest ready one."""
    with Session(db) as session:
        return session.exec(
            select(SegmentVersion)
            .where(SegmentVersion.name == name, SegmentVersion.status == READY)
            .order_by(col(SegmentVersion.ready_at).desc())
            .limit(1)
        ).first()


def member_version(spec: SegmentSpec) -> str:
    """The version a segment's member rows carry: its own, or ``list`` for a manual one."""
    return MANUAL_VERSION if spec.manual else spec.version


__all__ = [
    "BACKFILLING",
    "MANUAL_VERSION",
    "READY",
    "RETIRED",
    "SegmentPublished",
    "latest_segments",
    "mark_ready",
    "member_version",
    "publish_segments",
    "ready_version",
]
