"""``stagecoach value refresh``, and the ``value`` and ``cross-sell`` reports that
``stagecoach report`` prints from the latest refresh.

``refresh`` values every customer from their stored orders (RFM, the ABC tier, BG/NBD and
Gamma-Gamma CLV and probability alive, the repurchase interval, cross-sell) and sends the
changed values to the contacts' workflows as traits (``stagecoach.engine.services.value``).
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.services.analytics import Report
from stagecoach.engine.settings import Settings, load_settings

value_app = typer.Typer(help="Customer value: RFM, tiers, CLV, cross-sell.", no_args_is_help=True)

REPORTS = ("value", "cross-sell")
"""The reports ``stagecoach report`` takes from here, not from the analytics store."""


def _fail(error: StagecoachError) -> typer.Exit:
    typer.echo(f"stagecoach: error: {error.one_line()}", err=True)
    return typer.Exit(2)


def _catalog(path: Path | None) -> Any:
    if path is None:
        return None
    from stagecoach.engine.domain.value import Catalog, ValueModelError

    try:
        with path.open(encoding="utf-8", newline="") as handle:
            return Catalog.from_rows(csv.DictReader(handle))
    except OSError as exc:
        raise StagecoachError(
            f"cannot read the catalog {path}: {exc.strerror}",
            fix="pass --catalog a CSV file with columns sku, category, name",
        ) from None
    except ValueModelError as exc:
        raise StagecoachError(
            f"the catalog {path} is not valid: {exc}", fix="fix the line named"
        ) from None


def _as_of(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise StagecoachError(
            f"--as-of {text!r} is not a time", fix="write an ISO time such as 2026-12-01T00:00Z"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@value_app.command("refresh")
def refresh(
    catalog: Annotated[
        Path | None,
        typer.Option(help="A product catalog CSV (sku, category, name) instead of the project's."),
    ] = None,
    as_of: Annotated[str | None, typer.Option(help="Value as of this time (default now).")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Store the run, send no traits to the contacts.")
    ] = False,
    schedule_now: Annotated[
        bool,
        typer.Option(
            "--schedule-now",
            help="Trigger the worker's value-refresh Schedule now and wait for its run.",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="With --schedule-now: seconds to wait for the run.", min=1)
    ] = 1800,
) -> None:
    """Value every customer from their orders and send the changed values to their
    workflows as traits (value_tier, clv, p_alive, rfm, next_purchase_due, cross_sell)."""
    from stagecoach.engine.logging import configure_logging
    from stagecoach.engine.services.project import load_project
    from stagecoach.engine.services.storage import make_engine, upgrade
    from stagecoach.engine.services.value import refresh_values

    settings = load_settings()
    configure_logging(level="warning", fmt=settings.log_format)
    if schedule_now:
        try:
            if catalog is not None or as_of is not None or dry_run:
                raise StagecoachError(
                    "--schedule-now runs the Schedule's refresh, which takes no --catalog,"
                    " --as-of or --dry-run",
                    fix="drop those options, or drop --schedule-now to refresh here",
                )
            _on_schedule(settings, timeout)
        except StagecoachError as exc:
            raise _fail(exc) from None
        return
    try:
        definitions = load_project(settings).definitions
        imported = _catalog(catalog)
        at = _as_of(as_of)
        db = make_engine(settings.resolved_database_url)
        try:
            upgrade(db)
            result = refresh_values(db, definitions, as_of=at, catalog=imported, signal=not dry_run)
        finally:
            db.dispose()
    except StagecoachError as exc:
        raise _fail(exc) from None
    run = result.run
    typer.echo(
        f"value refresh {run.version}: {run.status}, {result.scored} customer(s) scored,"
        f" {result.signalled} sent new values"
    )
    summary = run.summary
    left = summary.get("left_out", {})
    if left:
        why = ", ".join(f"{n} {flag}" for flag, n in left.items())
        typer.echo(f"left out: {summary.get('orders_left_out', 0)} order event(s): {why}")
    for note in summary.get("notes", []):
        typer.echo(f"note: {note}")


DEFAULT_EVERY_HOURS = 24.0
"""The Schedule's interval when STAGECOACH_VALUE_REFRESH_HOURS is 0 (no schedule): the
command still needs one to trigger."""


def _on_schedule(settings: Settings, timeout: float) -> None:
    """Create or update the value-refresh Schedule as the worker does, trigger it, wait
    for the run a worker picks up and print its summary."""
    import asyncio
    import json
    from datetime import timedelta

    from stagecoach.workflows.client import connect
    from stagecoach.workflows.value.schedule import ensure_value_schedule, trigger_and_wait

    hours = settings.value_refresh_hours or DEFAULT_EVERY_HOURS

    async def run() -> tuple[str, dict[str, Any] | None]:
        client = await connect(settings)
        handle = await ensure_value_schedule(
            client, task_queue=settings.temporal_task_queue, every=timedelta(hours=hours)
        )
        try:
            async with asyncio.timeout(timeout):
                return handle.id, await trigger_and_wait(client, handle)
        except TimeoutError:
            return handle.id, None

    sid, answer = asyncio.run(run())
    typer.echo(f"triggered schedule {sid}")
    if answer is None:
        raise StagecoachError(
            f"the value refresh did not finish within {timeout:.0f} s",
            fix="check that a worker runs on the task queue (stagecoach doctor), or wait longer",
        )
    typer.echo(json.dumps(answer, indent=2, ensure_ascii=False))


def report_of(settings: Settings, name: str) -> Report:
    """The ``value`` or ``cross-sell`` report, from the latest value refresh."""
    from stagecoach.engine.services.storage import make_engine, upgrade
    from stagecoach.engine.services.value import cross_sell_report, value_report

    db = make_engine(settings.resolved_database_url)
    try:
        upgrade(db)
        return value_report(db) if name == "value" else cross_sell_report(db)
    finally:
        db.dispose()


def contact_value_of(contact_id: str) -> dict[str, Any] | None:
    """The contact's value traits from the latest refresh that scored them (with
    ``value_as_of`` and ``value_model``), or None: never scored, or no database."""
    from sqlalchemy.exc import DatabaseError as SADatabaseError

    from stagecoach.engine.cli.journeys import _read_db
    from stagecoach.engine.services.value import contact_value

    db = _read_db(load_settings())
    if db is None:
        return None
    try:
        return contact_value(db, contact_id)
    except SADatabaseError:  # a database not migrated to customer value yet
        return None
    finally:
        db.dispose()


def value_line(value: dict[str, Any] | None) -> str:
    """``contact show``'s value line: tier, CLV, probability alive, churn risk, as of,
    model."""
    if value is None:
        return "value     not scored yet (stagecoach value refresh)"
    clv = "-" if value.get("clv") is None else f"{value['clv']:,.2f}"
    alive = "-" if value.get("p_alive") is None else f"{value['p_alive']:.2f}"
    risk = value.get("churn_risk")
    churn = "-" if risk is None else f"{risk:.2f} ({value.get('churn_risk_level')})"
    return (
        f"value     tier {value.get('value_tier')} (score {value.get('value_score')}),"
        f" CLV {clv}, p_alive {alive}, churn risk {churn}, RFM {value.get('rfm')}"
        f" (as of {value.get('value_as_of')}, model {value.get('value_model')})"
    )
