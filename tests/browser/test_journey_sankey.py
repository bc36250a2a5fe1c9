"""A journey Sankey with every kind of exit, drawn by plotly.js in headless Chromium:
readable labels that do not overlap, and the raw reasons in the hover."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import plotly  # type: ignore[import-untyped]
import pytest

from stagecoach.engine.dashboard import _charts
from stagecoach.engine.services.analytics import Section
from tests.engine.dashboard.test_charts import RICH_FLOW, report

pytestmark = pytest.mark.browser

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"

LABEL_BOXES = """() => [...document.querySelectorAll('#chart .sankey-node .node-label')].map(t => {
    const r = t.getBoundingClientRect();
    return {text: t.textContent, left: r.left, right: r.right, top: r.top, bottom: r.bottom};
})"""


def _overlapping(boxes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    pairs = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            apart = (
                a["right"] <= b["left"]
                or b["right"] <= a["left"]
                or a["bottom"] <= b["top"]
                or b["bottom"] <= a["top"]
            )
            if not apart:
                pairs.append((a["text"], b["text"]))
    return pairs


def test_journey_sankey_labels_are_readable_apart_and_detailed_on_hover(
    chromium: Any, artifacts: Path
) -> None:
    rows = [("b2b_nurture", "v1", s, t, n) for s, t, n in RICH_FLOW]
    flow = Section("flow", ("journey", "version", "source", "target", "contacts"), rows)
    [chart] = _charts.journey_flows(report("journeys", flow))
    context = chromium.new_context(viewport={"width": 1100, "height": 900})
    try:
        page = context.new_page()
        page.set_content('<!doctype html><div id="chart" style="width:1000px"></div>')
        page.add_script_tag(path=str(PLOTLY_JS))
        page.evaluate(
            "f => Plotly.newPlot('chart', f.data, f.layout, f.config)",
            json.loads(chart.script_json()),
        )
        page.wait_for_selector("#chart .sankey-node .node-label")
        page.screenshot(path=str(artifacts / "journey-sankey.png"), full_page=True)

        boxes = page.evaluate(LABEL_BOXES)
        drawn = {b["text"] for b in boxes}
        assert {"Exit: Delivery failed", "Exit: Held out", "Goal reached"} <= drawn
        assert not [t for t in drawn if t.startswith("exit:")]
        assert _overlapping(boxes) == []

        node = page.locator("#chart .sankey-node").filter(has_text="Exit: Delivery failed")
        node.locator(".node-rect").hover(force=True)
        page.wait_for_selector("#chart .hoverlayer .hovertext")
        hover = page.locator("#chart .hoverlayer").text_content() or ""
        assert "delivery_failed: intro: 550 a@example.com: no such user (3)" in hover
        assert "delivery_failed: intro: 421 try later (2)" in hover
        assert "5 contacts" in hover
    finally:
        context.close()
