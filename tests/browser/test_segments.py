"""The segments pages in headless Chromium, from nothing: a migrated database, two
segments published with ``publish_segments`` (one computed, one manual), and their
entries and exits written with ``save_segment_changes``.

``save_segment_changes`` is the storage function the contact workflow's record activity
(and the backfill, and manual list changes) call to write membership; these pages only
read those rows, so writing them through that function is this reader's fixture, not a
stand-in for the workflow (which has its own tests on a real Temporal server).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from stagecoach.engine.app import create_app
from tests.browser.conftest import Recorded, Served, seeded_settings, serving
from tests.browser.segments_seed import SegmentTruth, seed_segments
from tests.browser.test_dashboard import only_local, shot, sign_in
from tests.helpers import migrated_engine

pytestmark = pytest.mark.browser

ROWS = """table => [...document.querySelectorAll(`#${table} tbody tr`)].map(tr =>
    Object.fromEntries([...tr.cells].map(td => [td.dataset.column, td.innerText.trim()])))"""
"""A table's body rows as {column: text}, as the reader sees the text."""

DAYS = """() => [...document.querySelectorAll('#segment-chart g.day')].map(g => ({
    day: g.dataset.day, entered: +g.dataset.entered, exited: +g.dataset.exited,
    size: +g.dataset.size, title: g.querySelector('title').textContent,
    bars: [...g.querySelectorAll('rect')].map(r => r.getAttribute('class'))}))"""
"""The chart's days: their numbers, tooltips and which bars are drawn."""


@pytest.fixture(scope="module")
def segments_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Any]]:
    settings = seeded_settings(tmp_path_factory.mktemp("segments"))
    engine = migrated_engine(settings.resolved_database_url)
    truth = seed_segments(engine, datetime.now(UTC))
    try:
        with serving(create_app(settings, db=engine)) as url:
            yield Served(url, settings), truth
    finally:
        engine.dispose()


def test_segments_page_reads_the_right_counts(
    page: Recorded, segments_server: tuple[Served, SegmentTruth], artifacts: Path
) -> None:
    served, truth = segments_server
    tab = page.page
    sign_in(tab, served, served.token, then="/dashboard")
    with tab.expect_navigation():
        tab.click("header nav >> text=Segments")
    assert urlsplit(tab.url).path == "/dashboard/segments"
    shot(tab, artifacts, "segments")

    listed = {r["name"]: r for r in tab.evaluate(ROWS, "segments")}
    assert {name: int(r["members"]) for name, r in listed.items()} == truth.members
    assert (listed[truth.computed]["kind"], listed[truth.computed]["status"]) == (
        "computed",
        "ready",
    )
    assert (listed[truth.manual]["kind"], listed[truth.manual]["status"]) == ("manual", "ready")

    with tab.expect_navigation():
        tab.click(f"#segments >> text={truth.computed}")
    assert urlsplit(tab.url).path == f"/dashboard/segments/{truth.computed}"
    shot(tab, artifacts, "segment")

    assert tab.inner_text("#segment-members") == str(truth.members[truth.computed])
    chart = {d["day"]: d for d in tab.evaluate(DAYS)}
    assert len(chart) == 30
    assert {
        day: (d["entered"], d["exited"], d["size"])
        for day, d in chart.items()
        if d["entered"] or d["exited"] or d["size"]
    } == truth.activity
    exit_day = chart[truth.day(1)]
    assert exit_day["bars"] == ["exited"]
    assert exit_day["title"] == f"{truth.day(1)}: 0 entered, 1 exited, 2 at the day's end"
    assert chart[truth.day(3)]["bars"] == ["entered"]
    # The per-day table says the same, once opened.
    tab.click("text=Per day (table)")
    table = {r["day"]: r for r in tab.evaluate(ROWS, "segment-days")}
    assert {
        day: (int(table[day]["entered"]), int(table[day]["exited"]), int(table[day]["size"]))
        for day in truth.activity
    } == truth.activity

    members = tab.evaluate(ROWS, "segment-member-list")
    assert [m["contact"] for m in members] == list(truth.member_ids)

    member = truth.member_ids[0]
    with tab.expect_navigation():
        tab.click(f"#segment-member-list >> text={member}")
    assert urlsplit(tab.url).path == f"/dashboard/contacts/{member}"
    shot(tab, artifacts, "contact-segments")

    held = {r["segment"]: r for r in tab.evaluate(ROWS, "contact-segments")}
    assert set(held) == {truth.computed, truth.manual}
    assert held[truth.computed]["reason"] == "lead.graded for s1"
    assert held[truth.computed]["since"] == f"{truth.day(3)} 09:00 UTC"
    assert held[truth.manual]["reason"] == truth.list_reason
    only_local(page)
