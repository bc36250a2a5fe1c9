"""Journey publishing: validate the bundled definitions and store their compiled specs.

A published journey is a row in ``journey_versions``: the spec's canonical JSON keyed by
its content hash. Enrolments pin that hash, so a contact mid-journey finishes on the
version it started, whatever is published since. ``latest(db, name)`` is the version
new enrolments get.

    validate_definitions(settings)          # every bundled journey, or one error listing all
    publish_bundled(db, settings)           # validate all, then store all (idempotent)
    plan_publish(db, settings)              # what publish_bundled would change, changing nothing
    rollback(db, "b2b_nurture")             # make the version before the latest the latest
    latest(db, "b2b_nurture")               # what a new enrolment pins

Publishing never moves a journey back: a definition that is an older published version
(a worker from an out-of-date image, a stale checkout) is reported and refused, and the
latest stays. Going back is ``rollback``, recorded with source ``rollback``.

This is a composition-level service (the CLI, the API factory and the worker's wiring use
it): it talks to the database, and it reads the project's definitions through
``stagecoach.engine.services.project`` (the team's own repository, or the bundled
example).

Errors (under ``JourneyError`` in the project's tree)::

    JourneyError
     +-- DefinitionError       the bundled pipeline or event catalogue does not load
     +-- JourneyNotFound       no bundled or published journey has that name
     +-- VersionNotFound       no published version matches (or a prefix matches several)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple

import structlog
from sqlalchemy import Engine, func
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from stagecoach.engine.domain.errors import DatabaseError
from stagecoach.engine.domain.journeys import (
    ContentIndex,
    Journey,
    JourneyError,
    JourneySpec,
    JourneyValidationError,
    Problem,
    SpecDiff,
    ValidationContext,
    compile_journey,
    diff_specs,
)
from stagecoach.engine.metrics import JOURNEYS_REFUSED_OLDER
from stagecoach.engine.services.project import load_project
from stagecoach.engine.services.storage.db import driver_reason
from stagecoach.engine.services.storage.models import (
    Contact,
    JourneyEnrolment,
    JourneyVersion,
    utcnow,
)
from stagecoach.engine.settings import Settings

if TYPE_CHECKING:
    from stagecoach.engine.domain.events import EventCatalog
    from stagecoach.engine.domain.pipeline import Pipeline

PUBLISH_HINT = "run 'stagecoach journeys publish'"
ROLLBACK_SOURCE = "rollback"
"""``journey_versions.source`` of a version that a rollback made the latest."""
_log = structlog.get_logger("stagecoach.publishing")
_ATTEMPTS = 3
"""Publishing retries after losing a race to another publisher; the retry sees its rows."""


class DefinitionError(JourneyError):
    """The bundled pipeline or event catalogue does not load or does not validate."""


class JourneyNotFound(JourneyError):
    """No bundled or published journey has the name asked for."""


class VersionNotFound(JourneyError):
    """No published journey version matches the version (or prefix) asked for."""


class DefinitionsInvalid(JourneyValidationError):
    """Several journeys failed validation; ``problems`` lists every problem of all of them.

    Attributes:
        journeys: Names of the journeys with problems, in definition order.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("", problems)
        self.journeys = tuple(dict.fromkeys(p.journey for p in problems))
        self.journey = ", ".join(self.journeys)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        names = ", ".join(repr(j) for j in self.journeys)
        message = f"journeys {names} have {len(self.problems)} problems:\n{lines}"
        self.message = message
        self.args = (message,)


@dataclass(frozen=True)
class PublishResult:
    """What publishing one spec did.

    Attributes:
        name: Journey name.
        version: The spec's content hash.
        created: True when this call stored the version; False when it was there already.
        kept: When the version was published before but is not the latest of its journey
            (an older definition, e.g. from a stale worker image): the latest version,
            which stays the latest. ``None`` otherwise. Only ``rollback`` makes an older
            version the latest again.
    """

    name: str
    version: str
    created: bool
    kept: str | None = None

    @property
    def older(self) -> bool:
        """True when the spec was refused for being older than the latest."""
        return self.kept is not None

    @property
    def status(self) -> str:
        """``created``, ``unchanged`` or ``older``: one word for the CLI."""
        if self.created:
            return "created"
        return "older" if self.older else "unchanged"

    @property
    def note(self) -> str:
        """What an ``older`` result means and how to act on it; empty otherwise."""
        if self.kept is None:
            return ""
        return (
            f"older than the latest: kept {self.kept[:12]}; to make {self.version[:12]} the "
            f"latest, run 'stagecoach journeys rollback {self.name} --to {self.version[:12]}'"
        )


class PublishedVersion(NamedTuple):
    """One published version of a journey, as ``versions`` lists them."""

    version: str
    published_at: datetime
    source: str


# Definitions.


def active_pipeline_of(settings: Settings) -> Pipeline:
    """The project's pipeline, checked against the project's event catalogue.

    Raises:
        ConfigurationError: The project's definitions cannot be found or loaded
            (a :class:`~stagecoach.engine.services.project.ProjectError`).
        DefinitionError: The pipeline names events the catalogue lacks.
    """
    definitions = load_project(settings).definitions
    problems = definitions.pipeline_problems()
    if problems:
        raise DefinitionError(
            f"pipeline {definitions.pipeline.name!r} is invalid: {problems[0].message}",
            fix=problems[0].fix,
        )
    return definitions.pipeline


def _catalog(settings: Settings) -> EventCatalog:
    return load_project(settings).definitions.events


def event_catalog(settings: Settings) -> EventCatalog:
    """The project's event catalogue: every event type with its properties and their
    meaning.

    Raises:
        ConfigurationError: The project's definitions cannot be found or loaded.
    """
    return _catalog(settings)


def bundled_journeys(settings: Settings) -> Mapping[str, Journey]:
    """The project's journeys by name (the bundled example's without a project).

    Raises:
        ConfigurationError: The project's definitions cannot be found or loaded.
    """
    return load_project(settings).definitions.journeys_by_name


def definitions_context(
    settings: Settings,
    *,
    content: ContentIndex | None = None,
    journeys: Mapping[str, Journey] | None = None,
) -> ValidationContext:
    """What the project's journeys are validated against.

    Args:
        settings: Finds the project (``stagecoach.engine.services.project``).
        content: The content library, or ``None`` to skip content checks.
        journeys: Journeys ``enrol`` may target; default: the project's.

    Returns:
        Event types from the catalogue, the pipeline's stages and off-pipeline states,
        the content index and the known journey names.

    Raises:
        ConfigurationError: The project's definitions cannot be found or loaded.
        DefinitionError: The project's pipeline is broken.
    """
    active_pipeline_of(settings)
    ctx = load_project(settings).definitions.context(content)
    if journeys is not None:
        ctx = replace(ctx, known_journeys=frozenset(journeys))
    return ctx


def compile_definitions(
    settings: Settings,
    *,
    content: ContentIndex | None = None,
    journeys: Mapping[str, Journey] | None = None,
) -> tuple[dict[str, JourneySpec], list[Problem]]:
    """Compile every journey, collecting problems instead of stopping at the first.

    Args:
        settings: Finds the project.
        content: The content library, or ``None`` to skip content checks.
        journeys: Journeys to compile; default: the project's.

    Returns:
        The specs of the journeys that compiled, and every problem of those that did not.
    """
    journeys = journeys if journeys is not None else bundled_journeys(settings)
    ctx = definitions_context(settings, content=content, journeys=journeys)
    specs: dict[str, JourneySpec] = {}
    problems: list[Problem] = []
    for name, journey in journeys.items():
        if name != journey.name:
            problems.append(
                Problem(
                    journey.name,
                    "journey",
                    f"is registered under the name {name!r}",
                    "register each journey under its own name",
                )
            )
            continue
        try:
            specs[name] = compile_journey(journey, ctx)
        except JourneyValidationError as exc:
            problems.extend(exc.problems)
    return specs, problems


def validate_definitions(
    settings: Settings,
    *,
    content: ContentIndex | None = None,
    journeys: Mapping[str, Journey] | None = None,
) -> dict[str, JourneySpec]:
    """Validate everything loadable: the active pipeline and every bundled journey.

    Args:
        settings: Picks the active pipeline.
        content: The content library, or ``None`` to skip content checks.
        journeys: Journeys to validate; default: the bundled ones.

    Returns:
        Every journey's compiled spec, by name.

    Raises:
        JourneyValidationError: Listing every problem of every journey (a
            ``DefinitionsInvalid`` when more than one journey has problems).
        ConfigurationError: The configured pipeline does not exist.
        DefinitionError: The bundled pipeline or catalogue is broken.
    """
    specs, problems = compile_definitions(settings, content=content, journeys=journeys)
    if problems:
        names = {p.journey for p in problems}
        if len(names) == 1:
            raise JourneyValidationError(names.pop(), problems)
        raise DefinitionsInvalid(problems)
    return specs


# Publishing.


@contextmanager
def _database(db: Engine, doing: str) -> Iterator[None]:
    """Translate driver errors (a missing table, an unreachable server) into ours."""
    try:
        yield
    except IntegrityError:
        raise
    except SADatabaseError as exc:
        shown = db.url.render_as_string(hide_password=True)
        raise DatabaseError(
            f"cannot {doing} in {shown}: {driver_reason(exc)}",
            fix="check the database is reachable and migrated ('stagecoach db upgrade'), "
            f"then {PUBLISH_HINT}",
        ) from exc


def publish(db: Engine, spec: JourneySpec, *, source: str = "bundled") -> PublishResult:
    """Store one compiled spec under its version; see ``publish_many``."""
    return publish_many(db, [spec], source=source)[0]


def publish_many(
    db: Engine, specs: Sequence[JourneySpec], *, source: str = "bundled"
) -> list[PublishResult]:
    """Store compiled specs under their versions, all in one transaction.

    Idempotent: a version already stored is not stored again. A stored version that is
    not the latest of its journey is refused, not reinstated: the latest stays, and the
    result says so (``older``). Publishing runs on every worker start, so a worker from an
    out-of-date image must not roll journeys back; ``rollback`` does that on purpose.
    Safe against concurrent publishers: losing the insert race (an IntegrityError on the
    version key) rolls back and retries, and the retry finds the other publisher's rows.

    Args:
        db: A migrated database.
        specs: Compiled (hence validated) specs.
        source: Where the specs came from, e.g. ``bundled``.

    Returns:
        One result per spec, in order.

    Raises:
        DatabaseError: The database is unreachable or not migrated.
    """
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with _database(db, "publish journeys"), Session(db) as session:
                results = [_publish_one(session, spec, source) for spec in specs]
                session.commit()
                return results
        except IntegrityError:
            if attempt == _ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _publish_one(session: Session, spec: JourneySpec, source: str) -> PublishResult:
    row = session.get(JourneyVersion, spec.version)
    if row is None:
        session.add(
            JourneyVersion(
                version=spec.version,
                name=spec.name,
                spec=spec.to_dict(),
                source=source,
                published_at=utcnow(),
            )
        )
        # Flush now so a concurrent publisher's row surfaces here as IntegrityError.
        session.flush()
        return PublishResult(spec.name, spec.version, created=True)
    newest = _newest_row(session, spec.name)
    if newest is not None and newest.version != spec.version:
        return PublishResult(spec.name, spec.version, created=False, kept=newest.version)
    return PublishResult(spec.name, spec.version, created=False)


def publish_bundled(
    db: Engine,
    settings: Settings,
    *,
    content: ContentIndex | None = None,
    journeys: Mapping[str, Journey] | None = None,
    source: str = "bundled",
) -> list[PublishResult]:
    """Validate every bundled journey, then publish them all.

    Validation comes first for all of them: when any journey is refused, nothing of this
    call is published. A journey whose bundled definition is an older published version
    keeps its latest version; each such journey is logged as a WARNING and counted in
    ``stagecoach_journeys_refused_older_total`` (the worker publishes at start, and a
    worker from an out-of-date image is how an older definition arrives).

    Args:
        db: A migrated database.
        settings: Picks the active pipeline.
        content: The content library, or ``None`` to skip content checks.
        journeys: Journeys to publish; default: the bundled ones.
        source: Recorded with each version this call stores (``journeys versions``
            shows it): ``bundled`` for the worker and ``journeys publish``,
            ``deploy <project version>@<commit>`` for ``stagecoach deploy``.

    Returns:
        One result per journey, in definition order.

    Raises:
        JourneyValidationError: Listing every problem; nothing was published.
        DatabaseError: The database is unreachable or not migrated.
    """
    specs = validate_definitions(settings, content=content, journeys=journeys)
    results = publish_many(db, list(specs.values()), source=source)
    if journeys is None:
        # The project's segments go with its journeys (validated with them above).
        from stagecoach.engine.services.segments.catalog import publish_segments

        segments = load_project(settings).definitions.segment_specs()
        publish_segments(db, list(segments.values()), source=source)
    for result in results:
        if result.kept is not None:
            _log.warning(
                "older journey definition not published: the latest stays",
                journey=result.name,
                stale_version=result.version,
                latest_version=result.kept,
                fix=f"deploy the current definitions, or run 'stagecoach journeys rollback "
                f"{result.name} --to {result.version[:12]}' to go back on purpose",
            )
            JOURNEYS_REFUSED_OLDER.labels(journey=result.name).inc()
    return results


# Rolling back, and planning a publish.


@dataclass(frozen=True)
class Rollback:
    """What ``rollback`` did.

    Attributes:
        name: Journey name.
        from_version: The latest version before the rollback.
        to_version: The latest version now (equal to ``from_version``: nothing changed).
        at: When ``to_version`` became the latest (its row's ``published_at``).
        by: Who asked, when known (it goes to the log, not the row).
        diff: What changed for new enrolments: ``from_version`` -> ``to_version``.
        in_flight: Active enrolments of the journey by pinned version; they keep it.
    """

    name: str
    from_version: str
    to_version: str
    at: datetime
    by: str | None
    diff: SpecDiff
    in_flight: Mapping[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """False when the version asked for was already the latest."""
        return self.from_version != self.to_version


def rollback(db: Engine, name: str, to: str | None = None, *, by: str | None = None) -> Rollback:
    """Make an earlier published version of journey ``name`` its latest again, on purpose.

    The version's row moves to now and is marked ``source='rollback'``, so
    ``versions`` shows when and how it became the latest. Enrolments in flight keep the
    version they pinned; new enrolments get ``to``. Publishing the definition rolled back
    from is refused afterwards (it is older than the latest): to go forward again, roll
    back ``--to`` it, or publish a new definition.

    Args:
        db: A migrated database.
        name: Journey name.
        to: A published version of that journey: the full hash or a unique prefix of 6+
            characters. ``None``: the version published before the latest.
        by: Who asks (logged with the rollback).

    Raises:
        JourneyNotFound: Nothing is published under ``name``.
        VersionNotFound: ``to`` matches no version of the journey (or several), or the
            journey has no earlier version to go back to.
        DatabaseError: The database is unreachable or not migrated.
    """
    with _database(db, "roll back a journey"), Session(db) as session:
        rows = list(
            session.exec(
                select(JourneyVersion)
                .where(JourneyVersion.name == name)
                .order_by(col(JourneyVersion.published_at).desc(), col(JourneyVersion.version))
            ).all()
        )
        if not rows:
            published = session.exec(select(JourneyVersion.name).distinct()).all()
            raise JourneyNotFound(
                f"journey {name!r} has no published version to roll back",
                fix=f"name a published journey ({closest_names(name, list(published))})",
            )
        current = rows[0]
        target = _rollback_target(session, name, rows, to)
        at = _aware(current.published_at)
        if target.version != current.version:
            # Strictly after the old latest, so ``latest`` cannot tie on a coarse clock.
            at = max(utcnow(), at + timedelta(microseconds=1))
            target.published_at = at
            target.source = ROLLBACK_SOURCE
            session.add(target)
            session.commit()
            _log.info(
                "journey rolled back",
                journey=name,
                from_version=current.version,
                to_version=target.version,
                by=by or "unknown",
            )
        return Rollback(
            name,
            current.version,
            target.version,
            at,
            by,
            diff_specs(_to_spec(current), _to_spec(target)),
            _in_flight(session, name),
        )


def _rollback_target(
    session: Session, name: str, rows: Sequence[JourneyVersion], to: str | None
) -> JourneyVersion:
    listing = f"'stagecoach journeys versions {name}'"
    if to is None:
        if len(rows) < 2:
            raise VersionNotFound(
                f"journey {name!r} has one published version ({rows[0].version[:12]}): "
                "there is no earlier version to roll back to",
                fix="change the definition and publish it ('stagecoach journeys publish')",
            )
        return rows[1]
    exact = [r for r in rows if r.version == to]
    if exact:
        return exact[0]
    if len(to) < 6:
        raise VersionNotFound(
            f"--to {to!r} is too short to name a version of journey {name!r}",
            fix=f"give the full sha256 or a prefix of 6+ characters (see {listing})",
        )
    matches = [r for r in rows if r.version.startswith(to)]
    if len(matches) > 1:
        raise VersionNotFound(
            f"--to {to!r} matches {len(matches)} versions of journey {name!r}",
            fix="give more characters of the version",
        )
    if matches:
        return matches[0]
    other = session.exec(
        select(JourneyVersion.name).where(
            col(JourneyVersion.version).startswith(to, autoescape=True)
        )
    ).first()
    if other is not None:
        raise VersionNotFound(
            f"--to {to!r} is a version of journey {other!r}, not {name!r}",
            fix=f"give a version of {name!r} (see {listing})",
        )
    raise VersionNotFound(
        f"journey {name!r} has no published version {to!r}",
        fix=f"give one of the versions {listing} lists (the full sha256 or a prefix of 6+ "
        "characters)",
    )


def _in_flight(session: Session, name: str) -> dict[str, int]:
    """Active enrolments of journey ``name`` by pinned version; rehearsals left out."""
    rows = session.exec(
        select(JourneyEnrolment.version, func.count())
        .join(Contact, col(Contact.id) == col(JourneyEnrolment.contact_id))
        .where(
            JourneyEnrolment.journey == name,
            JourneyEnrolment.status == "active",
            col(Contact.rehearsal).is_(False),
        )
        .group_by(col(JourneyEnrolment.version))
        .order_by(col(JourneyEnrolment.version))
    ).all()
    return {version: count for version, count in rows}


PLAN_STATUSES = ("new", "changed", "unchanged", "older")
"""What publishing a journey's definition would do, in ``PlannedChange.status``."""


@dataclass(frozen=True)
class PlannedChange:
    """What publishing one journey's current definition would do.

    Attributes:
        name: Journey name.
        status: ``new`` (never published), ``changed`` (a version not published yet
            becomes the latest), ``unchanged`` (it is the latest) or ``older`` (an
            older published version: publishing would refuse it and keep the latest).
        version: The definition's version.
        latest: The latest published version, or ``None`` for a new journey.
        diff: For ``changed`` and ``older``: latest -> definition, step by step.
        in_flight: Active enrolments of the journey by pinned version (rehearsals left
            out); they keep their versions whatever is published.
    """

    name: str
    status: str
    version: str
    latest: str | None
    diff: SpecDiff | None = None
    in_flight: Mapping[str, int] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        """True when publishing would change what new enrolments get."""
        return self.status in ("new", "changed")

    @property
    def in_flight_on_latest(self) -> int:
        """Active enrolments pinned to the current latest version."""
        return self.in_flight.get(self.latest, 0) if self.latest else 0


def plan_publish(
    db: Engine | None,
    settings: Settings,
    *,
    content: ContentIndex | None = None,
    journeys: Mapping[str, Journey] | None = None,
) -> list[PlannedChange]:
    """What ``publish_bundled`` would change, per journey, changing nothing.

    Args:
        db: The database publishing would write to, or ``None`` when it does not exist
            yet (every journey is then new). An empty database counts as nothing
            published; publishing migrates it first.
        settings: Picks the active pipeline.
        content: The content library, or ``None`` to skip content checks.
        journeys: Journeys to plan for; default: the bundled ones.

    Returns:
        One entry per journey, in definition order.

    Raises:
        JourneyValidationError: Listing every problem (publishing would refuse them all).
        DatabaseError: The database is unreachable, or migrated only in part.
    """
    from stagecoach.engine.services.storage import current_revision

    specs = validate_definitions(settings, content=content, journeys=journeys)
    if db is None:
        return [PlannedChange(n, "new", s.version, None) for n, s in specs.items()]
    out: list[PlannedChange] = []
    with _database(db, "read journey versions"):
        if current_revision(db) is None:
            return [PlannedChange(n, "new", s.version, None) for n, s in specs.items()]
        with Session(db) as session:
            for name, spec in specs.items():
                newest = _newest_row(session, name)
                if newest is None:
                    out.append(PlannedChange(name, "new", spec.version, None))
                    continue
                flight = _in_flight(session, name)
                if newest.version == spec.version:
                    out.append(
                        PlannedChange(name, "unchanged", spec.version, newest.version, None, flight)
                    )
                    continue
                known = session.get(JourneyVersion, spec.version) is not None
                out.append(
                    PlannedChange(
                        name,
                        "older" if known else "changed",
                        spec.version,
                        newest.version,
                        diff_specs(_to_spec(newest), spec),
                        flight,
                    )
                )
    return out


# Reading.


def _newest_row(session: Session, name: str) -> JourneyVersion | None:
    statement = (
        select(JourneyVersion)
        .where(JourneyVersion.name == name)
        .order_by(col(JourneyVersion.published_at).desc(), col(JourneyVersion.version))
        .limit(1)
    )
    return session.exec(statement).first()


def _to_spec(row: JourneyVersion) -> JourneySpec:
    spec = JourneySpec.from_dict(row.spec)
    if spec.version != row.version:
        from stagecoach.engine.domain.journeys import SpecFormatError

        raise SpecFormatError(
            f"journey version row {row.version} holds a spec whose content is {spec.version}",
            fix=f"do not edit journey_versions by hand; {PUBLISH_HINT}",
        )
    return spec


def latest(db: Engine, name: str) -> JourneySpec:
    """The most recently published version of journey ``name``.

    Raises:
        JourneyNotFound: Nothing is published under that name.
        DatabaseError: The database is unreachable or not migrated.
    """
    with _database(db, "read journey versions"), Session(db) as session:
        row = _newest_row(session, name)
        if row is None:
            raise JourneyNotFound(f"journey {name!r} has no published version", fix=PUBLISH_HINT)
        return _to_spec(row)


def get_version(db: Engine, version: str) -> JourneySpec:
    """The published spec with ``version``: the full hash or a unique prefix (6+ chars).

    Raises:
        VersionNotFound: No version matches, or a prefix matches several.
        DatabaseError: The database is unreachable or not migrated.
    """
    with _database(db, "read journey versions"), Session(db) as session:
        row = session.get(JourneyVersion, version)
        if row is None and len(version) >= 6:
            rows = session.exec(
                select(JourneyVersion)
                .where(col(JourneyVersion.version).startswith(version, autoescape=True))
                .limit(2)
            ).all()
            if len(rows) > 1:
                raise VersionNotFound(
                    f"journey version prefix {version!r} matches several versions",
                    fix="give more characters of the version",
                )
            row = rows[0] if rows else None
        if row is None:
            raise VersionNotFound(
                f"no published journey version {version!r}",
                fix="list them with 'stagecoach journeys versions NAME'; give the full sha256 "
                "or a unique prefix of 6+ characters",
            )
        return _to_spec(row)


def versions(db: Engine, name: str) -> list[PublishedVersion]:
    """Every published version of journey ``name``, newest first.

    Raises:
        DatabaseError: The database is unreachable or not migrated.
    """
    with _database(db, "read journey versions"), Session(db) as session:
        rows = session.exec(
            select(JourneyVersion)
            .where(JourneyVersion.name == name)
            .order_by(col(JourneyVersion.published_at).desc(), col(JourneyVersion.version))
        ).all()
        return [PublishedVersion(r.version, _aware(r.published_at), r.source) for r in rows]


def latest_versions(db: Engine) -> dict[str, PublishedVersion]:
    """The newest published version of every journey, by name.

    Raises:
        DatabaseError: The database is unreachable or not migrated.
    """
    with _database(db, "read journey versions"), Session(db) as session:
        newest = (
            select(
                JourneyVersion.name,
                func.max(JourneyVersion.published_at).label("published_at"),
            )
            .group_by(JourneyVersion.name)
            .subquery()
        )
        rows = session.exec(
            select(JourneyVersion)
            .join(
                newest,
                (col(JourneyVersion.name) == newest.c.name)
                & (col(JourneyVersion.published_at) == newest.c.published_at),
            )
            .order_by(col(JourneyVersion.version))
        ).all()
        out: dict[str, PublishedVersion] = {}
        for r in rows:
            out.setdefault(r.name, PublishedVersion(r.version, _aware(r.published_at), r.source))
        return out


def _aware(at: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def closest_names(name: str, known: Sequence[str]) -> str:
    """``did you mean 'x'`` or ``known: 'a', 'b'``: the tail of a not-found fix."""
    close = difflib.get_close_matches(name, list(known), n=3)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close)
    shown = sorted(known)
    more = f", ... ({len(shown) - 6} more)" if len(shown) > 6 else ""
    return "known: " + (", ".join(repr(k) for k in shown[:6]) or "none") + more


__all__ = [
    "PLAN_STATUSES",
    "PUBLISH_HINT",
    "ROLLBACK_SOURCE",
    "DefinitionError",
    "DefinitionsInvalid",
    "JourneyNotFound",
    "PlannedChange",
    "PublishResult",
    "PublishedVersion",
    "Rollback",
    "VersionNotFound",
    "active_pipeline_of",
    "bundled_journeys",
    "closest_names",
    "compile_definitions",
    "definitions_context",
    "get_version",
    "latest",
    "latest_versions",
    "plan_publish",
    "publish",
    "publish_bundled",
    "publish_many",
    "rollback",
    "validate_definitions",
]
