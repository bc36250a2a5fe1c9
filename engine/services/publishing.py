"""Journey publishing: validate the bundled definitions and store their compiled specs.

A published journey is a row in ``journey_versions``: the spec's canonical JSON keyed by
its content hash. Enrolments pin that hash, so a contact mid-journey finishes on the
version it started, whatever is published since. ``latest(db, name)`` is the version
new enrolments get.

    validate_definitions(settings)          # every bundled journey, or one error listing all
    publish_bundled(db, settings)           # validate all, then store all (idempotent)
    latest(db, "b2b_nurture")               # what a new enrolment pins

This is a composition-level service (the CLI, the API factory and the worker's wiring use
it): it talks to the database, and it reads the marketers' definitions in ``workflows``.
``engine`` must not import ``workflows`` at import time, so those imports happen inside
the functions that need them.

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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

from sqlalchemy import Engine, func
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from stagecoach.engine.domain.errors import ConfigurationError, DatabaseError
from stagecoach.engine.domain.journeys import (
    ContentIndex,
    Journey,
    JourneyError,
    JourneySpec,
    JourneyValidationError,
    Problem,
    ValidationContext,
    compile_journey,
)
from stagecoach.engine.services.storage.db import driver_reason
from stagecoach.engine.services.storage.models import JourneyVersion, utcnow
from stagecoach.engine.settings import Settings

if TYPE_CHECKING:
    from stagecoach.engine.domain.events import EventCatalog
    from stagecoach.engine.domain.pipeline import Pipeline

PUBLISH_HINT = "run 'stagecoach journeys publish'"
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
        reinstated: True when the version existed but was not the latest of its journey
            (a rollback to an earlier definition); it is the latest again now.
    """

    name: str
    version: str
    created: bool
    reinstated: bool = False

    @property
    def status(self) -> str:
        """``created``, ``reinstated`` or ``unchanged``: one word for the CLI."""
        if self.created:
            return "created"
        return "reinstated" if self.reinstated else "unchanged"


class PublishedVersion(NamedTuple):
    """One published version of a journey, as ``versions`` lists them."""

    version: str
    published_at: datetime
    source: str


# Definitions.


def active_pipeline_of(settings: Settings) -> Pipeline:
    """The pipeline ``settings.pipeline`` names, checked against the event catalogue.

    Raises:
        ConfigurationError: No bundled pipeline has that name.
        DefinitionError: The bundled definitions do not load or do not validate.
    """
    from stagecoach.engine.domain.pipeline import PipelineDefinitionError

    catalog = _catalog()
    from stagecoach.workflows.pipeline import PIPELINES, active_pipeline

    try:
        pipeline = active_pipeline(settings.pipeline)
    except PipelineDefinitionError as exc:
        raise ConfigurationError(
            f"STAGECOACH_PIPELINE={settings.pipeline!r} names no bundled pipeline",
            fix=f"set it to one of {', '.join(repr(p) for p in sorted(PIPELINES))}",
        ) from exc
    try:
        pipeline.check_events(catalog)
    except PipelineDefinitionError as exc:
        raise DefinitionError(
            f"pipeline {pipeline.name!r} is invalid: {exc}", fix="correct workflows/pipeline.py"
        ) from exc
    return pipeline


def _catalog() -> EventCatalog:
    # Lazy: engine imports workflows only from composition roots, at call time. Importing
    # the pipeline module validates every pipeline, so a broken one fails here.
    from stagecoach.engine.domain.events import EventCatalogError
    from stagecoach.engine.domain.pipeline import PipelineError

    try:
        from stagecoach.workflows.events import CATALOG
        from stagecoach.workflows.pipeline import PIPELINES  # noqa: F401  (validates on import)
    except (PipelineError, EventCatalogError) as exc:
        raise DefinitionError(
            f"the bundled pipelines or event catalogue do not load: {exc}",
            fix="correct workflows/pipeline.py or workflows/events.py as the message says",
        ) from exc
    return CATALOG


def event_catalog() -> EventCatalog:
    """The bundled event catalogue (``stagecoach.workflows.events.CATALOG``), every event
    type with its properties and their meaning.

    Raises:
        DefinitionError: The bundled pipelines or catalogue do not load.
    """
    return _catalog()


def bundled_journeys() -> Mapping[str, Journey]:
    """The marketers' journeys (``stagecoach.workflows.journeys.JOURNEYS``) by name.

    Raises:
        DefinitionError: The pipelines or catalogue the journeys import do not load.
    """
    _catalog()  # journeys import the pipeline module: surface its errors as ours
    from stagecoach.workflows.journeys import JOURNEYS

    return JOURNEYS


def definitions_context(
    settings: Settings,
    *,
    content: ContentIndex | None = None,
    journeys: Mapping[str, Journey] | None = None,
) -> ValidationContext:
    """What bundled journeys are validated against.

    Args:
        settings: Picks the active pipeline.
        content: The content library, or ``None`` to skip content checks.
        journeys: Journeys ``enrol`` may target; default: the bundled ones.

    Returns:
        Event types from the catalogue, the active pipeline's stages and off-pipeline
        states, the content index and the known journey names.

    Raises:
        ConfigurationError: The configured pipeline does not exist.
        DefinitionError: The bundled pipeline or catalogue is broken.
    """
    pipeline = active_pipeline_of(settings)
    return ValidationContext(
        known_event_types=frozenset(_catalog().names()),
        stages=frozenset((*pipeline.stage_names, *pipeline.states)),
        content=content,
        known_journeys=frozenset(journeys if journeys is not None else bundled_journeys()),
    )


def compile_definitions(
    settings: Settings,
    *,
    content: ContentIndex | None = None,
    journeys: Mapping[str, Journey] | None = None,
) -> tuple[dict[str, JourneySpec], list[Problem]]:
    """Compile every journey, collecting problems instead of stopping at the first.

    Args:
        settings: Picks the active pipeline.
        content: The content library, or ``None`` to skip content checks.
        journeys: Journeys to compile; default: the bundled ones.

    Returns:
        The specs of the journeys that compiled, and every problem of those that did not.
    """
    journeys = journeys if journeys is not None else bundled_journeys()
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

    Idempotent: a version already stored is not stored again. When a stored version is
    not the latest of its journey (a definition rolled back), its ``published_at`` moves
    to now so that ``latest`` returns it again. Safe against concurrent publishers: losing
    the insert race (an IntegrityError on the version key) rolls back and retries, and the
    retry finds the other publisher's rows.

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
        row.published_at = utcnow()
        session.add(row)
        session.flush()
        return PublishResult(spec.name, spec.version, created=False, reinstated=True)
    return PublishResult(spec.name, spec.version, created=False)


def publish_bundled(
    db: Engine,
    settings: Settings,
    *,
    content: ContentIndex | None = None,
    journeys: Mapping[str, Journey] | None = None,
) -> list[PublishResult]:
    """Validate every bundled journey, then publish them all.

    Validation comes first for all of them: when any journey is refused, nothing of this
    call is published.

    Args:
        db: A migrated database.
        settings: Picks the active pipeline.
        content: The content library, or ``None`` to skip content checks.
        journeys: Journeys to publish; default: the bundled ones.

    Returns:
        One result per journey, in definition order.

    Raises:
        JourneyValidationError: Listing every problem; nothing was published.
        DatabaseError: The database is unreachable or not migrated.
    """
    specs = validate_definitions(settings, content=content, journeys=journeys)
    return publish_many(db, list(specs.values()), source="bundled")


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
    "PUBLISH_HINT",
    "DefinitionError",
    "DefinitionsInvalid",
    "JourneyNotFound",
    "PublishResult",
    "PublishedVersion",
    "VersionNotFound",
    "active_pipeline_of",
    "bundled_journeys",
    "closest_names",
    "compile_definitions",
    "definitions_context",
    "get_version",
    "latest",
    "latest_versions",
    "publish",
    "publish_bundled",
    "publish_many",
    "validate_definitions",
]
