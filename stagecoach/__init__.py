"""Stagecoach: lifecycle marketing automation on durable Temporal workflows.

The installed package has one name. Its rooms are the repository's top-level folders
(``engine/``, ``workflows/``, ``connectors/``, ``content/``), linked in here so that the
source tree and the wheel agree: ``stagecoach.engine``, ``stagecoach.workflows``,
``stagecoach.connectors``, and the bundled content as package data.

It is also the one import a marketer needs to write journeys and pipelines::

    from stagecoach import Journey, branch, event, send, stage_entered, timedelta, wait

``__all__`` is that vocabulary and nothing else: the journey steps and entry triggers,
the condition builders, the pipeline's parts (stages, rules, detours, scoring, grading,
routing), and ``timedelta``/``time``, the one way durations and times of day are
written. Compiling, simulating and publishing live in ``stagecoach.engine...``.

Each name is loaded from the pure domain (``stagecoach.engine.domain``) the first time it
is asked for (PEP 562). Importing ``stagecoach`` itself, which every
``stagecoach.engine...`` and ``stagecoach.workflows...`` import does first (inside
Temporal's workflow sandbox too), therefore loads nothing more than before.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_JOURNEYS = "stagecoach.engine.domain.journeys"
_CONDITIONS = "stagecoach.engine.domain.conditions"
_PIPELINE = "stagecoach.engine.domain.pipeline"
_SCORING = "stagecoach.engine.domain.scoring"
_SALES = "stagecoach.engine.domain.sales"
_DEFINITIONS = "stagecoach.engine.domain.definitions"
_EVENTS = "stagecoach.engine.domain.events"
_SEGMENTS = "stagecoach.engine.domain.segments"
_BROADCASTS = "stagecoach.engine.domain.broadcasts"
_VALUE = "stagecoach.engine.domain.value"

_VOCABULARY: dict[str, str] = {
    # The project: what a team's repository names in [tool.stagecoach] definitions.
    "Definitions": _DEFINITIONS,
    "journeys_in": _DEFINITIONS,
    "EventCatalog": _EVENTS,
    "EventType": _EVENTS,
    # Journeys: the definition, entry, steps and their options.
    "Journey": _JOURNEYS,
    "stage_entered": _JOURNEYS,
    "on_event": _JOURNEYS,
    "send": _JOURNEYS,
    "next_best": _JOURNEYS,
    "wait": _JOURNEYS,
    "since_enrolment": _JOURNEYS,
    "wait_until": _JOURNEYS,
    "wait_for": _JOURNEYS,
    "branch": _JOURNEYS,
    "split": _JOURNEYS,
    "SplitBranch": _JOURNEYS,
    "holdout": _JOURNEYS,
    "set_attribute": _JOURNEYS,
    "add_tag": _JOURNEYS,
    "change_stage": _JOURNEYS,
    "hand_off": _JOURNEYS,
    "enrol": _JOURNEYS,
    "goal": _JOURNEYS,
    "exit_journey": _JOURNEYS,
    "exit_to": _JOURNEYS,
    "END": _JOURNEYS,
    "NoChannel": _JOURNEYS,
    "ReEntry": _JOURNEYS,
    # Conditions: goals, exit criteria, branches, stage rules, MQL.
    "Condition": _CONDITIONS,
    "event": _CONDITIONS,
    "EventMatcher": _CONDITIONS,
    "PropertyFilter": _CONDITIONS,
    "score_at_least": _CONDITIONS,
    "grade_at_least": _CONDITIONS,
    "stage_in": _CONDITIONS,
    "attribute": _CONDITIONS,
    "has_tag": _CONDITIONS,
    "all_of": _CONDITIONS,
    "any_of": _CONDITIONS,
    "performed": _CONDITIONS,
    "last_performed": _CONDITIONS,
    "never_performed": _CONDITIONS,
    "trait": _CONDITIONS,
    "trait_date": _CONDITIONS,
    "trait_older_than": _CONDITIONS,
    "trait_newer_than": _CONDITIONS,
    "score_between": _CONDITIONS,
    "grade_in": _CONDITIONS,
    "stage_at_least": _CONDITIONS,
    "consented": _CONDITIONS,
    "in_journey": _CONDITIONS,
    "received": _CONDITIONS,
    "in_segment": _CONDITIONS,
    "random_bucket": _CONDITIONS,
    # Segments: saved audiences, and the journey triggers on them.
    "Segment": _SEGMENTS,
    "segment_entered": _SEGMENTS,
    "segment_exited": _SEGMENTS,
    # Pipelines.
    "Pipeline": _PIPELINE,
    "Stage": _PIPELINE,
    "Phase": _PIPELINE,
    "StageRule": _PIPELINE,
    "Detour": _PIPELINE,
    "Recycle": _PIPELINE,
    "ScoringModel": _SCORING,
    "ScoreRule": _SCORING,
    "GradingModel": _SCORING,
    "GradeRule": _SCORING,
    "Mql": _SCORING,
    "Routing": _SALES,
    "Team": _SALES,
    "Pool": _SALES,
    "Owner": _SALES,
    "Territory": _SALES,
    "Sla": _SALES,
    "BusinessHours": _SALES,
    # Broadcasts: one-off campaigns to a segment, with an optional A/B test.
    "Broadcast": _BROADCASTS,
    "ABTest": _BROADCASTS,
    "Variant": _BROADCASTS,
    # Customer value: the catalog orders name, and how customers are tiered and valued.
    "ValueModel": _VALUE,
    "Tier": _VALUE,
    "Catalog": _VALUE,
    "Product": _VALUE,
    # Durations and times of day: one spelling, the standard library's.
    "timedelta": "datetime",
    "time": "datetime",
}

__all__ = [
    "END",
    "ABTest",
    "Broadcast",
    "BusinessHours",
    "Catalog",
    "Condition",
    "Definitions",
    "Detour",
    "EventCatalog",
    "EventMatcher",
    "EventType",
    "GradeRule",
    "GradingModel",
    "Journey",
    "Mql",
    "NoChannel",
    "Owner",
    "Phase",
    "Pipeline",
    "Pool",
    "Product",
    "PropertyFilter",
    "ReEntry",
    "Recycle",
    "Routing",
    "ScoreRule",
    "ScoringModel",
    "Segment",
    "Sla",
    "SplitBranch",
    "Stage",
    "StageRule",
    "Team",
    "Territory",
    "Tier",
    "ValueModel",
    "Variant",
    "add_tag",
    "all_of",
    "any_of",
    "attribute",
    "branch",
    "change_stage",
    "consented",
    "enrol",
    "event",
    "exit_journey",
    "exit_to",
    "goal",
    "grade_at_least",
    "grade_in",
    "hand_off",
    "has_tag",
    "holdout",
    "in_journey",
    "in_segment",
    "journeys_in",
    "last_performed",
    "never_performed",
    "next_best",
    "on_event",
    "performed",
    "random_bucket",
    "received",
    "score_at_least",
    "score_between",
    "segment_entered",
    "segment_exited",
    "send",
    "set_attribute",
    "since_enrolment",
    "split",
    "stage_at_least",
    "stage_entered",
    "stage_in",
    "time",
    "timedelta",
    "trait",
    "trait_date",
    "trait_newer_than",
    "trait_older_than",
    "wait",
    "wait_for",
    "wait_until",
]

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from datetime import time, timedelta

    from stagecoach.engine.domain.broadcasts import ABTest, Broadcast, Variant
    from stagecoach.engine.domain.conditions import (
        Condition,
        EventMatcher,
        PropertyFilter,
        all_of,
        any_of,
        attribute,
        consented,
        event,
        grade_at_least,
        grade_in,
        has_tag,
        in_journey,
        in_segment,
        last_performed,
        never_performed,
        performed,
        random_bucket,
        received,
        score_at_least,
        score_between,
        stage_at_least,
        stage_in,
        trait,
        trait_date,
        trait_newer_than,
        trait_older_than,
    )
    from stagecoach.engine.domain.definitions import Definitions, journeys_in
    from stagecoach.engine.domain.events import EventCatalog, EventType
    from stagecoach.engine.domain.journeys import (
        END,
        Journey,
        NoChannel,
        ReEntry,
        SplitBranch,
        add_tag,
        branch,
        change_stage,
        enrol,
        exit_journey,
        exit_to,
        goal,
        hand_off,
        holdout,
        next_best,
        on_event,
        send,
        set_attribute,
        since_enrolment,
        split,
        stage_entered,
        wait,
        wait_for,
        wait_until,
    )
    from stagecoach.engine.domain.pipeline import (
        Detour,
        Phase,
        Pipeline,
        Recycle,
        Stage,
        StageRule,
    )
    from stagecoach.engine.domain.sales import (
        BusinessHours,
        Owner,
        Pool,
        Routing,
        Sla,
        Team,
        Territory,
    )
    from stagecoach.engine.domain.scoring import (
        GradeRule,
        GradingModel,
        Mql,
        ScoreRule,
        ScoringModel,
    )
    from stagecoach.engine.domain.segments import Segment, segment_entered, segment_exited
    from stagecoach.engine.domain.value import Catalog, Product, Tier, ValueModel


def __getattr__(name: str) -> Any:
    module = _VOCABULARY.get(name)
    if module is None:
        raise AttributeError(f"module 'stagecoach' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # asked once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
