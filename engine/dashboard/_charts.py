"""Reports drawn as Plotly figures (pure: a ``Report`` in, ``Chart`` objects out).

A chart is its figure as JSON plus where its numbers came from (report and section). The
page embeds the JSON in a ``<script type="application/json">`` block beside an empty
``<div>``, and one static script (:data:`RENDER_JS`) draws every such pair with the
locally served ``plotly.min.js``. That keeps every script on the page a file from this
origin, so the pages run under a Content-Security-Policy without ``'unsafe-inline'``
scripts (``plotly.io.to_html`` would write an inline script per chart), and a reader (a
test, a curious operator) finds the drawn numbers in ``document.getElementById(id).data``.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go  # type: ignore[import-untyped]

from stagecoach.engine.services.analytics import Report, Section

_TEMPLATE = go.layout.Template(
    layout={
        "font": {"family": "system-ui, -apple-system, 'Segoe UI', sans-serif", "size": 13},
        "colorway": [
            "#3e6fb0",
            "#e07b39",
            "#4f9d69",
            "#c0504d",
            "#8064a2",
            "#4bacc6",
            "#9c8f3e",
            "#7f7f7f",
        ],
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "margin": {"l": 60, "r": 30, "t": 20, "b": 50},
        "xaxis": {"gridcolor": "#e4e7eb", "zeroline": False},
        "yaxis": {"gridcolor": "#e4e7eb", "zeroline": False},
    }
)
"""A small template of our own: plotly's named ones add ~10 KB of JSON to every figure."""

FLOW_COLOURS = {
    "rule": "rgba(62,111,176,0.45)",
    "detour": "rgba(224,123,57,0.65)",
    "manual": "rgba(127,127,127,0.5)",
}
"""Sankey link colours by transition kind; detours stand out."""

START = "(start)"
"""The node a contact's first stage is entered from (``from_stage`` is NULL)."""

CONFIG: dict[str, Any] = {"displaylogo": False, "responsive": True}
"""Plotly's ``config`` for every chart: no plotly.com links, no logo."""

RENDER_JS = """\
"use strict";
// Draw every chart on the page: its figure JSON sits in the script block after its div.
document.querySelectorAll("div.chart[data-figure]").forEach(function (div) {
  try {
    var figure = JSON.parse(document.getElementById(div.dataset.figure).textContent);
    Plotly.newPlot(div, figure.data, figure.layout, figure.config);
  } catch (error) {  // one broken chart must not keep the others from being drawn
    console.error("chart " + div.id + ": " + error);
  }
});
"""
"""Served as ``/dashboard/static/dashboard.js``; the only script besides plotly.min.js."""

_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Chart:
    """One figure and where its numbers come from."""

    id: str
    """The ``id`` of the chart's div (unique on its page)."""
    report: str
    section: str
    title: str
    figure: dict[str, Any]
    """Plotly's JSON form: ``data``, ``layout`` and ``config``."""
    labels: dict[str, str] | None = None
    """Extra ``data-*`` attributes of the div, e.g. ``{"journey": "b2b_nurture"}``."""

    def script_json(self) -> str:
        """The figure as JSON that is safe inside ``<script type="application/json">``:
        ``<``, ``>`` and ``&`` are escaped, so no value (a stage or content name) can
        close the element or open a comment."""
        text = json.dumps(self.figure, separators=(",", ":"), ensure_ascii=False)
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def slug(*parts: object) -> str:
    """A DOM id fragment from arbitrary text: lowercase, ``[a-z0-9-]`` only."""
    return "-".join(_SLUG.sub("-", str(p).lower()).strip("-") or "x" for p in parts)


def _figure(fig: go.Figure, *, height: int) -> dict[str, Any]:
    fig.update_layout(template=_TEMPLATE, height=height)
    # to_json handles dates and numpy values; the round trip gives plain JSON types.
    figure: dict[str, Any] = json.loads(fig.to_json(validate=False))
    figure["config"] = dict(CONFIG)
    return figure


def _column(section: Section, name: str) -> list[Any]:
    index = section.columns.index(name)
    return [row[index] for row in section.rows]


def _in_order(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _number(value: Any) -> float | int:
    """A count or measure as plotly should carry it: whole numbers stay integers."""
    if value is None:
        return 0
    return value if isinstance(value, int) else float(value)


# --- the pipeline ("funnel" report) -------------------------------------------------------


def funnel(report: Report) -> Chart:
    """The pipeline's width: contacts in each stage now, in pipeline order."""
    width = report.section("width")
    stages = [str(s) for s in _column(width, "stage")]
    now = [_number(n) for n in _column(width, "now")]
    fig = go.Figure(
        go.Funnel(
            y=stages,
            x=now,
            textinfo="value+percent total",
            marker={"color": "#3e6fb0"},
            hovertemplate="%{y}: %{x:,} contacts<extra></extra>",
        )
    )
    fig.update_layout(margin={"l": 110})
    return Chart(
        id="funnel-width",
        report=report.name,
        section="width",
        title="Contacts in each stage now",
        figure=_figure(fig, height=60 + 48 * max(len(stages), 1)),
    )


def sankey(
    sources: Sequence[Any],
    targets: Sequence[Any],
    values: Sequence[Any],
    *,
    kinds: Sequence[Any] | None = None,
    order: Sequence[str] = (),
) -> go.Figure:
    """A Sankey of links ``source -> target`` carrying ``value`` contacts.

    Nodes are listed in ``order`` first (the pipeline's stages), then as they appear;
    a ``None`` source is :data:`START`. ``kinds`` colours each link (:data:`FLOW_COLOURS`)
    and is shown on hover.
    """
    src = [START if s is None else str(s) for s in sources]
    dst = [str(t) for t in targets]
    nodes = _in_order([*order, *src, *dst])
    used = set(src) | set(dst)
    nodes = [n for n in nodes if n in used]
    index = {name: i for i, name in enumerate(nodes)}
    link: dict[str, Any] = {
        "source": [index[s] for s in src],
        "target": [index[t] for t in dst],
        "value": [_number(v) for v in values],
    }
    if kinds is not None:
        kind_names = [str(k) for k in kinds]
        link["customdata"] = kind_names
        link["color"] = [FLOW_COLOURS.get(k, FLOW_COLOURS["manual"]) for k in kind_names]
        link["hovertemplate"] = (
            "%{source.label} → %{target.label} (%{customdata}): %{value:,}<extra></extra>"
        )
    else:
        link["hovertemplate"] = "%{source.label} → %{target.label}: %{value:,}<extra></extra>"
    return go.Figure(
        go.Sankey(
            arrangement="snap",
            node={"label": nodes, "pad": 18, "thickness": 16, "color": "#52606d"},
            link=link,
        )
    )


def stage_flows(report: Report) -> Chart:
    """Where contacts went between stages in the period, detours included."""
    flows = report.section("flows")
    order = [str(s) for s in _column(report.section("width"), "stage")]
    fig = sankey(
        _column(flows, "from_stage"),
        _column(flows, "to_stage"),
        _column(flows, "contacts"),
        kinds=_column(flows, "kind"),
        order=order,
    )
    return Chart(
        id="funnel-flows",
        report=report.name,
        section="flows",
        title="Stage transitions (detours in orange)",
        figure=_figure(fig, height=420),
    )


def time_in_stage(report: Report) -> Chart:
    """How long stays in each stage lasted: one bar series per stage over duration buckets."""
    section = report.section("time_in_stage")
    stages = _in_order(str(s) for s in _column(section, "stage"))
    buckets = _in_order(str(b) for b in _column(section, "bucket"))
    counts: dict[tuple[str, str], float | int] = {}
    for stage, bucket, stays in zip(
        _column(section, "stage"),
        _column(section, "bucket"),
        _column(section, "stays"),
        strict=True,
    ):
        counts[(str(stage), str(bucket))] = _number(stays)
    fig = go.Figure(
        [
            go.Bar(
                name=stage,
                x=buckets,
                y=[counts.get((stage, b), 0) for b in buckets],
                hovertemplate=f"{stage}, %{{x}}: %{{y:,}} stays<extra></extra>",
            )
            for stage in stages
        ]
    )
    fig.update_layout(
        barmode="group",
        xaxis_title="time in stage",
        yaxis_title="stays",
        legend={"orientation": "h", "y": -0.25},
    )
    return Chart(
        id="funnel-time-in-stage",
        report=report.name,
        section="time_in_stage",
        title="Time in stage",
        figure=_figure(fig, height=380),
    )


def overview_charts(report: Report) -> list[Chart]:
    """The pipeline's charts on the overview page, for the sections the report has."""
    sections = {s.name: s for s in report.sections}
    charts = []
    if "width" in sections:
        charts.append(funnel(report))
        if _has_counts(sections.get("flows"), "contacts"):
            charts.append(stage_flows(report))
    if _has_counts(sections.get("time_in_stage"), "stays"):
        charts.append(time_in_stage(report))
    return charts


def _has_counts(section: Section | None, column: str) -> bool:
    """Whether ``section`` has a row with a count above zero: an empty Sankey or bar
    chart draws nothing (plotly.js even fails on a Sankey without nodes)."""
    return section is not None and any(_number(v) for v in _column(section, column))


# --- NPS ------------------------------------------------------------------------------------


def nps_trend(report: Report) -> Chart:
    """NPS per period as a line, with the number of answers as bars behind it."""
    trend = report.section("trend")
    periods = [str(p) for p in _column(trend, "period")]
    scores = [None if v is None else float(v) for v in _column(trend, "nps")]
    fig = go.Figure(
        [
            go.Bar(
                name="answers",
                x=periods,
                y=[_number(v) for v in _column(trend, "responses")],
                yaxis="y2",
                marker={"color": "rgba(62,111,176,0.18)"},
                hovertemplate="%{x}: %{y:,} answers<extra></extra>",
            ),
            go.Scatter(
                name="NPS",
                x=periods,
                y=scores,
                mode="lines+markers",
                line={"color": "#3e6fb0", "width": 3},
                hovertemplate="%{x}: NPS %{y}<extra></extra>",
            ),
        ]
    )
    fig.update_layout(
        xaxis={"type": "category"},
        yaxis={"title": "NPS", "range": [-100, 100]},
        yaxis2={
            "title": "answers",
            "overlaying": "y",
            "side": "right",
            "showgrid": False,
            "rangemode": "tozero",
            "tickformat": ",d",
        },
        legend={"orientation": "h", "y": -0.2},
        margin={"r": 60},
    )
    return Chart(
        id="nps-trend",
        report=report.name,
        section="trend",
        title="Net Promoter Score",
        figure=_figure(fig, height=340),
    )


# --- journeys -----------------------------------------------------------------------------


OUTCOME_COLOURS = {
    "goal": "rgba(79,157,105,0.55)",
    "exit": "rgba(192,80,77,0.45)",
    "step": "rgba(62,111,176,0.35)",
}
"""Journey Sankey links by where they lead: the goal, an exit, or on through the journey."""


OUTCOME_LABELS = {
    "goal": "Goal reached",
    "end": "Completed",
    "active": "Still in the journey",
}
"""How the journey Sankey names the ends of a trail that are not exits."""

EXIT_LABELS = {
    "holdout": "Held out",
    "exit_criteria": "Met the exit criteria",
    "delivery_failed": "Delivery failed",
    "handoff_failed": "Hand-off to sales failed",
    "cancelled": "Cancelled",
    "runtime_error": "Journey error",
    "merged into": "Merged into another contact",
    "unknown": "Reason not recorded",
    "unsubscribed": "Unsubscribed",
    "no_answer": "No answer",
}
"""Readable names for the reasons an enrolment exits with, by the reason's kind: the part
before its first ``": "`` (``delivery_failed: welcome: 550 ...``), or ``merged into``.
A reason not listed here (an ``exit_journey("...")`` of a journey's author, an arm's
name) is shown with underscores as spaces, shortened to :data:`LABEL_WIDTH`."""

EXIT_PREFIX = "Exit: "
NODE_ROOM = 38
"""Pixels of height per node in a journey Sankey's tallest column: a 12 px label, the
node padding and room for the node itself, so neighbouring labels never touch."""
LABEL_WIDTH = 30
"""The longest node label in characters: plotly does not wrap Sankey labels, and long
ones run into their neighbours and over the links. The whole reason is in the hover."""


def _exit_kind(reason: str) -> str:
    if reason.startswith("merged into"):
        return "merged into"
    return reason.split(": ", 1)[0].strip()


def _shorten(text: str) -> str:
    return text if len(text) <= LABEL_WIDTH else text[: LABEL_WIDTH - 1].rstrip() + "…"


def outcome_label(target: str) -> str:
    """The label a journey Sankey shows for a flow report's node: outcomes and exit
    reasons readable (``exit:delivery_failed: welcome: 550 ...`` is ``Exit: Delivery
    failed``), step ids as they are."""
    if target in OUTCOME_LABELS:
        return OUTCOME_LABELS[target]
    if not target.startswith("exit:"):
        return target
    reason = target[len("exit:") :].strip()
    kind = _exit_kind(reason)
    if kind in EXIT_LABELS:
        return EXIT_PREFIX + EXIT_LABELS[kind]
    readable = reason.replace("_", " ").strip() or EXIT_LABELS["unknown"]
    return EXIT_PREFIX + _shorten(readable[0].upper() + readable[1:])


def _outcome_colour(target: str) -> str:
    if target == "goal":
        return OUTCOME_COLOURS["goal"]
    if target.startswith("exit:"):
        return OUTCOME_COLOURS["exit"]
    return OUTCOME_COLOURS["step"]


def _hover_details(raw: dict[str, dict[str, int]], node: str) -> str:
    """What a node stands for, for its hover: each raw reason behind it and its count."""
    details = raw.get(node, {})
    if not details or list(details) == [node]:  # a step: its name says it all
        return ""
    lines = [
        f"{html.escape(name)} ({count:,})"
        for name, count in sorted(details.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    shown = lines[:8] + ([f"and {len(lines) - 8} more"] if len(lines) > 8 else [])
    return "<br>".join(shown) + "<br>"


def journey_sankey(rows: Sequence[tuple[Any, Any, Any]]) -> tuple[go.Figure, int]:
    """A journey version's Sankey from ``(source, target, contacts)`` rows, and its height.

    Targets are shown by :func:`outcome_label`; raw reasons that read the same (two
    steps' delivery failures) share a node, whose hover lists them with their counts.
    The height grows with the tallest column so the labels of one column do not overlap.
    """
    merged: dict[tuple[str, str], int | float] = {}
    colour: dict[tuple[str, str], str] = {}
    raw: dict[str, dict[str, int]] = {}
    for source, target, contacts in rows:
        src, dst = str(source), str(target)
        pair = (outcome_label(src), outcome_label(dst))
        merged[pair] = merged.get(pair, 0) + _number(contacts)
        colour[pair] = _outcome_colour(dst)
        reason = dst[len("exit:") :] if dst.startswith("exit:") else dst
        counts = raw.setdefault(pair[1], {})
        counts[reason] = counts.get(reason, 0) + int(_number(contacts))
    nodes = _in_order(n for pair in merged for n in pair)
    index = {name: i for i, name in enumerate(nodes)}
    fig = go.Figure(
        go.Sankey(
            arrangement="snap",
            node={
                "label": nodes,
                "pad": 26,
                "thickness": 16,
                "color": "#52606d",
                "customdata": [_hover_details(raw, n) for n in nodes],
                "hovertemplate": "<b>%{label}</b><br>%{customdata}%{value:,} contacts"
                "<extra></extra>",
            },
            link={
                "source": [index[s] for s, _ in merged],
                "target": [index[t] for _, t in merged],
                "value": list(merged.values()),
                "color": list(colour.values()),
                "hovertemplate": "%{source.label} → %{target.label}: %{value:,} contacts"
                "<extra></extra>",
            },
            textfont={"size": 12},
        )
    )
    return fig, _sankey_height(list(merged))


def _sankey_height(pairs: list[tuple[str, str]]) -> int:
    """Enough height that the tallest column's labels (one text line each, plus the
    node padding) do not overlap. Plotly's layout puts every node without an outgoing
    link (the goal, the exits, "still in the journey") in the last column, and the
    others by their distance from a start, so those two counts bound a column."""
    sources = {src for src, _ in pairs}
    sinks = {dst for _, dst in pairs} - sources
    depth = dict.fromkeys(sources, 0)
    for _ in range(len(pairs)):  # longest distance, bounded: a journey may loop back
        changed = False
        for src, dst in pairs:
            if dst in sources and depth[dst] < depth[src] + 1 <= len(pairs):
                depth[dst] = depth[src] + 1
                changed = True
        if not changed:
            break
    columns: dict[int, int] = {}
    for d in depth.values():
        columns[d] = columns.get(d, 0) + 1
    tallest = max([len(sinks), *columns.values()])
    return max(360, 100 + NODE_ROOM * tallest)


def journey_flows(report: Report) -> list[Chart]:
    """One Sankey per journey version: where its contacts went, step to step."""
    flow = report.section("flow")
    groups: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    cols = flow.columns
    j, v, s, t, c = (cols.index(n) for n in ("journey", "version", "source", "target", "contacts"))
    for row in flow.rows:
        groups.setdefault((str(row[j]), str(row[v])), []).append(row)
    charts = []
    for (journey, version), rows in groups.items():
        fig, height = journey_sankey([(r[s], r[t], r[c]) for r in rows])
        charts.append(
            Chart(
                id=f"journey-flow-{slug(journey, version[:12])}",
                report=report.name,
                section="flow",
                title=f"{journey} (version {version[:12]})",
                figure=_figure(fig, height=height),
                labels={"journey": journey, "version": version},
            )
        )
    return charts
