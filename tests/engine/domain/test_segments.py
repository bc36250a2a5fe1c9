"""Segments in the pure domain: the condition vocabulary, its JSON round trip, when a
condition can flip with time alone, deciding memberships, and validation."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from stagecoach import Definitions, EventCatalog, EventType, Journey, send
from stagecoach.engine.domain.conditions import (
    ConditionError,
    EventRecord,
    Facts,
    all_of,
    bucket_of,
    condition_from_dict,
    consented,
    event,
    grade_in,
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
from stagecoach.engine.domain.definitions import SEGMENTS
from stagecoach.engine.domain.segments import (
    Membership,
    Segment,
    SegmentError,
    SegmentSpec,
    adopt,
    decide,
    evaluation_order,
    event_types,
    next_due,
    segment_entered,
    segment_exited,
)
from stagecoach.workflows.definitions import SEVEN_STAGE

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def at(days_ago: float) -> datetime:
    return NOW - timedelta(days=days_ago)


def visits(
    *days_ago: float, type: str = "site.visited", **props: object
) -> tuple[EventRecord, ...]:
    return tuple(EventRecord(type, at(d), dict(props)) for d in days_ago)


EVERY_KIND = [
    performed("pricing.viewed", at_least=3, within=7 * DAY, where={"plan": "pro"}),
    performed("email.opened", fewer_than=1, within=30 * DAY),
    performed("order.paid", exactly=2),
    last_performed("site.visited", before=30 * DAY),
    last_performed("site.visited", after=7 * DAY),
    never_performed("demo.booked"),
    trait("industry", "in", ["manufacturing", "energy"]),
    trait_date("renewal_on", before=30 * DAY, after=-DAY),
    trait_older_than("signed_up_at", 90 * DAY),
    trait_newer_than("signed_up_at", 7 * DAY),
    score_between(20, 80),
    grade_in("A", "B"),
    stage_at_least("lead"),
    consented("wechat"),
    in_journey("welcome"),
    received("case-study-manufacturing"),
    in_segment("vip"),
    random_bucket(0, 10, salt="holdout-2026"),
    ~stage_in("customer") & (grade_in("A") | score_between(minimum=50)),
]


@pytest.mark.parametrize("cond", EVERY_KIND, ids=lambda c: c.kind)
def test_every_kind_round_trips_through_json(cond: object) -> None:
    data = cond.to_dict()  # type: ignore[attr-defined]
    assert condition_from_dict(data) == cond
    assert condition_from_dict(data).to_dict() == data


def test_counts_compare_with_every_operator_and_filters() -> None:
    facts = Facts(now=NOW, events=visits(1, 2, 3, type="pricing.viewed", plan="pro"))
    assert performed("pricing.viewed", at_least=3, where={"plan": "pro"}).evaluate(facts)
    assert not performed("pricing.viewed", more_than=3).evaluate(facts)
    assert performed("pricing.viewed", exactly=2, within=timedelta(days=2.5)).evaluate(facts)
    assert performed("pricing.viewed", fewer_than=1, where={"plan": "free"}).evaluate(facts)
    assert performed("demo.booked", at_most=0).evaluate(facts)


def test_lifetime_counts_and_last_seen_outlive_the_event_window() -> None:
    # 200 newer events pushed the one visit out of the window; the per-type memory keeps it.
    facts = Facts(
        now=NOW,
        events=visits(*[0.001 * n for n in range(200)], type="page.viewed"),
        counts={"site.visited": 4, "page.viewed": 200},
        last_seen={"site.visited": at(40)},
    )
    assert performed("site.visited", at_least=4).evaluate(facts)
    assert last_performed("site.visited", before=30 * DAY).evaluate(facts)
    assert not never_performed("site.visited").evaluate(facts)
    assert never_performed("demo.booked").evaluate(facts)


def test_recency_before_after_and_never() -> None:
    facts = Facts(now=NOW, events=visits(40, 35))
    assert last_performed("site.visited", before=30 * DAY).evaluate(facts)
    assert not last_performed("site.visited", after=30 * DAY).evaluate(facts)
    nobody = Facts(now=NOW)
    # Never visited is neither "last visit long ago" nor "recently": never_performed says it.
    assert not last_performed("site.visited", before=30 * DAY).evaluate(nobody)
    assert never_performed("site.visited").evaluate(nobody)


def test_date_traits_relative_to_now() -> None:
    facts = Facts(
        now=NOW,
        attributes={"signed_up_at": at(100).isoformat(), "renewal_on": "2026-12-20"},
    )
    assert trait_older_than("signed_up_at", 90 * DAY).evaluate(facts)
    assert not trait_newer_than("signed_up_at", 90 * DAY).evaluate(facts)
    assert trait_date("renewal_on", before=30 * DAY, after=-DAY).evaluate(facts)
    assert not trait_date("renewal_on", before=7 * DAY).evaluate(facts)
    # Not a date: a non-match, never a crash.
    assert not trait_older_than("signed_up_at", DAY).evaluate(
        Facts(now=NOW, attributes={"signed_up_at": "soon"})
    )


def test_ranges_consent_journeys_content_and_segments() -> None:
    facts = Facts(
        now=NOW,
        stage="opportunity",
        score=50.0,
        grade="B",
        stages=SEVEN_STAGE.pipeline.stage_names,
        consent={"email": True, "wechat": False},
        journeys=frozenset({"welcome"}),
        received=frozenset({"case-study-manufacturing"}),
        segments=frozenset({"vip"}),
    )
    assert score_between(20, 80).evaluate(facts)
    assert not score_between(minimum=50.5).evaluate(facts)
    assert grade_in("A", "B").evaluate(facts)
    assert stage_at_least("lead").evaluate(facts)
    assert not stage_at_least("customer").evaluate(facts)
    assert consented("email").evaluate(facts)
    assert not consented("wechat").evaluate(facts)
    assert in_journey("welcome").evaluate(facts)
    assert received("case-study-manufacturing").evaluate(facts)
    assert in_segment("vip").evaluate(facts)


def test_buckets_are_stable_and_split_contacts_evenly() -> None:
    ids = [f"c{n}" for n in range(4000)]
    held = [i for i in ids if random_bucket(0, 10, salt="h").evaluate(Facts(NOW, contact_id=i))]
    assert held == [i for i in ids if bucket_of(i, "h") < 10]
    assert 300 < len(held) < 500  # about 10 %
    other = {
        i for i in ids if random_bucket(0, 10, salt="other").evaluate(Facts(NOW, contact_id=i))
    }
    assert len(other & set(held)) < 100  # a new salt draws an independent slice


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: performed("a.b", within=timedelta(0)), "empty window"),
        (lambda: performed("a.b", at_least=1, at_most=2), "give one of"),
        (lambda: performed("a.b", fewer_than=0), "can never hold"),
        (lambda: last_performed("a.b"), "exactly one of before"),
        (lambda: last_performed("a.b", before=-DAY), "empty window"),
        (lambda: score_between(80, 20), "can never hold"),
        (lambda: score_between(), "needs a minimum"),
        (lambda: grade_in("E"), "unknown"),
        (lambda: random_bucket(50, 50), "can never hold"),
        (lambda: trait_date("x", before=-DAY, after=DAY), "can never hold"),
        (lambda: trait_date("x"), "pass before="),
    ],
)
def test_conditions_that_cannot_hold_are_refused_on_construction(
    build: object, message: str
) -> None:
    with pytest.raises(ConditionError, match=message):
        build()  # type: ignore[operator]


def test_next_change_is_when_time_alone_flips_the_answer() -> None:
    facts = Facts(now=NOW, events=visits(10, 3))
    assert last_performed("site.visited", before=30 * DAY).next_change(facts) == at(3) + 30 * DAY
    # The 10-day-old visit leaves a 14-day window first.
    assert performed("site.visited", within=14 * DAY).next_change(facts) == at(10) + 14 * DAY
    assert (
        trait_older_than("signed_up_at", 90 * DAY).next_change(
            Facts(now=NOW, attributes={"signed_up_at": at(80).isoformat()})
        )
        == at(80) + 90 * DAY
    )
    # A decaying score crosses 40 after one half-life (80 -> 40), plus a second's margin.
    decaying = Facts(now=NOW, score=80.0, score_half_life=30 * DAY)
    assert score_at_least(40).next_change(decaying) == NOW + 30 * DAY + timedelta(seconds=1)
    # Combinations take the earliest part that can change the answer; a part time
    # cannot change (a trait) holds a false conjunction false: no timer for it.
    both = ~performed("site.visited", within=14 * DAY) & trait("plan", "eq", "pro")
    pro = replace(facts, attributes={"plan": "pro"})
    assert both.next_change(pro) == at(10) + 14 * DAY
    assert both.next_change(facts) is None
    either = performed("site.visited", within=14 * DAY) | trait("plan", "eq", "pro")
    # The count drops when the older visit leaves: early (the newer one still holds it
    # true), then re-checked and set again; never late.
    assert either.next_change(facts) == at(10) + 14 * DAY
    assert either.next_change(pro) is None  # the trait holds it true
    assert grade_in("A").next_change(facts) is None


def test_decide_records_only_flips_and_carries_a_changed_version_over() -> None:
    old = Segment("active", when=performed("site.visited", within=7 * DAY)).spec()
    specs = {"active": old}
    facts = Facts(now=NOW, events=visits(1))
    first = decide(specs, facts, {}, reason="site.visited event")
    assert [(c.segment, c.entered, c.reason) for c in first.changes] == [
        ("active", True, "site.visited event")
    ]
    assert decide(specs, facts, first.members, reason="again").changes == ()
    # A new version with the same answer: no entry, the membership moves to the new version.
    new = Segment("active", when=performed("site.visited", within=8 * DAY)).spec()
    moved = decide({"active": new}, facts, first.members, reason="x")
    assert moved.changes == ()
    assert moved.members["active"].version == new.version
    assert moved.members["active"].since == first.members["active"].since
    # Nothing published any more: an exit.
    gone = decide({}, facts, first.members, reason="x")
    assert [(c.segment, c.entered) for c in gone.changes] == [("active", False)]


def test_segments_that_reference_others_are_decided_after_them() -> None:
    base = Segment("engaged", when=performed("email.opened", within=30 * DAY)).spec()
    top = Segment("engaged-leads", when=in_segment("engaged") & stage_in("lead")).spec()
    specs = {"engaged-leads": top, "engaged": base}
    assert evaluation_order(specs) == ["engaged", "engaged-leads"]
    facts = Facts(now=NOW, stage="lead", events=visits(2, type="email.opened"))
    decided = decide(specs, facts, {}, reason="email.opened event")
    assert set(decided.members) == {"engaged", "engaged-leads"}


def test_adopting_a_list_change() -> None:
    added = adopt({}, segment="vip", version="list", member=True, at=NOW, reason="upload")
    assert [c.entered for c in added.changes] == [True]
    assert (
        adopt(added.members, segment="vip", version="list", member=True, at=NOW, reason="x").changes
        == ()
    )
    removed = adopt(added.members, segment="vip", version="list", member=False, at=NOW, reason="y")
    assert removed.members == {}


def test_next_due_and_event_types_over_specs() -> None:
    specs = {
        "inactive": Segment(
            "inactive", when=last_performed("site.visited", before=30 * DAY)
        ).spec(),
        "vip": Segment("vip", manual=True).spec(),
    }
    assert next_due(specs, Facts(now=NOW, events=visits(5))) == at(5) + 30 * DAY
    assert next_due(specs, Facts(now=NOW)) is None
    assert event_types(specs) == {
        "site.visited",
        "segment.list_added",
        "segment.list_removed",
        "segment.membership",
    }


def test_a_spec_version_is_its_content_and_a_lying_row_is_refused() -> None:
    spec = Segment("a", description="x", when=grade_in("A")).spec()
    assert SegmentSpec.from_dict(spec.to_dict()) == spec
    assert Segment("a", description="y", when=grade_in("A")).spec().version != spec.version
    tampered = {**spec.to_dict(), "description": "edited in the database"}
    with pytest.raises(SegmentError, match="republish"):
        SegmentSpec.from_dict(tampered)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad Name", "when": grade_in("A")}, "not valid"),
        ({"name": "a"}, "has no condition"),
        ({"name": "a", "when": grade_in("A"), "manual": True}, "is manual and has a condition"),
        ({"name": "a", "when": "grade A"}, "pass a condition"),
    ],
)
def test_malformed_segments_name_the_fix(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SegmentError, match=message):
        Segment(**kwargs)  # type: ignore[arg-type]


def project(*segments: Segment, journeys: tuple[Journey, ...] = (), **kw: object) -> Definitions:
    return Definitions(
        pipeline=SEVEN_STAGE.pipeline,
        events=EventCatalog([*SEVEN_STAGE.events, EventType("site.visited", "A visit")]),
        journeys=journeys,
        segments=segments,
        **kw,  # type: ignore[arg-type]
    )


def test_validation_names_the_segment_and_the_fix() -> None:
    defs = project(
        Segment("a", when=performed("site.visitd") & stage_in("leed")),
        Segment("b", when=in_segment("missing") & trait("industy", "eq", "x")),
        Segment("c", when=in_segment("d")),
        Segment("d", when=in_segment("c")),
        Segment("e", when=stage_in("lead") & stage_in("customer")),
        Segment("f", when=grade_in("A") & ~grade_in("A")),
        Segment("g", when=in_journey("welcom")),
        traits=["industry", "region"],
    )
    found = [str(p) for p in defs.problems()]
    text = "\n".join(found)
    assert "(segments)', a: event 'site.visitd' is not in the project's EventCatalog" in text
    assert "did you mean 'site.visited'" in text
    assert "a: stage 'leed' is not in the pipeline (did you mean 'lead'?)" in text
    assert "b: in_segment names segment 'missing', which is not defined" in text
    assert "b: trait 'industy' is not declared (did you mean 'industry'?)" in text
    assert "segments reference each other in a cycle (c -> d -> c)" in text
    assert "e: all_of requires stages that cannot hold together" in text
    assert "f: all_of requires a condition and its negation" in text
    assert "g: in_journey names journey 'welcom'" in text
    assert all(p.journey == SEGMENTS for p in defs.problems())


def test_a_valid_project_with_segments_has_no_problems_and_a_new_version() -> None:
    from stagecoach.engine.domain.definitions import project_version

    plain = project()
    with_segments = project(
        Segment("inactive", when=last_performed("site.visited", before=30 * DAY)),
        Segment("vip", manual=True),
        journeys=(
            Journey(
                "win_back",
                entry=segment_entered("inactive"),
                exit_when=segment_exited("inactive"),
                steps=[send("coupon-annual-plan", channel="email")],
            ),
        ),
    )
    assert with_segments.problems() == []
    specs, _ = with_segments.compile()
    assert project_version(plain, {}) != project_version(with_segments, specs)


def test_a_journey_naming_an_undefined_segment_is_a_problem() -> None:
    defs = project(
        Segment("inactive", manual=True),
        journeys=(
            Journey(
                "win_back",
                entry=segment_entered("inactiv"),
                steps=[send("coupon-annual-plan", channel="email")],
            ),
        ),
    )
    messages = [str(p) for p in defs.problems()]
    assert any("names segment 'inactiv', which the project does not define" in m for m in messages)


def test_segment_transitions_work_as_entry_wait_and_condition() -> None:
    entered, exited = segment_entered("vip"), segment_exited("vip")
    inside = Facts(now=NOW, segments=frozenset({"vip"}))
    assert entered.evaluate(inside)
    assert not exited.evaluate(inside)
    assert exited.evaluate(Facts(now=NOW))
    assert entered.matcher.type == "segment.entered"
    assert condition_from_dict(exited.to_dict()).evaluate(Facts(now=NOW))
    assert Membership("v", NOW).to_dict()["since"] == NOW.isoformat()
    assert all_of(entered, event("a.b")).children()[0] is entered
