"""Channel and touchpoint value: which acquisition sources and touchpoints make customers.

Definitions:

- **cohort**: contacts created in ``[since, until)``, grouped by their acquisition
  (``params.by``: ``source`` (default), ``channel`` or ``campaign``, from the source,
  channel and UTM campaign of the contact's first stored event); no value is ``(none)``.
- **customer**: a contact with a stage transition to ``customer``, at any time (the
  analytics store holds no pipeline definition, so the stage is named here).
  ``median_days_to_customer`` runs from the contact's creation to its first such
  transition (never negative: an imported customer can predate its row).
- **promoter**: a contact whose latest ``nps.answered`` score is a promoter's in
  ``stagecoach.engine.domain.nps.classify``.
- **touchpoint**: any event name a contact produced (identify, alias and group calls are
  not behaviour). A touch counts when it happened in ``[since, until)`` and before the
  contact first became a customer; ``customers`` are the touched contacts who became
  customers afterwards, whenever.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import duckdb

from stagecoach.engine.services.analytics._report import Params, Report, Section
from stagecoach.engine.services.analytics._stats import (
    NPS_CATEGORIES_SQL,
    choice,
    period,
    rate,
)

CUSTOMER_STAGE = "customer"
"""The stage whose first entry makes a contact a customer."""

GROUPINGS = {
    "source": "acquired_source",
    "channel": "acquired_channel",
    "campaign": "acquired_campaign",
}
"""``params.by`` -> the contacts column grouped on."""

NOT_TOUCHPOINTS = ("identify", "alias", "group")
"""Event kinds that record who someone is, not what they did."""

_CUSTOMERS = """
customers AS (
    SELECT s.contact_id, min(s."at") AS customer_at
    FROM stage_transitions AS s
    WHERE s.to_stage = $customer_stage
    GROUP BY s.contact_id
)"""
"""Each contact's first entry into the customer stage (a CTE both queries share)."""

_VALUE = """
WITH cohort AS (
    SELECT c.id, c.created_at, coalesce(c.{column}, '(none)') AS grp
    FROM contacts AS c
    WHERE c.created_at >= $since AND c.created_at < $until
),
{customers},
latest_answer AS (
    SELECT ev.contact_id, try_cast(ev.properties ->> 'score' AS DOUBLE) AS score
    FROM events AS ev
    WHERE ev.name = 'nps.answered'
    QUALIFY row_number() OVER (
        PARTITION BY ev.contact_id ORDER BY ev.occurred_at DESC, ev.id DESC
    ) = 1
),
promoters AS (
    SELECT a.contact_id
    FROM latest_answer AS a
    JOIN {categories} ON nps_categories.score = a.score
    WHERE nps_categories.category = 'promoter'
)
SELECT
    cohort.grp,
    count(*) AS contacts,
    count(cu.contact_id) AS customers,
    count(p.contact_id) AS promoters,
    -- greatest() skips NULLs: without the filter a non-customer would count as 0 days.
    median(greatest(epoch(cu.customer_at - cohort.created_at), 0) / 86400.0)
        FILTER (WHERE cu.customer_at IS NOT NULL) AS median_days_to_customer
FROM cohort
LEFT JOIN customers AS cu ON cu.contact_id = cohort.id
LEFT JOIN promoters AS p ON p.contact_id = cohort.id
GROUP BY cohort.grp
ORDER BY contacts DESC, cohort.grp
"""

_TOUCHPOINTS = """
WITH {customers}
SELECT
    ev.name,
    count(DISTINCT ev.contact_id) AS contacts,
    count(DISTINCT ev.contact_id) FILTER (WHERE cu.customer_at IS NOT NULL) AS customers
FROM events AS ev
LEFT JOIN customers AS cu ON cu.contact_id = ev.contact_id
WHERE ev.occurred_at >= $since AND ev.occurred_at < $until
  AND NOT list_contains($not_touchpoints, ev.kind)
  AND (cu.customer_at IS NULL OR ev.occurred_at < cu.customer_at)
GROUP BY ev.name
ORDER BY customers DESC, contacts DESC, ev.name
"""


def channels_report(
    con: duckdb.DuckDBPyConnection, params: Params, *, as_of: datetime | None = None
) -> Report:
    """Which acquisition sources, channels or campaigns, and which touchpoints, produce
    customers and promoters.

    Sections:
        value: group, contacts, customers, promoters, conversion_rate,
            median_days_to_customer.
        touchpoints: touchpoint, contacts, customers, conversion_rate.

    Raises:
        ReportError: ``params.by`` is not ``source``, ``channel`` or ``campaign``; or the
            period is empty.
    """
    by = choice("by", params.by or "source", GROUPINGS)
    since, until = period(params)
    bounds: dict[str, Any] = {"since": since, "until": until, "customer_stage": CUSTOMER_STAGE}
    touch_params = {**bounds, "not_touchpoints": list(NOT_TOUCHPOINTS)}
    # Only constants are interpolated (a column of GROUPINGS, fixed SQL); values are bound.
    value_sql = _VALUE.format(
        column=GROUPINGS[by], customers=_CUSTOMERS, categories=NPS_CATEGORIES_SQL
    )
    touch_sql = _TOUCHPOINTS.format(customers=_CUSTOMERS)
    value = [
        (
            group,
            contacts,
            customers,
            promoters,
            rate(customers, contacts),
            None if days is None else round(days, 1),
        )
        for group, contacts, customers, promoters, days in con.execute(value_sql, bounds).fetchall()
    ]
    touchpoints = [
        (name, contacts, customers, rate(customers, contacts))
        for name, contacts, customers in con.execute(touch_sql, touch_params).fetchall()
    ]
    return Report(
        name="channels",
        title="Channel and touchpoint value",
        params=params,
        as_of=as_of,
        sections=[
            Section(
                "value",
                (
                    "group",
                    "contacts",
                    "customers",
                    "promoters",
                    "conversion_rate",
                    "median_days_to_customer",
                ),
                value,
                title=f"Contacts acquired by {by}: customers and promoters they became",
            ),
            Section(
                "touchpoints",
                ("touchpoint", "contacts", "customers", "conversion_rate"),
                touchpoints,
                title="Touchpoints before becoming a customer",
            ),
        ],
    )
