"""Engagement score, fit grade and the MQL test: pure functions over timestamps.

Score (how engaged a contact is) and grade (how well the contact fits the ideal customer)
are kept apart on purpose: a student who reads every whitepaper scores high but grades D;
a CIO of a target account who never opens an email grades A but scores low. Sales wants
both, and the MQL definition combines them (``score_at_least(60) & grade_at_least("B")``).

Scoring model
    * Each event is scored by the FIRST :class:`ScoreRule` whose matcher matches it, in
      declaration order (like firewall rules): put specific rules (a pricing page view)
      before general ones (any page view). One event never scores twice.
    * Points may be negative (unsubscribe, bounce, sales rejection).
    * Decay is exponential with a configurable half-life and applied lazily: the state
      stores the value at ``as_of``; :func:`score_at` computes
      ``value * 0.5 ** ((now - as_of) / half_life)`` without mutating anything. Nothing
      polls, no timer fires to decay a score. Negative scores decay towards zero too.
    * Caps bound the absolute points a rule awards, measured when awarded (undecayed):
      ``cap_per_rule`` over the contact's lifetime, ``cap_per_period=(points, period)`` over
      a SLIDING window, i.e. awards with timestamps in ``(event.at - period, event.at]``.
      A sliding window needs no calendar or time zone and cannot be gamed at a window
      boundary. An award that would cross a cap is cut to what is left (``capped=True``).
    * Events may arrive late (``event.at < state.as_of``): their points are decayed to
      ``as_of`` before they are added, which gives exactly the value an in-order delivery
      would have produced. A late event's period cap is checked against the window ending
      at its own timestamp.
    * The state keeps the top contributing events (``top_n``, default 10), ranked by their
      current decayed value. Because every contribution decays at the same rate the ranking
      never changes with time, so it can be maintained incrementally.

Grading model
    Additive fit points: every :class:`GradeRule` whose condition holds adds its points
    (negative allowed); the sum is compared with thresholds for A, B and C, best first;
    anything below C is D. :class:`GradeResult` lists the rules that matched, so sales sees
    the grade with the reasons behind it.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from stagecoach.engine.domain import serial
from stagecoach.engine.domain.conditions import (
    GRADES,
    Condition,
    EventMatcher,
    EventRecord,
    Facts,
)

# Reference instant for the time-invariant ranking key of contributions (see _rank_key).
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


class ScoringError(ValueError):
    """A scoring or grading model, or a score state, is malformed; the message says the fix."""


def _aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ScoringError(
            f"{what} {value.isoformat()} has no time zone; pass an aware datetime"
            " (workflow.now() is UTC-aware)"
        )


# A rule's cap_per_period, (points, period), is stored as {"points": ..., "seconds": ...}.
serial.register(
    tuple[float, timedelta],
    lambda cap: {"points": cap[0], "seconds": cap[1].total_seconds()},
    lambda raw: (float(raw["points"]), timedelta(seconds=raw["seconds"])),
)


@dataclass(frozen=True)
class ScoreRule(serial.Record):
    """Points for events that match.

    Attributes:
        name: Unique within the model; shown in score changes and handoffs.
        matcher: Which events the rule scores (type plus property filters).
        points: Points per matching event; negative takes points away.
        cap_per_rule: Most absolute points this rule may award over a contact's lifetime.
        cap_per_period: ``(points, period)``: most absolute points within any sliding
            window of length ``period``.
    """

    name: str
    matcher: EventMatcher
    points: float
    cap_per_rule: float | None = None
    cap_per_period: tuple[float, timedelta] | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ScoringError(
                f"score rule for {self.matcher.type!r} has no name; name it, e.g. 'downloads'"
            )
        if self.points == 0:
            raise ScoringError(
                f"score rule {self.name!r} awards 0 points; give it points or remove it"
            )
        if self.cap_per_rule is not None and self.cap_per_rule <= 0:
            raise ScoringError(
                f"score rule {self.name!r}: cap_per_rule must be positive (it caps absolute"
                " points, also for negative rules); use None for no cap"
            )
        if self.cap_per_period is not None:
            cap, period = self.cap_per_period
            if cap <= 0 or period <= timedelta(0):
                raise ScoringError(
                    f"score rule {self.name!r}: cap_per_period needs positive points and a"
                    " positive period, e.g. (30, timedelta(days=7))"
                )


# Older definitions may lack "rules" and "half_life_seconds" (then: no decay).
@serial.fields(rename={"half_life": "half_life_seconds"}, missing={"rules": (), "half_life": None})
@dataclass(frozen=True)
class ScoringModel(serial.Record):
    """The engagement scoring rules of a pipeline.

    Attributes:
        rules: Tried in order; the first match scores the event.
        half_life: Time for a score to halve; ``None`` turns decay off.
        top_n: How many top contributing events a state remembers.
    """

    rules: tuple[ScoreRule, ...]
    half_life: timedelta | None = timedelta(days=30)
    top_n: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ScoringError(f"score rule name {rule.name!r} is used twice; rename one")
            seen.add(rule.name)
        if self.half_life is not None and self.half_life <= timedelta(0):
            raise ScoringError("half_life must be positive, e.g. timedelta(days=30), or None")
        if self.top_n < 0:
            raise ScoringError("top_n must be 0 or more")

    def rule_for(self, record: EventRecord) -> ScoreRule | None:
        """The rule that scores ``record``: the first whose matcher matches, or ``None``."""
        return next((r for r in self.rules if r.matcher.matches(record)), None)

    def event_types(self) -> frozenset[str]:
        """Event types any rule scores."""
        return frozenset(r.matcher.type for r in self.rules)

    def decay_factor(self, elapsed: timedelta) -> float:
        """Multiplier for a value ``elapsed`` old: ``0.5 ** (elapsed / half_life)``."""
        if self.half_life is None or elapsed <= timedelta(0):
            return 1.0
        return float(0.5 ** (elapsed / self.half_life))


@dataclass(frozen=True)
class Contribution(serial.Record):
    """One scored event, as remembered for "score with its top contributing events"."""

    rule: str
    event_type: str
    at: datetime
    points: float


@dataclass(frozen=True)
class ScoreState(serial.Record):
    """A contact's score, as of its last scored event. Immutable; functions return new ones.

    Attributes:
        value: Score at ``as_of`` (decay up to ``as_of`` already applied).
        as_of: Instant of the latest scored event; ``None`` before the first.
        per_rule_totals: Absolute points each rule has awarded, lifetime (for cap_per_rule).
        per_rule_window: Recent awards ``(at, absolute points)`` per rule that has a period
            cap, oldest first, pruned to the period (for cap_per_period).
        top: Top contributing events, best first.
    """

    value: float = 0.0
    as_of: datetime | None = None
    per_rule_totals: Mapping[str, float] = field(default_factory=dict)
    per_rule_window: Mapping[str, tuple[tuple[datetime, float], ...]] = field(default_factory=dict)
    top: tuple[Contribution, ...] = ()


@dataclass(frozen=True)
class ScoreChange(serial.Record):
    """What one event did to a score.

    Attributes:
        rule: The rule that matched.
        event_type: The scored event's type.
        at: The event's timestamp.
        points: The rule's nominal points.
        points_awarded: Points actually added (less than nominal when a cap cut it).
        capped: Whether a cap reduced the award.
        value: Score at the new state's ``as_of`` after the award.
    """

    rule: str
    event_type: str
    at: datetime
    points: float
    points_awarded: float
    capped: bool
    value: float


SCORE_DECIMALS = 2
"""Places a score is shown to: ``contact show``, the API, the hand-off payload. Rules that
compare a score with a threshold (stage rules, MQL, journey branches) compare this same
number, so a contact shown at 60.0 is at 60 for ``score_at_least(60)``."""


def shown_score(value: float) -> float:
    """``value`` as shown and as rules compare it: rounded to :data:`SCORE_DECIMALS`.

    Decay is continuous, so a contact whose events add up to exactly 60 is at 59.9999...
    a second later; rounding once, here, for both the display and the rules keeps the two
    from disagreeing at a threshold.
    """
    return round(value, SCORE_DECIMALS)


def score_at(model: ScoringModel, state: ScoreState, now: datetime) -> float:
    """The score at ``now``, decayed from ``state.as_of``; ``state`` is not changed.

    A ``now`` earlier than ``as_of`` (clock skew between event time and workflow time)
    returns the stored value: a score never grows by looking back.
    """
    _aware(now, "now")
    if state.as_of is None:
        return state.value
    return state.value * model.decay_factor(now - state.as_of)


def _rank_key(model: ScoringModel, c: Contribution) -> tuple[float, float, str]:
    # log2 of the decayed value at a fixed reference time. All contributions decay at the
    # same rate, so comparing at _EPOCH orders them exactly as comparing at any "now"
    # would, without overflow for far-apart timestamps.
    seconds = (c.at - _EPOCH).total_seconds()
    grow = 0.0 if model.half_life is None else seconds / model.half_life.total_seconds()
    return (-(math.log2(c.points) + grow), -seconds, c.rule)


def _remember(
    model: ScoringModel, top: Sequence[Contribution], new: Contribution
) -> tuple[Contribution, ...]:
    if new.points <= 0 or model.top_n == 0:
        return tuple(top)
    ranked = sorted((*top, new), key=lambda c: _rank_key(model, c))
    return tuple(ranked[: model.top_n])


def apply_event(
    model: ScoringModel, state: ScoreState, event: EventRecord
) -> tuple[ScoreState, ScoreChange | None]:
    """Score one event.

    Args:
        model: The scoring rules.
        state: The contact's score state before the event.
        event: The event; its ``at`` must be timezone-aware.

    Returns:
        The new state and what changed, or ``(state, None)`` when no rule scores the event
        (the state is returned unchanged: decay is lazy, nothing needs advancing).
    """
    _aware(event.at, f"event {event.type!r} at")
    rule = model.rule_for(event)
    if rule is None:
        return state, None

    wanted = abs(rule.points)
    allowed = wanted
    totals = dict(state.per_rule_totals)
    windows = dict(state.per_rule_window)
    if rule.cap_per_rule is not None:
        allowed = min(allowed, max(0.0, rule.cap_per_rule - totals.get(rule.name, 0.0)))
    recent: tuple[tuple[datetime, float], ...] = ()
    if rule.cap_per_period is not None:
        cap, period = rule.cap_per_period
        start = event.at - period
        in_window = [(at, pts) for at, pts in windows.get(rule.name, ()) if at > start]
        used = sum(pts for at, pts in in_window if at <= event.at)
        allowed = min(allowed, max(0.0, cap - used))
        # Late events can sit before entries newer than them; keep everything still inside a
        # window ending at the newest award, so the state stays bounded by the period.
        recent = tuple(in_window)
    # Float sums of partial awards can leave dust such as 1e-15 under a cap; that is zero.
    awarded_abs = allowed if allowed > 1e-9 else 0.0
    capped = awarded_abs < wanted
    awarded = math.copysign(awarded_abs, rule.points) if awarded_abs > 0 else 0.0

    if awarded_abs > 0:
        totals[rule.name] = totals.get(rule.name, 0.0) + awarded_abs
    if rule.cap_per_period is not None:
        period = rule.cap_per_period[1]
        entries = sorted((*recent, (event.at, awarded_abs)) if awarded_abs > 0 else recent)
        newest = entries[-1][0] if entries else event.at
        windows[rule.name] = tuple(e for e in entries if e[0] > newest - period)

    if state.as_of is None or event.at >= state.as_of:
        base = state.value if state.as_of is None else score_at(model, state, event.at)
        value, as_of = base + awarded, event.at
    else:
        # Late event: its points have already decayed by the time of as_of.
        value = state.value + awarded * model.decay_factor(state.as_of - event.at)
        as_of = state.as_of

    top = state.top
    if awarded > 0:
        top = _remember(model, top, Contribution(rule.name, event.type, event.at, awarded))
    new_state = ScoreState(
        value=value, as_of=as_of, per_rule_totals=totals, per_rule_window=windows, top=top
    )
    change = ScoreChange(
        rule=rule.name,
        event_type=event.type,
        at=event.at,
        points=rule.points,
        points_awarded=awarded,
        capped=capped,
        value=value,
    )
    return new_state, change


def apply_events(
    model: ScoringModel, state: ScoreState, events: Sequence[EventRecord]
) -> tuple[ScoreState, tuple[ScoreChange, ...]]:
    """Score several events in the order given; unscored events produce no change."""
    changes: list[ScoreChange] = []
    for record in events:
        state, change = apply_event(model, state, record)
        if change is not None:
            changes.append(change)
    return state, tuple(changes)


@dataclass(frozen=True)
class TopContribution:
    """A remembered contribution with its value decayed to the time asked about."""

    contribution: Contribution
    current_points: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {**self.contribution.to_dict(), "current_points": self.current_points}


def top_contributions(
    model: ScoringModel, state: ScoreState, now: datetime
) -> tuple[TopContribution, ...]:
    """The top contributing events, best first, with their points decayed to ``now``.

    This is what a handoff shows next to the score.
    """
    _aware(now, "now")
    return tuple(TopContribution(c, c.points * model.decay_factor(now - c.at)) for c in state.top)


# Grading


@dataclass(frozen=True)
class GradeRule(serial.Record):
    """Fit points when a condition over the contact's attributes holds.

    Attributes:
        name: Unique within the model; shown to sales as a reason for the grade.
        when: Usually ``attribute(...)`` conditions combined with ``&``, ``|``, ``~``.
        points: Points added when ``when`` holds; negative allowed.
    """

    name: str
    when: Condition
    points: float

    def __post_init__(self) -> None:
        if not self.name:
            raise ScoringError("grade rule has no name; name it, e.g. 'target_industry'")
        if self.points == 0:
            raise ScoringError(
                f"grade rule {self.name!r} adds 0 points; give it points or remove it"
            )


_DEFAULT_THRESHOLDS: Mapping[str, float] = {"A": 75.0, "B": 50.0, "C": 25.0}


@serial.fields(missing={"matched_rules": ()})
@dataclass(frozen=True)
class GradeResult(serial.Record):
    """A grade with the fit points and the rules that produced it."""

    grade: str
    points: float
    matched_rules: tuple[str, ...]


@serial.fields(missing={"rules": ()})
@dataclass(frozen=True)
class GradingModel(serial.Record):
    """Additive fit grading.

    Attributes:
        rules: Every rule whose condition holds adds its points.
        thresholds: Minimum fit points for ``A``, ``B`` and ``C`` (strictly decreasing);
            anything below the ``C`` threshold is ``D``.
    """

    rules: tuple[GradeRule, ...]
    thresholds: Mapping[str, float] = field(default_factory=lambda: dict(_DEFAULT_THRESHOLDS))

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ScoringError(f"grade rule name {rule.name!r} is used twice; rename one")
            seen.add(rule.name)
        graded = GRADES[:-1]
        if set(self.thresholds) != set(graded):
            raise ScoringError(
                f"grading thresholds must name exactly {', '.join(graded)} (D is everything"
                f" below C); got {sorted(self.thresholds)}"
            )
        values = [float(self.thresholds[g]) for g in graded]
        if any(a <= b for a, b in itertools.pairwise(values)):
            raise ScoringError(
                f"grading thresholds must decrease strictly from A to C; got {values}"
            )
        object.__setattr__(self, "thresholds", {g: float(self.thresholds[g]) for g in graded})

    def event_types(self) -> frozenset[str]:
        """Event types any grade rule looks at (usually none: grades are about attributes)."""
        return frozenset().union(*(r.when.event_types() for r in self.rules))


def grade(model: GradingModel, facts: Facts) -> GradeResult:
    """Grade a contact: sum the points of matching rules and compare with the thresholds."""
    matched = tuple(r for r in model.rules if r.when.evaluate(facts))
    points = float(sum(r.points for r in matched))
    letter = next((g for g in GRADES[:-1] if points >= model.thresholds[g]), GRADES[-1])
    return GradeResult(grade=letter, points=points, matched_rules=tuple(r.name for r in matched))


def grade_attributes(
    model: GradingModel, attributes: Mapping[str, Any], now: datetime
) -> GradeResult:
    """Grade from attributes alone, the usual case: ``Facts(now, attributes=...)``."""
    return grade(model, Facts(now=now, attributes=attributes))


# MQL


@dataclass(frozen=True)
class Mql(serial.Record):
    """The marketing-qualified-lead definition: one condition, e.g. score and grade."""

    condition: Condition

    def is_mql(self, facts: Facts) -> bool:
        """Whether the contact is marketing-qualified at ``facts.now``."""
        return self.condition.evaluate(facts)

    def event_types(self) -> frozenset[str]:
        """Event types the condition looks at."""
        return self.condition.event_types()


def is_mql(mql: Mql, facts: Facts) -> bool:
    """Function form of :meth:`Mql.is_mql`."""
    return mql.is_mql(facts)


def with_score(facts: Facts, model: ScoringModel, state: ScoreState) -> Facts:
    """``facts`` with ``score`` set to the state's score decayed to ``facts.now``."""
    return replace(facts, score=score_at(model, state, facts.now))


# The rules as a reader sees them (docs/scoring.md is generated from this)

_OP_WORDS = {
    "eq": "=",
    "ne": "≠",
    "gt": ">",
    "gte": "≥",
    "lt": "<",
    "lte": "≤",
    "in": "is one of",
    "not_in": "is none of",
}


def _value_words(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(f"`{v}`" for v in value)
    return f"`{value}`"


def _filter_words(data: Mapping[str, Any]) -> str:
    op = str(data.get("op", "eq"))
    return f"`{data['path']}` {_OP_WORDS.get(op, op)} {_value_words(data.get('value', True))}"


def _condition_words(data: Mapping[str, Any]) -> str:
    kind = data.get("kind")
    if kind == "attribute":
        return _filter_words(data)
    if kind in ("all", "any"):
        joiner = " and " if kind == "all" else " or "
        return joiner.join(_condition_words(c) for c in data["conditions"])
    if kind == "not":
        return f"not ({_condition_words(data['condition'])})"
    if kind == "score_at_least":
        return f"score ≥ {data['points']:g}"
    if kind == "grade_at_least":
        return f"grade {data['grade']} or better"
    return f"`{json.dumps(dict(data), sort_keys=True)}`"


def _period_words(period: timedelta) -> str:
    days = period / timedelta(days=1)
    if days == 7:
        return "week"
    if days.is_integer():
        return f"{int(days)} days"
    return str(period)


def _points_words(points: float) -> str:
    return f"{points:+g}"


def rules_table(scoring: ScoringModel, grading: GradingModel, mql: Mql | None = None) -> str:
    """The scoring and grading rules as two Markdown tables: which events score how much
    (in the order they are tried), and which traits add how many fit points; then the
    MQL rule, when given.

    The documentation prints this for the bundled pipelines, and a test regenerates it,
    so the page cannot drift from the rules.
    """
    half_life = _period_words(scoring.half_life) if scoring.half_life else "none"
    lines = [
        f"Engagement score: the first matching rule scores an event; half-life {half_life}.",
        "",
        "| rule | event | where | points | cap |",
        "| --- | --- | --- | --- | --- |",
    ]
    for rule in scoring.rules:
        where = " and ".join(_filter_words(f.to_dict()) for f in rule.matcher.where) or "any"
        caps = []
        if rule.cap_per_rule is not None:
            caps.append(f"{rule.cap_per_rule:g} lifetime")
        if rule.cap_per_period is not None:
            cap, period = rule.cap_per_period
            caps.append(f"{cap:g} per {_period_words(period)}")
        lines.append(
            f"| `{rule.name}` | `{rule.matcher.type}` | {where} | {_points_words(rule.points)}"
            f" | {', '.join(caps) or '-'} |"
        )
    thresholds = ", ".join(f"{g} ≥ {p:g}" for g, p in grading.thresholds.items())
    lines += [
        "",
        f"Fit grade: every matching rule adds its points; {thresholds}, else D.",
        "",
        "| rule | when the contact's traits say | points |",
        "| --- | --- | --- |",
    ]
    for grade_rule in grading.rules:
        lines.append(
            f"| `{grade_rule.name}` | {_condition_words(grade_rule.when.to_dict())}"
            f" | {_points_words(grade_rule.points)} |"
        )
    if mql is not None:
        lines += ["", f"MQL: {_condition_words(mql.condition.to_dict())}."]
    return "\n".join(lines) + "\n"
