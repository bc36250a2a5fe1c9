"""``stagecoach journeys``: validate, list, show, draw, diff, rehearse and publish journeys.

A composition root like the rest of ``stagecoach.engine.cli``: it reads settings, reaches the
marketers' definitions through ``stagecoach.engine.services.publishing`` and the database through
``stagecoach.engine.services.storage``. Bad input is a ``StagecoachError`` that ``main`` prints as
one line.

Version references (``--version``, ``--from``, ``--to``) accept ``bundled`` (the
definition in this checkout), ``latest`` (the newest published version), or a version
hash or a unique prefix of it (6+ characters).
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from sqlalchemy import Engine

from stagecoach.engine.domain.conditions import EventMatcher, condition_from_dict
from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.domain.journeys import (
    SIMULATION_EPOCH,
    TIME_ZONE_ATTRIBUTE,
    AddTag,
    CancelTimer,
    ChangeStage,
    Command,
    Completed,
    ContentIndex,
    Deliver,
    Enrol,
    Exit,
    HandOff,
    JourneySpec,
    JourneyValidationError,
    SetAttribute,
    SimContact,
    StageEntered,
    StartTimer,
    WaitForEvent,
    describe_condition,
    describe_entry,
    describe_matcher,
    describe_step,
    describe_target,
    diff_specs,
    handoff_audience,
    human_duration,
    simulate,
    to_mermaid,
)
from stagecoach.engine.domain.policy import SendPolicy
from stagecoach.engine.logging import configure_logging
from stagecoach.engine.settings import Settings, load_settings

journeys_app = typer.Typer(
    help="Validate, inspect, diff, rehearse and publish journeys.",
    no_args_is_help=True,
)


class InvalidOption(StagecoachError):
    """A command-line option holds a value the command cannot use."""


def _settings() -> Settings:
    settings = load_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    return settings


def _content(settings: Settings) -> ContentIndex | None:
    """The content library to validate sends against, as the worker does before it
    publishes: a journey naming content without a variant for a locale is refused."""
    from stagecoach.engine.domain.content import ContentLibrary
    from stagecoach.engine.services.project import load_project

    return ContentLibrary.load(load_project(settings).content_dir(settings))


def _read_db(settings: Settings) -> Engine | None:
    """A database (``Engine``) for reading, or ``None`` when an SQLite file does not exist yet.

    Reading commands must not create the embedded database as a side effect.
    """
    from stagecoach.engine.services.storage import make_engine
    from stagecoach.engine.services.storage.db import parse_database_url

    url = parse_database_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        from pathlib import Path

        if not Path(url.database).expanduser().exists():
            return None
    return make_engine(settings.resolved_database_url)


def _bundled_spec(settings: Settings, name: str) -> JourneySpec | None:
    """The bundled journey ``name`` compiled, or ``None`` when no journey has that name.

    Only this journey's problems stop the command: a broken neighbour does not hide it.

    Raises:
        JourneyValidationError: The journey does not validate.
    """
    from stagecoach.engine.services.publishing import bundled_journeys, compile_definitions

    if name not in bundled_journeys(settings):
        return None
    specs, problems = compile_definitions(settings, content=_content(settings))
    mine = [p for p in problems if p.journey == name]
    if mine:
        raise JourneyValidationError(name, mine)
    return specs.get(name)


def _closest_journey(settings: Settings, name: str) -> str:
    from stagecoach.engine.services.publishing import bundled_journeys, closest_names

    return closest_names(name, list(bundled_journeys(settings)))


def _resolve(settings: Settings, name: str, ref: str | None) -> tuple[JourneySpec, str]:
    """The spec ``ref`` names for journey ``name``, and a label saying where it came from.

    ``None`` means the bundled definition, falling back to the latest published version
    for a journey that is no longer bundled.
    """
    from stagecoach.engine.services.publishing import (
        PUBLISH_HINT,
        JourneyNotFound,
        get_version,
        latest,
    )

    spec = _bundled_spec(settings, name)
    # A prefix needs 6+ characters, as in get_version, so "c" never means "bundled".
    if ref in (None, "bundled") or (
        ref is not None and len(ref) >= 6 and _is(spec, ref, prefix=True)
    ):
        if spec is not None:
            return spec, "bundled"
        if ref == "bundled":
            raise JourneyNotFound(
                f"journey {name!r} is not bundled",
                fix=f"use a journey of the project ({_closest_journey(settings, name)})",
            )
    db = _read_db(settings)
    try:
        if db is None:
            raise JourneyNotFound(f"journey {name!r} has no published version", fix=PUBLISH_HINT)
        if ref in (None, "latest"):
            found = latest(db, name)
        else:
            assert ref is not None
            found = get_version(db, ref)
    except JourneyNotFound:
        if ref is None and spec is None:
            raise JourneyNotFound(
                f"journey {name!r} is neither bundled nor published",
                fix=f"use a journey of the project ({_closest_journey(settings, name)})",
            ) from None
        raise
    if found.name != name:
        raise InvalidOption(
            f"version {ref!r} belongs to journey {found.name!r}, not {name!r}",
            fix=f"give a version of {name!r} (see 'stagecoach journeys versions {name}')",
        )
    return found, f"published {_short(found.version)}"


def _known_or_raise(settings: Settings, name: str) -> None:
    """Raise JourneyNotFound unless ``name`` is bundled or published."""
    from stagecoach.engine.domain.errors import DatabaseError
    from stagecoach.engine.services.publishing import (
        JourneyNotFound,
        bundled_journeys,
        versions,
    )

    if name in bundled_journeys(settings):
        return
    db = _read_db(settings)
    try:
        if db is not None and versions(db, name):
            return
    except DatabaseError:
        pass
    raise JourneyNotFound(
        f"journey {name!r} is neither bundled nor published",
        fix=f"use a journey of the project ({_closest_journey(settings, name)})",
    )


def _short(version: str) -> str:
    return version[:12]


# validate, list, show, diagram, diff.


@journeys_app.command()
def validate() -> None:
    """Validate every bundled journey and the active pipeline; exit 1 on any problem."""
    from stagecoach.engine.services.publishing import bundled_journeys, compile_definitions

    settings = _settings()
    specs, problems = compile_definitions(settings, content=_content(settings))
    names = list(bundled_journeys(settings))
    width = max((len(n) for n in names), default=0)
    for name in names:
        if name in specs:
            spec = specs[name]
            typer.echo(f"ok    {name:<{width}}  {_short(spec.version)}  {len(spec.steps)} steps")
            continue
        typer.echo(f"FAIL  {name:<{width}}")
        for problem in problems:
            if problem.journey == name:
                typer.echo(f"      - {problem.step}: {problem.message}. Fix: {problem.fix}")
    if problems:
        count = len(problems)
        typer.echo(f"{count} problem{'s' if count != 1 else ''}; nothing was published")
        raise typer.Exit(1)
    typer.echo(f"pipeline {settings.pipeline!r}: ok")


@journeys_app.command("list")
def list_journeys() -> None:
    """List bundled journeys with their entry, step count and versions."""
    from stagecoach.engine.domain.errors import DatabaseError
    from stagecoach.engine.services.publishing import compile_definitions, latest_versions

    settings = _settings()
    specs, problems = compile_definitions(settings, content=_content(settings))
    note = ""
    published: dict[str, str] = {}
    db = _read_db(settings)
    if db is None:
        note = "no database yet: run 'stagecoach journeys publish'"
    else:
        try:
            published = {n: _short(v.version) for n, v in latest_versions(db).items()}
        except DatabaseError:
            note = (
                "the database is not migrated or not reachable: run 'stagecoach journeys publish'"
            )
    rows = [("journey", "entry", "steps", "bundled", "published")]
    for name, spec in specs.items():
        current = _short(spec.version)
        shown = published.get(name, "not published")
        if shown not in ("not published", current):
            shown += " (behind)"
        rows.append((name, _entry(spec), str(len(spec.steps)), current, shown))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        cells = [f"{cell:<{w}}" for cell, w in zip(row, widths, strict=False)]
        typer.echo("  ".join([*cells, row[4]]))
    for invalid in dict.fromkeys(p.journey for p in problems):
        typer.echo(f"{invalid}: invalid, see 'stagecoach journeys validate'")
    if note:
        typer.echo(note)


def _entry(spec: JourneySpec) -> str:
    return describe_entry(spec)


@journeys_app.command()
def show(
    name: Annotated[str, typer.Argument(help="Journey name.")],
    version: Annotated[
        str | None,
        typer.Option("--version", help="bundled (default), latest, or a version (prefix)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="The compiled spec as JSON.")] = False,
) -> None:
    """Show a journey: its compiled spec as JSON, or a readable outline."""
    settings = _settings()
    spec, where = _resolve(settings, name, version)
    if json_output:
        typer.echo(json.dumps(spec.to_dict(), indent=2, ensure_ascii=False))
        return
    typer.echo(_outline(spec, where))


def _outline(spec: JourneySpec, where: str) -> str:
    body = spec.to_dict()
    reentry = body["reentry"]
    lines = [f"{spec.name}  version {spec.version} ({where})"]
    if spec.description:
        lines.append(f"  {spec.description}")
    lines.append(f"  entry:     {_entry(spec)}")
    cooldown = reentry.get("cooldown_seconds")
    lines.append(
        f"  re-entry:  {reentry['policy']}"
        + (f" after {human_duration(timedelta(seconds=cooldown))}" if cooldown else "")
    )
    if body["exit_when"] is not None:
        lines.append(f"  exit when: {_condition(body['exit_when'])}")
    if body["goal"] is not None:
        lines.append(f"  goal:      {_condition(body['goal'])}")
    lines.append(f"  locales:   {', '.join(spec.locales)}")
    lines.append(f"  steps ({len(spec.steps)}):")
    width = max(len(s.id) for s in spec.steps)
    for s in spec.steps:
        summary = describe_step(s)
        edges = "; ".join(
            f"{label} -> {_target(target)}"
            if label and label != "next"
            else f"-> {_target(target)}"
            for label, target in s.edges()
        )
        lines.append(f"    {s.id:<{width}}  {summary}" + (f"  [{edges}]" if edges else ""))
    return "\n".join(lines)


_target = describe_target


def _matcher(data: dict[str, Any]) -> str:
    return describe_matcher(EventMatcher.from_dict(data))


def _condition(data: dict[str, Any]) -> str:
    """A condition's JSON form, for people: ``event order.paid or stage in customer``."""
    return describe_condition(condition_from_dict(data))


@journeys_app.command()
def diagram(
    name: Annotated[str, typer.Argument(help="Journey name.")],
    version: Annotated[
        str | None,
        typer.Option("--version", help="bundled (default), latest, or a version (prefix)."),
    ] = None,
) -> None:
    """Print the journey as a Mermaid flowchart (paste into any Mermaid renderer)."""
    settings = _settings()
    spec, _ = _resolve(settings, name, version)
    typer.echo(to_mermaid(spec), nl=False)


@journeys_app.command()
def diff(
    name: Annotated[str, typer.Argument(help="Journey name.")],
    from_ref: Annotated[
        str | None,
        typer.Option("--from", help="Old side: latest (default), bundled, a version."),
    ] = None,
    to_ref: Annotated[
        str | None, typer.Option("--to", help="New side: bundled (default), latest, or a version.")
    ] = None,
) -> None:
    """Show steps added, removed and changed between two versions of a journey.

    By default: the latest published version against the bundled definition, i.e. what
    'stagecoach journeys publish' would change.
    """
    from stagecoach.engine.services.publishing import PUBLISH_HINT, JourneyNotFound

    settings = _settings()
    _known_or_raise(settings, name)
    try:
        old, old_where = _resolve(settings, name, from_ref or "latest")
    except JourneyNotFound:
        if from_ref is not None:
            raise
        typer.echo(
            f"journey {name!r} has no published version yet, so there is nothing to compare"
            f" with; {PUBLISH_HINT} to publish the bundled definition"
        )
        return
    new, new_where = _resolve(settings, name, to_ref or "bundled")
    typer.echo(f"{name}: {old_where} -> {new_where}")
    typer.echo(str(diff_specs(old, new)))


@journeys_app.command("versions")
def versions_command(name: Annotated[str, typer.Argument(help="Journey name.")]) -> None:
    """List the published versions of a journey, newest (the one new enrolments get) first."""
    from stagecoach.engine.services.publishing import PUBLISH_HINT, versions

    settings = _settings()
    _known_or_raise(settings, name)
    db = _read_db(settings)
    published = versions(db, name) if db is not None else []
    bundled = _bundled_spec(settings, name)
    if not published:
        typer.echo(f"journey {name!r} has no published version; {PUBLISH_HINT}")
        return
    for i, v in enumerate(published):
        marks = [m for m, on in (("latest", i == 0), ("bundled", _is(bundled, v.version))) if on]
        typer.echo(
            f"{v.version}  {v.published_at:%Y-%m-%d %H:%M:%S} UTC  {v.source}"
            + (f"  ({', '.join(marks)})" if marks else "")
        )


def _is(spec: JourneySpec | None, version: str, *, prefix: bool = False) -> bool:
    if spec is None:
        return False
    return spec.version.startswith(version) if prefix else spec.version == version


# simulate.

_DURATION = re.compile(r"(\d+)([dhms])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_DURATION_FIX = "write durations like 2d, 36h, 90m or 1d12h (days, hours, minutes, seconds)"


def parse_duration(text: str, *, flag: str, whole: str | None = None) -> timedelta:
    """``2d``, ``36h``, ``90m``, ``1d12h`` or ``0`` as a timedelta.

    Args:
        text: The duration.
        flag: The option it came from, for the error.
        whole: The option's whole value when ``text`` is only part of it.

    Raises:
        InvalidOption: ``text`` is not a duration.
    """
    compact = text.strip().lower()
    if compact == "0":
        return timedelta(0)
    if not compact or _DURATION.sub("", compact):
        shown = f"{flag} {whole!r}: {text!r}" if whole is not None else f"{flag} {text!r}"
        raise InvalidOption(f"{shown} is not a duration", fix=_DURATION_FIX)
    total = timedelta(0)
    for amount, unit in _DURATION.findall(compact):
        total += timedelta(**{_UNITS[unit]: int(amount)})
    return total


def _value(raw: str) -> Any:
    """``9`` -> 9, ``true`` -> True, ``["a"]`` -> list; anything else stays a string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _pairs(raw: str, *, flag: str, whole: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, raw.split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise InvalidOption(
                f"{flag} {whole!r}: {part!r} is not key=value",
                fix=f"write properties as key=value,key2=value2, e.g. {flag} "
                "2d:content.downloaded:content_id=wp-digital-transformation",
            )
        out[key.strip()] = _value(value.strip())
    return out


def parse_event(raw: str, known_types: frozenset[str]) -> tuple[timedelta, str, dict[str, Any]]:
    """``OFFSET:TYPE[:key=value,...]`` as (offset, event type, properties).

    Raises:
        InvalidOption: Malformed, a bad offset, or an event type not in the catalogue.
    """
    from stagecoach.engine.services.publishing import closest_names

    offset, sep, rest = raw.partition(":")
    event_type, _, props = rest.partition(":")
    if not sep or not event_type:
        raise InvalidOption(
            f"--event {raw!r} is not OFFSET:TYPE[:key=value,...]",
            fix="write it like --event 2d:content.downloaded:content_id=wp-digital-transformation",
        )
    at = parse_duration(offset, flag="--event", whole=raw)
    if event_type not in known_types:
        raise InvalidOption(
            f"--event {raw!r}: event type {event_type!r} is not in the event catalogue",
            fix=f"use a catalogued type ({closest_names(event_type, sorted(known_types))}), "
            "see 'stagecoach events list'",
        )
    return at, event_type, _pairs(props, flag="--event", whole=raw)


@journeys_app.command("simulate")
def simulate_command(
    name: Annotated[str, typer.Argument(help="Journey name.")],
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event",
            help="OFFSET:TYPE[:key=value,...], e.g. 2d:content.downloaded:content_id=wp-x. "
            "Repeatable.",
        ),
    ] = None,
    until: Annotated[str, typer.Option(help="Simulated duration, e.g. 30d.")] = "90d",
    attr: Annotated[
        list[str] | None, typer.Option("--attr", help="Contact attribute key=value. Repeatable.")
    ] = None,
    stage: Annotated[str, typer.Option(help="The contact's stage at the start.")] = "suspect",
    score: Annotated[float, typer.Option(help="The contact's lead score.")] = 0.0,
    grade: Annotated[str | None, typer.Option(help="The contact's fit grade (A-D).")] = None,
    timezone: Annotated[
        str | None, typer.Option(help="The contact's IANA time zone, e.g. Asia/Shanghai.")
    ] = None,
    fail: Annotated[
        list[str] | None,
        typer.Option(
            "--fail", help="STEP:ERROR: that send or hand-off fails permanently. Repeatable."
        ),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option("--version", help="bundled (default), latest, or a version (prefix)."),
    ] = None,
    ignore_quiet_hours: Annotated[
        bool,
        typer.Option(
            "--ignore-quiet-hours",
            help="Send at once even in quiet hours (rehearse and the worker hold sends).",
        ),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="The timeline as JSON.")] = False,
) -> None:
    """Rehearse a journey offline on a fake clock and print its timeline.

    The contact workflow's interpreter runs on a fake clock; sends and hand-offs succeed
    at once unless --fail says otherwise. The journey's entry is simulated too: a journey
    entered by an event needs that event in the script (exit code 1 and the event to add
    when nothing entered it). Example: simulate b2b_nurture --until 30d
    --event 2d:content.downloaded:content_id=wp-digital-transformation
    """
    from stagecoach.engine.domain.conditions import EventRecord
    from stagecoach.engine.services.publishing import closest_names, definitions_context

    settings = _settings()
    ctx = definitions_context(settings)
    script = [parse_event(raw, ctx.known_event_types) for raw in event or []]
    horizon = parse_duration(until, flag="--until")
    if stage not in ctx.stages:
        raise InvalidOption(
            f"--stage {stage!r} is not a stage of pipeline {settings.pipeline!r}",
            fix=f"use a pipeline stage ({closest_names(stage, sorted(ctx.stages))})",
        )
    if grade is not None and grade not in ("A", "B", "C", "D"):
        raise InvalidOption(f"--grade {grade!r} is not a grade", fix="use A, B, C or D")
    attributes: dict[str, Any] = {}
    for raw in attr or []:
        attributes.update(_pairs(raw, flag="--attr", whole=raw))
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidOption(
                f"--timezone {timezone!r} is not an IANA time zone",
                fix="use a name like Asia/Shanghai, Europe/Berlin or UTC",
            ) from None
        attributes[TIME_ZONE_ATTRIBUTE] = timezone
    spec, where = _resolve(settings, name, version)
    failures: dict[str, str] = {}
    step_ids = [s.id for s in spec.steps]
    for raw in fail or []:
        step_id, sep, error = raw.partition(":")
        if not sep or not error:
            raise InvalidOption(
                f"--fail {raw!r} is not STEP:ERROR",
                fix="write it like --fail awareness-whitepaper:invalid_address",
            )
        if step_id not in step_ids:
            raise InvalidOption(
                f"--fail {raw!r}: journey {name!r} has no step {step_id!r}",
                fix=f"use a step id ({closest_names(step_id, step_ids)})",
            )
        failures[step_id] = error

    contact = SimContact(stage=stage, score=score, grade=grade, attributes=attributes)
    records = [
        (at, EventRecord(event_type, SIMULATION_EPOCH + at, props))
        for at, event_type, props in script
    ]
    policy = None if ignore_quiet_hours else _quiet_hours(settings)
    result = simulate(spec, contact, records, horizon, fail_steps=failures, policy=policy)

    not_entered = _not_entered(spec, stage) if result.entered_at is None else None
    if json_output:
        typer.echo(
            json.dumps(
                {
                    "journey": spec.name,
                    "version": spec.version,
                    "start": SIMULATION_EPOCH.isoformat(),
                    "entered_at_seconds": None
                    if result.entered_at is None
                    else result.entered_at.total_seconds(),
                    "timeline": [
                        {
                            "offset_seconds": e.offset.total_seconds(),
                            **e.command.to_dict(),
                            **(
                                {"held_until_seconds": e.held_until.total_seconds()}
                                if e.held_until is not None
                                else {}
                            ),
                        }
                        for e in result.timeline
                    ],
                    "outcome": result.outcome,
                    **({"not_entered": not_entered} if not_entered else {}),
                },
                indent=2,
                ensure_ascii=False,
                default=str,
            )
        )
        if not_entered:
            raise typer.Exit(1)
        return

    typer.echo(
        f"{spec.name} {_short(spec.version)} ({where}), simulated for {human_duration(horizon)} "
        f"from {SIMULATION_EPOCH:%Y-%m-%d %H:%M} UTC; contact at stage {stage}, score {score:g}"
        + (f", grade {grade}" if grade else "")
        + (f", attributes {json.dumps(attributes, ensure_ascii=False)}" if attributes else "")
    )
    zone = attributes.get(TIME_ZONE_ATTRIBUTE, "UTC")
    typer.echo(
        "quiet hours off (--ignore-quiet-hours): sends go out at once"
        if policy is None
        else f"quiet hours {settings.quiet_hours_start}-{settings.quiet_hours_end} in {zone}, "
        "as rehearse and the worker hold sends"
        if policy.quiet_start != policy.quiet_end
        else "quiet hours off (STAGECOACH_QUIET_HOURS_START equals _END)"
    )
    lines: list[tuple[timedelta, int, str]] = [
        (at, 0, f"event  {event_type}" + "".join(f" {k}={v}" for k, v in props.items()))
        for at, event_type, props in script
        if at <= horizon
    ]
    if result.entered_at is not None:
        lines.append((result.entered_at, 1, "enter  " + _entry(spec)))
    # A wait-for-event's timer is its timeout, already shown on the wait line; cancelled
    # timers are bookkeeping. Both stay in --json.
    wait_timers = {
        e.command.timer_id for e in result.timeline if isinstance(e.command, WaitForEvent)
    }
    lines += [
        (
            e.offset,
            2,
            _describe(e.command)
            + (
                f"  held for quiet hours until {_offset(e.held_until).strip()}"
                if e.held_until is not None
                else ""
            ),
        )
        for e in result.timeline
        if not isinstance(e.command, CancelTimer)
        and not (isinstance(e.command, StartTimer) and e.command.timer_id in wait_timers)
    ]
    # Scripted events come first at equal offsets, as the simulator handles them first;
    # the sort is stable, so commands keep their order.
    for at, _, text in sorted(lines, key=lambda item: (item[0], item[1])):
        typer.echo(f"{_offset(at):>10}  {text}")
    typer.echo(f"outcome: {result.outcome}")
    if not_entered:
        typer.echo(not_entered)
        raise typer.Exit(1)


def _quiet_hours(settings: Settings) -> SendPolicy:
    """The quiet hours the worker holds sends for (the frequency cap is not simulated)."""
    from datetime import time

    return SendPolicy(
        quiet_start=time.fromisoformat(settings.quiet_hours_start),
        quiet_end=time.fromisoformat(settings.quiet_hours_end),
    )


def _not_entered(spec: JourneySpec, stage: str) -> str:
    """Why a simulation never entered ``spec``, and the options that would enter it.

    Unlike ``rehearse``, which enrols its contact directly, ``simulate`` plays the
    journey's entry too, so a missing entry event is shown rather than assumed."""
    ways: list[str] = []
    for trigger in spec.entry:
        if isinstance(trigger, StageEntered):
            ways.append(f"--stage {trigger.stage}")
            continue
        data = trigger.to_dict()
        props = ",".join(
            f"{f['path'].removeprefix('properties.')}={f['value']}"
            for f in data.get("where") or []
            if f.get("op") == "eq"
        )
        ways.append(f"--event 0d:{data['type']}" + (f":{props}" if props else ""))
    return (
        f"not entered: {spec.name} is entered by {_entry(spec)}; the contact is at stage "
        f"{stage} and no --event matched. To enter it, add {' or '.join(ways)}"
    )


def _offset(delta: timedelta) -> str:
    hours, rest = divmod(int(delta.total_seconds()), 3600)
    days, hours = divmod(hours, 24)
    return f"d{days} {hours:02d}:{rest // 60:02d}"


def _describe(command: Command) -> str:
    """One line per interpreter command, for people; ids and keys left out."""
    start = SIMULATION_EPOCH
    if isinstance(command, Deliver):
        what = command.content_id or "next best item"
        return f"send   {what} via {command.channel}  (step {command.step_id})"
    if isinstance(command, WaitForEvent):
        kinds = " or ".join(_matcher(m.to_dict()) for m in command.matchers)
        return f"wait   for {kinds} until {_offset(command.deadline - start).strip()}"
    if isinstance(command, StartTimer):
        return f"wait   until {_offset(command.fire_at - start).strip()}"
    if isinstance(command, CancelTimer):
        return "wait   cancelled"
    if isinstance(command, ChangeStage):
        return f"stage  -> {command.stage}" + (f": {command.reason}" if command.reason else "")
    if isinstance(command, HandOff):
        return f"hand-off to {handoff_audience(command.reason)}  (step {command.step_id})" + (
            f": {command.reason}" if command.reason else ""
        )
    if isinstance(command, SetAttribute):
        return f"set    {command.name} = {command.value!r}"
    if isinstance(command, AddTag):
        return f"tag    {command.tag}"
    if isinstance(command, Enrol):
        return f"enrol  in {command.journey}"
    if isinstance(command, Exit):
        return f"exit   {command.reason}"
    if isinstance(command, Completed):
        return f"done   {command.reason}"
    data = command.to_dict()
    kind = data.pop("command", type(command).__name__)
    return f"{kind} " + ", ".join(f"{k}={v}" for k, v in data.items() if v not in (None, ""))


# publish.


@journeys_app.command()
def publish() -> None:
    """Migrate the database, validate every bundled journey, then publish them all.

    Idempotent: an unchanged journey is not stored again. When any journey fails
    validation, nothing is published. A definition that is an older published version
    is refused (the latest stays); 'stagecoach journeys rollback' goes back on purpose.
    """
    from stagecoach.engine.services.publishing import publish_bundled
    from stagecoach.engine.services.storage import make_engine, upgrade
    from stagecoach.engine.services.storage.db import redact

    settings = _settings()
    db = make_engine(settings.resolved_database_url)
    upgrade(db)
    try:
        results = publish_bundled(db, settings, content=_content(settings))
    except JourneyValidationError as exc:
        typer.echo(f"nothing was published. {exc.message}")
        raise typer.Exit(1) from None
    width = max((len(r.name) for r in results), default=0)
    for r in results:
        note = f"  {r.note}" if r.note else ""
        typer.echo(f"{r.status:<10}  {r.name:<{width}}  {_short(r.version)}{note}")
    typer.echo(f"published to {redact(settings.resolved_database_url)}")


REHEARSAL_CONTACT: dict[str, Any] = {
    "email": "rehearsal@example.com",
    "first_name": "Rehearsal",
    "locale": "en",
    "timezone": "UTC",
}


@journeys_app.command()
def rehearse(
    name: Annotated[str, typer.Argument(help="Journey name.")],
    time_scale: Annotated[
        float,
        typer.Option(
            "--time-scale", help="Workflow time per real time: 0.0001 runs 1 day in 8.6 s."
        ),
    ] = 0.0001,
    attr: Annotated[
        list[str] | None,
        typer.Option("--attr", help="Contact attribute key=value (repeatable)."),
    ] = None,
    event: Annotated[
        list[str] | None,
        typer.Option("--event", help="OFFSET:TYPE[:key=value,...] in journey time (repeatable)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Stop watching after this many seconds.")] = 900,
) -> None:
    """Run a journey for real on the Temporal server, time-scaled, sending to the sink.

    A rehearsal contact is created, enrolled with the scale fixed for that enrolment (so
    replays stay deterministic), fed the --event script at scaled offsets, and watched
    until the journey ends. Its messages go to <sink>/rehearsal/, never to a provider.
    """
    import uuid

    from stagecoach.engine.protocol.messages import EnrolRequest, EventMessage
    from stagecoach.engine.services.storage import make_engine
    from stagecoach.engine.temporal.gateway import contact_view, enrol, send_event
    from stagecoach.engine.temporal.timeline import contact_timeline
    from stagecoach.workflows.client import connect
    from stagecoach.workflows.runtime import ContactOpener

    settings = _settings()
    if not 0 < time_scale <= 1:
        raise InvalidOption(
            f"--time-scale {time_scale} is outside (0, 1]",
            fix="use 1 for real time, 0.0001 to run a day in about 9 seconds",
        )
    _known_or_raise(settings, name)
    traits = dict(REHEARSAL_CONTACT)
    for raw in attr or []:
        traits.update(_pairs(raw, flag="--attr", whole=raw))
    known = _catalog_names(settings)
    script = sorted((parse_event(raw, known) for raw in event or []), key=lambda e: e[0])
    contact_id = f"rehearsal-{name}-{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        client = await connect(settings)
        now = datetime.now(UTC)
        identify = EventMessage(
            message_id=uuid.uuid4().hex,
            type="identify",
            occurred_at=now,
            traits=traits,
            source="rehearsal",
        )
        # The contact is recorded here first, and its workflow starts with the identify
        # and the enrolment in its input: one start, no update, no open activity.
        db = make_engine(settings.resolved_database_url)
        try:
            opening = await ContactOpener(db, settings).open(
                contact_id, event=identify, journey=name, rehearsal=True
            )
        finally:
            db.dispose()
        result = await enrol(
            client,
            settings,
            contact_id,
            EnrolRequest(name, time_scale, event=identify),
            rehearsal=True,
            opening=opening,
        )
        if not result.accepted:
            raise InvalidOption(
                f"{name} refused the enrolment: {result.reason}",
                fix="start a worker ('stagecoach up'); it publishes the bundled journeys",
            )
        typer.echo(
            f"rehearsing {name} v{_short(result.version)} as {contact_id} at x{1 / time_scale:g}"
        )
        started = asyncio.get_running_loop().time()
        pending = list(script)
        shown: set[tuple[datetime, str, str]] = set()
        ignored: list[str] = []
        while asyncio.get_running_loop().time() - started < timeout:
            elapsed = timedelta(seconds=asyncio.get_running_loop().time() - started)
            while pending and pending[0][0] * time_scale <= elapsed:
                _, kind, props = pending.pop(0)
                await send_event(
                    client,
                    settings,
                    contact_id,
                    EventMessage(
                        message_id=uuid.uuid4().hex,
                        type=kind,
                        occurred_at=datetime.now(UTC),
                        properties=props,
                        source="rehearsal",
                    ),
                )
            # The state first, then the story: a journey seen ended has its last lines
            # in the history read after it, so none is left unprinted.
            view = await contact_view(client, contact_id)
            story = await contact_timeline(client, contact_id, view=view)
            # Lines already printed are skipped by identity, not position: an ignored
            # event is known only once the workflow went on after it, and its line sits
            # where the event arrived.
            for entry in story:
                key = (entry.at, entry.kind, entry.summary)
                if key in shown:
                    continue
                shown.add(key)
                when = _offset((entry.at - now) / time_scale)
                summary = entry.summary
                if entry.kind == "ignored":
                    summary = _ignored_text(entry.data, when)
                    ignored.append(summary)
                typer.echo(f"  {when}  {entry.kind:<9} {summary}")
            if not pending and all(j["journey"] != name for j in view.journeys):
                break
            await asyncio.sleep(0.5)
        else:
            typer.echo(
                f"still running after {timeout:.0f}s; follow it with "
                f"'stagecoach contact timeline {contact_id}'"
            )
        if ignored:
            typer.echo(
                f"warning: {len(ignored)} event(s) arrived while no step was waiting for them"
                " and were ignored:"
            )
            for line in ignored:
                typer.echo(f"  ignored: {line}")
        typer.echo(f"messages: {settings.resolved_sink_dir / 'rehearsal' / contact_id}")

    asyncio.run(run())


def _ignored_text(data: dict[str, Any], when: str) -> str:
    """An ``ignored`` story line with the arrival in journey time (``+2d 03:00``)."""
    from stagecoach.engine.temporal.ignored import IgnoredEvent

    return IgnoredEvent(
        at=datetime.fromisoformat(str(data["at"])),
        event=str(data["event"]),
        journey=str(data["journey"]),
        enrolment=int(data.get("enrolment") or 0),
        step=str(data["step"]),
        doing=str(data["doing"]),
        later=tuple(data.get("later") or ()),
    ).text(when)


def _catalog_names(settings: Settings) -> frozenset[str]:
    """The project's event types (its own as well as the standard ones), as ``simulate``
    and the worker know them."""
    from stagecoach.engine.services.project import load_project

    return frozenset(load_project(settings).definitions.events.names())
