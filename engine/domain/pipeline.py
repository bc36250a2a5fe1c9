"""Pipelines: the ordered stages a contact moves through, and the rules that move it.

A :class:`Pipeline` is typed Python written by marketers (a project's ``pipeline.py``) and
validated when it is built: every error names the pipeline, the rule or detour, and the
fix. Its JSON form has a stable content hash, :attr:`Pipeline.version`.

Movement model
    * Stages move forward only. :func:`evaluate_transition` applies the stage rules and
      never returns a backward move.
    * Jumps are allowed: from the current stage, the furthest-forward stage whose rule holds
      wins, so a suspect who pays an order becomes a customer at once. Rules restricted
      with ``from_stages`` are then re-applied from the stage reached, until nothing more
      holds; the result is one :class:`Transition` whose reason lists the rules that fired.
    * Backward and sideways moves happen only through a declared :class:`Detour` (for
      example ``recycled``: lead back to prospect; ``disqualified``: any stage to the
      off-pipeline state ``disqualified``), applied explicitly with :func:`apply_detour`.
      A contact in an off-pipeline state is parked: stage rules do not apply to it; only a
      detour that starts from that state can move it.
    * :func:`advance_to` is the forward-only manual move (a journey's "record stage change"
      step, an operator); a backward target is refused with :class:`BackwardMoveError`.

Sales
    ``Pipeline.routing`` (:class:`stagecoach.engine.domain.sales.Routing`) says who gets qualified
    leads and by when they answer. ``Pipeline.recycle`` (:class:`Recycle`) says what a rejection
    does: the contact takes a declared detour back to nurture with sales' reason
    (:func:`apply_recycle`), is not handed off again within a cool-down, and loses the
    points the scoring declares for the rejection event (a pipeline with ``recycle`` must
    declare a negative score rule for it).

Phases group stages. The default pipeline's acquisition phase runs suspect..customer and
its delight phase customer..advocate: customer is the boundary of both, so a phase is a
range of stages (:class:`Phase`), ranges of neighbouring phases may share their boundary
stage, ``Stage.phase`` is the phase a stage is reached in, and :meth:`Pipeline.phases_of`
returns every phase a stage belongs to.

Errors::

    ValueError
    └── PipelineError
        ├── PipelineDefinitionError   a pipeline is malformed (raised when built)
        ├── UnknownStageError         (also a LookupError) a stage or state name is unknown
        ├── DetourNotAllowedError     a detour is unknown, not allowed here, or lacks a reason
        └── BackwardMoveError         a forward-only move was asked to go backward
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import InitVar, dataclass, replace
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, Literal

from stagecoach.engine.domain import serial
from stagecoach.engine.domain.build_cache import Parsed
from stagecoach.engine.domain.conditions import (
    AllOf,
    AnyOf,
    Condition,
    EventOccurred,
    EventRecord,
    Facts,
    Not,
    StageIn,
    event,
)
from stagecoach.engine.domain.events import EventCatalog, UnknownEventError
from stagecoach.engine.domain.hashing import canonical_json, content_hash
from stagecoach.engine.domain.sales import Routing
from stagecoach.engine.domain.scoring import GradingModel, Mql, ScoringModel

_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")

TransitionKind = Literal["rule", "detour", "manual"]


class PipelineError(ValueError):
    """Base of pipeline errors; messages name the pipeline, the rule and the fix."""


class PipelineDefinitionError(PipelineError):
    """A pipeline definition is invalid; raised when it is built."""


class UnknownStageError(PipelineError, LookupError):
    """A stage (or off-pipeline state) name is not part of the pipeline."""


class DetourNotAllowedError(PipelineError):
    """A detour was asked for that the pipeline does not allow from the current stage."""


class BackwardMoveError(PipelineError):
    """A forward-only move was asked to go backward or stay put."""


def _closest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


@dataclass(frozen=True, init=False)
class Stage(serial.Record):
    """One stage of a pipeline:
    ``Stage("lead", "Lead", label_zh="线索", phase="acquisition")``.

    ``label_zh`` and ``phase`` are keyword-only: both are text, like the label, and a
    swapped pair would not be noticed. Passing them by position still works for now,
    with a ``FutureWarning`` that shows the keyword form (a ``FutureWarning`` because the
    people who read it write pipelines, and Python shows it by default, unlike a
    ``DeprecationWarning`` raised outside ``__main__``).

    Attributes:
        name: Lowercase identifier, stored in search attributes: ``lead``.
        label: English label for dashboards.
        label_zh: Chinese label for dashboards.
        phase: The phase the stage is reached in (``""`` when the pipeline has no phases).

    Raises:
        TypeError: A field is not text, too many are given by position, or one is given
            both by position and by keyword.
    """

    name: str
    label: str
    label_zh: str = ""
    phase: str = ""

    def __init__(
        self, name: str, label: str, *legacy: str, label_zh: str = "", phase: str = ""
    ) -> None:
        if legacy:
            label_zh, phase = _legacy_stage_fields(name, legacy, label_zh, phase)
        given = {"name": name, "label": label, "label_zh": label_zh, "phase": phase}
        for field_name, value in given.items():
            if not isinstance(value, str):
                raise TypeError(
                    f"Stage {name!r}: {field_name} must be text, not {value!r}; write"
                    " Stage('lead', 'Lead', label_zh='线索', phase='acquisition')"
                    + (" (the phase's name)" if field_name == "phase" else "")
                )
            object.__setattr__(self, field_name, value)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stage:
        """Rebuild from :meth:`to_dict` output; a stage stored without a label shows its name."""
        return serial.decode(cls, {"label": data["name"], **data})


def _legacy_stage_fields(
    name: object, legacy: tuple[object, ...], label_zh: object, phase: object
) -> tuple[Any, Any]:
    """``label_zh`` and ``phase`` from the older positional form, with a warning that
    shows the keyword form."""
    if len(legacy) > 2:
        raise TypeError(
            f"Stage {name!r}: takes name and label by position, then label_zh= and phase="
            f" by keyword; {2 + len(legacy)} values were given by position"
        )
    positional = dict(zip(("label_zh", "phase"), legacy, strict=False))
    for field_name, keyword in (("label_zh", label_zh), ("phase", phase)):
        if field_name in positional and keyword:
            raise TypeError(f"Stage {name!r}: {field_name} is given twice; give it by keyword")
    keywords = ", ".join(f"{k}={v!r}" for k, v in positional.items())
    warnings.warn(
        f"Stage {name!r}: pass {keywords} by keyword (Stage(name, label, {keywords}));"
        " the positional form will be removed",
        FutureWarning,
        stacklevel=3,
    )
    return positional.get("label_zh", label_zh), positional.get("phase", phase)


@dataclass(frozen=True)
class Phase(serial.Record):
    """A contiguous range of stages, ``first`` to ``last`` inclusive.

    Neighbouring phases may share their boundary stage (customer ends acquisition and
    begins delight).
    """

    name: str
    label: str
    label_zh: str
    first: str
    last: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Phase:
        """Rebuild from :meth:`to_dict` output; a phase stored without a label shows its name."""
        return serial.decode(cls, {"label": data["name"], **data})


@serial.fields(order=("name", "to_stage", "when", "from_stages"), missing={"from_stages": ()})
@dataclass(frozen=True)
class StageRule(serial.Record):
    """Move a contact forward to ``to_stage`` when ``when`` holds.

    Attributes:
        to_stage: The stage the rule moves to.
        when: What the contact did or is: event with property filters and a window, score,
            grade, an NPS answer, a sales decision; any :mod:`stagecoach.engine.domain.conditions`
            condition.
        name: Unique within the pipeline; recorded as the transition's reason.
        from_stages: Stages the rule applies from; empty means every earlier stage. Use it
            when a rule only makes sense after a point, e.g. NPS promoters become fans
            only once they are customers.
    """

    to_stage: str
    when: Condition
    name: str
    from_stages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "from_stages", tuple(self.from_stages))


@serial.fields(missing={"from_stages": ()}, omit_if_default=("when",))
@dataclass(frozen=True)
class Detour(serial.Record):
    """A declared backward or sideways move, applied explicitly with :func:`apply_detour`.

    Attributes:
        name: Unique within the pipeline, e.g. ``recycled``, ``disqualified``.
        from_stages: Stages (or off-pipeline states) the detour may start from. Empty means
            every stage after the target stage, or every stage when the target is a state.
        to_stage_or_state: A stage earlier than every ``from_stages`` entry, or an
            off-pipeline state declared in ``Pipeline.states``.
        reason_required: Whether :func:`apply_detour` refuses an empty reason.
        when: Take the detour by itself when this condition holds (checked on every
            event the contact's workflow applies, after the stage rules, from the
            detour's starting stages), e.g. a ``dormant`` detour on
            ``trait("p_alive", "lt", 0.3)``. ``None``: only taken when asked for (a sales
            rejection, an operator). The transition's reason names the conditions that
            held. Left out of the pipeline's form when ``None``.
    """

    name: str
    from_stages: tuple[str, ...]
    to_stage_or_state: str
    reason_required: bool = True
    when: Condition | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "from_stages", tuple(self.from_stages))


@serial.fields(rename={"cool_down": "cool_down_seconds"})
@dataclass(frozen=True)
class Recycle(serial.Record):
    """What a sales rejection does to a lead.

    Attributes:
        detour: The declared detour a rejection takes, with sales' reason (``recycled``:
            back to nurture). A contact not on one of its starting stages stays put.
        cool_down: How long after a rejection the contact is not handed off again. Stage
            rules that should hold back too use :meth:`recently_rejected`.
        event: The event type a rejection arrives as; the pipeline's scoring must take
            points away for it.
    """

    detour: str = "recycled"
    cool_down: timedelta = timedelta(days=30)
    event: str = "sales.rejected"

    def recently_rejected(self) -> EventOccurred:
        """The condition "rejected within the cool-down", for stage rules to negate."""
        return event(self.event, within=self.cool_down)

    def cooling_down(self, events: Iterable[EventRecord], now: datetime) -> bool:
        """Whether a rejection in ``events`` happened within the cool-down before ``now``."""
        return self.recently_rejected().evaluate(Facts(now=now, events=tuple(events)))


@serial.fields(missing={"reason": ""})
@dataclass(frozen=True)
class Transition(serial.Record):
    """One stage change, as recorded in the workflow, the database and the timeline.

    It crosses the Temporal boundary as JSON: fields are only ever added, optional, and
    :meth:`from_dict` ignores keys it does not know.

    Attributes:
        from_stage: Stage (or state) before.
        to_stage: Stage (or state) after.
        at: When, timezone-aware (the caller's ``now``).
        reason: The rule name(s) joined by ``" > "``, or ``"<detour>: <reason>"``.
        trigger_event_type: Type of the event that caused the evaluation, if any.
        trigger_message_id: Ingestion message id of that event, if known.
        source: Who asked: ``"workflow"``, ``"api"``, ``"cli"``, a journey step...
        kind: ``"rule"``, ``"detour"`` or ``"manual"``.
    """

    from_stage: str
    to_stage: str
    at: datetime
    reason: str
    trigger_event_type: str | None = None
    trigger_message_id: str | None = None
    source: str = ""
    kind: TransitionKind = "rule"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Transition:
        """Rebuild from :meth:`to_dict` output; unknown keys are ignored (newer writers)."""
        kind = data.get("kind", "rule")
        if kind not in ("rule", "detour", "manual"):
            raise PipelineError(f"transition kind {kind!r} is unknown; use rule, detour, manual")
        return serial.decode(cls, data)


def _stage_refs(condition: Condition) -> set[str]:
    """Stage names a condition mentions through ``stage_in``."""
    if isinstance(condition, StageIn):
        return set(condition.stages)
    if isinstance(condition, AllOf | AnyOf):
        return set().union(*(_stage_refs(c) for c in condition.conditions))
    if isinstance(condition, Not):
        return _stage_refs(condition.condition)
    return set()


# The form predates the field order; routing and recycle appear only when declared, so a
# pipeline without them keeps the form (and version) it had before they existed.
@serial.fields(
    order=(
        "name", "label", "stages", "phases", "states", "rules", "detours",
        "mql", "scoring", "grading", "routing", "recycle",
    ),
    omit_if_default=("routing", "recycle"),
)  # fmt: skip
@dataclass(frozen=True)
class Pipeline(serial.Record):
    """A validated pipeline: stages, forward rules, detours, and how to score and grade.

    Args:
        name: Lowercase identifier; settings choose the active pipeline by it.
        stages: In order, first to last.
        rules: Forward stage rules.
        detours: Allowed backward/sideways moves.
        mql: The marketing-qualified-lead definition.
        scoring: Engagement scoring rules.
        grading: Fit grading rules.
        phases: Optional ranges of stages; when given they cover every stage in order.
        states: Off-pipeline states detours may lead to, e.g. ``("disqualified",)``.
        label: Human name for dashboards.
        routing: Who gets qualified leads and the SLA
        (:class:`stagecoach.engine.domain.sales.Routing`);
            ``None``: nobody, the hand-off activity routes nothing.
        recycle: What a sales rejection does; ``None``: nothing but its score rule.
        catalog: When given, every event type used anywhere must be in it. Not stored.

    Raises:
        PipelineDefinitionError: the message names the pipeline, the rule and the fix.
    """

    name: str
    stages: tuple[Stage, ...]
    rules: tuple[StageRule, ...]
    detours: tuple[Detour, ...]
    mql: Mql
    scoring: ScoringModel
    grading: GradingModel
    phases: tuple[Phase, ...] = ()
    states: tuple[str, ...] = ()
    label: str = ""
    routing: Routing | None = None
    recycle: Recycle | None = None
    catalog: InitVar[EventCatalog | None] = None

    def __post_init__(self, catalog: EventCatalog | None) -> None:
        for attr in ("stages", "rules", "detours", "phases", "states"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        self._validate_names()
        self._validate_phases()
        self._validate_rules()
        self._validate_detours()
        self._validate_recycle()
        if catalog is not None:
            self.check_events(catalog)

    # Validation

    def _fail(self, message: str) -> PipelineDefinitionError:
        return PipelineDefinitionError(f"pipeline {self.name!r}: {message}")

    def _validate_names(self) -> None:
        if not _IDENT.match(self.name):
            raise PipelineDefinitionError(
                f"pipeline name {self.name!r} is not a lowercase identifier; use e.g. 'default'"
            )
        if not self.stages:
            raise self._fail("has no stages; list at least one Stage")
        seen: set[str] = set()
        for stage in self.stages:
            if not _IDENT.match(stage.name):
                raise self._fail(
                    f"stage name {stage.name!r} is not a lowercase identifier; use e.g. 'lead'"
                )
            if stage.name in seen:
                raise self._fail(f"stage {stage.name!r} is listed twice; keep one")
            seen.add(stage.name)
        for state in self.states:
            if not _IDENT.match(state):
                raise self._fail(f"state {state!r} is not a lowercase identifier")
            if state in seen:
                raise self._fail(
                    f"state {state!r} is also a stage or listed twice; give it its own name"
                )
            seen.add(state)

    def _validate_phases(self) -> None:
        if not self.phases:
            for stage in self.stages:
                if stage.phase:
                    raise self._fail(
                        f"stage {stage.name!r} names phase {stage.phase!r} but the pipeline"
                        " declares no phases; add phases=(Phase(...),) or drop the phase"
                    )
            return
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise self._fail(f"phase names repeat in {names}; give each phase its own name")
        expected_first = 0
        for phase in self.phases:
            for end in (phase.first, phase.last):
                if end not in self.stage_names:
                    raise self._fail(
                        f"phase {phase.name!r} bounds on unknown stage {end!r}"
                        f"{_closest(end, self.stage_names)}"
                    )
            first, last = self.index(phase.first), self.index(phase.last)
            if first > last:
                raise self._fail(
                    f"phase {phase.name!r} starts at {phase.first!r} after it ends at"
                    f" {phase.last!r}; swap first and last"
                )
            # Each phase starts right after the previous one or on its last (shared) stage.
            if first not in (expected_first, expected_first - 1) or first < 0:
                raise self._fail(
                    f"phase {phase.name!r} starts at {phase.first!r}, leaving a gap or overlap"
                    " with the phase before; phases must cover the stages in order, sharing at"
                    " most a boundary stage"
                )
            expected_first = last + 1
        if expected_first != len(self.stages):
            raise self._fail(
                f"phases end at {self.phases[-1].last!r} but stages go on to"
                f" {self.stages[-1].name!r}; extend the last phase"
            )
        for stage in self.stages:
            homes = [p.name for p in self.phases_of(stage.name)]
            if stage.phase not in homes:
                raise self._fail(
                    f"stage {stage.name!r} has phase {stage.phase!r} but lies in"
                    f" {' and '.join(homes)}; set phase to one of those"
                )

    def _validate_rules(self) -> None:
        seen: set[str] = set()
        for rule in self.rules:
            where = f"stage rule {rule.name!r}"
            if not rule.name:
                raise self._fail(f"a stage rule to {rule.to_stage!r} has no name; name it")
            if rule.name in seen:
                raise self._fail(f"{where} is declared twice; rename one")
            seen.add(rule.name)
            if rule.to_stage not in self.stage_names:
                raise self._fail(
                    f"{where} moves to unknown stage {rule.to_stage!r}"
                    f"{_closest(rule.to_stage, self.stage_names)}"
                )
            target = self.index(rule.to_stage)
            if target == 0:
                raise self._fail(
                    f"{where} moves to the first stage {rule.to_stage!r}, which every contact"
                    " starts in; stages only move forward, so point it at a later stage"
                )
            for source in rule.from_stages:
                if source not in self.stage_names:
                    raise self._fail(
                        f"{where} starts from unknown stage {source!r}"
                        f"{_closest(source, self.stage_names)}"
                    )
                if self.index(source) >= target:
                    raise self._fail(
                        f"{where} points backward from {source!r} to {rule.to_stage!r};"
                        " stages only move forward: declare a Detour for backward moves"
                    )
            for ref in sorted(_stage_refs(rule.when)):
                if ref not in self.stage_names:
                    raise self._fail(
                        f"{where} tests stage_in({ref!r}), an unknown stage"
                        f"{_closest(ref, self.stage_names)}"
                    )

    def _validate_detours(self) -> None:
        seen: set[str] = set()
        known = (*self.stage_names, *self.states)
        for detour in self.detours:
            where = f"detour {detour.name!r}"
            if not _IDENT.match(detour.name):
                raise self._fail(f"{where} name is not a lowercase identifier; use e.g. 'recycled'")
            if detour.name in seen:
                raise self._fail(f"{where} is declared twice; rename one")
            seen.add(detour.name)
            target = detour.to_stage_or_state
            if target not in known:
                raise self._fail(
                    f"{where} goes to {target!r}, which is neither a stage nor a declared"
                    f" state{_closest(target, known)}; use a stage or add it to states="
                )
            for source in detour.from_stages:
                if source not in known:
                    raise self._fail(
                        f"{where} starts from unknown stage {source!r}{_closest(source, known)}"
                    )
                if source == target:
                    raise self._fail(f"{where} goes from {source!r} to itself; remove {source!r}")
                if (
                    target in self.stage_names
                    and source in self.stage_names
                    and self.index(source) < self.index(target)
                ):
                    raise self._fail(
                        f"{where} goes forward from {source!r} to {target!r}; detours are for"
                        " backward or sideways moves: write a StageRule instead"
                    )

    def _validate_recycle(self) -> None:
        recycle = self.recycle
        if recycle is None:
            return
        declared = [d.name for d in self.detours]
        if recycle.detour not in declared:
            raise self._fail(
                f"recycle: detour {recycle.detour!r} is not declared"
                f"{_closest(recycle.detour, declared)}; declare Detour({recycle.detour!r}, ...)"
            )
        if recycle.cool_down <= timedelta(0):
            raise self._fail("recycle: cool_down must be positive, e.g. timedelta(days=30)")
        if not any(r.matcher.type == recycle.event and r.points < 0 for r in self.scoring.rules):
            raise self._fail(
                f"recycle: no score rule lowers the score on {recycle.event!r}; add"
                f" ScoreRule('sales_rejected', EventMatcher({recycle.event!r}), -20) to scoring"
            )

    def check_events(self, catalog: EventCatalog) -> None:
        """Check every event type used by rules, MQL and scoring against ``catalog``.

        Raises:
            PipelineDefinitionError: naming the pipeline, the rule, the unknown event and
                the closest known names.
        """
        users: list[tuple[str, frozenset[str]]] = [
            *((f"stage rule {r.name!r}", r.when.event_types()) for r in self.rules),
            ("mql", self.mql.event_types()),
            *((f"score rule {r.name!r}", frozenset({r.matcher.type})) for r in self.scoring.rules),
            *((f"grade rule {r.name!r}", r.when.event_types()) for r in self.grading.rules),
            *((f"detour {d.name!r}", d.when.event_types()) for d in self.detours if d.when),
        ]
        if self.recycle is not None:
            users.append(("recycle", frozenset({self.recycle.event})))
        for where, types in users:
            try:
                catalog.check(types, where=f"pipeline {self.name!r}, {where}")
            except UnknownEventError as exc:
                raise PipelineDefinitionError(str(exc)) from exc

    # Queries

    @cached_property
    def stage_names(self) -> tuple[str, ...]:
        """Stage names in order."""
        return tuple(s.name for s in self.stages)

    @property
    def first_stage(self) -> str:
        """Where every contact starts."""
        return self.stages[0].name

    def stage(self, name: str) -> Stage:
        """The stage called ``name``.

        Raises:
            UnknownStageError: naming the pipeline, the stage and the choices.
        """
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise self._unknown_stage(name)

    def _unknown_stage(self, name: str) -> UnknownStageError:
        known = (*self.stage_names, *self.states)
        return UnknownStageError(
            f"pipeline {self.name!r} has no stage or state {name!r}{_closest(name, known)}"
            f" (stages: {', '.join(self.stage_names)}"
            + (f"; states: {', '.join(self.states)})" if self.states else ")")
        )

    def index(self, stage: str) -> int:
        """Position of ``stage``, 0 for the first stage.

        Raises:
            UnknownStageError: ``stage`` is not a stage of this pipeline.
        """
        try:
            return self.stage_names.index(stage)
        except ValueError:
            raise self._unknown_stage(stage) from None

    def is_state(self, name: str) -> bool:
        """Whether ``name`` is an off-pipeline state such as ``disqualified``."""
        return name in self.states

    def phase_stages(self, phase: str) -> tuple[str, ...]:
        """Stage names in ``phase``, boundary stages included.

        Raises:
            UnknownStageError: the phase is unknown (message lists the phases).
        """
        for p in self.phases:
            if p.name == phase:
                return self.stage_names[self.index(p.first) : self.index(p.last) + 1]
        raise UnknownStageError(
            f"pipeline {self.name!r} has no phase {phase!r}; phases:"
            f" {', '.join(p.name for p in self.phases) or 'none'}"
        )

    def phases_of(self, stage: str) -> tuple[Phase, ...]:
        """Every phase ``stage`` belongs to: two for a shared boundary stage."""
        i = self.index(stage)
        return tuple(p for p in self.phases if self.index(p.first) <= i <= self.index(p.last))

    def detour(self, name: str) -> Detour:
        """The detour called ``name``.

        Raises:
            DetourNotAllowedError: naming the detour and the declared ones.
        """
        for detour in self.detours:
            if detour.name == name:
                return detour
        raise DetourNotAllowedError(
            f"pipeline {self.name!r} declares no detour {name!r}"
            f"{_closest(name, (d.name for d in self.detours))}; declared:"
            f" {', '.join(d.name for d in self.detours) or 'none'}"
        )

    def detour_sources(self, detour: Detour) -> tuple[str, ...]:
        """Stages/states ``detour`` may start from, with the empty default expanded."""
        if detour.from_stages:
            return detour.from_stages
        target = detour.to_stage_or_state
        if target in self.stage_names:
            return self.stage_names[self.index(target) + 1 :]
        return self.stage_names

    def event_types(self) -> frozenset[str]:
        """Every event type a stage rule, the MQL, a score or grade rule can react to.

        This is the pipeline's share of the ingestion filter: only these are signalled.
        """
        return frozenset().union(
            *(r.when.event_types() for r in self.rules),
            self.mql.event_types(),
            self.scoring.event_types(),
            self.grading.event_types(),
            frozenset({self.recycle.event}) if self.recycle else frozenset(),
            *(d.when.event_types() for d in self.detours if d.when is not None),
        )

    # Serialisation
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, catalog: EventCatalog | None = None) -> Pipeline:
        """Rebuild (and re-validate) from :meth:`to_dict` output.

        Definitions serialised before ``routing`` and ``recycle`` existed load without them.
        """
        routing = data.get("routing")
        recycle = data.get("recycle")
        return cls(
            name=data["name"],
            label=data.get("label", ""),
            stages=tuple(Stage.from_dict(s) for s in data["stages"]),
            phases=tuple(Phase.from_dict(p) for p in data.get("phases", ())),
            states=tuple(data.get("states", ())),
            rules=tuple(StageRule.from_dict(r) for r in data.get("rules", ())),
            detours=tuple(Detour.from_dict(d) for d in data.get("detours", ())),
            mql=Mql.from_dict(data["mql"]),
            scoring=ScoringModel.from_dict(data["scoring"]),
            grading=GradingModel.from_dict(data["grading"]),
            routing=None if routing is None else Routing.from_dict(routing),
            recycle=None if recycle is None else Recycle.from_dict(recycle),
            catalog=catalog,
        )

    @cached_property
    def version(self) -> str:
        """sha256 (hex) of the canonical JSON form: same definition, same version."""
        return content_hash(self.to_dict())


# Moving contacts


def evaluate_transition(
    pipeline: Pipeline,
    current_stage: str,
    facts: Facts,
    trigger: EventRecord | None,
    source: str,
    *,
    trigger_message_id: str | None = None,
) -> Transition | None:
    """Apply the stage rules: the forward move they call for, or ``None``.

    From ``current_stage``, every rule that points to a later stage (and lists the current
    stage in ``from_stages``, when it has any) is evaluated; the furthest-forward stage
    whose rule holds wins, ties going to the rule declared first. Jumping several stages is
    allowed when the rules say so. From the stage reached, rules are applied again (a rule
    with ``from_stages`` may only now apply) until none moves further; the single returned
    transition goes from ``current_stage`` to the final stage and its reason lists the
    rules in the order they fired, joined by ``" > "``. Never moves backward, and a contact
    in an off-pipeline state (e.g. ``disqualified``) never moves by rules.

    Args:
        pipeline: The pipeline.
        current_stage: The contact's stage (or off-pipeline state) now.
        facts: What the contact is and did at ``facts.now``; ``facts.stage`` is overridden
            by the stage being evaluated from.
        trigger: The event that caused this evaluation, if any; recorded on the transition.
        source: Who evaluates, e.g. ``"workflow"``; recorded on the transition.
        trigger_message_id: Ingestion message id of ``trigger``, if known.

    Raises:
        UnknownStageError: ``current_stage`` is not a stage or state of the pipeline.
    """
    if pipeline.is_state(current_stage):
        return None
    position = pipeline.index(current_stage)
    stage = current_stage
    fired: list[str] = []
    while True:
        here = facts if facts.stage == stage else replace(facts, stage=stage)
        best: StageRule | None = None
        for rule in pipeline.rules:
            target = pipeline.index(rule.to_stage)
            if target <= position or (rule.from_stages and stage not in rule.from_stages):
                continue
            if best is not None and target <= pipeline.index(best.to_stage):
                continue
            if rule.when.evaluate(here):
                best = rule
        if best is None:
            break
        fired.append(best.name)
        stage, position = best.to_stage, pipeline.index(best.to_stage)
    if not fired:
        return None
    return Transition(
        from_stage=current_stage,
        to_stage=stage,
        at=facts.now,
        reason=" > ".join(fired),
        trigger_event_type=None if trigger is None else trigger.type,
        trigger_message_id=trigger_message_id,
        source=source,
        kind="rule",
    )


def evaluate_detours(
    pipeline: Pipeline,
    current: str,
    facts: Facts,
    trigger: EventRecord | None,
    source: str,
    *,
    trigger_message_id: str | None = None,
) -> Transition | None:
    """The first declared detour with a ``when`` that starts from ``current`` and holds:
    its transition, with the reason naming the condition(s) that held; else ``None``."""
    for detour in pipeline.detours:
        if detour.when is None or current not in pipeline.detour_sources(detour):
            continue
        here = facts if facts.stage == current else replace(facts, stage=current)
        if not detour.when.evaluate(here):
            continue
        why = _held_words(detour.when, here)
        return Transition(
            from_stage=current,
            to_stage=detour.to_stage_or_state,
            at=facts.now,
            reason=f"{detour.name}: {why}",
            trigger_event_type=None if trigger is None else trigger.type,
            trigger_message_id=trigger_message_id,
            source=source,
            kind="detour",
        )
    return None


def _held_words(condition: Condition, facts: Facts) -> str:
    """A condition that held, in words for the transition's reason: of an ``any_of``,
    only the parts that held."""
    if isinstance(condition, AnyOf):
        held = [c for c in condition.conditions if c.evaluate(facts)]
        return " or ".join(_held_words(c, facts) for c in held)
    if isinstance(condition, AllOf):
        return " and ".join(_held_words(c, facts) for c in condition.conditions)
    data = condition.to_dict()
    kind = data.get("kind")
    if kind == "not" and data["condition"].get("kind") == "event":
        inner = data["condition"]
        days = (inner.get("within_seconds") or 0) / 86400
        return f"no {inner['type']} in {days:g} days" if days else f"never {inner['type']}"
    if kind == "event":
        days = (data.get("within_seconds") or 0) / 86400
        return f"{data['type']} within {days:g} days" if days else str(data["type"])
    if kind == "attribute":
        actual = facts.attributes.get(data["path"])
        if data["op"] == "exists":
            return f"{data['path']} set ({actual})" if data["value"] else f"no {data['path']}"
        return f"{data['path']} {data['op']} {data['value']} (was {actual})"
    if kind == "last_performed":
        days = data["age_seconds"] / 86400
        return f"last {data['type']} {data['op']} {days:g} days ago"
    return canonical_json(data)


def apply_detour(
    pipeline: Pipeline,
    current: str,
    detour_name: str,
    reason: str,
    at: datetime,
    source: str,
) -> Transition:
    """Take a declared detour (a backward or sideways move).

    Raises:
        DetourNotAllowedError: the detour is not declared, does not start from ``current``,
            or needs a reason and got none; the message says which detours are allowed.
        UnknownStageError: ``current`` is not a stage or state of the pipeline.
    """
    if current not in pipeline.stage_names and not pipeline.is_state(current):
        raise pipeline._unknown_stage(current)
    detour = pipeline.detour(detour_name)
    sources = pipeline.detour_sources(detour)
    if current not in sources:
        allowed = [d.name for d in pipeline.detours if current in pipeline.detour_sources(d)]
        raise DetourNotAllowedError(
            f"pipeline {pipeline.name!r}: detour {detour_name!r} is not allowed from"
            f" {current!r} (it starts from {', '.join(sources)}); detours from {current!r}:"
            f" {', '.join(allowed) or 'none'}"
        )
    if detour.reason_required and not reason.strip():
        raise DetourNotAllowedError(
            f"pipeline {pipeline.name!r}: detour {detour_name!r} requires a reason; pass"
            " reason='...' saying why (it is shown in the contact's history)"
        )
    text = f"{detour.name}: {reason.strip()}" if reason.strip() else detour.name
    return Transition(
        from_stage=current,
        to_stage=detour.to_stage_or_state,
        at=at,
        reason=text,
        source=source,
        kind="detour",
    )


def advance_to(
    pipeline: Pipeline,
    current: str,
    to_stage: str,
    *,
    reason: str,
    at: datetime,
    source: str,
) -> Transition:
    """Move forward to ``to_stage`` by hand (a journey step, an operator).

    Raises:
        BackwardMoveError: ``to_stage`` is not after ``current``; the message names the
            detours that could make the move instead.
        UnknownStageError: either stage is unknown; a contact in an off-pipeline state
            must leave it through a detour.
    """
    if pipeline.is_state(current):
        raise BackwardMoveError(
            f"pipeline {pipeline.name!r}: contact is in state {current!r}; only a detour"
            " starting from it can move it"
        )
    if pipeline.index(to_stage) <= pipeline.index(current):
        detours = [
            d.name
            for d in pipeline.detours
            if d.to_stage_or_state == to_stage and current in pipeline.detour_sources(d)
        ]
        fix = (
            f"use apply_detour with {', '.join(repr(d) for d in detours)}"
            if detours
            else "declare a Detour in the pipeline if this move should be allowed"
        )
        raise BackwardMoveError(
            f"pipeline {pipeline.name!r}: cannot move from {current!r} to {to_stage!r};"
            f" stages only move forward: {fix}"
        )
    return Transition(
        from_stage=current,
        to_stage=to_stage,
        at=at,
        reason=reason,
        source=source,
        kind="manual",
    )


def apply_recycle(
    pipeline: Pipeline,
    current: str,
    reason: str,
    *,
    at: datetime,
    source: str,
) -> Transition | None:
    """What a sales rejection does to the stage: the pipeline's recycle detour, or ``None``.

    ``None`` when the pipeline declares no ``recycle`` or its detour does not start from
    ``current`` (the contact already went back to nurture, or has since bought).

    Raises:
        DetourNotAllowedError: the detour needs a reason and ``reason`` is empty.
        UnknownStageError: ``current`` is not a stage or state of the pipeline.
    """
    recycle = pipeline.recycle
    if recycle is None:
        return None
    if current not in pipeline.stage_names and not pipeline.is_state(current):
        raise pipeline._unknown_stage(current)
    if current not in pipeline.detour_sources(pipeline.detour(recycle.detour)):
        return None
    return apply_detour(pipeline, current, recycle.detour, reason, at, source)


def validate_pipelines(
    pipelines: Mapping[str, Pipeline], catalog: EventCatalog | None = None
) -> None:
    """Check a name->pipeline mapping: keys match names, and events are in ``catalog``.

    Raises:
        PipelineDefinitionError: on the first problem found.
    """
    for key, pipeline in pipelines.items():
        if key != pipeline.name:
            raise PipelineDefinitionError(
                f"pipeline {pipeline.name!r} is registered as {key!r}; use its name as the key"
            )
        if catalog is not None:
            pipeline.check_events(catalog)


parsed_pipeline: Parsed[Pipeline] = Parsed(Pipeline.from_dict)
"""``Pipeline.from_dict``, validated and built once per process for the same data
(``stagecoach.engine.domain.build_cache``): every contact workflow run builds the pipeline it
carries."""

__all__ = [
    "BackwardMoveError",
    "Detour",
    "DetourNotAllowedError",
    "Phase",
    "Pipeline",
    "PipelineDefinitionError",
    "PipelineError",
    "Recycle",
    "Stage",
    "StageRule",
    "Transition",
    "TransitionKind",
    "UnknownStageError",
    "advance_to",
    "apply_detour",
    "apply_recycle",
    "canonical_json",
    "content_hash",
    "evaluate_transition",
    "parsed_pipeline",
    "validate_pipelines",
]
