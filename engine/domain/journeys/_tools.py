"""Tools around a compiled spec: a Mermaid drawing and a version diff."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ._spec import JourneySpec
from ._steps import END, EXIT_PREFIX, EventEntry, StageEntered, Step


def human_duration(delta: timedelta) -> str:
    """``30d``, ``3h32m10s``, ``0``: a duration as people read it, largest unit first."""
    seconds = int(delta.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0"


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
    # Mermaid labels are quoted; quotes and pipes would end them early.
    return text.replace('"', "#quot;").replace("|", "#124;")


def to_mermaid(spec: JourneySpec) -> str:
    """Draw the journey as a Mermaid ``flowchart TD`` with labelled edges.

    Each step is a node labelled ``<id>: <summary>``; ``END`` and ``exit_to`` targets are
    rounded terminal nodes; the entry triggers feed the first step.
    """
    node = _node_ids(spec)
    lines = ["flowchart TD"]
    triggers = []
    for e in spec.entry:
        if isinstance(e, StageEntered):
            triggers.append(f"stage {e.stage}")
        elif isinstance(e, EventEntry):
            triggers.append(f"event {e.matcher.type}")
    lines.append(f'    entry(["{_label(spec.name + " entry: " + " or ".join(triggers))}"])')
    terminals: dict[str, str] = {}
    for s in spec.steps:
        shape = ('{"', '"}') if s.kind in ("branch", "split") else ('["', '"]')
        if s.kind in ("goal", "exit"):
            shape = ('(["', '"])')
        lines.append(f"    {node[s.id]}{shape[0]}{_label(f'{s.id}: {s.summary()}')}{shape[1]}")
        for _, target in s.edges():
            if target == END:
                terminals[target] = "end"
            elif target.startswith(EXIT_PREFIX):
                terminals[target] = f"exit: {target[len(EXIT_PREFIX) :]}"
    for target, text in terminals.items():
        lines.append(f'    {node[target]}(["{_label(text)}"])')
    lines.append(f"    entry --> {node[spec.start]}")
    for s in spec.steps:
        for label, target in s.edges():
            arrow = f"-->|{_label(label)}|" if label and label != "next" else "-->"
            lines.append(f"    {node[s.id]} {arrow} {node[target]}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class StepChange:
    """One changed step: its id and the fields that differ (old, new)."""

    step_id: str
    fields: tuple[tuple[str, Any, Any], ...]


@dataclass(frozen=True)
class SpecDiff:
    """What changed between two versions of a journey, per step id.

    Attributes:
        old_version: Version hash of the old spec.
        new_version: Version hash of the new spec.
        added: Step ids only in the new spec.
        removed: Step ids only in the old spec.
        changed: Steps in both whose definition differs.
        settings: Journey-level fields that differ (entry, goal, exit_when, ...).
    """

    old_version: str
    new_version: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[StepChange, ...]
    settings: tuple[tuple[str, Any, Any], ...] = ()

    @property
    def empty(self) -> bool:
        """True when nothing but (possibly) step order changed."""
        return not (self.added or self.removed or self.changed or self.settings)

    def __str__(self) -> str:
        head = f"journey diff {self.old_version[:12]} -> {self.new_version[:12]}"
        if self.empty:
            return f"{head}: no changes"
        lines = [head]
        lines += [f"  ~ {name}: {old!r} -> {new!r}" for name, old, new in self.settings]
        lines += [f"  + step {sid}" for sid in self.added]
        lines += [f"  - step {sid}" for sid in self.removed]
        for change in self.changed:
            lines.append(f"  ~ step {change.step_id}")
            lines += [f"      {name}: {old!r} -> {new!r}" for name, old, new in change.fields]
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
        for k in ("name", "description", "entry", "reentry", "exit_when", "goal", "locales")
        if old_body.get(k) != new_body.get(k)
    )
    return SpecDiff(old.version, new.version, added, removed, tuple(changed), settings)
