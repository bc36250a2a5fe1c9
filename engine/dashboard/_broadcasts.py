"""The broadcasts pages' data: each broadcast's report, read live from the database
(``stagecoach.engine.services.broadcasts.metrics``), shaped for the templates.

A broadcast's numbers change batch by batch while it sends, so these pages read the
database on every load, never the analytics store's periodic copy; a page showing a
broadcast still scheduled or sending reloads itself (``REFRESH_SECONDS``) with a plain
``<meta http-equiv="refresh">``: no script, so it works under the dashboard's
Content-Security-Policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from stagecoach.engine.services.broadcasts.metrics import (
    BroadcastReport,
    broadcast_report,
    broadcast_reports,
)
from stagecoach.engine.services.broadcasts.store import get_row

REFRESH_SECONDS = 10
"""How often a page showing a broadcast that is scheduled or sending reloads."""
LIVE = ("scheduled", "running")
ENGAGEMENT = ("delivered", "opened", "clicked", "unsubscribed", "bounced", "complained")


@dataclass(frozen=True)
class Progress:
    """Recipients settled (sent, held, failed, skipped, cancelled) out of the audience."""

    done: int
    audience: int

    @property
    def percent(self) -> float | None:
        """None before the audience is fixed (a draft, or before the send time)."""
        if not self.audience:
            return None
        return min(100.0, 100.0 * self.done / self.audience)


def progress(report: BroadcastReport) -> Progress:
    return Progress(done=report.done, audience=report.audience)


def span(seconds: float | None) -> str:
    """A stored duration (seconds) as a reader says it: ``7 days``, ``4 hours``, ``90 s``."""
    if seconds is None:
        return "–"
    total = int(seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if total >= size and total % size == 0:
            n = total // size
            return f"{n} {unit}{'' if n == 1 else 's'}"
    return f"{total} s"


def rate(n: int | None, of: int) -> float | None:
    """``n`` as a fraction of ``of`` (the sends), or None when nothing was sent."""
    if n is None or not of:
        return None
    return n / of


@dataclass(frozen=True)
class Arm:
    name: str
    sent: int
    successes: int
    rate: float | None
    winner: bool


@dataclass(frozen=True)
class ABView:
    """The A/B test as the page shows it: arms, the test and the winner with its reason."""

    metric: str
    arms: list[Arm]
    p_value: float | None
    alpha: float | None
    significant: bool
    winner: str | None
    reason: str
    declared: list[str] = field(default_factory=list)


def ab_view(report: BroadcastReport, spec: dict[str, Any]) -> ABView | None:
    """The decision once the window closed; before that, the declared arms and metric."""
    declared = spec.get("ab")
    if report.ab is None and declared is None:
        return None
    if report.ab is None:
        names = [str(v.get("name")) for v in (declared or {}).get("variants", [])]
        return ABView(
            metric=str((declared or {}).get("metric", "clicked")),
            arms=[],
            p_value=None,
            alpha=(declared or {}).get("alpha"),
            significant=False,
            winner=None,
            reason="the test's window has not closed yet: no winner",
            declared=names,
        )
    decision = report.ab
    winner = decision.get("winner")
    arms = [
        Arm(
            name=str(a["name"]),
            sent=int(a["sent"]),
            successes=int(a["successes"]),
            rate=rate(int(a["successes"]), int(a["sent"])),
            winner=a["name"] == winner,
        )
        for a in decision.get("arms", [])
    ]
    return ABView(
        metric=str(decision.get("metric", "")),
        arms=arms,
        p_value=decision.get("p_value"),
        alpha=decision.get("alpha"),
        significant=bool(decision.get("significant")),
        winner=winner,
        reason=str(decision.get("reason", "")),
    )


def all_reports(db: Engine) -> list[BroadcastReport]:
    return broadcast_reports(db)


def one_report(db: Engine, broadcast_id: str) -> tuple[BroadcastReport, dict[str, Any]]:
    """The report and the stored spec (``store.BroadcastNotFound`` when there is none)."""
    report = broadcast_report(db, broadcast_id)
    return report, dict(get_row(db, broadcast_id).spec)


__all__ = [
    "ENGAGEMENT",
    "LIVE",
    "REFRESH_SECONDS",
    "ABView",
    "Arm",
    "Progress",
    "ab_view",
    "all_reports",
    "one_report",
    "progress",
    "rate",
    "span",
]
