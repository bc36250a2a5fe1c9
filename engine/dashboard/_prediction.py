"""The prediction pages' charts: the forecast with its intervals against the actuals,
and the propensity model's calibration (``/dashboard/forecast``, ``/dashboard/propensity``)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import plotly.graph_objects as go  # type: ignore[import-untyped]
from sqlalchemy import Engine

from stagecoach.engine.dashboard._charts import Chart, _column, _figure, _number
from stagecoach.engine.services.analytics import Report, ReportError

BAND = "rgba(38,128,194,0.18)"
LINE = "#2680c2"
ACTUAL = "#1f2933"


def _band(
    weeks: list[str], low: list[float], high: list[float], mean: list[float], what: str
) -> list[Any]:
    return [
        go.Scatter(
            x=weeks, y=high, mode="lines", line={"width": 0}, hoverinfo="skip", showlegend=False
        ),
        go.Scatter(
            name="80% interval",
            x=weeks,
            y=low,
            mode="lines",
            line={"width": 0},
            fill="tonexty",
            fillcolor=BAND,
            hovertemplate=f"%{{x}}: {what} from %{{y:,.0f}}<extra></extra>",
        ),
        go.Scatter(
            name="forecast",
            x=weeks,
            y=mean,
            mode="lines+markers",
            line={"color": LINE, "width": 2, "dash": "dash"},
            hovertemplate=f"%{{x}}: {what} %{{y:,.1f}} expected<extra></extra>",
        ),
    ]


def forecast_chart(report: Report, metric: str) -> Chart:
    """``customers`` or ``revenue`` per week: actuals before the origin and for weeks
    already over, the expected value and its 80% band ahead."""
    ahead = report.section("forecast")
    history = report.section("history")
    weeks = [str(w) for w in _column(ahead, "week")]
    low = [_number(v) for v in _column(ahead, f"{metric}_low")]
    high = [_number(v) for v in _column(ahead, f"{metric}_high")]
    mean = [_number(v) for v in _column(ahead, f"{metric}_mean")]
    past_weeks = [str(w) for w in _column(history, "week")]
    past = [_number(v) for v in _column(history, metric)]
    seen = [
        (w, _number(v))
        for w, v in zip(weeks, _column(ahead, f"actual_{metric}"), strict=True)
        if v is not None
    ]
    traces = _band(weeks, low, high, mean, metric)
    traces.append(
        go.Scatter(
            name="actual",
            x=past_weeks + [w for w, _ in seen],
            y=past + [v for _, v in seen],
            mode="lines+markers",
            line={"color": ACTUAL, "width": 2},
            hovertemplate=f"%{{x}}: {metric} %{{y:,}}<extra></extra>",
        )
    )
    fig = go.Figure(traces)
    fig.update_layout(xaxis_title="week starting", yaxis_title=metric, hovermode="x unified")
    title = "New customers per week" if metric == "customers" else "First-order revenue per week"
    return Chart(
        id=f"forecast-{metric}",
        report="forecast",
        section="forecast",
        title=title,
        figure=_figure(fig, height=360),
    )


def calibration_chart(report: Report) -> Chart:
    """Predicted against observed rate per probability bin, on held-out contacts; the
    diagonal is perfect calibration."""
    section = report.section("calibration")
    rows = [r for r in section.rows if r[1]]
    predicted = [float(r[2]) for r in rows]
    observed = [float(r[3]) for r in rows]
    fig = go.Figure(
        [
            go.Scatter(
                name="perfect",
                x=[0, 1],
                y=[0, 1],
                mode="lines",
                line={"color": "#9aa5b1", "dash": "dot"},
                hoverinfo="skip",
            ),
            go.Scatter(
                name="model",
                x=predicted,
                y=observed,
                mode="lines+markers",
                marker={"size": [max(6, min(24, 4 + int(r[1]) ** 0.5)) for r in rows]},
                line={"color": LINE},
                customdata=[int(r[1]) for r in rows],
                hovertemplate="predicted %{x:.1%}, observed %{y:.1%} "
                "(%{customdata:,} contacts)<extra></extra>",
            ),
        ]
    )
    fig.update_layout(
        xaxis_title="predicted probability",
        yaxis_title="observed rate",
        xaxis={"range": [0, 1]},
        yaxis={"range": [0, 1]},
    )
    return Chart(
        id="propensity-calibration",
        report="propensity",
        section="calibration",
        title="Calibration on held-out contacts",
        figure=_figure(fig, height=380),
    )


def origin_time(origin: str | None) -> datetime:
    """The forecast page's origin: the start of ``origin`` (``YYYY-MM-DD``, UTC), or by
    default tomorrow's start, which the report caps at the analytics store's copy (so
    the page asks for the same report all day and the cache answers it).

    Raises:
        ReportError: ``origin`` is not a date.
    """
    if not origin:
        return datetime.combine(datetime.now(UTC).date() + timedelta(days=1), time(), UTC)
    try:
        day = date.fromisoformat(origin)
    except ValueError:
        raise ReportError(
            f"origin={origin!r} is not a date", fix="give the origin as 2026-11-01"
        ) from None
    return datetime.combine(day, time(), UTC)


def contact_propensity(db: Engine, contact_id: str) -> dict[str, Any] | None:
    """The contact page's propensity line; None when unscored or unreadable (the rest of
    the page is still worth showing)."""
    from sqlalchemy.exc import SQLAlchemyError

    from stagecoach.engine.services.prediction.scores import current_propensity

    try:
        return current_propensity(db, contact_id)
    except SQLAlchemyError:
        return None
