"""``stagecoach import``: the command's options, its progress display and its summary.

The import itself (reading, mapping, validating and storing the rows) is
:mod:`stagecoach.engine.services.imports`; this module parses the options into an
:class:`~stagecoach.engine.services.imports.ImportOptions`, shows progress on stderr (a bar on a
terminal, a line every so often elsewhere) and prints the summary. Registered by the
CLI's composition root as ``stagecoach import``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stagecoach.engine.services.imports import (
    ImportFailed,
    ImportOptions,
    Progress,
    run_import,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

PROGRESS_EVERY_ROWS = 10_000
PROGRESS_EVERY_SECONDS = 10.0
"""Without a terminal, a progress line at least this often (rows or seconds)."""


class _Bar:
    """A rich progress bar on stderr, for a terminal."""

    def __init__(self, total: int, label: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._started = time.perf_counter()
        self._done = 0
        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._bar.add_task(label, total=max(total, 1), rate="")

    def advance(self, rows: int) -> None:
        if not self._bar.live.is_started:
            # Started with the first batch stored, after the migrations' log lines.
            self._bar.start()
        self._done += rows
        rate = self._done / max(time.perf_counter() - self._started, 1e-9)
        self._bar.update(self._task, completed=self._done, rate=f"{rate:,.0f} rows/s")

    def close(self) -> None:
        if self._bar.live.is_started:
            self._bar.update(self._task, total=max(self._done, 1), completed=self._done)
            self._bar.stop()


class _Lines:
    """A progress line every ``PROGRESS_EVERY_ROWS`` rows or ``PROGRESS_EVERY_SECONDS``,
    for logs and pipes where a bar would be noise."""

    def __init__(self, total: int, out: Callable[[str], None]) -> None:
        self._total = total
        self._out = out
        self._started = self._last_at = time.perf_counter()
        self._done = self._last_rows = 0

    def advance(self, rows: int) -> None:
        self._done += rows
        now = time.perf_counter()
        if (
            self._done - self._last_rows < PROGRESS_EVERY_ROWS
            and now - self._last_at < PROGRESS_EVERY_SECONDS
        ):
            return
        self._last_rows, self._last_at = self._done, now
        elapsed = now - self._started
        share = f" ({min(self._done / self._total, 1):.0%})" if self._total else ""
        self._out(
            f"{self._done:,} of ~{self._total:,} rows{share}, "
            f"{self._done / max(elapsed, 1e-9):,.0f} rows/s, {elapsed:.0f} s"
        )

    def close(self) -> None:
        pass


def _progress(total: int, label: str) -> Progress:
    if sys.stderr.isatty():
        return _Bar(total, label)
    return _Lines(total, lambda line: typer.echo(line, err=True))


def import_contacts(
    path: Annotated[Path, typer.Argument(help="The CSV file: a header row, one contact a row.")],
    maps: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            "-m",
            metavar="COLUMN=TRAIT[:TYPE]",
            help="Map a column to a trait (or userId), e.g. --map 'E-Mail Address=email', "
            "'Employees=company_size:int'; COLUMN=- leaves it out. Repeatable. Unmapped "
            "columns map to the trait of their own name (Email, E-mail, 手机 are known).",
        ),
    ] = None,
    source: Annotated[
        str, typer.Option(help="Recorded as the source of the events and identities.")
    ] = "import",
    consent_column: Annotated[
        str | None,
        typer.Option(
            help="A column saying whether the person opted in (yes/true/1/是). Yes records "
            "consent with --consent-wording as proof; no records nothing (an import never "
            "withdraws consent given elsewhere)."
        ),
    ] = None,
    consent_wording: Annotated[
        str | None, typer.Option(help="The text the people in the file agreed to.")
    ] = None,
    consent_channel: Annotated[str, typer.Option(help="The channel consented to.")] = "email",
    phone_country: Annotated[
        str | None,
        typer.Option(
            help="Country (ISO 3166, e.g. CN) of phone numbers written without +, for rows "
            "without a country column."
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Where rejected rows go, with line, field and reason (default: "
            "<file>.rejected.csv; replaced by each run)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=50_000, help="Rows a transaction.")] = 1000,
    encoding: Annotated[
        str | None,
        typer.Option(help="The file's encoding (default: UTF-8, with or without BOM, else GBK)."),
    ] = None,
    delimiter: Annotated[
        str | None, typer.Option(help="The cell separator (default: guessed from the header).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check every row and write the report; store nothing.")
    ] = False,
) -> None:
    """Import contacts from a CSV file: one identify a row, deduplicated by identity."""
    from stagecoach.engine.domain.contact import CHANNELS
    from stagecoach.engine.logging import configure_logging
    from stagecoach.engine.settings import load_settings

    if not 0 < len(source) <= 64:
        raise ImportFailed(f"--source {source!r} is empty or too long", fix="use 1-64 characters")
    if consent_column and not consent_wording:
        raise ImportFailed(
            "--consent-column needs --consent-wording: consent without what was agreed to "
            "is no proof",
            fix="add --consent-wording 'the text of the opt-in they ticked'",
        )
    if consent_channel not in CHANNELS:
        raise ImportFailed(
            f"--consent-channel {consent_channel!r} is not a channel",
            fix=f"use one of {', '.join(CHANNELS)}",
        )
    if phone_country is not None:
        import phonenumbers

        phone_country = phone_country.strip().upper()
        if phone_country not in phonenumbers.SUPPORTED_REGIONS:
            raise ImportFailed(
                f"--phone-country {phone_country!r} is not an ISO 3166 country code",
                fix="use two letters, e.g. CN, HK, SG, DE, US",
            )
    options = ImportOptions(
        path=path,
        maps=tuple(maps or ()),
        source=source,
        consent_column=consent_column,
        consent_wording=consent_wording,
        consent_channel=consent_channel,
        phone_country=phone_country,
        report=report,
        batch_size=batch_size,
        encoding=encoding,
        delimiter=delimiter,
        dry_run=dry_run,
    )
    settings = load_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)

    def database() -> Engine:
        from stagecoach.engine.services.storage import make_engine, upgrade

        db = make_engine(settings.resolved_database_url)
        upgrade(db)
        return db

    summary = run_import(options, database=database, progress=_progress, out=typer.echo)
    for line in summary.lines():
        typer.echo(line)
    if summary.valid == 0:
        typer.echo(
            f"nothing imported: all {summary.rows:,} rows were rejected; see {summary.report}",
            err=True,
        )
        raise typer.Exit(1)
    if summary.imported and not dry_run:
        typer.echo(
            "the contacts' workflows hear of them from a running API (stagecoach up or "
            "stagecoach api), which forwards the stored events"
        )
