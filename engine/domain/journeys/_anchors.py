"""Waits anchored on enrolment, resolved when a journey compiles.

``wait(until=since_enrolment(timedelta(days=14)))`` needs no new spec field: the compiler
works out when a contact reaches the step, counted from enrolment, and writes a plain
``WaitStep`` of the time left; ``wait_for(..., timeout=since_enrolment(...))`` likewise
becomes a ``WaitForEventStep`` whose timeout is the time left. That is exact when every
path from the first step to the anchored step takes a fixed time, which is what this
module checks:

- a ``wait`` adds its duration, an anchored wait sets the time to its anchor;
- a ``wait_for`` adds its timeout on the timeout path (an anchored one sets the time to
  its anchor there); its event path, and any
  ``wait_until`` (the next 09:00 depends on the clock), make the time unknown;
- every other step counts as instant: a send, a hand-off, a branch, a split. A send
  that waits for a usable channel (``NoChannel.wait``) shifts what follows, anchors
  included, as it shifts any later wait;
- two paths that reach a step at different times make it unknown there.

An anchored wait where the time is unknown, or where the anchor is not after it, is a
validation problem naming the journey, the step and the fix. Existing specs keep their
form and version: the spec never holds the anchor.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from ._dsl import AnchoredEventWaitStep, AnchoredWaitStep
from ._errors import Problem
from ._steps import SplitStep, Step, WaitForEventStep, WaitStep, WaitUntilStep, _human

FIX_UNKNOWN = (
    "anchor only where every path takes a fixed time (wait(...) steps and wait_for"
    " timeouts), or wait after the previous step with wait(timedelta(...))"
)


@dataclass(frozen=True)
class _Unknown:
    """The time since enrolment is not fixed at a step; ``why`` says what unfixed it."""

    why: str


Elapsed = timedelta | _Unknown


def _merge(old: Elapsed | None, new: Elapsed, step_id: str) -> Elapsed:
    if old is None or isinstance(old, _Unknown):
        return new if old is None else old
    if isinstance(new, _Unknown) or new == old:
        return new
    earlier, later = sorted((old, new))
    return _Unknown(
        f"paths reach step {step_id!r} {_human(earlier)} and {_human(later)} after enrolment"
    )


def _plus(at: Elapsed, delta: timedelta | None, step: Step) -> Elapsed:
    if isinstance(at, _Unknown):
        return at
    if delta is None:
        return _Unknown(f"step {step.id!r} has no timeout")
    return at + delta


def _out(step: Step, at: Elapsed) -> Iterator[tuple[str | None, Elapsed]]:
    """Each target of ``step`` with the time since enrolment on arriving there."""
    if isinstance(step, AnchoredWaitStep):
        yield step.next, step.until.offset
    elif isinstance(step, AnchoredEventWaitStep):
        yield step.next, _Unknown(f"step {step.id!r} goes on when an event arrives")
        yield step.on_timeout, step.until.offset
    elif isinstance(step, WaitStep):
        yield step.next, _plus(at, step.duration, step)
    elif isinstance(step, WaitUntilStep):
        yield step.next, _Unknown(f"step {step.id!r} waits for a time of day")
    elif isinstance(step, WaitForEventStep):
        yield step.next, _Unknown(f"step {step.id!r} goes on when an event arrives")
        yield step.on_timeout, _plus(at, step.timeout, step)
    elif isinstance(step, SplitStep):
        for b in step.branches:
            yield b.target, at
    else:
        for _, target in step.edges():
            yield target, at


def resolve_anchors(
    journey: str, steps: tuple[Step, ...]
) -> tuple[tuple[Step, ...], list[Problem]]:
    """``steps`` (every target explicit) with each anchored wait made a ``WaitStep``, and
    the problems of those that cannot be.

    A wait that cannot be resolved still becomes a ``WaitStep`` (of its anchor), so the
    rest of validation runs and reports every other problem too; the spec is refused.
    """
    if not any(isinstance(s, AnchoredWaitStep | AnchoredEventWaitStep) for s in steps):
        return steps, []
    index = {s.id: s for s in steps}
    reached: dict[str, Elapsed] = {steps[0].id: timedelta(0)}
    todo = deque([steps[0].id])
    # Each step's time only ever goes from unset to a value to unknown, so this ends.
    while todo:
        sid = todo.popleft()
        for target, arriving in _out(index[sid], reached[sid]):
            if target is None or target not in index:
                continue
            merged = _merge(reached.get(target), arriving, target)
            if merged != reached.get(target):
                reached[target] = merged
                todo.append(target)

    out: list[Step] = []
    problems: list[Problem] = []
    for s in steps:
        if not isinstance(s, AnchoredWaitStep | AnchoredEventWaitStep):
            out.append(s)
            continue
        anchor, at = s.until.offset, reached.get(s.id)
        verb = "waits until" if isinstance(s, AnchoredWaitStep) else "times out"
        where, what = f"step {s.id!r}", f"{verb} {_human(anchor)} after enrolment"
        duration = anchor
        if anchor <= timedelta(0):
            problems.append(
                Problem(
                    journey,
                    where,
                    f"{what}, which is not after enrolment",
                    "anchor a positive time, e.g. since_enrolment(timedelta(days=14))",
                )
            )
        elif isinstance(at, _Unknown):
            problems.append(
                Problem(
                    journey,
                    where,
                    f"{what}, but the time since enrolment is not fixed there: {at.why}",
                    FIX_UNKNOWN,
                )
            )
        elif at is not None and anchor <= at:
            problems.append(
                Problem(
                    journey,
                    where,
                    f"{what}, but the steps before it already take {_human(at)}",
                    f"anchor it later than {_human(at)} after enrolment, shorten the waits"
                    " before it, or remove this wait"
                    if isinstance(s, AnchoredWaitStep)
                    else f"anchor it later than {_human(at)} after enrolment, shorten the"
                    " waits before it, or time out after the previous step with"
                    " timeout=timedelta(...)",
                )
            )
        elif at is not None:
            duration = anchor - at
        # An unreachable anchored wait (at is None) is reported by the graph checks. A
        # refused one keeps a positive placeholder, so it is not reported twice.
        left = max(duration, timedelta(seconds=1))
        if isinstance(s, AnchoredWaitStep):
            out.append(WaitStep(id=s.id, duration=left, next=s.next))
        else:
            out.append(
                WaitForEventStep(
                    id=s.id,
                    matchers=s.matchers,
                    timeout=left,
                    next=s.next,
                    on_timeout=s.on_timeout,
                    since=s.since,
                )
            )
    return tuple(out), problems
