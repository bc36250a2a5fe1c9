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

import hashlib
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
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
    """Everything a condition may look at, at one instant.

    The fields after ``events`` serve segments (``stagecoach.engine.domain.segments``);
    callers that build facts by hand may leave them empty.

    Attributes:
        stages: The pipeline's stage names in order (for ``stage_at_least``).
        score_half_life: How fast the score decays, so a condition can say when a
            decaying score crosses its threshold (``None``: no decay).
        consent: Whether each channel may be used, as the contact's consent reads now.
        journeys: Journeys the contact is in now.
        received: Content items the contact has been sent.
        segments: Segments the contact is a member of (as last decided).
        counts: Lifetime counts by event type (beyond the ``events`` window).
        last_seen: The latest occurrence by event type (beyond the ``events`` window).
        contact_id: The contact's id, for stable random buckets.
    """

    now: datetime
    stage: str = ""
    score: float = 0.0
    grade: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()
    events: Sequence[EventRecord] = ()
    stages: tuple[str, ...] = ()
    score_half_life: timedelta | None = None
    consent: Mapping[str, bool] = field(default_factory=dict)
    journeys: frozenset[str] = frozenset()
    received: frozenset[str] = frozenset()
    segments: frozenset[str] = frozenset()
    counts: Mapping[str, int] = field(default_factory=dict)
    last_seen: Mapping[str, datetime] = field(default_factory=dict)
    contact_id: str = ""


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

    def children(self) -> tuple[Condition, ...]:
        """The conditions this one combines (``all``, ``any``, ``not``); none for a leaf."""
        return ()

    def next_change(self, facts: Facts) -> datetime | None:
        """The earliest moment after ``facts.now`` at which this condition could change
        its answer with nothing else happening (an event leaving a window, a date
        coming due, a decaying score crossing a threshold), or ``None``.

        It may be early (the answer is then re-checked and found unchanged), never late:
        segments arm one timer at the earliest such moment instead of polling.
        """
        moments = [m for c in self.children() if (m := c.next_change(facts)) is not None]
        return min(moments) if moments else None

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

    def next_change(self, facts: Facts) -> datetime | None:
        return _window_exit(self.matcher, self.within, facts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            **self.matcher.to_dict(),
            "within_seconds": None if self.within is None else self.within.total_seconds(),
            "count": self.count,
        }


def _window_exit(matcher: EventMatcher, within: timedelta | None, facts: Facts) -> datetime | None:
    """When the oldest matching event inside ``within`` leaves it: the count drops then."""
    if within is None:
        return None
    since = facts.now - within
    exits = [
        record.at + within
        for record in facts.events
        if since <= record.at <= facts.now and matcher.matches(record)
    ]
    return min(exits) if exits else None


@dataclass(frozen=True)
class ScoreAtLeast(Condition):
    points: float
    kind = "score_at_least"

    def evaluate(self, facts: Facts) -> bool:
        return facts.score >= self.points

    def next_change(self, facts: Facts) -> datetime | None:
        return _decay_crossing(facts, self.points)


def _decay_crossing(facts: Facts, threshold: float | None) -> datetime | None:
    """When a score decaying from ``facts.score`` towards zero falls below ``threshold``
    (``score * 0.5 ** (t / half_life) < threshold``); ``None`` if it never will."""
    score, half_life = facts.score, facts.score_half_life
    if threshold is None or half_life is None or score <= 0 or not 0 < threshold <= score:
        return None
    # A second past the computed instant: rounding must not land the check just before it.
    return facts.now + half_life * math.log2(score / threshold) + timedelta(seconds=1)


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

    def children(self) -> tuple[Condition, ...]:
        return self.conditions

    def next_change(self, facts: Facts) -> datetime | None:
        # False now: it turns true only when every false part can turn with time; one
        # that cannot (a stage, a grade) keeps it false until an event, so no moment.
        # True now: any part turning ends it.
        answers = [(c, c.evaluate(facts)) for c in self.conditions]
        deciding = [c for c, held in answers if not held] or [c for c, _ in answers]
        return _earliest(deciding, facts, every=any(not held for _, held in answers))

    def event_types(self) -> frozenset[str]:
        return frozenset().union(*(c.event_types() for c in self.conditions))


@dataclass(frozen=True)
class AnyOf(Condition):
    conditions: tuple[Condition, ...]
    kind = "any"

    def evaluate(self, facts: Facts) -> bool:
        return any(c.evaluate(facts) for c in self.conditions)

    def children(self) -> tuple[Condition, ...]:
        return self.conditions

    def next_change(self, facts: Facts) -> datetime | None:
        # True now: it turns false only when every true part can turn with time. False
        # now: any part turning makes it true.
        answers = [(c, c.evaluate(facts)) for c in self.conditions]
        deciding = [c for c, held in answers if held] or [c for c, _ in answers]
        return _earliest(deciding, facts, every=any(held for _, held in answers))

    def event_types(self) -> frozenset[str]:
        return frozenset().union(*(c.event_types() for c in self.conditions))


def _earliest(parts: Sequence[Condition], facts: Facts, *, every: bool) -> datetime | None:
    """The earliest moment among ``parts``; with ``every``, ``None`` unless each part has
    one (the answer cannot change before all of them can)."""
    moments = [c.next_change(facts) for c in parts]
    known = [m for m in moments if m is not None]
    if not known or (every and len(known) < len(moments)):
        return None
    return min(known)


@dataclass(frozen=True)
class Not(Condition):
    condition: Condition
    kind = "not"

    def evaluate(self, facts: Facts) -> bool:
        return not self.condition.evaluate(facts)

    def children(self) -> tuple[Condition, ...]:
        return (self.condition,)

    def event_types(self) -> frozenset[str]:
        return self.condition.event_types()


@dataclass(frozen=True)
class Always(Condition):
    kind = "always"

    def evaluate(self, facts: Facts) -> bool:
        return True


# --- Segment vocabulary: ranges, counts, recency, consent, journeys, content, buckets ----


@dataclass(frozen=True)
class ScoreBetween(Condition):
    """``minimum <= score < maximum``; either end may be open (``None``)."""

    minimum: float | None = None
    maximum: float | None = None
    kind = "score_between"

    def __post_init__(self) -> None:
        if self.minimum is None and self.maximum is None:
            raise ConditionError("score_between needs a minimum, a maximum or both")
        if (
            self.minimum is not None
            and self.maximum is not None
            and not self.minimum < self.maximum
        ):
            raise ConditionError(
                f"score_between({self.minimum}, {self.maximum}) can never hold: the minimum"
                " must be below the maximum"
            )

    def evaluate(self, facts: Facts) -> bool:
        low = self.minimum is None or facts.score >= self.minimum
        return low and (self.maximum is None or facts.score < self.maximum)

    def next_change(self, facts: Facts) -> datetime | None:
        # Decay moves a score towards zero: it may fall below the minimum, or into range
        # from above the maximum.
        moments = [
            m
            for threshold in (self.minimum, self.maximum)
            if (m := _decay_crossing(facts, threshold)) is not None
        ]
        return min(moments) if moments else None


@dataclass(frozen=True)
class GradeIn(Condition):
    grades: tuple[str, ...]
    kind = "grade_in"

    def __post_init__(self) -> None:
        if not self.grades:
            raise ConditionError("grade_in needs at least one grade, e.g. grade_in('A', 'B')")
        for grade in self.grades:
            if grade not in GRADES:
                raise ConditionError(f"grade {grade!r} is unknown; use one of {GRADES}")

    def evaluate(self, facts: Facts) -> bool:
        return facts.grade in self.grades


@dataclass(frozen=True)
class StageAtLeast(Condition):
    """The contact's stage is ``stage`` or later in the pipeline's order (detour states,
    which are outside the order, do not count)."""

    stage: str
    kind = "stage_at_least"

    def evaluate(self, facts: Facts) -> bool:
        order = facts.stages
        if self.stage not in order or facts.stage not in order:
            return False
        return order.index(facts.stage) >= order.index(self.stage)


Comparison: TypeAlias = Literal["eq", "ne", "gt", "gte", "lt", "lte"]
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


@dataclass(frozen=True)
class Performed(Condition):
    """How many matching events, compared with ``count``: ``performed("page.viewed",
    at_least=3, within=timedelta(days=7))``. Unlike ``event``, it can say "fewer than"
    and "exactly", and "0 times" is a legal count.

    Without a window or filters it counts the contact's whole life (kept per type);
    otherwise it counts what the contact's recent-event window holds (200 events).
    """

    matcher: EventMatcher
    op: Comparison = "gte"
    count: int = 1
    within: timedelta | None = None
    kind = "performed"

    def __post_init__(self) -> None:
        name = self.matcher.type
        if self.op not in _COMPARE:
            raise ConditionError(
                f"performed {name!r}: op {self.op!r} is unknown; use one of {', '.join(_COMPARE)}"
            )
        if self.count < 0:
            raise ConditionError(f"performed {name!r}: count must be 0 or more")
        if self.within is not None and self.within <= timedelta(0):
            raise ConditionError(
                f"performed {name!r}: within={self.within} is an empty window; pass a"
                " positive timedelta such as timedelta(days=30), or no window"
            )
        if (self.op, self.count) == ("lt", 0):
            raise ConditionError(f"performed {name!r}: fewer than 0 times can never hold")

    def tally(self, facts: Facts) -> int:
        if self.within is None and not self.matcher.where:
            lifetime = facts.counts.get(self.matcher.type)
            if lifetime is not None:
                return lifetime
        since = facts.now - self.within if self.within is not None else None
        return sum(
            1
            for record in facts.events
            if record.at <= facts.now
            and (since is None or record.at >= since)
            and self.matcher.matches(record)
        )

    def evaluate(self, facts: Facts) -> bool:
        return _COMPARE[self.op](self.tally(facts), self.count)

    def event_types(self) -> frozenset[str]:
        return frozenset({self.matcher.type})

    def next_change(self, facts: Facts) -> datetime | None:
        return _window_exit(self.matcher, self.within, facts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            **self.matcher.to_dict(),
            "op": self.op,
            "count": self.count,
            "within_seconds": None if self.within is None else self.within.total_seconds(),
        }


LastOp: TypeAlias = Literal["before", "after", "never"]


@dataclass(frozen=True)
class LastPerformed(Condition):
    """When the contact last did something: more than ``age`` ago (``before``), within
    the last ``age`` (``after``), or ``never``."""

    matcher: EventMatcher
    op: LastOp
    age: timedelta | None = None
    kind = "last_performed"

    def __post_init__(self) -> None:
        name = self.matcher.type
        if self.op not in ("before", "after", "never"):
            raise ConditionError(
                f"last_performed {name!r}: op {self.op!r} is unknown; use before, after or never"
            )
        if self.op == "never" and self.age is not None:
            raise ConditionError(f"never_performed {name!r} takes no age")
        if self.op != "never" and (self.age is None or self.age <= timedelta(0)):
            raise ConditionError(
                f"last_performed {name!r}: {self.op}={self.age} is an empty window; pass a"
                " positive timedelta such as timedelta(days=30)"
            )

    def last(self, facts: Facts) -> datetime | None:
        latest: datetime | None = None
        for record in facts.events:
            if (
                record.at <= facts.now
                and (latest is None or record.at > latest)
                and self.matcher.matches(record)
            ):
                latest = record.at
        if not self.matcher.where:
            kept = facts.last_seen.get(self.matcher.type)
            if kept is not None and kept <= facts.now and (latest is None or kept > latest):
                latest = kept
        return latest

    def evaluate(self, facts: Facts) -> bool:
        latest = self.last(facts)
        if self.op == "never":
            return latest is None
        if latest is None or self.age is None:
            return False
        if self.op == "before":
            return latest < facts.now - self.age
        return latest >= facts.now - self.age

    def event_types(self) -> frozenset[str]:
        return frozenset({self.matcher.type})

    def next_change(self, facts: Facts) -> datetime | None:
        latest = self.last(facts)
        if latest is None or self.age is None:
            return None
        due = latest + self.age
        return due if due > facts.now else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            **self.matcher.to_dict(),
            "op": self.op,
            "age_seconds": None if self.age is None else self.age.total_seconds(),
        }


def _as_instant(value: Any) -> datetime | None:
    """A trait read as a moment: a datetime, a date (midnight UTC) or ISO 8601 text."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class AttributeDate(Condition):
    """A date trait against now: ``op`` is ``before`` or ``after``, and the moment is
    ``now + offset`` (negative offsets are in the past). "Signed up over 30 days ago" is
    ``trait_date("signed_up_at", before=-timedelta(days=30))``."""

    path: str
    op: Literal["before", "after"]
    offset: timedelta
    kind = "attribute_date"

    def __post_init__(self) -> None:
        if not self.path:
            raise ConditionError("trait_date: path is empty; name a trait such as 'renewal_on'")
        if self.op not in ("before", "after"):
            raise ConditionError(f"trait_date {self.path!r}: op must be before or after")

    def evaluate(self, facts: Facts) -> bool:
        moment = _as_instant(_lookup(facts.attributes, self.path))
        if moment is None:
            return False
        pivot = facts.now + self.offset
        return moment < pivot if self.op == "before" else moment >= pivot

    def next_change(self, facts: Facts) -> datetime | None:
        moment = _as_instant(_lookup(facts.attributes, self.path))
        if moment is None:
            return None
        due = moment - self.offset
        return due if due > facts.now else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "op": self.op,
            "offset_seconds": self.offset.total_seconds(),
        }


@dataclass(frozen=True)
class Consented(Condition):
    """The contact may be reached on ``channel`` (consent, as the workflow reads it)."""

    channel: str
    kind = "consented"

    def evaluate(self, facts: Facts) -> bool:
        return bool(facts.consent.get(self.channel, False))


@dataclass(frozen=True)
class InJourney(Condition):
    journey: str
    kind = "in_journey"

    def evaluate(self, facts: Facts) -> bool:
        return self.journey in facts.journeys


@dataclass(frozen=True)
class Received(Condition):
    """The contact has been sent this content item (on any channel)."""

    content: str
    kind = "received"

    def evaluate(self, facts: Facts) -> bool:
        return self.content in facts.received


@dataclass(frozen=True)
class InSegment(Condition):
    """The contact is a member of another segment (as last decided)."""

    segment: str
    kind = "in_segment"

    def evaluate(self, facts: Facts) -> bool:
        return self.segment in facts.segments


def bucket_of(contact_id: str, salt: str) -> float:
    """A contact's stable place in [0, 100): the same id and salt give the same number
    in every process, in the workflow and in the backfill's SQL."""
    digest = hashlib.sha256(f"{salt}:{contact_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 / 100


@dataclass(frozen=True)
class RandomBucket(Condition):
    """A stable pseudo-random slice of contacts, ``start <= bucket < stop`` (percent):
    holdouts and test cells that do not reshuffle as contacts change."""

    start: float
    stop: float
    salt: str = ""
    kind = "bucket"

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop <= 100:
            raise ConditionError(
                f"random_bucket({self.start}, {self.stop}) can never hold or is out of range:"
                " use 0 <= start < stop <= 100 (percent)"
            )

    def evaluate(self, facts: Facts) -> bool:
        return self.start <= bucket_of(facts.contact_id, self.salt) < self.stop


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


# Segment builders.
def trait(path: str, op: Op = "eq", value: Any = True) -> AttributeMatches:
    """A trait test, ``trait("industry", "in", ["manufacturing", "energy"])``: the same
    as ``attribute``, under the name segments use."""
    return attribute(path, op, value)


def trait_date(
    path: str, *, before: timedelta | None = None, after: timedelta | None = None
) -> Condition:
    """A date trait against now plus an offset: ``trait_date("renewal_on",
    before=timedelta(days=30))`` is "renews within 30 days or already did";
    ``after=-timedelta(days=7)`` is "on or after a week ago". Both: a range."""
    parts: list[Condition] = []
    if before is not None:
        parts.append(AttributeDate(path, "before", before))
    if after is not None:
        parts.append(AttributeDate(path, "after", after))
    if not parts:
        raise ConditionError(f"trait_date {path!r}: pass before=, after= or both")
    if before is not None and after is not None and not after < before:
        raise ConditionError(
            f"trait_date {path!r}: after={after} is not earlier than before={before}, so it"
            " can never hold; the window runs from after to before"
        )
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def trait_older_than(path: str, age: timedelta) -> AttributeDate:
    """The date in trait ``path`` is more than ``age`` ago."""
    return AttributeDate(path, "before", -age)


def trait_newer_than(path: str, age: timedelta) -> AttributeDate:
    """The date in trait ``path`` is within the last ``age`` (or in the future)."""
    return AttributeDate(path, "after", -age)


def score_between(minimum: float | None = None, maximum: float | None = None) -> ScoreBetween:
    return ScoreBetween(minimum, maximum)


def grade_in(*grades: str) -> GradeIn:
    return GradeIn(tuple(grades))


def stage_at_least(stage: str) -> StageAtLeast:
    return StageAtLeast(stage)


def performed(
    type: str,
    *,
    where: Mapping[str, Any] | Sequence[PropertyFilter] | None = None,
    within: timedelta | None = None,
    at_least: int | None = None,
    at_most: int | None = None,
    exactly: int | None = None,
    more_than: int | None = None,
    fewer_than: int | None = None,
) -> Performed:
    """A count of matching events compared with a number: give one of ``at_least``,
    ``at_most``, ``exactly``, ``more_than`` or ``fewer_than`` (default: at least once)."""
    given = {
        op: n
        for op, n in (
            ("gte", at_least),
            ("lte", at_most),
            ("eq", exactly),
            ("gt", more_than),
            ("lt", fewer_than),
        )
        if n is not None
    }
    if len(given) > 1:
        raise ConditionError(
            f"performed {type!r}: give one of at_least, at_most, exactly, more_than,"
            " fewer_than (combine two with all_of)"
        )
    op, count = next(iter(given.items())) if given else ("gte", 1)
    matcher = EventMatcher(type, _filters(where))
    return Performed(matcher, op=op, count=count, within=within)  # type: ignore[arg-type]


def last_performed(
    type: str,
    *,
    before: timedelta | None = None,
    after: timedelta | None = None,
    where: Mapping[str, Any] | Sequence[PropertyFilter] | None = None,
) -> LastPerformed:
    """The latest matching event is more than ``before`` ago, or within the last
    ``after``; a contact who never did it matches neither (see ``never_performed``)."""
    if (before is None) == (after is None):
        raise ConditionError(
            f"last_performed {type!r}: give exactly one of before= (longer ago than) or"
            " after= (within the last)"
        )
    op: LastOp = "before" if before is not None else "after"
    return LastPerformed(EventMatcher(type, _filters(where)), op, before or after)


def never_performed(
    type: str, *, where: Mapping[str, Any] | Sequence[PropertyFilter] | None = None
) -> LastPerformed:
    return LastPerformed(EventMatcher(type, _filters(where)), "never")


def consented(channel: str) -> Consented:
    return Consented(channel)


def in_journey(journey: str) -> InJourney:
    return InJourney(journey)


def received(content: str) -> Received:
    return Received(content)


def in_segment(segment: str) -> InSegment:
    return InSegment(segment)


def random_bucket(start: float, stop: float, *, salt: str = "") -> RandomBucket:
    """Contacts whose stable bucket is in ``[start, stop)`` percent; change ``salt`` to
    draw a fresh, independent slice."""
    return RandomBucket(start, stop, salt)


_PLAIN_KINDS: dict[str, type[Condition]] = {
    c.kind: c
    for c in (
        ScoreAtLeast,
        GradeAtLeast,
        StageIn,
        HasTag,
        AllOf,
        AnyOf,
        Not,
        Always,
        ScoreBetween,
        GradeIn,
        StageAtLeast,
        Consented,
        InJourney,
        Received,
        InSegment,
        RandomBucket,
    )
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
        if kind == "performed":
            within = data.get("within_seconds")
            return Performed(
                EventMatcher.from_dict(data),
                op=data.get("op", "gte"),
                count=int(data.get("count", 1)),
                within=None if within is None else timedelta(seconds=within),
            )
        if kind == "last_performed":
            age = data.get("age_seconds")
            return LastPerformed(
                EventMatcher.from_dict(data),
                data["op"],
                None if age is None else timedelta(seconds=age),
            )
        if kind == "attribute_date":
            return AttributeDate(
                data["path"], data["op"], timedelta(seconds=data["offset_seconds"])
            )
        plain = _PLAIN_KINDS.get(kind) if isinstance(kind, str) else None
        if plain is not None:
            return serial.decode(plain, data)
    except KeyError as exc:
        missing = exc.args[0]
        raise ConditionError(f"condition of kind {kind!r} is missing field {missing!r}") from exc
    raise ConditionError(
        f"condition kind {kind!r} is unknown; use one of event, performed, last_performed,"
        " score_at_least, score_between, grade_at_least, grade_in, stage_in, stage_at_least,"
        " attribute, attribute_date, has_tag, consented, in_journey, received, in_segment,"
        " bucket, all, any, not, always"
    )
