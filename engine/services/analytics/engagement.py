"""Engagement per contact and per segment: how often contacts visit, how long they stay,
how much they buy.

Definitions (all over ``[since, until)``):

- **visit** (session): a contact's run of ``page.viewed`` events with no gap longer than
  30 minutes. Page views carrying ``properties.session_id`` are grouped by that id
  instead, whatever their gaps (the tracking snippet knows best).
- **visits_per_contact**: visits / contacts of the segment, so contacts who never visited
  weigh it down: it measures the segment, not only its visitors (``visitors`` counts
  those with a visit).
- **median_days_between_visits**: the median time from one visit's start to the same
  contact's next visit's start, in days, over every such gap in the segment; none when no
  contact visited twice.
- **avg_session_minutes**: the mean time from a visit's first page view to its last (a
  one-page visit lasts 0 minutes); **pages_per_visit**: page views / visits.
- **purchasers / purchases / revenue**: contacts with an ``order.paid``, those events, and
  the sum of their ``properties.amount`` (else ``properties.revenue``) as a number,
  currencies not converted.
- **segment** (``params.by``): the contact's current ``stage`` (default), or its
  acquisition ``source``, ``channel`` or ``campaign``; no value is ``(none)``. The
  contacts of a segment are those created before ``until`` plus any with activity in the
  period. (A contact's grade lives in its workflow and on hand-offs, not on the contact
  row the analytics store copies, so there is no ``grade`` segment.)

The ``contacts`` section lists the top 50 contacts by revenue, then visits, with the same
measures.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import duckdb

from stagecoach.engine.services.analytics._report import Params, Report, Section
from stagecoach.engine.services.analytics._stats import choice, period, rate

SESSION_TIMEOUT = timedelta(minutes=30)
"""Inactivity that ends a visit."""

TOP_CONTACTS = 50
"""Contacts listed in the ``contacts`` section."""

SEGMENTS = {
    "stage": "stage",
    "source": "acquired_source",
    "channel": "acquired_channel",
    "campaign": "acquired_campaign",
}
"""``params.by`` -> the contacts column segmented on."""

_MEASURES = """
WITH views AS (
    SELECT
        ev.contact_id,
        ev.occurred_at AS seen_at,
        nullif(ev.properties ->> 'session_id', '') AS session_id
    FROM events AS ev
    WHERE ev.name = 'page.viewed' AND ev.occurred_at >= $since AND ev.occurred_at < $until
),
breaks AS (
    SELECT
        v.*,
        CASE
            WHEN v.session_id IS NOT NULL THEN 0
            WHEN lag(v.seen_at) OVER by_time IS NULL THEN 1
            WHEN v.seen_at - lag(v.seen_at) OVER by_time > $timeout THEN 1
            ELSE 0
        END AS starts
    FROM views AS v
    WINDOW by_time AS (PARTITION BY v.contact_id, v.session_id IS NULL ORDER BY v.seen_at)
),
keyed AS (
    SELECT
        b.contact_id,
        b.seen_at,
        coalesce(
            'id:' || b.session_id,
            'gap:' || sum(b.starts) OVER (
                PARTITION BY b.contact_id, b.session_id IS NULL
                ORDER BY b.seen_at ROWS UNBOUNDED PRECEDING
            )
        ) AS session
    FROM breaks AS b
),
sessions AS (
    SELECT
        k.contact_id,
        min(k.seen_at) AS started,
        epoch(max(k.seen_at) - min(k.seen_at)) / 60.0 AS minutes,
        count(*) AS pages
    FROM keyed AS k
    GROUP BY k.contact_id, k.session
),
visits AS (
    SELECT
        s.*,
        epoch(s.started - lag(s.started) OVER (PARTITION BY s.contact_id ORDER BY s.started))
            / 86400.0 AS gap_days
    FROM sessions AS s
),
visitors AS (
    SELECT
        v.contact_id,
        count(*) AS visits,
        sum(v.pages) AS pages,
        sum(v.minutes) AS minutes,
        median(v.gap_days) AS median_gap_days
    FROM visits AS v
    GROUP BY v.contact_id
),
buyers AS (
    SELECT
        ev.contact_id,
        count(*) AS purchases,
        sum(coalesce(
            try_cast(ev.properties ->> 'amount' AS DOUBLE),
            try_cast(ev.properties ->> 'revenue' AS DOUBLE),
            0
        )) AS revenue
    FROM events AS ev
    WHERE ev.name = 'order.paid' AND ev.occurred_at >= $since AND ev.occurred_at < $until
    GROUP BY ev.contact_id
),
people AS (
    SELECT
        c.id,
        coalesce(c.{column}, '(none)') AS grp,
        coalesce(vs.visits, 0) AS visits,
        coalesce(vs.pages, 0) AS pages,
        coalesce(vs.minutes, 0) AS minutes,
        vs.median_gap_days,
        coalesce(b.purchases, 0) AS purchases,
        coalesce(b.revenue, 0) AS revenue
    FROM contacts AS c
    LEFT JOIN visitors AS vs ON vs.contact_id = c.id
    LEFT JOIN buyers AS b ON b.contact_id = c.id
    WHERE c.created_at < $until OR vs.contact_id IS NOT NULL OR b.contact_id IS NOT NULL
)
"""

_SEGMENTS = """,
gaps AS (
    SELECT p.grp, median(v.gap_days) AS median_gap_days
    FROM visits AS v
    JOIN people AS p ON p.id = v.contact_id
    GROUP BY p.grp
)
SELECT
    p.grp,
    count(*) AS contacts,
    count(*) FILTER (WHERE p.visits > 0) AS visitors,
    sum(p.visits) AS visits,
    any_value(g.median_gap_days) AS median_gap_days,
    sum(p.minutes) AS minutes,
    sum(p.pages) AS pages,
    count(*) FILTER (WHERE p.purchases > 0) AS purchasers,
    sum(p.purchases) AS purchases,
    sum(p.revenue) AS revenue
FROM people AS p
LEFT JOIN gaps AS g ON g.grp = p.grp
GROUP BY p.grp
ORDER BY contacts DESC, p.grp
"""

_CONTACTS = """
SELECT p.id, p.grp, p.visits, p.median_gap_days, p.minutes, p.pages, p.purchases, p.revenue
FROM people AS p
WHERE p.visits > 0 OR p.purchases > 0
ORDER BY p.revenue DESC, p.visits DESC, p.id
LIMIT $top
"""


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def engagement_report(
    con: duckdb.DuckDBPyConnection, params: Params, *, as_of: datetime | None = None
) -> Report:
    """Visits, their length and spacing, pages, purchases and revenue, per segment and for
    the top contacts. Definitions are in the module docstring.

    Sections:
        segments: group, contacts, visitors, visits_per_contact,
            median_days_between_visits, avg_session_minutes, pages_per_visit, purchasers,
            purchases, revenue.
        contacts: contact_id, group, visits, median_days_between_visits,
            avg_session_minutes, pages_per_visit, purchases, revenue.

    Raises:
        ReportError: ``params.by`` is not ``stage``, ``source``, ``channel`` or
            ``campaign``; or the period is empty.
    """
    by = choice("by", params.by or "stage", SEGMENTS)
    since, until = period(params)
    bounds: dict[str, Any] = {"since": since, "until": until, "timeout": SESSION_TIMEOUT}
    # Only a column name of SEGMENTS is interpolated; values are bound.
    measures = _MEASURES.format(column=SEGMENTS[by])
    segments = [
        (
            group,
            contacts,
            visitors,
            rate(visits, contacts, 2),
            _round(median_gap, 2),
            rate(minutes, visits, 1),
            rate(pages, visits, 2),
            purchasers,
            purchases,
            round(revenue, 2),
        )
        for (
            group,
            contacts,
            visitors,
            visits,
            median_gap,
            minutes,
            pages,
            purchasers,
            purchases,
            revenue,
        ) in con.execute(measures + _SEGMENTS, bounds).fetchall()
    ]
    top = [
        (
            contact_id,
            group,
            visits,
            _round(median_gap, 2),
            rate(minutes, visits, 1),
            rate(pages, visits, 2),
            purchases,
            round(revenue, 2),
        )
        for contact_id, group, visits, median_gap, minutes, pages, purchases, revenue in (
            con.execute(measures + _CONTACTS, {**bounds, "top": TOP_CONTACTS}).fetchall()
        )
    ]
    return Report(
        name="engagement",
        title="Engagement metrics per contact and segment",
        params=params,
        as_of=as_of,
        sections=[
            Section(
                "segments",
                (
                    "group",
                    "contacts",
                    "visitors",
                    "visits_per_contact",
                    "median_days_between_visits",
                    "avg_session_minutes",
                    "pages_per_visit",
                    "purchasers",
                    "purchases",
                    "revenue",
                ),
                segments,
                title=f"Engagement by {by}",
            ),
            Section(
                "contacts",
                (
                    "contact_id",
                    "group",
                    "visits",
                    "median_days_between_visits",
                    "avg_session_minutes",
                    "pages_per_visit",
                    "purchases",
                    "revenue",
                ),
                top,
                title=f"Top {TOP_CONTACTS} contacts by revenue, then visits",
            ),
        ],
    )
