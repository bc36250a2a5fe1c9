"""The dashboard's segments pages through the real app (``create_app``) over HTTP: the
catalogue, one segment's days and members, the contact page's segments, and what each
kind of bad address gets.

Membership rows are written with ``save_segment_changes`` (``tests.browser.segments_seed``),
the storage function the contact workflow's record activity calls: these pages only read
those rows, so the fixture writes them directly rather than running workflows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from stagecoach.engine.app import create_app
from stagecoach.engine.domain.conditions import grade_in, stage_in
from stagecoach.engine.domain.segments import Segment
from stagecoach.engine.protocol.messages import SegmentChanges
from stagecoach.engine.services.segments.catalog import publish_segments
from stagecoach.engine.services.storage.segments import save_segment_changes
from stagecoach.engine.settings import Settings
from tests.browser.conftest import ADMIN_TOKEN, seeded_settings
from tests.browser.segments_seed import COMPUTED, SegmentTruth, seed_segments

FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return seeded_settings(tmp_path)


def _client(db_engine: Engine, settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, db=db_engine)
    with TestClient(app, follow_redirects=False) as client:
        signed = client.post("/dashboard/login", content=f"token={ADMIN_TOKEN}", headers=FORM)
        assert signed.status_code == 303
        yield client
    app.state.reports.wait(30)


@pytest.fixture
def truth(db_engine: Engine) -> SegmentTruth:
    return seed_segments(db_engine, datetime.now(UTC))


@pytest.fixture
def client(db_engine: Engine, settings: Settings, truth: SegmentTruth) -> Iterator[TestClient]:
    yield from _client(db_engine, settings)


@pytest.fixture
def empty(db_engine: Engine, settings: Settings) -> Iterator[TestClient]:
    yield from _client(db_engine, settings)


def rows(html: str, table: str) -> list[dict[str, str]]:
    """The cells of ``table``'s body rows by their ``data-column``, tags stripped."""
    body = re.search(rf'<table id="{table}">.*?<tbody>(.*?)</tbody>', html, re.S)
    assert body, f"no table {table}"
    out = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body.group(1), re.S):
        cells = re.findall(r'<td[^>]*data-column="([^"]+)"[^>]*>(.*?)</td>', row, re.S)
        out.append({name: re.sub(r"<[^>]+>", "", value).strip() for name, value in cells})
    return out


# --- sign-in ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/dashboard/segments", "/dashboard/segments/a-grade-leads"])
def test_segments_pages_send_strangers_to_the_login(
    db_engine: Engine, settings: Settings, path: str
) -> None:
    with TestClient(create_app(settings, db=db_engine), follow_redirects=False) as stranger:
        answer = stranger.get(path)

    assert answer.status_code == 303
    assert answer.headers["location"] == f"/dashboard/login?next={path}"


# --- the catalogue --------------------------------------------------------------------------


def test_segments_page_lists_every_segment_with_kind_members_and_status(
    client: TestClient, truth: SegmentTruth
) -> None:
    answer = client.get("/dashboard/segments")

    assert answer.status_code == 200
    assert answer.headers["content-security-policy"].startswith("default-src 'none'")
    listed = rows(answer.text, "segments")
    assert listed == [
        {
            "name": truth.computed,
            "description": COMPUTED.description,
            "kind": "computed",
            "members": "2",
            "status": "ready",
        },
        {
            "name": truth.manual,
            "description": "Met at the Shanghai trade show",
            "kind": "manual",
            "members": "1",
            "status": "ready",
        },
    ]
    assert f'href="/dashboard/segments/{truth.computed}"' in answer.text
    assert '<a href="/dashboard/segments" aria-current="page">Segments</a>' in answer.text


def test_segments_page_with_nothing_published_says_how_to_publish(empty: TestClient) -> None:
    answer = empty.get("/dashboard/segments")

    assert answer.status_code == 200
    assert 'id="segments"' not in answer.text
    assert "No segments are published yet" in answer.text


def test_nav_links_to_the_segments_page_from_every_page(client: TestClient) -> None:
    answer = client.get("/dashboard/contacts/s1")

    assert '<a href="/dashboard/segments">Segments</a>' in answer.text


def test_a_changed_computed_segment_is_backfilling_and_counts_the_previous_version(
    client: TestClient, db_engine: Engine, truth: SegmentTruth
) -> None:
    changed = Segment(
        truth.computed, COMPUTED.description, when=stage_in("lead") & grade_in("A", "B")
    )
    publish_segments(db_engine, [changed.spec()], source="test")  # contacts exist now

    listed = {r["name"]: r for r in rows(client.get("/dashboard/segments").text, "segments")}
    page = client.get(f"/dashboard/segments/{truth.computed}").text

    assert listed[truth.computed]["members"] == "2"
    assert listed[truth.computed]["status"] == "backfilling (counting the previous version)"
    assert 'id="segment-status" class="status-backfilling">backfilling<' in page
    assert "shows the members and changes of the previous version" in page
    assert [r["contact"] for r in rows(page, "segment-member-list")] == list(truth.member_ids)


# --- one segment ----------------------------------------------------------------------------


def test_segment_page_shows_size_entries_and_exits_per_day(
    client: TestClient, truth: SegmentTruth
) -> None:
    answer = client.get(f"/dashboard/segments/{truth.computed}")

    assert answer.status_code == 200
    html = answer.text
    assert re.search(r'id="segment-members" data-value="2">2</strong> members', html)
    days = {r["day"]: r for r in rows(html, "segment-days")}
    assert len(days) == 30
    got = {
        day: (int(r["entered"]), int(r["exited"]), int(r["size"]))
        for day, r in days.items()
        if day in truth.activity
    }
    assert got == truth.activity
    quiet = [r for day, r in days.items() if day < truth.day(3)]
    assert {(r["entered"], r["exited"], r["size"]) for r in quiet} == {("0", "0", "0")}
    # The chart carries the same numbers, one <g> per day.
    marks = re.findall(
        r'<g class="day" data-day="([^"]+)" data-entered="(\d+)" data-exited="(\d+)"'
        r' data-size="(\d+)">',
        html,
    )
    assert len(marks) == 30
    assert {d: (int(e), int(x), int(s)) for d, e, x, s in marks if d in truth.activity} == (
        truth.activity
    )
    definition = re.search(r'<pre class="definition">(.*?)</pre>', html, re.S)
    assert definition, "no definition shown"
    shown = json.loads(unescape(definition.group(1)))
    assert shown == COMPUTED.spec().to_dict()["condition"]
    assert "<script" not in html  # an SVG, no script


def test_segment_page_lists_members_linking_to_their_contact_pages(
    client: TestClient, truth: SegmentTruth
) -> None:
    html = client.get(f"/dashboard/segments/{truth.computed}").text

    members = rows(html, "segment-member-list")
    assert [m["contact"] for m in members] == list(truth.member_ids)
    assert members[0]["reason"] == "lead.graded for s1"
    assert members[0]["since"] == f"{truth.day(3)} 09:00 UTC"
    for contact in truth.member_ids:
        assert f'href="/dashboard/contacts/{contact}"' in html
    assert 'id="members-next"' not in html  # one page


def test_manual_segment_page_shows_the_list_and_who_added(
    client: TestClient, truth: SegmentTruth
) -> None:
    html = client.get(f"/dashboard/segments/{truth.manual}").text

    assert "A manual list" in html
    [member] = rows(html, "segment-member-list")
    assert (member["contact"], member["reason"]) == ("s1", truth.list_reason)
    days = {r["day"]: r for r in rows(html, "segment-days")}
    assert (days[truth.day(2)]["entered"], days[truth.day(2)]["size"]) == ("1", "1")


def test_members_are_paged_by_contact_id(
    client: TestClient, db_engine: Engine, truth: SegmentTruth
) -> None:
    at = datetime.now(UTC) - timedelta(hours=1)
    version = COMPUTED.spec().version
    for n in range(60):
        contact = f"p{n:03d}"
        change = {"segment": truth.computed, "version": version, "entered": True}
        save_segment_changes(
            db_engine,
            SegmentChanges(
                key=f"{contact}:0",
                contact_id=contact,
                changes=[{**change, "at": at.isoformat(), "reason": "bulk"}],
            ),
        )
    everyone = sorted([*truth.member_ids, *(f"p{n:03d}" for n in range(60))])

    first = client.get(f"/dashboard/segments/{truth.computed}").text
    page1 = [m["contact"] for m in rows(first, "segment-member-list")]
    link = re.search(r'id="members-next" href="([^"]+)"', first)
    assert link, "no Next link on a full page"
    second = client.get(link.group(1).replace("&amp;", "&")).text
    page2 = [m["contact"] for m in rows(second, "segment-member-list")]

    assert page1 == everyone[:50]
    assert link.group(1).endswith(f"?after={everyone[49]}")
    assert page2 == everyone[50:]
    assert 'id="members-next"' not in second
    assert 'id="members-first"' in second
    assert re.search(r'id="segment-members" data-value="62">62</strong>', first)


# --- bad addresses --------------------------------------------------------------------------


def test_unknown_segment_is_a_404_naming_the_known_ones(
    client: TestClient, truth: SegmentTruth
) -> None:
    answer = client.get("/dashboard/segments/a-grade-lead")

    assert answer.status_code == 404
    assert "No such segment" in answer.text
    assert "segment &#39;a-grade-lead&#39; is not published" in answer.text
    assert f"did you mean &#39;{truth.computed}&#39;" in answer.text
    assert f"use one of: {truth.computed}, {truth.manual}" in answer.text


def test_unknown_segment_with_none_published_says_so(empty: TestClient) -> None:
    answer = empty.get("/dashboard/segments/anything")

    assert answer.status_code == 404
    assert "none yet (deploy a project with segments)" in answer.text


@pytest.mark.parametrize("after", ["", "x" * 65])
def test_a_page_after_something_that_is_no_contact_id_is_a_400(
    client: TestClient, truth: SegmentTruth, after: str
) -> None:
    answer = client.get(f"/dashboard/segments/{truth.computed}", params={"after": after})

    assert answer.status_code == 400
    assert "is not a contact id (1 to 64 characters)" in answer.text


def test_a_page_after_the_last_member_is_empty_with_a_way_back(
    client: TestClient, truth: SegmentTruth
) -> None:
    html = client.get(f"/dashboard/segments/{truth.computed}", params={"after": "zzz"}).text

    assert 'id="segment-member-list"' not in html
    assert "No members after zzz." in html
    assert 'id="members-first"' in html


def test_a_database_that_fails_the_read_is_a_503_and_the_contact_page_still_opens(
    client: TestClient, db_engine: Engine, truth: SegmentTruth
) -> None:
    with db_engine.begin() as connection:  # a schema the queries cannot read
        connection.execute(text("DROP TABLE segment_members"))

    listing = client.get("/dashboard/segments")
    one = client.get(f"/dashboard/segments/{truth.computed}")
    contact = client.get("/dashboard/contacts/s1")

    assert (listing.status_code, one.status_code) == (503, 503)
    assert "The database did not answer" in listing.text
    assert "segment_members" in listing.text
    assert contact.status_code == 200
    assert "Segments not shown: the database did not answer." in contact.text


# --- the contact page -----------------------------------------------------------------------


def test_contact_page_lists_its_segments_with_since_and_why(
    client: TestClient, truth: SegmentTruth
) -> None:
    html = client.get("/dashboard/contacts/s1").text

    listed = rows(html, "contact-segments")
    assert listed == [
        {
            "segment": truth.computed,
            "since": f"{truth.day(3)} 09:00 UTC",
            "reason": "lead.graded for s1",
        },
        {
            "segment": truth.manual,
            "since": f"{truth.day(2)} 08:00 UTC",
            "reason": truth.list_reason,
        },
    ]
    assert f'href="/dashboard/segments/{truth.computed}"' in html


def test_contact_page_of_a_contact_that_left_shows_no_segment(client: TestClient) -> None:
    html = client.get("/dashboard/contacts/s2").text

    assert 'id="contact-segments"' not in html
    assert "In no segment." in html


# --- on PostgreSQL --------------------------------------------------------------------------


@pytest.mark.postgres
def test_segment_and_contact_pages_read_the_same_on_postgresql(
    client: TestClient, truth: SegmentTruth
) -> None:
    """PostgreSQL hands times back with their zone (SQLite without): the same
    days, counts and UTC times as on SQLite."""
    html = client.get(f"/dashboard/segments/{truth.computed}").text
    days = {r["day"]: r for r in rows(html, "segment-days")}
    listed = rows(client.get("/dashboard/contacts/s1").text, "contact-segments")

    assert {
        day: (int(days[day]["entered"]), int(days[day]["exited"]), int(days[day]["size"]))
        for day in truth.activity
    } == truth.activity
    assert [m["contact"] for m in rows(html, "segment-member-list")] == list(truth.member_ids)
    assert [(r["segment"], r["since"]) for r in listed] == [
        (truth.computed, f"{truth.day(3)} 09:00 UTC"),
        (truth.manual, f"{truth.day(2)} 08:00 UTC"),
    ]
