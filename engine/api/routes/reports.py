"""``GET /v1/reports/<name>``: the analytics reports as JSON (or one section as CSV).

The same reports, parameters and spelling as ``stagecoach report`` (both go through
``stagecoach.engine.services.analytics.service``): ``since``/``until`` (``2026-11-01``, an ISO
time, or
``30d``/``12h``/``2w`` ago; default the last 30 days), ``by``, report options, and
``format=json`` (default) or ``csv`` with ``section``, and ``include_rehearsals=true`` to
count journey rehearsals' contacts (left out by default). Admin bearer token required.
A bad parameter is **400** naming it and the fix; nothing is computed.

Numbers come from the analytics store, the dashboard's cache: copied from the database in
the background when the copy is older than ``STAGECOACH_DASHBOARD_CACHE_SECONDS`` (a
never-copied store is copied first), each report computed once per copy; ``as_of`` in
every answer says when the copy was taken.
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
    Numbers,
    make_params,
    text_options,
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

Since = Annotated[
    str | None,
    Query(description="Start: 2026-11-01, an ISO time, or 30d / 12h / 2w ago (default 30d)"),
]
Until = Annotated[str | None, Query(description="End, exclusive (default now)")]
IncludeRehearsals = Annotated[
    bool, Query(description="Count journey rehearsals' contacts too (left out by default)")
]


def _reports(request: Request) -> tuple[Numbers, Any]:
    return request.app.state.reports, request.app.state.db


def _answer(
    reports: tuple[Numbers, Any],
    name: str,
    *,
    since: str | None,
    until: str | None,
    by: str | None,
    fmt: str,
    section: str | None,
    include_rehearsals: bool,
    **options: Any,
) -> Response:
    try:
        params = make_params(
            since=since,
            until=until,
            by=by,
            options=text_options(**options),
            include_rehearsals=include_rehearsals,
        )
        numbers, database = reports
        numbers.freshness(database)  # copies again in the background when due
        [report] = numbers.reports([(name, params)])
    except ReportError as exc:
        raise HTTPException(400, detail=exc.one_line()) from None
    except DatabaseError as exc:
        raise HTTPException(503, detail=exc.one_line()) from None
    return report_response(report, fmt, section)


ReportsDep = Annotated[tuple[Numbers, Any], Depends(_reports)]


@router.get("/funnel", summary=REPORTS["funnel"][2])
def funnel(
    *,
    reports: ReportsDep,
    since: Since = None,
    until: Until = None,
    by: Annotated[str | None, Query(description="cohort, source or channel")] = None,
    stages: Annotated[str | None, Query(description="Stage order, comma-separated")] = None,
    format: Format = "json",
    section: SectionName = None,
    include_rehearsals: IncludeRehearsals = False,
) -> Response:
    """Width (contacts in each stage now, entries in the period), stage-to-stage
    conversion, length (median and p90 hours in stage, time to customer), flows
    including detours, and time-in-stage distributions."""
    return _answer(
        reports,
        "funnel",
        since=since,
        until=until,
        by=by,
        fmt=format,
        section=section,
        include_rehearsals=include_rehearsals,
        stages=stages,
    )


@router.get("/conversion", summary=REPORTS["conversion"][2])
def conversion(
    *,
    reports: ReportsDep,
    steps: Annotated[str, Query(description="Event names in order, comma-separated (2-10)")],
    since: Since = None,
    until: Until = None,
    by: Annotated[str | None, Query(description="cohort, source or channel")] = None,
    window_days: Annotated[int | None, Query(description="Window from step 1 (default 14)")] = None,
    where: Annotated[
        list[str] | None,
        Query(description="Filters such as traits.plan=pro, properties.amount>100"),
    ] = None,
    format: Format = "json",
    section: SectionName = None,
    include_rehearsals: IncludeRehearsals = False,
) -> Response:
    """Contacts who did the steps in order within the window from their first step 1."""
    return _answer(
        reports,
        "conversion",
        since=since,
        until=until,
        by=by,
        fmt=format,
        section=section,
        include_rehearsals=include_rehearsals,
        steps=steps,
        window_days=window_days,
        where=where or (),
    )


@router.get("/paths", summary=REPORTS["paths"][2])
def paths(
    *,
    reports: ReportsDep,
    since: Since = None,
    until: Until = None,
    goal: Annotated[str | None, Query(description="The goal event (default order.paid)")] = None,
    length: Annotated[int | None, Query(description="Events before the goal (default 4)")] = None,
    top: Annotated[int | None, Query(description="How many paths (default 20)")] = None,
    format: Format = "json",
    section: SectionName = None,
    include_rehearsals: IncludeRehearsals = False,
) -> Response:
    """The most common event paths to the goal, and where the others dropped off."""
    return _answer(
        reports,
        "paths",
        since=since,
        until=until,
        by=None,
        fmt=format,
        section=section,
        include_rehearsals=include_rehearsals,
        goal=goal,
        length=length,
        top=top,
    )


@router.get("/channels", summary=REPORTS["channels"][2])
def channels(
    *,
    reports: ReportsDep,
    since: Since = None,
    until: Until = None,
    by: Annotated[str | None, Query(description="source, channel or campaign")] = None,
    format: Format = "json",
    section: SectionName = None,
    include_rehearsals: IncludeRehearsals = False,
) -> Response:
    """Which acquisition sources, channels and touchpoints produce customers and
    promoters, at what conversion rate and time to customer."""
    return _answer(
        reports,
        "channels",
        since=since,
        until=until,
        by=by,
        fmt=format,
        section=section,
        include_rehearsals=include_rehearsals,
    )


@router.get("/journeys", summary=REPORTS["journeys"][2])
def journeys(
    *,
    reports: ReportsDep,
    since: Since = None,
    until: Until = None,
    journey: Annotated[str | None, Query(description="Only this journey")] = None,
    metric: Annotated[
        str | None, Query(description="goal (default), clicked, or an event name")
    ] = None,
    window_days: Annotated[int | None, Query(description="Event-metric window (14)")] = None,
    format: Format = "json",
    section: SectionName = None,
    include_rehearsals: IncludeRehearsals = False,
) -> Response:
    """Per journey version and step: sent, delivered, opened, clicked, converted,
    exited; holdout lift and split winners with their significance; where contacts went."""
    return _answer(
        reports,
        "journeys",
        since=since,
        until=until,
        by=None,
        fmt=format,
        section=section,
        include_rehearsals=include_rehearsals,
        journey=journey,
        metric=metric,
        window_days=window_days,
    )


@router.get("/engagement", summary=REPORTS["engagement"][2])
def engagement(
    *,
    reports: ReportsDep,
    since: Since = None,
    until: Until = None,
    by: Annotated[str | None, Query(description="stage, source, channel or campaign")] = None,
    format: Format = "json",
    section: SectionName = None,
    include_rehearsals: IncludeRehearsals = False,
) -> Response:
    """Stickiness (visits and their interval), activity (session length, pages per
    visit) and value (purchases, revenue), per segment and for the top contacts."""
    return _answer(
        reports,
        "engagement",
        since=since,
        until=until,
        by=by,
        fmt=format,
        section=section,
        include_rehearsals=include_rehearsals,
    )


@router.get("/nps", summary=REPORTS["nps"][2])
def nps(
    *,
    reports: ReportsDep,
    since: Since = None,
    until: Until = None,
    period: Annotated[str | None, Query(description="month (default) or week")] = None,
    format: Format = "json",
    section: SectionName = None,
    include_rehearsals: IncludeRehearsals = False,
) -> Response:
    """NPS by period and by touchpoint, and the referral tree's size and conversions."""
    return _answer(
        reports,
        "nps",
        since=since,
        until=until,
        by=None,
        fmt=format,
        section=section,
        include_rehearsals=include_rehearsals,
        period=period,
    )
