"""Engagement scoring (lazy decay, caps, top contributions), fit grading and MQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from stagecoach.engine.domain.conditions import (
    EventMatcher,
    EventRecord,
    Facts,
    PropertyFilter,
    attribute,
    event,
    grade_at_least,
    score_at_least,
)
from stagecoach.engine.domain.scoring import (
    GradeResult,
    GradeRule,
    GradingModel,
    Mql,
    ScoreChange,
    ScoreRule,
    ScoreState,
    ScoringError,
    ScoringModel,
    apply_event,
    apply_events,
    grade,
    grade_attributes,
    is_mql,
    rules_table,
    score_at,
    shown_score,
    top_contributions,
    with_score,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def ev(type_: str, day: float, **props: object) -> EventRecord:
    return EventRecord(type_, T0 + timedelta(days=day), props)


def model(
    *rules: ScoreRule, half_life: timedelta | None = 30 * DAY, top_n: int = 10
) -> ScoringModel:
    return ScoringModel(rules=rules, half_life=half_life, top_n=top_n)


DOWNLOAD = ScoreRule("download", EventMatcher("content.downloaded"), 10)


# Lazy decay


def test_score_halves_after_one_half_life() -> None:
    m = model(DOWNLOAD)
    state, _ = apply_event(m, ScoreState(), ev("content.downloaded", 0))
    assert score_at(m, state, T0 + 30 * DAY) == pytest.approx(5.0)
    assert score_at(m, state, T0 + 60 * DAY) == pytest.approx(2.5)


def test_score_at_does_not_change_the_state() -> None:
    m = model(DOWNLOAD)
    state, _ = apply_event(m, ScoreState(), ev("content.downloaded", 0))
    score_at(m, state, T0 + 90 * DAY)
    assert state.value == 10
    assert state.as_of == T0


def test_score_before_as_of_is_the_stored_value() -> None:
    m = model(DOWNLOAD)
    state, _ = apply_event(m, ScoreState(), ev("content.downloaded", 10))
    assert score_at(m, state, T0) == 10


def test_no_half_life_means_no_decay() -> None:
    m = model(DOWNLOAD, half_life=None)
    state, _ = apply_event(m, ScoreState(), ev("content.downloaded", 0))
    assert score_at(m, state, T0 + 3650 * DAY) == 10


def test_points_add_on_top_of_the_decayed_value() -> None:
    m = model(DOWNLOAD)
    state, _ = apply_event(m, ScoreState(), ev("content.downloaded", 0))
    state, change = apply_event(m, state, ev("content.downloaded", 30))
    assert change is not None
    assert change.value == pytest.approx(15.0)
    assert state.as_of == T0 + 30 * DAY


def test_late_event_gives_the_same_score_as_in_order_delivery() -> None:
    m = model(DOWNLOAD)
    in_order, _ = apply_events(
        m, ScoreState(), [ev("content.downloaded", 0), ev("content.downloaded", 20)]
    )
    late, _ = apply_events(
        m, ScoreState(), [ev("content.downloaded", 20), ev("content.downloaded", 0)]
    )
    now = T0 + 45 * DAY
    assert score_at(m, late, now) == pytest.approx(score_at(m, in_order, now))
    assert late.as_of == T0 + 20 * DAY


def test_naive_datetime_is_refused_with_the_fix() -> None:
    m = model(DOWNLOAD)
    with pytest.raises(ScoringError, match="no time zone; pass an aware datetime"):
        apply_event(m, ScoreState(), EventRecord("content.downloaded", datetime(2026, 1, 1)))
    with pytest.raises(ScoringError, match=r"now .* no time zone"):
        score_at(m, ScoreState(), datetime(2026, 1, 1))


# Rules: first match, negative points, unscored events


def test_first_matching_rule_scores_the_event_once() -> None:
    pricing = ScoreRule(
        "pricing", EventMatcher("page.viewed", (PropertyFilter("category", "eq", "pricing"),)), 10
    )
    any_page = ScoreRule("page", EventMatcher("page.viewed"), 1)
    m = model(pricing, any_page)
    _, change = apply_event(m, ScoreState(), ev("page.viewed", 0, category="pricing"))
    assert change is not None
    assert (change.rule, change.points_awarded) == ("pricing", 10)
    _, change = apply_event(m, ScoreState(), ev("page.viewed", 0, category="blog"))
    assert change is not None
    assert (change.rule, change.points_awarded) == ("page", 1)


def test_negative_points_lower_the_score() -> None:
    unsub = ScoreRule("unsubscribed", EventMatcher("email.unsubscribed"), -20)
    m = model(DOWNLOAD, unsub)
    state, _ = apply_events(
        m, ScoreState(), [ev("content.downloaded", 0), ev("email.unsubscribed", 0)]
    )
    assert state.value == -10


def test_event_no_rule_scores_leaves_the_state_unchanged() -> None:
    m = model(DOWNLOAD)
    state = ScoreState()
    new_state, change = apply_event(m, state, ev("page.viewed", 0))
    assert change is None
    assert new_state is state


# Caps


def test_lifetime_cap_cuts_the_award_and_says_so() -> None:
    m = model(ScoreRule("download", EventMatcher("content.downloaded"), 10, cap_per_rule=25))
    state, changes = apply_events(m, ScoreState(), [ev("content.downloaded", d) for d in range(4)])
    assert [c.points_awarded for c in changes] == [10, 10, 5, 0]
    assert [c.capped for c in changes] == [False, False, True, True]
    assert state.per_rule_totals["download"] == 25


def test_lifetime_cap_bounds_negative_rules_by_magnitude() -> None:
    m = model(ScoreRule("bounce", EventMatcher("email.bounced"), -10, cap_per_rule=15))
    state, changes = apply_events(m, ScoreState(), [ev("email.bounced", d) for d in range(3)])
    assert [c.points_awarded for c in changes] == [-10, -5, 0]
    assert state.value < 0


def test_period_cap_holds_within_a_sliding_window() -> None:
    rule = ScoreRule("click", EventMatcher("email.clicked"), 5, cap_per_period=(10, 7 * DAY))
    m = model(rule, half_life=None)
    _, changes = apply_events(
        m, ScoreState(), [ev("email.clicked", d) for d in (0, 1, 2, 6.9, 7.5, 8.5)]
    )
    # Days 0 and 1 fill the cap; day 7.5 sees only day 1 in (0.5, 7.5]; day 8.5 only day 7.5.
    assert [c.points_awarded for c in changes] == [5, 5, 0, 0, 5, 5]


def test_period_window_state_is_pruned_to_the_period() -> None:
    rule = ScoreRule("click", EventMatcher("email.clicked"), 5, cap_per_period=(10, 7 * DAY))
    m = model(rule)
    state, _ = apply_events(m, ScoreState(), [ev("email.clicked", d) for d in range(0, 60, 3)])
    assert all(at > T0 + 50 * DAY for at, _ in state.per_rule_window["click"])


def test_late_event_is_checked_against_the_window_ending_at_its_own_time() -> None:
    rule = ScoreRule("click", EventMatcher("email.clicked"), 5, cap_per_period=(10, 7 * DAY))
    m = model(rule, half_life=None)
    state, _ = apply_events(m, ScoreState(), [ev("email.clicked", 20), ev("email.clicked", 21)])
    _, change = apply_event(m, state, ev("email.clicked", 2))
    assert change is not None
    assert change.points_awarded == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"points": 0}, r"'r' awards 0 points"),
        ({"points": 1, "cap_per_rule": 0}, r"'r': cap_per_rule must be positive"),
        ({"points": 1, "cap_per_period": (5, timedelta(0))}, r"'r': cap_per_period needs"),
        ({"points": 1, "cap_per_period": (0, DAY)}, r"'r': cap_per_period needs"),
    ],
)
def test_bad_score_rule_is_refused_naming_the_rule(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ScoringError, match=message):
        ScoreRule("r", EventMatcher("a.b"), **kwargs)  # type: ignore[arg-type]


def test_score_rule_without_name_is_refused_naming_the_event() -> None:
    with pytest.raises(ScoringError, match=r"'a.b' has no name"):
        ScoreRule("", EventMatcher("a.b"), 1)


def test_duplicate_score_rule_names_are_refused() -> None:
    with pytest.raises(ScoringError, match=r"'download' is used twice"):
        model(DOWNLOAD, DOWNLOAD)


def test_non_positive_half_life_is_refused() -> None:
    with pytest.raises(ScoringError, match="half_life must be positive"):
        model(DOWNLOAD, half_life=timedelta(0))


# Top contributions


def test_top_contributions_are_bounded_and_best_first() -> None:
    rules = [ScoreRule(f"r{p}", EventMatcher(f"e.p{p}"), p) for p in range(1, 16)]
    m = model(*rules, half_life=None, top_n=10)
    state, _ = apply_events(m, ScoreState(), [ev(f"e.p{p}", 0) for p in range(1, 16)])
    assert [c.points for c in state.top] == [float(p) for p in range(15, 5, -1)]


def test_top_contributions_rank_by_decayed_value() -> None:
    small = ScoreRule("small", EventMatcher("e.small"), 6)
    big = ScoreRule("big", EventMatcher("e.big"), 10)
    m = model(small, big, top_n=1)
    # 10 points 30 days before the 6 points: worth 5 by then, so the recent 6 ranks first.
    state, _ = apply_events(m, ScoreState(), [ev("e.big", 0), ev("e.small", 30)])
    assert [c.rule for c in state.top] == ["small"]


def test_negative_events_are_not_top_contributors() -> None:
    m = model(DOWNLOAD, ScoreRule("unsub", EventMatcher("email.unsubscribed"), -20))
    state, _ = apply_events(
        m, ScoreState(), [ev("content.downloaded", 0), ev("email.unsubscribed", 1)]
    )
    assert [c.rule for c in state.top] == ["download"]


def test_top_contributions_show_current_decayed_points() -> None:
    m = model(DOWNLOAD)
    state, _ = apply_event(m, ScoreState(), ev("content.downloaded", 0))
    (top,) = top_contributions(m, state, T0 + 30 * DAY)
    assert top.current_points == pytest.approx(5.0)
    assert top.to_dict()["rule"] == "download"


# JSON


def test_score_state_and_change_round_trip_through_json() -> None:
    m = model(
        DOWNLOAD,
        ScoreRule("click", EventMatcher("email.clicked"), 5, cap_per_period=(10, 7 * DAY)),
    )
    state, changes = apply_events(
        m, ScoreState(), [ev("content.downloaded", 0), ev("email.clicked", 1)]
    )
    assert ScoreState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert ScoreChange.from_dict(json.loads(json.dumps(changes[0].to_dict()))) == changes[0]


def test_score_state_from_older_json_uses_defaults() -> None:
    assert ScoreState.from_dict({}) == ScoreState()


def test_scoring_model_round_trips_through_json() -> None:
    m = model(
        ScoreRule(
            "pricing",
            EventMatcher("page.viewed", (PropertyFilter("category", "eq", "pricing"),)),
            10,
            cap_per_rule=50,
            cap_per_period=(30, 7 * DAY),
        ),
        ScoreRule("unsub", EventMatcher("email.unsubscribed"), -20),
    )
    assert ScoringModel.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert m.event_types() == frozenset({"page.viewed", "email.unsubscribed"})


# Grading


GRADING = GradingModel(
    rules=(
        GradeRule("target_industry", attribute("industry", "in", ["software", "finance"]), 30),
        GradeRule("large_company", attribute("company_size", "gte", 200), 30),
        GradeRule("decision_maker", attribute("role", "in", ["cto", "cio"]), 25),
        GradeRule("student", attribute("role", "eq", "student"), -30),
    ),
    thresholds={"A": 75, "B": 50, "C": 25},
)


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"industry": "software", "company_size": 500, "role": "cto"}, "A"),
        ({"industry": "software", "company_size": 500}, "B"),
        ({"industry": "software"}, "C"),
        ({"industry": "retail", "role": "student"}, "D"),
        ({}, "D"),
    ],
)
def test_grade_from_summed_fit_points(attributes: dict[str, object], expected: str) -> None:
    assert grade_attributes(GRADING, attributes, T0).grade == expected


def test_grade_result_lists_the_rules_that_produced_it() -> None:
    result = grade(GRADING, Facts(now=T0, attributes={"industry": "finance", "role": "cio"}))
    assert result == GradeResult("B", 55.0, ("target_industry", "decision_maker"))


def test_company_size_of_the_wrong_type_does_not_crash_grading() -> None:
    assert grade_attributes(GRADING, {"company_size": "large"}, T0).matched_rules == ()


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [
        ({"A": 75, "B": 50}, r"must name exactly A, B, C"),
        ({"A": 75, "B": 50, "C": 25, "D": 0}, r"must name exactly A, B, C"),
        ({"A": 50, "B": 50, "C": 25}, r"decrease strictly from A to C"),
    ],
)
def test_bad_thresholds_are_refused_with_the_fix(
    thresholds: dict[str, float], message: str
) -> None:
    with pytest.raises(ScoringError, match=message):
        GradingModel(rules=(), thresholds=thresholds)


def test_duplicate_grade_rule_names_are_refused() -> None:
    rule = GradeRule("x", attribute("a"), 1)
    with pytest.raises(ScoringError, match=r"'x' is used twice"):
        GradingModel(rules=(rule, rule))


def test_zero_point_grade_rule_is_refused_naming_it() -> None:
    with pytest.raises(ScoringError, match=r"grade rule 'x' adds 0 points"):
        GradeRule("x", attribute("a"), 0)


def test_grading_model_and_result_round_trip_through_json() -> None:
    assert GradingModel.from_dict(json.loads(json.dumps(GRADING.to_dict()))) == GRADING
    result = grade_attributes(GRADING, {"industry": "software"}, T0)
    assert GradeResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


# MQL


def test_mql_needs_both_score_and_grade() -> None:
    mql = Mql(score_at_least(60) & grade_at_least("B"))
    assert is_mql(mql, Facts(now=T0, score=60, grade="B"))
    assert not mql.is_mql(Facts(now=T0, score=59.9, grade="A"))
    assert not mql.is_mql(Facts(now=T0, score=90, grade="C"))


def test_mql_sees_the_decayed_score() -> None:
    mql = Mql(score_at_least(60) & grade_at_least("B"))
    m = model(ScoreRule("demo", EventMatcher("demo.requested"), 80))
    state, _ = apply_event(m, ScoreState(), ev("demo.requested", 0))
    assert mql.is_mql(with_score(Facts(now=T0 + DAY, grade="A"), m, state))
    assert not mql.is_mql(with_score(Facts(now=T0 + 30 * DAY, grade="A"), m, state))


def test_mql_round_trips_and_reports_event_types() -> None:
    mql = Mql(score_at_least(60) & event("demo.requested"))
    assert Mql.from_dict(json.loads(json.dumps(mql.to_dict()))) == mql
    assert mql.event_types() == frozenset({"demo.requested"})


# The score as shown is the score rules compare


@pytest.mark.parametrize(
    ("age", "shown", "mql"),
    [
        (timedelta(0), 60.0, True),
        (timedelta(seconds=30), 60.0, True),  # 59.9995...: shown 60.0, and an MQL
        (timedelta(seconds=623), 59.99, False),
    ],
)
def test_rules_compare_the_score_as_shown(age: timedelta, shown: float, mql: bool) -> None:
    from stagecoach.engine.domain.contact import facts, new_contact, observe
    from stagecoach.workflows.pipeline import DEFAULT

    state = new_contact("c-edge", DEFAULT, T0)
    traits = {"company_size": 500, "role": "cto"}  # 55 fit points: B
    for n, kind in enumerate(("webinar.attended", "demo.requested", "form.submitted")):
        state = observe(
            state,
            DEFAULT,
            message_id=f"m{n}",
            event=EventRecord(kind, T0),
            traits=traits,
            now=T0,
            source="test",
        ).state
    now = T0 + age
    seen = facts(state, DEFAULT, now, as_shown=True)
    assert seen.score == shown_score(score_at(DEFAULT.scoring, state.score, now)) == shown
    assert DEFAULT.mql.is_mql(seen) is mql
    # Unrounded (runs started before the rule), 60 points a moment old are not 60.
    assert DEFAULT.mql.is_mql(facts(state, DEFAULT, T0 + timedelta(seconds=30))) is False


def test_shown_score_rounds_to_two_places() -> None:
    assert shown_score(59.994999) == 59.99
    assert shown_score(59.995001) == 60.0
    assert shown_score(-0.004) == 0.0


def test_the_documented_rules_are_the_bundled_rules() -> None:
    """docs/scoring.md prints the generated tables: a changed rule fails here until the
    page is regenerated."""
    from pathlib import Path

    from stagecoach.workflows.pipeline import B2B_FUNNEL, DEFAULT

    text = (Path(__file__).parents[3] / "docs" / "scoring.md").read_text(encoding="utf-8")
    documented = text.split("<!-- rules:start -->\n", 1)[1].split("<!-- rules:end -->", 1)[0]
    table = rules_table(DEFAULT.scoring, DEFAULT.grading, DEFAULT.mql)
    assert documented == table
    # The page says both bundled pipelines share them.
    assert rules_table(B2B_FUNNEL.scoring, B2B_FUNNEL.grading, B2B_FUNNEL.mql) == table
    assert "| `large_company` | `company_size` ≥ `200` | +30 |" in table
    assert "| `demo_requested` | `demo.requested` | any | +30 | 30 per 30 days |" in table


def test_rules_table_describes_filters_caps_and_negative_points() -> None:
    scoring = ScoringModel(
        rules=(
            ScoreRule(
                "pricing",
                EventMatcher("page.viewed", (PropertyFilter("category", "eq", "pricing"),)),
                10,
                cap_per_period=(30, timedelta(days=7)),
            ),
            ScoreRule("bounce", EventMatcher("email.bounced"), -10, cap_per_rule=30),
        ),
        half_life=timedelta(days=14),
    )
    grading = GradingModel(
        rules=(GradeRule("not_student", ~attribute("role", "eq", "student"), 5),),
        thresholds={"A": 75, "B": 50, "C": 25},
    )
    table = rules_table(scoring, grading)
    assert "half-life 14 days" in table
    assert "| `pricing` | `page.viewed` | `category` = `pricing` | +10 | 30 per week |" in table
    assert "| `bounce` | `email.bounced` | any | -10 | 30 lifetime |" in table
    assert "| `not_student` | not (`role` = `student`) | +5 |" in table
    assert "MQL" not in table
