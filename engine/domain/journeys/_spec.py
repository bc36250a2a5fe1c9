"""The compiled journey spec, the compiler and its validation.

``compile_journey`` resolves every implicit "next step in order" into an explicit target,
checks the whole journey against a ``ValidationContext`` (collecting every problem before
raising one ``JourneyValidationError``), and returns a ``JourneySpec``: JSON-able data
whose ``version`` is the sha256 of its canonical JSON. An enrolment pins that version.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

from stagecoach.engine.domain import serial
from stagecoach.engine.domain.build_cache import Parsed
from stagecoach.engine.domain.conditions import (
    AllOf,
    AnyOf,
    Condition,
    EventOccurred,
    EventRecord,
    Not,
    StageIn,
)
from stagecoach.engine.domain.hashing import canonical_json, content_hash

from ._anchors import resolve_anchors
from ._dsl import Journey
from ._errors import JourneyValidationError, Problem, SpecFormatError
from ._steps import (
    CHANNELS,
    END,
    ENROLMENT,
    BranchStep,
    ChangeStageStep,
    EnrolStep,
    EntryTrigger,
    EventEntry,
    ExitStep,
    GoalStep,
    NextBestItem,
    NoChannel,
    ReEntry,
    SendStep,
    SplitStep,
    StageEntered,
    Step,
    WaitForEventStep,
    WaitStep,
    is_reserved_target,
    no_channel_from,
)

SPEC_FORMAT = 1
"""Bumped only when the JSON layout changes incompatibly."""

MAX_SPAN = timedelta(days=36_500)
"""The longest wait, event timeout or condition window a journey may hold (100 years):
longer is a typo, and far longer overflows the datetimes an enrolment computes."""


@runtime_checkable
class ContentIndex(Protocol):
    """What validation needs from the content library."""

    def has_variant(self, content_id: str, locale: str, channel: str) -> bool:
        """True when ``content_id`` exists for ``locale`` on ``channel``."""
        ...


@dataclass(frozen=True)
class InMemoryContentIndex:
    """A ``ContentIndex`` over a set of (content_id, locale, channel) triples.

    Attributes:
        variants: Every variant that exists.
    """

    variants: frozenset[tuple[str, str, str]]

    @classmethod
    def full(
        cls,
        content_ids: Iterable[str],
        locales: Iterable[str] = ("zh-CN", "en"),
        channels: Iterable[str] = CHANNELS,
    ) -> InMemoryContentIndex:
        """Every content id in every locale and channel given."""
        locales, channels = tuple(locales), tuple(channels)
        return cls(
            frozenset((c, loc, ch) for c in content_ids for loc in locales for ch in channels)
        )

    def has_variant(self, content_id: str, locale: str, channel: str) -> bool:
        """True when the triple was listed."""
        return (content_id, locale, channel) in self.variants


@dataclass(frozen=True)
class ValidationContext:
    """What a journey is validated against.

    Attributes:
        known_event_types: The event catalogue's names.
        stages: The pipeline's stage names.
        content: The content library, or ``None`` to skip content checks.
        known_journeys: Journey names ``enrol`` may target, or ``None`` to skip that check.
    """

    known_event_types: frozenset[str]
    stages: frozenset[str]
    content: ContentIndex | None = None
    known_journeys: frozenset[str] | None = None


# A spec without on_no_channel keeps the form (and version) it had before it existed.
@serial.fields(
    omit_if_default=("on_no_channel",),
    missing={"description": ""},
    order=(
        "name", "description", "entry", "reentry", "exit_when", "goal", "locales", "steps",
        "on_no_channel", "version",
    ),
)  # fmt: skip
@dataclass(frozen=True)
class JourneySpec(serial.Record):
    """A compiled, validated journey: plain data, identified by its content hash.

    Attributes:
        name: Journey name.
        description: Human description.
        entry: Entry triggers (any of them).
        reentry: Re-entry policy.
        exit_when: Global exit criteria, or ``None``.
        goal: Goal condition, or ``None``.
        locales: Supported locales.
        steps: Steps with every target explicit; the first one starts an enrolment.
        on_no_channel: The sends' declaration for no usable channel (``None``: wait up
            to ``NO_CHANNEL_WAIT``); a send's own wins.
        version: sha256 (hex) of the canonical JSON of everything above.
    """

    name: str
    description: str
    entry: tuple[EntryTrigger, ...]
    reentry: ReEntry
    exit_when: Condition | None
    goal: Condition | None
    locales: tuple[str, ...]
    steps: tuple[Step, ...]
    on_no_channel: NoChannel | None = None
    version: str = field(default="")

    def __post_init__(self) -> None:
        if not self.version:
            object.__setattr__(self, "version", spec_version(self._body()))

    @property
    def start(self) -> str:
        """Id of the first step."""
        return self.steps[0].id

    @cached_property
    def _index(self) -> dict[str, Step]:
        return {s.id: s for s in self.steps}

    def step(self, step_id: str) -> Step:
        """The step with ``step_id``.

        Raises:
            KeyError: No such step.
        """
        return self._index[step_id]

    def no_channel(self, step: SendStep) -> NoChannel:
        """What ``step`` does without a usable channel: its own declaration, else the
        journey's, else wait up to ``NO_CHANNEL_WAIT``."""
        return step.on_no_channel or self.on_no_channel or NoChannel()

    def entered_by_stage(self, stage: str) -> bool:
        """True when entering ``stage`` enrols a contact in this journey."""
        return any(isinstance(e, StageEntered) and e.stage == stage for e in self.entry)

    def entered_by_event(self, record: EventRecord) -> bool:
        """True when ``record`` enrols a contact in this journey."""
        return any(isinstance(e, EventEntry) and e.matcher.matches(record) for e in self.entry)

    def event_types(self) -> frozenset[str]:
        """Every event type this journey reacts to: the ingestion filter's input."""
        return frozenset(t for _, t in _event_type_uses(self))

    def _body(self) -> dict[str, Any]:
        body = self.to_dict()
        del body["version"]
        return body

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, including ``version``."""
        return {"format": SPEC_FORMAT, **serial.encode(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JourneySpec:
        """Rebuild a spec; its content must hash to the stored ``version``.

        Raises:
            SpecFormatError: Malformed data, an unknown format, or a version mismatch.
        """
        if data.get("format") != SPEC_FORMAT:
            raise SpecFormatError(
                f"journey spec format {data.get('format')!r} is not {SPEC_FORMAT}",
                fix="recompile the journey with this version of Stagecoach",
            )
        try:
            spec = serial.decode(cls, {**data, "version": ""})
        except KeyError as exc:
            raise SpecFormatError(
                f"journey spec is missing field {exc.args[0]!r}",
                fix="recompile the journey from its Python definition",
            ) from exc
        stored = data.get("version")
        if stored is not None and stored != spec.version:
            raise SpecFormatError(
                f"journey {spec.name!r}: stored version {stored} does not match its content"
                f" ({spec.version})",
                fix="do not edit compiled specs by hand; recompile from the Python definition",
            )
        return spec

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces)."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> JourneySpec:
        """Inverse of ``to_json``."""
        return cls.from_dict(json.loads(text))


parsed_spec: Parsed[JourneySpec] = Parsed(JourneySpec.from_dict)
"""``JourneySpec.from_dict``, checked and built once per process for the same data
(``stagecoach.engine.domain.build_cache``): every contact workflow run builds the published
journeys."""


def spec_version(body: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a spec body."""
    return content_hash(body)


def can_enrol(
    spec: JourneySpec,
    *,
    active: bool,
    previous_enrolments: int,
    last_ended_at: datetime | None,
    now: datetime,
) -> bool:
    """Whether an entry trigger may enrol the contact now, per the re-entry policy.

    A contact is never enrolled twice in parallel. ``never`` allows one enrolment ever,
    ``always`` allows a new one once the previous ended, and a cool-down counts from the
    end of the previous enrolment (so a long journey cannot restart the day it ends).

    Args:
        spec: The journey.
        active: An enrolment of this journey is running for the contact.
        previous_enrolments: How many enrolments the contact had before.
        last_ended_at: When the previous enrolment ended, if any.
        now: The current time.
    """
    if active:
        return False
    if previous_enrolments == 0:
        return True
    policy = spec.reentry
    if policy.policy == "always":
        return True
    if policy.policy == "cooldown" and policy.cooldown is not None:
        return last_ended_at is None or now - last_ended_at >= policy.cooldown
    return False


# Compilation.


def compile_journey(journey: Journey, ctx: ValidationContext) -> JourneySpec:
    """Resolve, validate and freeze a journey into a ``JourneySpec``.

    Waits anchored on enrolment become plain waits of the time left (``_anchors``).

    Args:
        journey: The marketer's definition.
        ctx: Event types, stages, content and journeys to validate against.

    Returns:
        The spec, with ``version`` set.

    Raises:
        JourneyValidationError: Listing every problem found, each with its fix.
    """
    steps, anchor_problems = resolve_anchors(journey.name, _resolve(tuple(journey.steps)))
    try:
        spec = JourneySpec(
            name=journey.name,
            description=journey.description,
            entry=journey.entries,
            reentry=journey.reentry,
            exit_when=journey.exit_when,
            goal=journey.goal,
            locales=tuple(journey.locales),
            steps=steps,
            on_no_channel=no_channel_from(journey.on_no_channel),
        )
    except (TypeError, ValueError) as exc:
        # A spec is JSON (its version hashes it): a value with no JSON form (a datetime
        # in set_attribute, say) is a problem the marketer fixes in a named step.
        raise JourneyValidationError(journey.name, [_not_json(journey, steps, exc)]) from exc
    problems = anchor_problems + validate_spec(spec, ctx)
    if problems:
        raise JourneyValidationError(journey.name, problems)
    return spec


def _not_json(journey: Journey, steps: tuple[Step, ...], exc: Exception) -> Problem:
    """The part of ``journey`` holding a value with no JSON form, as a problem."""
    parts: list[tuple[str, Step | Condition | None]] = [(f"step {s.id!r}", s) for s in steps]
    parts += [("exit criteria", journey.exit_when), ("goal", journey.goal)]
    where = "journey"
    for place, part in parts:
        try:
            canonical_json({"part": part.to_dict() if part is not None else None})
        except (TypeError, ValueError):
            where = place
            break
    return Problem(
        journey.name,
        where,
        f"holds a value with no JSON form ({exc})",
        "use only text, numbers, true/false, null and lists or mappings of them "
        "(a time as an ISO 8601 string)",
    )


def _resolve(steps: tuple[Step, ...]) -> tuple[Step, ...]:
    """Replace each linear ``None`` target with the next step's id (``END`` after the last)."""
    out: list[Step] = []
    for i, s in enumerate(steps):
        following = steps[i + 1].id if i + 1 < len(steps) else END
        out.append(s.resolved(following))
    return tuple(out)


def validate_spec(spec: JourneySpec, ctx: ValidationContext) -> list[Problem]:
    """Every problem in ``spec`` against ``ctx``; empty when the journey is sound."""
    problems: list[Problem] = []

    def add(where: str, message: str, fix: str) -> None:
        problems.append(Problem(spec.name, where, message, fix))

    if not spec.name or spec.name.startswith("$"):
        add("journey", f"name {spec.name!r} is not usable", "give the journey a plain name")
    if not spec.locales:
        add("journey", "no locales declared", "declare locales, e.g. locales=('zh-CN', 'en')")
    if not spec.entry:
        add("entry", "no entry trigger", "add entry=stage_entered(...) or on_event(...)")
    if not spec.steps:
        add("steps", "the journey has no steps", "add at least one step")
        return problems

    ids: dict[str, int] = {}
    for s in spec.steps:
        ids[s.id] = ids.get(s.id, 0) + 1
        if not s.id or s.id.startswith("$"):
            add(f"step {s.id!r}", "step id is empty or starts with '$'", "give the step a plain id")
    for sid, n in ids.items():
        if n > 1:
            add(
                f"step {sid!r}",
                f"id used by {n} steps",
                "give each step its own id (ids pin idempotency keys and history)",
            )

    _check_graph(spec, add)
    _check_steps(spec, ctx, add)
    _check_since(spec, add)
    _check_spans(spec, add)
    _check_event_types(spec, ctx, add)
    _check_stages(spec, ctx, add)
    return problems


def _check_graph(spec: JourneySpec, add: Any) -> None:
    known = {s.id for s in spec.steps}
    graph: dict[str, list[str]] = {s.id: [] for s in spec.steps}
    for s in spec.steps:
        for label, target in s.edges():
            if target in known:
                graph[s.id].append(target)
            elif not is_reserved_target(target):
                add(
                    f"step {s.id!r}",
                    f"{label or 'next'} target {target!r} does not exist, so this path never ends",
                    f"point it at an existing step id, at END, or add a step with id {target!r}",
                )

    reachable = _reach(spec.start, graph)
    for s in spec.steps:
        if s.id not in reachable:
            add(
                f"step {s.id!r}",
                "unreachable: no path from the first step leads here",
                "remove the step, or point a next/branch/timeout target at it",
            )

    # A cycle made only of instant steps (and sends) would spin or spam without ever
    # waiting: every loop must contain a timer-based wait.
    instant = {
        sid: [t for t in targets if not spec.step(t).is_wait]
        for sid, targets in graph.items()
        if not spec.step(sid).is_wait and sid in reachable
    }
    for component in _cycles(instant):
        names = ", ".join(repr(c) for c in component)
        add(
            f"step {component[0]!r}",
            f"steps {names} form a loop with no wait in it",
            "add a wait(...) or wait_for(...) step inside the loop, or route it to an exit",
        )

    # Every reachable step must be able to reach a terminal: END, an exit, or a goal.
    terminal = {
        s.id
        for s in spec.steps
        if isinstance(s, GoalStep | ExitStep)
        or any(
            is_reserved_target(t) or (t not in known) for _, t in s.edges()
        )  # dangling targets are reported above; do not report them twice
    }
    reverse: dict[str, list[str]] = {sid: [] for sid in graph}
    for sid, targets in graph.items():
        for t in targets:
            reverse[t].append(sid)
    can_end: set[str] = set()
    for t in terminal:
        can_end |= _reach(t, reverse)
    stuck = [s.id for s in spec.steps if s.id in reachable and s.id not in can_end]
    if stuck:
        add(
            f"step {stuck[0]!r}",
            f"steps {', '.join(repr(s) for s in stuck)} never end: no path leads to END,"
            " an exit or a goal",
            "add a branch or timeout out of the loop to an exit_journey(...) step or END",
        )


def _check_since(spec: JourneySpec, add: Any) -> None:
    """``wait_for(..., since=...)`` names enrolment or a step every path to the wait
    passes first: only then is the moment it counts from always known when it starts."""
    known = {s.id for s in spec.steps}
    graph = {s.id: [t for _, t in s.edges() if t in known] for s in spec.steps}
    for s in spec.steps:
        if not isinstance(s, WaitForEventStep) or s.since is None:
            continue
        where, since = f"step {s.id!r}", s.since
        before = "since='enrolment' or the id of a step every path to this wait passes first"
        if since == ENROLMENT:
            if ENROLMENT in known:
                add(
                    where,
                    f"since={since!r} could mean enrolment or the step {since!r}",
                    f"rename the step {since!r}; since='enrolment' always means enrolment",
                )
        elif since == s.id:
            add(
                where,
                "since names this wait itself",
                "leave since out to count only events after the wait starts, or use " + before,
            )
        elif since not in known:
            add(
                where,
                f"since={since!r} names no step of this journey",
                f"use {before} ({_closest(since, known)})",
            )
        elif s.id not in _reach(spec.start, {k: [] if k == since else v for k, v in graph.items()}):
            continue  # every path to the wait passes ``since`` first
        elif s.id not in _reach(since, graph):
            add(
                where,
                f"since={since!r} names a step that does not come before this wait",
                f"use {before}",
            )
        else:
            add(
                where,
                f"since={since!r} names a step some paths to this wait do not pass",
                f"use {before}",
            )


def _reach(start: str, graph: Mapping[str, list[str]]) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        for t in graph.get(todo.pop(), ()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def _cycles(graph: Mapping[str, list[str]]) -> list[list[str]]:
    """Strongly connected components that contain a cycle (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))
    return found


def _check_no_channel(where: str, declared: NoChannel | None, add: Any) -> None:
    if declared is None:
        return
    problem = declared.problem()
    if problem is not None:
        add(where, *problem)
    elif declared.action == "wait" and declared.wait_limit > MAX_SPAN:
        add(
            where,
            f"on_no_channel waits {declared.wait_limit.days} days, longer than"
            f" {MAX_SPAN.days} days",
            "wait at most 100 years: check the units",
        )


def _check_steps(spec: JourneySpec, ctx: ValidationContext, add: Any) -> None:
    _check_no_channel("journey", spec.on_no_channel, add)
    for s in spec.steps:
        where = f"step {s.id!r}"
        if isinstance(s, SendStep):
            _check_no_channel(where, s.on_no_channel, add)
            if s.channel not in (*CHANNELS, "preferred"):
                add(
                    where,
                    f"channel {s.channel!r} is unknown",
                    "use 'email', 'wechat' or 'preferred'",
                )
            elif isinstance(s.content, str) and ctx.content is not None:
                channels = CHANNELS if s.channel == "preferred" else (s.channel,)
                missing = [
                    f"{loc}/{ch}"
                    for loc in spec.locales
                    for ch in channels
                    if not ctx.content.has_variant(s.content, loc, ch)
                ]
                if missing:
                    add(
                        where,
                        f"content {s.content!r} does not exist for {', '.join(missing)}"
                        + (
                            " ('preferred' needs every channel)" if s.channel == "preferred" else ""
                        ),
                        "add those variants to the content library, or change the content id,"
                        " channel or the journey's locales",
                    )
            if isinstance(s.content, NextBestItem) and s.content.stage is not None:
                _stage(spec, ctx, add, where, s.content.stage)
        elif isinstance(s, WaitForEventStep):
            if s.timeout is None or s.timeout <= timedelta(0):
                add(
                    where,
                    "waits for an event without a (positive) timeout",
                    "give wait_for(...) a timeout=timedelta(...) and an on_timeout target",
                )
            if not s.matchers:
                add(where, "waits for no event", "name at least one event type")
        elif isinstance(s, WaitStep):
            if s.duration <= timedelta(0):
                add(where, "wait duration is not positive", "wait a positive duration")
        elif isinstance(s, SplitStep):
            if (
                not s.branches
                or any(b.weight < 0 for b in s.branches)
                or not any(b.weight > 0 for b in s.branches)
            ):
                add(
                    where,
                    "split weights must be non-negative with a positive total",
                    "give each arm a weight such as 50",
                )
        elif isinstance(s, EnrolStep):
            if s.journey == spec.name:
                add(where, "enrols the contact in this same journey", "enrol in another journey")
            elif ctx.known_journeys is not None and s.journey not in ctx.known_journeys:
                add(
                    where,
                    f"enrols in unknown journey {s.journey!r}",
                    f"use one of {_closest(s.journey, ctx.known_journeys)} or define that journey",
                )


def _event_type_uses(spec: JourneySpec) -> Iterator[tuple[str, str]]:
    for e in spec.entry:
        if isinstance(e, EventEntry):
            yield "entry", e.matcher.type
    if spec.exit_when is not None:
        for t in sorted(spec.exit_when.event_types()):
            yield "exit criteria", t
    if spec.goal is not None:
        for t in sorted(spec.goal.event_types()):
            yield "goal", t
    for s in spec.steps:
        if isinstance(s, WaitForEventStep):
            for m in s.matchers:
                yield f"step {s.id!r}", m.type
        elif isinstance(s, BranchStep):
            for t in sorted(s.condition.event_types()):
                yield f"step {s.id!r}", t


def _check_event_types(spec: JourneySpec, ctx: ValidationContext, add: Any) -> None:
    for where, t in _event_type_uses(spec):
        if t not in ctx.known_event_types:
            add(
                where,
                f"event type {t!r} is not in the event catalogue",
                f"use a catalogued type ({_closest(t, ctx.known_event_types)}) or add {t!r} to"
                " the catalogue",
            )


def _check_spans(spec: JourneySpec, add: Any) -> None:
    too_long = f"longer than {MAX_SPAN.days} days"
    fix = "wait, time out and look back at most 100 years: check the units"
    for s in spec.steps:
        span = s.duration if isinstance(s, WaitStep) else None
        if isinstance(s, WaitForEventStep):
            span = s.timeout
        if span is not None and span > MAX_SPAN:
            add(f"step {s.id!r}", f"{s.kind} of {span.days} days is {too_long}", fix)
    for where, cond in _conditions_of(spec):
        for part in _walk(cond):
            window = part.within if isinstance(part, EventOccurred) else None
            if window is not None and window > MAX_SPAN:
                add(where, f"event window of {window.days} days is {too_long}", fix)


def _conditions_of(spec: JourneySpec) -> list[tuple[str, Condition]]:
    """Every condition of ``spec`` with where it is: exit criteria, goal, branches."""
    places: list[tuple[str, Condition | None]] = [
        ("exit criteria", spec.exit_when),
        ("goal", spec.goal),
    ]
    places += [(f"step {s.id!r}", s.condition) for s in spec.steps if isinstance(s, BranchStep)]
    return [(where, cond) for where, cond in places if cond is not None]


def _walk(condition: Condition) -> Iterator[Condition]:
    yield condition
    if isinstance(condition, AllOf | AnyOf):
        for c in condition.conditions:
            yield from _walk(c)
    elif isinstance(condition, Not):
        yield from _walk(condition.condition)


def _stage(spec: JourneySpec, ctx: ValidationContext, add: Any, where: str, stage: str) -> None:
    if stage not in ctx.stages:
        add(
            where,
            f"stage {stage!r} is not in the pipeline",
            f"use a pipeline stage ({_closest(stage, ctx.stages)})",
        )


def _check_stages(spec: JourneySpec, ctx: ValidationContext, add: Any) -> None:
    for e in spec.entry:
        if isinstance(e, StageEntered):
            _stage(spec, ctx, add, "entry", e.stage)
    for where, cond in _conditions_of(spec):
        for part in _walk(cond):
            if isinstance(part, StageIn):
                for stage in part.stages:
                    _stage(spec, ctx, add, where, stage)
    for s in spec.steps:
        if isinstance(s, ChangeStageStep):
            _stage(spec, ctx, add, f"step {s.id!r}", s.stage)


def _closest(name: str, known: Iterable[str]) -> str:
    pool = sorted(known)
    close = difflib.get_close_matches(name, pool, n=3)
    shown = close or pool[:5]
    return (
        "did you mean " + " or ".join(repr(c) for c in close)
        if close
        else ("known: " + ", ".join(repr(c) for c in shown) if shown else "none are known")
    )
