"""``GET /v1/reports/value`` and ``GET /v1/reports/cross-sell``: customer value from the
latest value refresh (``stagecoach value refresh``), as ``stagecoach report value`` and
``stagecoach report cross-sell`` print it: JSON (default), or one section as CSV
(``format=csv&section=...``). Read live from the database; ``as_of`` is the refresh's
time. Admin bearer token required."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from stagecoach.engine.api.auth import ADMIN_RESPONSES, require_admin
from stagecoach.engine.services.analytics import Report, ReportError
from stagecoach.engine.services.analytics.service import pick_section, section_csv, to_plain
from stagecoach.engine.services.value import cross_sell_report, value_report

router = APIRouter(
    prefix="/v1/reports",
    tags=["reports"],
    dependencies=[Depends(require_admin)],
    responses={**ADMIN_RESPONSES, 400: {"description": "An unknown section: the detail says"}},
)

Format = Annotated[str, Query(pattern="^(json|csv)$", description="json, or csv for one section")]
SectionName = Annotated[str | None, Query(description="csv: the section (default the first)")]


async def _answer(
    request: Request, compute: Callable[..., Report], fmt: str, section: str | None
) -> Response:
    report = await run_in_threadpool(compute, request.app.state.db)
    try:
        chosen = pick_section(report, section)
    except ReportError as exc:
        raise HTTPException(400, detail=exc.one_line()) from None
    if fmt == "csv":
        return Response(
            section_csv(chosen or report.sections[0]), media_type="text/csv; charset=utf-8"
        )
    body = report.to_json()
    for s in body["sections"].values():
        s["rows"] = [{k: to_plain(v) for k, v in r.items()} for r in s["rows"]]
    return JSONResponse(body)


@router.get("/value", summary="Customer value: tiers, CLV distribution, model, left out")
async def value(request: Request, format: Format = "json", section: SectionName = None) -> Response:
    """Value tiers (ABC), the CLV distribution, the BG/NBD and Gamma-Gamma parameters and
    model version, the orders left out and why, and the top customers by CLV."""
    return await _answer(request, value_report, format, section)


@router.get("/cross-sell", summary="Cross-sell pairs: support, confidence, lift")
async def cross_sell(
    request: Request, format: Format = "json", section: SectionName = None
) -> Response:
    """Products bought together ("bought X, also bought Y"), strongest lift first."""
    return await _answer(request, cross_sell_report, format, section)
