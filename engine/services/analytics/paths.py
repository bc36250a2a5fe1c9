"""Paths to a goal: what contacts did just before their first goal event, and where the
others stopped.

- ``paths``: path, contacts, share. A contact's path is its events up to and including
  its first goal event in ``[since, until)`` (all its history before it counts, whenever
  it happened), ordered by time then id, with immediate repeats collapsed (``a > a > b``
  is ``a > b``), cut to the last ``length`` events before the goal, joined with
  ``" > "``. The path always ends with the goal. ``share`` is of all contacts who reached
  the goal in the period.
- ``drop_off``: last_event, contacts, share: for contacts active in the period who did
  not reach the goal in it, the name of their last event in the period; ``share`` is of
  all of them.

Identify, alias and group calls are not behaviour: they are left out of both.

Options: ``goal`` (default ``order.paid``), ``length`` (events before the goal, default
4, at most 10), ``top`` (rows per section, default 20, at most 1000).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import duckdb

from stagecoach.engine.services.analytics._report import Params, Report, ReportError, Section
from stagecoach.engine.services.analytics._stats import period, rate
from stagecoach.engine.services.analytics.pipeline import option_int, time_order

GOAL = "order.paid"
SEPARATOR = " > "
NOT_BEHAVIOUR = ("identify", "alias", "group")
_BEHAVIOUR = "kind NOT IN ('identify', 'alias', 'group')"

_PATHS = f"""
    WITH goals AS (
        SELECT contact_key, min(occurred_at) AS goal_at, arg_min(id, {time_order()}) AS goal_id
        FROM events
        WHERE name = $goal AND occurred_at >= $since AND occurred_at < $until
        GROUP BY contact_key
    ),
    history AS (
        SELECT e.contact_key, e.name, e.occurred_at, e.id
        FROM events e JOIN goals g ON g.contact_key = e.contact_key
        WHERE (e.occurred_at < g.goal_at OR (e.occurred_at = g.goal_at AND e.id < g.goal_id))
            AND e.{_BEHAVIOUR}
        UNION ALL
        SELECT contact_key, $goal, goal_at, goal_id FROM goals
    ),
    changes AS (
        SELECT contact_key, name, occurred_at, id,
            lag(name) OVER (PARTITION BY contact_key ORDER BY occurred_at, id) AS previous
        FROM history
    ),
    tail AS (
        SELECT contact_key, name, occurred_at, id,
            row_number() OVER (PARTITION BY contact_key ORDER BY occurred_at DESC, id DESC) AS back
        FROM changes
        WHERE previous IS DISTINCT FROM name
    ),
    paths AS (
        SELECT contact_key, string_agg(name, '{SEPARATOR}' ORDER BY occurred_at, id) AS path
        FROM tail WHERE back <= $length + 1
        GROUP BY contact_key
    )
    SELECT path, count(*) AS contacts, sum(count(*)) OVER () AS total
    FROM paths GROUP BY path ORDER BY contacts DESC, path LIMIT $top
"""

_DROP_OFF = f"""
    WITH last AS (
        SELECT contact_key,
            arg_max(id, {time_order()}) FILTER (WHERE {_BEHAVIOUR}) AS id,
            bool_or(name = $goal) AS reached
        FROM events
        WHERE occurred_at >= $since AND occurred_at < $until
        GROUP BY contact_key
    )
    SELECT e.name, count(*) AS contacts, sum(count(*)) OVER () AS total
    FROM last l JOIN events e ON e.id = l.id
    WHERE NOT l.reached
    GROUP BY e.name ORDER BY contacts DESC, e.name LIMIT $top
"""


def goal_option(params: Params) -> str:
    goal = params.options.get("goal", GOAL)
    if not isinstance(goal, str) or not goal.strip():
        raise ReportError(
            f"option goal={goal!r} is not an event name",
            fix=f'give the goal event\'s name, e.g. "{GOAL}" (the default)',
        )
    return goal.strip()


def _ranked(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [(name, n, rate(n, total)) for name, n, total in rows]


def paths_report(
    con: duckdb.DuckDBPyConnection, params: Params, *, as_of: datetime | None = None
) -> Report:
    """The top paths to ``options["goal"]`` and where the others dropped off.

    Raises:
        ReportError: goal, length or top that cannot be used, or any ``by``.
    """
    goal = goal_option(params)
    length = option_int(params, "length", 4, 1, 10)
    top = option_int(params, "top", 20, 1, 1000)
    if params.by is not None:
        raise ReportError(f"by cannot be {params.by!r}: paths are not grouped", fix="leave by out")
    since, until = period(params)
    binds = {"goal": goal, "since": since, "until": until, "top": top}
    paths = con.execute(_PATHS, {**binds, "length": length}).fetchall()
    drop_off = con.execute(_DROP_OFF, binds).fetchall()
    return Report(
        name="paths",
        title=f"Paths to {goal}",
        params=params,
        as_of=as_of,
        sections=[
            Section(
                "paths",
                ("path", "contacts", "share"),
                _ranked(paths),
                f"The last {length} steps before each contact's first {goal} in the period",
            ),
            Section(
                "drop_off",
                ("last_event", "contacts", "share"),
                _ranked(drop_off),
                f"Last event in the period of contacts active in it who did not reach {goal}",
            ),
        ],
    )
