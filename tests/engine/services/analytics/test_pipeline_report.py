"""The pipeline report on five hand-built contacts whose answers are worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import duckdb
import pytest

from stagecoach.engine.services.analytics._report import Params, ReportError
from stagecoach.engine.services.analytics.pipeline import STAGES, pipeline_report
from stagecoach.engine.services.analytics.store import insert_rows
from tests.engine.services.analytics import _reference

MARCH = Params(since=datetime(2025, 3, 1, tzinfo=UTC), until=datetime(2025, 4, 1, tzinfo=UTC))


def at(day: str) -> datetime:
    """``"03-05 12"`` -> 2025-03-05 12:00 UTC."""
    date, _, hour = day.partition(" ")
    month, dom = date.split("-")
    return datetime(2025 if month != "12" else 2024, int(month), int(dom), int(hour or 0))


# contact: created, acquired source, [(from, to, kind, at)]
PEOPLE: dict[str, tuple[str, str | None, str, list[tuple[str | None, str, str, str]]]] = {
    # Before the period as a suspect; then straight through to customer in March.
    "a": ("02-20", "google", "customer", [
        (None, "suspect", "manual", "02-20"),
        ("suspect", "prospect", "rule", "03-02"),
        ("prospect", "lead", "rule", "03-04"),
        ("lead", "opportunity", "manual", "03-10"),
        ("opportunity", "customer", "rule", "03-20"),
    ]),
    # Recycled from lead back to prospect; back to lead only after the period.
    "b": ("03-03", "wechat", "lead", [
        (None, "suspect", "manual", "03-03"),
        ("suspect", "prospect", "rule", "03-05 12"),
        ("prospect", "lead", "rule", "03-06 12"),
        ("lead", "prospect", "detour", "03-08 12"),
        ("prospect", "lead", "rule", "04-02"),
    ]),
    # Skips prospect.
    "c": ("03-03 06", "wechat", "lead", [
        (None, "suspect", "manual", "03-03 06"),
        ("suspect", "lead", "rule", "03-05 06"),
    ]),
    # Still a suspect; no acquisition.
    "d": ("03-10", None, "suspect", [(None, "suspect", "manual", "03-10")]),
    # Disqualified in the period: off the pipeline.
    "e": ("01-01", "linkedin", "disqualified", [
        (None, "suspect", "manual", "01-01"),
        ("suspect", "disqualified", "detour", "03-15"),
    ]),
}  # fmt: skip


@pytest.fixture
def con(duck: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    contacts: list[dict[str, Any]] = []
    transitions: list[dict[str, Any]] = []
    for cid, (created, source, stage, moves) in PEOPLE.items():
        contacts.append(
            {"id": cid, "stage": stage, "created_at": at(created), "updated_at": at(created),
             "acquired_source": source, "acquired_channel": source and "web"}
        )  # fmt: skip
        for frm, to, kind, when in moves:
            transitions.append(
                {"id": len(transitions) + 1, "contact_id": cid, "from_stage": frm,
                 "to_stage": to, "kind": kind, "reason": "r", "at": at(when)}
            )  # fmt: skip
    insert_rows(duck, "contacts", contacts)
    insert_rows(duck, "stage_transitions", transitions)
    return duck


def test_width_counts_contacts_now_and_entries_in_the_period(
    con: duckdb.DuckDBPyConnection,
) -> None:
    report = pipeline_report(con, MARCH)
    assert report.section("width").rows == [
        ("suspect", 1, 3),
        ("prospect", 0, 3),
        ("lead", 2, 3),
        ("opportunity", 0, 1),
        ("customer", 1, 1),
        ("fan", 0, 0),
        ("advocate", 0, 0),
        ("disqualified", 1, 1),
    ]
    assert report.name == "funnel"
    assert report.as_of is None


def test_conversion_counts_later_progress_and_skips(con: duckdb.DuckDBPyConnection) -> None:
    assert pipeline_report(con, MARCH).section("conversion").rows == [
        ("suspect", "prospect", 3, 2, 0.6667),  # c skipped prospect: still got past suspect
        ("prospect", "lead", 2, 2, 1.0),
        ("lead", "opportunity", 3, 1, 0.3333),  # b's return to lead is no progress
        ("opportunity", "customer", 1, 1, 1.0),
        ("customer", "fan", 1, 0, 0.0),
        ("fan", "advocate", 0, 0, None),
    ]


def test_length_and_time_in_stage_use_completed_stays_begun_in_the_period(
    con: duckdb.DuckDBPyConnection,
) -> None:
    report = pipeline_report(con, MARCH)
    assert report.section("length").rows == [
        ("suspect", 2, 54.0, 58.8),
        ("prospect", 3, 48.0, 480.0),  # b's second prospect stay ends after the period
        ("lead", 2, 96.0, 134.4),
        ("opportunity", 1, 240.0, 240.0),
        ("customer", 0, None, None),
        ("fan", 0, None, None),
        ("advocate", 0, None, None),
        ("disqualified", 0, None, None),
        ("time_to_customer", 1, 672.0, 672.0),
    ]
    buckets = {(s, b): n for s, b, n in report.section("time_in_stage").rows}
    assert len(buckets) == 8 * 5
    assert {k: n for k, n in buckets.items() if n} == {
        ("suspect", "1-3d"): 2,
        ("prospect", "1-3d"): 2,  # exactly 24 hours is a day, not "<1d"
        ("prospect", "7-30d"): 1,
        ("lead", "1-3d"): 1,
        ("lead", "3-7d"): 1,
        ("opportunity", "7-30d"): 1,
    }


def test_flows_include_detours_and_new_contacts(con: duckdb.DuckDBPyConnection) -> None:
    assert pipeline_report(con, MARCH).section("flows").rows == [
        ("(new)", "suspect", "manual", 3),
        ("prospect", "lead", "rule", 2),
        ("suspect", "prospect", "rule", 2),
        ("lead", "opportunity", "manual", 1),
        ("lead", "prospect", "detour", 1),
        ("opportunity", "customer", "rule", 1),
        ("suspect", "disqualified", "detour", 1),
        ("suspect", "lead", "rule", 1),
    ]


def test_by_source_groups_conversion_and_length(con: duckdb.DuckDBPyConnection) -> None:
    report = pipeline_report(con, Params(MARCH.since, MARCH.until, by="source"))
    assert report.section("by").rows == [
        ("(none)", "suspect", 1, 0, 0.0, None),
        ("google", "prospect", 1, 1, 1.0, 48.0),
        ("google", "lead", 1, 1, 1.0, 144.0),
        ("google", "opportunity", 1, 1, 1.0, 240.0),
        ("google", "customer", 1, 0, 0.0, None),
        ("wechat", "suspect", 2, 2, 1.0, 54.0),
        ("wechat", "prospect", 1, 1, 1.0, 306.0),
        ("wechat", "lead", 2, 0, 0.0, 48.0),
    ]
    # The ungrouped sections are the same with or without by.
    assert report.section("conversion") == pipeline_report(con, MARCH).section("conversion")


def test_by_cohort_groups_by_the_monday_of_the_week_created(
    con: duckdb.DuckDBPyConnection,
) -> None:
    rows = pipeline_report(con, Params(MARCH.since, MARCH.until, by="cohort")).section("by").rows
    assert {(g, s) for g, s, *_ in rows if s == "suspect"} == {
        ("2025-03-03", "suspect"),
        ("2025-03-10", "suspect"),
    }
    assert ("2025-02-17", "customer", 1, 0, 0.0, None) in rows


def test_a_custom_stage_order(con: duckdb.DuckDBPyConnection) -> None:
    params = Params(MARCH.since, MARCH.until, options={"stages": ["suspect", "lead", "customer"]})
    report = pipeline_report(con, params)
    assert report.section("conversion").rows == [
        ("suspect", "lead", 3, 2, 0.6667),
        ("lead", "customer", 3, 1, 0.3333),
    ]
    assert [r[0] for r in report.section("width").rows] == [
        "suspect", "lead", "customer", "disqualified", "opportunity", "prospect",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("params", "named"),
    [
        (Params(MARCH.since, MARCH.until, by="country"), "by cannot be 'country'"),
        (Params(MARCH.since, MARCH.until, options={"stages": ["lead"]}), "stages"),
        (Params(MARCH.until, MARCH.since), "until"),
    ],
)
def test_bad_parameters_name_themselves(
    con: duckdb.DuckDBPyConnection, params: Params, named: str
) -> None:
    with pytest.raises(ReportError, match=named) as caught:
        pipeline_report(con, params)
    if params.by:
        assert caught.value.fix == "use one of: cohort, source, channel"


def test_an_empty_store_gives_empty_sections(duck: duckdb.DuckDBPyConnection) -> None:
    report = pipeline_report(duck, MARCH)
    assert report.section("conversion").rows[0] == ("suspect", "prospect", 0, 0, None)
    assert report.section("flows").rows == []
    assert report.section("length").rows[-1] == ("time_to_customer", 0, None, None)


def test_matches_the_reference_on_synthetic_data(synthetic: duckdb.DuckDBPyConnection) -> None:
    since, until = datetime(2025, 2, 1), datetime(2025, 5, 1)
    report = pipeline_report(synthetic, Params(since.replace(tzinfo=UTC), until))
    expected = _reference.pipeline(synthetic, since, until, STAGES)

    _reference.assert_pipeline_matches(report, expected)
    assert sum(r[2] for r in report.section("conversion").rows) > 1000
    assert {r[2] for r in report.section("flows").rows} >= {"rule", "detour", "manual"}
