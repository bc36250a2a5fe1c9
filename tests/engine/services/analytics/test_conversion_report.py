"""The conversion funnel on hand-built contacts: order, window, filters, grouping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pytest

from stagecoach.engine.services.analytics._report import Params, ReportError
from stagecoach.engine.services.analytics.conversion import conversion_report
from stagecoach.engine.services.analytics.store import insert_rows
from tests.engine.services.analytics import _reference

SINCE, UNTIL = datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC)
STEPS = ["page.viewed", "demo.requested", "trial.started", "order.paid"]
DAY = 86_400.0


def at(day: str) -> datetime:
    """``"03-05 12"`` -> 2025-03-05 12:00 (naive UTC, as the store keeps it)."""
    date, _, hour = day.partition(" ")
    month, dom = date.split("-")
    return datetime(2025, int(month), int(dom), int(hour or 0))


PV, DEMO, TRIAL, PAID = STEPS
SPRING = {"campaign": "spring"}
# contact: (traits, acquired source, [(event, day, properties)])
PEOPLE: dict[str, tuple[dict[str, Any], str | None, list[tuple[str, str, dict[str, Any]]]]] = {
    # One day between each step: the whole funnel.
    "a": ({"plan": "pro", "employees": 500}, "wechat", [
        (PV, "03-02", SPRING), (DEMO, "03-03", SPRING), (TRIAL, "03-04", SPRING),
        (PAID, "03-05", SPRING),
    ]),
    # Anchored on the first view in the period; a demo before it and a purchase before the
    # trial do not count.
    "b": ({"plan": "free", "employees": 20}, "google", [
        (PV, "02-25", {}), (DEMO, "03-04", {}), (PV, "03-05", {}), (DEMO, "03-06", {}),
        (PAID, "03-07", {}), (TRIAL, "03-08", {}),
    ]),
    # The demo comes 20 days after the view: outside the 14-day window.
    "c": ({}, "linkedin", [(PV, "03-10", {}), (DEMO, "03-30", {})]),
    # Pays after the period ends, still inside the window.
    "d": ({"plan": "pro", "employees": 50}, "wechat", [
        (PV, "03-20", SPRING), (DEMO, "03-21", {}), (TRIAL, "03-22", {}), (PAID, "04-02", {}),
    ]),
    # Views only when the period has ended (until is exclusive).
    "e": ({}, None, [(PV, "04-01", {}), (DEMO, "04-02", {})]),
    # No step 1 at all.
    "f": ({}, None, [(DEMO, "03-05", {})]),
    # A demo at the very same time as the view is not after it.
    "g": ({}, None, [(PV, "03-12", {}), (DEMO, "03-12", {})]),
    # Every step, in reverse order.
    "h": ({}, None, [(PAID, "03-11", {}), (TRIAL, "03-12", {}), (DEMO, "03-13", {}),
                     (PV, "03-14", {})]),
    # A demo exactly 14 days after the view: the window's edge is inside it.
    "i": ({}, "google", [(PV, "03-01", {}), (DEMO, "03-15", {})]),
}  # fmt: skip


@pytest.fixture
def con(duck: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    events: list[dict[str, Any]] = []
    for cid, (traits, source, steps) in PEOPLE.items():
        insert_rows(
            duck,
            "contacts",
            [{"id": cid, "traits": traits, "created_at": at("02-01"), "updated_at": at("02-01"),
              "acquired_source": source}],
        )  # fmt: skip
        for name, day, properties in steps:
            events.append(
                {"id": len(events) + 1, "contact_id": cid, "kind": "track", "name": name,
                 "properties": properties, "occurred_at": at(day), "received_at": at(day)}
            )  # fmt: skip
    insert_rows(duck, "events", events)
    return duck


def funnel(con: duckdb.DuckDBPyConnection, **options: Any) -> list[tuple[Any, ...]]:
    by = options.pop("by", None)
    params = Params(SINCE, UNTIL, by=by, options={"steps": STEPS, **options})
    return conversion_report(con, params).section("steps").rows


def test_ordered_steps_within_the_window(con: duckdb.DuckDBPyConnection) -> None:
    assert funnel(con) == [
        (1, PV, 7, 1.0, None, None),  # a b c d g h i
        (2, DEMO, 4, 0.5714, 0.5714, DAY),  # a b d i
        (3, TRIAL, 3, 0.4286, 0.75, DAY),  # a b d
        (4, PAID, 2, 0.2857, 0.6667, 6 * DAY),  # a d: median of 1 and 11 days
    ]


def test_a_shorter_window_drops_the_slow(con: duckdb.DuckDBPyConnection) -> None:
    counts = [r[2] for r in funnel(con, window_days=10)]
    assert counts == [7, 3, 3, 1]  # i's demo (14 days) and d's purchase (13 days) drop out


def test_trait_filters_select_contacts(con: duckdb.DuckDBPyConnection) -> None:
    def counts(*filters: dict[str, Any]) -> list[int]:
        return [r[2] for r in funnel(con, filters=list(filters))]

    assert counts({"field": "traits.plan", "op": "eq", "value": "pro"}) == [2, 2, 2, 2]
    assert counts({"field": "traits.employees", "op": "gt", "value": 100}) == [1, 1, 1, 1]
    assert counts({"field": "traits.employees", "op": "lt", "value": 100}) == [2, 2, 2, 1]
    assert counts({"field": "traits.employees", "op": "eq", "value": 50}) == [1, 1, 1, 1]
    # neq keeps contacts without the trait
    assert counts({"field": "traits.plan", "op": "neq", "value": "free"}) == [6, 3, 2, 2]
    assert counts({"field": "traits.plan", "op": "contains", "value": "fr"}) == [1, 1, 1, 0]
    assert counts({"field": "source", "op": "in", "value": ["wechat", "google"]}) == [4, 4, 3, 2]
    assert counts(
        {"field": "source", "op": "eq", "value": "wechat"},
        {"field": "traits.employees", "op": "gt", "value": 100},
    ) == [1, 1, 1, 1]


def test_property_filters_apply_to_every_step(con: duckdb.DuckDBPyConnection) -> None:
    rows = funnel(con, filters=[{"field": "properties.campaign", "op": "eq", "value": "spring"}])
    assert [r[2] for r in rows] == [2, 1, 1, 1]  # d's view was in the campaign, its demo not


def test_by_source(con: duckdb.DuckDBPyConnection) -> None:
    params = Params(SINCE, UNTIL, by="source", options={"steps": STEPS})
    report = conversion_report(con, params)
    grouped: dict[str, list[int]] = {}
    for group, _step, _event, contacts, *_ in report.section("by").rows:
        grouped.setdefault(group, []).append(contacts)
    assert grouped == {
        "(none)": [2, 0, 0, 0],
        "google": [2, 2, 1, 0],
        "linkedin": [1, 0, 0, 0],
        "wechat": [2, 2, 2, 2],
    }
    assert report.section("by").columns[0] == "group"
    assert report.section("steps").rows == funnel(con)


def test_no_one_in_the_period(duck: duckdb.DuckDBPyConnection) -> None:
    report = conversion_report(duck, Params(SINCE, UNTIL, options={"steps": STEPS[:2]}))
    assert report.section("steps").rows == [
        (1, PV, 0, None, None, None),
        (2, DEMO, 0, None, None, None),
    ]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({}, "steps=None"),
        ({"steps": ["page.viewed"]}, "steps"),
        ({"steps": [f"e{i}" for i in range(11)]}, "steps"),
        ({"steps": "page.viewed,order.paid"}, "steps"),
        ({"steps": STEPS, "window_days": 0}, "window_days"),
        ({"steps": STEPS, "filters": {"field": "source"}}, "filters"),
        ({"steps": STEPS, "filters": [{"field": "plan", "op": "eq", "value": 1}]},
         r"filters\[0\].field"),
        ({"steps": STEPS, "filters": [{"field": "traits.plan", "op": "like", "value": "p"}]},
         r"filters\[0\].op"),
        ({"steps": STEPS, "filters": [{"field": "traits.n", "op": "gt", "value": "ten"}]},
         r"filters\[0\].value"),
        ({"steps": STEPS, "filters": [{"field": "source", "op": "gt", "value": 1}]},
         r"filters\[0\]: source"),
        ({"steps": STEPS, "filters": [{"field": "traits.a'b", "op": "eq", "value": 1}]},
         r"filters\[0\].field"),
    ],
)  # fmt: skip
def test_bad_options_name_the_field(
    con: duckdb.DuckDBPyConnection, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ReportError, match=named) as caught:
        conversion_report(con, Params(SINCE, UNTIL, options=options))
    assert caught.value.fix


def test_bad_by(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(ReportError, match="by cannot be 'journey'"):
        conversion_report(con, Params(SINCE, UNTIL, by="journey", options={"steps": STEPS}))


def test_matches_the_reference_on_synthetic_data(synthetic: duckdb.DuckDBPyConnection) -> None:
    since, until = datetime(2025, 2, 1), datetime(2025, 5, 1)
    steps = ["page.viewed", "content.downloaded", "demo.requested", "order.paid"]
    params = Params(since, until, options={"steps": steps, "window_days": 14})
    report = conversion_report(synthetic, params)
    expected = _reference.conversion(synthetic, since, until, steps, timedelta(days=14))

    _reference.assert_conversion_matches(report, expected)
    assert report.section("steps").rows[-1][2] > 0
