"""Predicates over what a contact is and did: one algebra for every rule in Stagecoach.

Pipeline stage rules, the MQL definition, journey branches, journey waits and global exit
criteria all ask the same kind of question ("did this contact download the whitepaper in
the last 14 days?", "is the grade at least B?"). They share this module so that a
condition means the same thing wherever a marketer writes it, serialises to the same JSON
in a journey spec, and reports the same event types to the ingestion filter.

Pure: no I/O, no clock. The caller supplies ``Facts.now``.

    cond = event("pricing.viewed", within=timedelta(days=7)) & grade_at_least("B")
    cond.evaluate(facts)              # -> bool
    condition_from_dict(cond.to_dict()) == cond
    cond.event_types()                # -> frozenset({"pricing.viewed"})
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypeAlias

from stagecoach.engine.domain import serial

GRADES: tuple[str, ...] = ("A", "B", "C", "D")
"""Fit grades, best first."""

Op: TypeAlias = Literal["eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "contains", "exists"]
_MISSING = object()


class ConditionError(ValueError):
    """A condition is malformed; the message names the field and the fix."""


@dataclass(frozen=True)
class EventRecord(serial.Record):
    """One observed behaviour, as rules see it."""

    type: str
    at: datetime
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Facts:
    """Everything a condition may look at, at one instant."""

    now: datetime
    stage: str = ""
    score: float = 0.0
    grade: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()
    events: Sequence[EventRecord] = ()


def _lookup(data: Mapping[str, Any], path: str) -> Any:
    """Follow a dotted path (``plan.tier``) into nested mappings."""
    current: Any = data
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return _MISSING
        current = current[part]
    return current


def _compare(op: Op, actual: Any, expected: Any) -> bool:
    if op == "exists":
        return (actual is not _MISSING) == bool(expected)
    if actual is _MISSING:
        return op in ("ne", "not_in")
    try:
        if op == "in":
            return actual in expected
        if op == "not_in":
            return actual not in expected
        if op == "contains":
            return isinstance(actual, str | list | tuple | set | frozenset) and expected in actual
    except TypeError:
        # 5 in "abc", or an unhashable value in a set: a type mismatch is a non-match.
        return False
    ordered: dict[str, Callable[[Any, Any], bool]] = {
        "eq": operator.eq,
        "ne": operator.ne,
        "gt": operator.gt,
        "gte": operator.ge,
        "lt": operator.lt,
        "lte": operator.le,
    }
    try:
        return ordered[op](actual, expected)
    except TypeError:
        # "score" > "abc": a type mismatch is a non-match, never a crash at 3 a.m.
        return False


_OPS: frozenset[str] = frozenset(Op.__args__)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class PropertyFilter(serial.Record):
    """``path op value`` against an event's properties or a contact's attributes."""

    path: str
    op: Op = "eq"
    value: Any = True

    def __post_init__(self) -> None:
        if not self.path:
            raise ConditionError("filter.path is empty; name a property such as 'plan'")
        if self.op not in _OPS:
            raise ConditionError(
                f"filter.op {self.op!r} is unknown; use one of {', '.join(sorted(_OPS))}"
            )
        if self.op in ("in", "not_in") and not isinstance(self.value, list | tuple | frozenset):
            raise ConditionError(f"filter {self.path!r}: op {self.op!r} needs a list value")
        if isinstance(self.value, list):
            object.__setattr__(self, "value", tuple(self.value))
        elif isinstance(self.value, frozenset):
            # A frozenset's iteration order varies between processes, which would make the
            # JSON form (and every content hash over it) unstable and break the round trip.
            object.__setattr__(self, "value", tuple(sorted(self.value, key=repr)))

    def matches(self, data: Mapping[str, Any]) -> bool:
        return _compare(self.op, _lookup(data, self.path), self.value)


@dataclass(frozen=True)
class EventMatcher(serial.Record):
    """Which events count: a type plus property filters. Journey waits use it directly."""

    type: str
    where: tuple[PropertyFilter, ...] = ()

    def __post_init__(self) -> None:
        if not self.type:
            raise ConditionError("event type is empty; name one such as 'whitepaper.downloaded'")

    def matches(self, record: EventRecord) -> bool:
        return record.type == self.type and all(f.matches(record.properties) for f in self.where)


class Condition(serial.Record):
    """Base of the algebra. Combine with ``&``, ``|`` and ``~``."""

    kind: str = ""

    def evaluate(self, facts: Facts) -> bool:
        raise NotImplementedError

    def event_types(self) -> frozenset[str]:
        """Event types this condition can react to: the ingestion filter's input."""
        return frozenset()

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``kind`` first, then the fields (a few kinds flatten a part)."""
        return {"kind": self.kind, **serial.encode(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Condition:
        """Rebuild any condition from its JSON form (see :func:`condition_from_dict`)."""
        return condition_from_dict(data)

    def __and__(self, other: Condition) -> Condition:
        return AllOf((self, other))

    def __or__(self, other: Condition) -> Condition:
        return AnyOf((self, other))

    def __invert__(self) -> Condition:
        return Not(self)


@dataclass(frozen=True)
class EventOccurred(Condition):
    """At least ``count`` matching events, optionally within a window ending now."""

    matcher: EventMatcher
    within: timedelta | None = None
    count: int = 1
    kind = "event"

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConditionError(f"event {self.matcher.type!r}: count must be at least 1")
        if self.within is not None and self.within <= timedelta(0):
            raise ConditionError(f"event {self.matcher.type!r}: within must be positive")

    def evaluate(self, facts: Facts) -> bool:
        now = facts.now
        since = now - self.within if self.within is not None else None
        wanted, where = self.matcher.type, self.matcher.where
        hits = 0
        # Stage rules, MQL and journey exits run this over the contact's whole event window
        # (up to 200) on every event: the type test comes first, inline, because it rules
        # out almost every record; the result is the matcher's.
        for record in facts.events:
            if record.type != wanted:
                continue
            # Events after `now` have not happened yet as far as this evaluation knows, with
            # or without a window (replays and the simulator pass whole histories).
            if record.at > now or (since is not None and record.at < since):
                continue
            if not where or all(f.matches(record.properties) for f in where):
                hits += 1
                if hits >= self.count:
                    return True
        return False

    def event_types(self) -> frozenset[str]:
        return frozenset({self.matcher.type})

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            **self.matcher.to_dict(),
            "within_seconds": None if self.within is None else self.within.total_seconds(),
            "count": self.count,
        }


@dataclass(frozen=True)
class ScoreAtLeast(Condition):
    points: float
    kind = "score_at_least"

    def evaluate(self, facts: Facts) -> bool:
        return facts.score >= self.points


def grade_rank(grade: str | None) -> int:
    """0 for A (best) up to 3 for D; an ungraded contact ranks below D."""
    return GRADES.index(grade) if grade in GRADES else len(GRADES)


@dataclass(frozen=True)
class GradeAtLeast(Condition):
    grade: str
    kind = "grade_at_least"

    def __post_init__(self) -> None:
        if self.grade not in GRADES:
            raise ConditionError(f"grade {self.grade!r} is unknown; use one of {GRADES}")

    def evaluate(self, facts: Facts) -> bool:
        return grade_rank(facts.grade) <= grade_rank(self.grade)


@dataclass(frozen=True)
class StageIn(Condition):
    stages: tuple[str, ...]
    kind = "stage_in"

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConditionError("stage_in needs at least one stage name")

    def evaluate(self, facts: Facts) -> bool:
        return facts.stage in self.stages


@dataclass(frozen=True)
class AttributeMatches(Condition):
    """A contact attribute (trait) test: ``industry eq "manufacturing"``."""

    filter: PropertyFilter
    kind = "attribute"

    def evaluate(self, facts: Facts) -> bool:
        return self.filter.matches(facts.attributes)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.filter.to_dict()}


@dataclass(frozen=True)
class HasTag(Condition):
    tag: str
    kind = "has_tag"

    def evaluate(self, facts: Facts) -> bool:
        return self.tag in facts.tags


@dataclass(frozen=True)
class AllOf(Condition):
    conditions: tuple[Condition, ...]
    kind = "all"

    def evaluate(self, facts: Facts) -> bool:
        return all(c.evaluate(facts) for c in self.conditions)

    def event_types(self) -> frozenset[str]:
        return frozenset().union(*(c.event_types() for c in self.conditions))


@dataclass(frozen=True)
class AnyOf(Condition):
    conditions: tuple[Condition, ...]
    kind = "any"

    def evaluate(self, facts: Facts) -> bool:
        return any(c.evaluate(facts) for c in self.conditions)

    def event_types(self) -> frozenset[str]:
        return frozenset().union(*(c.event_types() for c in self.conditions))


@dataclass(frozen=True)
class Not(Condition):
    condition: Condition
    kind = "not"

    def evaluate(self, facts: Facts) -> bool:
        return not self.condition.evaluate(facts)

    def event_types(self) -> frozenset[str]:
        return self.condition.event_types()


@dataclass(frozen=True)
class Always(Condition):
    kind = "always"

    def evaluate(self, facts: Facts) -> bool:
        return True


def _filters(raw: Any) -> tuple[PropertyFilter, ...]:
    if raw is None:
        return ()
    if isinstance(raw, Mapping):  # shorthand: {"plan": "pro"} means plan eq "pro"
        return tuple(PropertyFilter(path=k, value=v) for k, v in raw.items())
    return tuple(f if isinstance(f, PropertyFilter) else PropertyFilter.from_dict(f) for f in raw)


# Builders: what marketers write.
def event(
    type: str,
    *,
    where: Mapping[str, Any] | Sequence[PropertyFilter] | None = None,
    within: timedelta | None = None,
    count: int = 1,
) -> EventOccurred:
    return EventOccurred(EventMatcher(type, _filters(where)), within=within, count=count)


def score_at_least(points: float) -> ScoreAtLeast:
    return ScoreAtLeast(points)


def grade_at_least(grade: str) -> GradeAtLeast:
    return GradeAtLeast(grade)


def stage_in(*stages: str) -> StageIn:
    return StageIn(tuple(stages))


def attribute(path: str, op: Op = "eq", value: Any = True) -> AttributeMatches:
    return AttributeMatches(PropertyFilter(path, op, value))


def has_tag(tag: str) -> HasTag:
    return HasTag(tag)


def all_of(*conditions: Condition) -> AllOf:
    return AllOf(tuple(conditions))


def any_of(*conditions: Condition) -> AnyOf:
    return AnyOf(tuple(conditions))


_PLAIN_KINDS: dict[str, type[Condition]] = {
    c.kind: c for c in (ScoreAtLeast, GradeAtLeast, StageIn, HasTag, AllOf, AnyOf, Not, Always)
}
"""Kinds whose JSON form is ``kind`` plus their fields (``event`` and ``attribute`` flatten
their matcher or filter into it)."""


def condition_from_dict(data: Mapping[str, Any]) -> Condition:
    """Rebuild a condition from its JSON form; unknown kinds are a named error."""
    kind = data.get("kind")
    try:
        if kind == "event":
            within = data.get("within_seconds")
            return EventOccurred(
                EventMatcher.from_dict(data),
                within=None if within is None else timedelta(seconds=within),
                count=int(data.get("count", 1)),
            )
        if kind == "attribute":
            return AttributeMatches(PropertyFilter.from_dict(data))
        plain = _PLAIN_KINDS.get(kind) if isinstance(kind, str) else None
        if plain is not None:
            return serial.decode(plain, data)
    except KeyError as exc:
        missing = exc.args[0]
        raise ConditionError(f"condition of kind {kind!r} is missing field {missing!r}") from exc
    raise ConditionError(
        f"condition kind {kind!r} is unknown; use one of event, score_at_least, grade_at_least,"
        " stage_in, attribute, has_tag, all, any, not, always"
    )
