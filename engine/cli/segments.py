"""``stagecoach segments``: the published segments, their members, and manual lists.

``list``, ``show``, ``members`` and ``export`` read the database (each segment's newest
ready version, ``stagecoach.engine.services.segments.queries``); ``add`` and ``remove``
change a manual segment's list (``stagecoach.engine.services.segments.lists``): each
change is a stored event the contact's workflow records, so the member counts move once
a running API has forwarded them. Reading commands never create the database.
"""

from __future__ import annotations

import csv
import getpass
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stagecoach.engine.domain.errors import DatabaseError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from stagecoach.engine.services.segments.lists import Action, ListRef, ParsedList
    from stagecoach.engine.settings import Settings

segments_app = typer.Typer(
    help="Segments: saved audiences, their members, and manual lists.", no_args_is_help=True
)

NameArgument = Annotated[str, typer.Argument(metavar="NAME", help="The segment's name.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
FileOption = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        help="A CSV file with a header row naming a contact_id or email column, one "
        "contact a row (UTF-8 or GBK).",
    ),
]
ContactOption = Annotated[
    list[str] | None,
    typer.Option(
        "--contact",
        "-c",
        metavar="ID_OR_EMAIL",
        help="A contact id (c_...) or an email address. Repeatable.",
    ),
]
ActorOption = Annotated[
    str | None,
    typer.Option(
        help="Who makes the change, recorded with each entry or exit (default: "
        "cli:<your login name>)."
    ),
]
EXPORT_PAGE = 1000


class ExportFormat(StrEnum):
    csv = "csv"


def _settings() -> Settings:
    from stagecoach.engine.logging import configure_logging
    from stagecoach.engine.settings import load_settings

    settings = load_settings()
    configure_logging(level="warning", fmt=settings.log_format)
    return settings


@contextmanager
def _database(*, write: bool = False) -> Iterator[Engine]:
    """The deployment's database; an SQLite file that does not exist is an error (a
    reading command must not create it, and a list needs a published segment)."""
    from stagecoach.engine.cli.journeys import _read_db
    from stagecoach.engine.services.storage import upgrade
    from stagecoach.engine.services.storage.db import redact

    settings = _settings()
    db = _read_db(settings)
    if db is None:
        raise DatabaseError(
            f"no database at {redact(settings.resolved_database_url)}",
            fix="deploy a project with segments first (stagecoach deploy --to local), run"
            " from its folder, or set STAGECOACH_DATABASE_URL",
        )
    try:
        if write:
            upgrade(db)
        yield db
    finally:
        db.dispose()


def _at(value: datetime) -> str:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.isoformat(timespec="seconds")


@segments_app.command("list")
def list_segments(json_output: JsonOption = False) -> None:
    """Every published segment: kind, status, members and description."""
    from stagecoach.engine.services.segments.queries import segment_summaries

    with _database() as db:
        summaries = segment_summaries(db)
    if json_output:
        typer.echo(json.dumps([s.to_dict() for s in summaries], indent=2, ensure_ascii=False))
        return
    if not summaries:
        typer.echo("no segments published: define Segment(...) in the project and deploy it")
        return
    width = max(len(s.name) for s in summaries)
    typer.echo(f"{'name':<{width}}  {'kind':<8}  {'status':<11}  {'members':>8}  description")
    for s in summaries:
        kind = "manual" if s.manual else "computed"
        typer.echo(
            f"{s.name:<{width}}  {kind:<8}  {s.status:<11}  {s.members:>8,}  {s.description}"
        )


@segments_app.command("show")
def show(name: NameArgument, json_output: JsonOption = False) -> None:
    """One segment: its definition, versions, size, and entries and exits per day over
    the last 30 days."""
    from stagecoach.engine.services.segments.queries import daily_activity, segment_summary

    with _database() as db:
        summary = segment_summary(db, name)
        days = daily_activity(db, name, days=30)
    if json_output:
        body = summary.to_dict()
        body["days"] = [
            {"day": d.day.isoformat(), "entered": d.entered, "exited": d.exited, "size": d.size}
            for d in days
        ]
        typer.echo(json.dumps(body, indent=2, ensure_ascii=False))
        return
    typer.echo(f"segment      {summary.name}")
    typer.echo(f"description  {summary.description or '-'}")
    kind = "manual list" if summary.manual else "computed"
    typer.echo(f"kind         {kind}{' (searchable)' if summary.searchable else ''}")
    typer.echo(f"version      {summary.version[:12]} ({summary.status})")
    if summary.ready_version is not None and summary.ready_version != summary.version:
        typer.echo(f"members of   {summary.ready_version[:12]}")
    typer.echo(f"members      {summary.members:,}")
    if summary.spec.condition is not None:
        condition = json.dumps(summary.spec.condition.to_dict(), ensure_ascii=False)
        typer.echo(f"condition    {condition}")
    active = [d for d in days if d.entered or d.exited]
    if not active:
        typer.echo("no entries or exits in the last 30 days")
        return
    typer.echo(f"{'day':<10}  {'entered':>8}  {'exited':>8}  {'size':>8}")
    for d in active:
        typer.echo(f"{d.day.isoformat():<10}  {d.entered:>8,}  {d.exited:>8,}  {d.size:>8,}")


@segments_app.command("members")
def members(
    name: NameArgument,
    after: Annotated[
        str | None,
        typer.Option(help="Start after this contact id (the last of the previous page)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Members a page.")] = 100,
    json_output: JsonOption = False,
) -> None:
    """A page of the segment's members, by contact id, with since when and why."""
    from stagecoach.engine.services.segments.queries import members as read_members

    with _database() as db:
        rows = read_members(db, name, after=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    following = rows[-1].contact_id if more and rows else None
    if json_output:
        body = {
            "members": [
                {"contact_id": r.contact_id, "since": _at(r.since), "reason": r.reason}
                for r in rows
            ],
            "next": following,
        }
        typer.echo(json.dumps(body, indent=2, ensure_ascii=False))
        return
    if not rows:
        typer.echo(f"no members{' after ' + after if after else ''}")
        return
    width = max(len(r.contact_id) for r in rows)
    for r in rows:
        typer.echo(f"{r.contact_id:<{width}}  {_at(r.since)}  {r.reason}")
    if following:
        typer.echo(f"more: stagecoach segments members {name} --after {following}")


@segments_app.command("export")
def export(
    name: NameArgument,
    output_format: Annotated[
        ExportFormat, typer.Option("--format", help="The file format (csv).")
    ] = ExportFormat.csv,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="The file to write (default: stdout).")
    ] = None,
) -> None:
    """Every member as CSV: contact_id, email, since, reason (UTF-8 with BOM, which
    Excel reads)."""
    from sqlmodel import Session, col, select

    from stagecoach.engine.services.segments.queries import members as read_members
    from stagecoach.engine.services.storage.models import Identity

    with _database() as db:
        handle = output.open("w", encoding="utf-8-sig", newline="") if output else sys.stdout
        count = 0
        try:
            writer = csv.writer(handle)
            writer.writerow(["contact_id", "email", "since", "reason"])
            after: str | None = None
            while True:
                page = read_members(db, name, after=after, limit=EXPORT_PAGE)
                if not page:
                    break
                with Session(db) as session:
                    emails: dict[str, str] = {}
                    for contact_id, value in session.exec(
                        select(Identity.contact_id, Identity.value)
                        .where(
                            Identity.kind == "email",
                            col(Identity.contact_id).in_([r.contact_id for r in page]),
                        )
                        .order_by(col(Identity.created_at))
                    ).all():
                        emails.setdefault(contact_id, value)
                for r in page:
                    writer.writerow(
                        [r.contact_id, emails.get(r.contact_id, ""), _at(r.since), r.reason]
                    )
                count += len(page)
                after = page[-1].contact_id
        finally:
            if output:
                handle.close()
    if output:
        typer.echo(f"{count:,} members of {name} written to {output}")


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"


def _change(
    action: Action,
    name: str,
    file: Path | None,
    contacts: list[str] | None,
    actor: str | None,
) -> None:
    from stagecoach.engine.services.segments.lists import (
        ListError,
        parse_list_csv,
        prepare_change,
        refs_from,
        store_change,
    )

    flag = f"segments {action}"
    if file is None and not contacts:
        raise ListError(
            f"{flag} needs the contacts", fix="pass --file LIST.csv or --contact ID_OR_EMAIL"
        )
    if file is not None and contacts:
        raise ListError(f"{flag} takes --file or --contact, not both", fix="run it once for each")
    refs: ParsedList | list[ListRef]
    if file is not None:
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ListError(
                f"cannot read {file}: {exc.strerror}", fix="check the path and its permissions"
            ) from exc
        refs = parse_list_csv(data, name=file.name)
    else:
        refs = refs_from(contacts or [])
    who = actor if actor is not None else f"cli:{_login()}"
    with _database(write=True) as db:
        result = store_change(db, prepare_change(db, name, refs, action=action, actor=who))
    for line in result.lines():
        typer.echo(line)
    if result.stored:
        typer.echo(
            "the contacts' workflows record the change once a running API (stagecoach up or"
            " stagecoach api) forwards the stored events"
        )
    if result.rejected and not result.accepted:
        raise typer.Exit(1)


@segments_app.command("add")
def add(
    name: NameArgument,
    file: FileOption = None,
    contacts: ContactOption = None,
    actor: ActorOption = None,
) -> None:
    """Add contacts to a manual segment, from a CSV file or one by one. Rejected rows
    are listed with line, field and reason; the rest are stored. Exit 1 when every row
    was rejected."""
    _change("add", name, file, contacts, actor)


@segments_app.command("remove")
def remove(
    name: NameArgument,
    file: FileOption = None,
    contacts: ContactOption = None,
    actor: ActorOption = None,
) -> None:
    """Remove contacts from a manual segment, from a CSV file or one by one (as for
    add)."""
    _change("remove", name, file, contacts, actor)
