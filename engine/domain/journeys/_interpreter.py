"""The journey interpreter: a pure state machine, ``step(spec, cursor, input)``.

The contact workflow and the offline simulator both drive journeys through ``step`` and
nothing else. ``step`` reads no clock (inputs carry ``now``), draws no random numbers
(splits hash stable inputs) and performs no I/O: it returns the new cursor and the
commands the caller must carry out, then feeds their outcomes back as inputs.

Model::

    inputs   Start | TimerFired | EventReceived | DeliveryResult | HandoffResult
             | ChannelReady | Cancel
    commands Deliver | StartTimer | CancelTimer | WaitForEvent | ChangeStage | HandOff
             | SetAttribute | AddTag | Enrol | Exit | Completed

Waiting: a cursor waits for exactly one thing: a delivery result (after ``Deliver``), a
hand-off result (after ``HandOff``), a timer (``wait``/``wait_until``), an event with a
timeout, or a usable channel with a timeout (a send the workflow answered
``DeliveryResult(no_channel=True)``, when the step's ``NoChannel`` says wait; the
workflow feeds ``ChannelReady`` once the contact has one, and the timeout exits with
reason ``no_channel``). An event wait is emitted as ``StartTimer`` (the timeout) plus
``WaitForEvent`` (which events end it); the workflow runs every timer the same way and feeds back
``TimerFired`` or ``EventReceived``; ``CancelTimer`` tells it a pending timer is moot.

Goal and global exit criteria are evaluated on every input to an active cursor (so on
every event and whenever any wait ends), goal first: a contact who pays and becomes a
customer in one go converted, they did not merely leave.

Early events: a ``wait_for(..., since=...)`` step looks, when it starts, through the
events in ``facts`` for one received since its anchor (the enrolment, or the last time
the enrolment reached a named step; the cursor's ``marks`` keep those moments) and, if it
finds one, passes at once. Without ``since`` only events that arrive while it waits count.

Facts: each input carries the contact's facts at ``now``. While one input runs instant
steps, the journey's own ``ChangeStage``/``SetAttribute``/``AddTag`` writes are applied to
that snapshot, so a branch after a stage change sees the new stage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, TypeAlias, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from stagecoach.engine.domain import serial
from stagecoach.engine.domain.conditions import EventMatcher, EventRecord, Facts

from ._errors import JourneyRuntimeError, StepBudgetExceeded
from ._spec import JourneySpec
from ._steps import (
    END,
    ENROLMENT,
    EXIT_PREFIX,
    NO_CHANNEL,
    AddTagStep,
    BranchStep,
    ChangeStageStep,
    EnrolStep,
    ExitStep,
    GoalStep,
    HandOffStep,
    NextBestItem,
    SendStep,
    SetAttributeStep,
    SplitStep,
    Step,
    WaitForEventStep,
    WaitStep,
    WaitUntilStep,
    _human,
)

STEP_BUDGET = 1000
"""Instant steps one input may run; a validated journey never comes close."""

TIME_ZONE_ATTRIBUTE = "timezone"
"""Contact attribute holding an IANA time zone (``Asia/Shanghai``); UTC when absent."""

Status: TypeAlias = Literal["active", "completed", "exited"]
_S = TypeVar("_S", bound=Step)
WaitKind: TypeAlias = Literal["delivery", "handoff", "timer", "event", "channel"]

EARLY = "sent at"
"""A ``since`` wait that counted an event sent before it started passes with
``matched <type> sent at <when>, before the wait``."""
CHANNEL_TIMER_PREFIX = "channel:"
"""Timer ids of a send waiting for a usable channel: ``channel:<step id>:<n>``."""
WAITING_FOR_CHANNEL = "waiting for a channel"
"""Passage outcomes of a send without a usable channel, by what the journey declared
(``NoChannel``): ``waiting for a channel: <why>``, then ``channel ready`` or
``no channel within <limit>``; ``skipped: no channel: <why>``; ``exited: no channel:
<why>``. ``contact why`` and the timeline read them."""
SKIPPED_NO_CHANNEL = "skipped: no channel"
EXITED_NO_CHANNEL = "exited: no channel"
CHANNEL_READY = "channel ready"
NO_CHANNEL_WITHIN = "no channel within"


def idempotency_key(
    journey: str, version: str, step_id: str, enrolment: int, visit: int = 1
) -> str:
    """The contact-independent part of a delivery or hand-off idempotency key.

    The workflow prefixes the contact id. A step visited again in the same enrolment (a
    loop with a wait) gets ``#<visit>`` so the second send is not mistaken for a retry.

    Args:
        journey: Journey name.
        version: Spec version the enrolment pinned.
        step_id: The send or hand-off step.
        enrolment: Enrolment number (1 for the first).
        visit: How many times this enrolment reached the step.
    """
    base = f"{journey}:{version}:{step_id}:{enrolment}"
    return base if visit == 1 else f"{base}#{visit}"


def split_point(contact_id: str, journey: str, version: str, step_id: str, enrolment: int) -> float:
    """A stable point in [0, 1) for a contact at a split step; sha256, never ``random``.

    Replays and retries see the same point; different contacts spread uniformly.
    """
    key = "\x1f".join((contact_id, journey, version, step_id, str(enrolment)))
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_split_target(step: SplitStep, point: float) -> str:
    """The arm whose cumulative weight interval holds ``point``."""
    total = sum(b.weight for b in step.branches)
    threshold = point * total
    running = 0.0
    chosen = step.branches[-1]
    for b in step.branches:
        running += b.weight
        if threshold < running:
            chosen = b
            break
    if chosen.target is None:
        raise JourneyRuntimeError(
            f"split {step.id!r} has an unresolved arm", fix="compile the journey before running it"
        )
    return chosen.target


def next_time_of_day(now: datetime, at: time, zone: str) -> datetime:
    """The next instant after ``now`` when the wall clock in ``zone`` shows ``at``.

    DST-safe: on a spring-forward day a wall time inside the gap (02:30 where clocks jump
    from 02:00 to 03:00) moves forward by the gap (to 03:30); on a fall-back day the first
    of the two occurrences is used. Returned in UTC.

    Args:
        now: Current instant (aware).
        at: Wall-clock time of day.
        zone: IANA zone name; unknown names fall back to UTC rather than fail a workflow.
    """
    try:
        tz: ZoneInfo = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo("UTC")
    local_day: date = now.astimezone(tz).date()
    for offset in range(3):
        # fold=0 in a gap takes the pre-transition offset, which lands past the gap in UTC.
        wall = datetime.combine(local_day + timedelta(days=offset), at.replace(tzinfo=tz, fold=0))
        candidate = wall.astimezone(UTC)
        if candidate > now:
            return candidate
    raise AssertionError("unreachable: a wall time recurs within three days")  # pragma: no cover


# Cursor.


@dataclass(frozen=True)
class Waiting(serial.Record):
    """What an active cursor waits for.

    Attributes:
        kind: ``delivery``, ``handoff``, ``timer`` or ``event``.
        step_id: The step that waits.
        timer_id: Timer to match ``TimerFired`` against (timer and event waits).
        deadline: When the timer fires (timer and event waits).
    """

    kind: WaitKind
    step_id: str
    timer_id: str | None = None
    deadline: datetime | None = None


ENROLMENT_MARK = "$enrolment"
"""The mark of the moment the enrolment began (``since="enrolment"``)."""
LEFT_MARK = "$left:"
"""``$left:<wait id>``: when a ``since`` wait last ended; an event counts for it once."""


@dataclass(frozen=True)
class Mark(serial.Record):
    """A moment a ``since`` wait counts from, as the contact's events stood then.

    Attributes:
        key: ``$enrolment``, a step id, or ``$left:<wait id>``.
        at: When (journey time), for people reading the cursor.
        last: The newest of the contact's events at that moment (``None``: none yet).
            An event counts when it comes after this one in the contact's events, that
            is, when the workflow received it after the moment, whatever its
            ``occurred_at`` says: the client's clock and a delayed delivery cannot make
            an event the journey heard afterwards look older than the moment.
    """

    key: str
    at: datetime
    last: EventRecord | None = None


# Journeys without ``since`` leave no marks, so their cursors keep the form they had.
@serial.fields(omit_if_default=("marks",))
@dataclass(frozen=True)
class Cursor(serial.Record):
    """Where one enrolment of one contact stands. Frozen, JSON-able, small.

    Attributes:
        journey: Journey name.
        version: Spec version pinned at enrolment.
        contact_id: The contact (splits hash it).
        enrolment: Enrolment number, 1 for the first.
        step_id: Current (or last) step.
        status: ``active``, ``completed`` or ``exited``.
        reason: Why the enrolment finished (``goal``, ``end``, an exit reason).
        waiting: What an active cursor waits for.
        history: Steps entered so far; timer ids are built from it so they never repeat.
        visits: Per send/hand-off step, how often this enrolment reached it.
        marks: When the enrolment began and last reached each step a ``wait_for(...,
            since=...)`` counts from, and when each such wait last ended (``Mark``).
            Kept only for journeys that use ``since``.
    """

    journey: str
    version: str
    contact_id: str
    enrolment: int
    step_id: str
    status: Status = "active"
    reason: str | None = None
    waiting: Waiting | None = None
    history: int = 0
    visits: tuple[tuple[str, int], ...] = ()
    marks: tuple[Mark, ...] = ()

    @property
    def active(self) -> bool:
        """True until the enrolment completes or exits."""
        return self.status == "active"

    def visit_count(self, step_id: str) -> int:
        """How many times this enrolment reached ``step_id`` (send/hand-off steps only)."""
        return dict(self.visits).get(step_id, 0)


# Inputs. All carry ``now`` and the contact's ``facts`` at that instant, so any
# condition (goal, exit criteria, branch) can be evaluated on any of them.


@dataclass(frozen=True, kw_only=True)
class Start:
    """Enrol the contact: run from the first step.

    Attributes:
        now: Current instant (timezone-aware).
        facts: The contact at ``now``.
        contact_id: The contact.
        enrolment: Enrolment number (1 for the first; see ``can_enrol``).
    """

    now: datetime
    facts: Facts
    contact_id: str
    enrolment: int = 1


@dataclass(frozen=True, kw_only=True)
class TimerFired:
    """A timer from ``StartTimer`` fired; stale timer ids are ignored."""

    now: datetime
    facts: Facts
    timer_id: str


@dataclass(frozen=True, kw_only=True)
class EventReceived:
    """The contact did something; ``facts.events`` should already include it."""

    now: datetime
    facts: Facts
    event: EventRecord


@dataclass(frozen=True, kw_only=True)
class DeliveryResult:
    """Outcome of a ``Deliver`` command, after the activity's own retries.

    Attributes:
        step_id: The send step.
        ok: Delivered.
        permanent_error: Why it failed for good (``None`` with ``ok=False``: unknown).
        content_id: What was sent (the selected item for a next-best send).
        content_version: Version of that content.
    """

    now: datetime
    facts: Facts
    step_id: str
    ok: bool
    permanent_error: str | None = None
    content_id: str | None = None
    content_version: str | None = None
    no_channel: bool = False
    """Not attempted: the contact has no channel it may be sent on (``permanent_error``
    says which, e.g. ``no_address:preferred``). The step's ``NoChannel`` decides: wait
    for one, skip the send, or exit. False for old callers: a failure as before."""


@dataclass(frozen=True, kw_only=True)
class ChannelReady:
    """The contact now has a usable channel for the send waiting at ``step_id``."""

    now: datetime
    facts: Facts
    step_id: str


@dataclass(frozen=True, kw_only=True)
class HandoffResult:
    """Outcome of a ``HandOff`` command."""

    now: datetime
    facts: Facts
    step_id: str
    ok: bool
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class Cancel:
    """Stop the enrolment from outside (an operator, a newer enrolment policy)."""

    now: datetime
    facts: Facts
    reason: str


Input: TypeAlias = (
    Start | TimerFired | EventReceived | DeliveryResult | HandoffResult | ChannelReady | Cancel
)


# Commands.


class _Command(serial.Record):
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``{"command": "Deliver", ...fields}``."""
        return {"command": type(self).__name__, **serial.encode(self)}


@dataclass(frozen=True)
class Deliver(_Command):
    """Send content; answer with ``DeliveryResult``.

    Attributes:
        step_id: The send step.
        channel: ``email``, ``wechat`` or ``preferred`` (the workflow resolves it).
        content_id: The content item, or ``None`` when ``selector`` picks it.
        selector: The next-best-item filters, for selector sends.
        idempotency_key: Contact-independent key (the workflow prefixes the contact id).
    """

    step_id: str
    channel: str
    content_id: str | None
    selector: NextBestItem | None
    idempotency_key: str


@dataclass(frozen=True)
class StartTimer(_Command):
    """Start a durable timer; answer with ``TimerFired(timer_id)`` at ``fire_at``."""

    timer_id: str
    fire_at: datetime


@dataclass(frozen=True)
class CancelTimer(_Command):
    """A pending timer no longer matters (the event came, or the enrolment ended)."""

    timer_id: str


@dataclass(frozen=True)
class WaitForEvent(_Command):
    """Forward events matching any of ``matchers`` until ``deadline`` (timer ``timer_id``)."""

    step_id: str
    matchers: tuple[EventMatcher, ...]
    deadline: datetime
    timer_id: str


@dataclass(frozen=True)
class ChangeStage(_Command):
    """Record a stage change for the contact."""

    stage: str
    reason: str


@dataclass(frozen=True)
class HandOff(_Command):
    """Hand the contact to sales; answer with ``HandoffResult``."""

    step_id: str
    idempotency_key: str
    reason: str = ""


@dataclass(frozen=True)
class SetAttribute(_Command):
    """Set a contact attribute."""

    name: str
    value: Any


@dataclass(frozen=True)
class AddTag(_Command):
    """Tag the contact."""

    tag: str


@dataclass(frozen=True)
class Enrol(_Command):
    """Enrol the contact in another journey (subject to that journey's re-entry policy)."""

    journey: str


@dataclass(frozen=True)
class Exit(_Command):
    """The enrolment ended early: exit criteria, an exit step, a failure, a holdout."""

    reason: str


@dataclass(frozen=True)
class Completed(_Command):
    """The enrolment finished: ``goal`` (converted) or ``end`` (ran to its end)."""

    reason: Literal["goal", "end"]


Command: TypeAlias = (
    Deliver
    | StartTimer
    | CancelTimer
    | WaitForEvent
    | ChangeStage
    | HandOff
    | SetAttribute
    | AddTag
    | Enrol
    | Exit
    | Completed
)


# The state machine.


@dataclass
class _Run:
    """Mutable scratch state for one ``step`` call; never escapes it."""

    spec: JourneySpec
    cursor: Cursor
    now: datetime
    facts: Facts
    commands: list[Command] = field(default_factory=list)
    trace: list[Passage] = field(default_factory=list)

    def passed(self, step_id: str, kind: str, outcome: str = "") -> None:
        self.trace.append(Passage(step_id, kind, outcome))

    def mark(self, key: str) -> None:
        last = self.facts.events[-1] if self.facts.events else None
        marks = {m.key: m for m in self.cursor.marks}
        marks[key] = Mark(key, self.now, last)
        self.cursor = replace(self.cursor, marks=tuple(marks[k] for k in sorted(marks)))


@serial.fields(rename={"step_id": "step"})
@dataclass(frozen=True)
class Passage(serial.Record):
    """One step an enrolment went through, and what happened there: the trail that
    analytics and ``stagecoach contact why`` read. Not a command: nothing executes it.

    ``outcome`` by kind: ``branch`` "then -> <target>" or "else -> <target>"; ``split``
    the chosen target; ``send``/``handoff`` "" on entry, then "ok" or "failed: <error>";
    ``wait_for_event`` "" on entry, then "matched <event>" or "timed out" (a ``since``
    wait that counted an event received before it: "matched <event> sent at <when>,
    before the wait"); ``goal`` and ``exit`` the reason."""

    step_id: str
    kind: str
    outcome: str = ""


def step(
    spec: JourneySpec, cursor: Cursor | None, input: Input
) -> tuple[Cursor, tuple[Command, ...]]:
    """Advance one enrolment by one input (``step_traced`` without the trail)."""
    new, commands, _ = step_traced(spec, cursor, input)
    return new, commands


def step_traced(
    spec: JourneySpec, cursor: Cursor | None, input: Input
) -> tuple[Cursor, tuple[Command, ...], tuple[Passage, ...]]:
    """Advance one enrolment by one input, and say which steps it went through.

    Args:
        spec: The journey version the enrolment pinned.
        cursor: The enrolment's cursor; ``None`` only with ``Start``.
        input: What happened.

    Returns:
        The new cursor, the commands to carry out, in order, and the passages (steps
        gone through, with their outcomes). Inputs that do not concern the cursor (stale
        timers, duplicate results, anything after the end) return the cursor unchanged
        and nothing else, so redelivery is harmless.

    Raises:
        JourneyRuntimeError: Misuse (no cursor, a second ``Start``, a naive ``now``, a
            cursor from another journey version).
        StepBudgetExceeded: Instant steps looped past ``STEP_BUDGET``.
    """
    if input.now.tzinfo is None:
        raise JourneyRuntimeError(
            f"journey {spec.name!r}: input time {input.now} is naive",
            fix="pass timezone-aware datetimes (workflow.now() is aware)",
        )
    facts = input.facts if input.facts.now == input.now else replace(input.facts, now=input.now)

    if isinstance(input, Start):
        if cursor is not None:
            raise JourneyRuntimeError(
                f"journey {spec.name!r}: Start given for an existing enrolment",
                fix="pass cursor=None to start; a new enrolment needs a new enrolment number",
            )
        fresh = Cursor(
            journey=spec.name,
            version=spec.version,
            contact_id=input.contact_id,
            enrolment=input.enrolment,
            step_id=spec.start,
        )
        run = _Run(spec, fresh, input.now, facts)
        if ENROLMENT in _anchors(spec):
            run.mark(ENROLMENT_MARK)
        if not _goal_or_exit(run):
            _advance(run, spec.start)
        return run.cursor, tuple(run.commands), tuple(run.trace)

    if cursor is None:
        raise JourneyRuntimeError(
            f"journey {spec.name!r}: {type(input).__name__} without a cursor",
            fix="start the enrolment with Start first",
        )
    if cursor.journey != spec.name or cursor.version != spec.version:
        raise JourneyRuntimeError(
            f"cursor for {cursor.journey!r} version {cursor.version[:12]} given spec"
            f" {spec.name!r} version {spec.version[:12]}",
            fix="run an enrolment on the spec version it pinned",
        )
    if not cursor.active:
        return cursor, (), ()

    run = _Run(spec, cursor, input.now, facts)
    waiting = cursor.waiting
    if isinstance(input, Cancel):
        _finish(run, "exited", f"cancelled: {input.reason}")
    elif isinstance(input, TimerFired):
        if waiting is None or waiting.timer_id != input.timer_id:
            return cursor, (), ()
        run.cursor = replace(run.cursor, waiting=None)  # the timer is spent: nothing to cancel
        if not _goal_or_exit(run):
            current = spec.step(waiting.step_id)
            if waiting.kind == "channel":
                send = _expect(spec, waiting.step_id, SendStep)
                limit = _human(spec.no_channel(send).wait_limit)
                run.passed(send.id, send.kind, f"{NO_CHANNEL_WITHIN} {limit}")
                _finish(run, "exited", NO_CHANNEL)
            elif isinstance(current, WaitForEventStep):
                run.passed(current.id, current.kind, "timed out")
                _left(run, current)
                _advance(run, _target(current.on_timeout))
            else:
                _advance(run, _target(getattr(current, "next", None)))
    elif isinstance(input, EventReceived):
        if not _goal_or_exit(run) and waiting is not None and waiting.kind == "event":
            current = _expect(spec, waiting.step_id, WaitForEventStep)
            if any(m.matches(input.event) for m in current.matchers):
                run.passed(current.id, current.kind, f"matched {input.event.type}")
                _cancel_timer(run)
                _left(run, current)
                _advance(run, _target(current.next))
    elif isinstance(input, ChannelReady):
        if waiting is None or waiting.kind != "channel" or waiting.step_id != input.step_id:
            return cursor, (), ()
        if not _goal_or_exit(run):
            current = _expect(spec, waiting.step_id, SendStep)
            run.passed(current.id, current.kind, CHANNEL_READY)
            _cancel_timer(run)
            # The same send, under the same key: it was never attempted.
            _deliver(run, current, run.cursor.visit_count(current.id) or 1)
    elif isinstance(input, DeliveryResult):
        if waiting is None or waiting.kind != "delivery" or waiting.step_id != input.step_id:
            return cursor, (), ()
        run.cursor = replace(run.cursor, waiting=None)
        if input.no_channel and not input.ok:
            current = _expect(spec, waiting.step_id, SendStep)
            if not _goal_or_exit(run):
                _no_channel(run, current, input.permanent_error or "no usable channel")
            return run.cursor, tuple(run.commands), tuple(run.trace)
        run.passed(input.step_id, "send", "ok" if input.ok else f"failed: {input.permanent_error}")
        if not _goal_or_exit(run):
            current = _expect(spec, waiting.step_id, SendStep)
            if input.ok:
                _advance(run, _target(current.next))
            else:
                _failed(
                    run, current.on_failure, "delivery_failed", current.id, input.permanent_error
                )
    elif isinstance(input, HandoffResult):
        if waiting is None or waiting.kind != "handoff" or waiting.step_id != input.step_id:
            return cursor, (), ()
        run.cursor = replace(run.cursor, waiting=None)
        run.passed(input.step_id, "handoff", "ok" if input.ok else f"failed: {input.error}")
        if not _goal_or_exit(run):
            current = _expect(spec, waiting.step_id, HandOffStep)
            if input.ok:
                _advance(run, _target(current.next))
            else:
                _failed(run, current.on_failure, "handoff_failed", current.id, input.error)
    return run.cursor, tuple(run.commands), tuple(run.trace)


def _expect(spec: JourneySpec, step_id: str, kind: type[_S]) -> _S:
    """The step a cursor waits at, which must be of ``kind`` (a cursor/spec mismatch if not)."""
    found = spec.step(step_id)
    if not isinstance(found, kind):
        raise JourneyRuntimeError(
            f"journey {spec.name!r}: cursor waits at {step_id!r}, a {found.kind} step, for a"
            f" {kind.kind} result",
            fix="run an enrolment on the spec version it pinned",
        )
    return found


def _target(value: str | None) -> str:
    # Compiled specs have every target explicit; None only appears in uncompiled steps.
    if value is None:
        raise JourneyRuntimeError(
            "a step has no target", fix="run compiled specs (compile_journey), not raw steps"
        )
    return value


GOAL_PASSAGE = "$goal"
"""The passage's step id when the journey's goal condition (not a goal step) is met."""
EXIT_PASSAGE = "$exit"
"""The passage's step id when the journey's exit criteria are met."""


def _goal_or_exit(run: _Run) -> bool:
    """Finish the enrolment when the goal or the exit criteria hold; True if it did."""
    if run.spec.goal is not None and run.spec.goal.evaluate(run.facts):
        run.passed(GOAL_PASSAGE, "goal", "goal")
        _finish(run, "completed", "goal")
        return True
    if run.spec.exit_when is not None and run.spec.exit_when.evaluate(run.facts):
        run.passed(EXIT_PASSAGE, "exit", "exit_criteria")
        _finish(run, "exited", "exit_criteria")
        return True
    return False


def _failed(run: _Run, on_failure: str | None, what: str, step_id: str, error: str | None) -> None:
    # Never retried here: the activity already retried what was retryable.
    if on_failure is not None:
        _advance(run, on_failure)
    else:
        _finish(run, "exited", f"{what}: {step_id}: {error or 'unknown error'}")


def _no_channel(run: _Run, step: SendStep, why: str) -> None:
    """A send found no usable channel: do what the journey declared."""
    declared = run.spec.no_channel(step)
    if declared.action == "skip":
        run.passed(step.id, step.kind, f"{SKIPPED_NO_CHANNEL}: {why}")
        _advance(run, _target(step.next))
    elif declared.action == "exit":
        run.passed(step.id, step.kind, f"{EXITED_NO_CHANNEL}: {why}")
        _finish(run, "exited", declared.exit_reason)
    else:
        run.passed(step.id, step.kind, f"{WAITING_FOR_CHANNEL}: {why}")
        _wait(run, "channel", step, run.now + declared.wait_limit, prefix=CHANNEL_TIMER_PREFIX)


def _cancel_timer(run: _Run) -> None:
    waiting = run.cursor.waiting
    if waiting is not None and waiting.timer_id is not None:
        run.commands.append(CancelTimer(waiting.timer_id))
    run.cursor = replace(run.cursor, waiting=None)


def _finish(run: _Run, status: Status, reason: str) -> None:
    _cancel_timer(run)
    run.cursor = replace(run.cursor, status=status, reason=reason, waiting=None)
    if status == "completed":
        run.commands.append(Completed("goal" if reason == "goal" else "end"))
    else:
        run.commands.append(Exit(reason))


def _wait(
    run: _Run, kind: WaitKind, current: Step, fire_at: datetime | None = None, *, prefix: str = ""
) -> str | None:
    timer_id = None
    if fire_at is not None:
        timer_id = f"{prefix}{current.id}:{run.cursor.history}"
        run.commands.append(StartTimer(timer_id, fire_at))
    run.cursor = replace(
        run.cursor,
        waiting=Waiting(kind=kind, step_id=current.id, timer_id=timer_id, deadline=fire_at),
    )
    return timer_id


def _visit(run: _Run, step_id: str) -> int:
    counts = dict(run.cursor.visits)
    counts[step_id] = counts.get(step_id, 0) + 1
    run.cursor = replace(run.cursor, visits=tuple(sorted(counts.items())))
    return counts[step_id]


def _deliver(run: _Run, current: SendStep, visit: int) -> None:
    spec, content = run.spec, current.content
    key = (spec.name, spec.version, current.id, run.cursor.enrolment)
    run.commands.append(
        Deliver(
            step_id=current.id,
            channel=current.channel,
            content_id=content if isinstance(content, str) else None,
            selector=content if isinstance(content, NextBestItem) else None,
            idempotency_key=idempotency_key(*key, visit=visit),
        )
    )
    _wait(run, "delivery", current)


def _anchors(spec: JourneySpec) -> frozenset[str]:
    """What the spec's ``wait_for(..., since=...)`` steps count from."""
    return frozenset(
        s.since for s in spec.steps if isinstance(s, WaitForEventStep) and s.since is not None
    )


def _left(run: _Run, wait: WaitForEventStep) -> None:
    if wait.since is not None:
        run.mark(f"{LEFT_MARK}{wait.id}")


def _early_event(run: _Run, wait: WaitForEventStep) -> EventRecord | None:
    """The first event the contact already sent that ``wait`` counts: one of its events,
    received since its anchor, and after this wait last ended (so one event ends it
    once)."""
    if wait.since is None:
        return None
    marks = {m.key: m for m in run.cursor.marks}
    anchor = marks.get(ENROLMENT_MARK if wait.since == ENROLMENT else wait.since)
    if anchor is None:
        return None  # validation makes the anchor come first; a cursor without it counts none
    events = list(run.facts.events)
    first = max(
        _after(events, anchor.last),
        _after(events, marks[f"{LEFT_MARK}{wait.id}"].last)
        if f"{LEFT_MARK}{wait.id}" in marks
        else 0,
    )
    return next((e for e in events[first:] if any(m.matches(e) for m in wait.matchers)), None)


def _after(events: list[EventRecord], last: EventRecord | None) -> int:
    """Where the events received after ``last`` start in ``events``; all of them when
    ``last`` is gone from the window (every event kept is newer) or there was none."""
    if last is None:
        return 0
    for n in range(len(events) - 1, -1, -1):
        if events[n] == last:
            return n + 1
    return 0


def _advance(run: _Run, target: str) -> None:
    """Run instant steps from ``target`` until one waits or the enrolment ends."""
    spec, now = run.spec, run.now
    anchors = _anchors(spec)
    for _ in range(STEP_BUDGET):
        if target == END:
            _finish(run, "completed", "end")
            return
        if target.startswith(EXIT_PREFIX):
            _finish(run, "exited", target[len(EXIT_PREFIX) :])
            return
        current = spec.step(target)
        run.cursor = replace(run.cursor, step_id=current.id, history=run.cursor.history + 1)
        if not isinstance(current, BranchStep | SplitStep | GoalStep | ExitStep):
            run.passed(current.id, current.kind)
        if current.id in anchors:
            run.mark(current.id)
        key = (spec.name, spec.version, current.id, run.cursor.enrolment)

        if isinstance(current, SendStep):
            _deliver(run, current, _visit(run, current.id))
            return
        if isinstance(current, HandOffStep):
            visit = _visit(run, current.id)
            run.commands.append(
                HandOff(current.id, idempotency_key(*key, visit=visit), current.reason)
            )
            _wait(run, "handoff", current)
            return
        if isinstance(current, WaitStep):
            _wait(run, "timer", current, now + current.duration)
            return
        if isinstance(current, WaitUntilStep):
            zone = str(run.facts.attributes.get(TIME_ZONE_ATTRIBUTE) or "UTC")
            _wait(run, "timer", current, next_time_of_day(now, current.at, zone))
            return
        if isinstance(current, WaitForEventStep):
            early = _early_event(run, current)
            if early is not None:
                when = early.at.isoformat(timespec="seconds")
                run.passed(
                    current.id,
                    current.kind,
                    f"matched {early.type} {EARLY} {when}, before the wait",
                )
                _left(run, current)
                target = _target(current.next)
                continue
            deadline = now + (current.timeout or timedelta(0))
            timer_id = _wait(run, "event", current, deadline) or ""
            run.commands.append(WaitForEvent(current.id, current.matchers, deadline, timer_id))
            return
        if isinstance(current, GoalStep):
            run.passed(current.id, current.kind, "goal")
            _finish(run, "completed", "goal")
            return
        if isinstance(current, ExitStep):
            run.passed(current.id, current.kind, current.reason)
            _finish(run, "exited", current.reason)
            return
        if isinstance(current, BranchStep):
            taken = current.condition.evaluate(run.facts)
            target = _target(current.then if taken else current.else_)
            run.passed(current.id, current.kind, f"{'then' if taken else 'else'} -> {target}")
        elif isinstance(current, SplitStep):
            point = split_point(run.cursor.contact_id, *key)
            target = choose_split_target(current, point)
            run.passed(current.id, current.kind, target)
        elif isinstance(current, SetAttributeStep):
            run.commands.append(SetAttribute(current.name, current.value))
            # Later steps of this same input see the journey's own writes, as they will
            # once the workflow applies them.
            attrs = {**run.facts.attributes, current.name: current.value}
            run.facts = replace(run.facts, attributes=attrs)
            target = _target(current.next)
        elif isinstance(current, AddTagStep):
            run.commands.append(AddTag(current.tag))
            run.facts = replace(run.facts, tags=run.facts.tags | {current.tag})
            target = _target(current.next)
        elif isinstance(current, ChangeStageStep):
            reason = current.reason or f"journey {spec.name} step {current.id}"
            run.commands.append(ChangeStage(current.stage, reason))
            run.facts = replace(run.facts, stage=current.stage)
            target = _target(current.next)
        elif isinstance(current, EnrolStep):
            run.commands.append(Enrol(current.journey))
            target = _target(current.next)
        else:  # pragma: no cover - every step kind is handled above
            raise JourneyRuntimeError(
                f"step {current.id!r} has unknown kind {current.kind!r}",
                fix="upgrade the worker to the Stagecoach version that compiled the spec",
            )
    raise StepBudgetExceeded(
        f"journey {spec.name!r}: ran {STEP_BUDGET} instant steps without a wait (last at"
        f" step {run.cursor.step_id!r})",
        fix="the journey loops without waiting; compile it (validation reports the loop)"
        " and add a wait inside the loop",
    )
