"""Offline journey rehearsal: the real ``step`` function on a fake clock.

``simulate`` plays a scripted contact through one journey version in microseconds:
deliveries and hand-offs succeed at once (unless a step is told to fail permanently),
timers fire at their deadlines, scripted events arrive at their offsets, and stage,
attribute and tag commands update the simulated contact so later conditions see them.
At equal times, scripted events are handled before timers: a contact who acts at the
last moment of a wait acted in time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from stagecoach.engine.domain.conditions import EventRecord, Facts
from stagecoach.engine.domain.policy import SendPolicy

from ._interpreter import (
    TIME_ZONE_ATTRIBUTE,
    AddTag,
    CancelTimer,
    ChangeStage,
    Command,
    Completed,
    Cursor,
    Deliver,
    DeliveryResult,
    EventReceived,
    Exit,
    HandOff,
    HandoffResult,
    Input,
    SetAttribute,
    Start,
    StartTimer,
    TimerFired,
    step,
)
from ._spec import JourneySpec

SIMULATION_EPOCH = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
"""Default start of the fake clock (a Monday, 09:00 UTC)."""


@dataclass(frozen=True)
class SimContact:
    """The contact a simulation plays.

    Attributes:
        contact_id: Feeds split hashing, so a simulation is as deterministic as production.
        stage: Pipeline stage at the start.
        score: Lead score (constant during the simulation).
        grade: Fit grade.
        attributes: Attributes; set ``timezone`` (the contact model's field) for time-of-day waits.
        tags: Tags.
        enrolment: Enrolment number to simulate.
    """

    contact_id: str = "sim-contact"
    stage: str = "suspect"
    score: float = 0.0
    grade: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()
    enrolment: int = 1


ScriptItem = tuple[timedelta, EventRecord | str]
"""(offset from the start, event). A bare string is an event type without properties."""


@dataclass(frozen=True)
class TimelineEntry:
    """One command the journey issued, at an offset from the simulation start.

    ``held_until``: for a send that fell in quiet hours, the offset it went out at (the
    journey waits for its result until then, as the workflow does); ``None`` otherwise.
    """

    offset: timedelta
    command: Command
    held_until: timedelta | None = None


@dataclass(frozen=True)
class SimulationResult:
    """What happened.

    Attributes:
        timeline: Every command, in order, with its offset.
        cursor: The final cursor (``None`` when the contact never entered).
        entered_at: Offset of enrolment, or ``None``.
    """

    timeline: tuple[TimelineEntry, ...]
    cursor: Cursor | None
    entered_at: timedelta | None

    def deliveries(self) -> list[tuple[timedelta, str]]:
        """(offset, content id or step id for selector sends) of every ``Deliver``."""
        return [
            (e.offset, e.command.content_id or e.command.step_id)
            for e in self.timeline
            if isinstance(e.command, Deliver)
        ]

    def delivered_at(self, content_id: str) -> timedelta | None:
        """Offset of the first delivery of ``content_id``, or ``None`` if never sent."""
        return next((at for at, c in self.deliveries() if c == content_id), None)

    def commands(self, kind: type[Any]) -> list[tuple[timedelta, Any]]:
        """(offset, command) for every command of one class, e.g. ``ChangeStage``."""
        return [(e.offset, e.command) for e in self.timeline if isinstance(e.command, kind)]

    @property
    def outcome(self) -> str:
        """``not entered``, ``active``, or the final status and reason."""
        if self.cursor is None:
            return "not entered"
        if self.cursor.active:
            return "active"
        return f"{self.cursor.status}: {self.cursor.reason}"

    def __str__(self) -> str:
        lines = [f"{_offset(e.offset):>10}  {_describe(e.command)}" for e in self.timeline]
        return "\n".join([*lines, f"outcome: {self.outcome}"])


def _offset(delta: timedelta) -> str:
    hours, rest = divmod(int(delta.total_seconds()), 3600)
    days, hours = divmod(hours, 24)
    return f"d{days} {hours:02d}:{rest // 60:02d}"


def _describe(command: Command) -> str:
    data = command.to_dict()
    name = data.pop("command")
    return f"{name} " + ", ".join(f"{k}={v}" for k, v in data.items() if v not in (None, ""))


def simulate(
    spec: JourneySpec,
    contact: SimContact,
    script: Sequence[ScriptItem],
    until: timedelta,
    *,
    start: datetime = SIMULATION_EPOCH,
    fail_steps: Mapping[str, str] | None = None,
    policy: SendPolicy | None = None,
) -> SimulationResult:
    """Rehearse ``spec`` for ``contact`` over ``until`` of fake time.

    Entry: a stage trigger matching ``contact.stage`` enrols at offset 0; otherwise the
    first scripted event matching an event trigger enrols the contact then.

    Args:
        spec: The compiled journey.
        contact: Who plays it.
        script: Events the contact performs, as (offset, event); unordered is fine.
        until: Simulated duration.
        start: Wall-clock time at offset 0 (aware).
        fail_steps: Send or hand-off step id -> permanent error to inject for that step.
        policy: Quiet hours to hold sends for, in the contact's ``timezone`` attribute
            (UTC without one), as the workflow does: a send issued in quiet hours goes out
            when they end, and the journey waits for its result until then, so events
            arriving meanwhile find it still on that step. ``None``: no quiet hours. The
            frequency cap is not simulated.

    Returns:
        The timeline, the final cursor and when the contact entered.
    """
    failures = dict(fail_steps or {})
    events = sorted(
        ((at, e if isinstance(e, EventRecord) else EventRecord(e, start + at)) for at, e in script),
        key=lambda item: item[0],
    )
    stage, attributes, tags = contact.stage, dict(contact.attributes), set(contact.tags)
    seen: list[EventRecord] = []
    timers: dict[str, datetime] = {}
    timeline: list[TimelineEntry] = []
    cursor: Cursor | None = None
    entered_at: timedelta | None = None
    pending: list[Input] = []
    held: list[tuple[datetime, Deliver, str | None]] = []

    def facts(now: datetime) -> Facts:
        return Facts(
            now=now,
            stage=stage,
            score=contact.score,
            grade=contact.grade,
            attributes=dict(attributes),
            tags=frozenset(tags),
            events=tuple(seen),
        )

    def feed(inp: Input) -> None:
        nonlocal cursor, stage
        pending.append(inp)
        while pending:
            current = pending.pop(0)
            cursor, commands = step(spec, cursor, current)
            now = current.now
            for command in commands:
                quiet = (
                    policy.quiet_until(now, attributes.get(TIME_ZONE_ATTRIBUTE))
                    if policy is not None and isinstance(command, Deliver)
                    else None
                )
                timeline.append(
                    TimelineEntry(now - start, command, None if quiet is None else quiet - start)
                )
                if isinstance(command, StartTimer):
                    timers[command.timer_id] = command.fire_at
                elif isinstance(command, CancelTimer):
                    timers.pop(command.timer_id, None)
                elif isinstance(command, ChangeStage):
                    stage = command.stage
                elif isinstance(command, SetAttribute):
                    attributes[command.name] = command.value
                elif isinstance(command, AddTag):
                    tags.add(command.tag)
                elif isinstance(command, Deliver) and quiet is not None:
                    held.append((quiet, command, failures.get(command.step_id)))
                elif isinstance(command, Deliver):
                    error = failures.get(command.step_id)
                    pending.append(
                        DeliveryResult(
                            now=now,
                            facts=facts(now),
                            step_id=command.step_id,
                            ok=error is None,
                            permanent_error=error,
                            content_id=command.content_id,
                        )
                    )
                elif isinstance(command, HandOff):
                    error = failures.get(command.step_id)
                    pending.append(
                        HandoffResult(
                            now=now,
                            facts=facts(now),
                            step_id=command.step_id,
                            ok=error is None,
                            error=error,
                        )
                    )
                elif isinstance(command, Exit | Completed):
                    timers.clear()

    if spec.entered_by_stage(contact.stage):
        entered_at = timedelta(0)
        feed(
            Start(
                now=start,
                facts=facts(start),
                contact_id=contact.contact_id,
                enrolment=contact.enrolment,
            )
        )

    end = start + until
    queue = list(events)
    while True:
        next_event_at = start + queue[0][0] if queue else None
        timer_id, fire_at = min(timers.items(), key=lambda kv: kv[1], default=(None, None))
        release = min(held, key=lambda h: h[0]) if held else None
        if release is not None and all(
            at is None or release[0] < at for at in (next_event_at, fire_at)
        ):
            if release[0] > end:
                break
            held.remove(release)
            now, command, error = release
            feed(
                DeliveryResult(
                    now=now,
                    facts=facts(now),
                    step_id=command.step_id,
                    ok=error is None,
                    permanent_error=error,
                    content_id=command.content_id,
                )
            )
        elif next_event_at is not None and (fire_at is None or next_event_at <= fire_at):
            if next_event_at > end:
                break
            _, record = queue.pop(0)
            now = next_event_at
            record = replace(record, at=now)
            seen.append(record)
            if cursor is None:
                if spec.entered_by_event(record):
                    entered_at = now - start
                    feed(
                        Start(
                            now=now,
                            facts=facts(now),
                            contact_id=contact.contact_id,
                            enrolment=contact.enrolment,
                        )
                    )
            else:
                feed(EventReceived(now=now, facts=facts(now), event=record))
        elif fire_at is not None and timer_id is not None:
            if fire_at > end:
                break
            del timers[timer_id]
            feed(TimerFired(now=fire_at, facts=facts(fire_at), timer_id=timer_id))
        else:
            break
        if cursor is not None and not cursor.active:
            break
    return SimulationResult(tuple(timeline), cursor, entered_at)
