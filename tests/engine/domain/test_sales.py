"""Sales hand-off: routing by grade, territory and turn; SLA business time; the payload."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagecoach.engine.domain.conditions import EventRecord
from stagecoach.engine.domain.contact import ContactState, new_contact, observe, with_received
from stagecoach.engine.domain.pipeline import Transition
from stagecoach.engine.domain.sales import (
    RECENT_EVENTS,
    Assignment,
    BusinessHours,
    Owner,
    Pool,
    Routing,
    RoutingDefinitionError,
    SalesError,
    Sla,
    SlaDeadlines,
    Team,
    Territory,
    handoff_payload,
    sla_deadline,
)
from stagecoach.engine.domain.scoring import top_contributions
from stagecoach.workflows.pipeline import DEFAULT

SHANGHAI = "Asia/Shanghai"
LONDON = "Europe/London"
HOURS = BusinessHours(start=time(9), end=time(18))

KEY = Team("key-accounts", owners=("zhang.wei", "liu.yang"), lead="li.na", timezone=SHANGHAI)
INSIDE = Pool(
    "inside-sales",
    owners=(Owner("wang.fang"), Owner("chen.jing"), Owner("zhao.lei", timezone="Asia/Urumqi")),
    lead="sun.li",
    timezone=SHANGHAI,
)
ABROAD = Pool("international", owners=(Owner("emma.clarke"), Owner("james.patel")), timezone=LONDON)
ROUTING = Routing(
    teams={"A": KEY},
    pools={"B": INSIDE},
    territories={"overseas": Territory(pools={"A": ABROAD, "B": ABROAD})},
    sla=Sla(timedelta(hours=4), timedelta(hours=4), HOURS),
)


def shanghai(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(SHANGHAI))


def route(grade: str | None, **kw: Any) -> Assignment | None:
    attributes = kw.pop("attributes", {})
    return ROUTING.route(
        grade,
        attributes,
        assigned_owner=kw.pop("assigned_owner", None),
        pool_counts=kw.pop("pool_counts", {}),
    )


# Routing


def test_a_grade_goes_to_the_named_team_with_its_lead() -> None:
    assert route("A") == Assignment(
        team="key-accounts",
        owner=None,
        owner_timezone=SHANGHAI,
        lead="li.na",
        reason="grade A: team key-accounts",
        kind="team",
    )


def test_b_grade_goes_to_the_pool_owner_with_the_fewest_leads() -> None:
    first = route("B")
    assert first is not None
    assert (first.team, first.owner, first.kind, first.lead) == (
        "inside-sales",
        "wang.fang",
        "round_robin",
        "sun.li",
    )
    later = route(
        "B", pool_counts={"inside-sales": {"wang.fang": 3, "chen.jing": 3, "zhao.lei": 2}}
    )
    assert later is not None
    assert (later.owner, later.owner_timezone) == ("zhao.lei", "Asia/Urumqi")


def test_counts_of_another_pool_or_a_departed_owner_do_not_count() -> None:
    counts = {"international": {"wang.fang": 9}, "inside-sales": {"former.rep": 50}}
    assignment = route("B", pool_counts=counts)
    assert assignment is not None
    assert assignment.owner == "wang.fang"


@given(
    grade=st.sampled_from(["C", "D", None, "", "a", "E"]),
    region=st.sampled_from([None, "overseas", "east_china"]),
    owner=st.one_of(st.none(), st.text(min_size=1, max_size=12)),
)
def test_c_and_below_are_never_routed(
    grade: str | None, region: str | None, owner: str | None
) -> None:
    attributes = {} if region is None else {"region": region}
    assert route(grade, attributes=attributes, assigned_owner=owner) is None


@given(
    grade=st.sampled_from(["A", "B"]),
    region=st.sampled_from([None, "overseas", "east_china"]),
    owner=st.text(min_size=1, max_size=12).filter(str.strip),
    counts=st.dictionaries(
        st.sampled_from(["wang.fang", "chen.jing", "zhao.lei"]), st.integers(0, 9)
    ),
)
def test_an_assigned_owner_keeps_the_lead(
    grade: str, region: str | None, owner: str, counts: dict[str, int]
) -> None:
    attributes = {} if region is None else {"region": region}
    assignment = route(
        grade,
        attributes=attributes,
        assigned_owner=owner,
        pool_counts={"inside-sales": counts},
    )
    assert assignment is not None
    assert (assignment.owner, assignment.kind) == (owner, "kept")


def test_an_owner_from_the_crm_attribute_is_kept_in_their_own_team_and_zone() -> None:
    assignment = route("A", attributes={"sales_owner": "zhao.lei"})
    assert assignment is not None
    assert (assignment.team, assignment.owner, assignment.owner_timezone, assignment.lead) == (
        "inside-sales",
        "zhao.lei",
        "Asia/Urumqi",
        "sun.li",
    )
    assert assignment.reason == "grade A: kept assigned owner zhao.lei"


def test_an_undeclared_assigned_owner_is_kept_in_the_routed_team() -> None:
    assignment = route("B", assigned_owner="new.hire")
    assert assignment is not None
    assert (assignment.team, assignment.owner, assignment.owner_timezone) == (
        "inside-sales",
        "new.hire",
        SHANGHAI,
    )


def test_assigned_owner_argument_wins_over_the_attribute() -> None:
    assignment = route("B", attributes={"sales_owner": "chen.jing"}, assigned_owner="wang.fang")
    assert assignment is not None
    assert assignment.owner == "wang.fang"


def test_overseas_region_goes_to_the_international_pool_on_london_time() -> None:
    assignment = route("A", attributes={"region": "overseas"})
    assert assignment is not None
    assert (assignment.team, assignment.owner, assignment.owner_timezone) == (
        "international",
        "emma.clarke",
        LONDON,
    )
    assert (assignment.territory, assignment.reason) == (
        "overseas",
        "region overseas: grade A: round robin in international",
    )


def test_a_region_without_a_territory_takes_the_default_routes() -> None:
    assignment = route("A", attributes={"region": "east_china"})
    assert assignment is not None
    assert (assignment.team, assignment.territory) == ("key-accounts", None)


def test_a_territory_replaces_only_the_grades_it_names() -> None:
    routing = Routing(
        teams={"A": KEY},
        pools={"B": INSIDE},
        territories={"overseas": Territory(pools={"B": ABROAD})},
    )
    a = routing.route("A", {"region": "overseas"}, assigned_owner=None, pool_counts={})
    b = routing.route("B", {"region": "overseas"}, assigned_owner=None, pool_counts={})
    assert a is not None
    assert b is not None
    assert (a.team, b.team) == ("key-accounts", "international")


def test_a_routed_grade_without_a_route_stays_in_nurture() -> None:
    routing = Routing(teams={"A": KEY})
    assert routing.route("B", {}, assigned_owner=None, pool_counts={}) is None


def _hand_out(routing: Routing, leads: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(leads):
        assignment = routing.route("B", {}, assigned_owner=None, pool_counts={"p": counts})
        assert assignment is not None
        assert assignment.owner is not None
        counts[assignment.owner] += 1
    return counts


@given(owners=st.integers(1, 8), leads=st.integers(0, 60))
def test_round_robin_spreads_n_leads_over_k_owners_within_one(owners: int, leads: int) -> None:
    pool = Pool("p", owners=tuple(f"o{i}" for i in range(owners)), timezone=SHANGHAI)
    counts = _hand_out(Routing(pools={"B": pool}), leads)
    shares = [counts[o.name] for o in pool.members]
    assert sum(shares) == leads
    assert max(shares) - min(shares) <= 1


@given(
    owners=st.integers(1, 6),
    # None: a lead rotated; an int: a lead kept by that owner.
    leads=st.lists(st.one_of(st.none(), st.integers(0, 5)), max_size=40),
)
def test_each_rotated_lead_goes_to_an_owner_with_the_fewest(
    owners: int, leads: list[int | None]
) -> None:
    pool = Pool("p", owners=tuple(f"o{i}" for i in range(owners)), timezone=SHANGHAI)
    routing = Routing(pools={"B": pool})
    counts: Counter[str] = Counter()
    for kept in leads:
        assigned = None if kept is None else f"o{kept % owners}"
        assignment = routing.route("B", {}, assigned_owner=assigned, pool_counts={"p": counts})
        assert assignment is not None
        assert assignment.owner is not None
        if kept is None:
            fewest = min(counts[o.name] for o in pool.members)
            assert counts[assignment.owner] == fewest
        counts[assignment.owner] += 1


def test_two_workflows_reading_the_same_counts_pick_the_same_owner() -> None:
    counts = {"inside-sales": {"wang.fang": 1}}
    assert route("B", pool_counts=counts) == route("B", pool_counts=counts)


def test_routing_round_trips_through_json() -> None:
    again = Routing.from_dict(json.loads(json.dumps(ROUTING.to_dict())))
    assert again == ROUTING
    assignment = route("B")
    assert assignment is not None
    assert Assignment.from_dict(json.loads(json.dumps(assignment.to_dict()))) == assignment


def test_owners_given_by_name_take_the_team_zone() -> None:
    assert KEY.members == (Owner("zhang.wei", SHANGHAI), Owner("liu.yang", SHANGHAI))
    assert ROUTING.groups() == (KEY, INSIDE, ABROAD)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Routing(pools={"C": INSIDE}), r"grade 'C' cannot have a pool: C and below stay"),
        (lambda: Routing(teams={"E": KEY}), r"'E' is not a grade"),
        (lambda: Routing(teams={"B": KEY}, pools={"B": INSIDE}), r"'B' has both a team and a pool"),
        (lambda: Routing(), r"declares no team or pool"),
        (
            lambda: Routing(teams={"A": KEY}, territories={"overseas": Territory()}),
            r"territory 'overseas' routes nothing",
        ),
        (
            lambda: Routing(teams={"A": KEY}, territories={"x": Territory(pools={"D": ABROAD})}),
            r"territory 'x': grade 'D' cannot have a pool",
        ),
        (
            lambda: Routing(
                teams={"A": KEY}, pools={"B": Pool("key-accounts", ("x",), None, LONDON)}
            ),
            r"'key-accounts' names two different teams",
        ),
        (lambda: Pool("inside", owners=(), timezone=SHANGHAI), r"pool 'inside' has no owners"),
        (
            lambda: Pool("inside", owners=("a", "a"), timezone=SHANGHAI),
            r"owner 'a' is listed twice",
        ),
        (lambda: Pool("inside", owners=("a",)), r"owner 'a' has no time zone"),
        (lambda: Team("Key Accounts", owners=("a",), timezone=SHANGHAI), r"not a lowercase name"),
        (lambda: Team("k", owners=("a",), timezone="Asia/Shangai"), r"'Asia/Shangai' is unknown"),
        (lambda: Team("k", owners=(" a",), timezone=SHANGHAI), r"empty or padded"),
        (lambda: BusinessHours(start=time(18), end=time(9)), r"not before end"),
        (lambda: BusinessHours(weekdays=()), r"non-empty set"),
        (lambda: BusinessHours(weekdays=(1, 7)), r"non-empty set"),
        (
            lambda: BusinessHours(
                holidays=(date(2026, 10, 10),), extra_workdays=(date(2026, 10, 10),)
            ),
            r"both holidays and extra workdays",
        ),
        (lambda: Sla(first_response=timedelta(0)), r"first_response must be positive"),
    ],
)
def test_malformed_routing_is_refused_when_built(build: Any, message: str) -> None:
    with pytest.raises(RoutingDefinitionError, match=message):
        build()


# Business time


def test_monday_ten_plus_four_hours_is_two_the_same_day() -> None:
    monday = shanghai(2026, 6, 1, 10)
    assert sla_deadline(monday, timedelta(hours=4), HOURS, SHANGHAI) == shanghai(2026, 6, 1, 14)


def test_friday_four_pm_plus_four_hours_is_monday_eleven() -> None:
    friday = shanghai(2026, 6, 5, 16)
    assert sla_deadline(friday, timedelta(hours=4), HOURS, SHANGHAI) == shanghai(2026, 6, 8, 11)


@pytest.mark.parametrize(
    ("start", "hours", "expected"),
    [
        (shanghai(2026, 6, 1, 7, 30), 1, shanghai(2026, 6, 1, 10)),  # before opening
        (shanghai(2026, 6, 1, 20), 1, shanghai(2026, 6, 2, 10)),  # after close
        (shanghai(2026, 6, 6, 12), 2, shanghai(2026, 6, 8, 11)),  # Saturday
        (shanghai(2026, 6, 1, 14), 4, shanghai(2026, 6, 1, 18)),  # used up exactly: the close
        (shanghai(2026, 6, 1, 18), 0, shanghai(2026, 6, 2, 9)),  # at the close: next opening
        (shanghai(2026, 6, 1, 12), 0, shanghai(2026, 6, 1, 12)),
        (shanghai(2026, 6, 1, 9), 27, shanghai(2026, 6, 3, 18)),  # three full days
    ],
)
def test_business_time_skips_nights_and_weekends(
    start: datetime, hours: int, expected: datetime
) -> None:
    assert sla_deadline(start, timedelta(hours=hours), HOURS, SHANGHAI) == expected


def test_business_time_skips_holidays_and_counts_swapped_workdays() -> None:
    # National Day week 2026: Thursday 1 October to Wednesday 7 October off; Saturday
    # 10 October worked instead (illustrative dates).
    week = tuple(date(2026, 10, d) for d in range(1, 8))
    hours = BusinessHours(holidays=week, extra_workdays=(date(2026, 10, 10),))
    start = shanghai(2026, 9, 30, 16)
    assert sla_deadline(start, timedelta(hours=4), hours, SHANGHAI) == shanghai(2026, 10, 8, 11)
    friday = shanghai(2026, 10, 9, 16)
    assert sla_deadline(friday, timedelta(hours=4), hours, SHANGHAI) == shanghai(2026, 10, 10, 11)


def test_business_time_runs_in_the_owner_zone() -> None:
    # 16:00 in Shanghai is 09:00 in London (summer): four London hours end at 13:00 there.
    start = shanghai(2026, 6, 1, 16)
    deadline = sla_deadline(start, timedelta(hours=4), HOURS, LONDON)
    assert deadline == datetime(2026, 6, 1, 13, tzinfo=ZoneInfo(LONDON))
    assert deadline.tzinfo == start.tzinfo


def test_a_dst_weekend_neither_adds_nor_removes_business_time() -> None:
    london = ZoneInfo(LONDON)
    # Clocks go forward on Sunday 29 March 2026: Friday 16:00 GMT + 4h is Monday 11:00 BST.
    friday = datetime(2026, 3, 27, 16, tzinfo=london)
    deadline = sla_deadline(friday, timedelta(hours=4), HOURS, LONDON)
    assert deadline == datetime(2026, 3, 30, 11, tzinfo=london)
    assert deadline.astimezone(UTC) == datetime(2026, 3, 30, 10, tzinfo=UTC)
    # And back on Sunday 25 October 2026.
    friday = datetime(2026, 10, 23, 16, tzinfo=london)
    deadline = sla_deadline(friday, timedelta(hours=4), HOURS, LONDON)
    assert deadline.astimezone(UTC) == datetime(2026, 10, 26, 11, tzinfo=UTC)


def test_a_dst_change_inside_business_hours_costs_no_business_time() -> None:
    # Round-the-clock hours in New York: the spring-forward night is an hour short.
    hours = BusinessHours(start=time(0), end=time(23, 59), weekdays=tuple(range(7)))
    new_york = ZoneInfo("America/New_York")
    start = datetime(2026, 3, 8, 1, tzinfo=new_york)
    deadline = sla_deadline(start, timedelta(hours=2), hours, "America/New_York")
    assert deadline == datetime(2026, 3, 8, 4, tzinfo=new_york)  # 03:00 never happened
    assert deadline.astimezone(UTC) == start.astimezone(UTC) + timedelta(hours=2)


@pytest.mark.parametrize(
    ("start", "duration", "tz", "message"),
    [
        (datetime(2026, 6, 1, 10), timedelta(hours=1), SHANGHAI, r"no time zone"),
        (shanghai(2026, 6, 1, 10), timedelta(hours=-1), SHANGHAI, r"negative"),
        (
            shanghai(2026, 6, 1, 10),
            timedelta(hours=1),
            "Mars/Olympus",
            r"'Mars/Olympus' is unknown",
        ),
    ],
)
def test_sla_deadline_refuses_bad_arguments(
    start: datetime, duration: timedelta, tz: str, message: str
) -> None:
    with pytest.raises(SalesError, match=message):
        sla_deadline(start, duration, HOURS, tz)


def test_sla_reminds_after_four_business_hours_and_escalates_after_four_more() -> None:
    sla = Sla(timedelta(hours=4), timedelta(hours=4), HOURS)
    assert sla.deadlines(shanghai(2026, 6, 5, 16), SHANGHAI) == SlaDeadlines(
        respond_by=shanghai(2026, 6, 8, 11), escalate_at=shanghai(2026, 6, 8, 15)
    )
    # A reminder due exactly at a close escalates the next working morning.
    assert sla.deadlines(shanghai(2026, 6, 1, 14), SHANGHAI) == SlaDeadlines(
        respond_by=shanghai(2026, 6, 1, 18), escalate_at=shanghai(2026, 6, 2, 13)
    )


def test_sla_round_trips_through_json() -> None:
    sla = Sla(
        timedelta(hours=2),
        timedelta(hours=6),
        BusinessHours(time(8, 30), time(17), (0, 1, 2, 3, 4, 5), (date(2026, 1, 1),)),
    )
    assert Sla.from_dict(json.loads(json.dumps(sla.to_dict()))) == sla


ZONES = st.sampled_from(
    [SHANGHAI, LONDON, "America/New_York", "America/Sao_Paulo", "Australia/Lord_Howe", "UTC"]
)
STARTS = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)
DURATIONS = st.integers(0, 80 * 60).map(lambda m: timedelta(minutes=m))
ANY_HOURS = st.builds(
    BusinessHours,
    start=st.sampled_from([time(0), time(8), time(9), time(9, 30)]),
    end=st.sampled_from([time(17), time(18), time(23, 59)]),
    weekdays=st.sets(st.integers(0, 6), min_size=1).map(tuple),
    holidays=st.lists(
        st.dates(min_value=date(2024, 1, 1), max_value=date(2031, 3, 1)), max_size=20
    ).map(tuple),
)


@given(start=STARTS, duration=DURATIONS, hours=ANY_HOURS, tz=ZONES)
def test_a_deadline_falls_within_business_hours_or_exactly_at_a_close(
    start: datetime, duration: timedelta, hours: BusinessHours, tz: str
) -> None:
    deadline = sla_deadline(start, duration, hours, tz)
    local = deadline.astimezone(ZoneInfo(tz))
    assert deadline >= start
    assert hours.is_business_day(local.date())
    assert hours.start <= local.time().replace(fold=0) <= hours.end


@given(start=STARTS, a=DURATIONS, b=DURATIONS, hours=ANY_HOURS, tz=ZONES)
def test_a_longer_duration_never_gives_an_earlier_deadline(
    start: datetime, a: timedelta, b: timedelta, hours: BusinessHours, tz: str
) -> None:
    short, long = sorted((a, b))
    assert sla_deadline(start, short, hours, tz) <= sla_deadline(start, long, hours, tz)


@given(start=STARTS, a=DURATIONS, b=DURATIONS.filter(bool), hours=ANY_HOURS, tz=ZONES)
def test_business_time_adds_up(
    start: datetime, a: timedelta, b: timedelta, hours: BusinessHours, tz: str
) -> None:
    middle = sla_deadline(start, a, hours, tz)
    assert sla_deadline(middle, b, hours, tz) == sla_deadline(start, a + b, hours, tz)


# The payload


T0 = datetime(2026, 6, 1, 2, 0, tzinfo=UTC)
FIT = {
    "industry": "software",
    "company_size": 500,
    "role": "cto",
    "region": "east_china",
    "email": "cto@example.cn",
}


def _contact(events: list[tuple[str, dict[str, Any]]]) -> ContactState:
    state = new_contact("c-1", DEFAULT, T0)
    for i, (type_, props) in enumerate(events):
        at = T0 + timedelta(hours=i)
        seen = observe(
            state,
            DEFAULT,
            message_id=f"m{i}",
            event=EventRecord(type_, at, props),
            traits=FIT if i == 0 else {},
            now=at,
            source="test",
        )
        state = seen.state
        if seen.transition is not None:
            state = ContactState(**{**state.__dict__, "stage": seen.transition.to_stage})
    return state


def test_payload_carries_what_sales_needs_and_is_json() -> None:
    state = _contact(
        [
            ("content.downloaded", {"content_id": "wp-1", "kind": "whitepaper"}),
            ("demo.requested", {}),
            ("email.clicked", {"content_id": "cs-2"}),
            ("content.downloaded", {"content_id": "wp-1"}),
            ("email.opened", {}),
        ]
    )
    state = with_received(state, "wp-1")
    now = T0 + timedelta(days=1)
    history = (Transition("suspect", "prospect", T0, "raised_hand"),)
    assignment = route("A")
    assert assignment is not None
    deadlines = ROUTING.sla.deadlines(now, assignment.owner_timezone)
    payload = handoff_payload(
        state,
        DEFAULT,
        identities={"email": "cto@example.cn", "crm_id": "0031x"},
        now=now,
        timeline_url="https://stagecoach.example/contacts/c-1/timeline",
        stage_history=history,
        assignment=assignment,
        deadlines=deadlines,
    )
    assert json.loads(json.dumps(payload)) == payload
    assert payload["contact_id"] == "c-1"
    assert payload["identities"] == {"email": "cto@example.cn", "crm_id": "0031x"}
    assert payload["traits"]["role"] == "cto"
    assert payload["stage"]["name"] == state.stage
    assert payload["stage_history"] == [history[0].to_dict()]
    assert payload["grade"]["grade"] == "A"
    assert [r["rule"] for r in payload["grade"]["rules"]] == list(state.grade_rules)
    assert payload["grade"]["points"] == 100
    top = top_contributions(DEFAULT.scoring, state.score, now)
    assert [e["rule"] for e in payload["score"]["top_events"]] == [t.contribution.rule for t in top]
    assert payload["score"]["top_events"][0]["rule"] == "demo_requested"
    assert payload["content_consumed"] == [
        {
            "content_id": "wp-1",
            "first_at": T0.isoformat(),
            "events": ["content.downloaded"],
            "count": 2,
        },
        {
            "content_id": "cs-2",
            "first_at": (T0 + timedelta(hours=2)).isoformat(),
            "events": ["email.clicked"],
            "count": 1,
        },
    ]
    assert payload["content_received"] == ["wp-1"]
    assert [e["type"] for e in payload["recent_events"]][:2] == [
        "email.opened",
        "content.downloaded",
    ]
    assert payload["timeline_url"].endswith("/c-1/timeline")
    assert payload["routing"]["team"] == "key-accounts"
    assert payload["routing"]["respond_by"] == deadlines.respond_by.isoformat()


def test_payload_lists_the_last_twenty_events_newest_first() -> None:
    state = _contact([("page.viewed", {"path": f"/p{i}"}) for i in range(30)])
    payload = handoff_payload(
        state, DEFAULT, identities={}, now=T0 + timedelta(days=2), timeline_url=""
    )
    paths = [e["properties"]["path"] for e in payload["recent_events"]]
    assert len(paths) == RECENT_EVENTS
    assert paths[0] == "/p29"
    assert paths[-1] == "/p10"
    assert "routing" not in payload


def test_payload_makes_unusual_traits_json() -> None:
    state = _contact([("page.viewed", {})])
    state = ContactState(
        **{**state.__dict__, "attributes": {"seen": {3, 1}, "at": date(2026, 1, 2), "t": (1,)}}
    )
    payload = handoff_payload(state, DEFAULT, identities={}, now=T0, timeline_url="")
    assert payload["traits"] == {"seen": [1, 3], "at": "2026-01-02", "t": [1]}


def test_payload_needs_an_aware_time() -> None:
    with pytest.raises(SalesError, match="no time zone"):
        handoff_payload(
            _contact([]), DEFAULT, identities={}, now=datetime(2026, 1, 1), timeline_url=""
        )
