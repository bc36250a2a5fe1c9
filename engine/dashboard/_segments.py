"""The segments pages' data: reading the segment queries off the event loop, and the
inline SVG chart of a segment's last days.

The chart is plain SVG written into the page (no script, no other host): a segment page
must work under the dashboard's Content-Security-Policy and on machines that reach
nothing but the API, and a size line plus entry/exit bars need no charting library.
Each day is one ``<g>`` carrying its numbers as ``data-`` attributes and a ``<title>``
(the tooltip), so a reader, a screen reader and a test all see the same figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from stagecoach.engine.domain.errors import DatabaseError
from stagecoach.engine.services.segments.queries import DayCount, SegmentSummary
from stagecoach.engine.services.storage.db import driver_reason

_T = TypeVar("_T")

DAYS = 30
"""Days of entries, exits and size a segment page shows, today included."""
MEMBERS_PAGE = 50
"""Members listed per page of a segment page."""
CONTACT_ID_LIMIT = 64
"""The longest contact id stored (``segment_members.contact_id``)."""

# Geometry of the chart, in SVG user units (the SVG scales to the page's width).
WIDTH = 720
SIZE_TOP, SIZE_HEIGHT = 24, 110
FLOW_TOP, FLOW_HEIGHT = 170, 90
LEFT, RIGHT = 44, 8
HEIGHT = FLOW_TOP + FLOW_HEIGHT + 24


async def read(call: Callable[..., _T], *args: object, **kwargs: object) -> _T:
    """``call(*args, **kwargs)`` (a query taking the engine) off the event loop; driver
    errors become ``DatabaseError``, which the pages answer with a 503."""
    try:
        return await run_in_threadpool(call, *args, **kwargs)
    except (OperationalError, SADatabaseError) as exc:
        raise DatabaseError(
            f"the database did not answer: {driver_reason(exc)}",
            fix="reload the page; if it persists, check the database",
        ) from exc


def kind(summary: SegmentSummary) -> str:
    return "manual" if summary.manual else "computed"


def definition(summary: SegmentSummary) -> str:
    """The condition as stored (JSON), for the segment page's "definition" panel."""
    condition = summary.spec.to_dict().get("condition")
    if condition is None:
        return ""
    return json.dumps(condition, indent=2, ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class DayMark:
    """One day of the chart: its numbers and where they are drawn."""

    day: str
    entered: int
    exited: int
    size: int
    x: float
    """Centre of the day's column."""
    bar: float
    """Width of the entry and exit bars."""
    size_y: float
    entered_y: float
    entered_h: float
    exited_h: float


@dataclass(frozen=True)
class DayChart:
    width: int
    height: int
    left: int
    right: float
    size_top: int
    size_bottom: int
    flow_top: int
    flow_mid: float
    flow_bottom: int
    size_max: int
    flow_max: int
    marks: list[DayMark]
    first: str
    last: str

    @property
    def size_points(self) -> str:
        return " ".join(f"{m.x:.1f},{m.size_y:.1f}" for m in self.marks)


def day_chart(days: Sequence[DayCount]) -> DayChart:
    """Where each day's size point and entry/exit bars go; scales start at zero."""
    size_max = max((d.size for d in days), default=0) or 1
    flow_max = max((max(d.entered, d.exited) for d in days), default=0) or 1
    span = WIDTH - LEFT - RIGHT
    step = span / max(len(days), 1)
    half = FLOW_HEIGHT / 2
    mid = FLOW_TOP + half
    marks = []
    for n, d in enumerate(days):
        up = half * d.entered / flow_max
        marks.append(
            DayMark(
                day=d.day.isoformat(),
                entered=d.entered,
                exited=d.exited,
                size=d.size,
                x=LEFT + step * (n + 0.5),
                bar=max(step * 0.7, 1.0),
                size_y=SIZE_TOP + SIZE_HEIGHT * (1 - d.size / size_max),
                entered_y=mid - up,
                entered_h=up,
                exited_h=half * d.exited / flow_max,
            )
        )
    return DayChart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        right=WIDTH - RIGHT,
        size_top=SIZE_TOP,
        size_bottom=SIZE_TOP + SIZE_HEIGHT,
        flow_top=FLOW_TOP,
        flow_mid=mid,
        flow_bottom=FLOW_TOP + FLOW_HEIGHT,
        size_max=size_max,
        flow_max=flow_max,
        marks=marks,
        first=days[0].day.isoformat() if days else "",
        last=days[-1].day.isoformat() if days else "",
    )


__all__ = [
    "CONTACT_ID_LIMIT",
    "DAYS",
    "MEMBERS_PAGE",
    "DayChart",
    "DayMark",
    "day_chart",
    "definition",
    "kind",
    "read",
]
