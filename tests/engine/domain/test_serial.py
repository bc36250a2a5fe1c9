"""stagecoach.engine.domain.serial: the one dataclass <-> JSON helper, and what old recorded data
decodes to."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest

from stagecoach.engine.domain import serial
from stagecoach.engine.domain.conditions import ConditionError, condition_from_dict
from stagecoach.engine.domain.journeys import ReEntry, SpecFormatError, Step
from stagecoach.engine.domain.pipeline import Pipeline, PipelineError, Stage, Transition
from stagecoach.engine.domain.sales import Assignment, Routing, SalesError
from stagecoach.engine.domain.scoring import ScoringModel
from stagecoach.workflows.events import CATALOG
from stagecoach.workflows.pipeline import PIPELINES

AT = datetime(2026, 5, 1, 8, 30, tzinfo=UTC)


@dataclass(frozen=True)
class Inner(serial.Record):
    at: datetime
    every: timedelta


@serial.fields(
    rename={"window": "window_seconds"},
    omit_if_default=("extra",),
    missing={"note": ""},
    order=("name", "note", "window", "inners", "on", "opens", "extra"),
)
@dataclass(frozen=True)
class Outer(serial.Record):
    name: str
    window: timedelta
    inners: tuple[Inner, ...] = ()
    on: date | None = None
    opens: time = time(9)
    note: str = field(default="n/a")
    extra: int | None = None


def test_generic_form_converts_times_durations_and_tuples() -> None:
    value = Outer(
        name="x",
        window=timedelta(hours=1),
        inners=(Inner(AT, timedelta(minutes=5)),),
        on=date(2026, 5, 1),
        note="hi",
    )
    assert value.to_dict() == {
        "name": "x",
        "note": "hi",
        "window_seconds": 3600.0,
        "inners": [{"at": "2026-05-01T08:30:00+00:00", "every": 300.0}],
        "on": "2026-05-01",
        "opens": "09:00:00",
    }
    assert Outer.from_dict(value.to_dict()) == value


def test_a_field_left_at_its_default_is_omitted_and_appears_in_place_once_set() -> None:
    data = Outer(name="x", window=timedelta(0), extra=3).to_dict()
    assert list(data) == ["name", "note", "window_seconds", "inners", "on", "opens", "extra"]
    assert "extra" not in Outer(name="x", window=timedelta(0)).to_dict()


def test_decoding_ignores_unknown_keys_and_fills_what_older_data_lacks() -> None:
    decoded = Outer.from_dict({"name": "x", "window_seconds": "60", "added_later": True})
    assert decoded == Outer(name="x", window=timedelta(minutes=1), note="")


def test_a_missing_required_key_is_a_key_error_naming_the_stored_key() -> None:
    with pytest.raises(KeyError, match="window_seconds"):
        Outer.from_dict({"name": "x"})


def test_an_order_that_leaves_a_key_out_is_refused() -> None:
    @serial.fields(order=("a",))
    @dataclass(frozen=True)
    class Partial(serial.Record):
        a: int
        b: int

    with pytest.raises(TypeError, match="must list every key"):
        Partial(1, 2).to_dict()


def test_a_record_converts_where_its_module_is_not_in_sys_modules(tmp_path: Path) -> None:
    """Temporal's sandbox swaps ``sys.modules``: a converter first needed during a
    workflow task must still resolve the class's annotations."""
    source = tmp_path / "serial_probe_module.py"
    source.write_text(
        "from __future__ import annotations\n"
        "from collections.abc import Mapping\n"
        "from dataclasses import dataclass\n"
        "from datetime import timedelta\n"
        "from stagecoach.engine.domain import serial\n"
        "@dataclass(frozen=True)\n"
        "class Probe(serial.Record):\n"
        "    waits: Mapping[str, timedelta]\n",
        encoding="utf-8",
    )
    spec = importlib.util.spec_from_file_location("serial_probe_module", source)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    probe_cls: Any = module.Probe
    probe = probe_cls({"a": timedelta(seconds=2)})
    assert probe.to_dict() == {"waits": {"a": 2.0}}
    assert probe_cls.from_dict({"waits": {"a": 2}}) == probe


def test_a_bad_operator_is_still_named_by_the_condition_not_the_converter() -> None:
    with pytest.raises(ConditionError, match=r"filter.op 'near' is unknown; use one of"):
        condition_from_dict({"kind": "attribute", "path": "city", "op": "near", "value": 1})


def test_a_null_text_value_decodes_as_null_not_as_the_word_none() -> None:
    assert Transition.from_dict(
        {"from_stage": "a", "to_stage": "b", "at": AT.isoformat(), "reason": None}
    ) == Transition("a", "b", AT, None)  # type: ignore[arg-type]


# What data recorded by earlier versions decodes to.


def test_a_transition_recorded_before_reason_and_kind_existed_decodes() -> None:
    old = {"from_stage": "lead", "to_stage": "opportunity", "at": AT.isoformat()}
    assert Transition.from_dict(old) == Transition("lead", "opportunity", AT, "")


def test_an_unknown_transition_kind_is_a_pipeline_error_naming_the_kinds() -> None:
    bad = {"from_stage": "a", "to_stage": "b", "at": AT.isoformat(), "kind": "magic"}
    with pytest.raises(PipelineError, match="use rule, detour, manual"):
        Transition.from_dict(bad)


def test_an_assignment_with_only_its_team_decodes_with_the_old_defaults() -> None:
    decoded = Assignment.from_dict({"team": "north"})
    assert decoded == Assignment("north", None, "UTC", None, "")
    with pytest.raises(SalesError, match="use team, round_robin, kept"):
        Assignment.from_dict({"team": "north", "kind": "guess"})


def test_a_stage_stored_without_a_label_shows_its_name() -> None:
    assert Stage.from_dict({"name": "lead"}) == Stage("lead", "lead")


def test_a_scoring_model_stored_without_half_life_does_not_decay() -> None:
    assert ScoringModel.from_dict({}) == ScoringModel(rules=(), half_life=None)


def test_a_pipeline_stored_before_routing_and_recycle_existed_keeps_its_version() -> None:
    data = PIPELINES["default"].to_dict()
    del data["routing"], data["recycle"]
    pipeline = Pipeline.from_dict(data, catalog=CATALOG)
    assert pipeline.routing is None
    assert pipeline.recycle is None
    assert pipeline.to_dict() == data


def test_a_routing_stored_without_a_service_team_has_none() -> None:
    routing = PIPELINES["default"].routing
    assert routing is not None
    data = routing.to_dict()
    del data["service"], data["service_sla"]
    decoded = Routing.from_dict(data)
    assert decoded.service is None
    assert decoded.service_sla is None
    assert decoded.to_dict() == data


def test_a_re_entry_stored_without_a_cooldown_has_none() -> None:
    assert ReEntry.from_dict({"policy": "always"}) == ReEntry.always()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "teleport", "id": "t"}, "unknown kind 'teleport'"),
        ({"kind": "wait", "id": "w"}, "missing field 'duration_seconds'"),
        ({"kind": "add_tag", "id": "a"}, "missing field 'tag'"),
    ],
)
def test_a_malformed_step_is_a_spec_format_error_naming_the_step_and_field(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecFormatError, match=message) as caught:
        Step.from_dict(data)
    assert repr(data["id"]) in str(caught.value)
