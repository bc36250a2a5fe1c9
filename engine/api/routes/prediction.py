"""``GET /v1/reports/forecast`` and ``GET /v1/reports/propensity``: the pipeline forecast
and the propensity model's report, as JSON (or one section as CSV). Admin bearer token.

The forecast is an analytics report like the others (the same cache of the analytics
store, computed once per copy); ``until`` is its origin (default now: an earlier date
forecasts from what was known then, with the actuals beside it). The propensity report
reads the database, where model versions and scores are kept.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from stagecoach.engine.api._reports import Format, SectionName, report_response
from stagecoach.engine.api.auth import ADMIN_RESPONSES, require_admin
from stagecoach.engine.domain.errors import DatabaseError
from stagecoach.engine.services.analytics import REPORTS, ReportError
from stagecoach.engine.services.analytics.service import (
    make_params,
)

router = APIRouter(
    prefix="/v1/reports",
    tags=["reports"],
    dependencies=[Depends(require_admin)],
    responses={
        **ADMIN_RESPONSES,
        400: {"description": "A parameter is not valid: the detail names it and the fix"},
    },
)


@router.get("/forecast", summary=REPORTS["forecast"][2])
def forecast(
    request: Request,
    *,
    until: Annotated[
        str | None, Query(description="The origin: 2026-11-01, an ISO time or 4w ago (default now)")
    ] = None,
    weeks: Annotated[int, Query(ge=1, le=26, description="Weeks ahead")] = 8,
    stages: Annotated[str | None, Query(description="Stage order, comma-separated")] = None,
    format: Format = "json",
    section: SectionName = None,
) -> Response:
    """New customers and first-order revenue per week ahead, with 80% intervals, the
    actuals of weeks already over and of the weeks before, and the stage counts,
    conversion and stays the forecast is built from."""
    options: dict[str, Any] = {"weeks": weeks}
    if stages:
        options["stages"] = [s.strip() for s in stages.split(",") if s.strip()]
    try:
        params = make_params(since=None, until=until, by=None, options=options)
        numbers, database = request.app.state.reports, request.app.state.db
        numbers.freshness(database)
        [report] = numbers.reports([("forecast", params)])
    except ReportError as exc:
        raise HTTPException(400, detail=exc.one_line()) from None
    except DatabaseError as exc:
        raise HTTPException(503, detail=exc.one_line()) from None
    return report_response(report, format, section)


@router.get("/propensity", summary="Conversion propensity: versions, calibration, drivers")
def propensity(
    request: Request, *, format: Format = "json", section: SectionName = None
) -> Response:
    """The propensity model's versions (newest first, with held-out AUC and calibration
    error), the newest one's calibration table, its strongest features and how the current
    scores spread."""
    from stagecoach.engine.services.prediction.report import propensity_report

    return report_response(propensity_report(request.app.state.db), format, section)
