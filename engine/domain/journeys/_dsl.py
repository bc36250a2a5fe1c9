"""The journey DSL: what a marketer writes in ``workflows/journeys/*.py``.

Steps are listed in order; each one flows to the next unless it names a target, so a
linear sequence needs no wiring. Targets are step ids, ``END`` (complete) or
``exit_to("reason")``::

    Journey(
        "welcome",
        entry=stage_entered("lead"),
        goal=event("order.paid"),
        steps=[
            send("welcome-email", channel="email", on_no_channel=NoChannel.skip()),
            wait(days=2),
            wait_for("content.downloaded", timeout=timedelta(days=3), on_timeout="nudge"),
            goal(),
            send("nudge-email", id="nudge"),
        ],
    )
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import time, timedelta
from typing import Any, cast

from stagecoach.engine.domain.conditions import Condition, EventMatcher, PropertyFilter
from stagecoach.engine.domain.conditions import event as _event_condition

from ._steps import (
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
    no_channel_from,
)

DEFAULT_LOCALES: tuple[str, ...] = ("zh-CN", "en")

Where = Mapping[str, Any] | Sequence[PropertyFilter] | None


def _matcher(type_or_matcher: str | EventMatcher, where: Where) -> EventMatcher:
    if isinstance(type_or_matcher, EventMatcher):
        return type_or_matcher
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
    entry: EntryTrigger | Sequence[EntryTrigger]
    steps: Sequence[Step]
    description: str = ""
    reentry: ReEntry = field(default_factory=ReEntry.never)
    exit_when: Condition | None = None
    goal: Condition | None = None
    locales: Sequence[str] = DEFAULT_LOCALES
    on_no_channel: NoChannel | str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "on_no_channel", no_channel_from(self.on_no_channel))
        entry = (self.entry,) if isinstance(self.entry, StageEntered | EventEntry) else self.entry
        object.__setattr__(self, "entry", tuple(entry))
        object.__setattr__(self, "locales", tuple(self.locales))
        object.__setattr__(self, "steps", _with_ids(self.steps))

    @property
    def entries(self) -> tuple[EntryTrigger, ...]:
        """The entry triggers, always as a tuple."""
        # __post_init__ normalised ``entry`` to a tuple.
        return cast(tuple[EntryTrigger, ...], self.entry)


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


def wait(
    duration: timedelta | None = None,
    *,
    days: float = 0,
    hours: float = 0,
    minutes: float = 0,
    id: str = "",
    next: str | None = None,
) -> WaitStep:
    """Wait a fixed time: ``wait(days=3)`` or ``wait(timedelta(hours=36))``."""
    total = (duration or timedelta()) + timedelta(days=days, hours=hours, minutes=minutes)
    return WaitStep(id=id, duration=total, next=next)


def wait_until(at: time, *, id: str = "", next: str | None = None) -> WaitUntilStep:
    """Wait until the next ``at`` (e.g. ``time(9)``) in the contact's time zone."""
    return WaitUntilStep(id=id, at=at, next=next)


def wait_for(
    *events: str | EventMatcher,
    timeout: timedelta,
    where: Where = None,
    on_timeout: str | None = None,
    id: str = "",
    next: str | None = None,
) -> WaitForEventStep:
    """Wait for any of ``events``; after ``timeout`` take ``on_timeout``.

    Args:
        *events: Event types or ``EventMatcher`` objects; any one ends the wait.
        timeout: Required: how long to wait.
        where: Property filters for event types given as strings.
        on_timeout: Target when the timeout passes (default: the next step in order).
        id: Stable step id; derived from the first event type when empty.
        next: Target when a matching event arrives (default: the next step in order).
    """
    return WaitForEventStep(
        id=id,
        matchers=tuple(_matcher(e, where) for e in events),
        timeout=timeout,
        next=next,
        on_timeout=on_timeout,
    )


def branch(
    condition: Condition, *, then: str | None = None, else_: str | None = None, id: str = ""
) -> BranchStep:
    """Go to ``then`` if ``condition`` holds, else to ``else_`` (either default: next)."""
    return BranchStep(id=id, condition=condition, then=then, else_=else_)


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
