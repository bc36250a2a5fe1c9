"""Pipelines: validation when built, forward-only rules, detours, phases, JSON and version."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stagecoach.engine.domain.conditions import (
    EventMatcher,
    EventRecord,
    Facts,
    event,
    score_at_least,
    stage_in,
)
from stagecoach.engine.domain.events import EventCatalog, EventType
from stagecoach.engine.domain.pipeline import (
    BackwardMoveError,
    Detour,
    DetourNotAllowedError,
    Phase,
    Pipeline,
    PipelineDefinitionError,
    Recycle,
    Stage,
    StageRule,
    Transition,
    UnknownStageError,
    advance_to,
    apply_detour,
    apply_recycle,
    canonical_json,
    evaluate_transition,
    validate_pipelines,
)
from stagecoach.engine.domain.sales import Pool, Routing, Team
from stagecoach.engine.domain.scoring import GradingModel, Mql, ScoreRule, ScoringModel

NOW = datetime(2026, 5, 1, tzinfo=UTC)

CAT = EventCatalog(
    [
        EventType("form.submitted", "x"),
        EventType("demo.requested", "x"),
        EventType("order.paid", "x"),
        EventType("nps.answered", "x"),
        EventType("email.clicked", "x"),
    ]
)

STAGES = (
    Stage("a", "A", label_zh="甲", phase="early"),
    Stage("b", "B", label_zh="乙", phase="early"),
    Stage("c", "C", label_zh="丙", phase="early"),
    Stage("d", "D", label_zh="丁", phase="late"),
)
PHASES = (Phase("early", "Early", "前", "a", "c"), Phase("late", "Late", "后", "c", "d"))
RULES = (
    StageRule("b", event("form.submitted"), "hand_raised"),
    StageRule("c", score_at_least(40) | event("demo.requested"), "engaged"),
    StageRule("d", event("nps.answered"), "promoter", from_stages=("c",)),
)
DETOURS = (
    Detour("recycled", ("c",), "b"),
    Detour("dropped", (), "gone"),
    Detour("back_quietly", ("b", "c"), "a", reason_required=False),
)
SCORING = ScoringModel(rules=(ScoreRule("click", EventMatcher("email.clicked"), 5),))


def build(**overrides: Any) -> Pipeline:
    kwargs: dict[str, Any] = {
        "name": "test",
        "stages": STAGES,
        "phases": PHASES,
        "states": ("gone",),
        "rules": RULES,
        "detours": DETOURS,
        "mql": Mql(score_at_least(60)),
        "scoring": SCORING,
        "grading": GradingModel(rules=()),
    }
    kwargs.update(overrides)
    return Pipeline(**kwargs)


def facts(*types: str, score: float = 0.0) -> Facts:
    return Facts(now=NOW, score=score, events=tuple(EventRecord(t, NOW) for t in types))


# Forward rules


def test_rule_moves_forward_and_records_reason_trigger_and_source() -> None:
    trigger = EventRecord("form.submitted", NOW)
    t = evaluate_transition(build(), "a", facts("form.submitted"), trigger, "workflow")
    assert t == Transition("a", "b", NOW, "hand_raised", "form.submitted", None, "workflow")


def test_no_rule_holds_means_no_transition() -> None:
    assert evaluate_transition(build(), "a", facts("email.clicked"), None, "workflow") is None


def test_furthest_forward_stage_wins_so_jumps_are_allowed() -> None:
    t = evaluate_transition(build(), "a", facts("form.submitted", "demo.requested"), None, "w")
    assert t is not None
    assert (t.from_stage, t.to_stage, t.reason) == ("a", "c", "engaged")


def test_from_stages_rule_fires_after_the_jump_that_reaches_its_stage() -> None:
    t = evaluate_transition(build(), "a", facts("demo.requested", "nps.answered"), None, "w")
    assert t is not None
    assert (t.to_stage, t.reason) == ("d", "engaged > promoter")


def test_from_stages_rule_does_not_fire_from_other_stages() -> None:
    pipeline = build(rules=RULES[2:])
    assert evaluate_transition(pipeline, "a", facts("nps.answered"), None, "w") is None


def test_rules_never_move_backward() -> None:
    # The contact is at c; the rule to b holds but b is behind.
    assert evaluate_transition(build(), "c", facts("form.submitted"), None, "w") is None


def test_contact_in_an_off_pipeline_state_is_not_moved_by_rules() -> None:
    assert evaluate_transition(build(), "gone", facts("demo.requested"), None, "w") is None


def test_rules_see_the_stage_being_evaluated_from() -> None:
    rule = StageRule("b", stage_in("a") & event("form.submitted"), "from_a_only")
    pipeline = build(rules=(rule,))
    stale = replace(facts("form.submitted"), stage="zzz")
    assert evaluate_transition(pipeline, "a", stale, None, "w") is not None


def test_tie_between_rules_to_the_same_stage_goes_to_the_first_declared() -> None:
    rules = (
        StageRule("b", event("form.submitted"), "first"),
        StageRule("b", event("form.submitted"), "second"),
    )
    t = evaluate_transition(build(rules=rules), "a", facts("form.submitted"), None, "w")
    assert t is not None
    assert t.reason == "first"


def test_unknown_current_stage_is_a_named_error() -> None:
    with pytest.raises(UnknownStageError, match=r"'test' has no stage or state 'x'.*stages: a"):
        evaluate_transition(build(), "x", facts(), None, "w")


# Detours and manual moves


def test_declared_detour_moves_back_with_its_reason() -> None:
    t = apply_detour(build(), "c", "recycled", "no budget this year", NOW, "api")
    assert (t.from_stage, t.to_stage, t.kind) == ("c", "b", "detour")
    assert t.reason == "recycled: no budget this year"


def test_detour_to_a_state_with_empty_from_stages_starts_anywhere() -> None:
    for stage in ("a", "b", "c", "d"):
        assert apply_detour(build(), stage, "dropped", "spam", NOW, "api").to_stage == "gone"


def test_detour_from_a_stage_it_does_not_start_from_is_refused_listing_allowed_ones() -> None:
    with pytest.raises(DetourNotAllowedError, match=r"'recycled' is not allowed from 'b'.*dropped"):
        apply_detour(build(), "b", "recycled", "why", NOW, "api")


def test_unknown_detour_is_refused_listing_declared_ones() -> None:
    with pytest.raises(DetourNotAllowedError, match=r"no detour 'recycle'.*'recycled'"):
        apply_detour(build(), "c", "recycle", "why", NOW, "api")


def test_detour_needing_a_reason_refuses_an_empty_one() -> None:
    with pytest.raises(DetourNotAllowedError, match=r"'recycled' requires a reason"):
        apply_detour(build(), "c", "recycled", "  ", NOW, "api")


def test_detour_not_needing_a_reason_accepts_none() -> None:
    assert apply_detour(build(), "c", "back_quietly", "", NOW, "api").reason == "back_quietly"


def test_manual_forward_move_is_allowed() -> None:
    t = advance_to(build(), "a", "c", reason="imported from CRM", at=NOW, source="cli")
    assert (t.to_stage, t.kind) == ("c", "manual")


def test_manual_backward_move_is_refused_pointing_at_the_detour() -> None:
    with pytest.raises(BackwardMoveError, match=r"from 'c' to 'b'.*apply_detour with 'recycled'"):
        advance_to(build(), "c", "b", reason="oops", at=NOW, source="cli")


def test_manual_backward_move_without_any_detour_says_to_declare_one() -> None:
    with pytest.raises(BackwardMoveError, match="declare a Detour"):
        advance_to(build(), "d", "c", reason="oops", at=NOW, source="cli")


def test_manual_move_to_the_same_stage_is_refused() -> None:
    with pytest.raises(BackwardMoveError):
        advance_to(build(), "b", "b", reason="again", at=NOW, source="cli")


def test_manual_move_out_of_a_state_is_refused() -> None:
    with pytest.raises(BackwardMoveError, match="only a detour"):
        advance_to(build(), "gone", "d", reason="back", at=NOW, source="cli")


# Transition JSON


def test_transition_round_trips_through_json() -> None:
    t = Transition("a", "b", NOW, "hand_raised", "form.submitted", "msg-1", "workflow")
    assert Transition.from_dict(json.loads(json.dumps(t.to_dict()))) == t


def test_transition_from_dict_ignores_unknown_keys_and_defaults_optional_ones() -> None:
    data = {"from_stage": "a", "to_stage": "b", "at": NOW.isoformat(), "added_later": 1}
    assert Transition.from_dict(data) == Transition("a", "b", NOW, "")


# Phases


def test_phase_stages_include_the_shared_boundary_stage() -> None:
    p = build()
    assert p.phase_stages("early") == ("a", "b", "c")
    assert p.phase_stages("late") == ("c", "d")
    assert [ph.name for ph in p.phases_of("c")] == ["early", "late"]
    assert p.stage("c").phase == "early"


def test_unknown_phase_is_a_named_error_listing_phases() -> None:
    with pytest.raises(UnknownStageError, match=r"no phase 'middle'; phases: early, late"):
        build().phase_stages("middle")


def test_phase_with_a_gap_is_refused() -> None:
    phases = (Phase("early", "E", "", "a", "b"), Phase("late", "L", "", "d", "d"))
    with pytest.raises(PipelineDefinitionError, match=r"'test': phase 'late'.*gap"):
        build(phases=phases, stages=tuple(replace(s, phase="") for s in STAGES))


def test_phases_not_reaching_the_last_stage_are_refused() -> None:
    with pytest.raises(PipelineDefinitionError, match=r"extend the last phase"):
        build(phases=PHASES[:1], stages=tuple(replace(s, phase="early") for s in STAGES))


def test_stage_in_a_phase_it_is_not_in_is_refused() -> None:
    stages = (*STAGES[:3], Stage("d", "D", label_zh="", phase="early"))
    with pytest.raises(PipelineDefinitionError, match=r"stage 'd' has phase 'early'.*late"):
        build(stages=stages)


def test_stage_naming_a_phase_without_phases_is_refused() -> None:
    with pytest.raises(PipelineDefinitionError, match=r"declares no phases"):
        build(phases=())


# Validation when built


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "Test Pipeline"}, r"pipeline name 'Test Pipeline'.*lowercase identifier"),
        ({"stages": ()}, r"'test': has no stages"),
        (
            {"stages": (*STAGES, Stage("b", "B again"))},
            r"'test': stage 'b' is listed twice",
        ),
        (
            {"rules": (StageRule("e", event("form.submitted"), "ghost"),)},
            r"'test': stage rule 'ghost' moves to unknown stage 'e'",
        ),
        (
            {"rules": (StageRule("dd", event("form.submitted"), "typo"),)},
            r"stage rule 'typo' moves to unknown stage 'dd'; did you mean 'd'",
        ),
        (
            {"rules": (StageRule("a", event("form.submitted"), "to_start"),)},
            r"stage rule 'to_start' moves to the first stage 'a'.*point it at a later stage",
        ),
        (
            {"rules": (StageRule("b", event("form.submitted"), "back", from_stages=("c",)),)},
            r"stage rule 'back' points backward from 'c' to 'b'.*declare a Detour",
        ),
        (
            {"rules": (StageRule("c", event("form.submitted"), "r", from_stages=("zz",)),)},
            r"stage rule 'r' starts from unknown stage 'zz'",
        ),
        (
            {"rules": (StageRule("c", stage_in("bb"), "r"),)},
            r"stage rule 'r' tests stage_in\('bb'\), an unknown stage; did you mean 'b'",
        ),
        ({"rules": (RULES[0], RULES[0])}, r"stage rule 'hand_raised' is declared twice"),
        (
            {"detours": (Detour("lost", (), "nowhere"),)},
            r"detour 'lost' goes to 'nowhere'.*neither a stage nor a declared state.*states=",
        ),
        (
            {"detours": (Detour("skip", ("a",), "c"),)},
            r"detour 'skip' goes forward from 'a' to 'c'.*write a StageRule",
        ),
        (
            {"detours": (Detour("r", ("x",), "a"),)},
            r"detour 'r' starts from unknown stage 'x'",
        ),
        ({"detours": (DETOURS[0], DETOURS[0])}, r"detour 'recycled' is declared twice"),
        ({"states": ("b",)}, r"state 'b' is also a stage"),
    ],
)
def test_invalid_pipeline_is_refused_naming_pipeline_rule_and_fix(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(PipelineDefinitionError, match=message):
        build(**overrides)


def test_event_not_in_the_catalog_is_refused_naming_rule_and_suggestion() -> None:
    rules = (StageRule("b", event("form.submited"), "hand_raised"),)
    with pytest.raises(
        PipelineDefinitionError,
        match=r"pipeline 'test', stage rule 'hand_raised': event type 'form.submited'.*"
        r"did you mean 'form.submitted'",
    ):
        build(rules=rules, catalog=CAT)


def test_score_rule_event_not_in_the_catalog_is_refused_naming_the_score_rule() -> None:
    scoring = ScoringModel(rules=(ScoreRule("views", EventMatcher("page.viewed"), 1),))
    with pytest.raises(PipelineDefinitionError, match=r"score rule 'views'.*'page.viewed'"):
        build(scoring=scoring, catalog=CAT)


def test_pipeline_within_the_catalog_builds() -> None:
    assert build(catalog=CAT).name == "test"


def test_validate_pipelines_refuses_a_key_that_is_not_the_name() -> None:
    with pytest.raises(PipelineDefinitionError, match=r"registered as 'other'"):
        validate_pipelines({"other": build()})


# Queries, JSON, version


def test_event_types_unite_rules_mql_and_scoring() -> None:
    pipeline = build(mql=Mql(score_at_least(60) & event("order.paid")))
    assert pipeline.event_types() == frozenset(
        {"form.submitted", "demo.requested", "nps.answered", "order.paid", "email.clicked"}
    )


def test_pipeline_round_trips_through_json() -> None:
    pipeline = build()
    again = Pipeline.from_dict(json.loads(json.dumps(pipeline.to_dict())), catalog=CAT)
    assert again == pipeline
    assert again.version == pipeline.version


def test_version_is_a_sha256_that_changes_with_the_definition() -> None:
    pipeline = build()
    assert len(pipeline.version) == 64
    assert build().version == pipeline.version
    changed = build(rules=(*RULES[:2], StageRule("d", event("order.paid"), "paid")))
    assert changed.version != pipeline.version


def test_stage_lookup_suggests_the_closest_name() -> None:
    with pytest.raises(UnknownStageError, match=r"'cc'; did you mean 'c'"):
        build().stage("cc")


def test_first_stage_and_index() -> None:
    pipeline = build()
    assert pipeline.first_stage == "a"
    assert pipeline.index("d") == 3
    assert pipeline.stage_names == ("a", "b", "c", "d")


def test_detour_sources_default_to_every_later_stage() -> None:
    pipeline = build(detours=(Detour("restart", (), "a"),))
    assert pipeline.detour_sources(pipeline.detour("restart")) == ("b", "c", "d")


def test_window_in_a_rule_is_respected() -> None:
    rules = (StageRule("b", event("form.submitted", within=timedelta(days=7)), "recent"),)
    old = Facts(now=NOW, events=(EventRecord("form.submitted", NOW - timedelta(days=8)),))
    assert evaluate_transition(build(rules=rules), "a", old, None, "w") is None


def test_version_ignores_int_versus_float_spelling_of_numbers() -> None:
    assert (
        build(mql=Mql(score_at_least(60))).version == build(mql=Mql(score_at_least(60.0))).version
    )


def test_canonical_json_sorts_keys_and_writes_integral_floats_as_integers() -> None:
    assert canonical_json({"b": 1.0, "a": [2.5, "天"]}) == '{"a":[2.5,"天"],"b":1}'


# Sales: routing and recycling


ROUTING = Routing(
    teams={
        "A": Team("key-accounts", owners=("zhang.wei",), lead="li.na", timezone="Asia/Shanghai")
    },
    pools={"B": Pool("inside-sales", owners=("wang.fang", "chen.jing"), timezone="Asia/Shanghai")},
)
REJECTION_SCORING = ScoringModel(
    rules=(*SCORING.rules, ScoreRule("rejected", EventMatcher("sales.rejected"), -20))
)
RECYCLE = Recycle(detour="recycled", cool_down=timedelta(days=30))


def with_sales(**overrides: Any) -> Pipeline:
    kwargs: dict[str, Any] = {
        "routing": ROUTING,
        "recycle": RECYCLE,
        "scoring": REJECTION_SCORING,
    }
    kwargs.update(overrides)
    return build(**kwargs)


def test_pipeline_without_routing_or_recycle_keeps_its_old_form() -> None:
    data = build().to_dict()
    assert "routing" not in data
    assert "recycle" not in data


def test_definition_serialised_before_routing_existed_still_loads() -> None:
    data = with_sales().to_dict()
    del data["routing"], data["recycle"]
    again = Pipeline.from_dict(json.loads(json.dumps(data)))
    assert (again.routing, again.recycle) == (None, None)


def test_routing_and_recycle_round_trip_and_change_the_version() -> None:
    pipeline = with_sales()
    again = Pipeline.from_dict(json.loads(json.dumps(pipeline.to_dict())))
    assert again == pipeline
    assert again.routing == ROUTING
    assert again.recycle == RECYCLE
    assert again.version == pipeline.version
    assert pipeline.version != with_sales(routing=None).version


def test_recycle_takes_its_detour_with_sales_reason() -> None:
    t = apply_recycle(with_sales(), "c", "no budget until Q3", at=NOW, source="sales")
    assert t is not None
    assert (t.from_stage, t.to_stage, t.reason, t.kind, t.source) == (
        "c",
        "b",
        "recycled: no budget until Q3",
        "detour",
        "sales",
    )


def test_recycle_leaves_a_contact_its_detour_does_not_start_from() -> None:
    assert apply_recycle(with_sales(), "b", "already in nurture", at=NOW, source="sales") is None
    assert apply_recycle(with_sales(), "d", "bought since", at=NOW, source="sales") is None
    assert apply_recycle(build(), "c", "no recycle declared", at=NOW, source="sales") is None


def test_recycle_needs_a_reason_when_its_detour_does() -> None:
    with pytest.raises(DetourNotAllowedError, match=r"requires a reason"):
        apply_recycle(with_sales(), "c", " ", at=NOW, source="sales")


def test_recycle_from_an_unknown_stage_is_a_named_error() -> None:
    with pytest.raises(UnknownStageError, match=r"no stage or state 'lead'"):
        apply_recycle(with_sales(), "lead", "x", at=NOW, source="sales")


def test_recycle_cool_down_counts_rejections_within_it() -> None:
    rejected = [EventRecord("sales.rejected", NOW)]
    assert RECYCLE.cooling_down(rejected, NOW + timedelta(days=29))
    assert not RECYCLE.cooling_down(rejected, NOW + timedelta(days=31))
    assert not RECYCLE.cooling_down([EventRecord("sales.accepted", NOW)], NOW)
    assert RECYCLE.recently_rejected() == event("sales.rejected", within=timedelta(days=30))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"recycle": Recycle(detour="recyled")},
            r"detour 'recyled' is not declared; did you mean 'recycled'",
        ),
        ({"recycle": Recycle(cool_down=timedelta(0))}, r"cool_down must be positive"),
        ({"scoring": SCORING}, r"no score rule lowers the score on 'sales.rejected'"),
    ],
)
def test_malformed_recycle_is_refused_naming_the_fix(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(PipelineDefinitionError, match=rf"pipeline 'test': recycle: {message}"):
        with_sales(**overrides)


def test_recycle_event_counts_as_a_pipeline_event_and_must_be_in_the_catalog() -> None:
    assert "sales.rejected" in with_sales().event_types()
    with pytest.raises(PipelineDefinitionError, match=r"sales.rejected"):
        with_sales(catalog=CAT)
