"""Events a journey ignored: they arrived while the enrolment waited for something else,
and a later ``wait_for`` of the same enrolment waits for them in vain.

Derived from the contact's workflow history alone (and the live state, for an
enrolment still in flight), so the workflow records nothing new and every recorded
history still replays. For each event signalled to the contact, and each enrolment in
flight when it arrived:

- where the enrolment stood: the journey's timer running then (a send held for quiet
  hours or the frequency cap, a ``wait``, a ``wait_for``, a wait for a channel), else a
  delivery in flight, else the last step of its trail (the ``contact.deliver`` and
  ``contact.record_enrolment`` inputs carry it, the live state holds the rest);
- a ``wait_for`` running then that matches the event counted it: not ignored;
- the event is ignored when a ``wait_for`` the enrolment can still reach matches it and
  will not count it (no ``since``, or a ``since`` point not yet reached), unless the
  journey's goal or exit criteria ended the enrolment on it (the first passage after it
  is ``$goal`` or ``$exit``).

An event is judged only once the history shows the workflow went on after it (a later
record), the live state lists its message id, or the workflow has closed: until then the
workflow may not have applied it yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stagecoach.engine.domain.conditions import EventRecord
from stagecoach.engine.domain.journeys import (
    ENROLMENT,
    EXIT_PASSAGE,
    GOAL_PASSAGE,
    JourneyError,
    JourneySpec,
    WaitForEventStep,
    WaitStep,
    WaitUntilStep,
    human_duration,
)
from stagecoach.engine.protocol import (
    CHANNEL_TIMER_PREFIX,
    DEFER_TIMER_PREFIX,
    DELIVER_ACTIVITY,
    LOAD_DEFINITIONS_ACTIVITY,
    OPEN_ACTIVITY,
    RECORD_ENROLMENT_ACTIVITY,
)
from stagecoach.engine.protocol.messages import ContactView
from stagecoach.engine.temporal.history import (
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    Record,
    Signalled,
    Started,
    TimerCanceled,
    TimerFired,
    TimerStarted,
    UpdateCompleted,
)

QUIET_HOURS = "holding for quiet hours"
FREQUENCY_CAP = "held by the frequency cap"


@dataclass(frozen=True)
class IgnoredEvent:
    """One event an enrolment ignored.

    Attributes:
        at: When it arrived (the signal's server time).
        event: Its type.
        journey: The journey that ignored it.
        enrolment: Which enrolment (0 when the history does not hold the number).
        step: Where the enrolment stood.
        doing: What it was doing there (``holding for quiet hours``, ``waiting 3d``...).
        later: The ``wait_for`` steps after it that wait for such an event.
    """

    at: datetime
    event: str
    journey: str
    enrolment: int
    step: str
    doing: str
    later: tuple[str, ...]

    def text(self, when: str | None = None) -> str:
        """``order.paid arrived at <when> while b2b/trial was holding for quiet hours;
        ...``: ``when`` defaults to the arrival time in ISO 8601."""
        arrived = when or self.at.isoformat(timespec="seconds")
        waits = ", ".join(self.later)
        verb = "waits" if len(self.later) == 1 else "wait"
        return (
            f"{self.event} arrived at {arrived} while {self.journey}/{self.step} was"
            f" {self.doing}; {waits} {verb} for it later and will not count it (count it"
            " with wait_for(..., since='enrolment'))"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "journey": self.journey,
            "enrolment": self.enrolment,
            "step": self.step,
            "doing": self.doing,
            "later": list(self.later),
        }


@dataclass
class _Timer:
    journey: str
    name: str
    started: datetime
    delay_text: str
    ended: datetime | None = None


@dataclass
class _Delivery:
    journey: str
    step: str
    scheduled: datetime
    ended: datetime | None = None
    deferred: bool = False


@dataclass
class _Enrolment:
    journey: str
    number: int
    version: str = ""
    started: datetime | None = None
    finished: datetime | None = None
    trail: list[dict[str, Any]] = field(default_factory=list)

    def longer(self, trail: Any) -> None:
        # The trail only grows: the longest one seen is the newest.
        if isinstance(trail, list) and len(trail) > len(self.trail):
            self.trail = [p for p in trail if isinstance(p, dict)]


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class _Read:
    specs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    published: dict[str, dict[str, Any]] = field(default_factory=dict)
    enrolments: dict[tuple[str, int], _Enrolment] = field(default_factory=dict)
    timers: list[_Timer] = field(default_factory=list)
    deliveries: list[_Delivery] = field(default_factory=list)
    events: list[tuple[datetime, dict[str, Any]]] = field(default_factory=list)
    last_at: datetime | None = None
    """The newest record that is not a signal: the workflow went on until then."""

    def define(self, journeys: Any) -> None:
        if not isinstance(journeys, dict):
            return
        for name, raw in journeys.items():
            if isinstance(raw, dict):
                self.specs[(str(name), str(raw.get("version", "")))] = raw
                self.published[str(name)] = raw

    def enrolment(self, journey: Any, number: Any) -> _Enrolment:
        key = (str(journey), int(number or 1))
        return self.enrolments.setdefault(key, _Enrolment(*key))


def _read(records: Iterable[Record], view: ContactView | None) -> _Read:
    read = _Read()
    timers: dict[TimerStarted | None, _Timer] = {}
    deliveries: dict[ActivityScheduled | None, _Delivery] = {}
    for rec in records:
        if not isinstance(rec, Signalled):
            read.last_at = rec.at if read.last_at is None else max(read.last_at, rec.at)
        if isinstance(rec, Started):
            read.define((rec.input.get("definitions") or {}).get("journeys"))
            for carried in rec.input.get("journeys") or []:
                cursor, spec = carried.get("cursor") or {}, carried.get("spec") or {}
                e = read.enrolment(cursor.get("journey"), cursor.get("enrolment"))
                e.version = e.version or str(cursor.get("version") or "")
                e.started = e.started or _when(carried.get("origin"))
                e.longer(carried.get("trail"))
                read.specs.setdefault((e.journey, e.version), spec)
        elif isinstance(rec, Signalled):
            read.events.extend((rec.at, each) for each in rec.events())
        elif isinstance(rec, UpdateCompleted) and rec.update is not None:
            result = rec.result
            if result.get("accepted") and result.get("journey"):
                e = read.enrolment(result["journey"], result.get("enrolment"))
                e.version = e.version or str(result.get("version") or "")
                e.started = e.started or rec.update.at
        elif isinstance(rec, ActivityScheduled):
            req = rec.input
            if rec.name == DELIVER_ACTIVITY and req.get("journey"):
                e = read.enrolment(req["journey"], req.get("enrolment"))
                e.version = e.version or str(req.get("journey_version") or "")
                e.started = e.started or _when(req.get("enrolment_started_at"))
                e.longer(req.get("trail"))
                delivery = _Delivery(str(req["journey"]), str(req.get("step_id")), rec.at)
                deliveries[rec] = delivery
                read.deliveries.append(delivery)
            elif rec.name == RECORD_ENROLMENT_ACTIVITY and req.get("journey"):
                e = read.enrolment(req["journey"], req.get("enrolment"))
                e.version = e.version or str(req.get("version") or "")
                e.started = e.started or _when(req.get("started_at"))
                e.finished = _when(req.get("finished_at")) or rec.at
                e.longer(req.get("trail"))
        elif isinstance(rec, ActivityCompleted) and rec.activity is not None:
            if rec.activity.name in (OPEN_ACTIVITY, LOAD_DEFINITIONS_ACTIVITY):
                read.define(rec.result.get("journeys"))
            done = deliveries.get(rec.activity)
            if done is not None:
                done.ended = rec.at
                done.deferred = rec.result.get("status") == "deferred"
        elif isinstance(rec, ActivityFailed):
            failed = deliveries.get(rec.activity)
            if failed is not None:
                failed.ended = rec.at
        elif isinstance(rec, TimerStarted):
            timer = _Timer(rec.namespace, rec.name, rec.at, human_duration(rec.delay))
            timers[rec] = timer
            read.timers.append(timer)
        elif isinstance(rec, TimerFired | TimerCanceled):
            ended = timers.get(rec.timer)
            if ended is not None:
                ended.ended = rec.at
    if view is not None:
        for live in view.journeys:
            e = read.enrolment(live.get("journey"), live.get("enrolment"))
            e.version = e.version or str(live.get("version") or "")
            e.longer(live.get("trail"))
    for timer in read.timers:
        # An enrolment only its timers show (a first send held before any delivery).
        if timer.journey in read.published and not any(
            k[0] == timer.journey for k in read.enrolments
        ):
            read.enrolment(timer.journey, 0).started = timer.started
    return read


def _spec(read: _Read, e: _Enrolment) -> JourneySpec | None:
    raw = read.specs.get((e.journey, e.version)) or read.published.get(e.journey)
    if not raw:
        return None
    try:
        return JourneySpec.from_dict(raw)
    except (JourneyError, KeyError, TypeError, ValueError):
        return None  # a spec this code cannot rebuild: nothing to say about it


def _started(e: _Enrolment) -> datetime | None:
    if e.started is not None:
        return e.started
    times = [_when(p.get("at")) for p in e.trail]
    return min((t for t in times if t is not None), default=None)


def _position(read: _Read, e: _Enrolment, spec: JourneySpec, at: datetime) -> tuple[str, str]:
    """The step the enrolment stood at when ``at`` came, and what it was doing there."""
    running = [
        t
        for t in read.timers
        if t.journey == e.journey and t.started <= at and (t.ended is None or t.ended > at)
    ]
    if running:
        timer = max(running, key=lambda t: t.started)
        if timer.name.startswith(DEFER_TIMER_PREFIX):
            step = timer.name.removeprefix(DEFER_TIMER_PREFIX)
            capped = any(
                d.journey == e.journey
                and d.step == step
                and d.deferred
                and d.ended == timer.started
                for d in read.deliveries
            )
            return step, FREQUENCY_CAP if capped else QUIET_HOURS
        if timer.name.startswith(CHANNEL_TIMER_PREFIX):
            step = timer.name.removeprefix(CHANNEL_TIMER_PREFIX).rsplit(":", 1)[0]
            return step, "waiting for a channel"
        step = timer.name.rsplit(":", 1)[0]
        return step, _waiting(spec, step, timer.delay_text)
    sending = [
        d
        for d in read.deliveries
        if d.journey == e.journey and d.scheduled <= at and (d.ended is None or d.ended > at)
    ]
    if sending:
        return sending[-1].step, "sending"
    before = [p for p in e.trail if (_when(p.get("at")) or at) <= at]
    step = str(before[-1].get("step")) if before else spec.start
    return step, "in progress"


def _waiting(spec: JourneySpec, step_id: str, delay: str) -> str:
    try:
        step = spec.step(step_id)
    except KeyError:
        return f"waiting {delay}"
    if isinstance(step, WaitForEventStep):
        return f"waiting for {' or '.join(m.type for m in step.matchers)}"
    if isinstance(step, WaitUntilStep):
        return f"waiting until {step.at.strftime('%H:%M')} local"
    if isinstance(step, WaitStep):
        return f"waiting {human_duration(step.duration)}"
    return f"waiting {delay}"


def _after(spec: JourneySpec, step_id: str) -> list[str]:
    """Steps reachable from ``step_id``'s targets, in spec order."""
    seen: set[str] = set()
    todo: list[str] = []
    try:
        todo = [t for _, t in spec.step(step_id).edges()]
    except KeyError:
        return []
    while todo:
        current = todo.pop()
        if current in seen or current.startswith("$"):
            continue
        seen.add(current)
        try:
            todo.extend(t for _, t in spec.step(current).edges())
        except KeyError:
            continue
    return [s.id for s in spec.steps if s.id in seen]


def _counts_later(wait: WaitForEventStep, e: _Enrolment, at: datetime, here: str) -> bool:
    """Whether ``wait`` will count an event that arrived at ``at``: its ``since`` point
    was reached by then."""
    if wait.since is None:
        return False
    if wait.since == ENROLMENT or wait.since == here:
        return True
    return any(p.get("step") == wait.since and (_when(p.get("at")) or at) <= at for p in e.trail)


def _consumed_by_finish(e: _Enrolment, at: datetime, next_arrival: datetime | None) -> bool:
    """The goal or the exit criteria ended the enrolment on the event at ``at``: the
    first passage after it finishes the enrolment, before the next event arrived."""
    after = [(t, p) for p in e.trail if (t := _when(p.get("at"))) is not None and t >= at]
    if not after or after[0][1].get("step") not in (GOAL_PASSAGE, EXIT_PASSAGE):
        return False
    return next_arrival is None or after[0][0] <= next_arrival


def ignored_events(
    records: Iterable[Record],
    view: ContactView | None = None,
    *,
    closed: bool = False,
    journey: str | None = None,
) -> list[IgnoredEvent]:
    """The events each enrolment ignored, oldest first (see the module's docstring).

    Args:
        records: The contact's history records, every run, oldest first.
        view: The live state, for enrolments in flight and which events were applied.
        closed: The workflow has ended: every event it holds was applied.
        journey: Only this journey's enrolments.
    """
    read = _read(records, view)
    seen_ids = set((view.state.get("seen_ids") or []) if view is not None else [])
    out: list[IgnoredEvent] = []
    specs = {key: _spec(read, e) for key, e in read.enrolments.items()}
    arrivals = sorted({at for at, _ in read.events})
    for at, message in read.events:
        next_arrival = next((t for t in arrivals if t > at), None)
        applied = (
            closed
            or message.get("message_id") in seen_ids
            or (read.last_at is not None and read.last_at > at)
        )
        if not applied or not message.get("type"):
            continue
        record = EventRecord(
            str(message["type"]),
            _when(message.get("occurred_at")) or at,
            dict(message.get("properties") or {}),
        )
        for key, e in read.enrolments.items():
            if journey is not None and e.journey != journey:
                continue
            started = _started(e)
            if started is None or started > at or (e.finished is not None and e.finished <= at):
                continue
            spec = specs[key]
            if spec is None or _consumed_by_finish(e, at, next_arrival):
                continue
            here, doing = _position(read, e, spec, at)
            try:
                current = spec.step(here)
            except KeyError:
                continue
            if (
                isinstance(current, WaitForEventStep)
                and doing.startswith("waiting")
                and any(m.matches(record) for m in current.matchers)
            ):
                continue  # the wait running then counted it
            later = [
                step
                for step in (spec.step(s) for s in _after(spec, here))
                if isinstance(step, WaitForEventStep)
                and any(m.matches(record) for m in step.matchers)
            ]
            missed = tuple(w.id for w in later if not _counts_later(w, e, at, here))
            if missed:
                out.append(IgnoredEvent(at, record.type, e.journey, e.number, here, doing, missed))
    return out
