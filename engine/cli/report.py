"""``stagecoach report funnel|...|forecast|broadcasts|propensity``.

Each report reads the analytics store, copied from the database first when the copy is
older than ``STAGECOACH_DASHBOARD_CACHE_SECONDS`` (``--fresh`` copies regardless), and
prints a table per section (``--format table``), the report as JSON, or one section as
CSV (``--section``; the first by default). Journey rehearsals' contacts are left out
unless ``--include-rehearsals``.

``report broadcasts`` reads the database itself, not the store: every broadcast's
numbers as ``stagecoach broadcasts report`` gives them (the same function computes
both), one row each; the time options do not apply to it. ``report propensity`` also
reads the database: the propensity model's versions, calibration, drivers and scores.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stagecoach.engine.cli.value import REPORTS as VALUE_REPORTS
from stagecoach.engine.cli.value import report_of as value_report_of
from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.logging import configure_logging
from stagecoach.engine.services.analytics import REPORTS, Params, Report, run_report
from stagecoach.engine.services.analytics._stats import choice
from stagecoach.engine.services.analytics.service import (
    make_params,
    pick_section,
    section_csv,
    text_options,
    to_plain,
)
from stagecoach.engine.settings import Settings, load_settings

if TYPE_CHECKING:
    from stagecoach.engine.services.broadcasts.metrics import BroadcastReport

FORMATS = ("table", "json", "csv")
BROADCASTS = "broadcasts"
PROPENSITY = "propensity"
"""Read from the database (model versions and scores), not the store: no time options."""


def _print_table(report: Report, section: str | None) -> None:
    as_of = report.as_of.isoformat(timespec="seconds") if report.as_of else "never synced"
    typer.echo(
        f"{report.title}: {report.params.since:%Y-%m-%d %H:%M} to "
        f"{report.params.until:%Y-%m-%d %H:%M} UTC"
        + (f", by {report.params.by}" if report.params.by else "")
        + f" (data as of {as_of})"
        + (", rehearsals included" if report.params.include_rehearsals else "")
    )
    for s in report.sections:
        if section and s.name != section:
            continue
        cells = [[_cell(v, c) for v, c in zip(row, s.columns, strict=True)] for row in s.rows]
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(s.columns)]
        typer.echo(f"\n{s.title or s.name}")
        typer.echo("  ".join(c.ljust(w) for c, w in zip(s.columns, widths, strict=True)))
        typer.echo("  ".join("-" * w for w in widths))
        for row in cells:
            typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
        if not cells:
            typer.echo("(no rows)")
    for note in report.notes:
        typer.echo(f"\nnote: {note}")


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and ("rate" in column or column.endswith("share")):
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:,.2f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(to_plain(value))


def report(
    name: Annotated[
        str,
        typer.Argument(
            help=f"One of: {', '.join(REPORTS)}, broadcasts, propensity, value, cross-sell."
        ),
    ],
    since: Annotated[
        str | None, typer.Option(help="Start: 2026-11-01, an ISO time, or 30d/12h/2w ago.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="End (exclusive); default now.")] = None,
    by: Annotated[
        str | None, typer.Option(help="Group by: cohort, source, channel, campaign, stage.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    section: Annotated[
        str | None, typer.Option(help="Only this section (csv: default the first).")
    ] = None,
    steps: Annotated[
        str | None, typer.Option(help="conversion: event names, comma-separated, in order.")
    ] = None,
    window_days: Annotated[
        int | None, typer.Option(help="conversion, journeys: the window in days.")
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(help="conversion: a filter such as traits.plan=pro; repeatable."),
    ] = None,
    goal: Annotated[str | None, typer.Option(help="paths: the goal event.")] = None,
    length: Annotated[int | None, typer.Option(help="paths: events before the goal.")] = None,
    top: Annotated[int | None, typer.Option(help="paths: how many paths.")] = None,
    journey: Annotated[str | None, typer.Option(help="journeys: only this journey.")] = None,
    metric: Annotated[
        str | None, typer.Option(help="journeys: goal, clicked or an event name.")
    ] = None,
    period: Annotated[str | None, typer.Option(help="nps: month or week.")] = None,
    fresh: Annotated[bool, typer.Option(help="Copy the database first, however recent.")] = False,
    include_rehearsals: Annotated[
        bool,
        typer.Option(
            "--include-rehearsals", help="Count journey rehearsals' contacts too (left out)."
        ),
    ] = False,
) -> None:
    """Print an analytics report: the pipeline's width and length, funnels, paths,
    channel value, journey performance, engagement, NPS; or every broadcast's numbers."""
    settings = load_settings()
    configure_logging(level="warning", fmt=settings.log_format)  # stderr: stdout is the report
    try:
        if fmt not in FORMATS:
            choice("--format", fmt, FORMATS)
        if name == BROADCASTS:
            _broadcasts(settings, fmt)
            return
        choice("report", name, [*REPORTS, BROADCASTS, PROPENSITY, *VALUE_REPORTS])
        result = _propensity(settings) if name == PROPENSITY else None
        params = make_params(
            since=since,
            until=until,
            by=by,
            options=text_options(
                steps=steps,
                window_days=window_days,
                where=where or (),
                goal=goal,
                length=length,
                top=top,
                journey=journey,
                metric=metric,
                period=period,
            ),
            include_rehearsals=include_rehearsals,
        )
        if result is None and name in VALUE_REPORTS:  # from the latest value refresh
            result = value_report_of(settings, name)
        result = result or _compute(settings, name, params, fresh=fresh)
        chosen = pick_section(result, section)
    except StagecoachError as exc:
        typer.echo(f"error: {exc.one_line()}", err=True)
        raise typer.Exit(2) from None
    if fmt == "json":
        data = result.to_json()
        if section:
            data["sections"] = {section: data["sections"][section]}
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=to_plain))
    elif fmt == "csv":
        shown = chosen or result.sections[0]
        typer.echo(section_csv(shown), nl=False)
        others = [s.name for s in result.sections if s.name != shown.name]
        if others and chosen is None:
            typer.echo(f"(section {shown.name}; others: {', '.join(others)})", err=True)
    else:
        _print_table(result, section)


def _propensity(settings: Settings) -> Report:
    """Model versions, calibration, drivers and the spread of scores, from the database."""
    from stagecoach.engine.services.prediction.report import propensity_report
    from stagecoach.engine.services.storage import make_engine, upgrade

    db = make_engine(settings.resolved_database_url)
    try:
        upgrade(db)
        return propensity_report(db)
    finally:
        db.dispose()


def _broadcasts(settings: Settings, fmt: str) -> None:
    """Every broadcast, newest first, with the numbers ``broadcasts report`` prints."""
    import csv
    import io

    from stagecoach.engine.cli.broadcasts import _database, flat_report
    from stagecoach.engine.services.broadcasts.metrics import broadcast_reports

    with _database(settings) as db:
        reports = broadcast_reports(db)
    if fmt == "json":
        body = {"report": BROADCASTS, "broadcasts": [r.to_dict() for r in reports]}
        typer.echo(json.dumps(body, indent=2, ensure_ascii=False, default=to_plain))
        return
    reasons = sorted({reason for r in reports for reason in r.held})
    rows = [flat_report(r, reasons) for r in reports]
    columns = list(rows[0] if rows else flat_report(_no_broadcast(), []))
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        typer.echo(out.getvalue(), nl=False)
        return
    typer.echo(f"Broadcasts: {len(rows)}, newest first")
    shown = [c for c in columns if c not in ("reason", "content", "scheduled_at")]
    cells = [[_cell(row[c], c) if row[c] != "" else "-" for c in shown] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(shown)]
    typer.echo("  ".join(c.ljust(w) for c, w in zip(shown, widths, strict=True)))
    typer.echo("  ".join("-" * w for w in widths))
    for line in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    if not cells:
        typer.echo("(no broadcasts)")


def _no_broadcast() -> BroadcastReport:
    """A report of zeros: the CSV's header when there is no broadcast yet."""
    from stagecoach.engine.services.broadcasts.metrics import ENGAGEMENT, BroadcastReport

    return BroadcastReport(
        id="",
        status="",
        reason=None,
        segment="",
        channel="",
        content="",
        audience=0,
        late_joiners=0,
        sent=0,
        pending=0,
        failed=0,
        skipped=0,
        cancelled=0,
        engagement=dict.fromkeys(ENGAGEMENT, 0),
    )


def _compute(settings: Settings, name: str, params: Params, *, fresh: bool) -> Report:
    """Copy the database into the store when the copy is stale (or ``fresh``), then
    compute: a command has no earlier answer to show while a copy runs."""
    from stagecoach.engine.services.analytics.store import AnalyticsStore, default_path
    from stagecoach.engine.services.analytics.store import synced_at as store_as_of
    from stagecoach.engine.services.storage import make_engine, upgrade

    store = AnalyticsStore(settings.analytics_path or default_path(settings.data_dir))
    as_of = store.as_of
    max_age = timedelta(seconds=settings.dashboard_cache_seconds)
    if fresh or as_of is None or datetime.now(UTC) - as_of > max_age:
        db = make_engine(settings.resolved_database_url)
        try:
            upgrade(db)
            store.sync(db)
        finally:
            db.dispose()
    with store.read() as con:
        return run_report(name, con, params, as_of=store_as_of(con))
