"""journeys_report on hand-built rows with known answers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import duckdb
import pytest

from stagecoach.engine.services.analytics._report import Params, ReportError
from stagecoach.engine.services.analytics._stats import compare_rates
from stagecoach.engine.services.analytics.journeys import journeys_report
from stagecoach.engine.services.analytics.store import insert_rows

T0 = datetime(2026, 3, 2)
SINCE = datetime(2026, 3, 1, tzinfo=UTC)
UNTIL = datetime(2026, 4, 1, tzinfo=UTC)
_ids = count(1)


def params(**options: Any) -> Params:
    return Params(since=SINCE, until=UNTIL, options=options)


def enrolment(
    contact: str,
    *,
    journey: str = "nurture",
    status: str = "active",
    reason: str | None = None,
    arms: dict[str, str] | None = None,
    trail: Sequence[tuple[str, str, str]] = (),
    started: datetime = T0,
) -> dict[str, Any]:
    """A journey_enrolments row; ``trail`` holds (step, kind, outcome) passages."""
    return {
        "id": next(_ids),
        "contact_id": contact,
        "journey": journey,
        "version": "v1",
        "enrolment": 1,
        "status": status,
        "reason": reason,
        "arms": arms or {},
        "trail": [
            {
                "step": step,
                "kind": kind,
                "outcome": outcome,
                "at": (started + timedelta(hours=i)).isoformat(),
            }
            for i, (step, kind, outcome) in enumerate(trail)
        ],
        "started_at": started,
        "finished_at": None if status == "active" else started + timedelta(days=5),
    }


def delivery(
    contact: str, step: str, digest: str | None, *, status: str = "sent", content: str = "wp-1"
) -> dict[str, Any]:
    return {
        "id": next(_ids),
        "digest": digest,
        "contact_id": contact,
        "journey": "nurture",
        "journey_version": "v1",
        "step_id": step,
        "enrolment": 1,
        "channel": "email",
        "content_id": content,
        "status": status,
        "created_at": T0 + timedelta(minutes=next(_ids)),
        "sent_at": T0 if status == "sent" else None,
    }


def event(
    contact: str, name: str, *, delivery: str | None = None, days: float = 1
) -> dict[str, Any]:
    at = T0 + timedelta(days=days)
    return {
        "id": next(_ids),
        "contact_id": contact,
        "kind": "track",
        "name": name,
        "properties": {},
        "context": {},
        "delivery": delivery,
        "occurred_at": at,
        "received_at": at,
    }


@pytest.fixture
def nurture(duck: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Five enrolments of one journey with a holdout split and a subject-line split."""
    # Trails as the interpreter writes them: a split passes once with its target, a send
    # twice (entered, then "ok"), the goal condition as "$goal". ``arms`` names each
    # split's target, an exit arm by its reason.
    split_to_welcome = ("holdout", "split", "welcome")
    welcome = [("welcome", "send", ""), ("welcome", "send", "ok")]
    insert_rows(
        duck,
        "journey_enrolments",
        [
            enrolment(
                "c1",
                status="completed",
                reason="goal",
                arms={"holdout": "welcome", "subject": "wait-1"},
                trail=[
                    split_to_welcome,
                    *welcome,
                    ("subject", "split", "wait-1"),
                    ("wait-1", "wait", ""),
                    ("offer", "send", ""),
                    ("offer", "send", "ok"),
                    ("$goal", "goal", "goal"),
                ],
            ),
            # Held out by its arm: counts in the holdout, never in the treatment.
            enrolment(
                "c2",
                status="exited",
                reason="holdout",
                arms={"holdout": "holdout"},
                trail=[("holdout", "split", "exit:holdout")],
            ),
            enrolment(
                "c3",
                status="exited",
                reason="unsubscribed",
                arms={"holdout": "welcome", "subject": "offer"},
                trail=[
                    split_to_welcome,
                    *welcome,
                    ("subject", "split", "offer"),
                    ("offer", "send", ""),
                    ("$exit", "exit", "unsubscribed"),
                ],
            ),
            enrolment(
                "c4",
                arms={"holdout": "welcome", "subject": "wait-1"},
                trail=[split_to_welcome, welcome[0]],
            ),
            # Held out by its exit reason alone (no arm recorded).
            enrolment("c5", status="exited", reason="holdout"),
            # Started before the period: nowhere.
            enrolment(
                "c6",
                status="completed",
                reason="goal",
                arms={"holdout": "welcome", "subject": "offer"},
                trail=[split_to_welcome],
                started=T0 - timedelta(days=10),
            ),
        ],
    )
    insert_rows(
        duck,
        "deliveries",
        [
            delivery("c1", "welcome", "g1"),
            delivery("c3", "welcome", "g3"),
            delivery("c4", "welcome", None, status="blocked"),
            delivery("c4", "welcome", "g4", status="failed"),
            delivery("c1", "offer", "g1b", content="offer-1"),
        ],
    )
    insert_rows(
        duck,
        "events",
        [
            event("c1", "email.delivered", delivery="g1"),
            event("c3", "email.delivered", delivery="g3"),
            event("c1", "email.opened", delivery="g1"),
            event("c1", "email.opened", delivery="g1", days=2),  # opened twice: one delivery
            event("c3", "email.opened", delivery="g3"),
            event("c1", "email.clicked", delivery="g1"),
            # Opens quoting no delivery of ours count nowhere.
            event("c3", "email.opened", delivery="not-a-delivery"),
            event("c3", "email.opened"),
            event("c1", "email.opened", delivery="g1b"),
            # order.paid: c2 (held out) in the window, c3 in the window, c1 too late.
            event("c2", "order.paid", days=3),
            event("c3", "order.paid", days=3),
            event("c1", "order.paid", days=20),
        ],
    )
    return duck


def test_steps_count_deliveries_and_their_tracked_events(
    nurture: duckdb.DuckDBPyConnection,
) -> None:
    section = journeys_report(nurture, params()).section("steps")
    assert section.columns == (
        "journey",
        "version",
        "step_id",
        "channel",
        "content_id",
        "sent",
        "delivered",
        "opened",
        "clicked",
        "converted",
        "exited",
        "blocked",
        "failed",
    )
    assert section.rows == [
        ("nurture", "v1", "welcome", "email", "wp-1", 2, 2, 2, 1, 1, 1, 1, 1),
        ("nurture", "v1", "offer", "email", "offer-1", 1, 0, 1, 0, 1, 0, 0, 0),
    ]


def test_lift_counts_a_holdout_contact_in_the_holdout_only(
    nurture: duckdb.DuckDBPyConnection,
) -> None:
    report = journeys_report(nurture, params())
    section = report.section("lift")
    assert section.columns == (
        "journey",
        "version",
        "holdout",
        "holdout_converted",
        "holdout_rate",
        "treatment",
        "treatment_converted",
        "treatment_rate",
        "lift",
        "relative_lift",
        "p_value",
    )
    # Holdout: c2 (arm), c5 (reason). Treatment: c1 (goal), c3, c4.
    assert section.rows == [
        ("nurture", "v1", 2, 0, 0.0, 3, 1, 0.3333, 0.3333, None, compare_rates([(1, 3), (0, 2)]))
    ]
    assert any("cannot reach the goal" in note for note in report.notes)


def test_lift_on_an_event_metric_counts_events_within_the_window(
    nurture: duckdb.DuckDBPyConnection,
) -> None:
    report = journeys_report(nurture, params(metric="order.paid"))
    # c2 paid on day 3 (holdout); c3 on day 3 (treatment); c1 on day 20, after 14 days.
    assert report.section("lift").rows == [
        (
            "nurture",
            "v1",
            2,
            1,
            0.5,
            3,
            1,
            0.3333,
            -0.1667,
            -0.3333,
            compare_rates([(1, 3), (1, 2)]),
        )
    ]
    assert report.notes == ["conversion metric: order.paid within 14 days of enrolling"]
    wider = journeys_report(nurture, params(metric="order.paid", window_days=30))
    assert wider.section("lift").rows[0][6] == 2


def test_splits_leave_out_the_holdout_split(nurture: duckdb.DuckDBPyConnection) -> None:
    section = journeys_report(nurture, params()).section("splits")
    assert section.columns == (
        "journey",
        "version",
        "step_id",
        "arm",
        "contacts",
        "conversions",
        "rate",
        "winner",
        "p_value",
    )
    p = compare_rates([(0, 1), (1, 2)])
    assert section.rows == [
        ("nurture", "v1", "subject", "offer", 1, 0, 0.0, False, p),
        ("nurture", "v1", "subject", "wait-1", 2, 1, 0.5, False, p),
    ]


def test_a_holdout_with_its_own_exit_reason_is_a_holdout(
    duck: duckdb.DuckDBPyConnection,
) -> None:
    # holdout(10, id="ctl", reason="control"): the held-out arm is named by its reason.
    insert_rows(
        duck,
        "journey_enrolments",
        [
            enrolment(
                "t1", journey="trial", status="exited", reason="control", arms={"ctl": "control"}
            ),
            enrolment(
                "t2",
                journey="trial",
                status="completed",
                reason="goal",
                arms={"ctl": "s1", "cta": "x"},
            ),
            enrolment("t3", journey="trial", arms={"ctl": "s1", "cta": "y"}),
        ],
    )
    report = journeys_report(duck, params())
    assert [row[:8] for row in report.section("lift").rows] == [
        ("trial", "v1", 1, 0, 0.0, 2, 1, 0.5)
    ]
    assert {row[2] for row in report.section("splits").rows} == {"cta"}


def test_splits_on_clicks(nurture: duckdb.DuckDBPyConnection) -> None:
    rows = journeys_report(nurture, params(metric="clicked")).section("splits").rows
    assert [(r[3], r[4], r[5]) for r in rows] == [("offer", 1, 0), ("wait-1", 2, 1)]


def test_flow_edges_end_in_the_enrolment_outcome(nurture: duckdb.DuckDBPyConnection) -> None:
    section = journeys_report(nurture, params()).section("flow")
    assert section.columns == ("journey", "version", "source", "target", "contacts")
    assert section.rows == [
        ("nurture", "v1", "holdout", "welcome", 3),
        ("nurture", "v1", "welcome", "subject", 2),
        ("nurture", "v1", "holdout", "exit:holdout", 1),
        ("nurture", "v1", "offer", "exit:unsubscribed", 1),
        ("nurture", "v1", "offer", "goal", 1),
        ("nurture", "v1", "subject", "offer", 1),
        ("nurture", "v1", "subject", "wait-1", 1),
        ("nurture", "v1", "wait-1", "offer", 1),
        ("nurture", "v1", "welcome", "active", 1),
    ]


def _ab(duck: duckdb.DuckDBPyConnection, step: str, arms: dict[str, tuple[int, int]]) -> None:
    rows = []
    for arm, (converted, total) in arms.items():
        for i in range(total):
            done = i < converted
            rows.append(
                enrolment(
                    f"{step}-{arm}-{i}",
                    journey="ab",
                    status="completed" if done else "active",
                    reason="goal" if done else None,
                    arms={step: arm},
                )
            )
    insert_rows(duck, "journey_enrolments", rows)


def test_split_winner_only_when_significant(duck: duckdb.DuckDBPyConnection) -> None:
    _ab(duck, "subject", {"A": (20, 40), "B": (8, 40)})  # p about 0.005
    _ab(duck, "cta", {"A": (3, 6), "B": (2, 6)})  # p about 0.56
    # SciPy's chi2_contingency example: p 0.24935220877729619 across three arms.
    _ab(duck, "hero", {"x": (10, 30), "y": (10, 30), "z": (20, 40)})
    rows = journeys_report(duck, params(journey="ab")).section("splits").records()
    by_arm = {(r["step_id"], r["arm"]): r for r in rows}

    assert by_arm[("subject", "A")]["winner"] is True
    assert by_arm[("subject", "B")]["winner"] is False
    assert by_arm[("subject", "A")]["p_value"] == pytest.approx(0.004911, abs=1e-6)
    assert by_arm[("subject", "A")]["rate"] == 0.5

    assert by_arm[("cta", "A")]["winner"] is False
    assert by_arm[("cta", "A")]["p_value"] > 0.05

    assert [by_arm[("hero", arm)]["winner"] for arm in "xyz"] == [False, False, False]
    assert by_arm[("hero", "z")]["p_value"] == pytest.approx(0.24935220877729619, rel=1e-12)
    assert by_arm[("hero", "z")]["contacts"] == 40


def test_journey_option_restricts_every_section(nurture: duckdb.DuckDBPyConnection) -> None:
    report = journeys_report(nurture, params(journey="other"))
    assert all(section.rows == [] for section in report.sections)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"metric": "order.payed"}, "options.metric"),  # no such event is stored
        ({"metric": ""}, "options.metric"),
        ({"metric": 3}, "options.metric"),
        ({"metric": "order.paid", "window_days": 0}, "options.window_days"),
        ({"journey": ["a"]}, "options.journey"),
    ],
)
def test_bad_options_are_refused(
    nurture: duckdb.DuckDBPyConnection, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ReportError) as caught:
        journeys_report(nurture, params(**options))
    assert named in caught.value.message
