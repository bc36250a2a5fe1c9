"""Definitions: a project's pipeline, events and journeys, checked as a whole, and what
each kind of malformed definition says."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stagecoach.engine.domain.definitions import (
    PIPELINE,
    Definitions,
    DefinitionsError,
    journeys_in,
)
from stagecoach.engine.domain.events import EventCatalog, EventType
from stagecoach.engine.domain.journeys import Journey, send, stage_entered
from stagecoach.workflows.events import CATALOG
from stagecoach.workflows.journeys import JOURNEYS
from stagecoach.workflows.pipeline import DEFAULT


def _journey(name: str, content: str = "onboarding-welcome") -> Journey:
    return Journey(name, entry=stage_entered("customer"), steps=[send(content, id="hello")])


def test_the_bundled_example_is_valid_and_compiles_every_journey() -> None:
    defs = Definitions(pipeline=DEFAULT, events=CATALOG, journeys=JOURNEYS)
    specs, problems = defs.compile()
    assert problems == []
    assert list(specs) == list(JOURNEYS)


def test_each_malformed_definition_names_the_field_and_the_fix() -> None:
    with pytest.raises(DefinitionsError, match=r"pipeline=\.\.\.\) got str: pass a Pipeline"):
        Definitions(pipeline="default", events=CATALOG)  # type: ignore[arg-type]
    with pytest.raises(DefinitionsError, match=r"events=\.\.\.\) got list"):
        Definitions(pipeline=DEFAULT, events=[])  # type: ignore[arg-type]
    with pytest.raises(DefinitionsError, match="list Journey"):
        Definitions(pipeline=DEFAULT, events=CATALOG, journeys=["welcome"])  # type: ignore[list-item]
    with pytest.raises(DefinitionsError, match="two journeys are named 'twin'"):
        Definitions(pipeline=DEFAULT, events=CATALOG, journeys=[_journey("twin"), _journey("twin")])
    with pytest.raises(DefinitionsError, match="under the key 'alias'"):
        Definitions(pipeline=DEFAULT, events=CATALOG, journeys={"alias": _journey("real")})


def test_a_pipeline_naming_an_event_the_project_lacks_is_a_problem_not_a_crash() -> None:
    small = EventCatalog([EventType("order.paid", "An order was paid")])
    defs = Definitions(pipeline=DEFAULT, events=small, journeys=[])
    problems = defs.problems()
    assert [p.journey for p in problems] == [PIPELINE]
    assert "content.downloaded" in problems[0].message


def test_a_journey_naming_an_unknown_stage_is_listed_with_its_step(tmp_path: Path) -> None:
    bad = Journey("bad", entry=stage_entered("prospekt"), steps=[send("x", id="hello")])
    defs = Definitions(pipeline=DEFAULT, events=CATALOG, journeys=[bad, _journey("good")])
    specs, problems = defs.compile()
    assert list(specs) == ["good"]
    assert {(p.journey, p.step) for p in problems} == {("bad", "entry")}


def test_journeys_in_finds_every_module_level_journey_once(tmp_path: Path) -> None:
    package = tmp_path / "found_journeys_pkg"
    (package / "more").mkdir(parents=True)
    head = "from stagecoach.engine.domain.journeys import Journey, send, stage_entered\n"
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(
        head + "A = Journey('a', entry=stage_entered('lead'), steps=[send('x', id='s')])\n"
    )
    (package / "more" / "__init__.py").write_text("from found_journeys_pkg.a import A\n")
    (package / "more" / "b.py").write_text(
        head + "B = Journey('b', entry=stage_entered('lead'), steps=[send('x', id='s')])\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        assert [j.name for j in journeys_in("found_journeys_pkg")] == ["a", "b"]
        with pytest.raises(DefinitionsError, match="needs a package"):
            journeys_in("found_journeys_pkg.a")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("found_journeys_pkg")]:
            del sys.modules[name]
