"""The journey DSL: what a marketer writes in a project's ``journeys/*.py``.

Steps are listed in order; each one flows to the next unless it names a target, so a
linear sequence needs no wiring. Targets are step ids, ``END`` (complete) or
``exit_to("reason")``::

    Journey(
        "welcome",
        entry=stage_entered("lead"),
        goal=event("order.paid"),
        steps=[
            send("welcome-email", channel="email", on_no_channel=NoChannel.skip()),
            wait(timedelta(days=2)),
            wait_for("content.downloaded", timeout=timedelta(days=3), on_timeout="nudge"),
            goal(),
            send("nudge-email", id="nudge"),
        ],
    )

Two forms exist only here, before compilation, and compile into the spec's own steps
(so a journey written either way has the same spec and version):

- ``branch(cond, then=[...], else_=[...])`` nests each arm's steps; ``Journey`` lays them
  out flat, then-arm first, each arm ending where the branch block ends (``BranchBlock``).
- ``wait(until=since_enrolment(timedelta(days=14)))`` waits until a time counted from
  enrolment, and ``wait_for(..., timeout=since_enrolment(...))`` times out then; the
  compiler turns them into a plain ``wait`` of the time left and a plain timeout
  (``AnchoredWaitStep``, ``AnchoredEventWaitStep``, resolved in ``_anchors``).

Durations are ``timedelta`` values everywhere (``wait``, ``wait_for`` timeouts, event
windows, re-entry cool-downs, anchors); ``wait(days=2)`` is an older shorthand that
still works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import time, timedelta
from typing import Any, ClassVar, cast, overload

from stagecoach.engine.domain.conditions import Condition, EventMatcher, PropertyFilter
from stagecoach.engine.domain.conditions import event as _event_condition
from stagecoach.engine.domain.segments import SegmentTransition

from ._steps import (
    END,
    EXIT_PREFIX,
    AddTagStep,
    BranchStep,
    ChangeStageStep,
    Channel,
    EnrolStep,
    EntryTrigger,
    EventEntry,
    ExitStep,
    GoalStep,
    HandOffStep,
    NextBestItem,
    NoChannel,
    ReEntry,
    SendStep,
    SetAttributeStep,
    SplitBranch,
    SplitStep,
    StageEntered,
    Step,
    WaitForEventStep,
    WaitStep,
    WaitUntilStep,
    _human,
    no_channel_from,
)

DEFAULT_LOCALES: tuple[str, ...] = ("zh-CN", "en")

Where = Mapping[str, Any] | Sequence[PropertyFilter] | None


def _matcher(type_or_matcher: str | EventMatcher | SegmentTransition, where: Where) -> EventMatcher:
    if isinstance(type_or_matcher, EventMatcher):
        return type_or_matcher
    if isinstance(type_or_matcher, SegmentTransition):
        # wait_for(segment_entered("x")): the membership change journeys hear as an event.
        return type_or_matcher.matcher
    # Reuse the condition builder so "where" shorthand means exactly what it means there.
    return _event_condition(type_or_matcher, where=where).matcher


@dataclass(frozen=True)
class Journey:
    """A marketer's journey definition; compile it with ``compile_journey``.

    Attributes:
        name: Unique journey name (also what ``enrol`` refers to).
        entry: One trigger or several (any of them enrols the contact).
        steps: Steps in order; the first one is where an enrolment starts.
        description: One or two sentences for people reading the catalogue.
        reentry: Whether a contact may enter again (default: never).
        exit_when: Global exit criteria, checked on every input (event, timer, result).
        goal: Conversion condition, checked like ``exit_when``; meeting it completes the
            journey with reason ``goal``.
        locales: Locales the journey's content must exist in.
        on_no_channel: What its sends do when the contact has no usable channel yet:
            ``NoChannel.wait(days=30)`` (``None``, the default), ``NoChannel.skip()`` or
            ``NoChannel.exit("reason")``; a send's own declaration wins.
    """

    name: str
    entry: EntryTrigger | SegmentTransition | Sequence[EntryTrigger | SegmentTransition]
    steps: Sequence[Step]
    description: str = ""
    reentry: ReEntry = field(default_factory=ReEntry.never)
    exit_when: Condition | None = None
    goal: Condition | None = None
    locales: Sequence[str] = DEFAULT_LOCALES
    on_no_channel: NoChannel | str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "on_no_channel", no_channel_from(self.on_no_channel))
        single = isinstance(self.entry, StageEntered | EventEntry | SegmentTransition)
        entry = (self.entry,) if single else self.entry
        object.__setattr__(
            self,
            "entry",
            tuple(
                EventEntry(e.matcher) if isinstance(e, SegmentTransition) else e
                for e in cast(Sequence[EntryTrigger | SegmentTransition], entry)
            ),
        )
        object.__setattr__(self, "locales", tuple(self.locales))
        object.__setattr__(self, "steps", _laid_out(self.name, self.steps))

    @property
    def entries(self) -> tuple[EntryTrigger, ...]:
        """The entry triggers, always as a tuple."""
        # __post_init__ normalised ``entry`` to a tuple.
        return cast(tuple[EntryTrigger, ...], self.entry)


@dataclass(frozen=True)
class SinceEnrolment:
    """A moment counted from when the contact enrolled: ``since_enrolment(timedelta(days=14))``.

    Attributes:
        offset: How long after enrolment.
    """

    offset: timedelta


@dataclass(frozen=True, kw_only=True)
class AnchoredWaitStep(Step):
    """``wait(until=since_enrolment(...))`` before compilation.

    Never part of a spec: ``compile_journey`` replaces it by a ``WaitStep`` of the time
    left between the moment the contact reaches it and the anchor.
    """

    until: SinceEnrolment
    next: str | None = None
    kind: ClassVar[str] = "wait"
    links: ClassVar[tuple[str, ...]] = ("next",)
    is_wait: ClassVar[bool] = True

    def derived_id(self) -> str:
        return f"wait-to-{_human(self.until.offset)}"

    def summary(self) -> str:
        return f"wait until {_human(self.until.offset)} after enrolment"


@dataclass(frozen=True, kw_only=True)
class AnchoredEventWaitStep(Step):
    """``wait_for(..., timeout=since_enrolment(...))`` before compilation.

    Never part of a spec: ``compile_journey`` replaces it by a ``WaitForEventStep`` whose
    timeout is the time left until the anchor. Its id is derived as a ``wait_for``'s is.
    """

    matchers: tuple[EventMatcher, ...]
    until: SinceEnrolment
    next: str | None = None
    on_timeout: str | None = None
    since: str | None = None
    kind: ClassVar[str] = "wait_for_event"
    links: ClassVar[tuple[str, ...]] = ("next", "on_timeout")
    is_wait: ClassVar[bool] = True

    def derived_id(self) -> str:
        return f"wait-for-{self.matchers[0].type}" if self.matchers else "wait-for-event"

    def summary(self) -> str:
        return f"wait for {' or '.join(m.type for m in self.matchers)}"


Arm = str | Step | Sequence[Step] | None
"""A branch arm as written: a target step id, one step, a list of steps, or ``None``."""


@dataclass(frozen=True, kw_only=True)
class BranchBlock(Step):
    """``branch(cond, then=[...], else_=[...])`` before ``Journey`` lays it out.

    Never part of a spec: ``Journey`` replaces it by a ``BranchStep`` followed by the
    then-arm's steps and the else-arm's steps; a ``None`` or empty arm, and the last step
    of each arm, go on to whatever follows the block.
    """

    condition: Condition
    then: str | tuple[Step, ...] | None = None
    else_: str | tuple[Step, ...] | None = None
    kind: ClassVar[str] = "branch"


class _At:
    """A target known only once the steps are laid out and named: the step that will
    stand at ``position``, or a fixed ``target``."""

    __slots__ = ("position", "target")

    def __init__(self, *, position: int | None = None, target: str = END) -> None:
        self.position = position
        self.target = target


def _laid_out(journey: str, steps: Sequence[Step]) -> tuple[Step, ...]:
    """``steps`` with nested branch arms laid out flat, each step named (``_with_ids``).

    The layout is what a marketer writes by hand in the flat form: the branch, the
    then-arm, the else-arm, then what follows; so both forms compile to the same spec.
    """
    flat: list[Step] = []
    branches: list[tuple[int, str | _At, str | _At]] = []
    tails: list[tuple[int, _At]] = []

    def lay(sequence: Sequence[Step], after: _At, where: str) -> None:
        for n, s in enumerate(sequence):
            if not isinstance(s, Step):
                raise TypeError(
                    f"journey {journey!r}: {where}[{n}] is {s!r}, not a step; list steps such"
                    " as send(...), wait(...) or branch(...)"
                )
            last = n == len(sequence) - 1
            if not isinstance(s, BranchBlock):
                if last and where != "steps":
                    tails.append((len(flat), after))
                flat.append(s)
                continue
            here = len(flat)
            flat.append(BranchStep(id=s.id, condition=s.condition))
            join = after if last else _At()
            then = arm(s.then, join, f"{where}[{n}].then")
            else_ = arm(s.else_, join, f"{where}[{n}].else_")
            branches.append((here, then, else_))
            if not last:
                join.position = len(flat)

    def arm(value: str | tuple[Step, ...] | None, after: _At, where: str) -> str | _At:
        if isinstance(value, str):
            return value
        if not value:
            return after
        start = _At(position=len(flat))
        lay(value, after, where)
        return start

    lay(steps, _At(), "steps")
    named = list(_with_ids(flat))

    def target(ref: str | _At) -> str:
        if isinstance(ref, str):
            return ref
        return ref.target if ref.position is None else named[ref.position].id

    for position, ref in tails:
        named[position] = named[position].resolved(target(ref))
    for position, then, else_ in branches:
        laid = cast(BranchStep, named[position])
        named[position] = replace(laid, then=target(then), else_=target(else_))
    return tuple(named)


def _with_ids(steps: Sequence[Step]) -> tuple[Step, ...]:
    """Give every step without an id one derived from its content (not its position).

    Content-derived ids survive inserting a step elsewhere; repeats get ``-2``, ``-3``.
    """
    taken = {s.id for s in steps if s.id}
    seen: dict[str, int] = {}
    out: list[Step] = []
    for s in steps:
        if s.id:
            out.append(s)
            continue
        base = s.derived_id()
        seen[base] = seen.get(base, 0) + 1
        candidate = base if seen[base] == 1 else f"{base}-{seen[base]}"
        while candidate in taken:
            seen[base] += 1
            candidate = f"{base}-{seen[base]}"
        taken.add(candidate)
        out.append(replace(s, id=candidate))
    return tuple(out)


# Entry.


def stage_entered(stage: str) -> StageEntered:
    """Enrol contacts when they enter ``stage``."""
    return StageEntered(stage)


def on_event(type: str | EventMatcher, *, where: Where = None) -> EventEntry:
    """Enrol contacts when they do something: ``on_event("page.viewed", where={...})``."""
    return EventEntry(_matcher(type, where))


# Steps.


def send(
    content: str | NextBestItem,
    *,
    channel: Channel = "preferred",
    id: str = "",
    next: str | None = None,
    on_failure: str | None = None,
    on_no_channel: NoChannel | str | None = None,
) -> SendStep:
    """Send a content item (id or ``next_best(...)``) over a channel.

    Args:
        content: Content id in the library, or a ``NextBestItem`` selector.
        channel: ``"email"``, ``"wechat"`` or ``"preferred"`` (default).
        id: Stable step id; derived from the content id when empty.
        next: Where to go once delivered (default: the next step in order).
        on_failure: Where to go on a permanent delivery failure (default: exit).
        on_no_channel: When the contact has no usable channel yet:
            ``NoChannel.wait(days=...)``, ``NoChannel.skip()`` or ``NoChannel.exit(...)``
            (or ``"wait"``, ``"skip"``, ``"exit"``); default: the journey's declaration,
            else wait up to 30 days.

    Raises:
        TypeError: ``on_no_channel`` is neither a ``NoChannel`` nor text.
    """
    return SendStep(
        id=id,
        content=content,
        channel=channel,
        next=next,
        on_failure=on_failure,
        on_no_channel=no_channel_from(on_no_channel),
    )


def next_best(
    *,
    stage: str | None = None,
    kinds: Sequence[str] = (),
    tags: Sequence[str] = (),
    exclude_consumed: bool = True,
) -> NextBestItem:
    """Selector for ``send``: the library's next best item matching these filters."""
    return NextBestItem(stage, tuple(kinds), tuple(tags), exclude_consumed)


def _duration(value: object, where: str, example: str) -> timedelta:
    """``value`` when it is a ``timedelta``; a ``TypeError`` saying how to write one else."""
    if isinstance(value, timedelta):
        return value
    raise TypeError(f"{where}: {value!r} is not a duration; write {example}")


def _units(where: str, example: str, days: float, hours: float, minutes: float) -> timedelta:
    try:
        return timedelta(days=days, hours=hours, minutes=minutes)
    except TypeError:
        raise TypeError(
            f"{where}: days={days!r}, hours={hours!r}, minutes={minutes!r} must be numbers;"
            f" write {example}"
        ) from None


def since_enrolment(
    duration: timedelta | None = None, *, days: float = 0, hours: float = 0, minutes: float = 0
) -> SinceEnrolment:
    """A moment counted from enrolment, for ``wait(until=...)``:
    ``since_enrolment(timedelta(days=14))`` is "day 14 of the journey".

    Raises:
        TypeError: ``duration`` is not a ``timedelta`` or a unit is not a number.
    """
    example = "since_enrolment(timedelta(days=14))"
    base = timedelta() if duration is None else _duration(duration, "since_enrolment", example)
    return SinceEnrolment(base + _units("since_enrolment", example, days, hours, minutes))


@overload
def wait(
    duration: timedelta | None = None,
    *,
    days: float = 0,
    hours: float = 0,
    minutes: float = 0,
    until: None = None,
    id: str = "",
    next: str | None = None,
) -> WaitStep: ...


@overload
def wait(*, until: SinceEnrolment, id: str = "", next: str | None = None) -> AnchoredWaitStep: ...


def wait(
    duration: timedelta | None = None,
    *,
    days: float = 0,
    hours: float = 0,
    minutes: float = 0,
    until: SinceEnrolment | None = None,
    id: str = "",
    next: str | None = None,
) -> WaitStep | AnchoredWaitStep:
    """Wait a fixed time after the previous step, ``wait(timedelta(days=3))``, or until a
    moment counted from enrolment, ``wait(until=since_enrolment(timedelta(days=14)))``.

    ``days=``/``hours=``/``minutes=`` are the older spelling of the duration.

    Raises:
        TypeError: The duration is not a ``timedelta``, ``until`` is not a
            ``since_enrolment(...)``, or both a duration and ``until`` are given.
    """
    example = "wait(timedelta(days=3))"
    if until is not None:
        if not isinstance(until, SinceEnrolment):
            raise TypeError(
                f"wait: until={until!r} is not a moment since enrolment; write"
                " until=since_enrolment(timedelta(days=14)), or wait(timedelta(days=14)) to"
                " wait after the previous step"
            )
        if duration is not None or days or hours or minutes:
            raise TypeError(
                "wait: give a duration (after the previous step) or until=since_enrolment(...)"
                " (after enrolment), not both"
            )
        return AnchoredWaitStep(id=id, until=until, next=next)
    base = timedelta() if duration is None else _duration(duration, "wait", example)
    return WaitStep(id=id, duration=base + _units("wait", example, days, hours, minutes), next=next)


def wait_until(at: time, *, id: str = "", next: str | None = None) -> WaitUntilStep:
    """Wait until the next ``at`` (e.g. ``time(9)``) in the contact's time zone."""
    return WaitUntilStep(id=id, at=at, next=next)


@overload
def wait_for(
    *events: str | EventMatcher | SegmentTransition,
    timeout: timedelta,
    where: Where = None,
    on_timeout: str | None = None,
    since: str | None = None,
    id: str = "",
    next: str | None = None,
) -> WaitForEventStep: ...


@overload
def wait_for(
    *events: str | EventMatcher | SegmentTransition,
    timeout: SinceEnrolment,
    where: Where = None,
    on_timeout: str | None = None,
    since: str | None = None,
    id: str = "",
    next: str | None = None,
) -> AnchoredEventWaitStep: ...


def wait_for(
    *events: str | EventMatcher | SegmentTransition,
    timeout: timedelta | SinceEnrolment,
    where: Where = None,
    on_timeout: str | None = None,
    since: str | None = None,
    id: str = "",
    next: str | None = None,
) -> WaitForEventStep | AnchoredEventWaitStep:
    """Wait for any of ``events``; after ``timeout`` take ``on_timeout``.

    Args:
        *events: Event types or ``EventMatcher`` objects; any one ends the wait.
        timeout: Required: how long to wait, a ``timedelta``; or until when, counted from
            enrolment: ``since_enrolment(timedelta(days=30))``.
        where: Property filters for event types given as strings.
        on_timeout: Target when the timeout passes (default: the next step in order).
        since: Also count a matching event the contact already sent: ``"enrolment"``
            (since the contact enrolled) or an earlier step's id (since the contact
            reached that step). Default: only events that arrive while the wait runs.
        id: Stable step id; derived from the first event type when empty.
        next: Target when a matching event arrives (default: the next step in order).

    Raises:
        TypeError: ``timeout`` is neither a ``timedelta`` nor a ``since_enrolment(...)``,
            or ``since`` is not text.
    """
    matchers = tuple(_matcher(e, where) for e in events)
    if since is not None and (not isinstance(since, str) or not since.strip()):
        raise TypeError(
            f"wait_for: since={since!r} is not a point to count from; write"
            " since='enrolment' or since='<an earlier step id>', or leave it out to count"
            " only events that arrive while the wait runs"
        )
    if isinstance(timeout, SinceEnrolment):
        return AnchoredEventWaitStep(
            id=id,
            matchers=matchers,
            until=timeout,
            next=next,
            on_timeout=on_timeout,
            since=since,
        )
    # None is left for validation to report with the journey and the step.
    if timeout is not None:
        _duration(
            timeout,
            "wait_for: timeout",
            "timeout=timedelta(days=7), or timeout=since_enrolment(timedelta(days=30))",
        )
    return WaitForEventStep(
        id=id, matchers=matchers, timeout=timeout, next=next, on_timeout=on_timeout, since=since
    )


def _arm(value: object, name: str) -> str | tuple[Step, ...] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Step):
        return (value,)
    if isinstance(value, Sequence):
        for n, item in enumerate(value):
            if not isinstance(item, Step):
                raise TypeError(
                    f"branch: {name}[{n}] is {item!r}, not a step; list steps such as"
                    f" send(...), or give a step id: {name}='step-id'"
                )
        return tuple(value)
    raise TypeError(
        f"branch: {name}={value!r} is neither a step id nor steps; write {name}='step-id'"
        f" or {name}=[send(...), ...]"
    )


@overload
def branch(
    condition: Condition,
    *,
    then: str | None = None,
    else_: str | None = None,
    id: str = "",
) -> BranchStep: ...


@overload
def branch(
    condition: Condition, *, then: Arm = None, else_: Arm = None, id: str = ""
) -> BranchStep | BranchBlock: ...


def branch(
    condition: Condition, *, then: Arm = None, else_: Arm = None, id: str = ""
) -> BranchStep | BranchBlock:
    """If ``condition`` holds for the contact take ``then``, else ``else_``.

    Each arm is a step id to jump to, or the arm's own steps, nested::

        branch(stage_in("suspect"), then=[change_stage("prospect")], else_=[...])

    Nested arms run in order and then carry on after the branch, as an ``if``/``else``
    does; an arm left out (``None``) or empty goes straight there. Without nested arms,
    ``None`` is the next step in order, which is the same place.

    Raises:
        TypeError: An arm is neither a step id, a step nor a list of steps.
    """
    then_arm, else_arm = _arm(then, "then"), _arm(else_, "else_")
    if isinstance(then_arm, tuple) or isinstance(else_arm, tuple):
        return BranchBlock(id=id, condition=condition, then=then_arm, else_=else_arm)
    return BranchStep(id=id, condition=condition, then=then_arm, else_=else_arm)


def split(
    branches: Mapping[str | None, float] | Sequence[SplitBranch], *, id: str = ""
) -> SplitStep:
    """Random split by weight: ``split({"variant-a": 50, "variant-b": 50})``.

    A ``None`` key is the next step in order. Assignment is deterministic per contact.
    """
    arms = (
        tuple(SplitBranch(float(w), t) for t, w in branches.items())
        if isinstance(branches, Mapping)
        else tuple(branches)
    )
    return SplitStep(id=id, branches=arms)


def holdout(percent: float, *, id: str = "holdout", reason: str = "holdout") -> SplitStep:
    """Keep ``percent`` of contacts out (they exit with ``reason``); the rest continue."""
    return SplitStep(
        id=id,
        branches=(
            SplitBranch(percent, f"{EXIT_PREFIX}{reason}", "holdout"),
            SplitBranch(100.0 - percent, None, "treatment"),
        ),
    )


def set_attribute(
    name: str, value: Any, *, id: str = "", next: str | None = None
) -> SetAttributeStep:
    """Set contact attribute ``name`` to a JSON value."""
    return SetAttributeStep(id=id, name=name, value=value, next=next)


def add_tag(tag: str, *, id: str = "", next: str | None = None) -> AddTagStep:
    """Tag the contact."""
    return AddTagStep(id=id, tag=tag, next=next)


def change_stage(
    stage: str, *, reason: str = "", id: str = "", next: str | None = None
) -> ChangeStageStep:
    """Move the contact to pipeline ``stage``, recording ``reason``."""
    return ChangeStageStep(id=id, stage=stage, reason=reason, next=next)


def hand_off(
    *, reason: str = "", id: str = "", next: str | None = None, on_failure: str | None = None
) -> HandOffStep:
    """Hand the contact to sales; ``on_failure`` (default: exit) on a permanent failure."""
    return HandOffStep(id=id, reason=reason, next=next, on_failure=on_failure)


def enrol(journey: str, *, id: str = "", next: str | None = None) -> EnrolStep:
    """Enrol the contact in another journey by name, then carry on."""
    return EnrolStep(id=id, journey=journey, next=next)


def goal(*, id: str = "goal") -> GoalStep:
    """Terminal step: the contact converted (completes with reason ``goal``)."""
    return GoalStep(id=id)


def exit_journey(reason: str, *, id: str = "") -> ExitStep:
    """Terminal step: leave the journey with ``reason``."""
    return ExitStep(id=id, reason=reason)
