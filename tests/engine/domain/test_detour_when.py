"""Detours taken by themselves (``Detour(when=...)``): left out of the pipeline's form when
absent, round-tripped when present, checked against the catalog, and recorded with the
conditions that held."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from stagecoach import Detour, last_performed, trait
from stagecoach.engine.domain.conditions import EventRecord, Facts
from stagecoach.engine.domain.pipeline import (
    Pipeline,
    PipelineDefinitionError,
    evaluate_detours,
)
from stagecoach.workflows.events import CATALOG
from stagecoach.workflows.pipeline import DEFAULT

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DORMANT = Detour(
    "dormant",
    ("customer",),
    "dormant",
    when=trait("p_alive", "lt", 0.3) | last_performed("order.paid", before=timedelta(days=180)),
)


def _with(*detours: Detour) -> Pipeline:
    kept = tuple(d for d in DEFAULT.detours if d.name not in ("dormant", "won_back"))
    return replace(DEFAULT, states=("disqualified", "dormant"), detours=(*kept, *detours))


def test_a_detour_without_when_keeps_its_form_and_one_with_it_round_trips() -> None:
    assert "when" not in Detour("recycled", ("lead",), "prospect").to_dict()
    pipeline = _with(DORMANT)
    again = Pipeline.from_dict(pipeline.to_dict())
    assert again.detour("dormant") == DORMANT
    assert "order.paid" in again.event_types()


def test_the_reason_names_only_the_conditions_that_held() -> None:
    pipeline = _with(DORMANT)
    seen = (EventRecord("order.paid", NOW - timedelta(days=10)),)
    facts = Facts(now=NOW, stage="customer", attributes={"p_alive": 0.12}, events=seen)
    moved = evaluate_detours(pipeline, "customer", facts, None, "workflow")
    assert moved is not None
    assert (moved.to_stage, moved.kind) == ("dormant", "detour")
    assert moved.reason == "dormant: p_alive lt 0.3 (was 0.12)"
    # From a stage the detour does not start from, or when nothing holds: no move.
    assert evaluate_detours(pipeline, "lead", facts, None, "workflow") is None
    alive = replace(facts, attributes={"p_alive": 0.9})
    assert evaluate_detours(pipeline, "customer", alive, None, "workflow") is None


def test_a_trait_that_must_be_there_reads_as_set_or_missing_in_the_reason() -> None:
    scored = Detour(
        "dormant", ("customer",), "dormant",
        when=trait("value_as_of", "exists") & trait("p_alive", "lt", 0.3),
    )  # fmt: skip
    missing = Detour(
        "dormant", ("customer",), "dormant", when=trait("value_as_of", "exists", False)
    )
    facts = Facts(now=NOW, stage="customer", attributes={"p_alive": 0.1, "value_as_of": "2026-05"})
    moved = evaluate_detours(_with(scored), "customer", facts, None, "workflow")
    assert moved is not None
    assert moved.reason == "dormant: value_as_of set (2026-05) and p_alive lt 0.3 (was 0.1)"
    bare = replace(facts, attributes={})
    moved = evaluate_detours(_with(missing), "customer", bare, None, "workflow")
    assert moved is not None
    assert moved.reason == "dormant: no value_as_of"


def test_an_unknown_event_in_a_detours_condition_names_the_detour() -> None:
    typo = Detour(
        "dormant", ("customer",), "dormant", when=last_performed("order.payed", before=timedelta(1))
    )
    with pytest.raises(PipelineDefinitionError, match="detour 'dormant'"):
        _with(typo).check_events(CATALOG)
