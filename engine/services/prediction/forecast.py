"""The pipeline forecast's inputs from the analytics store, the forecast report, and the
actuals it is judged against.

``forecast_input(con, origin, ...)`` reads, as the store held them before ``origin``:

- the contacts in each open stage (before the target) and how long they have been in it;
- per open stage, of the contacts who entered it between ``mature_weeks + lookback_weeks``
  and ``mature_weeks`` weeks before ``origin`` (long enough ago to have had their chance),
  how many reached a later stage before ``origin``, and how long those stays lasted (the
  time-in-stage distribution of the pipeline report, per stay);
- new contacts per week over the last ``arrival_weeks`` weeks;
- the amounts of first orders (``order.paid``: ``properties.amount``, else the sum of
  its ``items``' amounts) in the lookback;
- customers ordering again: every customer's weeks since their first order, and from
  all the history before ``origin`` the repeat rate (orders per customer-week) at each
  such age; the repeat orders' amounts in the lookback.

The simulation itself is pure (``stagecoach.engine.domain.forecast``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from stagecoach.engine.domain.forecast import (
    Forecast,
    ForecastInput,
    StageFlow,
    repeat_rates,
    simulate,
)
from stagecoach.engine.services.analytics._report import Params, Report, ReportError, Section
from stagecoach.engine.services.analytics._stats import utc_naive
from stagecoach.engine.services.analytics.pipeline import STAGES, stages_option, time_order

ORDER_EVENT = "order.paid"
WEEK = timedelta(weeks=1)
AMOUNT = """coalesce(
    TRY_CAST(json_extract_string(properties, '$.amount') AS DOUBLE),
    list_sum(TRY_CAST(json_extract(properties, '$.items[*].amount') AS DOUBLE[]))
)"""
"""An order's value: its ``amount``, or the sum of its items' line totals (the form the
value model reads) when it gives none."""
ORDERS = f"""
    SELECT e.contact_key, e.occurred_at AS ordered_at, {AMOUNT} AS amount,
        row_number() OVER (PARTITION BY e.contact_key ORDER BY e.occurred_at, e.id) AS n
    FROM events e JOIN contacts c ON c.contact_key = e.contact_key
    WHERE e.name = $order AND NOT c.rehearsal
"""
"""Every order with its place in the contact's orders (``n`` 1: the first)."""


def _stage_at(origin_bind: str = "$origin") -> str:
    return f"""
        SELECT contact_key, arg_max(to_stage, {time_order('"at"')}) AS stage,
            max("at") AS since, bool_or(list_contains($reached, to_stage)) AS reached
        FROM stage_transitions WHERE "at" < {origin_bind} GROUP BY contact_key
    """


def forecast_input(
    con: duckdb.DuckDBPyConnection,
    origin: datetime,
    *,
    stages: Sequence[str] = STAGES,
    target: str = "customer",
    weeks: int = 8,
    mature_weeks: int = 8,
    lookback_weeks: int = 12,
    arrival_weeks: int = 8,
) -> ForecastInput:
    """The simulation's inputs as of ``origin`` (see the module docstring).

    Raises:
        ReportError: ``target`` is not one of ``stages``, or is the first.
    """
    if target not in stages or list(stages).index(target) == 0:
        raise ReportError(
            f"target stage {target!r} is not a later stage of {list(stages)}",
            fix="name the stage a conversion reaches, e.g. customer",
        )
    at = utc_naive(origin)
    open_stages = list(stages)[: list(stages).index(target)]
    reached = list(stages)[list(stages).index(target) :]
    binds: dict[str, Any] = {"origin": at, "reached": reached, "open": open_stages}
    current: dict[str, list[float]] = {s: [] for s in open_stages}
    for stage, hours in con.execute(
        f"""
        WITH s AS ({_stage_at()})
        SELECT s.stage, date_diff('second', s.since, $origin) / 3600.0
        FROM s JOIN contacts c ON c.contact_key = s.contact_key
        WHERE NOT s.reached AND list_contains($open, s.stage) AND NOT c.rehearsal
        """,
        binds,
    ).fetchall():
        current[str(stage)].append(float(hours))
    window = {
        "origin": at,
        "from": at - WEEK * (mature_weeks + lookback_weeks),
        "to": at - WEEK * mature_weeks,
        "stages": list(stages),
    }
    flows = []
    rows = con.execute(
        """
        WITH entries AS (
            SELECT contact_key, list_position($stages, to_stage) AS k, "at"
            FROM stage_transitions WHERE "at" >= $from AND "at" < $to
                AND list_position($stages, to_stage) > 0
        ),
        firsts AS (SELECT contact_key, k, min("at") AS entered_at FROM entries GROUP BY ALL),
        onward AS (
            SELECT f.contact_key, f.k, f.entered_at, min(t."at") AS left_at
            FROM firsts f LEFT JOIN stage_transitions t
                ON t.contact_key = f.contact_key AND t."at" >= f.entered_at
                AND t."at" < $origin AND list_position($stages, t.to_stage) > f.k
            GROUP BY ALL
        )
        SELECT k, count(*), count(left_at),
            list(date_diff('second', entered_at, left_at) / 3600.0)
                FILTER (WHERE left_at IS NOT NULL)
        FROM onward GROUP BY k
        """,
        window,
    ).fetchall()
    by_k = {int(r[0]): r for r in rows}
    for k, stage in enumerate(open_stages, start=1):
        r = by_k.get(k)
        flows.append(
            StageFlow(
                stage=stage,
                entered=int(r[1]) if r else 0,
                converted=int(r[2]) if r else 0,
                stays_hours=tuple(float(h) for h in (r[3] or ())) if r else (),
            )
        )
    new = con.execute(
        """
        SELECT count(*) FROM (
            SELECT contact_key, min("at") AS first_at FROM stage_transitions
            WHERE "at" < $origin GROUP BY contact_key
        ) WHERE first_at >= $since
        """,
        {"origin": at, "since": at - WEEK * arrival_weeks},
    ).fetchall()[0][0]
    recent = {"order": ORDER_EVENT, "origin": at, "since": at - WEEK * lookback_weeks}
    lived, first_values, repeat_ages, repeat_values = con.execute(
        f"""
        WITH orders AS ({ORDERS} AND e.occurred_at < $origin),
        firsts AS (SELECT contact_key, ordered_at, amount FROM orders WHERE n = 1),
        repeats AS (
            SELECT date_diff('second', f.ordered_at, o.ordered_at) / 604800.0 AS age,
                o.ordered_at, o.amount
            FROM orders o JOIN firsts f ON f.contact_key = o.contact_key WHERE o.n > 1
        )
        SELECT (SELECT list(date_diff('second', ordered_at, $origin) / 604800.0) FROM firsts),
            (SELECT list(amount) FILTER (WHERE amount >= 0 AND ordered_at >= $since)
                FROM firsts),
            (SELECT list(age) FROM repeats),
            (SELECT list(amount) FILTER (WHERE amount >= 0 AND ordered_at >= $since)
                FROM repeats)
        """,
        recent,
    ).fetchone() or (None, None, None, None)
    # Sorted: DuckDB's list() order varies with its threads, and the runs draw from these
    # by index, so the same store would otherwise give a slightly different forecast.
    values = sorted(float(v) for v in first_values or ())
    ages = tuple(float(a) for a in lived or ())
    return ForecastInput(
        flows=tuple(flows),
        current_ages_hours=current,
        arrivals_per_week=float(new) / arrival_weeks,
        order_values=tuple(values),
        weeks=weeks,
        customer_ages_weeks=ages,
        repeat_rates=repeat_rates(ages, [float(a) for a in repeat_ages or ()]),
        repeat_orders=len(repeat_ages or ()),
        repeat_values=tuple(sorted(float(v) for v in repeat_values or ())),
    )


def actuals(
    con: duckdb.DuckDBPyConnection,
    origin: datetime,
    weeks: int,
    *,
    stages: Sequence[str] = STAGES,
    target: str = "customer",
    before: int = 0,
) -> list[tuple[datetime, int, float]]:
    """New customers (first arrival at the target or beyond) and revenue per week from
    ``origin - before weeks`` for ``before + weeks`` weeks. Revenue is the new customers'
    first orders (in the week they became customers, as the forecast counts them) and
    every repeat order placed in the week."""
    at = utc_naive(origin)
    reached = list(stages)[list(stages).index(target) :]
    start = at - WEEK * before
    rows = con.execute(
        f"""
        WITH firsts AS (
            SELECT contact_key, min("at") AS at FROM stage_transitions
            WHERE list_contains($reached, to_stage) GROUP BY contact_key
        ),
        orders AS ({ORDERS}),
        first_orders AS (SELECT contact_key, amount FROM orders WHERE n = 1),
        new AS (
            SELECT floor(date_diff('second', $start, f.at) / 604800)::INTEGER AS w, count(*) AS n,
                coalesce(sum(o.amount), 0) AS revenue
            FROM firsts f LEFT JOIN first_orders o ON o.contact_key = f.contact_key
            WHERE f.at >= $start AND f.at < $end
            GROUP BY w
        ),
        again AS (
            SELECT floor(date_diff('second', $start, ordered_at) / 604800)::INTEGER AS w,
                coalesce(sum(amount) FILTER (WHERE amount >= 0), 0) AS revenue
            FROM orders WHERE n > 1 AND ordered_at >= $start AND ordered_at < $end
            GROUP BY w
        )
        SELECT coalesce(new.w, again.w), coalesce(new.n, 0),
            coalesce(new.revenue, 0) + coalesce(again.revenue, 0)
        FROM new FULL OUTER JOIN again ON again.w = new.w
        """,
        {
            "reached": reached,
            "order": ORDER_EVENT,
            "start": start,
            "end": start + WEEK * (before + weeks),
        },
    ).fetchall()
    found = {int(w): (int(n), float(r)) for w, n, r in rows}
    return [
        ((start + WEEK * w).replace(tzinfo=UTC), *found.get(w, (0, 0.0)))
        for w in range(before + weeks)
    ]


def forecast_report(
    con: duckdb.DuckDBPyConnection, params: Params, *, as_of: datetime | None = None
) -> Report:
    """New customers and revenue per week for the next ``weeks`` (default 8) from the
    origin, with 80% intervals, and the actuals: of the ``weeks`` before the origin, and of
    forecast weeks already over.

    The origin is ``params.until`` (default now), and never later than the store's copy:
    ``until=2026-10-01`` forecasts from then, from what was known then, so its weeks can
    be read against what happened (a backtest). ``since`` does not apply. Options:
    ``weeks`` (1-26), ``runs`` (100-20000), ``target`` (default customer), ``stages``.

    Raises:
        ReportError: a bad option.
    """
    from stagecoach.engine.services.analytics.pipeline import option_int

    stages = stages_option(params)
    target = str(params.options.get("target", "customer"))
    weeks = option_int(params, "weeks", 8, 1, 26)
    runs = option_int(params, "runs", 2000, 100, 20000)
    now = as_of or datetime.now(UTC)
    origin = min(_utc(params.until), _utc(now))
    inp = forecast_input(con, origin, stages=stages, target=target, weeks=weeks)
    result = simulate(inp, runs=runs)
    seen = actuals(con, origin, weeks, stages=stages, target=target, before=weeks)
    history, ahead = seen[:weeks], seen[weeks:]
    over = utc_naive(now)
    rows: list[tuple[Any, ...]] = []
    for wf, (start, n, revenue) in zip(result.weeks, ahead, strict=True):
        done = utc_naive(start) + WEEK <= over
        rows.append(
            (
                start.date().isoformat(),
                round(wf.customers_low, 1),
                round(wf.customers_median, 1),
                round(wf.customers_mean, 1),
                round(wf.customers_high, 1),
                round(wf.revenue_low, 2),
                round(wf.revenue_mean, 2),
                round(wf.revenue_high, 2),
                round(wf.repeat_revenue_mean, 2),
                n if done else None,
                round(revenue, 2) if done else None,
            )
        )
    return Report(
        name="forecast",
        title="Pipeline forecast",
        params=params,
        as_of=as_of,
        sections=[
            Section(
                "forecast",
                (
                    "week",
                    "customers_low",
                    "customers_median",
                    "customers_mean",
                    "customers_high",
                    "revenue_low",
                    "revenue_mean",
                    "revenue_high",
                    "repeat_revenue_mean",
                    "actual_customers",
                    "actual_revenue",
                ),
                rows,
                f"New customers and revenue (their first orders and every customer's repeat "
                f"orders) per week from {origin.date()}, with 80% intervals; actuals for weeks "
                "already over",
            ),
            Section(
                "history",
                ("week", "customers", "revenue"),
                [(s.date().isoformat(), n, round(r, 2)) for s, n, r in history],
                "New customers and revenue (first and repeat orders) in the weeks before the "
                "forecast",
            ),
            Section(
                "inputs",
                ("stage", "now", "entered", "converted", "rate", "median_stay_hours"),
                [
                    (
                        f.stage,
                        len(inp.current_ages_hours.get(f.stage, ())),
                        f.entered,
                        f.converted,
                        round(result.conversion[f.stage], 4),
                        _median(f.stays_hours),
                    )
                    for f in inp.flows
                ],
                "What the forecast is built from: contacts in each stage now, and the "
                "matured entrants' conversion and stays",
            ),
        ],
        notes=[
            f"{result.runs} simulated runs; new contacts at {inp.arrivals_per_week:.1f} a week; "
            f"revenue is each new customer's first {ORDER_EVENT} amount, drawn from "
            f"{len(inp.order_values)} recent ones, and repeat orders: "
            f"{len(inp.customer_ages_weeks)} customers ordering again at the rate measured "
            f"for their weeks since their first order ({inp.repeat_orders} repeat orders so "
            "far)"
        ],
    )


def _utc(at: datetime) -> datetime:
    """Report times are UTC; a naive one is taken as UTC."""
    return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    value = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return round(value, 1)


def run_forecast(con: duckdb.DuckDBPyConnection, origin: datetime, **kw: Any) -> Forecast:
    """The simulation from ``origin`` with default options (the backtest uses this)."""
    runs = int(kw.pop("runs", 2000))
    seed = int(kw.pop("seed", 0))
    return simulate(forecast_input(con, origin, **kw), runs=runs, seed=seed)
