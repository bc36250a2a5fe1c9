"""``stagecoach broadcasts``: one-off campaigns to a segment, from draft to report.

``create`` keeps a draft written on the command line (a project's ``Broadcast(...)``
drafts come from ``stagecoach deploy``); ``preview`` and ``test-send`` look before
launching; ``schedule`` checks and starts the broadcast's workflow (a second schedule
answers with the first); ``pause``, ``resume`` and ``cancel`` steer it; ``list``,
``show`` and ``report`` read its numbers (``report --follow`` shows a live progress bar
until it finishes or pauses). The work itself is ``stagecoach.engine.services.broadcasts``.

Every refusal is one line naming the field and the fix (exit 2, nothing sent); launch
problems are listed one a line (exit 1, nothing sent).
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import json
import sys
import time as clock
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from stagecoach.engine.domain.errors import StagecoachError

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from temporalio.client import Client

    from stagecoach.engine.domain.broadcasts import Broadcast
    from stagecoach.engine.domain.content import ContentLibrary
    from stagecoach.engine.services.broadcasts.metrics import BroadcastReport
    from stagecoach.engine.settings import Settings

broadcasts_app = typer.Typer(
    help="Broadcasts: one-off campaigns to a segment, previewed, tested, launched and reported.",
    no_args_is_help=True,
)

IdArgument = Annotated[str, typer.Argument(metavar="ID", help="The broadcast's id (its name).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
FOLLOW_POLL_SECONDS = 1.0
"""How often ``report --follow`` asks the broadcast's workflow for its progress."""
STEER_WAIT_SECONDS = 20.0
"""How long pause, resume and cancel wait to see the workflow act on the signal."""


class BroadcastInputError(StagecoachError, ValueError):
    """A command-line value that cannot make or steer a broadcast."""


class WhenPassed(StrEnum):
    send = "send"
    skip = "skip"


def _settings() -> Settings:
    from stagecoach.engine.logging import configure_logging
    from stagecoach.engine.settings import load_settings

    settings = load_settings()
    configure_logging(level="warning", fmt=settings.log_format)
    return settings


@contextmanager
def _database(settings: Settings) -> Iterator[Engine]:
    """The deployment's database, migrated; an SQLite file that does not exist is an
    error (a broadcast needs a published segment, so a deploy came first)."""
    from stagecoach.engine.cli.journeys import _read_db
    from stagecoach.engine.domain.errors import DatabaseError
    from stagecoach.engine.services.storage import upgrade
    from stagecoach.engine.services.storage.db import redact

    db = _read_db(settings)
    if db is None:
        raise DatabaseError(
            f"no database at {redact(settings.resolved_database_url)}",
            fix="deploy a project with segments first (stagecoach deploy --to local), run"
            " from its folder, or set STAGECOACH_DATABASE_URL",
        )
    try:
        upgrade(db)
        yield db
    finally:
        db.dispose()


@dataclass(frozen=True)
class _Project:
    library: ContentLibrary
    events: frozenset[str]

    @property
    def catalogue(self) -> dict[str, frozenset[tuple[str, str]]]:
        from stagecoach.engine.services.broadcasts.preview import content_catalogue

        return content_catalogue(self.library)


def _project(settings: Settings) -> _Project:
    """The content library and event catalog a broadcast is checked against: the
    project's, as the worker that sends it loads them."""
    from stagecoach.engine.domain.content import ContentLibrary
    from stagecoach.engine.services.project import load_project

    project = load_project(settings)
    return _Project(
        library=ContentLibrary.load(project.content_dir(settings)),
        events=frozenset(project.definitions.events.names()),
    )


def _actor() -> str:
    from stagecoach.engine.cli.segments import _login

    return f"cli:{_login()}"


def _temporal(settings: Settings, work: Callable[[Client], Awaitable[Any]]) -> Any:
    from stagecoach.workflows.client import connect

    async def run() -> Any:
        return await work(await connect(settings))

    return asyncio.run(run())


def _at(moment: str | None) -> str:
    if not moment:
        return "-"
    return datetime.fromisoformat(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _when(b: Broadcast) -> str:
    """When a broadcast sends, in words."""
    if b.local_time is not None:
        day = b.send_at.date().isoformat() if b.send_at else "launch day (UTC)"
        passed = "sent at once" if b.when_passed == "send" else "skipped"
        return (
            f"at {b.local_time.strftime('%H:%M')} in each recipient's own zone on {day};"
            f" a zone already past it is {passed}"
        )
    if b.send_at is not None:
        return f"at {b.send_at.isoformat()}"
    return "at launch"


def _duration(span: timedelta) -> str:
    """4 hours, 7 days, 90 minutes: a span as a marketer writes it."""
    seconds = int(span.total_seconds())
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds % size == 0 and seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"


def _fail(message: str, fix: str) -> BroadcastInputError:
    return BroadcastInputError(message, fix=fix)


def _spelled(value: str, known: list[str]) -> str:
    close = difflib.get_close_matches(value, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- reading ----------------------------------------------------------------------------


@broadcasts_app.command("list")
def list_broadcasts(json_output: JsonOption = False) -> None:
    """Every broadcast, newest first: status, segment, channel, audience, sent, and when
    it was scheduled, started and finished (UTC)."""
    from stagecoach.engine.services.broadcasts.metrics import broadcast_reports
    from stagecoach.engine.services.broadcasts.store import list_rows

    settings = _settings()
    with _database(settings) as db:
        sources = {row.id: row.source for row in list_rows(db)}
        reports = broadcast_reports(db)
    if json_output:
        body = [
            {
                "id": r.id,
                "status": r.status,
                "reason": r.reason,
                "source": sources.get(r.id),
                "segment": r.segment,
                "channel": r.channel,
                "content": r.content,
                "audience": r.audience,
                "sent": r.sent,
                "scheduled_at": r.scheduled_at,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
            }
            for r in reports
        ]
        typer.echo(json.dumps(body, indent=2, ensure_ascii=False))
        return
    if not reports:
        typer.echo(
            "no broadcasts: define Broadcast(...) in the project and deploy it, or run"
            " 'stagecoach broadcasts create'"
        )
        return
    rows = [
        [
            r.id,
            r.status,
            r.segment,
            r.channel,
            f"{r.audience:,}",
            f"{r.sent:,}",
            _at(r.scheduled_at),
            _at(r.started_at),
            _at(r.finished_at),
        ]
        for r in reports
    ]
    header = ["id", "status", "segment", "channel", "audience", "sent"]
    header += ["scheduled", "started", "finished"]
    _table(header, rows, right={4, 5})


def _table(header: list[str], rows: list[list[str]], *, right: Collection[int] = ()) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    typer.echo(line(header))
    for row in rows:
        typer.echo(line(row))


@broadcasts_app.command("show")
def show(broadcast_id: IdArgument, json_output: JsonOption = False) -> None:
    """One broadcast: its spec (segment, content, channel, when it sends, A/B test),
    where it came from, and its report's numbers."""
    from stagecoach.engine.services.broadcasts.metrics import broadcast_report
    from stagecoach.engine.services.broadcasts.store import broadcast_of, get_row

    settings = _settings()
    with _database(settings) as db:
        row = get_row(db, broadcast_id)
        report = broadcast_report(db, broadcast_id)
    b = broadcast_of(row)
    if json_output:
        body = {
            "id": row.id,
            "version": row.version,
            "source": row.source,
            "actor": row.actor,
            "spec": b.to_dict(),
            "report": report.to_dict(),
        }
        typer.echo(json.dumps(body, indent=2, ensure_ascii=False, default=str))
        return
    typer.echo(f"broadcast    {row.id}  {row.version[:12]}")
    if b.description:
        typer.echo(f"description  {b.description}")
    typer.echo(f"from         {row.source}" + (f" (by {row.actor})" if row.actor else ""))
    typer.echo(f"segment      {b.segment}")
    typer.echo(f"content      {b.content} over {b.channel}")
    typer.echo(f"sends        {_when(b)}")
    if b.override_caps:
        typer.echo("caps         overridden (a transactional notice)")
    if b.ab is not None:
        arms = ", ".join(
            v.name
            + (f" ({v.content})" if v.content else "")
            + (f" subject {v.subject!r}" if v.subject else "")
            for v in b.ab.variants
        )
        typer.echo(
            f"A/B test     {arms}; {b.ab.sample:.0%} each, winner on {b.ab.metric} after"
            f" {_duration(b.ab.window)}, default {b.ab.default}"
        )
    if b.conversion:
        typer.echo(f"conversion   {b.conversion} within {_duration(b.attribution)}")
    if b.seeds:
        typer.echo(f"seeds        {', '.join(b.seeds)}")
    _echo_report(report)


def report_rows(report: BroadcastReport) -> list[tuple[str, str]]:
    """A report as label/value lines: what ``broadcasts report`` prints."""
    lines = [
        ("status", report.status + (f" ({report.reason})" if report.reason else "")),
        ("audience", f"{report.audience:,} (late joiners, not sent: {report.late_joiners:,})"),
        ("sent", f"{report.sent:,}"),
        ("pending", f"{report.pending:,}"),
        ("failed", f"{report.failed:,}"),
        ("skipped", f"{report.skipped:,}"),
        ("cancelled", f"{report.cancelled:,}"),
        (
            "held",
            ", ".join(f"{reason} {n:,}" for reason, n in sorted(report.held.items())) or "0",
        ),
    ]
    lines += [(name, f"{n:,}") for name, n in report.engagement.items()]
    if report.conversion_event:
        lines.append(("conversions", f"{report.conversions or 0:,} ({report.conversion_event})"))
    if report.ab:
        arms = report.ab.get("arms") or []
        shown = ", ".join(
            f"{a.get('name')} {a.get('successes', 0)}/{a.get('sent', 0)}" for a in arms
        )
        p_value = report.ab.get("p_value")
        verdict = "significant" if report.ab.get("significant") else "not significant"
        tested = f"; p={p_value:.4g} ({verdict})" if isinstance(p_value, float) else ""
        lines.append(("A/B", f"winner {report.winner or '-'}; {shown}{tested}"))
    for job in report.wechat_jobs:
        lines.append(
            (
                "wechat job",
                f"{job['clientmsgid']} {job['status']}: total {job['total']}, filtered"
                f" {job['filtered']}, sent {job['sent']}, errors {job['errors']}",
            )
        )
    lines += [
        ("scheduled", report.scheduled_at or "-"),
        ("started", report.started_at or "-"),
        ("finished", report.finished_at or "-"),
    ]
    return lines


def _echo_report(report: BroadcastReport) -> None:
    for label, value in report_rows(report):
        typer.echo(f"{label:<12} {value}")


def flat_report(report: BroadcastReport, held_reasons: list[str]) -> dict[str, Any]:
    """One report as a flat row (``stagecoach report broadcasts``'s table and CSV)."""
    row: dict[str, Any] = {
        "id": report.id,
        "status": report.status,
        "reason": report.reason or "",
        "segment": report.segment,
        "channel": report.channel,
        "content": report.content,
        "audience": report.audience,
        "late_joiners": report.late_joiners,
        "sent": report.sent,
        "pending": report.pending,
        "failed": report.failed,
        "skipped": report.skipped,
        "cancelled": report.cancelled,
        "held": sum(report.held.values()),
    }
    for reason in held_reasons:
        row[f"held_{reason}"] = report.held.get(reason, 0)
    row.update(report.engagement)
    row["conversions"] = "" if report.conversions is None else report.conversions
    row["winner"] = report.winner or ""
    row["scheduled_at"] = report.scheduled_at or ""
    row["started_at"] = report.started_at or ""
    row["finished_at"] = report.finished_at or ""
    return row


# --- creating and previewing ------------------------------------------------------------


def _send_at(value: str | None, now: datetime) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _fail(
            f"--at {value!r} is not an ISO 8601 time",
            "write it like 2027-01-05T09:00+08:00 (or ...Z for UTC)",
        ) from None
    if moment.tzinfo is None:
        raise _fail(
            f"--at {value} has no time zone",
            f"add its offset, e.g. {value}+08:00 for Beijing time or {value}Z for UTC",
        )
    if moment < now:
        raise _fail(
            f"--at {value} is in the past (it is now {now.isoformat(timespec='seconds')})",
            "give a later time, or leave --at out to send at launch",
        )
    return moment


def _local_time(value: str | None) -> time | None:
    if value is None:
        return None
    try:
        return time.fromisoformat(value)
    except ValueError:
        raise _fail(
            f"--local-time {value!r} is not a time of day",
            "write it as HH:MM on the 24-hour clock, e.g. 09:00",
        ) from None


@broadcasts_app.command("create")
def create(
    name: Annotated[
        str,
        typer.Argument(
            metavar="NAME",
            help="The broadcast's id: lowercase letters, digits, '-' and '_'.",
        ),
    ],
    segment: Annotated[str, typer.Option(help="The audience: a published segment's name.")],
    content: Annotated[str, typer.Option(help="The content item sent.")],
    channel: Annotated[
        str, typer.Option(help="email, wechat, sms or wechat_mass (WeChat mass send).")
    ] = "email",
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            metavar="ISO8601",
            help="When sending starts, with its zone, e.g. 2027-01-05T09:00+08:00 "
            "(default: at launch). With --local-time, the day.",
        ),
    ] = None,
    local_time: Annotated[
        str | None,
        typer.Option(
            "--local-time",
            metavar="HH:MM",
            help="Send at this time in each recipient's own zone.",
        ),
    ] = None,
    when_passed: Annotated[
        WhenPassed,
        typer.Option(
            "--when-passed",
            help="With --local-time: a zone already past that time is sent at once (send) "
            "or left out (skip).",
        ),
    ] = WhenPassed.send,
    override_caps: Annotated[
        bool,
        typer.Option(
            "--override-caps",
            help="Transactional notices only: send despite the frequency cap (consent, "
            "suppression and quiet hours still hold).",
        ),
    ] = False,
    conversion: Annotated[
        str | None,
        typer.Option(help="An event type counted as a conversion in the report."),
    ] = None,
    description: Annotated[str, typer.Option(help="For people reading the list.")] = "",
    seeds: Annotated[
        list[str] | None,
        typer.Option("--seed", metavar="ADDR", help="A test-send address; repeatable."),
    ] = None,
) -> None:
    """Create a draft broadcast from the command line (source 'cli'). Nothing is sent
    until 'stagecoach broadcasts schedule'. An unknown segment, content item, channel
    or conversion event, and an --at in the past or without a zone, are refused."""
    from stagecoach.engine.domain.broadcasts import CHANNELS, Broadcast, BroadcastError
    from stagecoach.engine.services.broadcasts.store import (
        BroadcastNotFound,
        check_launch,
        get_row,
        save_broadcast,
    )
    from stagecoach.engine.services.segments.catalog import latest_segments

    settings = _settings()
    now = datetime.now(UTC)
    if channel not in CHANNELS:
        raise _fail(
            f"--channel {channel!r} is not a broadcast channel",
            f"use one of: {', '.join(CHANNELS)}",
        )
    send_at = _send_at(at, now)
    wall = _local_time(local_time)
    if wall is None and when_passed is not WhenPassed.send:
        raise _fail(
            "--when-passed applies to a local-time send only", "add --local-time HH:MM, or drop it"
        )
    try:
        broadcast = Broadcast(
            name=name,
            segment=segment,
            content=content,
            channel=channel,
            description=description,
            send_at=send_at,
            local_time=wall,
            when_passed=when_passed.value,
            override_caps=override_caps,
            seeds=tuple(seeds or ()),
            conversion=conversion,
        )
    except BroadcastError as exc:
        what, split, fix = str(exc).partition("; ")
        if not split:
            what, split, fix = str(exc).partition(": use ")
            fix = f"use {fix}" if split else ""
        raise _fail(what, fix or "correct it") from None
    project = _project(settings)
    items = sorted(project.catalogue)
    if content not in project.catalogue:
        raise _fail(
            f"--content {content!r} is not in the content library{_spelled(content, items)}",
            "name one of the items 'stagecoach content list' shows, or add it under content/",
        )
    if conversion is not None and conversion not in project.events:
        raise _fail(
            f"--conversion {conversion!r} is not in the event catalog"
            f"{_spelled(conversion, sorted(project.events))}",
            "name an event type the project declares, or declare it",
        )
    with _database(settings) as db:
        published = sorted(latest_segments(db))
        if segment not in published:
            known = ", ".join(published) or "(none published: deploy a project with segments)"
            raise _fail(
                f"--segment {segment!r} is not a published segment{_spelled(segment, published)}",
                f"use one of: {known}",
            )
        try:
            before = get_row(db, name)
        except BroadcastNotFound:
            before = None
        if before is not None and before.version != broadcast.version and before.status != "draft":
            raise _fail(
                f"broadcast {name!r} was already launched ({before.status}) with another spec",
                "give the new broadcast another name; a launched broadcast keeps its spec",
            )
        row = save_broadcast(db, broadcast, source="cli", actor=_actor())
        problems = check_launch(
            db, broadcast, content=project.catalogue, events=project.events, now=now
        )
    if before is None:
        done = "created"
    elif before.version == row.version:
        done = f"unchanged ({row.status})"
    else:
        done = f"replaced (was from {before.source})"
    typer.echo(f"draft {row.id} {done}: {segment} <- {content} over {channel}, {_when(broadcast)}")
    for problem in problems:
        typer.echo(f"not launchable yet: {problem}")
    typer.echo(
        f"next: stagecoach broadcasts preview {row.id}, then stagecoach broadcasts schedule"
        f" {row.id}"
    )


@broadcasts_app.command("preview")
def preview(
    broadcast_id: IdArgument,
    sample: Annotated[int, typer.Option(min=0, max=1000, help="Contacts in the sample.")] = 10,
    json_output: JsonOption = False,
) -> None:
    """How many the broadcast would reach now, their locales and zones, a sample, and
    everything that would stop its launch (exit 1 when there is any). The audience is
    fixed only when sending starts."""
    from stagecoach.engine.services.broadcasts.preview import preview as look
    from stagecoach.engine.services.broadcasts.store import broadcast_of, get_row

    settings = _settings()
    project = _project(settings)
    with _database(settings) as db:
        row = get_row(db, broadcast_id)
        found = look(
            db,
            broadcast_of(row),
            library=project.library,
            events=project.events,
            now=datetime.now(UTC),
            sample=sample,
        )
    if json_output:
        typer.echo(json.dumps({**found.to_dict(), "status": row.status}, indent=2))
    else:
        typer.echo(
            f"{found.broadcast_id} ({row.status}): {found.audience:,} contacts in segment"
            f" {found.segment} now (fixed when sending starts)"
        )

        def counts(values: dict[str, int]) -> str:
            ordered = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))
            return ", ".join(f"{k} {n:,}" for k, n in ordered) or "-"

        typer.echo(f"locales  {counts(found.locales)}")
        typer.echo(f"zones    {counts(found.timezones)}")
        for member in found.sample:
            typer.echo(
                f"  {member['contact_id']}  {member['locale'] or '-'}"
                f"  {member['timezone'] or '-'}  {member['stage'] or '-'}"
            )
        for problem in found.problems:
            typer.echo(f"problem: {problem}")
        if not found.problems:
            typer.echo("no problems: ready to schedule")
            if not found.audience:
                typer.echo("note: the segment has no members now; a launch would send nothing")
    if found.problems:
        raise typer.Exit(1)


@broadcasts_app.command("test-send")
def send_test(
    broadcast_id: IdArgument,
    to: Annotated[
        list[str] | None,
        typer.Option(
            "--to",
            metavar="ADDR",
            help="A seed address (an email, or an openid for WeChat); repeatable. "
            "Default: the broadcast's seeds.",
        ),
    ] = None,
    locale: Annotated[str, typer.Option(help="The locale rendered.")] = "en",
) -> None:
    """Send the broadcast now to seed addresses through the channel's configured
    connector, each A/B arm separately, its subject marked as a test: no delivery
    record, no effect on caps. One line per seed and arm; exit 1 when any failed."""
    from stagecoach.engine.cli.compose import connectors_from_settings
    from stagecoach.engine.services.broadcasts.preview import send_to_seeds
    from stagecoach.engine.services.broadcasts.store import broadcast_of, get_row

    settings = _settings()
    project = _project(settings)
    with _database(settings) as db:
        b = broadcast_of(get_row(db, broadcast_id))
        seeds = list(to or b.seeds)
        if not seeds:
            raise _fail(
                f"broadcast {broadcast_id!r} has no seed addresses",
                "pass --to ADDR (repeatable), or declare seeds=(...) on the broadcast",
            )
        channel = "wechat" if b.channel == "wechat_mass" else b.channel
        connectors = connectors_from_settings(settings, db)
        connector = connectors.get(channel)
        if connector is None:
            raise _fail(
                f"no connector is configured for channel {channel!r}",
                f"configure one (see docs/settings.md), or test on one of: {', '.join(connectors)}",
            )

        async def send() -> list[Any]:
            try:
                return await send_to_seeds(
                    b,
                    seeds=seeds,
                    library=project.library,
                    connector=connector,
                    now=datetime.now(UTC),
                    locale=locale,
                )
            finally:
                for opened in connectors.values():
                    closing = getattr(opened, "aclose", None) or getattr(opened, "close", None)
                    if closing is not None and inspect.isawaitable(pending := closing()):
                        await pending

        results = asyncio.run(send())
    for r in results:
        arm = f"arm {r.arm}" if r.arm else "all"
        typer.echo(f"{'ok  ' if r.ok else 'FAIL'}  {r.address}  {arm}  {r.detail}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


# --- launching and steering -------------------------------------------------------------


@broadcasts_app.command("schedule")
def schedule(broadcast_id: IdArgument) -> None:
    """Launch: check the broadcast, then start its workflow, which sends at its time.
    Prints when it sends and the audience now. A second schedule starts nothing and says
    so (exit 0); problems are listed and nothing is sent (exit 1)."""
    from stagecoach.engine.services.broadcasts import launch as steer
    from stagecoach.engine.services.broadcasts.preview import preview as look
    from stagecoach.engine.services.broadcasts.store import (
        BroadcastRefused,
        broadcast_of,
        get_row,
    )

    settings = _settings()
    project = _project(settings)
    now = datetime.now(UTC)
    with _database(settings) as db:
        row = get_row(db, broadcast_id)
        b = broadcast_of(row)
        if row.status != "draft":
            _already(row.id, row.status, row.audience_size)
            return
        found = look(db, b, library=project.library, events=project.events, now=now, sample=0)
        if found.problems:
            _refused(broadcast_id, found.problems)

        async def start(client: Client) -> steer.Launched:
            return await steer.launch(
                client,
                db,
                broadcast_id,
                task_queue=settings.temporal_task_queue,
                content=project.catalogue,
                events=project.events,
                now=now,
                actor=_actor(),
                batch_size=settings.broadcast_batch_size,
                batch_queue=settings.broadcast_task_queue,
            )

        try:
            launched: steer.Launched = _temporal(settings, start)
        except BroadcastRefused as exc:
            _refused(broadcast_id, exc.problems)
        if not launched.first:
            _already(broadcast_id, launched.status, get_row(db, broadcast_id).audience_size)
            return
    when = "now" if b.send_at is None and b.local_time is None else _when(b)
    typer.echo(f"launched {broadcast_id} (workflow {launched.workflow_id}): sends {when}")
    typer.echo(
        f"audience: {found.audience:,} contacts in {b.segment} now; fixed when sending starts"
    )
    typer.echo(f"follow it: stagecoach broadcasts report {broadcast_id} --follow")


def _already(broadcast_id: str, status: str, audience: int) -> None:
    typer.echo(
        f"broadcast {broadcast_id} was already launched ({status}, audience {audience:,});"
        " nothing new was started"
    )


def _refused(broadcast_id: str, problems: list[str]) -> NoReturn:
    typer.echo(f"broadcast {broadcast_id} not launched; nothing was sent:", err=True)
    for problem in problems:
        typer.echo(f"  - {problem}", err=True)
    raise typer.Exit(1)


def _steer(
    broadcast_id: str,
    action: str,
    send: Callable[[Client, Engine], Awaitable[None]],
    done: Callable[[str], bool],
) -> None:
    """Signal the workflow, then wait (briefly) until its progress shows it acted."""
    from stagecoach.engine.services.broadcasts import launch as steer
    from stagecoach.engine.services.broadcasts.store import get_row

    settings = _settings()
    with _database(settings) as db:
        row = get_row(db, broadcast_id)  # an unknown id needs no Temporal to be refused
        if row.status in ("draft", "completed", "cancelled"):
            done_as = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[action]
            raise steer.BroadcastNotSteerable(broadcast_id, row.status, done_as)

        async def run(client: Client) -> dict[str, Any] | None:
            await send(client, db)
            deadline = clock.monotonic() + STEER_WAIT_SECONDS
            while clock.monotonic() < deadline:
                seen = await steer.progress(client, db, broadcast_id)
                if done(str(seen.get("status"))):
                    return seen
                await asyncio.sleep(0.2)
            return None

        seen: dict[str, Any] | None = _temporal(settings, run)
    if seen is None:
        typer.echo(
            f"asked broadcast {broadcast_id} to {action}; its workflow has not acted within"
            f" {STEER_WAIT_SECONDS:.0f} s: is a worker running? (stagecoach doctor)"
        )
        return
    reason = f" ({seen['reason']})" if seen.get("reason") else ""
    typer.echo(
        f"broadcast {broadcast_id} {seen['status']}{reason}: {seen.get('sent', 0):,} sent"
        f" of {seen.get('audience', 0):,}"
    )


@broadcasts_app.command("pause")
def pause(
    broadcast_id: IdArgument,
    reason: Annotated[str | None, typer.Option(help="Why, shown with its status.")] = None,
) -> None:
    """Pause sending between batches (within seconds); nothing is lost: resume goes on
    from where it stopped."""
    from stagecoach.engine.services.broadcasts import launch as steer

    async def send(client: Client, db: Engine) -> None:
        await steer.pause(client, db, broadcast_id, reason or f"paused by {_actor()}")

    _steer(broadcast_id, "pause", send, lambda s: s in ("paused", "completed", "cancelled"))


@broadcasts_app.command("resume")
def resume(broadcast_id: IdArgument) -> None:
    """Resume a paused broadcast where it stopped."""
    from stagecoach.engine.services.broadcasts import launch as steer

    async def send(client: Client, db: Engine) -> None:
        await steer.resume(client, db, broadcast_id)

    _steer(broadcast_id, "resume", send, lambda s: s != "paused")


@broadcasts_app.command("cancel")
def cancel(
    broadcast_id: IdArgument,
    reason: Annotated[str | None, typer.Option(help="Why, shown with its status.")] = None,
) -> None:
    """Cancel: recipients not yet sent stay unsent (counted as cancelled); those sent
    stay sent."""
    from stagecoach.engine.services.broadcasts import launch as steer

    async def send(client: Client, db: Engine) -> None:
        await steer.cancel(client, db, broadcast_id, reason or f"cancelled by {_actor()}")

    _steer(broadcast_id, "cancel", send, lambda s: s in ("cancelled", "completed"))


# --- the report -------------------------------------------------------------------------


@broadcasts_app.command("report")
def report(
    broadcast_id: IdArgument,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Show a live progress bar until it completes, is cancelled or pauses.",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """The broadcast's numbers: audience and late joiners, sent, pending, failed,
    skipped, cancelled, held by reason, engagement, conversions, the A/B result."""
    from stagecoach.engine.services.broadcasts.metrics import broadcast_report
    from stagecoach.engine.services.broadcasts.store import get_row

    settings = _settings()
    with _database(settings) as db:
        row = get_row(db, broadcast_id)
        if follow and row.status != "draft":
            _temporal(settings, lambda client: _follow(client, db, broadcast_id))
        found = broadcast_report(db, broadcast_id)
    if json_output:
        typer.echo(json.dumps(found.to_dict(), indent=2, ensure_ascii=False, default=str))
        return
    typer.echo(f"broadcast    {found.id}: {found.segment} <- {found.content} over {found.channel}")
    _echo_report(found)


FINAL = ("completed", "cancelled", "paused")


async def _follow(client: Client, db: Engine, broadcast_id: str) -> None:
    """Poll the workflow's progress until it completes, is cancelled or pauses: a bar on
    a terminal (stderr), a line per change elsewhere."""
    from temporalio.client import WorkflowQueryFailedError

    from stagecoach.engine.services.broadcasts import launch as steer
    from stagecoach.engine.services.broadcasts.metrics import broadcast_report

    show = _Bar() if sys.stderr.isatty() else _Lines()
    try:
        while True:
            try:
                seen = await steer.progress(client, db, broadcast_id)
            except WorkflowQueryFailedError:
                seen = {"status": "scheduled"}  # asked before its first task: not yet
            status = str(seen.get("status"))
            done = int(seen.get("sent") or 0) + int(seen.get("failed") or 0)
            done += sum(int(n) for n in (seen.get("held") or {}).values())
            total = int(seen.get("audience") or 0)
            if status in FINAL:
                # The database's count: skipped and cancelled recipients are done too.
                final = broadcast_report(db, broadcast_id)
                show.update(status, final.done, final.audience)
                return
            show.update(status, done, total)
            await asyncio.sleep(FOLLOW_POLL_SECONDS)
    finally:
        show.close()


class _Bar:
    """rich's progress bar on stderr (rich comes with Typer, and ``stagecoach import``
    draws its bar with it)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self._task = self._bar.add_task("starting", total=None)
        self._bar.start()

    def update(self, status: str, done: int, total: int) -> None:
        self._bar.update(self._task, description=status, completed=done, total=total or None)

    def close(self) -> None:
        self._bar.stop()


class _Lines:
    """A progress line on stderr whenever the status or the count moves (logs, pipes)."""

    def __init__(self) -> None:
        self._last: tuple[str, int] | None = None

    def update(self, status: str, done: int, total: int) -> None:
        if self._last == (status, done):
            return
        self._last = (status, done)
        share = f" ({done / total:.0%})" if total else ""
        typer.echo(f"{status}: {done:,} of {total:,} done{share}", err=True)

    def close(self) -> None:
        pass
