"""The forecast's revenue counts customers ordering again, not only new customers' first
orders: read from a store built by hand, where every figure can be counted on a finger."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pytest

from stagecoach.engine.services.analytics import Params
from stagecoach.engine.services.analytics.store import create_tables
from stagecoach.engine.services.prediction.forecast import (
    actuals,
    forecast_input,
    forecast_report,
)

ORIGIN = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
WEEK = timedelta(weeks=1)


def _naive(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(tzinfo=None)


def _store() -> duckdb.DuckDBPyConnection:
    """Two customers and a rehearsal contact:

    - ``a`` became a customer 10 weeks before the origin with a 100 order, and ordered
      again 5 weeks before (two items, 30 + 20: no ``amount``) and 2 weeks before (70);
    - ``b`` became a customer 8 weeks before with a 200 order, and never again;
    - ``r``, a journey rehearsal's contact, orders every week: left out.
    """
    con = duckdb.connect()
    create_tables(con)
    contacts = {"a": (1, False), "b": (2, False), "r": (3, True)}
    for cid, (key, rehearsal) in contacts.items():
        con.execute(
            "INSERT INTO contacts (id, created_at, updated_at, contact_key, rehearsal)"
            " VALUES (?, ?, ?, ?, ?)",
            [cid, _naive(ORIGIN - 20 * WEEK), _naive(ORIGIN), key, rehearsal],
        )
    became = {"a": 10, "b": 8, "r": 12}
    for n, (cid, weeks) in enumerate(became.items(), start=1):
        con.execute(
            'INSERT INTO stage_transitions (id, contact_id, to_stage, kind, "at", contact_key)'
            " VALUES (?, ?, 'customer', 'rule', ?, ?)",
            [n, cid, _naive(ORIGIN - weeks * WEEK), contacts[cid][0]],
        )
    orders: list[tuple[str, float, dict[str, Any]]] = [
        ("a", 10, {"amount": 100}),
        ("a", 5, {"items": [{"product": "tea", "amount": 30}, {"product": "cup", "amount": 20}]}),
        ("a", 2, {"amount": 70}),
        ("b", 8, {"amount": 200}),
        *(("r", float(w), {"amount": 1000}) for w in range(12, 0, -1)),
    ]
    for n, (cid, ago, properties) in enumerate(orders, start=1):
        at = _naive(ORIGIN - ago * WEEK + timedelta(hours=1))
        con.execute(
            "INSERT INTO events (id, contact_id, kind, name, properties, occurred_at,"
            " received_at, contact_key) VALUES (?, ?, 'track', 'order.paid', ?, ?, ?, ?)",
            [n, cid, json.dumps(properties), at, at, contacts[cid][0]],
        )
    return con


def test_the_inputs_hold_each_customers_age_and_the_repeat_rate_at_each_age() -> None:
    inp = forecast_input(_store(), ORIGIN)
    # a: first ordered 10 weeks ago, b: 8 (an hour after the week began).
    assert sorted(round(a, 2) for a in inp.customer_ages_weeks) == [7.99, 9.99]
    assert inp.repeat_orders == 2
    assert sorted(inp.repeat_values) == [50.0, 70.0]  # items summed when there is no amount
    assert sorted(inp.order_values) == [100.0, 200.0]  # first orders only
    # a ordered again 5 and 8 weeks after its first order: at 5 weeks both customers were
    # watched, at 8 only a (b is not quite 8 weeks a customer).
    rates = inp.repeat_rates
    assert rates[5] == pytest.approx(1 / 2)
    assert rates[8] == pytest.approx(1.0)
    assert rates[0] == rates[4] == rates[6] == 0
    assert rates[9] == 0  # only a was 9 weeks a customer, and it did not order then
    assert rates[10] == rates[-1] == 0  # no one is older: the age before's rate


def test_actual_revenue_holds_repeat_orders_in_the_week_they_were_placed() -> None:
    weeks = actuals(_store(), ORIGIN, 0, before=12)
    by_week = {round((ORIGIN - start) / WEEK): (n, revenue) for start, n, revenue in weeks}
    assert by_week[10] == (1, 100.0)  # a's first order, with a
    assert by_week[8] == (1, 200.0)  # b's
    assert by_week[5] == (0, 50.0)  # a again: revenue, no new customer
    assert by_week[2] == (0, 70.0)
    assert sum(revenue for _, revenue in by_week.values()) == 420.0  # no rehearsal's orders


def test_the_forecast_expects_repeat_revenue_from_the_customers_there_are() -> None:
    report = forecast_report(
        _store(), Params(since=ORIGIN, until=ORIGIN, options={"runs": 4000}), as_of=ORIGIN
    )
    rows = report.section("forecast").records()
    assert len(rows) == 8
    assert all(row["customers_mean"] == 0 for row in rows)  # no one is in the pipeline
    repeat = [row["repeat_revenue_mean"] for row in rows]
    for row in rows:
        assert row["revenue_mean"] == row["repeat_revenue_mean"]
        assert row["revenue_low"] <= row["revenue_mean"] <= row["revenue_high"]
    # Next week b is 8 weeks in, where the measured rate is 1 (a ordered then): one order
    # at 60 on average; a is 10 weeks in, and in the weeks after both are at ages where no
    # order was seen.
    assert repeat[0] == pytest.approx(60, rel=0.1)
    assert repeat[1:] == [0.0] * 7
    [note] = report.notes
    assert "2 customers ordering again" in note
    assert "(2 repeat orders so far)" in note
