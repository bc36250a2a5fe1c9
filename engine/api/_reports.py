"""What every report route shares: the ``format`` and ``section`` query parameters and
the answer, JSON or one section as CSV."""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Query
from fastapi.responses import JSONResponse, Response

from stagecoach.engine.services.analytics import Report, ReportError
from stagecoach.engine.services.analytics.service import pick_section, section_csv, to_plain

Format = Annotated[str, Query(pattern="^(json|csv)$", description="json, or csv for one section")]
SectionName = Annotated[str | None, Query(description="csv: the section (default the first)")]


def report_response(report: Report, fmt: str, section: str | None) -> Response:
    """A report as every report route answers it: JSON, or one section as CSV (the first
    by default); an unknown section is a 400 naming the ones there are."""
    try:
        chosen = pick_section(report, section)
    except ReportError as exc:
        raise HTTPException(400, detail=exc.one_line()) from None
    if fmt == "csv":
        body_csv = section_csv(chosen or report.sections[0])
        return Response(body_csv, media_type="text/csv; charset=utf-8")
    body = report.to_json()
    for s in body["sections"].values():
        s["rows"] = [{k: to_plain(v) for k, v in r.items()} for r in s["rows"]]
    return JSONResponse(body)
