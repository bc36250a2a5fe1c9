"""Tools around a compiled spec, for people: a Mermaid drawing, a version diff, and the
readable wording of durations, conditions and event filters both of them (and the CLI's
outline) use."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from stagecoach.engine.domain.conditions import (
    AllOf,
    Always,
    AnyOf,
    AttributeMatches,
    Condition,
    EventMatcher,
    EventOccurred,
    GradeAtLeast,
    HasTag,
    Not,
    PropertyFilter,
    ScoreAtLeast,
    StageIn,
    condition_from_dict,
)

from ._errors import SpecFormatError
from ._spec import JourneySpec
from ._steps import (
    END,
    EXIT_PREFIX,
    BranchStep,
    EventEntry,
    NextBestItem,
    NoChannel,
    SendStep,
    StageEntered,
    Step,
    WaitForEventStep,
    entry_from_dict,
)


def human_duration(delta: timedelta) -> str:
    """``30d``, ``3h32m10s``, ``0``: a duration as people read it, largest unit first."""
    seconds = int(delta.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0"


_OPS = {
    "eq": "=",
    "ne": "!=",
    "gt": ">",
    "gte": ">=",
    "lt": "<",
    "lte": "<=",
    "in": "in",
    "not_in": "not in",
    "contains": "contains",
}


def _value(value: Any) -> str:
    # Text in single quotes, as the outline and set_attribute always showed it, and which
    # a Mermaid label carries without escapes; numbers, booleans and lists as JSON has them.
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False, default=str)


def describe_filter(f: PropertyFilter) -> str:
    """``kind = 'whitepaper'``, ``score >= 7``, ``plan exists``: one property test."""
    if f.op == "exists":
        return f"{f.path} {'exists' if f.value else 'is missing'}"
    return f"{f.path} {_OPS.get(f.op, f.op)} {_value(f.value)}"


def describe_matcher(matcher: EventMatcher) -> str:
    """``content.downloaded[kind = 'whitepaper']``: an event type and its property filters."""
    if not matcher.where:
        return matcher.type
    return f"{matcher.type}[{' and '.join(describe_filter(f) for f in matcher.where)}]"


def describe_condition(condition: Condition) -> str:
    """A condition as a marketer reads it: ``score >= 60``, ``event content.downloaded
    within 7d``, ``stage in customer or (has tag vip and score >= 60)``."""
    return _describe(condition, top=True)


def _describe(condition: Condition, *, top: bool = False) -> str:
    if isinstance(condition, AllOf | AnyOf):
        kind = type(condition)
        joiner = " and " if kind is AllOf else " or "
        # (a or b) or c reads as a or b or c: flatten nested groups of the same kind.
        flat: list[Condition] = []
        todo = list(condition.conditions)
        while todo:
            part = todo.pop(0)
            if type(part) is kind:
                todo[:0] = part.conditions
            else:
                flat.append(part)
        parts = [_describe(c) for c in flat]
        # Parentheses only where a group sits inside another condition.
        return joiner.join(parts) if top or len(parts) == 1 else "(" + joiner.join(parts) + ")"
    if isinstance(condition, Not):
        return f"not {_describe(condition.condition)}"
    if isinstance(condition, EventOccurred):
        text = f"event {describe_matcher(condition.matcher)}"
        if condition.count > 1:
            text += f" at least {condition.count} times"
        if condition.within is not None:
            text += f" within {human_duration(condition.within)}"
        return text
    if isinstance(condition, StageIn):
        return "stage in " + ", ".join(condition.stages)
    if isinstance(condition, ScoreAtLeast):
        return f"score >= {condition.points:g}"
    if isinstance(condition, GradeAtLeast):
        return f"grade >= {condition.grade}"
    if isinstance(condition, AttributeMatches):
        return describe_filter(condition.filter)
    if isinstance(condition, HasTag):
        return f"has tag {condition.tag}"
    if isinstance(condition, Always):
        return "always"
    return json.dumps(condition.to_dict(), ensure_ascii=False, sort_keys=True, default=str)


def describe_target(target: str) -> str:
    """``end``, ``exit (cold)`` or the step id a transition leads to."""
    if target == END:
        return "end"
    if target.startswith(EXIT_PREFIX):
        return f"exit ({target[len(EXIT_PREFIX) :]})"
    return target


def describe_selector(selector: NextBestItem) -> str:
    """``next best item (case_study or whitepaper, tagged manufacturing)``."""
    parts = []
    if selector.kinds:
        parts.append(" or ".join(selector.kinds))
    if selector.stage:
        parts.append(f"for stage {selector.stage}")
    if selector.tags:
        parts.append("tagged " + " and ".join(selector.tags))
    if not selector.exclude_consumed:
        parts.append("even if already received")
    return "next best item" + (f" ({', '.join(parts)})" if parts else "")


def describe_step(step: Step) -> str:
    """A step's summary with what decides its way on: a branch's condition, a wait's
    events, their property filters and its timeout."""
    if isinstance(step, BranchStep):
        return f"branch if {describe_condition(step.condition)}"
    if isinstance(step, SendStep) and isinstance(step.content, NextBestItem):
        return f"send {describe_selector(step.content)} via {step.channel}"
    if isinstance(step, WaitForEventStep):
        events = " or ".join(describe_matcher(m) for m in step.matchers)
        limit = "" if step.timeout is None else f" up to {human_duration(step.timeout)}"
        since = "" if step.since is None else f", counting those since {step.since}"
        return f"wait{limit} for {events}{since}"
    return step.summary()


def describe_entry(spec: JourneySpec) -> str:
    """``stage suspect or event page.viewed[category = 'pricing']``: what enrols contacts."""
    return _triggers(spec.entry)


def _triggers(triggers: Iterable[StageEntered | EventEntry]) -> str:
    return " or ".join(
        f"stage {t.stage}"
        if isinstance(t, StageEntered)
        else f"event {describe_matcher(t.matcher)}"
        for t in triggers
    )


def _node_ids(spec: JourneySpec) -> dict[str, str]:
    """Mermaid-safe node id per step id and terminal target; unique even when ids differ
    only in punctuation (``a-b`` and ``a_b``)."""
    targets = [s.id for s in spec.steps] + [t for s in spec.steps for _, t in s.edges()]
    out: dict[str, str] = {}
    for target in targets:
        if target in out:
            continue
        if target == END:
            base = "end_"
        elif target.startswith(EXIT_PREFIX):
            base = "exit_" + re.sub(r"\W", "_", target[len(EXIT_PREFIX) :])
        else:
            base = "s_" + re.sub(r"\W", "_", target)
        candidate, n = base, 1
        while candidate in out.values():
            n += 1
            candidate = f"{base}_{n}"
        out[target] = candidate
    return out


def _label(text: str) -> str:
    # Mermaid labels are quoted; quotes and pipes would end them early, and a line break
    # (a tag or a filter value may hold one) would end the statement.
    flat = " ".join(text.splitlines())
    return flat.replace('"', "#quot;").replace("|", "#124;")


def to_mermaid(spec: JourneySpec) -> str:
    """Draw the journey as a Mermaid ``flowchart TD`` with labelled edges.

    Each step is a node labelled ``<id>: <what it does>``, where a branch names its
    condition and a wait for events names the events, their property filters and the
    timeout; ``END`` and ``exit_to`` targets are rounded terminal nodes; the entry
    triggers feed the first step; the journey's goal and exit criteria, which can end an
    enrolment whenever they hold, stand beside the flow as notes.
    """
    node = _node_ids(spec)
    lines = ["flowchart TD"]
    lines.append(f'    entry(["{_label(spec.name + " entry: " + describe_entry(spec))}"])')
    terminals: dict[str, str] = {}
    for s in spec.steps:
        shape = ('{"', '"}') if s.kind in ("branch", "split") else ('["', '"]')
        if s.kind in ("goal", "exit"):
            shape = ('(["', '"])')
        lines.append(f"    {node[s.id]}{shape[0]}{_label(f'{s.id}: {describe_step(s)}')}{shape[1]}")
        for _, target in s.edges():
            if target == END:
                terminals[target] = "end"
            elif target.startswith(EXIT_PREFIX):
                terminals[target] = f"exit: {target[len(EXIT_PREFIX) :]}"
    for target, text in terminals.items():
        lines.append(f'    {node[target]}(["{_label(text)}"])')
    # Step node ids start with s_, end_ or exit_, so these two never collide with one.
    if spec.goal is not None:
        text = f"goal: {describe_condition(spec.goal)}; completes the journey whenever it holds"
        lines.append(f'    journey_goal["{_label(text)}"]')
    if spec.exit_when is not None:
        text = (
            f"exit when: {describe_condition(spec.exit_when)}; leaves the journey whenever it holds"
        )
        lines.append(f'    journey_exit_when["{_label(text)}"]')
    lines.append(f"    entry --> {node[spec.start]}")
    for s in spec.steps:
        for label, target in s.edges():
            arrow = f"-->|{_label(label)}|" if label and label != "next" else "-->"
            lines.append(f"    {node[s.id]} {arrow} {node[target]}")
    return "\n".join(lines) + "\n"


_TARGETS = frozenset({"next", "then", "else", "on_timeout", "on_failure", "target"})
_LABELS = {"duration_seconds": "wait", "timeout_seconds": "timeout", "matchers": "events"}


def _field_label(key: str) -> str:
    return _LABELS.get(key, key.removesuffix("_seconds"))


def describe_value(key: str, value: Any) -> str:
    """A spec field's JSON value (``key`` names the field) as people read it: durations in
    days and hours, conditions and event filters in words, targets by name.

    Args:
        key: The field's name in the spec's JSON form, e.g. ``duration_seconds``, ``goal``.
        value: Its value there, e.g. ``172800.0``.
    """
    if value is None:
        return "the journey's default" if key == "on_no_channel" else "none"
    try:
        if key.endswith("_seconds") and isinstance(value, int | float):
            return human_duration(timedelta(seconds=value))
        if key in ("condition", "goal", "exit_when"):
            return describe_condition(condition_from_dict(value))
        if key == "matchers":
            return " or ".join(describe_matcher(EventMatcher.from_dict(m)) for m in value)
        if key in _TARGETS and isinstance(value, str):
            return describe_target(value)
        if key == "entry":
            return _triggers(entry_from_dict(t) for t in value)
        if key == "reentry":
            cooldown = value.get("cooldown_seconds")
            if value.get("policy") == "cooldown" and cooldown is not None:
                return f"after {human_duration(timedelta(seconds=cooldown))}"
            return str(value.get("policy"))
        if key == "on_no_channel":
            return NoChannel.from_dict(value).summary()
        if key == "branches":
            total = sum(b["weight"] for b in value) or 1.0
            return ", ".join(
                f"{b.get('label') + ' ' if b.get('label') else ''}{100 * b['weight'] / total:g}%"
                f" -> {describe_target(b['target'])}"
                for b in value
            )
        if key == "content" and isinstance(value, Mapping) and "next_best" in value:
            return describe_selector(NextBestItem.from_dict(value["next_best"]))
        if key == "locales":
            return ", ".join(value)
        if key == "at" and isinstance(value, str):
            return f"{value[:5]} local"
        # Ids and names read best bare; a set_attribute value keeps its JSON spelling
        # (7 and "7" differ), and free text or an empty string its quotes.
        if isinstance(value, str) and value and key not in ("value", "description"):
            return value
    except (KeyError, TypeError, ValueError, AttributeError, SpecFormatError):
        pass  # a malformed stored value is shown as it is, not hidden behind an error
    return _value(value)


@dataclass(frozen=True)
class StepChange:
    """One changed step: its id and the fields that differ (old, new)."""

    step_id: str
    fields: tuple[tuple[str, Any, Any], ...]


@dataclass(frozen=True)
class SpecDiff:
    """What changed between two versions of a journey, per step id.

    ``str()`` gives the readable form: durations in days and hours, conditions and event
    filters in words, added and removed steps with what they do.

    Attributes:
        old_version: Version hash of the old spec.
        new_version: Version hash of the new spec.
        added: Step ids only in the new spec.
        removed: Step ids only in the old spec.
        changed: Steps in both whose definition differs; each field's values are as in
            the spec's JSON form (``duration_seconds`` in seconds).
        settings: Journey-level fields that differ (entry, goal, exit_when, ...).
        summaries: What each added or removed step does, by step id.
    """

    old_version: str
    new_version: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[StepChange, ...]
    settings: tuple[tuple[str, Any, Any], ...] = ()
    summaries: tuple[tuple[str, str], ...] = ()

    @property
    def empty(self) -> bool:
        """True when nothing but (possibly) step order changed."""
        return not (self.added or self.removed or self.changed or self.settings)

    def __str__(self) -> str:
        head = f"journey diff {self.old_version[:12]} -> {self.new_version[:12]}"
        if self.empty:
            return f"{head}: no changes"
        summary = dict(self.summaries)

        def change(name: str, old: Any, new: Any) -> str:
            return (
                f"{_field_label(name)}: {describe_value(name, old)} -> {describe_value(name, new)}"
            )

        def step(sid: str) -> str:
            return f"{sid}: {summary[sid]}" if sid in summary else sid

        lines = [head]
        lines += [f"  ~ {change(name, old, new)}" for name, old, new in self.settings]
        lines += [f"  + step {step(sid)}" for sid in self.added]
        lines += [f"  - step {step(sid)}" for sid in self.removed]
        for changed in self.changed:
            lines.append(f"  ~ step {changed.step_id}")
            lines += [f"      {change(name, old, new)}" for name, old, new in changed.fields]
        return "\n".join(lines)


def _fields(step: Step) -> dict[str, Any]:
    return step.to_dict()


def diff_specs(old: JourneySpec, new: JourneySpec) -> SpecDiff:
    """Compare two specs step by step (by id) and at the journey level.

    Args:
        old: The deployed version.
        new: The candidate version.
    """
    old_steps = {s.id: _fields(s) for s in old.steps}
    new_steps = {s.id: _fields(s) for s in new.steps}
    added = tuple(sid for sid in new_steps if sid not in old_steps)
    removed = tuple(sid for sid in old_steps if sid not in new_steps)
    changed = []
    for sid, before in old_steps.items():
        after = new_steps.get(sid)
        if after is None or after == before:
            continue
        keys = sorted(set(before) | set(after))
        changed.append(
            StepChange(
                sid,
                tuple(
                    (k, before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)
                ),
            )
        )
    old_body, new_body = old.to_dict(), new.to_dict()
    settings = tuple(
        (k, old_body.get(k), new_body.get(k))
        for k in (
            "name",
            "description",
            "entry",
            "reentry",
            "exit_when",
            "goal",
            "locales",
            "on_no_channel",
        )
        if old_body.get(k) != new_body.get(k)
    )
    summaries = tuple(
        (s.id, describe_step(s))
        for spec, ids in ((new, added), (old, removed))
        for s in spec.steps
        if s.id in ids
    )
    return SpecDiff(old.version, new.version, added, removed, tuple(changed), settings, summaries)
