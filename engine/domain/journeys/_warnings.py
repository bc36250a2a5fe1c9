"""Validation warnings: what a journey may legally do but its author probably did not mean.

A problem stops a project (``stagecoach validate`` exits 1, nothing is published); a
warning is reported with the journey, the step and a fix, and stops nothing unless the
team asks for it (``stagecoach validate --strict``). Each rule reads compiled specs only
and claims nothing it cannot show from them: where a rule cannot tell, it stays quiet.

- **Overlap** (:func:`overlap_warnings`): one trigger (a stage entered, or an event:
  the same type, with property filters one event can meet both of) enters one journey
  and enters or moves on another, and each then sends within the window of it to a
  contact who does nothing more. That contact gets both journeys' messages within
  days: two NPS surveys after one order.
- **A wait the journey's own criteria pre-empt** (:func:`shadowed_waits`): a ``wait_for``
  whose awaited event meets the goal or the exit criteria on its own. The interpreter
  checks goal and exit criteria first on every event, so the enrolment ends as the event
  arrives and the wait's event path never runs.
- **A long wait with no way out** (:func:`long_waits`): a journey with neither a goal nor
  exit criteria that can keep a contact for :data:`LONG_WAIT` or more: nothing lets a
  contact who converted or lost interest out early.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from numbers import Real
from typing import Any

from stagecoach.engine.domain.conditions import (
    AllOf,
    Always,
    AnyOf,
    Condition,
    EventMatcher,
    EventOccurred,
    PropertyFilter,
    StageIn,
)

from ._errors import Problem
from ._spec import JourneySpec
from ._steps import (
    END,
    EXIT_PREFIX,
    EntryTrigger,
    EventEntry,
    ExitStep,
    GoalStep,
    SendStep,
    SplitStep,
    StageEntered,
    Step,
    WaitForEventStep,
    WaitStep,
    WaitUntilStep,
)
from ._tools import describe_condition, describe_matcher, human_duration

OVERLAP_WINDOW = timedelta(days=7)
"""How close to a shared trigger two journeys' sends count as overlapping, unless the
project declares its own (``Definitions(overlap_window=...)``): a week, the span in
which a contact still connects two messages to the same moment."""

LONG_WAIT = timedelta(days=30)
"""How long a journey without a goal or exit criteria may keep a contact before it is
warned about: a month."""

TIME_OF_DAY_WAIT = timedelta(days=1)
"""The longest a ``wait_until`` holds: the next occurrence of a time of day."""


# Conditions an event (or a stage) meets on its own.


def _meets(condition: Condition, matcher: EventMatcher) -> bool:
    """True when any event matching ``matcher`` makes ``condition`` hold, whatever else
    the contact did or is.

    Only what is certain counts: an event condition of the same type, counted once,
    with no window (a late event may fall outside one) and no filter the matcher does
    not also require; any-of with one such part; all-of with only such parts.
    """
    if isinstance(condition, EventOccurred):
        return (
            condition.count == 1
            and condition.within is None
            and condition.matcher.type == matcher.type
            and all(f in matcher.where for f in condition.matcher.where)
        )
    if isinstance(condition, AnyOf):
        return any(_meets(c, matcher) for c in condition.conditions)
    if isinstance(condition, AllOf):
        return bool(condition.conditions) and all(_meets(c, matcher) for c in condition.conditions)
    return isinstance(condition, Always)


def _holds_in(condition: Condition, stage: str) -> bool:
    """True when being in ``stage`` makes ``condition`` hold on its own."""
    if isinstance(condition, StageIn):
        return stage in condition.stages
    if isinstance(condition, AnyOf):
        return any(_holds_in(c, stage) for c in condition.conditions)
    if isinstance(condition, AllOf):
        return bool(condition.conditions) and all(_holds_in(c, stage) for c in condition.conditions)
    return isinstance(condition, Always)


def _ends_at_entry(spec: JourneySpec, trigger: EntryTrigger) -> bool:
    """True when entering on ``trigger`` meets the goal or exit criteria at once, so the
    enrolment ends before its first step."""
    for condition in (spec.goal, spec.exit_when):
        if condition is None:
            continue
        if isinstance(trigger, EventEntry) and _meets(condition, trigger.matcher):
            return True
        if isinstance(trigger, StageEntered) and _holds_in(condition, trigger.stage):
            return True
    return False


# Property filters one event can meet together.


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _one_path_satisfiable(filters: Sequence[PropertyFilter]) -> bool:
    """False only when no value of one property meets all of ``filters`` together.

    Decides the cases filters are written with: different ``eq`` values, ``eq`` against
    ``ne``/``in``/``not_in``, disjoint ``in`` lists, a property required and declared
    missing, and numeric bounds that leave no number (``score <= 8`` and ``score >= 9``).
    Anything else (``contains``, text ranges) is taken as satisfiable.
    """
    # A missing property meets only "exists False", "ne" and "not_in".
    missing = any(f.op == "exists" and not f.value for f in filters)
    present = any(
        (f.op == "exists" and f.value) or f.op not in ("exists", "ne", "not_in") for f in filters
    )
    if missing and present:
        return False
    equals = [f.value for f in filters if f.op == "eq"]
    if any(v != equals[0] for v in equals[1:]):
        return False
    allowed: list[Any] | None = None
    for f in filters:
        if f.op == "in":
            values = list(f.value)
            allowed = values if allowed is None else [v for v in allowed if v in values]
    candidates = equals[:1] if equals else allowed
    if candidates is not None:
        for f in filters:
            if f.op == "ne":
                candidates = [v for v in candidates if v != f.value]
            elif f.op == "not_in":
                candidates = [v for v in candidates if v not in f.value]
            elif f.op == "in":
                candidates = [v for v in candidates if v in f.value]
        if not candidates:
            return False
    low: tuple[Any, bool] | None = None  # (bound, inclusive)
    high: tuple[Any, bool] | None = None
    for f in filters:
        if f.op not in ("gt", "gte", "lt", "lte") or not _number(f.value):
            continue
        if f.op in ("gt", "gte"):
            bound = (f.value, f.op == "gte")
            if low is None or bound[0] > low[0] or (bound[0] == low[0] and not bound[1]):
                low = bound
        else:
            bound = (f.value, f.op == "lte")
            if high is None or bound[0] < high[0] or (bound[0] == high[0] and not bound[1]):
                high = bound
    if (
        low is not None
        and high is not None
        and (low[0] > high[0] or (low[0] == high[0] and not (low[1] and high[1])))
    ):
        return False
    if candidates is not None and (low is not None or high is not None):
        numbers = [v for v in candidates if _number(v)]
        if numbers and len(numbers) == len(candidates):
            inside = [
                v
                for v in numbers
                if (low is None or v > low[0] or (low[1] and v == low[0]))
                and (high is None or v < high[0] or (high[1] and v == high[0]))
            ]
            if not inside:
                return False
    return True


def _can_both_match(a: EventMatcher, b: EventMatcher) -> bool:
    """True unless no single event can match both ``a`` and ``b``."""
    if a.type != b.type:
        return False
    by_path: dict[str, list[PropertyFilter]] = {}
    for f in (*a.where, *b.where):
        by_path.setdefault(f.path, []).append(f)
    return all(_one_path_satisfiable(filters) for filters in by_path.values())


def _trigger(trigger: EntryTrigger) -> str:
    if isinstance(trigger, StageEntered):
        return f"stage {trigger.stage}"
    return f"event {describe_matcher(trigger.matcher)}"


# Walking a spec's steps.


def _is_step(target: str | None) -> bool:
    return target is not None and target != END and not target.startswith(EXIT_PREFIX)


def _ways(step: Step) -> Iterator[str]:
    """Where ``step`` can lead: each arm of a branch, each split arm with a weight,
    each outcome of a send or hand-off."""
    if isinstance(step, SplitStep):
        yield from (a.target for a in step.branches if a.target is not None and a.weight > 0)
    else:
        yield from (target for _, target in step.edges())


def _idle(step: Step) -> Iterator[tuple[str, timedelta]]:
    """Each way on from ``step`` for a contact who does nothing more, and the most time
    it can take: a ``wait_for`` times out, a ``wait_until`` takes up to a day."""
    if isinstance(step, WaitStep):
        if step.next is not None:
            yield step.next, step.duration
    elif isinstance(step, WaitUntilStep):
        if step.next is not None:
            yield step.next, TIME_OF_DAY_WAIT
    elif isinstance(step, WaitForEventStep):
        if step.on_timeout is not None:
            yield step.on_timeout, step.timeout or timedelta(0)
    else:
        yield from ((target, timedelta(0)) for target in _ways(step))


def _sure_send(spec: JourneySpec, start: str) -> tuple[timedelta, SendStep] | None:
    """The send a contact at step ``start`` gets for sure if they do nothing more, and the
    most time it can take to come; ``None`` when some way ends, or loops, without one.

    Every arm of a branch counts (the contact's facts may take any), and the one that
    takes longest sets the time; a send's delivery and its channel wait count no time.
    """
    known: dict[str, tuple[timedelta, SendStep] | None] = {}

    def visit(sid: str, path: frozenset[str]) -> tuple[timedelta, SendStep] | None:
        if not _is_step(sid) or sid in path:
            return None  # the journey ends, or loops, without a send
        if sid in known:
            return known[sid]
        step = spec.step(sid)
        sure: tuple[timedelta, SendStep] | None = None
        if isinstance(step, SendStep):
            sure = (timedelta(0), step)
        else:
            for target, delay in _idle(step):
                after = visit(target, path | {sid})
                if after is None:
                    sure = None
                    break
                if sure is None or after[0] + delay > sure[0]:
                    sure = (after[0] + delay, after[1])
        known[sid] = sure
        return sure

    return visit(start, frozenset())


def _longest(step: Step) -> Iterator[tuple[str, timedelta]]:
    """Each way on from ``step`` and the most time it can take (sends, hand-offs and
    their channel waits aside: no message goes out while they hold a contact)."""
    if isinstance(step, WaitStep):
        if step.next is not None:
            yield step.next, step.duration
    elif isinstance(step, WaitUntilStep):
        if step.next is not None:
            yield step.next, TIME_OF_DAY_WAIT
    elif isinstance(step, WaitForEventStep):
        # The event may come a moment before the timeout.
        span = step.timeout or timedelta(0)
        for target in (step.next, step.on_timeout):
            if target is not None:
                yield target, span
    else:
        yield from ((target, timedelta(0)) for target in _ways(step))


def _span(step: Step) -> timedelta | None:
    """How long a wait step can hold a contact; ``None`` for other steps."""
    if isinstance(step, WaitStep):
        return step.duration
    if isinstance(step, WaitUntilStep):
        return TIME_OF_DAY_WAIT
    if isinstance(step, WaitForEventStep):
        return step.timeout or timedelta(0)
    return None


# The rules.


@dataclass(frozen=True)
class _Moment:
    """A trigger that makes a journey send: its entry, or an event one of its waits
    goes on with; ``at`` is how soon after it the journey can send ``send``."""

    trigger: EntryTrigger
    at: timedelta
    send: SendStep
    wait: str = ""
    """The ``wait_for`` step the event ends, or ``""`` for the journey's entry."""

    def how(self) -> str:
        return "its entry" if not self.wait else f"its step {self.wait!r} waits for it"


def _moments(spec: JourneySpec, window: timedelta) -> list[_Moment]:
    """Each trigger after which ``spec`` surely sends within ``window`` to a contact who
    does nothing more: its entries (unless the trigger ends the enrolment at once), then
    the events its waits go on with (unless the event ends the enrolment first)."""
    found: list[_Moment] = []
    first = _sure_send(spec, spec.start)
    if first is not None and first[0] <= window:
        for trigger in spec.entry:
            if not _ends_at_entry(spec, trigger):
                found.append(_Moment(trigger, first[0], first[1]))
    for step in spec.steps:
        if not isinstance(step, WaitForEventStep) or not _is_step(step.next):
            continue
        after = _sure_send(spec, step.next or END)
        if after is None or after[0] > window:
            continue
        for matcher in step.matchers:
            ends = any(c is not None and _meets(c, matcher) for c in (spec.goal, spec.exit_when))
            if not ends:
                found.append(_Moment(EventEntry(matcher), after[0], after[1], step.id))
    return found


def _together(a: EntryTrigger, b: EntryTrigger) -> bool:
    """True when one moment can fire both triggers."""
    if isinstance(a, StageEntered) and isinstance(b, StageEntered):
        return a.stage == b.stage
    if isinstance(a, EventEntry) and isinstance(b, EventEntry):
        return _can_both_match(a.matcher, b.matcher)
    return False


def overlap_warnings(
    specs: Sequence[JourneySpec],
    window: timedelta = OVERLAP_WINDOW,
    intended: Collection[frozenset[str]] = (),
) -> list[Problem]:
    """Pairs of journeys one trigger makes both send within ``window``.

    "Send" means surely, to a contact who does nothing more (:func:`_sure_send`): every
    arm of a branch leads to a send, a ``wait_for`` times out. A journey that sends
    only on some arm (a referral offer for promoters alone) is not counted, so a
    warning is never about a contact who could not get both.

    The trigger is an entry of at least one of the two; the other journey may be entered
    on it too, or be waiting for it (a nurture that sends an NPS survey once its wait for
    ``order.paid`` ends, beside a survey journey entered on ``order.paid``). Two waits
    for one event are left alone: whether a contact waits in both at once depends on
    when each enrolment began, not on the definitions.

    One warning per pair, on the journey whose send comes second (the later of
    ``specs`` when both come as soon), naming that send.

    Args:
        specs: The project's journeys, in definition order.
        window: How soon after the trigger both must be able to send.
        intended: Pairs of journey names whose overlap the project declared intended.
    """
    found: list[Problem] = []
    moments = {spec.name: _moments(spec, window) for spec in specs}
    for n, later in enumerate(specs):
        for earlier in specs[:n]:
            if frozenset((earlier.name, later.name)) in intended:
                continue
            pair = next(
                (
                    (e, m)
                    for e in moments[earlier.name]
                    for m in moments[later.name]
                    if not (e.wait and m.wait) and _together(e.trigger, m.trigger)
                ),
                None,
            )
            if pair is None:
                continue
            theirs, mine = pair
            this, other = later, earlier
            if theirs.at > mine.at:
                theirs, mine, this, other = mine, theirs, earlier, later
            on = _trigger(mine.trigger)
            also = "" if theirs.trigger == mine.trigger else f", on {_trigger(theirs.trigger)}"
            found.append(
                Problem(
                    this.name,
                    f"step {mine.send.id!r}",
                    f"{on} makes this journey send {_what(mine.send)} {_after(mine.at)}"
                    f" ({mine.how()}) and journey {other.name!r} send {_what(theirs.send)}"
                    f" {_after(theirs.at)} ({theirs.how()}{also}): a contact gets both within"
                    f" {human_duration(window)}",
                    "enter one of them on another trigger or let it exit once the other"
                    f" has run, send later than {human_duration(window)} after the trigger,"
                    " or, if both are meant, declare it: Definitions(...,"
                    f" intended_overlaps=[({other.name!r}, {this.name!r})])",
                )
            )
    return found


def _what(send: SendStep) -> str:
    return repr(send.content) if isinstance(send.content, str) else "the next best item"


def _after(at: timedelta) -> str:
    return "at once" if at == timedelta(0) else f"{human_duration(at)} later"


def shadowed_waits(spec: JourneySpec) -> list[Problem]:
    """Waits for an event that meets the journey's goal or exit criteria on its own.

    Goal and exit criteria are checked before the wait on every event, so such an event
    ends the enrolment and the wait's event path never runs. Quiet when that path leads
    straight to the same ending: to a ``goal()`` step (or the journey's end) for the
    goal, to an exit (or the end) for the exit criteria.
    """
    found: list[Problem] = []
    for step in spec.steps:
        if not isinstance(step, WaitForEventStep):
            continue
        target = step.next or END
        leads_to = spec.step(target) if _is_step(target) else None
        goes_on = leads_to is not None and not isinstance(leads_to, GoalStep | ExitStep)
        for matcher in step.matchers:
            event = describe_matcher(matcher)
            if spec.goal is not None and _meets(spec.goal, matcher):
                if goes_on:
                    found.append(
                        Problem(
                            spec.name,
                            f"step {step.id!r}",
                            f"waits for {event} to go on to {target!r}, but that event meets"
                            f" the journey's goal ({describe_condition(spec.goal)}), which"
                            " is checked first: the contact completes the journey and"
                            f" {target!r} never runs",
                            "narrow the goal so this event alone does not meet it, or wait"
                            " for another event; if reaching the goal is what should happen,"
                            " point the wait at a goal() step",
                        )
                    )
            elif spec.exit_when is not None and _meets(spec.exit_when, matcher):
                if goes_on:
                    found.append(
                        Problem(
                            spec.name,
                            f"step {step.id!r}",
                            f"waits for {event} to go on to {target!r}, but that event meets"
                            " the journey's exit criteria"
                            f" ({describe_condition(spec.exit_when)}), which are checked"
                            f" first: the contact leaves the journey and {target!r} never"
                            " runs",
                            "narrow the exit criteria so this event alone does not meet"
                            " them, or wait for another event",
                        )
                    )
                elif isinstance(leads_to, GoalStep):
                    found.append(
                        Problem(
                            spec.name,
                            f"step {step.id!r}",
                            f"waits for {event} to reach the goal step {target!r}, but that"
                            " event meets the journey's exit criteria"
                            f" ({describe_condition(spec.exit_when)}), which are checked"
                            " first: the contact is counted as leaving, not as converting",
                            "make the event the journey's goal=... rather than an exit"
                            " criterion, or narrow the exit criteria",
                        )
                    )
    return found


def long_waits(spec: JourneySpec, limit: timedelta = LONG_WAIT) -> list[Problem]:
    """A journey with no goal and no exit criteria that can keep a contact ``limit`` or
    longer: one warning, at the first wait (in step order) where a contact can still be
    waiting ``limit`` after entering, along the longest path.

    Waits count their whole time (a ``wait_for`` its timeout, as its event may come
    just before it; a ``wait_until`` up to a day); a loop through a wait counts as
    without end. Sends and hand-offs count no time: while a send waits for a usable
    channel nothing reaches the contact, and its own limit (``NoChannel``) ends it.
    """
    if spec.goal is not None or spec.exit_when is not None:
        return []
    ids = [s.id for s in spec.steps]
    onward: dict[str, list[tuple[str, timedelta]]] = {
        s.id: [(t, d) for t, d in _longest(s) if _is_step(t) and t in ids] for s in spec.steps
    }
    reached = _reachable(spec.start, onward)
    in_loop = {sid for sid in reached if sid in _reachable_after(sid, onward)}
    endless: set[str] = set()
    for sid in in_loop:
        endless |= _reachable(sid, onward)
    arrival = _latest_arrival(spec.start, reached - endless, onward)
    fix = (
        "give the journey goal=... (what it is for, e.g. event('order.paid')) or"
        " exit_when=... (when to stop, e.g. stage_in('customer')), or keep its waits under"
        f" {human_duration(limit)} in all"
    )
    for sid in ids:
        span = _span(spec.step(sid))
        if span is None or sid not in reached:
            continue
        if sid in endless:
            return [
                Problem(
                    spec.name,
                    f"step {sid!r}",
                    "the journey can loop back through this wait without end, and has no"
                    " goal and no exit criteria: nothing lets a contact who converted or"
                    " lost interest out",
                    fix,
                )
            ]
        total = arrival[sid] + span
        if total >= limit:
            return [
                Problem(
                    spec.name,
                    f"step {sid!r}",
                    f"a contact can still be waiting here {human_duration(total)} after"
                    " entering, and the journey has no goal and no exit criteria: nothing"
                    " lets a contact who converted or lost interest out before then",
                    fix,
                )
            ]
    return []


def _reachable(start: str, onward: dict[str, list[tuple[str, timedelta]]]) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        for target, _ in onward[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _reachable_after(start: str, onward: dict[str, list[tuple[str, timedelta]]]) -> set[str]:
    """Steps reachable from ``start`` in one move or more (``start`` only via a loop)."""
    seen: set[str] = set()
    todo = [t for t, _ in onward[start]]
    while todo:
        sid = todo.pop()
        if sid not in seen:
            seen.add(sid)
            todo.extend(t for t, _ in onward[sid])
    return seen


def _latest_arrival(
    start: str, steps: set[str], onward: dict[str, list[tuple[str, timedelta]]]
) -> dict[str, timedelta]:
    """The most time after entering a contact can take to reach each of ``steps``, which
    hold no loop (so a topological order exists)."""
    waiting = {sid: 0 for sid in steps}
    for sid in steps:
        for target, _ in onward[sid]:
            if target in steps:
                waiting[target] += 1
    latest = {start: timedelta(0)} if start in steps else {}
    ready = [sid for sid in steps if waiting[sid] == 0]
    while ready:
        sid = ready.pop()
        at = latest.get(sid, timedelta(0))
        for target, delay in onward[sid]:
            if target not in steps:
                continue
            latest[target] = max(latest.get(target, timedelta(0)), at + delay)
            waiting[target] -= 1
            if waiting[target] == 0:
                ready.append(target)
    return latest


def journey_warnings(spec: JourneySpec) -> list[Problem]:
    """Every warning about one journey on its own (see the module's rules)."""
    return shadowed_waits(spec) + long_waits(spec)
