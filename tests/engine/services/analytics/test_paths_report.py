"""Paths to a goal and drop-off, on hand-built histories."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import duckdb
import pytest

from stagecoach.engine.services.analytics._report import Params, ReportError
from stagecoach.engine.services.analytics.paths import paths_report
from stagecoach.engine.services.analytics.store import insert_rows
from tests.engine.services.analytics import _reference

SINCE, UNTIL = datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC)
PV, CD, DEMO, FORM, PAID = (
    "page.viewed",
    "content.downloaded",
    "demo.requested",
    "form.submitted",
    "order.paid",
)


def at(day: str) -> datetime:
    date, _, hour = day.partition(" ")
    month, dom = date.split("-")
    return datetime(2025, int(month), int(dom), int(hour or 0))


HISTORIES: dict[str, list[tuple[str, str]]] = {
    # Repeats collapse; history before the period counts; what follows the goal does not.
    "a": [(PV, "02-20"), (PV, "03-01"), (CD, "03-02"), (PV, "03-03"), (PV, "03-03 01"),
          (DEMO, "03-04"), (PAID, "03-05"), (PV, "03-06")],
    # The first purchase in the period is the goal.
    "b": [(DEMO, "03-10"), (PAID, "03-11"), (PAID, "03-12")],
    # A purchase before the period is part of the path to the next one.
    "c": [(PAID, "02-15"), (PV, "03-20"), (PAID, "03-21")],
    # Nothing before the goal.
    "d": [(PAID, "03-15")],
    # Same time as the goal, earlier id: before it.
    "e": [(DEMO, "03-10"), (PAID, "03-10")],
    # Identify calls are not behaviour.
    "f": [("identify", "03-01"), (DEMO, "03-02"), (PAID, "03-03")],
    # Paid only after the period: dropped off at a page view.
    "g": [(PV, "03-25"), (PAID, "04-01")],
    "h": [(PV, "03-05"), (FORM, "03-06")],
    "i": [(FORM, "03-07"), (PV, "03-08"), ("identify", "03-09")],
    # Not active in the period.
    "j": [(PV, "02-01")],
    # The last event before the goal is the goal's name: one step, not two.
    "l": [(PV, "02-01"), (PAID, "02-10"), (PAID, "03-16")],
}  # fmt: skip


@pytest.fixture
def con(duck: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    events: list[dict[str, Any]] = []
    for cid, history in HISTORIES.items():
        for name, day in history:
            events.append(
                {"id": len(events) + 1, "contact_id": cid, "name": name, "occurred_at": at(day),
                 "kind": "identify" if name == "identify" else "track", "received_at": at(day)}
            )  # fmt: skip
    insert_rows(duck, "events", events)
    return duck


def report(con: duckdb.DuckDBPyConnection, **options: Any) -> Any:
    return paths_report(con, Params(SINCE, UNTIL, options=options))


def test_top_paths_to_the_goal(con: duckdb.DuckDBPyConnection) -> None:
    assert report(con).section("paths").rows == [
        ("demo.requested > order.paid", 3, 0.4286),  # b e f
        ("order.paid", 1, 0.1429),  # d
        ("order.paid > page.viewed > order.paid", 1, 0.1429),  # c
        (
            "page.viewed > content.downloaded > page.viewed > demo.requested > order.paid",
            1,
            0.1429,
        ),  # a
        ("page.viewed > order.paid", 1, 0.1429),  # l
    ]


def test_length_cuts_from_the_front(con: duckdb.DuckDBPyConnection) -> None:
    rows = report(con, length=2).section("paths").rows
    assert ("page.viewed > demo.requested > order.paid", 1, 0.1429) in rows
    assert report(con, length=1).section("paths").rows == [
        ("demo.requested > order.paid", 4, 0.5714),  # a joins b e f
        ("page.viewed > order.paid", 2, 0.2857),  # c joins l
        ("order.paid", 1, 0.1429),
    ]


def test_top_limits_rows(con: duckdb.DuckDBPyConnection) -> None:
    r = report(con, top=1)
    assert r.section("paths").rows == [("demo.requested > order.paid", 3, 0.4286)]
    assert r.section("drop_off").rows == [("page.viewed", 2, 0.6667)]


def test_drop_off_is_the_last_event_of_those_who_did_not_reach_the_goal(
    con: duckdb.DuckDBPyConnection,
) -> None:
    assert report(con).section("drop_off").rows == [
        ("page.viewed", 2, 0.6667),  # g i
        ("form.submitted", 1, 0.3333),  # h
    ]


def test_another_goal(con: duckdb.DuckDBPyConnection) -> None:
    r = report(con, goal=FORM)
    assert r.title == "Paths to form.submitted"
    assert r.section("paths").rows == [
        ("form.submitted", 1, 0.5),  # i
        ("page.viewed > form.submitted", 1, 0.5),  # h
    ]


@pytest.mark.parametrize(
    ("options", "by", "named"),
    [
        ({"length": 0}, None, "length=0"),
        ({"length": 11}, None, "length=11"),
        ({"length": "4"}, None, "length='4'"),
        ({"top": 0}, None, "top=0"),
        ({"goal": ""}, None, "goal=''"),
        ({}, "source", "by cannot be 'source'"),
    ],
)
def test_bad_parameters_name_themselves(
    con: duckdb.DuckDBPyConnection, options: dict[str, Any], by: str | None, named: str
) -> None:
    with pytest.raises(ReportError, match=named):
        paths_report(con, Params(SINCE, UNTIL, by=by, options=options))


def test_matches_the_reference_on_synthetic_data(synthetic: duckdb.DuckDBPyConnection) -> None:
    since, until = datetime(2025, 2, 1), datetime(2025, 5, 1)
    report = paths_report(synthetic, Params(since, until))
    expected = _reference.paths(synthetic, since, until, "order.paid", 4, 20)

    _reference.assert_paths_match(report, expected)
    assert len(expected["paths"]) == 20
