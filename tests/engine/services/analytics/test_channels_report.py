"""channels_report on hand-built rows with known answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import duckdb
import pytest

from stagecoach.engine.services.analytics._report import Params, ReportError
from stagecoach.engine.services.analytics.channels import channels_report
from stagecoach.engine.services.analytics.store import insert_rows

T0 = datetime(2026, 3, 1)
PARAMS = Params(since=datetime(2026, 3, 1, tzinfo=UTC), until=datetime(2026, 4, 1, tzinfo=UTC))
_ids = count(1)


def contact(cid: str, *, created: datetime, source: str | None, channel: str | None = None):
    return {
        "id": cid,
        "stage": "lead",
        "created_at": created,
        "updated_at": created,
        "acquired_source": source,
        "acquired_channel": channel,
        "acquired_campaign": None,
    }


def event(cid: str, name: str, occurred: datetime, kind: str = "track", **properties: Any):
    return {
        "id": next(_ids),
        "contact_id": cid,
        "kind": kind,
        "name": name,
        "properties": properties,
        "context": {},
        "occurred_at": occurred,
        "received_at": occurred,
    }


def customer(cid: str, at: datetime, stage: str = "customer"):
    return {
        "id": next(_ids),
        "contact_id": cid,
        "from_stage": "opportunity",
        "to_stage": stage,
        "kind": "rule",
        "at": at,
    }


@pytest.fixture
def filled(duck: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    insert_rows(
        duck,
        "contacts",
        [
            contact("a", created=T0, source="google", channel="web"),
            contact("b", created=T0 + timedelta(days=1), source="google", channel="web"),
            contact("c", created=T0 + timedelta(days=2), source="google", channel="wechat"),
            contact("d", created=T0 + timedelta(days=3), source="expo", channel="wechat"),
            contact("e", created=T0 + timedelta(days=4), source=None, channel="web"),
            # Acquired before the period: in no group.
            contact("old", created=T0 - timedelta(days=1), source="google", channel="web"),
        ],
    )
    insert_rows(
        duck,
        "stage_transitions",
        [
            customer("a", T0 + timedelta(days=10)),
            customer("a", T0 + timedelta(days=40)),  # re-entered: the first entry counts
            customer("b", T0 + timedelta(days=1, hours=12)),
            customer("d", T0 + timedelta(days=5)),
            customer("old", T0 + timedelta(days=2)),
            customer("c", T0 + timedelta(days=9), stage="opportunity"),
        ],
    )
    insert_rows(
        duck,
        "events",
        [
            # a: promoter, then a detractor answer: the latest counts, so not a promoter.
            event("a", "nps.answered", T0 + timedelta(days=20), score=10),
            event("a", "nps.answered", T0 + timedelta(days=25), score=3),
            # b: detractor, then promoter (sent as 9.0): a promoter.
            event("b", "nps.answered", T0 + timedelta(days=20), score=5),
            event("b", "nps.answered", T0 + timedelta(days=21), score=9.0),
            event("d", "nps.answered", T0 + timedelta(days=20), score=9),
            event("c", "nps.answered", T0 + timedelta(days=20), score=8),
            # Touchpoints.
            event("a", "webinar.attended", T0 + timedelta(days=2)),
            event("a", "webinar.attended", T0 + timedelta(days=3)),
            event("a", "demo.requested", T0 + timedelta(days=11)),  # after becoming customer
            event("b", "webinar.attended", T0 + timedelta(days=1)),
            event("c", "webinar.attended", T0 + timedelta(days=3)),
            event("c", "content.downloaded", T0 + timedelta(days=3)),
            event("d", "content.downloaded", T0 + timedelta(days=4)),
            event("e", "content.downloaded", T0 - timedelta(days=1)),  # before the period
            event("e", "identify", T0 + timedelta(days=4), kind="identify"),
        ],
    )
    return duck


def test_value_by_source(filled: duckdb.DuckDBPyConnection) -> None:
    report = channels_report(filled, PARAMS)
    assert report.section("value").columns == (
        "group",
        "contacts",
        "customers",
        "promoters",
        "conversion_rate",
        "median_days_to_customer",
    )
    assert report.section("value").rows == [
        # a: 10 days, b: 0.5 days: the median 5.25 shows as 5.2 (Python's round).
        ("google", 3, 2, 1, 0.6667, 5.2),
        ("(none)", 1, 0, 0, 0.0, None),
        ("expo", 1, 1, 1, 1.0, 2.0),
    ]


def test_value_by_channel(filled: duckdb.DuckDBPyConnection) -> None:
    rows = channels_report(filled, Params(PARAMS.since, PARAMS.until, by="channel")).section(
        "value"
    )
    assert rows.records()[0]["group"] == "web"
    assert [(r[0], r[1], r[2], r[3]) for r in rows.rows] == [
        ("web", 3, 2, 1),
        ("wechat", 2, 1, 1),
    ]


def test_touchpoints_count_only_touches_before_becoming_customer(
    filled: duckdb.DuckDBPyConnection,
) -> None:
    section = channels_report(filled, PARAMS).section("touchpoints")
    assert section.columns == ("touchpoint", "contacts", "customers", "conversion_rate")
    assert section.rows == [
        ("webinar.attended", 3, 2, 0.6667),
        ("content.downloaded", 2, 1, 0.5),
        ("nps.answered", 1, 0, 0.0),  # c only: the others answered as customers
    ]


def test_unknown_by_is_refused(duck: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(ReportError) as caught:
        channels_report(duck, Params(PARAMS.since, PARAMS.until, by="grade"))
    assert "by" in caught.value.message
    assert caught.value.fix == "use one of: source, channel, campaign"


def test_empty_store_gives_empty_sections(duck: duckdb.DuckDBPyConnection) -> None:
    report = channels_report(duck, PARAMS, as_of=T0)
    assert report.section("value").rows == []
    assert report.section("touchpoints").rows == []
    assert report.as_of == T0
