"""``stagecoach contact show|timeline|why``: a contact's live state, its whole story, and
why it did or did not get a journey step's message.

``CONTACT`` is whoever the operator knows: a contact id, a ``userId``, ``anonymousId``,
email address, phone number, WeChat openid or unionid, or CRM id, found in the database
by the same lookup the admin API and the dashboard use (``stagecoach.engine.services.lookup``);
``--by`` names the kind, else the value's shape decides. A merged id leads to its
survivor. A value that could be a contact id and is not in the database (a rehearsal
contact, or a CLI with no database at hand) is asked of Temporal as it is.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from stagecoach.engine.cli.value import contact_value_of, value_line
from stagecoach.engine.services.lookup import LOOKUP_KINDS
from stagecoach.engine.settings import Settings, load_settings

contact_app = typer.Typer(help="A contact's live state and history.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ContactArgument = Annotated[
    str,
    typer.Argument(
        metavar="CONTACT",
        help="A contact id, userId, anonymousId, email, phone, WeChat openid or unionid, "
        "or CRM id.",
    ),
]
ByOption = Annotated[
    str,
    typer.Option(
        "--by",
        help=f"The kind of CONTACT: {', '.join(LOOKUP_KINDS)}. auto: an email has @, a "
        "phone starts with + or is digits (and is tried as any id too), else any id.",
    ),
]


@dataclass(frozen=True)
class _Found:
    contact_id: str
    matched: tuple[str, ...] = ()
    missing: str = ""
    """Why the database had no match, when the id is asked of Temporal as it is."""


def _find(settings: Settings, value: str, by: str) -> _Found:
    """The contact id ``value`` leads to, by the shared lookup; the errors it raises are
    StagecoachErrors, printed by the CLI as one line with the fix."""
    from sqlalchemy.exc import DatabaseError as SADatabaseError
    from sqlmodel import Session

    from stagecoach.engine.domain.errors import DatabaseError
    from stagecoach.engine.services.lookup import (
        ContactNotMatched,
        MalformedLookup,
        find_person,
    )
    from stagecoach.engine.services.storage import make_engine
    from stagecoach.engine.services.storage.db import driver_reason, parse_database_url

    value = value.strip()
    as_is = by in ("auto", "id") and "@" not in value
    if by not in LOOKUP_KINDS:
        raise MalformedLookup(
            "by", f"--by {by!r} is not a kind of id", fix=f"use one of {', '.join(LOOKUP_KINDS)}"
        )
    url = parse_database_url(settings.resolved_database_url)
    file = url.database if url.get_backend_name() == "sqlite" else None
    if file and file != ":memory:" and not Path(file).expanduser().exists():
        if as_is:
            return _Found(value, missing=f"no database at {file} to search")
        raise DatabaseError(
            f"no database at {file} to search for {value!r}",
            fix="run from the project directory, set STAGECOACH_DATABASE_URL, or give "
            "the contact id",
        )
    db = make_engine(settings.resolved_database_url)
    try:
        with Session(db) as session:
            person = find_person(session, value, by, region=settings.referral_phone_country)
    except ContactNotMatched as exc:
        if as_is and not value.startswith("erased-") and "erased at" not in exc.message:
            return _Found(value, missing=exc.message)
        raise
    except SADatabaseError as exc:
        if as_is:
            reason = driver_reason(exc)
            return _Found(value, missing=f"the database could not be searched ({reason})")
        raise DatabaseError(
            f"cannot search the database for {value!r}: {driver_reason(exc)}",
            fix="check STAGECOACH_DATABASE_URL (stagecoach doctor), or give the contact id",
        ) from exc
    finally:
        db.dispose()
    return _Found(person.survivor.id, person.matched)


def _connect_and(
    value: str, by: str, run: Callable[[Any, str], Awaitable[Any]]
) -> tuple[_Found, Any]:
    """Find the contact, connect to Temporal, and ``run(client, contact_id)``."""
    from stagecoach.engine.logging import configure_logging
    from stagecoach.engine.temporal.gateway import ContactNotFound
    from stagecoach.workflows.client import connect

    settings = load_settings()
    configure_logging(level="warning", fmt=settings.log_format)
    found = _find(settings, value, by)

    async def go() -> Any:
        return await run(await connect(settings), found.contact_id)

    try:
        return found, asyncio.run(go())
    except ContactNotFound as exc:
        if not found.missing:
            raise
        raise ContactNotFound(f"{found.missing}, and {exc.message}", fix=exc.fix) from exc


@contact_app.command("show")
def show(contact: ContactArgument, by: ByOption = "auto", json_output: JsonOption = False) -> None:
    """Stage, score, grade, consent, attributes and active journeys, from the workflow."""
    from stagecoach.engine.temporal.gateway import contact_view

    found, view = _connect_and(contact, by, contact_view)
    state = view.state
    segments = _segments(view.contact_id)
    valued = contact_value_of(view.contact_id)
    propensity = _propensity(view.contact_id)
    if json_output:
        body = {
            **view.__dict__,
            "segments": [_segment_dict(s) for s in segments or []],
            "propensity": propensity,
        }
        body["value"] = valued
        typer.echo(json.dumps(body, indent=2, ensure_ascii=False, default=str))
        return
    typer.echo(f"contact   {view.contact_id}")
    if found.matched and found.matched != (f"id {view.contact_id}",):
        typer.echo(f"found by  {', '.join(found.matched)}")
    typer.echo(f"stage     {view.stage} (since {state['stage_entered_at']})")
    typer.echo(f"score     {view.score}")
    typer.echo(f"propensity {_propensity_line(propensity)}")
    typer.echo(f"grade     {view.grade or '-'}  {', '.join(state.get('grade_rules', []))}")
    consent = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in state["consent"].items())
    typer.echo(f"consent   {consent or 'defaults'}")
    typer.echo(f"tags      {', '.join(state['tags']) or '-'}")
    typer.echo(f"received  {', '.join(state['received_content']) or '-'}")
    for key, value in sorted(state["attributes"].items()):
        typer.echo(f"  {key}: {value}")
    if not view.journeys:
        typer.echo("journeys  none active")
    for j in view.journeys:
        waiting = j.get("waiting") or {}
        until = f" until {waiting['deadline']}" if waiting.get("deadline") else ""
        typer.echo(
            f"journey   {j['journey']} v{str(j['version'])[:12]} #{j['enrolment']} at "
            f"{j['step']} ({waiting.get('kind', 'running')}{until})"
        )
    if segments is None:
        typer.echo("segments  unknown (no database to read them from)")
    elif not segments:
        typer.echo("segments  none")
    for s in segments or []:
        since = _segment_dict(s)["since"]
        typer.echo(f"segment   {s.segment} since {since}: {s.reason or '-'}")
    typer.echo(value_line(valued))


def _propensity(contact_id: str) -> dict[str, Any] | None:
    """The contact's published propensity (``None``: not scored, or no database)."""
    from sqlalchemy.exc import DatabaseError as SADatabaseError

    from stagecoach.engine.cli.journeys import _read_db
    from stagecoach.engine.services.prediction.scores import current_propensity

    db = _read_db(load_settings())
    if db is None:
        return None
    try:
        return current_propensity(db, contact_id)
    except SADatabaseError:  # a database not migrated to prediction yet
        return None
    finally:
        db.dispose()


def _propensity_line(found: dict[str, Any] | None) -> str:
    if found is None:
        return "- (not scored: no propensity model has scored this contact yet)"
    why = ", ".join(f"{t['feature']} {t['value']} ({t['effect']:+})" for t in found["top_features"])
    return (
        f"{found['probability']:.1%} to reach {found['target_stage']} within "
        f"{found['horizon_days']} days (model v{found['model_version']}, as of "
        f"{found['as_of']})" + (f"; {why}" if why else "")
    )


def _segment_dict(s: Any) -> dict[str, str]:
    at = s.since if s.since.tzinfo else s.since.replace(tzinfo=UTC)  # SQLite: naive UTC
    return {
        "segment": s.segment,
        "version": s.version,
        "since": at.isoformat(timespec="seconds"),
        "reason": s.reason,
    }


def _segments(contact_id: str) -> list[Any] | None:
    """The contact's segments (``ContactSegment``: since when and why) from the database,
    or ``None`` when there is no database to read."""
    from sqlalchemy.exc import DatabaseError as SADatabaseError

    from stagecoach.engine.cli.journeys import _read_db
    from stagecoach.engine.services.segments.queries import contact_segments

    db = _read_db(load_settings())
    if db is None:
        return None
    try:
        return list(contact_segments(db, contact_id))
    except SADatabaseError:  # a database not migrated to segments yet
        return None
    finally:
        db.dispose()


def _broadcast_entries(contact_id: str) -> list[Any]:
    """The contact's broadcast sends (no workflow history holds them), or none when the
    database is not migrated to broadcasts yet."""
    from sqlalchemy.exc import DatabaseError as SADatabaseError

    from stagecoach.engine.services.broadcasts.store import contact_broadcast_sends
    from stagecoach.engine.services.storage import make_engine
    from stagecoach.engine.temporal.timeline import broadcast_entry

    db = make_engine(load_settings().resolved_database_url)
    try:
        return [
            broadcast_entry(s.at, s.broadcast, s.channel, s.content_id, s.status, s.arm)
            for s in contact_broadcast_sends(db, contact_id)
        ]
    except SADatabaseError:
        return []
    finally:
        db.dispose()


@contact_app.command("timeline")
def timeline(
    contact: ContactArgument, by: ByOption = "auto", json_output: JsonOption = False
) -> None:
    """The contact's story from its workflow history: events, stages, sends, waits."""
    from stagecoach.engine.temporal.gateway import missing_contact
    from stagecoach.engine.temporal.timeline import contact_timeline, with_entries

    async def read(client: Any, contact_id: str) -> Any:
        with missing_contact(contact_id):
            return await contact_timeline(client, contact_id)

    found, entries = _connect_and(contact, by, read)
    entries = with_entries(entries, _broadcast_entries(found.contact_id))
    if json_output:
        rows = [
            {"at": e.at.isoformat(), "kind": e.kind, "summary": e.summary, "run_id": e.run_id}
            for e in entries
        ]
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    for entry in entries:
        typer.echo(entry.line())


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


@contact_app.command("why")
def why(
    contact: ContactArgument,
    journey_step: Annotated[
        str,
        typer.Argument(
            metavar="JOURNEY_STEP",
            help="journey/step_id, e.g. b2b_nurture/awareness-whitepaper (journey:step_id"
            " works too).",
        ),
    ],
    output: Annotated[
        OutputFormat, typer.Option("--format", help="text, or json for machines.")
    ] = OutputFormat.text,
    enrolment: Annotated[
        int | None,
        typer.Option(min=1, help="Explain this enrolment of the journey (default: the newest)."),
    ] = None,
    by: ByOption = "auto",
) -> None:
    """Why the contact did or did not get a journey step's message: the decision chain
    from its workflow history (entry, branches, quiet hours, consent, frequency cap,
    delivery), one line per link, with times."""
    from stagecoach.engine.temporal.why import contact_why, parse_journey_step

    journey, step_id = parse_journey_step(journey_step)
    _, answer = _connect_and(
        contact,
        by,
        lambda client, contact_id: contact_why(
            client, contact_id, journey, step_id, enrolment=enrolment
        ),
    )
    if output is OutputFormat.json:
        typer.echo(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return
    for line in answer.lines():
        typer.echo(line)
