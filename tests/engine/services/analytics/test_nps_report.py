"""nps_report on hand-built rows with known answers."""

from __future__ import annotations

from datetime import UTC, date, datetime
from itertools import count
from typing import Any

import duckdb
import pytest

from stagecoach.engine.services.analytics._report import Params, ReportError
from stagecoach.engine.services.analytics.nps import nps_report
from stagecoach.engine.services.analytics.store import insert_rows

SINCE = datetime(2026, 3, 1, tzinfo=UTC)
UNTIL = datetime(2026, 5, 1, tzinfo=UTC)
_ids = count(1)


def params(**options: Any) -> Params:
    return Params(since=SINCE, until=UNTIL, options=options)


def answer(cid: str, day: date, score: Any, touchpoint: str | None = None) -> dict[str, Any]:
    at = datetime(day.year, day.month, day.day, 12)
    properties: dict[str, Any] = {"score": score, "comment": ""}
    if touchpoint is not None:
        properties["touchpoint"] = touchpoint
    return {
        "id": next(_ids),
        "contact_id": cid,
        "kind": "track",
        "name": "nps.answered",
        "properties": properties,
        "context": {},
        "occurred_at": at,
        "received_at": at,
    }


def referral(referrer: str, referee: str, day: date, status: str = "signed_up"):
    return {
        "id": next(_ids),
        "code": f"C{referrer}",
        "referrer_id": referrer,
        "referee_id": referee,
        "status": status,
        "created_at": datetime(day.year, day.month, day.day),
    }


@pytest.fixture
def answers(duck: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    insert_rows(
        duck,
        "events",
        [
            # p1 answers twice in March: only the latest (6, a detractor) counts.
            answer("p1", date(2026, 3, 3), 10, "onboarding"),
            answer("p1", date(2026, 3, 20), 6, "onboarding"),
            answer("p2", date(2026, 3, 5), 9, "support"),
            answer("p3", date(2026, 3, 7), 7, "onboarding"),
            # p3 answers a support survey later that month: the latest for the trend,
            # and a touchpoint of its own.
            answer("p3", date(2026, 3, 25), 10, "support"),
            answer("p4", date(2026, 3, 8), 9.0),  # no touchpoint; a whole 9.0 is a 9
            answer("p5", date(2026, 3, 9), 11, "support"),  # not an answer
            answer("p6", date(2026, 3, 9), "great", "support"),  # not an answer
            answer("p1", date(2026, 4, 2), 9, "onboarding"),
            answer("p2", date(2026, 4, 3), 8, "support"),
            answer("p2", date(2026, 2, 27), 0, "support"),  # before the period
        ],
    )
    return duck


def test_trend_counts_a_contacts_latest_answer_per_month_once(
    answers: duckdb.DuckDBPyConnection,
) -> None:
    section = nps_report(answers, params()).section("trend")
    assert section.columns == (
        "period",
        "responses",
        "promoters",
        "passives",
        "detractors",
        "nps",
    )
    assert section.rows == [
        # March: p1 6, p2 9, p3 10, p4 9.
        (date(2026, 3, 1), 4, 3, 0, 1, 50.0),
        # April: p1 9, p2 8.
        (date(2026, 4, 1), 2, 1, 1, 0, 50.0),
    ]


def test_trend_per_week(answers: duckdb.DuckDBPyConnection) -> None:
    rows = nps_report(answers, params(period="week")).section("trend").rows
    assert rows == [
        (date(2026, 3, 2), 4, 3, 1, 0, 75.0),  # p1 10, p2 9, p3 7, p4 9
        (date(2026, 3, 16), 1, 0, 0, 1, -100.0),  # p1 6
        (date(2026, 3, 23), 1, 1, 0, 0, 100.0),  # p3 10
        (date(2026, 3, 30), 2, 1, 1, 0, 50.0),  # p1 9, p2 8
    ]


def test_by_touchpoint(answers: duckdb.DuckDBPyConnection) -> None:
    section = nps_report(answers, params()).section("by_touchpoint")
    assert section.columns == (
        "touchpoint",
        "responses",
        "promoters",
        "passives",
        "detractors",
        "nps",
    )
    assert section.rows == [
        ("(none)", 1, 1, 0, 0, 100.0),
        # p1 March 6, p3 March 7, p1 April 9.
        ("onboarding", 3, 1, 1, 1, 0.0),
        # p2 March 9, p3 March 10, p2 April 8.
        ("support", 3, 2, 1, 0, 66.7),
    ]


def test_referrals_and_their_trees(duck: duckdb.DuckDBPyConnection) -> None:
    insert_rows(
        duck,
        "referrals",
        [
            # Z referred A before the period: the tree is rooted at Z all the same.
            referral("Z", "A", date(2026, 2, 20), "converted"),
            referral("A", "B", date(2026, 3, 2), "converted"),
            referral("B", "C", date(2026, 3, 3)),
            referral("C", "D", date(2026, 3, 4), "converted"),
            referral("A", "E", date(2026, 3, 5), "ineligible"),
            referral("X", "Y", date(2026, 3, 6), "returned"),
            referral("D", "F", date(2026, 5, 2), "converted"),  # after the period
        ],
    )
    section = nps_report(duck, params()).section("referrals")
    assert section.columns == (
        "referrers",
        "referees",
        "converted",
        "conversion_rate",
        "max_depth",
        "largest_tree",
    )
    # In the period: referrers A, B, C, X; referees B, C, D, E, Y; converted B, D.
    # Trees: Z-A-{B-C-D, E} (6 contacts, depth 4), X-Y.
    assert section.rows == [(4, 5, 2, 0.4, 4, 6)]


def test_empty_store(duck: duckdb.DuckDBPyConnection) -> None:
    report = nps_report(duck, params())
    assert report.section("trend").rows == []
    assert report.section("by_touchpoint").rows == []
    assert report.section("referrals").rows == [(0, 0, 0, None, 0, 0)]


def test_unknown_period_is_refused(duck: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(ReportError) as caught:
        nps_report(duck, params(period="quarter"))
    assert "options.period" in caught.value.message
    assert caught.value.fix == "use one of: month, week"
