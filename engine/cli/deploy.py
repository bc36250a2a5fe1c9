"""``stagecoach plan`` and ``stagecoach journeys rollback``: see what a publish would
change before it does, and go back to an earlier journey version on purpose.

Publishing (``journeys publish``, and every worker at start) never moves a journey back
to an older version: ``plan`` shows which definitions it would refuse for that, and
``rollback`` is the one way back. Both read and write through
``stagecoach.engine.services.publishing``.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import typer.core

# Typer vendors Click and re-exports only BadParameter of its errors: a mistyped option
# is this UsageError.
from typer._click.core import Context
from typer._click.exceptions import UsageError

from stagecoach.engine.cli.journeys import _content, _read_db, _settings, _short
from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.domain.journeys import JourneyValidationError, SpecDiff

if TYPE_CHECKING:
    from stagecoach.engine.services.publishing import PlannedChange

PLAN_NOTHING = 0
"""``stagecoach plan`` exit code: publishing would change nothing."""
PLAN_CHANGES = 2
"""``stagecoach plan`` exit code: publishing would change something."""
PLAN_ERROR = 1
"""``stagecoach plan`` exit code: no plan (invalid definitions, bad options, database)."""


class _PlanUsageError(UsageError):
    exit_code = PLAN_ERROR


class PlanCommand(typer.core.TyperCommand):
    """Exit 1, not Click's 2, on a usage error: 2 means "changes" to a CI job."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except UsageError as exc:
            raise _PlanUsageError(exc.message, exc.ctx) from None


def plan(
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show what publishing the current journey definitions would change, per journey.

    Exit code 0: nothing would change. 2: something would (a new or changed journey).
    1: no plan (invalid definitions, a bad option, an unreachable database).
    """
    from stagecoach.engine.services.publishing import plan_publish
    from stagecoach.engine.services.storage.db import redact

    db = None
    try:
        settings = _settings()
        db = _read_db(settings)
        entries = plan_publish(db, settings, content=_content(settings))
        target = redact(settings.resolved_database_url)
    except JourneyValidationError as exc:
        _fail(json_output, f"no plan: the definitions are invalid. {exc.message}")
    except StagecoachError as exc:
        _fail(json_output, f"no plan: {exc.one_line()}")
    finally:
        if db is not None:
            db.dispose()
    changes = sum(e.changes for e in entries)
    if json_output:
        body = {
            "database": target,
            "changes": changes,
            "journeys": [
                {
                    "name": e.name,
                    "status": e.status,
                    "version": e.version,
                    "latest": e.latest,
                    "in_flight_on_latest": e.in_flight_on_latest,
                    "in_flight": dict(e.in_flight),
                    "diff": _diff_json(e.diff) if e.diff is not None else None,
                }
                for e in entries
            ],
        }
        typer.echo(json.dumps(body, indent=2, ensure_ascii=False))
    else:
        counts = {s: sum(e.status == s for e in entries) for s in ("new", "changed")}
        counts |= {s: sum(e.status == s for e in entries) for s in ("unchanged", "older")}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items())
        typer.echo(f"plan for {target}: {summary}")
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            typer.echo(f"{e.status:<9}  {e.name:<{width}}  {_line(e)}")
            if e.status == "changed" and e.diff is not None:
                typer.echo(_indent(str(e.diff)))
        if not changes:
            typer.echo("nothing to publish")
    raise typer.Exit(PLAN_CHANGES if changes else PLAN_NOTHING)


def _line(e: PlannedChange) -> str:
    latest = _short(e.latest or "")
    if e.status == "new":
        return f"{_short(e.version)}  not published yet"
    if e.status == "unchanged":
        return f"{_short(e.version)}  is the latest{_flight(e)}"
    if e.status == "older":
        return (
            f"{_short(e.version)}  older than the latest: publishing keeps {latest} "
            f"(go back on purpose with 'stagecoach journeys rollback {e.name} --to "
            f"{_short(e.version)}')"
        )
    # changed
    return f"{latest} -> {_short(e.version)}{_flight(e, changed=True)}"


def _flight(e: PlannedChange, *, changed: bool = False) -> str:
    on_latest = e.in_flight_on_latest
    if not on_latest:
        return ""
    noun = "enrolment" if on_latest == 1 else "enrolments"
    if changed:
        return (
            f"  IN FLIGHT: {on_latest} active {noun} on {_short(e.latest or '')} keep it; "
            "new enrolments get the new version"
        )
    return f"  ({on_latest} active {noun})"


def _indent(text: str) -> str:
    # The diff's first line repeats the versions the plan line shows.
    return "\n".join("  " + line for line in text.splitlines()[1:])


def _diff_json(diff: SpecDiff) -> dict[str, Any]:
    return {
        "added": list(diff.added),
        "removed": list(diff.removed),
        "changed": [
            {
                "step": change.step_id,
                "fields": [{"field": f, "old": old, "new": new} for f, old, new in change.fields],
            }
            for change in diff.changed
        ],
        "settings": [{"field": f, "old": old, "new": new} for f, old, new in diff.settings],
    }


def _fail(json_output: bool, message: str) -> NoReturn:
    if json_output:
        typer.echo(json.dumps({"error": message}, ensure_ascii=False))
    else:
        typer.echo(f"stagecoach: error: {message}", err=True)
    raise typer.Exit(PLAN_ERROR)


def rollback(
    name: Annotated[str, typer.Argument(help="Journey name.")],
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="A published version (hash or 6+ character prefix); default: the version "
            "before the latest.",
        ),
    ] = None,
) -> None:
    """Make an earlier published version of a journey the latest again, and say what changes.

    New enrolments get that version; enrolments in flight keep the version they pinned.
    The rollback is recorded in journey_versions (source 'rollback', with its time).
    """
    from stagecoach.engine.services.publishing import JourneyNotFound
    from stagecoach.engine.services.publishing import rollback as roll_back

    settings = _settings()
    db = _read_db(settings)
    if db is None:
        raise JourneyNotFound(
            f"journey {name!r} has no published version to roll back (no database yet)",
            fix="publish first ('stagecoach journeys publish'), or check STAGECOACH_DATABASE_URL",
        )
    try:
        done = roll_back(db, name, to, by=_who())
    finally:
        db.dispose()
    old, new = _short(done.from_version), _short(done.to_version)
    if not done.changed:
        typer.echo(f"{name}: {new} is already the latest; nothing changed")
        _echo_flight(done.in_flight)
        return
    typer.echo(f"rolled back {name}: {old} -> {new}; new enrolments get {new}")
    typer.echo(
        f"recorded: {new} is the latest since {done.at:%Y-%m-%d %H:%M:%S} UTC, source "
        f"'rollback'" + (f", by {done.by}" if done.by else "")
    )
    typer.echo(str(done.diff))
    _echo_flight(done.in_flight)
    typer.echo(
        f"note: publishing {old} again (a worker or 'journeys publish' with that definition) "
        f"now keeps {new}; to return to it, run 'stagecoach journeys rollback {name} --to {old}'"
    )


def _echo_flight(in_flight: Mapping[str, int]) -> None:
    total = sum(in_flight.values())
    if not total:
        typer.echo("in flight: no active enrolments")
        return
    parts: Sequence[str] = [f"{n} on {_short(v)}" for v, n in in_flight.items()]
    typer.echo(
        f"in flight: {total} active enrolment{'s' if total != 1 else ''} keep their pinned "
        f"versions: {', '.join(parts)}"
    )


def _who() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no USER/LOGNAME in a bare container
        return None
