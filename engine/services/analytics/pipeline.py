"""The pipeline report: how wide each stage is, how contacts move on, how long they stay.

Sections (times in ``[since, until)``, UTC):

- ``width``: stage, now (contacts whose current stage it is), entered (transitions into it
  in the period);
- ``conversion``: from_stage, to_stage, entered, converted, rate: of the contacts who
  entered a stage in the period, the share who later (at their first entry or after)
  reached the next stage, or one beyond it: skipping a stage still gets past it;
- ``length``: stage, stays, median_hours, p90_hours: completed stays (entered in the
  period, left by the contact's next transition); plus ``time_to_customer``, from the
  contact's first appearance (created, or first transition if earlier) to its first
  customer transition, for contacts whose first one falls in the period;
- ``flows``: from_stage (``(new)`` for a contact's first stage), to_stage, kind (rule,
  detour, manual), contacts: transitions in the period, for a Sankey diagram;
- ``time_in_stage``: stage, bucket (``<1d``, ``1-3d``, ``3-7d``, ``7-30d``, ``>30d``),
  stays: the completed stays of ``length``, as a distribution;
- ``by`` (with ``params.by``): group, stage, entered, converted, rate, median_hours.

The stage order comes from ``params.options["stages"]`` (default: the bundled
pipeline's seven stages). Stages not in it (``disqualified``) are listed after it.

Per-contact work groups and joins on ``contact_key`` (see
``stagecoach.engine.services.analytics._schema``).
This module also holds what the conversion and paths reports share with it: the ``by``
groupings, integer options and ``time_order`` (``stagecoach.engine.services.analytics._stats`` has
what all reports share).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb

from stagecoach.engine.services.analytics._report import Params, Report, ReportError, Section
from stagecoach.engine.services.analytics._stats import choice, period, rate

STAGES: tuple[str, ...] = (
    "suspect",
    "prospect",
    "lead",
    "opportunity",
    "customer",
    "fan",
    "advocate",
)
"""The bundled pipeline's stages, in order (``stagecoach.workflows.pipeline.DEFAULT``)."""

CUSTOMER = "customer"
BUCKETS: tuple[tuple[str, float], ...] = (
    ("<1d", 24.0),
    ("1-3d", 72.0),
    ("3-7d", 168.0),
    ("7-30d", 720.0),
    (">30d", float("inf")),
)
"""Time-in-stage buckets: label and exclusive upper bound in hours."""

BY_CHOICES: tuple[str, ...] = ("cohort", "source", "channel")
NEW = "(new)"
NONE = "(none)"


# --- shared by the reports --------------------------------------------------------------


def time_order(at: str = "occurred_at", id_: str = "id") -> str:
    """One HUGEINT ordering rows by time, then id (ids below 2**40): ``arg_max(x, key)``
    runs several times faster on it than on the struct ``(at, id)``."""
    return f"(epoch_us({at})::HUGEINT * 1099511627776 + {id_})"


def check_by(params: Params, allowed: Sequence[str] = BY_CHOICES) -> str | None:
    """``params.by`` if this report can group by it, else a ReportError naming the choices."""
    if params.by is None:
        return None
    return choice("by", params.by, allowed)


def group_sql(by: str | None, contacts: str = "c") -> str:
    """The SQL of a contact's group for ``by`` (``contacts`` aliases the contacts table).

    ``cohort`` is the ISO date of the Monday of the week the contact was created;
    ``source``/``channel`` its acquisition (``(none)`` when its first event had none).
    A contact with no row (never copied) is ``(unknown)``.
    """
    if by is None:
        return "NULL"
    expr = {
        "cohort": f"strftime(date_trunc('week', {contacts}.created_at), '%Y-%m-%d')",
        "source": f"coalesce({contacts}.acquired_source, '{NONE}')",
        "channel": f"coalesce({contacts}.acquired_channel, '{NONE}')",
    }[by]
    return f"CASE WHEN {contacts}.id IS NULL THEN '(unknown)' ELSE {expr} END"


def rounded(value: float | None, places: int) -> float | None:
    return None if value is None else round(float(value), places)


def option_int(params: Params, name: str, default: int, low: int, high: int) -> int:
    """An integer option within ``[low, high]``; anything else is a ReportError."""
    value = params.options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ReportError(
            f"option {name}={value!r} is not a whole number from {low} to {high}",
            fix=f"give {name} as a number from {low} to {high} (default {default})",
        )
    return value


# --- the pipeline report ----------------------------------------------------------------


def stages_option(params: Params) -> tuple[str, ...]:
    """The stage order: ``options["stages"]``, at least two distinct names, or STAGES."""
    raw = params.options.get("stages", STAGES)
    if (
        isinstance(raw, str)
        or not isinstance(raw, Sequence)
        or len(raw) < 2
        or not all(isinstance(s, str) and s for s in raw)
        or len(set(raw)) != len(raw)
    ):
        raise ReportError(
            f"option stages={raw!r} is not a list of two or more distinct stage names",
            fix='give stages in pipeline order, e.g. ["suspect", "prospect", "lead"]',
        )
    return tuple(raw)


_STAYS = """
    SELECT contact_key, to_stage AS stage, "at" AS entered_at,
        date_diff('microsecond', "at", lead("at") OVER w) / 3600e6 AS hours
    FROM stage_transitions
    WINDOW w AS (PARTITION BY contact_key ORDER BY "at", id)
"""
"""Every stay: entered by a transition, ended by the contact's next (hours NULL if open)."""


def _contacts_join(by: str | None, alias: str) -> str:
    """The join to ``contacts c`` that ``group_sql(by)`` needs; none without ``by``."""
    if by is None:
        return ""
    return f"LEFT JOIN contacts c ON c.contact_key = {alias}.contact_key"


def _conversion(
    con: duckdb.DuckDBPyConnection, by: str | None, binds: dict[str, Any]
) -> list[tuple[Any, ...]]:
    """(group, k, entered, converted) per stage k (1-based) of the order.

    Per contact and stage: the first entry in the period and the last entry ever; a
    contact converted from stage k if some stage after k was entered at or after its
    first entry into k, that is if the latest entry into any later stage is that late.
    """
    return con.execute(
        f"""
        WITH per_stage AS (
            SELECT contact_key, list_position($stages, to_stage) AS k,
                min("at") FILTER (WHERE "at" >= $since AND "at" < $until) AS entered_at,
                max("at") AS last_at
            FROM stage_transitions
            WHERE list_position($stages, to_stage) > 0
            GROUP BY contact_key, k
        ),
        ahead AS (
            SELECT contact_key, k, entered_at,
                max(last_at) OVER (PARTITION BY contact_key ORDER BY k DESC
                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS later_at
            FROM per_stage
        )
        SELECT {group_sql(by)} AS g, a.k, count(*) AS entered,
            count(*) FILTER (WHERE a.later_at >= a.entered_at) AS converted
        FROM ahead a {_contacts_join(by, "a")}
        WHERE a.entered_at IS NOT NULL
        GROUP BY ALL
        """,
        binds,
    ).fetchall()


def _length(
    con: duckdb.DuckDBPyConnection, by: str | None, binds: dict[str, Any]
) -> list[tuple[Any, ...]]:
    """(group, stage, stays, median hours, p90 hours, *bucket counts) of completed stays."""
    buckets = ", ".join(
        f"count(*) FILTER (WHERE s.hours >= {low} AND s.hours < {high})"
        for low, high in _bucket_bounds()
    )
    return con.execute(
        f"""
        WITH stays AS ({_STAYS})
        SELECT {group_sql(by)} AS g, s.stage, count(*), median(s.hours),
            quantile_cont(s.hours, 0.9), {buckets}
        FROM stays s {_contacts_join(by, "s")}
        WHERE s.entered_at >= $since AND s.entered_at < $until AND s.hours IS NOT NULL
        GROUP BY ALL
        """,
        {k: v for k, v in binds.items() if k != "stages"},
    ).fetchall()


def _bucket_bounds() -> list[tuple[str, str]]:
    bounds: list[tuple[str, str]] = []
    low = "-1e300"
    for _, high in BUCKETS:
        top = "1e300" if high == float("inf") else repr(high)
        bounds.append((low, top))
        low = top
    return bounds


def _order(stages: Sequence[str], seen: Sequence[str | None]) -> list[str]:
    """The stage order, then other stages seen, alphabetically."""
    extra = sorted({s for s in seen if s is not None and s not in stages})
    return [*stages, *extra]


def pipeline_report(
    con: duckdb.DuckDBPyConnection, params: Params, *, as_of: datetime | None = None
) -> Report:
    """The pipeline's width, conversion, stay lengths and flows in ``params``' period.

    Args:
        con: A connection to the analytics store.
        params: The period; ``by`` one of None, "cohort", "source", "channel";
            ``options["stages"]`` the stage order.
        as_of: When the store last synced, passed through to the report.

    Raises:
        ReportError: An unknown ``by``, a bad ``stages`` option, or an empty period.
    """
    stages = stages_option(params)
    by = check_by(params)
    since, until = period(params)
    binds: dict[str, Any] = {"stages": list(stages), "since": since, "until": until}
    plain = {"since": since, "until": until}

    now = dict(
        con.execute(
            "SELECT stage, count(*) FROM contacts WHERE stage IS NOT NULL GROUP BY stage"
        ).fetchall()
    )
    entered = dict(
        con.execute(
            'SELECT to_stage, count(*) FROM stage_transitions WHERE "at" >= $since '
            'AND "at" < $until GROUP BY to_stage',
            plain,
        ).fetchall()
    )
    conversion = _conversion(con, None, binds)
    length = _length(con, None, plain)
    order = _order(stages, [*now, *entered, *(r[1] for r in length)])

    width = Section(
        "width",
        ("stage", "now", "entered"),
        [(s, now.get(s, 0), entered.get(s, 0)) for s in order],
        "Contacts in each stage now, and transitions into it in the period",
    )
    by_k = {r[1]: (r[2], r[3]) for r in conversion}
    conv_rows: list[tuple[Any, ...]] = []
    for k in range(1, len(stages)):
        n, done = by_k.get(k, (0, 0))
        conv_rows.append((stages[k - 1], stages[k], n, done, rate(done, n)))
    stays = {r[1]: r for r in length}
    length_rows: list[tuple[Any, ...]] = [
        (s, stays[s][2], rounded(stays[s][3], 3), rounded(stays[s][4], 3))
        if s in stays
        else (s, 0, None, None)
        for s in order
    ]
    if CUSTOMER in stages:
        length_rows.append(_time_to_customer(con, plain))
    distribution = [
        (s, label, stays[s][5 + i] if s in stays else 0)
        for s in order
        for i, (label, _) in enumerate(BUCKETS)
    ]
    flows = con.execute(
        f"""
        SELECT coalesce(from_stage, '{NEW}'), to_stage, kind, count(DISTINCT contact_key) AS n
        FROM stage_transitions WHERE "at" >= $since AND "at" < $until
        GROUP BY ALL ORDER BY n DESC, 1, 2, 3
        """,
        plain,
    ).fetchall()

    sections = [
        width,
        Section(
            "conversion",
            ("from_stage", "to_stage", "entered", "converted", "rate"),
            conv_rows,
            "Of the contacts who entered a stage in the period, the share who went on",
        ),
        Section(
            "length",
            ("stage", "stays", "median_hours", "p90_hours"),
            length_rows,
            "Completed stays that began in the period, in hours",
        ),
        Section(
            "flows",
            ("from_stage", "to_stage", "kind", "contacts"),
            [tuple(r) for r in flows],
            "Moves between stages in the period, detours included",
        ),
        Section(
            "time_in_stage",
            ("stage", "bucket", "stays"),
            distribution,
            "How long completed stays lasted",
        ),
    ]
    if by is not None:
        sections.append(_by_section(con, by, stages, binds))
    return Report(
        name="funnel",
        title="Pipeline",
        params=params,
        as_of=as_of,
        sections=sections,
    )


def _time_to_customer(con: duckdb.DuckDBPyConnection, binds: dict[str, Any]) -> tuple[Any, ...]:
    row = con.execute(
        f"""
        WITH firsts AS (
            SELECT contact_key, min("at") AS first_at,
                min("at") FILTER (WHERE to_stage = '{CUSTOMER}') AS customer_at
            FROM stage_transitions GROUP BY contact_key
        ),
        spans AS (
            SELECT date_diff('microsecond', least(f.first_at, c.created_at), f.customer_at)
                / 3600e6 AS hours
            FROM firsts f LEFT JOIN contacts c ON c.contact_key = f.contact_key
            WHERE f.customer_at >= $since AND f.customer_at < $until
        )
        SELECT count(*), median(hours), quantile_cont(hours, 0.9) FROM spans
        """,
        binds,
    ).fetchall()[0]
    return ("time_to_customer", row[0], rounded(row[1], 3), rounded(row[2], 3))


def _by_section(
    con: duckdb.DuckDBPyConnection, by: str, stages: Sequence[str], binds: dict[str, Any]
) -> Section:
    conversion = {(r[0], r[1]): (r[2], r[3]) for r in _conversion(con, by, binds)}
    length = {
        (r[0], r[1]): r[3]
        for r in _length(con, by, {k: v for k, v in binds.items() if k != "stages"})
    }
    groups = sorted({g for g, _ in conversion} | {g for g, s in length if s in stages})
    rows: list[tuple[Any, ...]] = []
    for g in groups:
        for k, stage in enumerate(stages, start=1):
            n, done = conversion.get((g, k), (0, 0))
            median = rounded(length.get((g, stage)), 3)
            if not n and median is None:
                continue
            last = k == len(stages)
            rows.append(
                (g, stage, n, None if last else done, None if last else rate(done, n), median)
            )
    return Section(
        "by",
        ("group", "stage", "entered", "converted", "rate", "median_hours"),
        rows,
        f"Conversion and median stay by {by}",
    )
