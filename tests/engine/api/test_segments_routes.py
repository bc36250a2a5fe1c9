"""``/v1/segments`` over HTTP, on the app ``create_app`` builds and a migrated database:
the catalogue, one segment's days, paginated members, manual list changes by JSON and
CSV, and what each kind of bad input answers. Membership rows for the reading routes are
written as the contact workflow's record activity writes them (``save_segment_changes``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from stagecoach.engine.domain.conditions import grade_in
from stagecoach.engine.domain.segments import LIST_ADDED, LIST_REMOVED, Segment, SegmentSpec
from stagecoach.engine.protocol.messages import SegmentChanges
from stagecoach.engine.services.segments.catalog import MANUAL_VERSION, publish_segments
from stagecoach.engine.services.storage.models import Event, Identity, Outbox
from stagecoach.engine.services.storage.segments import save_segment_changes

TOKEN = "segments-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CSV = {**ADMIN, "Content-Type": "text/csv"}

pytestmark = pytest.mark.settings(admin_token=TOKEN)

VIP = Segment("vip-list", description="Uploaded by the events team", manual=True)
A_GRADE = Segment("a-grade", description="Grade A", when=grade_in("A"))


@pytest.fixture
def specs(db_engine: Engine) -> dict[str, SegmentSpec]:
    made = {s.name: s.spec() for s in (VIP, A_GRADE)}
    publish_segments(db_engine, list(made.values()))
    return made


def _enter(db: Engine, spec: SegmentSpec, contact_id: str, at: datetime, *, n: int = 1) -> None:
    version = MANUAL_VERSION if spec.manual else spec.version
    change = {"segment": spec.name, "version": version, "entered": True, "at": at.isoformat()}
    save_segment_changes(
        db,
        SegmentChanges(
            key=f"{contact_id}:{n}",
            contact_id=contact_id,
            changes=[{**change, "reason": "grade became A"}],
        ),
    )


def _leave(db: Engine, spec: SegmentSpec, contact_id: str, at: datetime, *, n: int) -> None:
    change = {"segment": spec.name, "version": spec.version, "entered": False}
    save_segment_changes(
        db,
        SegmentChanges(
            key=f"{contact_id}:{n}",
            contact_id=contact_id,
            changes=[{**change, "at": at.isoformat(), "reason": "grade became B"}],
        ),
    )


def test_every_route_needs_the_admin_token(api: TestClient, specs: object) -> None:
    for method, path in [
        ("GET", "/v1/segments"),
        ("GET", "/v1/segments/vip-list"),
        ("GET", "/v1/segments/vip-list/members"),
        ("POST", "/v1/segments/vip-list/members"),
        ("POST", "/v1/segments/vip-list/members/remove"),
        ("DELETE", "/v1/segments/vip-list/members/c_1"),
    ]:
        response = api.request(method, path)
        assert response.status_code == 401, (method, path, response.text)


def test_the_catalogue_and_one_segments_days(
    api: TestClient, db_engine: Engine, specs: dict[str, SegmentSpec]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    grade = specs["a-grade"]
    _enter(db_engine, grade, "c_1", now - timedelta(days=40))
    _enter(db_engine, grade, "c_2", now - timedelta(days=2))
    _enter(db_engine, grade, "c_3", now - timedelta(days=2))
    _leave(db_engine, grade, "c_3", now - timedelta(days=1), n=2)

    listed = api.get("/v1/segments", headers=ADMIN)
    assert listed.status_code == 200, listed.text
    by_name = {s["name"]: s for s in listed.json()}
    assert by_name["a-grade"]["kind"] == "computed"
    assert by_name["a-grade"]["members"] == 2
    assert by_name["a-grade"]["condition"] == grade_in("A").to_dict()
    assert by_name["vip-list"] == {
        "name": "vip-list",
        "description": "Uploaded by the events team",
        "kind": "manual",
        "searchable": False,
        "version": specs["vip-list"].version,
        "ready_version": MANUAL_VERSION,
        "status": "ready",
        "members": 0,
        "condition": None,
    }

    detail = api.get("/v1/segments/a-grade", headers=ADMIN)
    assert detail.status_code == 200, detail.text
    days = detail.json()["days"]
    assert len(days) == 30
    assert days[-1]["day"] == now.date().isoformat()
    counts = {d["day"]: (d["entered"], d["exited"], d["size"]) for d in days}
    two_ago = (now - timedelta(days=2)).date().isoformat()
    one_ago = (now - timedelta(days=1)).date().isoformat()
    assert counts[two_ago] == (2, 0, 3)  # c_1 entered before the window
    assert counts[one_ago] == (0, 1, 2)
    assert days[0]["size"] == 1


def test_members_come_a_page_at_a_time_with_the_next_cursor(
    api: TestClient, db_engine: Engine, specs: dict[str, SegmentSpec]
) -> None:
    at = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    for n in range(5):
        _enter(db_engine, specs["a-grade"], f"c_{n}", at)
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if after:
            params["after"] = after
        page = api.get("/v1/segments/a-grade/members", params=params, headers=ADMIN)
        assert page.status_code == 200, page.text
        body = page.json()
        pages += 1
        seen += [m["contact_id"] for m in body["members"]]
        assert all(m["reason"] == "grade became A" for m in body["members"])
        assert body["members"][0]["since"] == "2026-11-22T09:00:00Z"
        after = body["next"]
        if after is None:
            break
    assert seen == [f"c_{n}" for n in range(5)]
    assert pages == 3
    too_big = api.get("/v1/segments/a-grade/members?limit=5000", headers=ADMIN)
    assert too_big.status_code == 422


def test_an_unknown_segment_is_404_naming_the_known_ones(
    api: TestClient, specs: dict[str, SegmentSpec]
) -> None:
    for method, path in [
        ("GET", "/v1/segments/vip"),
        ("GET", "/v1/segments/vip/members"),
        ("POST", "/v1/segments/vip/members"),
        ("POST", "/v1/segments/vip/members/remove"),
        ("DELETE", "/v1/segments/vip/members/c_1"),
    ]:
        body = {"contacts": ["c_1"]} if method == "POST" else None
        response = api.request(method, path, headers=ADMIN, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["detail"] == (
            "segment 'vip' is not published. Fix: use one of: a-grade, vip-list"
        )


def test_adding_by_json_and_csv_stores_outboxed_events_and_reports_rejected_rows(
    api: TestClient, db_engine: Engine, specs: dict[str, SegmentSpec]
) -> None:
    added = api.post(
        "/v1/segments/vip-list/members?actor=ignored",
        json={"contacts": ["li.lei@example.cn", "wang@example.cn"], "actor": "events-team"},
        headers=ADMIN,
    )
    assert added.status_code == 200, added.text
    body = added.json()
    assert (body["stored"], body["created"], body["accepted"], body["rejected"]) == (2, 2, 2, [])
    assert body["actor"] == "events-team"
    li_lei = body["contacts"][0]

    upload = (
        "email,name\nli.lei@example.cn,Li Lei\nhan@example,Han\nzhao@example.cn,Zhao\n,Nobody\n"
    )
    response = api.post(
        "/v1/segments/vip-list/members?actor=crm-sync", content=upload.encode(), headers=CSV
    )
    assert response.status_code == 207, response.text
    result = response.json()
    assert (result["stored"], result["unchanged"], result["accepted"]) == (1, 1, 2)
    assert [(r["line"], r["field"], r["value"]) for r in result["rejected"]] == [
        (3, "email", "han@example"),
        (5, "email", ""),
    ]
    assert "not" in result["rejected"][0]["reason"]
    assert result["rejected"][1]["reason"] == "empty: fill in email"

    with Session(db_engine) as session:
        events = session.exec(
            select(Event).where(col(Event.name) == LIST_ADDED).order_by(col(Event.id))
        ).all()
        outboxed = {o.event_id for o in session.exec(select(Outbox)).all()}
    assert [e.properties["actor"] for e in events] == ["events-team", "events-team", "crm-sync"]
    assert {e.id for e in events} <= outboxed

    removed = api.post(
        "/v1/segments/vip-list/members/remove",
        content=f"contact_id\n{li_lei}\n".encode(),
        headers=CSV,
    )
    assert removed.status_code == 200, removed.text
    assert removed.json()["stored"] == 1
    one = api.delete("/v1/segments/vip-list/members/zhao@example.cn?actor=ops", headers=ADMIN)
    assert one.status_code == 200, one.text
    assert (one.json()["action"], one.json()["stored"]) == ("remove", 1)
    nobody = api.delete("/v1/segments/vip-list/members/c_nobody", headers=ADMIN)
    assert nobody.status_code == 207
    assert "no contact has the id 'c_nobody'" in nobody.json()["rejected"][0]["reason"]
    with Session(db_engine) as session:
        removals = session.exec(select(Event).where(col(Event.name) == LIST_REMOVED)).all()
    assert {e.properties["actor"] for e in removals} == {"api", "ops"}


@pytest.mark.parametrize(
    ("content", "headers", "status", "detail"),
    [
        (b"", CSV, 400, "the uploaded file is empty"),
        (b"email\n", CSV, 400, "the uploaded file has a header and no rows"),
        (
            b"name,phone\nLi,+8613800138000\n",
            CSV,
            400,
            "the uploaded file has no contact_id or email column (its columns: 'name', 'phone')",
        ),
        (b"{not json", {**ADMIN, "Content-Type": "application/json"}, 400, "not JSON"),
        (
            b'{"contacts": []}',
            {**ADMIN, "Content-Type": "application/json"},
            400,
            "contacts: List should have at least 1 item",
        ),
        (b"a@b.cn", {**ADMIN, "Content-Type": "text/plain"}, 415, "'text/plain' is not a list"),
    ],
)
def test_a_body_that_is_not_a_list_is_refused_whole(
    api: TestClient,
    db_engine: Engine,
    specs: dict[str, SegmentSpec],
    content: bytes,
    headers: dict[str, str],
    status: int,
    detail: str,
) -> None:
    response = api.post("/v1/segments/vip-list/members", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    with Session(db_engine) as session:
        assert session.exec(select(Event)).all() == []


def test_a_computed_segment_takes_no_list_changes(
    api: TestClient, db_engine: Engine, specs: dict[str, SegmentSpec]
) -> None:
    response = api.post(
        "/v1/segments/a-grade/members", json={"contacts": ["li.lei@example.cn"]}, headers=ADMIN
    )
    assert response.status_code == 409
    assert response.json()["detail"] == (
        "segment 'a-grade' is computed from its condition, not a manual list: its members"
        " cannot be added or removed by hand. Fix: change its condition in the project, or"
        " use a manual segment: vip-list"
    )
    with Session(db_engine) as session:
        assert session.exec(select(Identity)).all() == []


def test_the_contact_api_lists_the_contacts_segments(
    api: TestClient, db_engine: Engine, specs: dict[str, SegmentSpec]
) -> None:
    added = api.post(
        "/v1/segments/vip-list/members", json={"contacts": ["li.lei@example.cn"]}, headers=ADMIN
    )
    [contact_id] = added.json()["contacts"]
    at = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    _enter(db_engine, specs["a-grade"], contact_id, at)
    detail = api.get("/v1/contacts/li.lei@example.cn", headers=ADMIN)
    assert detail.status_code == 200, detail.text
    assert detail.json()["segments"] == [
        {
            "segment": "a-grade",
            "version": specs["a-grade"].version,
            "since": "2026-11-22T09:00:00Z",
            "reason": "grade became A",
        }
    ]


def test_openapi_documents_the_segment_routes(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths["/v1/segments/{name}/members"]) == {"get", "post"}
    post = paths["/v1/segments/{name}/members"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/json", "text/csv"}
    assert {"200", "207", "400", "401", "404", "409"} <= set(post["responses"])
    assert paths["/v1/segments/{name}"]["get"]["summary"].startswith("One segment")
    assert "adminToken" in str(paths["/v1/segments"]["get"]["security"])


def test_no_generated_request_makes_the_segments_api_fail(
    api_app: FastAPI, specs: dict[str, SegmentSpec]
) -> None:
    """Schemathesis over every segment route, on the published segments' names and any
    other: answers are documented and never a 5xx."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_app)
    operations = [
        ("/v1/segments", "GET"),
        ("/v1/segments/{name}", "GET"),
        ("/v1/segments/{name}/members", "GET"),
        ("/v1/segments/{name}/members", "POST"),
        ("/v1/segments/{name}/members/remove", "POST"),
        ("/v1/segments/{name}/members/{contact_id}", "DELETE"),
    ]
    for path, method in operations:
        operation = schema[path][method]

        @given(case=operation.as_strategy(), name=st.sampled_from([*specs, "nope"]))
        @hypothesis_settings(
            max_examples=25, deadline=None, suppress_health_check=list(HealthCheck)
        )
        def call(case: Any, name: str) -> None:
            if case.path_parameters and "name" in case.path_parameters:
                case.path_parameters["name"] = name
            case.headers = {**(case.headers or {}), **ADMIN}  # a generated token is not ours
            response = case.call()
            assert response.status_code < 500, response.text
            # ignored_auth re-sends the call with made-up tokens, which the failure
            # throttle rightly answers 429 from then on: every route's guard is checked
            # by test_every_route_needs_the_admin_token and tests/security instead.
            case.validate_response(
                response, excluded_checks=[positive_data_acceptance, ignored_auth]
            )

        call()
