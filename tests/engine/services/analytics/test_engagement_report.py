"""engagement_report on hand-built rows with known answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import duckdb
import pytest

from stagecoach.engine.services.analytics._report import Params, ReportError
from stagecoach.engine.services.analytics.engagement import engagement_report
from stagecoach.engine.services.analytics.store import insert_rows

D1 = datetime(2026, 3, 2)
PARAMS = Params(since=datetime(2026, 3, 1, tzinfo=UTC), until=datetime(2026, 4, 1, tzinfo=UTC))
_ids = count(1)


def contact(cid: str, stage: str, source: str | None, *, created: datetime = D1):
    return {
        "id": cid,
        "stage": stage,
        "created_at": created,
        "updated_at": created,
        "acquired_source": source,
    }


def event(cid: str, name: str, at: datetime, **properties: Any) -> dict[str, Any]:
    return {
        "id": next(_ids),
        "contact_id": cid,
        "kind": "page" if name == "page.viewed" else "track",
        "name": name,
        "properties": properties,
        "context": {},
        "occurred_at": at,
        "received_at": at,
    }


def view(cid: str, at: datetime, **properties: Any) -> dict[str, Any]:
    return event(cid, "page.viewed", at, path="/", **properties)


@pytest.fixture
def filled(duck: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    insert_rows(
        duck,
        "contacts",
        [
            contact("a", "lead", "google"),
            contact("b", "lead", None),
            contact("c", "customer", "expo"),
            contact("d", "customer", "expo"),
            contact("late", "lead", "google", created=datetime(2026, 4, 2)),
        ],
    )
    h = timedelta(hours=1)
    m = timedelta(minutes=1)
    insert_rows(
        duck,
        "events",
        [
            # a, visit 1: 10:00, 10:10, 10:35 (25 minutes apart: still one visit).
            view("a", D1 + 10 * h),
            view("a", D1 + 10 * h + 10 * m),
            view("a", D1 + 10 * h + 35 * m),
            # a, visit 2: 35 minutes of silence start a new visit.
            view("a", D1 + 11 * h + 10 * m),
            # a, visit 3, two days later: 09:00 and 09:20.
            view("a", D1 + timedelta(days=2) + 9 * h),
            view("a", D1 + timedelta(days=2) + 9 * h + 20 * m),
            view("a", D1 - timedelta(days=5)),  # before the period
            # b: one session id spanning two hours is one visit; an unlabelled view
            # between them is a visit of its own.
            view("b", D1 + timedelta(days=1) + 8 * h, session_id="s1"),
            view("b", D1 + timedelta(days=1) + 9 * h),
            view("b", D1 + timedelta(days=1) + 10 * h, session_id="s1"),
            event("b", "order.paid", D1 + 12 * h, amount=100, currency="CNY"),
            event("b", "order.paid", D1 + 13 * h, revenue="50.5"),
            event("b", "order.paid", D1 - timedelta(days=3), amount=999),  # before the period
            event("c", "order.paid", D1 + 12 * h, amount=30.0),
        ],
    )
    return duck


def test_segments_by_stage(filled: duckdb.DuckDBPyConnection) -> None:
    section = engagement_report(filled, PARAMS).section("segments")
    assert section.columns == (
        "group",
        "contacts",
        "visitors",
        "visits_per_contact",
        "median_days_between_visits",
        "avg_session_minutes",
        "pages_per_visit",
        "purchasers",
        "purchases",
        "revenue",
    )
    # lead: a (3 visits: 35, 0 and 20 minutes; 6 pages) and b (2 visits: 120 and 0
    # minutes; 3 pages). Gaps between visit starts: 70 min, 1 d 21 h 50 min, 60 min:
    # the median is 70 minutes = 0.0486 days.
    assert section.rows == [
        ("customer", 2, 0, 0.0, None, None, None, 1, 1, 30.0),
        ("lead", 2, 2, 2.5, 0.05, 35.0, 1.8, 1, 2, 150.5),
    ]


def test_top_contacts_by_revenue_then_visits(filled: duckdb.DuckDBPyConnection) -> None:
    section = engagement_report(filled, PARAMS).section("contacts")
    assert section.columns == (
        "contact_id",
        "group",
        "visits",
        "median_days_between_visits",
        "avg_session_minutes",
        "pages_per_visit",
        "purchases",
        "revenue",
    )
    assert section.rows == [
        ("b", "lead", 2, 0.04, 60.0, 1.5, 2, 150.5),
        ("c", "customer", 0, None, None, None, 1, 30.0),
        # gaps 70 min and 1 d 21 h 50 min: median 0.979 days; 55 minutes over 3 visits.
        ("a", "lead", 3, 0.98, 18.3, 2.0, 0, 0.0),
    ]


def test_segments_by_source(filled: duckdb.DuckDBPyConnection) -> None:
    report = engagement_report(filled, Params(PARAMS.since, PARAMS.until, by="source"))
    assert [(r[0], r[1], r[2], r[9]) for r in report.section("segments").rows] == [
        ("expo", 2, 0, 30.0),
        ("(none)", 1, 1, 150.5),
        ("google", 1, 1, 0.0),
    ]
    assert report.section("contacts").records()[0]["group"] == "(none)"


def test_grade_is_not_a_segment(duck: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(ReportError) as caught:
        engagement_report(duck, Params(PARAMS.since, PARAMS.until, by="grade"))
    assert "by" in caught.value.message
    assert caught.value.fix == "use one of: stage, source, channel, campaign"


def test_empty_store(duck: duckdb.DuckDBPyConnection) -> None:
    report = engagement_report(duck, PARAMS)
    assert report.section("segments").rows == []
    assert report.section("contacts").rows == []
