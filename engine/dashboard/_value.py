"""The customer-value page's data: the latest value refresh's reports, read off the
event loop, and the CLV distribution as rows a ``<meter>`` can draw (no script, no
style: the page works under the dashboard's Content-Security-Policy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from stagecoach.engine.services.analytics import Report
from stagecoach.engine.services.value import contact_value, cross_sell_report, value_report


@dataclass(frozen=True)
class Bucket:
    low: float
    high: float
    customers: int


def reports(db: Engine) -> tuple[Report, Report]:
    """The ``value`` and ``cross-sell`` reports of the latest refresh."""
    return value_report(db), cross_sell_report(db)


def section(report: Report, name: str) -> list[dict[str, Any]]:
    return next((s.records() for s in report.sections if s.name == name), [])


def buckets(report: Report) -> tuple[list[Bucket], int]:
    """The CLV distribution's buckets, and the largest count (the meters' maximum)."""
    rows = [
        Bucket(float(r["clv_from"]), float(r["clv_to"]), int(r["customers"]))
        for r in section(report, "clv_distribution")
    ]
    return rows, max((b.customers for b in rows), default=0)


def of_contact(db: Engine, contact_id: str) -> dict[str, Any] | None:
    """The contact's value traits (with ``value_as_of`` and ``value_model``), or None."""
    return contact_value(db, contact_id)
