"""``stagecoach segments preview NAME`` and ``stagecoach segments backfill [NAME]``.

``preview`` evaluates the segment as it stands in the project (not as published) over
stored history and prints how many contacts it would hold and a sample, writing nothing;
``backfill`` computes every published version still ``backfilling`` and makes it ready
(``stagecoach.engine.services.segments.backfill``).
"""

from __future__ import annotations

import difflib
from typing import Annotated

import typer

from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.settings import Settings, load_settings


def _fail(error: StagecoachError) -> typer.Exit:
    typer.echo(f"stagecoach: error: {error.one_line()}", err=True)
    return typer.Exit(2)


def _settings() -> Settings:
    from stagecoach.engine.logging import configure_logging

    settings = load_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    return settings


def preview(
    name: Annotated[str, typer.Argument(help="A segment of the project's definitions.")],
    sample: Annotated[int, typer.Option(min=0, help="Contacts to list.")] = 10,
) -> None:
    """How many contacts the segment, as the project defines it now, would hold, and a
    sample of them. Publishes and writes nothing."""
    from stagecoach.engine.services.project import load_project
    from stagecoach.engine.services.segments.backfill import preview as run_preview
    from stagecoach.engine.services.storage import make_engine, upgrade

    settings = _settings()
    try:
        specs = load_project(settings).definitions.segment_specs()
        spec = specs.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, list(specs), n=3)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise StagecoachError(
                f"the project defines no segment {name!r}{hint}",
                fix="use one of: " + (", ".join(sorted(specs)) or "none (add Segment(...))"),
            )
        db = make_engine(settings.resolved_database_url)
        try:
            upgrade(db)
            found = run_preview(db, settings, spec, sample=sample)
        finally:
            db.dispose()
    except StagecoachError as exc:
        raise _fail(exc) from None
    typer.echo(f"{name}: {found.count} contacts")
    for contact_id in found.sample:
        typer.echo(f"  {contact_id}")


def backfill(
    name: Annotated[
        str | None, typer.Argument(help="Only this segment (default: every one pending).")
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Contacts written per transaction.")] = 50_000,
    notify: Annotated[
        bool, typer.Option(help="Tell the workflows of contacts whose membership changed.")
    ] = True,
) -> None:
    """Compute the members of every published segment version still backfilling, from
    stored history, and make each ready. Resumes an interrupted run."""
    from stagecoach.engine.services.segments.backfill import backfill as run_backfill
    from stagecoach.engine.services.storage import make_engine, upgrade

    settings = _settings()
    db = make_engine(settings.resolved_database_url)
    try:
        upgrade(db)
        results = run_backfill(db, settings, name, batch=batch, notify=notify)
    except StagecoachError as exc:
        raise _fail(exc) from None
    finally:
        db.dispose()
    if not results:
        typer.echo("nothing to backfill: every published version is ready")
    for r in results:
        how = "sql" if r.compiled else "row by row"
        resumed = f", resumed after {r.resumed_after}" if r.resumed_after else ""
        typer.echo(
            f"{r.segment} {r.version[:12]}: ready, {r.members} members (+{r.entered}"
            f" -{r.exited}), {r.notified} contacts notified, {how}, {r.seconds:.1f} s{resumed}"
        )
