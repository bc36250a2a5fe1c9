"""Analytics: the pipeline's width and length, conversion funnels, paths, channel value,
journey performance, engagement and NPS, computed in DuckDB over a replica of the read
model (``AnalyticsStore``). The CLI (``stagecoach report``), the JSON API
(``/v1/reports/...``) and the dashboard all call ``run_report``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from stagecoach.engine.services.analytics._rehearsals import without_rehearsals
from stagecoach.engine.services.analytics._report import Params, Report, ReportError, Section

REPORTS: dict[str, tuple[str, str, str]] = {
    "funnel": (
        "stagecoach.engine.services.analytics.pipeline",
        "pipeline_report",
        "Pipeline funnel: width, conversion, length",
    ),
    "conversion": (
        "stagecoach.engine.services.analytics.conversion",
        "conversion_report",
        "Conversion funnel over event steps",
    ),
    "paths": (
        "stagecoach.engine.services.analytics.paths",
        "paths_report",
        "Top event paths to a goal, and drop-off",
    ),
    "channels": (
        "stagecoach.engine.services.analytics.channels",
        "channels_report",
        "Channel and touchpoint value",
    ),
    "journeys": (
        "stagecoach.engine.services.analytics.journeys",
        "journeys_report",
        "Journey and content performance",
    ),
    "engagement": (
        "stagecoach.engine.services.analytics.engagement",
        "engagement_report",
        "Engagement: stickiness, activity, value",
    ),
    "nps": (
        "stagecoach.engine.services.analytics.nps",
        "nps_report",
        "NPS by period and touchpoint; referral tree",
    ),
    "forecast": (
        "stagecoach.engine.services.prediction.forecast",
        "forecast_report",
        "Pipeline forecast: new customers and revenue per week, with intervals",
    ),
}
"""Report name -> (module, function, one-line description)."""


def report_function(name: str) -> Callable[..., Report]:
    """The function computing report ``name``.

    Raises:
        ReportError: no report has that name.
    """
    try:
        module, function, _ = REPORTS[name]
    except KeyError:
        raise ReportError(
            f"unknown report {name!r}", fix=f"use one of: {', '.join(REPORTS)}"
        ) from None
    fn: Callable[..., Report] = getattr(importlib.import_module(module), function)
    return fn


def run_report(name: str, con: Any, params: Params, *, as_of: datetime | None = None) -> Report:
    """Compute report ``name`` on a DuckDB connection to the analytics store.

    Journey rehearsals' contacts are left out of every table the report reads, unless
    ``params.include_rehearsals``; the report then notes how many were left out."""
    fn = report_function(name)
    if params.include_rehearsals:
        return fn(con, params, as_of=as_of)
    with without_rehearsals(con) as left_out:
        report = fn(con, params, as_of=as_of)
    if left_out:
        report.notes.append(
            f"{left_out} rehearsal contact{'s' if left_out != 1 else ''} left out "
            "(include them with --include-rehearsals, or include_rehearsals=true)"
        )
    return report


__all__ = ["REPORTS", "Params", "Report", "ReportError", "Section", "report_function", "run_report"]
