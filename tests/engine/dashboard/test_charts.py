"""Reports to Plotly figures: the numbers go into the figure as they are, in order."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from stagecoach.engine.dashboard import _charts
from stagecoach.engine.services.analytics import Params, Report, Section

PARAMS = Params.last(30, now=datetime(2026, 3, 1, tzinfo=UTC))


def report(name: str, *sections: Section) -> Report:
    return Report(name, name.title(), PARAMS, datetime(2026, 3, 1, tzinfo=UTC), list(sections))


def pipeline(
    flows: list[tuple[Any, ...]] | None = None, stays: list[tuple[Any, ...]] | None = None
) -> Report:
    return report(
        "pipeline",
        Section(
            "width",
            ("stage", "now", "entered"),
            [("suspect", 50, 60), ("prospect", 20, 30), ("lead", 5, 9), ("disqualified", 2, 2)],
        ),
        Section(
            "flows",
            ("from_stage", "to_stage", "kind", "contacts"),
            flows
            if flows is not None
            else [
                ("(new)", "suspect", "rule", 60),
                ("suspect", "prospect", "rule", 30),
                ("lead", "prospect", "detour", 3),
                ("prospect", "lead", "rule", 9),
            ],
        ),
        Section(
            "time_in_stage",
            ("stage", "bucket", "stays"),
            stays
            if stays is not None
            else [("suspect", "<1d", 4), ("suspect", "1-3d", 7), ("prospect", "<1d", 1)],
        ),
    )


def links(chart: _charts.Chart) -> dict[tuple[str, str], Any]:
    [sankey] = chart.figure["data"]
    labels, link = sankey["node"]["label"], sankey["link"]
    return {
        (labels[s], labels[t]): v
        for s, t, v in zip(link["source"], link["target"], link["value"], strict=True)
    }


def test_funnel_draws_each_stage_now_in_pipeline_order() -> None:
    chart = _charts.funnel(pipeline())

    [trace] = chart.figure["data"]
    assert trace["type"] == "funnel"
    assert trace["y"] == ["suspect", "prospect", "lead", "disqualified"]
    assert trace["x"] == [50, 20, 5, 2]
    assert (chart.id, chart.report, chart.section) == ("funnel-width", "pipeline", "width")
    assert chart.figure["config"]["displaylogo"] is False


def test_stage_flows_keep_every_move_and_colour_detours() -> None:
    chart = _charts.stage_flows(pipeline())

    assert links(chart) == {
        ("(new)", "suspect"): 60,
        ("suspect", "prospect"): 30,
        ("lead", "prospect"): 3,
        ("prospect", "lead"): 9,
    }
    [sankey] = chart.figure["data"]
    detour = sankey["link"]["customdata"].index("detour")
    assert sankey["link"]["color"][detour] == _charts.FLOW_COLOURS["detour"]


def test_sankey_nodes_follow_the_stage_order_then_appearance() -> None:
    fig = _charts.sankey(
        [None, "lead", "b"], ["a", "b", "lead"], [1, 2, 3], order=("lead", "unused", "a")
    )

    [trace] = fig.data
    assert list(trace.node.label) == ["lead", "a", _charts.START, "b"]


def test_time_in_stage_is_a_bar_series_per_stage_over_the_buckets() -> None:
    chart = _charts.time_in_stage(pipeline())

    bars = {b["name"]: dict(zip(b["x"], b["y"], strict=True)) for b in chart.figure["data"]}
    assert bars == {"suspect": {"<1d": 4, "1-3d": 7}, "prospect": {"<1d": 1, "1-3d": 0}}


def test_overview_leaves_out_charts_with_nothing_to_draw() -> None:
    empty = pipeline(flows=[], stays=[("suspect", "<1d", 0)])

    assert [c.id for c in _charts.overview_charts(empty)] == ["funnel-width"]
    assert [c.id for c in _charts.overview_charts(pipeline())] == [
        "funnel-width",
        "funnel-flows",
        "funnel-time-in-stage",
    ]


def test_nps_trend_is_a_line_over_period_categories() -> None:
    nps = report(
        "nps",
        Section(
            "trend",
            ("period", "responses", "promoters", "passives", "detractors", "nps"),
            [("2026-01-01", 10, 5, 3, 2, 30.0), ("2026-02-01", 0, 0, 0, 0, None)],
        ),
    )

    chart = _charts.nps_trend(nps)

    traces = {t["name"]: t for t in chart.figure["data"]}
    assert traces["NPS"]["y"] == [30.0, None]
    assert traces["answers"]["y"] == [10, 0]
    assert chart.figure["layout"]["xaxis"]["type"] == "category"


def test_journey_flows_are_one_sankey_per_version() -> None:
    journeys = report(
        "journeys",
        Section(
            "flow",
            ("journey", "version", "source", "target", "contacts"),
            [
                ("welcome", "v1aaaaaaaaaaaaaa", "intro", "goal", 7),
                ("welcome", "v1aaaaaaaaaaaaaa", "intro", "exit:unsubscribed", 2),
                ("welcome", "v2bbbbbbbbbbbbbb", "intro", "end", 4),
            ],
        ),
    )

    first, second = _charts.journey_flows(journeys)

    assert links(first) == {("intro", "Goal reached"): 7, ("intro", "Exit: Unsubscribed"): 2}
    assert links(second) == {("intro", "Completed"): 4}
    assert first.labels == {"journey": "welcome", "version": "v1aaaaaaaaaaaaaa"}
    assert first.id != second.id
    [sankey] = first.figure["data"]
    assert sankey["link"]["color"] == [
        _charts.OUTCOME_COLOURS["goal"],
        _charts.OUTCOME_COLOURS["exit"],
    ]


def test_figure_json_cannot_close_its_script_element() -> None:
    hostile = pipeline(flows=[("(new)", "</script><script>alert(1)</script>", "rule", 1)])

    text = _charts.stage_flows(hostile).script_json()

    assert "</script" not in text
    assert "<" not in text
    [sankey] = json.loads(text)["data"]
    assert "</script><script>alert(1)</script>" in sankey["node"]["label"]


def test_slug_makes_dom_safe_ids() -> None:
    assert _charts.slug("B2B Nurture", "a1/b2") == "b2b-nurture-a1-b2"
    assert _charts.slug("???") == "x"


RICH_FLOW = [
    ("intro", "wait", 40),
    ("intro", "exit:no interest in the awareness content at all", 12),
    ("intro", "exit:delivery_failed: intro: 550 a@example.com: no such user", 3),
    ("intro", "exit:delivery_failed: intro: 421 try later", 2),
    ("wait", "case", 25),
    ("wait", "exit:unsubscribed", 6),
    ("wait", "exit:exit_criteria", 5),
    ("wait", "exit:cancelled: stage changed to customer", 2),
    ("wait", "active", 2),
    ("case", "goal", 14),
    ("case", "end", 6),
    ("case", "exit:handoff_failed: mql: CRM answered 500", 2),
    ("case", "exit:runtime_error: journey j step case: bad <b>", 1),
    ("case", "exit:merged into c_123", 1),
    ("case", "exit:<b>no_reply</b>", 1),
    ("holdout", "exit:holdout", 9),
    ("holdout", "exit:", 1),
]
"""A journey's flow with every kind of outcome and exit reason the engine records."""


def rich_journey() -> _charts.Chart:
    rows = [("j", "v1", s, t, n) for s, t, n in RICH_FLOW]
    section = Section("flow", ("journey", "version", "source", "target", "contacts"), rows)
    [chart] = _charts.journey_flows(report("journeys", section))
    return chart


def test_journey_exits_and_outcomes_get_readable_labels() -> None:
    flows = links(rich_journey())

    assert flows == {
        ("intro", "wait"): 40,
        ("intro", "Exit: No interest in the awareness\u2026"): 12,
        ("intro", "Exit: Delivery failed"): 5,  # two raw reasons, one node
        ("wait", "case"): 25,
        ("wait", "Exit: Unsubscribed"): 6,
        ("wait", "Exit: Met the exit criteria"): 5,
        ("wait", "Exit: Cancelled"): 2,
        ("wait", "Still in the journey"): 2,
        ("case", "Goal reached"): 14,
        ("case", "Completed"): 6,
        ("case", "Exit: Hand-off to sales failed"): 2,
        ("case", "Exit: Journey error"): 1,
        ("case", "Exit: Merged into another contact"): 1,
        ("case", "Exit: <b>no reply</b>"): 1,
        ("holdout", "Exit: Held out"): 9,
        ("holdout", "Exit: Reason not recorded"): 1,
    }
    labels = [label for pair in flows for label in pair]
    assert not [label for label in labels if label.startswith("exit:")]
    assert max(len(label) for label in labels) <= len("Exit: ") + _charts.LABEL_WIDTH


def test_the_raw_reasons_are_in_the_hover_escaped() -> None:
    [sankey] = rich_journey().figure["data"]
    node = sankey["node"]
    hover = dict(zip(node["label"], node["customdata"], strict=True))

    assert hover["Exit: Delivery failed"] == (
        "delivery_failed: intro: 550 a@example.com: no such user (3)<br>"
        "delivery_failed: intro: 421 try later (2)<br>"
    )
    assert hover["Exit: Journey error"] == (
        "runtime_error: journey j step case: bad &lt;b&gt; (1)<br>"
    )
    assert hover["Exit: No interest in the awareness\u2026"] == (
        "no interest in the awareness content at all (12)<br>"
    )
    assert hover["wait"] == ""  # a step's name is its detail
    assert "%{customdata}" in node["hovertemplate"]


def test_a_journey_sankey_is_tall_enough_for_its_last_column() -> None:
    chart = rich_journey()
    sinks = 13  # every outcome and exit sits in plotly's last column

    assert chart.figure["layout"]["height"] >= 100 + _charts.NODE_ROOM * sinks
    small = _charts.journey_flows(
        report(
            "journeys",
            Section(
                "flow",
                ("journey", "version", "source", "target", "contacts"),
                [("j", "v1", "a", "goal", 1)],
            ),
        )
    )[0]
    assert small.figure["layout"]["height"] == 360
