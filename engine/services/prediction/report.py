"""The propensity report: model versions, the newest one's calibration on held-out
contacts, what drives it, and how the current scores spread.

It reads the database (where versions and scores are kept), not the analytics store;
``stagecoach report propensity``, ``GET /v1/reports/propensity`` and the dashboard's
propensity page all call :func:`propensity_report`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from stagecoach.engine.services.analytics._report import Params, Report, Section
from stagecoach.engine.services.storage.models import PropensityModelVersion, PropensityScore

PROPENSITY = "propensity"
VERSIONS_SHOWN = 20
TOP_DRIVERS = 15


def propensity_report(db: sa.Engine, *, now: datetime | None = None) -> Report:
    """The report; with no model yet, empty sections and a note saying how to get one."""
    at = now or datetime.now(UTC)
    with Session(db) as session:
        versions = list(
            session.exec(
                select(PropensityModelVersion)
                .order_by(col(PropensityModelVersion.version).desc())
                .limit(VERSIONS_SHOWN)
            ).all()
        )
        # One sum per tenth, portable: SQLite may lack floor(), and PostgreSQL rounds
        # where a cast would truncate.
        p = col(PropensityScore.probability)
        spread = session.execute(
            select(
                *(
                    func.coalesce(
                        func.sum(
                            sa.case(((p >= b / 10) & (p < (b + 1) / 10 if b < 9 else p <= 1), 1))
                        ),
                        0,
                    )
                    for b in range(10)
                )
            )
        ).one()
    notes: list[str] = []
    latest = versions[0] if versions else None
    if latest is None:
        notes.append(
            "no propensity model yet: the worker's Schedule trains one every "
            "STAGECOACH_PROPENSITY_RETRAIN_HOURS once there is enough history "
            "(temporal schedule trigger runs it now)"
        )
    model_rows: list[tuple[Any, ...]] = [
        (
            v.version,
            _iso(v.trained_at),
            _iso(v.window_start),
            _iso(v.window_end),
            v.target_stage,
            v.horizon_days,
            v.rows,
            v.customers,
            v.metrics.get("auc"),
            v.metrics.get("calibration_error"),
            v.metrics.get("brier"),
            v.scored,
        )
        for v in versions
    ]
    calibration = [
        (r["bin"], r["contacts"], r["predicted"], r["observed"])
        for r in (latest.metrics.get("reliability", []) if latest else [])
    ]
    drivers: list[tuple[Any, ...]] = []
    if latest is not None:
        coef = latest.artifact.get("coef", [])
        pairs = sorted(
            zip(latest.features, coef, strict=False), key=lambda p: abs(float(p[1])), reverse=True
        )
        drivers = [(name, round(float(c), 4)) for name, c in pairs[:TOP_DRIVERS]]
    distribution = [(f"{b / 10:.1f}-{(b + 1) / 10:.1f}", int(spread[b])) for b in range(10)]
    return Report(
        name=PROPENSITY,
        title="Conversion propensity",
        params=Params(since=latest.window_start if latest else at, until=at),
        as_of=_aware(latest.trained_at) if latest else None,
        sections=[
            Section(
                "models",
                (
                    "version",
                    "trained_at",
                    "window_start",
                    "window_end",
                    "target",
                    "horizon_days",
                    "rows",
                    "customers",
                    "auc",
                    "calibration_error",
                    "brier",
                    "scored",
                ),
                model_rows,
                "Model versions, newest first, with their held-out metrics",
            ),
            Section(
                "calibration",
                ("bin", "contacts", "predicted", "observed"),
                calibration,
                "The newest model on held-out contacts: predicted against observed rate",
            ),
            Section(
                "drivers",
                ("feature", "coefficient"),
                drivers,
                "What moves the newest model most (log-odds per standard deviation)",
            ),
            Section(
                "scores",
                ("probability", "contacts"),
                distribution,
                "Contacts by current propensity",
            ),
        ],
        notes=notes,
    )


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _iso(at: datetime) -> str:
    return _aware(at).isoformat(timespec="seconds")
