"""What every report returns, whatever asked for it: the CLI, the JSON API, the dashboard.

A report is a few named tables (``Section``), the parameters it was computed with, and
``as_of``: the time of the analytics store's last sync, so every reader can say how fresh
the numbers are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from stagecoach.engine.domain.errors import StagecoachError


class ReportError(StagecoachError):
    """A report asked for with a parameter it cannot take."""


@dataclass(frozen=True)
class Section:
    """One table of a report: column names and rows of plain values."""

    name: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    title: str = ""

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


@dataclass(frozen=True)
class Params:
    """The parameters every report takes. Times are UTC; ``until`` is exclusive."""

    since: datetime
    until: datetime
    by: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """Report-specific options: conversion steps and window, path goal, filters."""
    include_rehearsals: bool = False
    """Count journey rehearsals' contacts too; by default every report leaves them out."""

    @classmethod
    def last(cls, days: int = 30, *, now: datetime | None = None, **kw: Any) -> Params:
        end = now or datetime.now(UTC)
        return cls(since=end - timedelta(days=days), until=end, **kw)


@dataclass(frozen=True)
class Report:
    name: str
    title: str
    params: Params
    as_of: datetime | None
    """When the analytics store last synced from the database; None if never."""
    sections: list[Section]
    notes: list[str] = field(default_factory=list)

    def section(self, name: str) -> Section:
        for s in self.sections:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "report": self.name,
            "title": self.title,
            "since": self.params.since.isoformat(),
            "until": self.params.until.isoformat(),
            "by": self.params.by,
            "options": self.params.options,
            "include_rehearsals": self.params.include_rehearsals,
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "notes": self.notes,
            "sections": {
                s.name: {"title": s.title, "columns": list(s.columns), "rows": s.records()}
                for s in self.sections
            },
        }
