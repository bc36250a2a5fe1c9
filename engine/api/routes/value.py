"""``GET /v1/reports/value`` and ``GET /v1/reports/cross-sell``: customer value from the
latest value refresh (``stagecoach value refresh``), as ``stagecoach report value`` and
``stagecoach report cross-sell`` print it: JSON (default), or one section as CSV
(``format=csv&section=...``). Read live from the database; ``as_of`` is the refresh's
time. Admin bearer token required."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from stagecoach.engine.api._reports import Format, SectionName, report_response
from stagecoach.engine.api.auth import ADMIN_RESPONSES, require_admin
from stagecoach.engine.services.analytics import Report
from stagecoach.engine.services.value import cross_sell_report, value_report

router = APIRouter(
    prefix="/v1/reports",
    tags=["reports"],
    dependencies=[Depends(require_admin)],
    responses={**ADMIN_RESPONSES, 400: {"description": "An unknown section: the detail says"}},
)


async def _answer(
    request: Request, compute: Callable[..., Report], fmt: str, section: str | None
) -> Response:
    report = await run_in_threadpool(compute, request.app.state.db)
    return report_response(report, fmt, section)


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
