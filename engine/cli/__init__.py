"""The ``stagecoach`` command: its subcommands, each parsing its options and printing its
result; the worker and the API are wired in the composition root, ``stagecoach.engine.cli.compose``.

Every command turns a StagecoachError into one line on stderr (the cause and the fix)
and exit code 2; nobody gets a traceback wall for a wrong URL or a busy port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import Annotated, NoReturn

import typer

from stagecoach.engine.cli.broadcasts import broadcasts_app
from stagecoach.engine.cli.cluster import cluster_app
from stagecoach.engine.cli.contact import contact_app
from stagecoach.engine.cli.content import content_app
from stagecoach.engine.cli.demo import demo
from stagecoach.engine.cli.deploy import PlanCommand, plan, rollback
from stagecoach.engine.cli.events import events_app
from stagecoach.engine.cli.imports import import_contacts
from stagecoach.engine.cli.journeys import journeys_app
from stagecoach.engine.cli.prediction import prediction_app
from stagecoach.engine.cli.project import deploy, init, validate
from stagecoach.engine.cli.report import report
from stagecoach.engine.cli.segment_backfill import backfill as segments_backfill
from stagecoach.engine.cli.segment_backfill import preview as segments_preview
from stagecoach.engine.cli.segments import segments_app
from stagecoach.engine.cli.value import value_app
from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.logging import configure_logging
from stagecoach.engine.settings import Settings, load_settings

app = typer.Typer(
    name="stagecoach",
    help="Lifecycle marketing automation on durable Temporal workflows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(journeys_app, name="journeys")
app.add_typer(contact_app, name="contact")
app.add_typer(content_app, name="content")
app.add_typer(events_app, name="events")
app.add_typer(segments_app, name="segments")
app.add_typer(broadcasts_app, name="broadcasts")
app.add_typer(cluster_app, name="cluster")
app.add_typer(value_app, name="value")
app.add_typer(prediction_app, name="propensity")
app.command()(demo)
app.command("import")(import_contacts)
app.command("report")(report)
app.command("plan", cls=PlanCommand)(plan)
journeys_app.command("rollback")(rollback)
app.command("init")(init)
app.command("validate")(validate)
app.command("deploy")(deploy)
segments_app.command("preview")(segments_preview)
segments_app.command("backfill")(segments_backfill)


@app.callback()
def _options(
    definitions: Annotated[
        str | None,
        typer.Option(
            "--definitions",
            metavar="MODULE:ATTRIBUTE",
            help="The project's definitions, e.g. acme_marketing.definitions:defs (sets "
            "STAGECOACH_DEFINITIONS for this command and the processes it starts). "
            "Default: [tool.stagecoach] in the nearest pyproject.toml, else the bundled "
            "example.",
        ),
    ] = None,
) -> None:
    if definitions is not None:
        os.environ["STAGECOACH_DEFINITIONS"] = definitions


def _settings() -> Settings:
    settings = load_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    return settings


@app.command()
def up() -> None:
    """Start the Temporal dev server, the worker and the API; Ctrl-C stops them all."""
    from stagecoach.engine.cli.supervisor import run_up
    from stagecoach.engine.services.storage.db import private_umask

    private_umask()  # the children inherit it: logs, databases, the dev server's file
    raise typer.Exit(run_up(_settings(), out=lambda line: typer.echo(line)))


@app.command()
def worker() -> None:
    """Run a worker: the contact workflows and their activities."""
    from stagecoach.engine.cli.compose import run_worker

    run_worker(_settings())


@app.command()
def api() -> None:
    """Serve the HTTP API with uvicorn."""
    from stagecoach.engine.cli.compose import serve_api

    serve_api(_settings())


keys_app = typer.Typer(help="Write keys for the event API.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who uses it, e.g. 'website'.")],
    source: Annotated[
        str | None,
        typer.Option(help="Scope: events sent with this key are recorded with this source."),
    ] = None,
) -> None:
    """Create a write key and print it (only its hash is stored: this is the only time)."""
    from stagecoach.engine.api.routes.events import create_write_key
    from stagecoach.engine.services.storage import make_engine

    settings = _settings()
    db = make_engine(settings.resolved_database_url)
    try:
        key = create_write_key(db, name, source=source)
    finally:
        db.dispose()
    typer.echo(key)


@app.command()
def doctor(
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    deep: Annotated[
        bool, typer.Option(help="Also run a SystemCheck workflow through the worker.")
    ] = False,
) -> None:
    """Check the database, migrations, Temporal, search attributes and the worker."""
    from stagecoach.engine.cli.doctor import as_json, run_checks

    settings = _settings()
    checks = asyncio.run(run_checks(settings, deep=deep))
    if json_output:
        typer.echo(json.dumps(as_json(checks), indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for check in checks:
            mark = "ok  " if check.ok else "FAIL"
            typer.echo(f"{mark}  {check.name:<{width}}  {check.detail}")
            if not check.ok:
                typer.echo(f"      {'':<{width}}  fix: {check.fix}")
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from stagecoach.engine.services.storage import current_revision, make_engine, upgrade
    from stagecoach.engine.services.storage.db import redact

    settings = _settings()
    db = make_engine(settings.resolved_database_url)
    upgrade(db, revision)
    typer.echo(f"{redact(settings.resolved_database_url)} is at revision {current_revision(db)}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision and the newest one the code knows."""
    from stagecoach.engine.services.storage import (
        check_connection,
        current_revision,
        head_revision,
        make_engine,
    )

    settings = _settings()
    db = make_engine(settings.resolved_database_url)
    check_connection(db)
    typer.echo(f"current {current_revision(db) or 'none'}, head {head_revision()}")


def _exit_now(code: int) -> NoReturn:
    """Flush everything, then leave without interpreter teardown.

    The Temporal SDK's Rust bridge keeps native threads that can touch the GIL while
    CPython finalises, which aborts the process (SIGABRT) after a command has already
    succeeded (temporalio/sdk-python#300). Nothing of ours needs teardown once logs and
    stdio are flushed, so a command ends here instead.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> NoReturn:
    """Console entry point."""
    _exit_now(run())


def run(argv: list[str] | None = None) -> int:
    """Run ``stagecoach *argv`` (default: the process's arguments) in this process and
    return its exit code: 2 with one ``stagecoach: error: ...`` line for a refused
    command, as the console entry point exits."""
    code = 0
    try:
        app(args=argv, prog_name="stagecoach")
    except SystemExit as exc:
        if isinstance(exc.code, str):
            typer.echo(exc.code, err=True)
            code = 1
        else:
            code = exc.code or 0
    except StagecoachError as exc:
        typer.echo(f"stagecoach: error: {exc.one_line()}", err=True)
        code = 2
    except KeyboardInterrupt:
        code = 130
    return int(code)
