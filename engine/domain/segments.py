"""Segments: saved audiences, defined as code and decided where the deciding event lands.

A marketer writes them next to the journeys::

    Segment(
        "east-china-a-leads-gone-quiet",
        description="A-grade manufacturing leads in East China who opened nothing for 30 days",
        when=grade_in("A")
        & stage_in("lead")
        & trait("industry", "eq", "manufacturing")
        & trait("region", "eq", "east-china")
        & ~performed("email.opened", within=timedelta(days=30)),
    )
    Segment("vip-list", description="Uploaded by the events team", manual=True)

A computed segment's condition is the one condition algebra (``conditions``); a manual
segment is a list fed by CSV or the API. Each segment compiles to a :class:`SegmentSpec`
whose content hash is its version: membership rows say which version decided them, so
a changed definition never mixes with the old one.

What this module decides, purely, for the contact workflow and the backfill alike:

- :func:`decide`: which segments a contact is in, from its facts, evaluating segments
  that reference others after those (``in_segment``), and what changed;
- :func:`next_due`: the earliest moment a time-driven flip could happen, for one timer;
- :func:`segment_problems`: what is wrong with a project's segments (unknown traits,
  events, stages, journeys; missing or cyclic references; conditions that cannot hold).

Entering and leaving are also seen by journeys, as the events ``segment.entered`` and
``segment.exited`` with property ``segment``: ``segment_entered("x")`` enrols, waits and
exits on them (see :class:`SegmentTransition`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from stagecoach.engine.domain import serial
from stagecoach.engine.domain.conditions import (
    AllOf,
    AttributeDate,
    AttributeMatches,
    Condition,
    ConditionError,
    EventMatcher,
    Facts,
    InJourney,
    InSegment,
    PropertyFilter,
    StageAtLeast,
    StageIn,
    condition_from_dict,
)
from stagecoach.engine.domain.hashing import content_hash
from stagecoach.engine.domain.propensity import TRAITS as PROPENSITY_TRAITS
from stagecoach.engine.domain.value import TRAITS as VALUE_TRAITS

SEGMENT_ENTERED = "segment.entered"
SEGMENT_EXITED = "segment.exited"
SEGMENT_EVENTS = frozenset({SEGMENT_ENTERED, SEGMENT_EXITED})
"""The events a membership change shows journeys (never stored, never signalled)."""

LIST_ADDED = "segment.list_added"
LIST_REMOVED = "segment.list_removed"
LIST_EVENTS = frozenset({LIST_ADDED, LIST_REMOVED})
"""Manual list changes travel to the contact as these events (stored, then signalled in
order through the outbox like any other), with properties ``segment`` and ``actor``."""

MEMBERSHIP = "segment.membership"
"""A backfill's decision for one contact (properties ``segment``, ``version``,
``member``): adopted by the workflow as it stands, without re-deciding it."""

SYSTEM_EVENTS = LIST_EVENTS | {MEMBERSHIP}

MANUAL_VERSION = "list"
"""The version every manual list's memberships carry: a list is its members, whatever
its description says, so editing the description keeps them."""

IDENTITY_TRAITS = frozenset(
    {
        "email",
        "wechat_openid",
        "phone",
        "locale",
        "timezone",
        "preferred_channel",
        "consent",
        "name",
        "company",
        "referred_by",
    }
)
"""Traits the engine itself reads; always known, whatever the project declares."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class SegmentError(ConditionError):
    """A segment is malformed; the message names the segment and the fix."""


class SegmentCycle(SegmentError):
    """Segments reference each other in a loop; ``cycle`` lists it, first name last too."""

    def __init__(self, cycle: tuple[str, ...]) -> None:
        self.cycle = cycle
        super().__init__(
            f"segments reference each other in a cycle ({' -> '.join(cycle)}): remove one"
            " in_segment reference"
        )


@dataclass(frozen=True)
class Segment:
    """A saved audience.

    Attributes:
        name: Unique, lowercase: letters, digits, ``-`` and ``_`` (64 at most).
        description: What the audience is, for people reading the catalogue.
        when: The condition a contact must meet (a computed segment).
        manual: A list fed by CSV upload or the API instead of a condition.
        searchable: Also written to the contact workflow's ``Segments`` search
            attribute, so ops can list the segment's workflows with ``temporal workflow
            list``. Off by default: each membership change of a searchable segment costs
            one more Temporal action (the upsert), and the attribute holds a bounded list.
    """

    name: str
    description: str = ""
    when: Condition | None = None
    manual: bool = False
    searchable: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SegmentError(
                f"segment name {self.name!r} is not valid: use lowercase letters, digits, '-'"
                " and '_', starting with a letter or digit, at most 64 characters"
            )
        if self.manual and self.when is not None:
            raise SegmentError(
                f"segment {self.name!r} is manual and has a condition: drop when= for a list"
                " fed by upload, or manual=True for a computed segment"
            )
        if not self.manual and self.when is None:
            raise SegmentError(
                f"segment {self.name!r} has no condition: pass when=<condition>, or"
                " manual=True for a list fed by CSV upload or the API"
            )
        if self.when is not None and not isinstance(self.when, Condition):
            raise SegmentError(
                f"segment {self.name!r}: when= got {type(self.when).__name__}; pass a"
                " condition such as stage_in('lead') & grade_in('A')"
            )

    def spec(self) -> SegmentSpec:
        return SegmentSpec.build(
            name=self.name,
            description=self.description,
            condition=self.when,
            manual=self.manual,
            searchable=self.searchable,
        )


@dataclass(frozen=True)
class SegmentSpec:
    """A segment as data: what is published, hashed into ``version``, and evaluated."""

    name: str
    version: str
    description: str = ""
    condition: Condition | None = None
    manual: bool = False
    searchable: bool = False

    @classmethod
    def build(
        cls,
        *,
        name: str,
        description: str = "",
        condition: Condition | None = None,
        manual: bool = False,
        searchable: bool = False,
    ) -> SegmentSpec:
        body = _body(name, description, condition, manual, searchable)
        return cls(
            name=name,
            version=content_hash(body),
            description=description,
            condition=condition,
            manual=manual,
            searchable=searchable,
        )

    def to_dict(self) -> dict[str, Any]:
        body = _body(self.name, self.description, self.condition, self.manual, self.searchable)
        return {**body, "version": self.version}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentSpec:
        raw = data.get("condition")
        spec = cls.build(
            name=str(data["name"]),
            description=str(data.get("description", "")),
            condition=None if raw is None else condition_from_dict(raw),
            manual=bool(data.get("manual", False)),
            searchable=bool(data.get("searchable", False)),
        )
        stated = data.get("version")
        if stated is not None and stated != spec.version:
            raise SegmentError(
                f"segment {spec.name!r}: stored version {stated!r} does not match its"
                f" content ({spec.version!r}); republish it instead of editing the row"
            )
        return spec

    def references(self) -> frozenset[str]:
        return references(self.condition) if self.condition is not None else frozenset()

    def holds(self, facts: Facts) -> bool:
        return self.condition is not None and self.condition.evaluate(facts)


def _body(
    name: str, description: str, condition: Condition | None, manual: bool, searchable: bool
) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "condition": None if condition is None else condition.to_dict(),
        "manual": manual,
        "searchable": searchable,
    }


def walk(condition: Condition) -> Iterable[Condition]:
    """The condition and every condition inside it, depth first."""
    yield condition
    for child in condition.children():
        yield from walk(child)


def references(condition: Condition) -> frozenset[str]:
    """Segments a condition names with ``in_segment``."""
    return frozenset(c.segment for c in walk(condition) if isinstance(c, InSegment))


def evaluation_order(specs: Mapping[str, SegmentSpec]) -> list[str]:
    """Segment names with every referenced segment before its referrers (references to
    unknown segments are ignored here; :func:`segment_problems` reports them). A cycle
    raises :class:`SegmentError` naming it."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: tuple[str, ...]) -> None:
        mark = state.get(name)
        if mark == 2:
            return
        if mark == 1:
            raise SegmentCycle((*path[path.index(name) :], name))
        state[name] = 1
        for ref in sorted(specs[name].references()):
            if ref in specs:
                visit(ref, (*path, name))
        state[name] = 2
        order.append(name)

    for name in specs:
        visit(name, ())
    return order


@dataclass(frozen=True)
class Membership(serial.Record):
    """One segment a contact belongs to: the version that decided it, since when, why."""

    version: str
    since: datetime
    reason: str = ""


@dataclass(frozen=True)
class Change(serial.Record):
    """A contact entered (``entered=True``) or left a segment."""

    segment: str
    version: str
    entered: bool
    at: datetime
    reason: str


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` found: the memberships now and the changes that led there."""

    members: Mapping[str, Membership]
    changes: tuple[Change, ...]


def decide(
    specs: Mapping[str, SegmentSpec],
    facts: Facts,
    current: Mapping[str, Membership],
    *,
    reason: str,
    order: Sequence[str] | None = None,
) -> Decision:
    """Re-decide every computed segment for one contact.

    Manual segments keep what they are (lists change by :func:`list_change`). A segment
    whose version changed but whose answer did not is carried over under the new version
    without a change: only a flip is an entry or an exit. Memberships of segments no
    longer published are dropped as exits.
    """
    members = dict(current)
    changes: list[Change] = []
    now = facts.now
    for gone in [name for name in members if name not in specs]:
        left = members.pop(gone)
        changes.append(Change(gone, left.version, False, now, "segment no longer published"))
    names = order if order is not None else evaluation_order(specs)
    for name in names:
        spec = specs[name]
        if spec.manual:
            continue
        seen = replace(facts, segments=frozenset(members))
        held = members.get(name)
        if spec.holds(seen):
            if held is None:
                members[name] = Membership(spec.version, now, reason)
                changes.append(Change(name, spec.version, True, now, reason))
            elif held.version != spec.version:
                members[name] = replace(held, version=spec.version)
        elif held is not None:
            del members[name]
            changes.append(Change(name, spec.version, False, now, reason))
    return Decision(members, tuple(changes))


def adopt(
    current: Mapping[str, Membership],
    *,
    segment: str,
    version: str,
    member: bool,
    at: datetime,
    reason: str,
) -> Decision:
    """Take a decision made elsewhere (a manual list change, a backfill) as it stands."""
    members = dict(current)
    held = members.get(segment)
    if member and held is None:
        members[segment] = Membership(version, at, reason)
        return Decision(members, (Change(segment, version, True, at, reason),))
    if member and held is not None:
        members[segment] = replace(held, version=version)
        return Decision(members, ())
    if not member and held is not None:
        del members[segment]
        return Decision(members, (Change(segment, version, False, at, reason),))
    return Decision(members, ())


def next_due(specs: Mapping[str, SegmentSpec], facts: Facts) -> datetime | None:
    """The earliest moment after ``facts.now`` when a computed segment could flip with
    nothing else happening; ``None`` if none can."""
    moments = [
        m
        for spec in specs.values()
        if spec.condition is not None
        and (m := spec.condition.next_change(facts)) is not None
        and m > facts.now
    ]
    return min(moments) if moments else None


def event_types(specs: Mapping[str, SegmentSpec]) -> frozenset[str]:
    """Event types some segment reacts to (the ingestion filter signals these), plus
    the list events when any manual segment exists."""
    types: set[str] = set()
    for spec in specs.values():
        if spec.condition is not None:
            types |= spec.condition.event_types()
        if spec.manual:
            types |= LIST_EVENTS
    if specs:
        types.add(MEMBERSHIP)
    return frozenset(types)


def transition_event(change: Change) -> tuple[str, dict[str, Any]]:
    """The event journeys see for a change: its type and properties."""
    kind = SEGMENT_ENTERED if change.entered else SEGMENT_EXITED
    return kind, {"segment": change.segment, "version": change.version, "reason": change.reason}


# --- journeys' side: segment_entered / segment_exited / in_segment ------------------------


@dataclass(frozen=True)
class SegmentTransition(InSegment):
    """``segment_entered("x")`` or ``segment_exited("x")``: usable in three places.

    - As a journey's ``entry``: the contact enrols when it enters (or leaves) the segment.
    - In ``wait_for``: the wait ends when it does.
    - As a condition (``exit_when``, ``goal``, ``branch``): whether the contact is in the
      segment now (entered) or not (exited). ``exit_when=segment_exited("x")`` thus exits
      as soon as the contact is out, including a contact who left before this check.
    """

    entered: bool = True
    kind = "in_segment"

    @property
    def matcher(self) -> EventMatcher:
        return EventMatcher(
            SEGMENT_ENTERED if self.entered else SEGMENT_EXITED,
            (PropertyFilter("segment", "eq", self.segment),),
        )

    def evaluate(self, facts: Facts) -> bool:
        inside = self.segment in facts.segments
        return inside if self.entered else not inside

    def to_dict(self) -> dict[str, Any]:
        inside = {"kind": "in_segment", "segment": self.segment}
        return inside if self.entered else {"kind": "not", "condition": inside}


def segment_entered(segment: str) -> SegmentTransition:
    return SegmentTransition(segment, entered=True)


def segment_exited(segment: str) -> SegmentTransition:
    return SegmentTransition(segment, entered=False)


# --- validation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentProblem:
    """One thing wrong with a segment, and how to fix it."""

    segment: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"segment {self.segment!r}: {self.message}. Fix: {self.fix}"


def _closest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=3)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def segment_problems(
    segments: Sequence[SegmentSpec],
    *,
    event_types: frozenset[str],
    stages: frozenset[str],
    journeys: frozenset[str],
    traits: frozenset[str] | None,
) -> list[SegmentProblem]:
    """Every problem of a project's segments; empty means valid.

    Args:
        event_types: The event catalog's names.
        stages: The pipeline's stages and detour states.
        journeys: The project's journey names.
        traits: The traits the project declares, or ``None`` to leave trait names
            unchecked (a project that declares none).
    """
    problems: list[SegmentProblem] = []
    by_name: dict[str, SegmentSpec] = {}
    for spec in segments:
        if spec.name in by_name:
            problems.append(
                SegmentProblem(spec.name, "two segments have this name", "rename one of them")
            )
        by_name[spec.name] = spec
    # Computed traits (``propensity``, ``value_tier``...) are set by the engine, never
    # declared.
    known_traits = (
        None
        if traits is None
        else traits | IDENTITY_TRAITS | set(PROPENSITY_TRAITS) | set(VALUE_TRAITS)
    )
    for spec in segments:
        if spec.condition is None:
            continue
        for part in walk(spec.condition):
            problems.extend(
                _part_problems(
                    spec.name, part, by_name, event_types, stages, journeys, known_traits
                )
            )
        problems.extend(_contradictions(spec.name, spec.condition))
    try:
        evaluation_order(by_name)
    except SegmentCycle as exc:
        problems.append(
            SegmentProblem(
                exc.cycle[0],
                f"segments reference each other in a cycle ({' -> '.join(exc.cycle)})",
                "remove one in_segment reference so the segments no longer depend on each other",
            )
        )
    return problems


def _part_problems(
    name: str,
    part: Condition,
    by_name: Mapping[str, SegmentSpec],
    event_types: frozenset[str],
    stages: frozenset[str],
    journeys: frozenset[str],
    traits: frozenset[str] | None,
) -> list[SegmentProblem]:
    found: list[SegmentProblem] = []
    for kind in sorted(part.event_types()):
        if kind not in event_types and kind not in SEGMENT_EVENTS:
            found.append(
                SegmentProblem(
                    name,
                    f"event {kind!r} is not in the project's EventCatalog"
                    + _closest(kind, event_types),
                    "add the event to the EventCatalog, or correct its name",
                )
            )
    if isinstance(part, StageIn | StageAtLeast):
        named = part.stages if isinstance(part, StageIn) else (part.stage,)
        for stage in named:
            if stage not in stages:
                found.append(
                    SegmentProblem(
                        name,
                        f"stage {stage!r} is not in the pipeline{_closest(stage, stages)}",
                        "use one of the pipeline's stages: " + ", ".join(sorted(stages)),
                    )
                )
    if isinstance(part, InSegment) and part.segment not in by_name:
        found.append(
            SegmentProblem(
                name,
                f"in_segment names segment {part.segment!r}, which is not defined"
                f"{_closest(part.segment, by_name)}",
                "define that segment in the project, or correct the name",
            )
        )
    if isinstance(part, InSegment) and part.segment == name:
        found.append(
            SegmentProblem(name, "the segment references itself", "remove in_segment of itself")
        )
    if isinstance(part, InJourney) and part.journey not in journeys:
        found.append(
            SegmentProblem(
                name,
                f"in_journey names journey {part.journey!r}, which is not defined"
                f"{_closest(part.journey, journeys)}",
                "correct the journey's name",
            )
        )
    if traits is not None and isinstance(part, AttributeMatches | AttributeDate):
        path = part.filter.path if isinstance(part, AttributeMatches) else part.path
        root = path.split(".")[0]
        if root not in traits:
            found.append(
                SegmentProblem(
                    name,
                    f"trait {root!r} is not declared{_closest(root, traits)}",
                    "add it to Definitions(traits=[...]), or correct its name",
                )
            )
    return found


def _contradictions(name: str, condition: Condition) -> list[SegmentProblem]:
    """Conditions that can never hold, beyond what each part refuses on construction:
    a conjunction of disjoint stage sets, or of a condition and its negation."""
    found: list[SegmentProblem] = []
    for part in walk(condition):
        if not isinstance(part, AllOf):
            continue
        stage_sets = [set(c.stages) for c in part.conditions if isinstance(c, StageIn)]
        if len(stage_sets) > 1 and not set.intersection(*stage_sets):
            found.append(
                SegmentProblem(
                    name,
                    "all_of requires stages that cannot hold together ("
                    + " and ".join(repr(sorted(s)) for s in stage_sets)
                    + ")",
                    "use any_of for 'either stage', or one stage_in",
                )
            )
        plain = {c.to_dict().__repr__() for c in part.conditions}
        for c in part.conditions:
            if c.kind == "not" and c.children() and repr(c.children()[0].to_dict()) in plain:
                found.append(
                    SegmentProblem(
                        name,
                        "all_of requires a condition and its negation, so it can never hold",
                        "remove one of the two",
                    )
                )
                break
    return found


__all__ = [
    "IDENTITY_TRAITS",
    "LIST_ADDED",
    "LIST_EVENTS",
    "LIST_REMOVED",
    "MANUAL_VERSION",
    "MEMBERSHIP",
    "SEGMENT_ENTERED",
    "SEGMENT_EVENTS",
    "SEGMENT_EXITED",
    "SYSTEM_EVENTS",
    "Change",
    "Decision",
    "Membership",
    "Segment",
    "SegmentCycle",
    "SegmentError",
    "SegmentProblem",
    "SegmentSpec",
    "SegmentTransition",
    "adopt",
    "decide",
    "evaluation_order",
    "event_types",
    "next_due",
    "references",
    "segment_entered",
    "segment_exited",
    "segment_problems",
    "transition_event",
    "walk",
]
