"""The predicate algebra: windows, counts, property operators, JSON and event types."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from stagecoach.engine.domain.conditions import (
    GRADES,
    Always,
    ConditionError,
    EventMatcher,
    EventOccurred,
    EventRecord,
    Facts,
    Not,
    PropertyFilter,
    all_of,
    any_of,
    attribute,
    condition_from_dict,
    event,
    grade_at_least,
    grade_rank,
    has_tag,
    score_at_least,
    stage_in,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def rec(type_: str, days_ago: float, **props: object) -> EventRecord:
    return EventRecord(type_, NOW - timedelta(days=days_ago), props)


def facts(*events: EventRecord, **kw: object) -> Facts:
    return Facts(now=NOW, events=events, **kw)  # type: ignore[arg-type]


# Windows and counts


def test_event_without_window_matches_any_past_event() -> None:
    assert event("content.downloaded").evaluate(facts(rec("content.downloaded", 400)))


def test_event_of_other_type_does_not_match() -> None:
    assert not event("content.downloaded").evaluate(facts(rec("page.viewed", 1)))


def test_event_inside_window_matches() -> None:
    cond = event("page.viewed", within=7 * DAY)
    assert cond.evaluate(facts(rec("page.viewed", 6.9)))


def test_event_outside_window_does_not_match() -> None:
    cond = event("page.viewed", within=7 * DAY)
    assert not cond.evaluate(facts(rec("page.viewed", 7.1)))


def test_event_exactly_at_window_start_matches() -> None:
    cond = event("page.viewed", within=7 * DAY)
    assert cond.evaluate(facts(rec("page.viewed", 7)))


def test_event_after_now_never_counts_with_or_without_window() -> None:
    future = rec("page.viewed", -1)
    assert not event("page.viewed").evaluate(facts(future))
    assert not event("page.viewed", within=7 * DAY).evaluate(facts(future))


def test_count_needs_that_many_matching_events() -> None:
    cond = event("referral.converted", count=2)
    assert not cond.evaluate(facts(rec("referral.converted", 3)))
    assert cond.evaluate(facts(rec("referral.converted", 3), rec("referral.converted", 1)))


def test_count_only_counts_events_inside_window() -> None:
    cond = event("email.clicked", within=7 * DAY, count=2)
    assert not cond.evaluate(facts(rec("email.clicked", 10), rec("email.clicked", 1)))


def test_event_count_equals_the_matchers_verdict_over_a_mixed_window() -> None:
    # EventOccurred skips other types before it asks the matcher: same answer as asking
    # the matcher about every record in the window.
    rng = random.Random(7)
    types = ["page.viewed", "content.downloaded", "email.opened"]
    window = tuple(
        rec(rng.choice(types), rng.uniform(-1, 10), category=rng.choice(["pricing", "docs"]))
        for _ in range(200)
    )
    matcher = EventMatcher("page.viewed", (PropertyFilter("category", "eq", "pricing"),))
    for within in (None, 2 * DAY, 7 * DAY):
        since = NOW - within if within else None
        expected = sum(
            1
            for r in window
            if r.at <= NOW and (since is None or r.at >= since) and matcher.matches(r)
        )
        for count in (1, expected, expected + 1):
            got = EventOccurred(matcher, within=within, count=max(count, 1)).evaluate(
                facts(*window)
            )
            assert got is (expected >= max(count, 1)), (within, count, expected)


def test_count_below_one_is_refused_naming_the_event() -> None:
    with pytest.raises(ConditionError, match=r"'email.clicked'.*count"):
        event("email.clicked", count=0)


def test_non_positive_window_is_refused_naming_the_event() -> None:
    with pytest.raises(ConditionError, match=r"'email.clicked'.*within"):
        event("email.clicked", within=timedelta(0))


def test_empty_event_type_is_refused() -> None:
    with pytest.raises(ConditionError, match="event type is empty"):
        EventMatcher("")


# Property operators


@pytest.mark.parametrize(
    ("op", "value", "actual", "expected"),
    [
        ("eq", 9, 9, True),
        ("eq", 9, 8, False),
        ("ne", 9, 8, True),
        ("gt", 8, 9, True),
        ("gte", 9, 9, True),
        ("gte", 9, 8, False),
        ("lt", 5, 4, True),
        ("lte", 5, 5, True),
        ("in", ["a", "b"], "a", True),
        ("in", ["a", "b"], "c", False),
        ("not_in", ["a", "b"], "c", True),
        ("contains", "pricing", "/en/pricing/", True),
        ("contains", "x", ["x", "y"], True),
        ("contains", "z", ["x", "y"], False),
    ],
)
def test_property_operator(op: str, value: object, actual: object, expected: bool) -> None:
    f = PropertyFilter("v", op, value)  # type: ignore[arg-type]
    assert f.matches({"v": actual}) is expected


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ("eq", False),
        ("gt", False),
        ("in", False),
        ("contains", False),
        ("ne", True),
        ("not_in", True),
    ],
)
def test_missing_key_matches_only_negative_operators(op: str, expected: bool) -> None:
    value = ["x"] if op in ("in", "not_in") else "x"
    assert PropertyFilter("absent", op, value).matches({"other": 1}) is expected  # type: ignore[arg-type]


def test_exists_true_and_false_test_presence() -> None:
    assert PropertyFilter("plan", "exists", True).matches({"plan": None})
    assert not PropertyFilter("plan", "exists", True).matches({})
    assert PropertyFilter("plan", "exists", False).matches({})


@pytest.mark.parametrize(
    ("op", "value", "actual"),
    [
        ("gte", 9, "nine"),
        ("lt", "abc", 3),
        ("contains", 5, "abc"),
        ("in", ["a"], ["unhashable"]),
    ],
)
def test_type_mismatch_is_a_non_match_not_a_crash(op: str, value: object, actual: object) -> None:
    assert PropertyFilter("v", op, value).matches({"v": actual}) is False  # type: ignore[arg-type]


def test_dotted_path_reads_nested_properties() -> None:
    assert PropertyFilter("plan.tier", "eq", "pro").matches({"plan": {"tier": "pro"}})
    assert not PropertyFilter("plan.tier", "eq", "pro").matches({"plan": "pro"})


def test_where_mapping_is_shorthand_for_eq_filters() -> None:
    cond = event("page.viewed", where={"category": "pricing"})
    assert cond.evaluate(facts(rec("page.viewed", 1, category="pricing")))
    assert not cond.evaluate(facts(rec("page.viewed", 1, category="blog")))


def test_nps_promoter_filter_on_score() -> None:
    cond = event("nps.answered", where=[PropertyFilter("score", "gte", 9)])
    assert cond.evaluate(facts(rec("nps.answered", 1, score=10)))
    assert not cond.evaluate(facts(rec("nps.answered", 1, score=7)))
    assert not cond.evaluate(facts(rec("nps.answered", 1, comment="no score")))


def test_unknown_operator_is_refused_listing_the_operators() -> None:
    with pytest.raises(ConditionError, match=r"filter.op 'approx'.*use one of.*contains"):
        PropertyFilter("v", "approx", 1)  # type: ignore[arg-type]


def test_in_operator_needs_a_list_value() -> None:
    with pytest.raises(ConditionError, match=r"'plan'.*'in' needs a list"):
        PropertyFilter("plan", "in", "pro")


def test_empty_filter_path_is_refused() -> None:
    with pytest.raises(ConditionError, match=r"filter\.path is empty"):
        PropertyFilter("", "eq", 1)


# Contact conditions and combinators


def test_score_grade_stage_tag_and_attribute_conditions() -> None:
    f = facts(
        stage="lead", score=61, grade="B", tags=frozenset({"vip"}), attributes={"industry": "it"}
    )
    assert score_at_least(60).evaluate(f)
    assert not score_at_least(62).evaluate(f)
    assert grade_at_least("B").evaluate(f)
    assert grade_at_least("C").evaluate(f)
    assert not grade_at_least("A").evaluate(f)
    assert stage_in("lead", "opportunity").evaluate(f)
    assert has_tag("vip").evaluate(f)
    assert attribute("industry", "eq", "it").evaluate(f)


def test_ungraded_contact_is_below_every_grade() -> None:
    assert grade_rank(None) == len(GRADES)
    assert not grade_at_least("D").evaluate(facts(grade=None))


def test_unknown_grade_is_refused() -> None:
    with pytest.raises(ConditionError, match=r"grade 'E' is unknown"):
        grade_at_least("E")


def test_stage_in_needs_a_stage() -> None:
    with pytest.raises(ConditionError, match="at least one stage"):
        stage_in()


def test_and_or_not_combine() -> None:
    f = facts(score=70, grade="C")
    assert (score_at_least(60) | grade_at_least("A")).evaluate(f)
    assert not (score_at_least(60) & grade_at_least("B")).evaluate(f)
    assert (~grade_at_least("B")).evaluate(f)
    assert Always().evaluate(f)


# JSON and event types


def test_nested_condition_round_trips_through_json() -> None:
    cond = all_of(
        event("page.viewed", where={"category": "pricing"}, within=7 * DAY, count=3),
        any_of(score_at_least(40), grade_at_least("B")),
        Not(has_tag("competitor")),
        stage_in("lead"),
        attribute("company_size", "in", [50, 100]),
        Always(),
    )
    data = json.loads(json.dumps(cond.to_dict()))
    assert condition_from_dict(data) == cond


def test_frozenset_values_serialise_in_a_stable_order_and_round_trip() -> None:
    cond = attribute("region", "in", frozenset({"north", "east", "south"}))
    assert cond.to_dict()["value"] == ["east", "north", "south"]
    assert condition_from_dict(cond.to_dict()) == cond


def test_unknown_kind_is_a_named_error() -> None:
    with pytest.raises(ConditionError, match=r"kind 'maybe' is unknown; use one of"):
        condition_from_dict({"kind": "maybe"})


def test_missing_field_is_a_named_error() -> None:
    with pytest.raises(ConditionError, match=r"'score_at_least' is missing field 'points'"):
        condition_from_dict({"kind": "score_at_least"})


def test_event_types_collects_through_combinators() -> None:
    cond = (event("a.b") | ~event("c.d")) & score_at_least(1)
    assert cond.event_types() == frozenset({"a.b", "c.d"})
    assert score_at_least(1).event_types() == frozenset()


def test_event_occurred_is_built_by_the_event_builder() -> None:
    assert isinstance(event("a.b"), EventOccurred)
