"""``from stagecoach import ...``: the one import a journey or pipeline file needs.

``stagecoach.__all__`` is the authoring vocabulary and nothing else, every name in it
resolves to the pure domain's object, and importing ``stagecoach`` (which every
``stagecoach.engine...`` import does first) loads no I/O framework, and by itself no
domain module either.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys

import pytest

import stagecoach
from stagecoach.engine.domain import (
    broadcasts,
    conditions,
    definitions,
    events,
    journeys,
    pipeline,
    sales,
    scoring,
    segments,
    value,
)

IO_FRAMEWORKS = (
    "temporalio",
    "sqlalchemy",
    "sqlmodel",
    "alembic",
    "httpx",
    "psycopg",
    "fastapi",
    "starlette",
    "uvicorn",
    "duckdb",
    "prometheus_client",
)

VOCABULARY = {
    journeys: {
        "Journey", "stage_entered", "on_event", "send", "next_best", "wait",
        "since_enrolment", "wait_until", "wait_for", "branch", "split", "SplitBranch",
        "holdout", "set_attribute", "add_tag", "change_stage", "hand_off", "enrol", "goal",
        "exit_journey", "exit_to", "END", "NoChannel", "ReEntry",
    },
    conditions: {
        "Condition", "event", "EventMatcher", "PropertyFilter", "score_at_least",
        "grade_at_least", "stage_in", "attribute", "has_tag", "all_of", "any_of",
        "performed", "last_performed", "never_performed", "trait", "trait_date",
        "trait_older_than", "trait_newer_than", "score_between", "grade_in",
        "stage_at_least", "consented", "in_journey", "received", "in_segment",
        "random_bucket",
    },
    segments: {"Segment", "segment_entered", "segment_exited"},
    broadcasts: {"Broadcast", "ABTest", "Variant"},
    pipeline: {"Pipeline", "Stage", "Phase", "StageRule", "Detour", "Recycle"},
    scoring: {"ScoringModel", "ScoreRule", "GradingModel", "GradeRule", "Mql"},
    sales: {"Routing", "Team", "Pool", "Owner", "Territory", "Sla", "BusinessHours"},
    datetime: {"timedelta", "time"},
    definitions: {"Definitions", "journeys_in"},
    events: {"EventCatalog", "EventType"},
    value: {"ValueModel", "Tier", "Catalog", "Product"},
}  # fmt: skip


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}; import json, sys; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def _io(loaded: list[str]) -> list[str]:
    return [m for m in loaded if any(m == f or m.startswith(f + ".") for f in IO_FRAMEWORKS)]


def test_all_is_exactly_the_authoring_vocabulary() -> None:
    expected = set().union(*VOCABULARY.values())
    assert set(stagecoach.__all__) == expected
    assert len(stagecoach.__all__) == len(expected)


@pytest.mark.parametrize(
    ("module", "name"),
    [(m, n) for m, names in VOCABULARY.items() for n in sorted(names)],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_each_name_is_the_domain_object(module: object, name: str) -> None:
    assert getattr(stagecoach, name) is getattr(module, name)


@pytest.mark.parametrize("name", ["step", "Deliver", "StartTimer", "compile_journey", "simulate"])
def test_the_interpreter_and_the_tools_are_not_vocabulary(name: str) -> None:
    assert name not in stagecoach.__all__
    with pytest.raises(AttributeError, match=f"no attribute '{name}'"):
        getattr(stagecoach, name)


def test_importing_stagecoach_loads_no_io_framework_and_no_domain_module() -> None:
    loaded = _loaded_after("import stagecoach")
    assert _io(loaded) == []
    assert [m for m in loaded if m.startswith("stagecoach.")] == []


def test_the_whole_vocabulary_loads_no_io_framework() -> None:
    loaded = _loaded_after("from stagecoach import *")
    assert _io(loaded) == []
    assert "stagecoach.engine.domain.journeys" in loaded
    assert not [m for m in loaded if m.startswith(("stagecoach.workflows", "stagecoach.engine.s"))]


def test_the_probe_sees_io_where_there_is_some() -> None:
    """The checks above can fail: the API app does load an I/O framework."""
    assert _io(_loaded_after("import stagecoach.engine.app"))
