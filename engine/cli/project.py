"""``stagecoach init`` and ``stagecoach validate``: a marketing team's own repository.

``init`` writes a small working project (a pipeline, two journeys, their content in zh-CN
and en, a test and a CI file) into a new folder and makes it a git repository.
``validate`` loads the project the working directory belongs to
(``stagecoach.engine.services.project``) and checks all of it: the pipeline against the
events, every journey against the pipeline, the events and the content. It then lists
the project's warnings (``Definitions.warnings``), which fail it only with ``--strict``.
It is what the team's CI runs.
"""

from __future__ import annotations

import keyword
import re
import shutil
import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer

from stagecoach.engine.domain.errors import ConfigurationError

TEMPLATE = Path(__file__).with_name("project_template")
STARTER_CONTENT = (
    "wp-digital-transformation",
    "case-study-manufacturing",
    "trial-invitation",
    "onboarding-welcome",
    "onboarding-quickstart",
)
"""The bundled content items the starter journeys send, copied into the new project."""


def _package_name(name: str) -> str:
    package = re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()
    if not package or package[0].isdigit() or keyword.iskeyword(package):
        raise ConfigurationError(
            f"cannot make a Python package name from {name!r}",
            fix="name the project with letters first, e.g. 'acme-marketing'",
        )
    return package


def _target(relative: Path, package: str) -> Path:
    parts = [
        package if p == "package" else "." + p[4:] if p.startswith("dot-") else p
        for p in relative.parts
    ]
    parts[-1] = parts[-1].removesuffix(".tmpl")
    return Path(*parts)


def init(
    directory: Annotated[
        Path, typer.Argument(help="The new project's folder, e.g. acme-marketing.")
    ],
    git: Annotated[bool, typer.Option(help="Make the folder a git repository.")] = True,
) -> None:
    """Start a marketing project: a pipeline, two journeys, their content, a test and CI."""
    from stagecoach.engine.domain.content import BUNDLED_CONTENT_DIR

    if directory.exists() and any(directory.iterdir()):
        raise ConfigurationError(
            f"{directory} already exists and is not empty",
            fix="choose a new folder name, or empty that folder first",
        )
    name = directory.resolve().name
    package = _package_name(name)
    written: list[Path] = []
    for source in sorted(TEMPLATE.rglob("*.tmpl")):
        target = directory / _target(source.relative_to(TEMPLATE), package)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = source.read_text(encoding="utf-8")
        target.write_text(
            text.replace("{{package}}", package).replace("{{name}}", name), encoding="utf-8"
        )
        written.append(target)
    content = directory / "content"
    shutil.copytree(BUNDLED_CONTENT_DIR / "_layouts", content / "_layouts")
    for item in STARTER_CONTENT:
        shutil.copytree(BUNDLED_CONTENT_DIR / item, content / item)
    typer.echo(f"created {directory}: package {package}, {len(written)} files and content:")
    for path in written:
        typer.echo(f"  {path.relative_to(directory)}")
    typer.echo(f"  content/ ({len(STARTER_CONTENT)} items in zh-CN and en, and the layouts)")
    if git and shutil.which("git"):
        done = subprocess.run(
            ["git", "init", "-q", str(directory)], capture_output=True, text=True, check=False
        )
        typer.echo("a git repository" if done.returncode == 0 else f"git init: {done.stderr}")
    typer.echo(f"next: cd {directory} && stagecoach validate && pytest")


def validate(
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Exit 1 on warnings too, not only on problems."),
    ] = False,
) -> None:
    """Validate the project: pipeline, events, every journey and its content; exit 1 on
    any problem (and, with --strict, on any warning). The project is the one the working
    directory belongs to ([tool.stagecoach] in pyproject.toml), --definitions, or the
    bundled example."""
    from stagecoach.engine.cli.journeys import _settings
    from stagecoach.engine.domain.content import ContentLibrary, ContentValidationError
    from stagecoach.engine.domain.definitions import BROADCASTS, PIPELINE, SEGMENTS
    from stagecoach.engine.services.project import load_project

    settings = _settings()
    project = load_project(settings)
    definitions = project.definitions
    content_dir = project.content_dir(settings)
    typer.echo(f"project {definitions.name or project.ref} ({project.ref}, from {project.origin})")
    try:
        library = ContentLibrary.load(content_dir)
    except ContentValidationError as exc:
        typer.echo(f"FAIL  content {content_dir}")
        typer.echo(f"      - {exc}")
        raise typer.Exit(1) from None
    specs, problems = definitions.compile(library)
    problems = [*problems, *_broadcast_content_problems(definitions, library)]
    pipeline_problems = [p for p in problems if p.journey == PIPELINE]
    mark = "FAIL" if pipeline_problems else "ok  "
    typer.echo(
        f"{mark}  pipeline {definitions.pipeline.name}: {len(definitions.pipeline.stages)} "
        f"stages, {len(definitions.events)} events"
    )
    for problem in pipeline_problems:
        typer.echo(f"      - {problem.message}. Fix: {problem.fix}")
    typer.echo(f"ok    content {content_dir}: {len(library.items)} items")
    names = list(definitions.journeys_by_name)
    width = max((len(n) for n in names), default=0)
    for name in names:
        where = project.source_of(name)
        shown = f"  {_relative(where)}" if where else ""
        if name in specs:
            spec = specs[name]
            typer.echo(
                f"ok    {name:<{width}}  {spec.version[:12]}  {len(spec.steps)} steps{shown}"
            )
            continue
        typer.echo(f"FAIL  {name:<{width}}{shown}")
        for problem in problems:
            if problem.journey == name:
                typer.echo(f"      - {problem.step}: {problem.message}. Fix: {problem.fix}")
    segment_problems = [p for p in problems if p.journey == SEGMENTS]
    for name, segment in definitions.segment_specs().items():
        mine = [p for p in segment_problems if p.step == name]
        kind = "manual list" if segment.manual else "computed"
        typer.echo(f"{'FAIL' if mine else 'ok  '}  segment {name}  {segment.version[:12]}  {kind}")
        for problem in mine:
            typer.echo(f"      - {problem.message}. Fix: {problem.fix}")
    for broadcast in definitions.broadcasts:
        mine = [p for p in problems if p.journey == BROADCASTS and p.step == broadcast.name]
        typer.echo(
            f"{'FAIL' if mine else 'ok  '}  broadcast {broadcast.name}  {broadcast.version[:12]}"
            f"  {broadcast.segment} <- {broadcast.content} over {broadcast.channel}"
        )
        for problem in mine:
            typer.echo(f"      - {problem.message}. Fix: {problem.fix}")
    warnings = definitions.warnings(specs=specs)
    for warning in warnings:
        typer.echo(
            f"warn  {warning.journey:<{width}}  {warning.step}: {warning.message}."
            f" Fix: {warning.fix}"
        )
    warned = f"{len(warnings)} warning{'s' if len(warnings) != 1 else ''}"
    if problems:
        count = len(problems)
        typer.echo(
            f"{count} problem{'s' if count != 1 else ''}"
            + (f", {warned}" if warnings else "")
            + "; nothing was published"
        )
        raise typer.Exit(1)
    if warnings:
        failing = " (--strict: warnings fail)" if strict else ""
        typer.echo(f"{len(names)} journeys valid{_and_segments(definitions)}, {warned}{failing}")
        if strict:
            raise typer.Exit(1)
        return
    typer.echo(f"{len(names)} journeys valid{_and_segments(definitions)}")


def _and_segments(definitions: Any) -> str:
    count = len(definitions.segment_specs())
    said = f"; {count} segment{'s' if count != 1 else ''} valid" if count else ""
    casts = len(definitions.broadcasts)
    return said + (f"; {casts} broadcast{'s' if casts != 1 else ''} valid" if casts else "")


def _broadcast_content_problems(definitions: Any, library: Any) -> list[Any]:
    """The project's broadcasts against its content library, which the definitions alone
    cannot check: an item that does not exist, or has no variant on the channel at all
    (a variant per audience locale is checked at launch, against the audience)."""
    from stagecoach.engine.domain.definitions import BROADCASTS
    from stagecoach.engine.domain.journeys import Problem
    from stagecoach.engine.services.broadcasts.preview import content_catalogue

    catalogue = content_catalogue(library)
    found: list[Any] = []
    for broadcast in definitions.broadcasts:
        channel = "wechat" if broadcast.channel == "wechat_mass" else broadcast.channel
        for item in broadcast.contents():
            if item not in catalogue:
                found.append(
                    Problem(
                        BROADCASTS,
                        broadcast.name,
                        f"broadcast {broadcast.name!r}: content {item!r} is not in the content"
                        " library",
                        "add it under content/ or name another item ('stagecoach content list')",
                    )
                )
            elif not any(ch == channel for _, ch in catalogue[item]):
                found.append(
                    Problem(
                        BROADCASTS,
                        broadcast.name,
                        f"broadcast {broadcast.name!r}: content {item!r} has no {channel} variant",
                        f"add content/{item}/{channel}.<locale>... or pick another channel",
                    )
                )
    return found


def _broadcast_lines(db: Any, broadcasts: Any, *, save: bool) -> list[str]:
    """One line per project broadcast: a new or changed draft, unchanged, or refused
    because it was launched with another spec (a problem line, not a failed deploy:
    a launched broadcast keeps the spec it was launched with). ``save`` keeps each
    draft (``source="project"``); without it the database is only read."""
    from stagecoach.engine.services.broadcasts.store import BroadcastRefused, save_broadcast

    held = _saved_broadcasts(db) if db is not None else {}
    lines: list[str] = []
    for broadcast in broadcasts:
        before = held.get(broadcast.name)
        refused = (
            f"broadcast {broadcast.name}: launched ({before[1] if before else '?'}); spec"
            " changed: refused, the launched broadcast keeps its spec. Fix: give the changed"
            " broadcast a new name in the project"
        )
        if before is None:
            state = "draft (new)"
        elif before[0] == broadcast.version:
            state = f"unchanged ({before[1]})"
        elif before[1] == "draft":
            state = "draft (changed)"
        else:
            lines.append(refused)
            continue
        if save:
            try:
                save_broadcast(db, broadcast, source="project")
            except BroadcastRefused:
                lines.append(refused)  # launched since it was read
                continue
        lines.append(f"broadcast {broadcast.name}: {state}")
    return lines


def _saved_broadcasts(db: Any) -> dict[str, tuple[str, str]]:
    """Each stored broadcast's (version, status); empty on a database without them."""
    from sqlalchemy.exc import DatabaseError

    from stagecoach.engine.services.broadcasts.store import list_rows

    try:
        return {row.id: (row.version, row.status) for row in list_rows(db)}
    except DatabaseError:
        return {}  # not migrated to broadcasts yet: every broadcast is new


def _relative(where: str) -> str:
    path, _, line = where.rpartition(":")
    try:
        return f"{Path(path).resolve().relative_to(Path.cwd().resolve())}:{line}"
    except ValueError:
        return where


def deploy(
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="The environment: a [tool.stagecoach.environments.NAME] table of the "
            "project's pyproject.toml, or 'local' (these settings as they are).",
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; change nothing.")
    ] = False,
    backfill: Annotated[
        bool,
        typer.Option(
            help="Compute new or changed segments' members from stored history now "
            "(--no-backfill leaves them to 'stagecoach segments backfill')."
        ),
    ] = True,
) -> None:
    """Publish this project version to an environment's engine: validate everything, show
    what changes per journey, then publish, recording the project version and git commit.
    New or changed segments are then backfilled from stored history, so readers see
    their members (until then they read the previous version). The project's broadcasts
    are kept as drafts (nothing is sent); a launched one keeps its spec, and a change to
    it is reported with the fix (a new name) without failing the deploy.

    An older definition of a journey is refused (the latest stays; 'stagecoach journeys
    rollback' goes back on purpose). In-flight enrolments keep their pinned versions.
    Exit 1 when the project has problems (nothing is published)."""
    from stagecoach.engine.cli.journeys import _settings
    from stagecoach.engine.domain.content import ContentLibrary
    from stagecoach.engine.domain.definitions import project_version
    from stagecoach.engine.domain.journeys import JourneyValidationError
    from stagecoach.engine.services.project import environment_settings, git_commit, load_project
    from stagecoach.engine.services.publishing import plan_publish, publish_bundled
    from stagecoach.engine.services.storage import make_engine, upgrade
    from stagecoach.engine.services.storage.db import redact

    base = _settings()
    project = load_project(base)
    settings = environment_settings(project, to, base)
    library = ContentLibrary.load(project.content_dir(settings))
    specs, problems = project.definitions.compile(library)
    problems = [*problems, *_broadcast_content_problems(project.definitions, library)]
    if problems:
        typer.echo(f"nothing was deployed: {len(problems)} problem(s); the first: {problems[0]}")
        typer.echo("run 'stagecoach validate' for the list")
        raise typer.Exit(1)
    version = project_version(project.definitions, specs)
    commit = git_commit(project.root)
    label = project.definitions.name or project.ref
    target = redact(settings.resolved_database_url)
    made = "not in git"
    if commit:
        made = f"git {commit.rstrip('*')}" + (", uncommitted changes" if commit[-1] == "*" else "")
    doing = "plan for" if dry_run else "deploying"
    typer.echo(f"{doing} {label} {version[:12]} ({made}) to {to} ({target})")
    if dry_run:
        from stagecoach.engine.cli.journeys import _read_db

        reader = _read_db(settings)  # a dry run never creates the database
        try:
            planned = plan_publish(reader, settings, content=library)
            published = {} if reader is None else _published_segments(reader)
        finally:
            if reader is not None:
                reader.dispose()
        width = max((len(p.name) for p in planned), default=0)
        for p in planned:
            typer.echo(f"{p.status:<10} {p.name:<{width}}  {p.version[:12]}")
        for name, spec in sorted(project.definitions.segment_specs().items()):
            held = published.get(name)
            status = "new" if held is None else "unchanged" if held == spec.version else "changed"
            typer.echo(f"{status:<10} segment {name}  {spec.version[:12]}")
        reader = _read_db(settings)
        try:
            for line in _broadcast_lines(reader, project.definitions.broadcasts, save=False):
                typer.echo(line)
        finally:
            if reader is not None:
                reader.dispose()
        typer.echo("dry run: nothing was published")
        return
    db = make_engine(settings.resolved_database_url)
    try:
        upgrade(db)
        source = f"deploy {version[:12]}" + (f"@{commit}" if commit else "")
        before = _published_segments(db)
        try:
            results = publish_bundled(db, settings, content=library, source=source)
        except JourneyValidationError as exc:
            typer.echo(f"nothing was deployed. {exc.message}")
            raise typer.Exit(1) from None
        filled = _backfill_segments(db, settings) if backfill else []
        # Drafts only: a project's broadcast is sent by 'stagecoach broadcasts schedule'.
        casts = _broadcast_lines(db, project.definitions.broadcasts, save=True)
    finally:
        db.dispose()
    width = max((len(r.name) for r in results), default=0)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
        note = f"  {r.note}" if r.note else ""
        typer.echo(f"{r.status:<10} {r.name:<{width}}  {r.version[:12]}{note}")
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    recorded = f"recorded as '{source}'" if counts.get("created") else "nothing new to record"
    for name, spec in sorted(project.definitions.segment_specs().items()):
        status = "unchanged" if before.get(name) == spec.version else "created"
        typer.echo(f"{status:<10} segment {name}  {spec.version[:12]}")
    typer.echo(f"deployed {label} {version[:12]} to {to}: {summary}; {recorded}")
    for line in filled:
        typer.echo(line)
    for line in casts:
        typer.echo(line)


def _published_segments(db: Any) -> dict[str, str]:
    """Each published segment's newest version (empty on a database without them)."""
    from sqlalchemy.exc import DatabaseError

    from stagecoach.engine.services.segments.catalog import latest_segments

    try:
        return {name: spec.version for name, spec in latest_segments(db).items()}
    except DatabaseError:
        return {}  # not migrated to segments yet: every segment is new


def _backfill_segments(db: Any, settings: Any) -> list[str]:
    """Backfill every segment version the deploy left pending; one line each. A segment
    that cannot be backfilled is reported and stays pending (readers keep the previous
    version); the deploy itself stands."""
    from stagecoach.engine.domain.errors import StagecoachError
    from stagecoach.engine.services.segments.backfill import backfill

    try:
        results = backfill(db, settings)
    except StagecoachError as exc:
        return [f"segments not backfilled: {exc}"]
    return [
        f"segment {r.segment} {r.version[:12]}: backfilled, {r.members} members "
        f"(+{r.entered} -{r.exited}), {r.notified} contacts notified"
        for r in results
    ]
