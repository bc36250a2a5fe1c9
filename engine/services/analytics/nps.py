"""Net Promoter Score by period and by touchpoint, and what referrals grew into.

Definitions:

- **answer**: an ``nps.answered`` event in ``[since, until)`` whose ``properties.score``
  is a whole number from 0 to 10, categorised by ``stagecoach.engine.domain.nps.classify``;
  ``nps`` is ``stagecoach.engine.domain.nps.NpsResult.score`` (% promoters - % detractors, one
  decimal, none without answers).
- **trend**: per calendar month (``options["period"]``: ``month``, the default, or ISO
  ``week``, starting Monday), a contact's latest answer in the period counts once.
- **by_touchpoint**: per ``properties.touchpoint`` (none is ``(none)``), a contact's latest
  answer per touchpoint and period counts once: answering the onboarding survey and a
  support survey in one month counts under both touchpoints.
- **referrals**: referrals created in the period: distinct ``referrers`` and ``referees``,
  referees ``converted`` (status ``converted``: a first purchase that earned the referral;
  ``ineligible`` and ``returned`` do not count) and ``conversion_rate``. The tree measures
  read every referral created before ``until``, so a tree is not cut at ``since``: a
  tree is rooted at a referrer nobody referred; ``max_depth`` is the longest chain of
  referrals in any tree (1: someone referred someone), ``largest_tree`` the number of
  contacts, root included, in the biggest tree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import duckdb

from stagecoach.engine.domain.nps import NpsResult
from stagecoach.engine.services.analytics._report import Params, Report, Section
from stagecoach.engine.services.analytics._stats import (
    NPS_CATEGORIES_SQL,
    choice,
    period,
    rate,
)

PERIODS = ("month", "week")
"""The periods ``options["period"]`` may name."""

_ANSWERS = """
WITH answers AS (
    SELECT
        ev.id,
        ev.contact_id,
        ev.occurred_at,
        CAST(date_trunc($period, ev.occurred_at) AS DATE) AS period,
        coalesce(nullif(ev.properties ->> 'touchpoint', ''), '(none)') AS touchpoint,
        nps_categories.category
    FROM events AS ev
    JOIN {categories} ON nps_categories.score = try_cast(ev.properties ->> 'score' AS DOUBLE)
    WHERE ev.name = 'nps.answered' AND ev.occurred_at >= $since AND ev.occurred_at < $until
),
latest AS (
    SELECT a.*
    FROM answers AS a
    QUALIFY row_number() OVER (
        PARTITION BY a.contact_id, {once_per} ORDER BY a.occurred_at DESC, a.id DESC
    ) = 1
)
SELECT
    latest.{key},
    count(*) FILTER (WHERE latest.category = 'promoter') AS promoters,
    count(*) FILTER (WHERE latest.category = 'passive') AS passives,
    count(*) FILTER (WHERE latest.category = 'detractor') AS detractors
FROM latest
GROUP BY latest.{key}
ORDER BY latest.{key}
"""

_REFERRALS = """
SELECT
    count(DISTINCT r.referrer_id) AS referrers,
    count(DISTINCT r.referee_id) AS referees,
    count(DISTINCT r.referee_id) FILTER (WHERE r.status = 'converted') AS converted
FROM referrals AS r
WHERE r.created_at >= $since AND r.created_at < $until
"""

_TREES = """
WITH RECURSIVE edges AS (
    SELECT DISTINCT r.referrer_id AS parent, r.referee_id AS child
    FROM referrals AS r
    WHERE r.created_at < $until AND r.referrer_id <> r.referee_id
),
roots AS (
    SELECT DISTINCT e.parent AS root
    FROM edges AS e
    WHERE NOT EXISTS (SELECT 1 FROM edges AS up WHERE up.child = e.parent)
),
tree (root, node, depth, lineage) AS (
    SELECT roots.root, roots.root, 0, [roots.root] FROM roots
    UNION ALL
    -- The lineage guards against a cycle that merged contacts could leave behind.
    SELECT t.root, e.child, t.depth + 1, list_append(t.lineage, e.child)
    FROM tree AS t
    JOIN edges AS e ON e.parent = t.node
    WHERE NOT list_contains(t.lineage, e.child)
),
trees AS (
    SELECT t.root, count(DISTINCT t.node) AS contacts, max(t.depth) AS depth
    FROM tree AS t
    GROUP BY t.root
)
SELECT coalesce(max(trees.depth), 0), coalesce(max(trees.contacts), 0) FROM trees
"""

_SCORE_COLUMNS = ("responses", "promoters", "passives", "detractors", "nps")


def _scored(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Add the response count and the score to (key, promoters, passives, detractors)."""
    out: list[tuple[Any, ...]] = []
    for key, promoters, passives, detractors in rows:
        result = NpsResult(promoters + passives + detractors, promoters, passives, detractors)
        out.append((key, result.answers, promoters, passives, detractors, result.score))
    return out


def _one(con: duckdb.DuckDBPyConnection, sql: str, binds: dict[str, Any]) -> tuple[Any, ...]:
    """The one row of an aggregate query."""
    row = con.execute(sql, binds).fetchone()
    assert row is not None, "an aggregate without GROUP BY returns one row"
    return row


def nps_report(
    con: duckdb.DuckDBPyConnection, params: Params, *, as_of: datetime | None = None
) -> Report:
    """NPS per period and per touchpoint, and the referrals' reach.

    Options: ``period`` (``month``, the default, or ``week``).

    Sections:
        trend: period (the period's first day), responses, promoters, passives,
            detractors, nps.
        by_touchpoint: touchpoint, responses, promoters, passives, detractors, nps.
        referrals: referrers, referees, converted, conversion_rate, max_depth,
            largest_tree (one row).

    Raises:
        ReportError: ``options.period`` is not ``month`` or ``week``; or the period is
            empty.
    """
    unit = choice("options.period", params.options.get("period", "month"), PERIODS)
    since, until = period(params)
    bounds: dict[str, Any] = {"since": since, "until": until}
    answers = {**bounds, "period": unit}

    # Only fixed SQL and column names of this module are interpolated; values are bound.
    def scores(key: str, once_per: str) -> list[tuple[Any, ...]]:
        sql = _ANSWERS.format(categories=NPS_CATEGORIES_SQL, key=key, once_per=once_per)
        return _scored(con.execute(sql, answers).fetchall())

    trend = scores("period", "a.period")
    by_touchpoint = scores("touchpoint", "a.touchpoint, a.period")
    referrers, referees, converted = _one(con, _REFERRALS, bounds)
    max_depth, largest_tree = _one(con, _TREES, {"until": until})
    referrals = [
        (
            referrers,
            referees,
            converted,
            rate(converted, referees),
            max_depth,
            largest_tree,
        )
    ]
    return Report(
        name="nps",
        title="Net Promoter Score and referrals",
        params=params,
        as_of=as_of,
        sections=[
            Section(
                "trend",
                ("period", *_SCORE_COLUMNS),
                trend,
                title=f"NPS per {unit}",
            ),
            Section(
                "by_touchpoint",
                ("touchpoint", *_SCORE_COLUMNS),
                by_touchpoint,
                title="NPS per touchpoint",
            ),
            Section(
                "referrals",
                (
                    "referrers",
                    "referees",
                    "converted",
                    "conversion_rate",
                    "max_depth",
                    "largest_tree",
                ),
                referrals,
                title="Referrals and the trees they grew",
            ),
        ],
    )
