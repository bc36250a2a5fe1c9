"""The conversion funnel: of the contacts who did step 1, how many went on, in order.

Semantics, as product analytics tools define an ordered funnel:

- the anchor is a contact's first step-1 event in ``[since, until)``;
- step k counts when the contact has a step-k event strictly after the step-(k-1) event
  used and no later than the anchor plus the window (``window_days``, default 14); the
  earliest such event is used, so steps done out of order never count and later steps
  have the most room;
- property filters apply to every step's event; trait, ``source`` and ``channel``
  filters to the contact (``source``/``channel``: its acquisition, as ``by`` groups).

Options: ``steps`` (2 to 10 event names), ``window_days``, ``filters``: a list of
``{"field": "traits.x" | "properties.x" | "source" | "channel", "op": "eq" | "neq" |
"in" | "contains" | "gt" | "lt", "value": ...}``. ``eq``/``neq``/``in`` compare numbers
as numbers and anything else as text; ``neq`` keeps contacts or events without the
field; ``contains`` is a substring test; ``gt``/``lt`` take a number.

Sections: ``steps`` (step, event, contacts, rate_from_start, rate_from_previous,
median_seconds_from_previous) and, with ``by`` = cohort/source/channel, ``by`` (group
and the same columns).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import duckdb

from stagecoach.engine.services.analytics._report import Params, Report, ReportError, Section
from stagecoach.engine.services.analytics._stats import period, rate
from stagecoach.engine.services.analytics.pipeline import check_by, group_sql, rounded

MIN_STEPS, MAX_STEPS = 2, 10
WINDOW_DAYS = 14
MAX_WINDOW_DAYS = 365
OPS = ("eq", "neq", "in", "contains", "gt", "lt")
_KEY = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_FIELD_FIX = 'use "traits.<key>", "properties.<key>", "source" or "channel"'
COLUMNS = (
    "step",
    "event",
    "contacts",
    "rate_from_start",
    "rate_from_previous",
    "median_seconds_from_previous",
)


def steps_option(params: Params) -> list[str]:
    """``options["steps"]``: 2 to 10 event names."""
    steps = params.options.get("steps")
    if (
        isinstance(steps, str)
        or not isinstance(steps, list | tuple)
        or not MIN_STEPS <= len(steps) <= MAX_STEPS
        or not all(isinstance(s, str) and s.strip() for s in steps)
    ):
        raise ReportError(
            f"option steps={steps!r} is not a list of {MIN_STEPS} to {MAX_STEPS} event names",
            fix='give steps in order, e.g. ["page.viewed", "demo.requested", "order.paid"]',
        )
    return [s.strip() for s in steps]


def window_option(params: Params) -> int:
    """``options["window_days"]`` in microseconds."""
    days = params.options.get("window_days", WINDOW_DAYS)
    if isinstance(days, bool) or not isinstance(days, int | float) or not 0 < days <= 365:
        raise ReportError(
            f"option window_days={days!r} is not a number of days above 0, at most "
            f"{MAX_WINDOW_DAYS}",
            fix=f"give window_days as a number such as 7 or 30 (default {WINDOW_DAYS})",
        )
    return round(days * 86_400 * 1_000_000)


class _Filters:
    """Filters turned into SQL conditions with bound values."""

    def __init__(self) -> None:
        self.contact: list[str] = []
        self.event: list[str] = []
        self.binds: dict[str, Any] = {}

    def bind(self, value: Any) -> str:
        name = f"f{len(self.binds)}"
        self.binds[name] = value
        return f"${name}"

    def add(self, i: int, raw: Any) -> None:
        where = f"filters[{i}]"
        if not isinstance(raw, dict):
            raise ReportError(
                f"{where} is {raw!r}, not an object",
                fix='give each filter as {"field": ..., "op": ..., "value": ...}',
            )
        field, op, value = raw.get("field"), raw.get("op"), raw.get("value")
        if op not in OPS:
            raise ReportError(f"{where}.op cannot be {op!r}", fix=f"use one of: {', '.join(OPS)}")
        if not isinstance(field, str):
            raise ReportError(f"{where}.field is missing", fix=_FIELD_FIX)
        head, _, key = field.partition(".")
        if field in ("source", "channel"):
            target = f"c.acquired_{field}"
            if op in ("gt", "lt"):
                raise ReportError(
                    f"{where}: {field} is text, so op {op!r} does not apply",
                    fix="use eq, neq, in or contains",
                )
            self.contact.append(self.condition(where, target, op, value))
            return
        if head not in ("traits", "properties") or not _KEY.match(key):
            raise ReportError(f"{where}.field cannot be {field!r}", fix=_FIELD_FIX)
        path = "$" + "".join(f'."{part}"' for part in key.split("."))
        column = "c.traits" if head == "traits" else "e.properties"
        target = f"json_extract_string({column}, {self.bind(path)})"
        condition = self.condition(where, target, op, value)
        (self.contact if head == "traits" else self.event).append(condition)

    def condition(self, where: str, target: str, op: str, value: Any) -> str:
        if op in ("gt", "lt"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ReportError(
                    f"{where}.value {value!r} is not a number, as op {op!r} needs",
                    fix="give a number, e.g. 100",
                )
            sign = ">" if op == "gt" else "<"
            return f"TRY_CAST({target} AS DOUBLE) {sign} {self.bind(float(value))}"
        if op == "contains":
            if not isinstance(value, str) or not value:
                raise ReportError(
                    f"{where}.value {value!r} is not text, as op 'contains' needs",
                    fix="give the text to look for",
                )
            return f"coalesce(contains({target}, {self.bind(value)}), false)"
        if op == "in":
            if not isinstance(value, list) or not value:
                raise ReportError(
                    f"{where}.value {value!r} is not a list, as op 'in' needs",
                    fix='give the values to match, e.g. ["wechat", "email"]',
                )
            matches = " OR ".join(self.equals(where, target, v) for v in value)
            return f"coalesce({matches}, false)"
        equal = self.equals(where, target, value)
        return f"coalesce({equal}, false)" if op == "eq" else f"coalesce(NOT ({equal}), true)"

    def equals(self, where: str, target: str, value: Any) -> str:
        if isinstance(value, bool):
            return f"{target} = {self.bind('true' if value else 'false')}"
        if isinstance(value, int | float):
            return f"TRY_CAST({target} AS DOUBLE) = {self.bind(float(value))}"
        if isinstance(value, str):
            return f"{target} = {self.bind(value)}"
        raise ReportError(
            f"{where}.value {value!r} is not text, a number or true/false",
            fix="give a value to compare with",
        )


def filters_option(params: Params) -> _Filters:
    raw = params.options.get("filters", [])
    if not isinstance(raw, list):
        raise ReportError(
            f"option filters={raw!r} is not a list",
            fix='give filters as a list of {"field": ..., "op": ..., "value": ...}',
        )
    filters = _Filters()
    for i, item in enumerate(raw):
        filters.add(i, item)
    return filters


def _funnel_sql(steps: list[str], filters: _Filters, by: str | None) -> str:
    events = "".join(f" AND {c}" for c in filters.event)
    people = (
        " AND e.contact_key IN (SELECT c.contact_key FROM contacts c WHERE "
        + " AND ".join(filters.contact)
        + ")"
        if filters.contact
        else ""
    )
    ctes = [
        f"""s1 AS (
            SELECT e.contact_key, min(e.occurred_at) AS t1 FROM events e
            WHERE e.name = $step1 AND e.occurred_at >= $since AND e.occurred_at < $until
                {events}{people}
            GROUP BY e.contact_key
        )"""
    ]
    for k in range(2, len(steps) + 1):
        # Each step carries the anchor (for the window) and the previous step's time.
        carried = "p.contact_key, p.t1" + (f", p.t{k - 1}" if k > 2 else "")
        ctes.append(
            f"""s{k} AS (
            SELECT {carried}, min(e.occurred_at) AS t{k}
            FROM s{k - 1} p JOIN events e ON e.contact_key = p.contact_key
            WHERE e.name = $step{k} AND e.occurred_at > p.t{k - 1}
                AND e.occurred_at <= p.t1 + to_microseconds($window)
                AND e.occurred_at >= $since AND e.occurred_at < $until + to_microseconds($window)
                {events}
            GROUP BY {carried}
        )"""
        )
    joins = "".join(
        f" LEFT JOIN s{k} ON s{k}.contact_key = s1.contact_key" for k in range(2, len(steps) + 1)
    )
    counts = ", ".join(f"count(s{k}.t{k})" for k in range(2, len(steps) + 1))
    medians = ", ".join(
        f"median(date_diff('microsecond', s{k}.t{k - 1}, s{k}.t{k}) / 1e6)"
        for k in range(2, len(steps) + 1)
    )
    people_join = "" if by is None else "LEFT JOIN contacts c ON c.contact_key = s1.contact_key"
    return f"""
        WITH {", ".join(ctes)}
        SELECT {group_sql(by)} AS g, count(*), {counts}, {medians}
        FROM s1{joins} {people_join}
        GROUP BY ALL ORDER BY g
    """


def _rows(steps: list[str], counts: list[int], medians: list[Any]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for k, event in enumerate(steps):
        n = counts[k]
        rows.append(
            (
                k + 1,
                event,
                n,
                rate(n, counts[0]),
                rate(n, counts[k - 1]) if k else None,
                rounded(medians[k - 1], 1) if k else None,
            )
        )
    return rows


def conversion_report(
    con: duckdb.DuckDBPyConnection, params: Params, *, as_of: datetime | None = None
) -> Report:
    """An ordered conversion funnel over ``options["steps"]`` (see the module docstring).

    Raises:
        ReportError: steps, window_days, filters or by that cannot be used, naming which.
    """
    steps = steps_option(params)
    window = window_option(params)
    filters = filters_option(params)
    by = check_by(params)
    since, until = period(params)
    binds: dict[str, Any] = {
        "since": since,
        "until": until,
        "window": window,
        **{f"step{k}": s for k, s in enumerate(steps, start=1)},
        **filters.binds,
    }
    n = len(steps)
    total = con.execute(_funnel_sql(steps, filters, None), binds).fetchall()
    if total:
        counts, medians = list(total[0][1 : n + 1]), list(total[0][n + 1 :])
    else:
        counts, medians = [0] * n, [None] * (n - 1)
    sections = [
        Section("steps", COLUMNS, _rows(steps, counts, medians), "Contacts reaching each step")
    ]
    if by is not None:
        grouped: list[tuple[Any, ...]] = []
        for row in con.execute(_funnel_sql(steps, filters, by), binds).fetchall():
            for r in _rows(steps, list(row[1 : n + 1]), list(row[n + 1 :])):
                grouped.append((row[0], *r))
        sections.append(Section("by", ("group", *COLUMNS), grouped, f"Funnel by {by}"))
    return Report(
        name="conversion",
        title=f"Conversion: {' > '.join(steps)}",
        params=params,
        as_of=as_of,
        sections=sections,
        notes=[f"window: {window / 86_400e6:g} days from each contact's first {steps[0]}"],
    )
