"""The admin contacts API through HTTP: who may call it, what a contact looks like, and
what erasure removes and keeps. Temporal is a fake here that records what it is asked;
tests/workflows/test_erasure.py runs the same erasure on the real server."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from stagecoach.engine.api.routes import contacts as contacts_module
from stagecoach.engine.api.routes.contacts import pseudonym
from stagecoach.engine.api.routes.events import create_write_key
from stagecoach.engine.app import create_app
from stagecoach.engine.protocol.messages import (
    ContactView,
    OpenRequest,
    TransitionRecord,
    contact_workflow_id,
)
from stagecoach.engine.services.storage.contacts import open_contact, save_transition
from stagecoach.engine.services.storage.models import (
    Consent,
    Contact,
    Delivery,
    Event,
    Identity,
    JourneyEnrolment,
    Merge,
    Outbox,
    Referral,
    StageTransition,
    Suppression,
)
from stagecoach.engine.settings import Settings
from tests.helpers import migrated_engine

TOKEN = "admin-token-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
EMAIL = "li.lei@example.cn"


# --- a fake Temporal ----------------------------------------------------------------------


def _not_found(what: str) -> RPCError:
    return RPCError(f"{what} not found", RPCStatusCode.NOT_FOUND, b"")


@dataclass
class _Execution:
    id: str
    run_id: str


class _Handle:
    def __init__(self, temporal: FakeTemporal, workflow_id: str) -> None:
        self._temporal = temporal
        self._id = workflow_id

    async def describe(self, **_: Any) -> Any:
        self._temporal.calls.append(("describe", self._id))
        for hook in self._temporal.on_describe:
            hook(self._id)
        if self._temporal.failure is not None:
            raise self._temporal.failure
        runs = self._temporal.runs.get(self._id)
        if not runs:
            raise _not_found("workflow execution")
        running = self._id in self._temporal.running
        status = WorkflowExecutionStatus.RUNNING if running else WorkflowExecutionStatus.COMPLETED
        return SimpleNamespace(run_id=runs[-1], status=status)

    async def query(self, name: str, **_: Any) -> Any:
        if self._temporal.hang:
            await asyncio.sleep(3600)
        view = self._temporal.views.get(self._id)
        if view is None:
            raise _not_found("workflow execution")
        return view


@dataclass
class FakeTemporal:
    """What contact_view, describe, list_workflows and DeleteWorkflowExecution need.

    Deleting a running execution terminates it, as the server does."""

    runs: dict[str, list[str]] = field(default_factory=dict)
    """workflow id -> run ids, as visibility lists them."""
    running: set[str] = field(default_factory=set)
    views: dict[str, ContactView] = field(default_factory=dict)
    failure: RPCError | None = None
    hang: bool = False
    on_describe: list[Callable[[str], None]] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    namespace: str = "default"

    @property
    def workflow_service(self) -> FakeTemporal:
        return self

    def start(self, contact_id: str, *runs: str, running: bool = True) -> str:
        workflow_id = contact_workflow_id(contact_id)
        self.runs[workflow_id] = list(runs or ("run-1",))
        if running:
            self.running.add(workflow_id)
        return workflow_id

    def get_workflow_handle(self, workflow_id: str, **_: Any) -> _Handle:
        return _Handle(self, workflow_id)

    async def _list(self, workflow_id: str) -> AsyncIterator[_Execution]:
        for run_id in self.runs.get(workflow_id, []):
            yield _Execution(workflow_id, run_id)

    def list_workflows(self, query: str, **_: Any) -> AsyncIterator[_Execution]:
        workflow_id = query.split("'")[1]
        self.calls.append(("list", workflow_id))
        return self._list(workflow_id)

    async def delete_workflow_execution(
        self, request: DeleteWorkflowExecutionRequest, **_: Any
    ) -> None:
        execution = request.workflow_execution
        assert request.namespace == "default"
        runs = self.runs.get(execution.workflow_id, [])
        run_id = execution.run_id or (runs[-1] if runs else "")
        if run_id not in runs:
            raise _not_found("workflow execution")
        runs.remove(run_id)
        self.running.discard(execution.workflow_id)
        self.deleted.append((execution.workflow_id, run_id))


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite file; a fresh PostgreSQL database for tests marked ``postgres``."""
    if request.node.get_closest_marker("postgres"):
        yield request.getfixturevalue("db_engine")
        return
    db = migrated_engine(f"sqlite:///{tmp_path}/contacts.db")
    yield db
    db.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path}/contacts.db",
        admin_token=SecretStr(TOKEN),
    )


@pytest.fixture
def temporal() -> FakeTemporal:
    return FakeTemporal()


def _app(settings: Settings, engine: Engine, temporal: FakeTemporal | None) -> FastAPI:
    async def factory() -> Any:
        return temporal

    app = create_app(settings, db=engine)
    # Only the routes read app.state.temporal here: create_app(temporal=...) would also
    # start the outbox forwarder, which the fake cannot serve.
    app.state.temporal = factory if temporal is not None else None
    return app


@pytest.fixture
def api(settings: Settings, engine: Engine, temporal: FakeTemporal) -> Iterator[TestClient]:
    app = _app(settings, engine, temporal)
    with TestClient(app, headers=ADMIN) as client:
        yield client
    app.state.reports.wait(30)  # the analytics sync an erasure starts ends with the test


@pytest.fixture
def offline(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """The API without Temporal."""
    with TestClient(_app(settings, engine, None), headers=ADMIN) as client:
        yield client


@dataclass(frozen=True)
class Person:
    survivor: str
    merged: str


def _contact_of(engine: Engine, message_id: str) -> str:
    with Session(engine) as session:
        return (
            session.exec(select(Event).where(col(Event.message_id) == message_id)).one().contact_id
        )


@pytest.fixture
def person(offline: TestClient, engine: Engine) -> Person:
    """Li Lei: browsed anonymously, identified with email and consent, downloaded a
    whitepaper; the alias merged the anonymous contact into hers. She has a stage history,
    two deliveries (one bounced) and a suppressed address."""
    key = create_write_key(engine, "web", source="web")
    messages = [
        (
            "page",
            {
                "anonymousId": "a-77",
                "messageId": "m-page",
                "name": "Pricing",
                "properties": {"url": "https://example.cn/pricing?email=li.lei@example.cn"},
                "context": {"ip": "203.0.113.7"},
            },
        ),
        (
            "identify",
            {
                "userId": "u-1001",
                "messageId": "m-identify",
                "traits": {
                    "email": "Li.Lei@Example.cn",
                    "consent": {"email": True},
                    "consent_wording": "I agree to receive product news by email.",
                },
            },
        ),
        (
            "track",
            {
                "userId": "u-1001",
                "messageId": "m-track",
                "event": "content.downloaded",
                "properties": {"content_id": "wp-digital-transformation", "name": "Li Lei"},
            },
        ),
        ("alias", {"previousId": "a-77", "userId": "u-1001", "messageId": "m-alias"}),
    ]
    for kind, body in messages:
        if kind == "alias":
            survivor, merged = _contact_of(engine, "m-identify"), _contact_of(engine, "m-page")
        response = offline.post(f"/v1/{kind}", json=body, auth=(key, ""))
        assert response.status_code == 200, response.text
    with Session(engine) as session:
        assert session.get(Merge, merged) is not None  # the alias merged them
    now = datetime.now(UTC)
    assert open_contact(engine, OpenRequest(contact_id=survivor, at=now), "subscriber")
    for contact_id, n, stage, reason in (
        (merged, 1, "merged", "merged into the identified contact"),
        (survivor, 2, "lead", "Li Lei called sales, wants a demo"),
    ):
        save_transition(
            engine,
            TransitionRecord(
                key=f"{contact_id}:{n}",
                contact_id=contact_id,
                transition={
                    "to_stage": stage,
                    "at": now.isoformat(),
                    "reason": reason,
                    "source": "cli",
                    "kind": "manual",
                },
                contact={"stage": stage, "locale": "zh-CN", "traits": {"email": EMAIL}},
            ),
        )
    with Session(engine) as session:
        session.add(
            Delivery(
                idempotency_key=f"{survivor}:b2b_nurture|v1|whitepaper|1",
                contact_id=survivor,
                journey="b2b_nurture",
                journey_version="v1",
                step_id="whitepaper",
                channel="email",
                content_id="wp-digital-transformation",
                status="sent",
                provider_message_id="pm-123",
                sent_at=now,
            )
        )
        session.add(
            Delivery(
                idempotency_key=f"{merged}:welcome|v1|hello|1",
                contact_id=merged,
                journey="welcome",
                journey_version="v1",
                step_id="hello",
                channel="email",
                status="failed",
                error=f"550 5.1.1 <{EMAIL}>: mailbox unavailable",
            )
        )
        session.add(
            JourneyEnrolment(
                contact_id=merged,
                journey="welcome",
                version="v1",
                status="exited",
                reason=f"delivery_failed: hello: 550 <{EMAIL}>",
                trail=[
                    {"step": "hello", "kind": "send", "outcome": ""},
                    {"step": "hello", "kind": "send", "outcome": f"failed: 550 <{EMAIL}>"},
                ],
                started_at=now,
                finished_at=now,
            )
        )
        session.add(
            Suppression(channel="email", address=EMAIL, reason="unsubscribe", contact_id=survivor)
        )
        session.commit()
    return Person(survivor=survivor, merged=merged)


def _rows(engine: Engine, model: Any, *where: Any) -> list[Any]:
    with Session(engine) as session:
        return list(session.exec(select(model).where(*where)).all())


def _aggregates(engine: Engine) -> dict[str, Counter[Any]]:
    """What reports count: contacts by stage, events by name and day, sends by step."""
    return {
        "stages": Counter(c.stage for c in _rows(engine, Contact)),
        "events": Counter((e.name, e.occurred_at.date()) for e in _rows(engine, Event)),
        "sends": Counter((d.journey, d.step_id, d.status) for d in _rows(engine, Delivery)),
        "enrolments": Counter((j.journey, j.status) for j in _rows(engine, JourneyEnrolment)),
        "transitions": Counter(t.to_stage for t in _rows(engine, StageTransition)),
    }


# --- authentication -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": b"Bearer " + "jeton-é".encode("latin-1")},
    ],
    ids=["none", "basic", "wrong", "longer", "non-ascii"],
)
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_admin_routes_refuse_a_missing_or_wrong_token(
    settings: Settings, engine: Engine, headers: dict[str, Any], method: str
) -> None:
    with TestClient(_app(settings, engine, None)) as client:
        response = client.request(method, "/v1/contacts/c_1", headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in response.json()["detail"]


@pytest.mark.parametrize("token", [None, "", "   "])
def test_admin_routes_are_off_while_the_admin_token_is_unset(
    tmp_path: Path, engine: Engine, token: str | None
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path}/contacts.db",
        admin_token=SecretStr(token) if token is not None else None,
    )
    with TestClient(_app(settings, engine, None), headers=ADMIN) as client:
        response = client.get("/v1/contacts/c_1")
    assert response.status_code == 503
    assert "STAGECOACH_ADMIN_TOKEN" in response.json()["detail"]


# --- GET ----------------------------------------------------------------------------------


def test_an_unknown_contact_is_404_with_a_message(api: TestClient) -> None:
    response = api.get("/v1/contacts/c_nobody")
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "no contact with id, user_id, anonymous_id, openid, unionid or crm_id 'c_nobody'" in (
        detail
    )
    assert "ingestion API answered" not in detail  # it answers no contact id


# --- finding a contact by the ids the integrator knows -----------------------------------

OPENID = "oWx1f2G3h4J5k6L7m8N9p0QrStUv"
UNIONID = "o6_bmasdasdsad6_2sgVt7hMZOPfL"


def _identify(client: TestClient, key: str, message_id: str, **body: Any) -> str:
    response = client.post("/v1/identify", json={"messageId": message_id, **body}, auth=(key, ""))
    assert response.status_code == 200, response.text
    return str(response.json()["messageId"]) if "messageId" in response.json() else message_id


@pytest.fixture
def wang(offline: TestClient, engine: Engine) -> str:
    """Wang Fang as a Segment client sends her: userId, an anonymous id, email, phone and
    WeChat ids, with the case and spacing people type."""
    key = create_write_key(engine, "shop", source="shop")
    _identify(
        offline,
        key,
        "m-wang",
        userId="u-2002",
        anonymousId="dev-9f3c",
        traits={
            "email": "  Wang.Fang@Example.COM ",
            "phone": "+86 139-0013-9000",
            "wechat_openid": OPENID,
            "wechat_unionid": UNIONID,
            "name": "Wang Fang",
        },
    )
    return _contact_of(engine, "m-wang")


@pytest.mark.parametrize(
    ("value", "by", "matched"),
    [
        ("u-2002", None, "user_id u-2002"),
        ("u-2002", "user_id", "user_id u-2002"),
        ("dev-9f3c", None, "anonymous_id dev-9f3c"),
        ("wang.fang@example.com", None, "email wang.fang@example.com"),
        ("WANG.FANG@example.com", "email", "email wang.fang@example.com"),
        ("+8613900139000", None, "phone +8613900139000"),
        ("+86 139 0013 9000", "phone", "phone +8613900139000"),
        ("008613900139000", None, "phone +8613900139000"),
        ("139-0013-9000", None, "phone +8613900139000"),  # national, in the default region
        ("(139) 0013 9000", "phone", "phone +8613900139000"),
        (OPENID, None, f"openid {OPENID}"),
        (OPENID, "openid", f"openid {OPENID}"),
        (UNIONID, "unionid", f"unionid {UNIONID}"),
    ],
)
def test_a_contact_is_found_by_each_id_the_integrator_knows(
    offline: TestClient, wang: str, value: str, by: str | None, matched: str
) -> None:
    params = {"by": by} if by else {}
    response = offline.get(f"/v1/contacts/{quote(value, safe='')}", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["merged_into"]) == (wang, None)
    assert body["traits"]["name"] == "Wang Fang"
    response = offline.delete(f"/v1/contacts/{quote(value, safe='')}", params=params)
    assert response.status_code == 503  # found (not 404); erasure needs Temporal
    assert "nothing was erased" in response.json()["detail"]
    assert matched  # what find_contacts reports is checked by the 409 test


def test_a_merged_contacts_old_ids_lead_to_the_survivor(
    offline: TestClient, person: Person
) -> None:
    for value, merged_into in (
        (person.merged, person.survivor),  # the loser's c_ id
        ("a-77", None),  # the loser's anonymous id, moved to the survivor
    ):
        response = offline.get(f"/v1/contacts/{value}")
        assert response.status_code == 200, response.text
        assert (response.json()["id"], response.json()["merged_into"]) == (
            person.survivor,
            merged_into,
        )
    by_email = offline.get("/v1/contacts/Li.Lei@Example.cn").json()
    assert by_email["id"] == person.survivor


@pytest.mark.parametrize(
    ("path", "params", "detail"),
    [
        ("nobody@example.com", {}, "no contact with email nobody@example.com"),
        (
            "Nobody@Example.com",
            {"by": "email"},
            "no contact with email nobody@example.com (from 'Nobody@Example.com')",
        ),
        ("+8613700137000", {}, "no contact with phone +8613700137000 or id, user_id"),
        ("+8613700137000", {"by": "phone"}, "no contact with phone +8613700137000"),
        ("u-404", {"by": "user_id"}, "no contact with user_id 'u-404'"),
        (OPENID, {"by": "openid"}, f"no contact with openid '{OPENID}'"),
    ],
)
def test_no_match_is_a_404_naming_what_was_searched(
    offline: TestClient, path: str, params: dict[str, str], detail: str
) -> None:
    response = offline.get(f"/v1/contacts/{quote(path, safe='')}", params=params)
    assert response.status_code == 404, response.text
    assert response.json()["detail"].startswith(detail)


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("li.lei@", {}, "email"),  # auto: an @ makes it an email address
        ("u-1001", {"by": "email"}, "email"),
        ("call me", {"by": "phone"}, "phone"),
        ("+1", {}, "phone"),  # auto: a + makes it a phone number
        ("+86 12", {"by": "phone"}, "phone"),
    ],
)
def test_a_malformed_value_is_400_naming_the_field(
    offline: TestClient, path: str, params: dict[str, str], field: str
) -> None:
    response = offline.get(f"/v1/contacts/{quote(path, safe='')}", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith(f"{field}: ")
    assert "Fix:" in response.json()["detail"]


def test_an_unknown_kind_of_id_is_refused_naming_by(offline: TestClient) -> None:
    response = offline.get("/v1/contacts/u-1", params={"by": "passport"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "by"]


def test_a_value_that_matches_several_people_is_409_listing_them(
    offline: TestClient, engine: Engine
) -> None:
    key = create_write_key(engine, "crm", source="crm")
    _identify(offline, key, "m-digits-user", userId="13800138001")
    _identify(offline, key, "m-phone", userId="u-phone", traits={"phone": "+8613800138001"})
    by_user_id, by_phone = _contact_of(engine, "m-digits-user"), _contact_of(engine, "m-phone")
    response = offline.get("/v1/contacts/13800138001")
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    assert f"{by_user_id} (user_id 13800138001)" in detail
    assert f"{by_phone} (phone +8613800138001)" in detail
    assert "by=" in detail
    assert offline.get("/v1/contacts/13800138001?by=user_id").json()["id"] == by_user_id
    assert offline.get("/v1/contacts/13800138001?by=phone").json()["id"] == by_phone


def test_the_api_shows_the_traits_of_a_referral_signup(offline: TestClient, engine: Engine) -> None:
    """From nothing: a promoter identified through the API, a friend through the referral
    form; the friend's traits (never in a stage change yet) are shown, found by email."""
    key = create_write_key(engine, "web", source="web")
    _identify(offline, key, "m-promoter", userId="u-promoter", traits={"email": "p@example.cn"})
    promoter = _contact_of(engine, "m-promoter")
    issued = offline.post(f"/v1/contacts/{promoter}/referral-code")
    assert issued.status_code == 200, issued.text
    signup = offline.post(
        f"/r/{issued.json()['code']}",
        json={
            "name": "韩梅梅",
            "email": "Han.Meimei@Example.cn",
            "phone": "13900139001",
            "consent": True,
        },
        headers={"Accept": "application/json"},
    )
    assert signup.status_code == 200, signup.text
    body = offline.get("/v1/contacts/han.meimei@example.cn").json()
    assert body["traits"]["email"] == "han.meimei@example.cn"
    assert body["traits"]["phone"] == "+8613900139001"
    assert body["traits"]["name"] == "韩梅梅"
    assert body["traits"]["referred_by"] == promoter
    assert "consent" not in body["traits"]  # consent is shown as records, not a trait
    assert body["state"]["attributes"] == body["traits"]
    assert offline.get("/v1/contacts/+8613900139001").json()["id"] == body["id"]


def test_a_contact_shows_identities_history_consent_merges_and_deliveries(
    offline: TestClient, person: Person
) -> None:
    response = offline.get(f"/v1/contacts/{person.survivor}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == person.survivor
    assert body["merged_into"] is None
    assert (body["stage"], body["locale"]) == ("lead", "zh-CN")
    # The row's traits over those of the events stored before it (as the workflow folds
    # them): the identify's consent wording is a trait too; consent itself is not.
    assert body["traits"] == {
        "email": EMAIL,
        "consent_wording": "I agree to receive product news by email.",
    }
    assert {(i["kind"], i["value"]) for i in body["identities"]} == {
        ("user_id", "u-1001"),
        ("anonymous_id", "a-77"),
        ("email", EMAIL),
    }
    assert [t["to_stage"] for t in body["transitions"] if t["contact_id"] == person.survivor] == [
        "subscriber",
        "lead",
    ]
    [consent] = body["consents"]
    assert (consent["channel"], consent["granted"]) == ("email", True)
    assert consent["wording"] == "I agree to receive product news by email."
    [merge] = body["merges"]
    assert (merge["merged_id"], merge["into_id"]) == (person.merged, person.survivor)
    assert {d["contact_id"] for d in body["deliveries"]} == {person.survivor, person.merged}
    assert body["event_count"] == 4
    state = body["state"]
    assert (state["source"], state["stage"]) == ("database", "lead")
    assert "not wired" in state["note"]


def test_recent_deliveries_are_limited(offline: TestClient, person: Person) -> None:
    body = offline.get(f"/v1/contacts/{person.survivor}", params={"deliveries": 1}).json()
    assert len(body["deliveries"]) == 1
    assert offline.get(f"/v1/contacts/{person.survivor}?deliveries=-1").status_code == 422


def test_a_merged_id_answers_with_its_survivor(offline: TestClient, person: Person) -> None:
    response = offline.get(f"/v1/contacts/{person.merged}")
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["merged_into"]) == (person.survivor, person.survivor)


def test_the_state_is_live_from_the_workflow_when_it_answers(
    api: TestClient, temporal: FakeTemporal, person: Person
) -> None:
    workflow_id = temporal.start(person.survivor)
    temporal.views[workflow_id] = ContactView(
        contact_id=person.survivor,
        stage="prospect",
        score=42.5,
        grade="B",
        journeys=[{"journey": "b2b_nurture", "step": "wait-3d"}],
        state={
            "stage_entered_at": "2026-11-22T09:00:00+00:00",
            "attributes": {"email": EMAIL},
            "tags": ["vip"],
            "consent": {"email": True},
        },
        run_events=4,
    )
    state = api.get(f"/v1/contacts/{person.survivor}").json()["state"]
    assert state["source"] == "workflow"
    assert (state["stage"], state["score"], state["grade"]) == ("prospect", 42.5, "B")
    assert (state["tags"], state["consent"], state["run_events"]) == (["vip"], {"email": True}, 4)
    assert state["note"] is None


def test_the_stored_row_stands_in_when_the_workflow_is_missing_or_silent(
    api: TestClient, temporal: FakeTemporal, person: Person, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = api.get(f"/v1/contacts/{person.survivor}").json()["state"]
    assert (state["source"], state["stage"]) == ("database", "lead")
    assert "not started" in state["note"]
    temporal.start(person.survivor)
    temporal.hang = True
    monkeypatch.setattr(contacts_module, "QUERY_TIMEOUT", 0.05)
    state = api.get(f"/v1/contacts/{person.survivor}").json()["state"]
    assert state["source"] == "database"
    assert "did not answer" in state["note"]


def test_the_stored_row_stands_in_when_temporal_is_unreachable(
    settings: Settings, engine: Engine, person: Person
) -> None:
    async def unreachable() -> Any:
        raise RuntimeError("connection refused")

    app = _app(settings, engine, None)
    app.state.temporal = unreachable
    with TestClient(app, headers=ADMIN) as client:
        response = client.get(f"/v1/contacts/{person.survivor}")
        assert response.status_code == 200
        assert "connection refused" in response.json()["state"]["note"]
        erase = client.delete(f"/v1/contacts/{person.survivor}")
    assert erase.status_code == 503
    assert "nothing was erased" in erase.json()["detail"]
    assert _rows(engine, Identity)


# --- DELETE -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_erasure_removes_personal_data_and_keeps_the_aggregates(
    api: TestClient, engine: Engine, temporal: FakeTemporal, person: Person, database: str
) -> None:
    survivor_wf = temporal.start(person.survivor, "run-1", "run-2")  # continued as new once
    merged_wf = temporal.start(person.merged, running=False)  # ended when merged
    assert engine.dialect.name == database
    before = _aggregates(engine)
    outbox = len(_rows(engine, Outbox))

    response = api.delete(f"/v1/contacts/{person.survivor}")

    assert response.status_code == 202, response.text
    summary = response.json()
    assert summary["erased"] == [person.survivor, person.merged]
    assert summary["workflows"] == {
        "terminated": [survivor_wf],
        "deleted": sorted([survivor_wf, merged_wf]),
        "errors": [],
    }
    assert sorted(temporal.deleted) == sorted(
        [(survivor_wf, "run-1"), (survivor_wf, "run-2"), (merged_wf, "run-1")]
    )
    assert summary["removed"] == {
        "identities": 3,
        "consents": 1,
        "merges": 1,
        "outbox": outbox,
        "propensity_scores": 0,
    }
    assert summary["anonymised"] == {
        "contacts": 2,
        "events": 4,
        "transitions": 3,
        "deliveries": 2,
        "enrolments": 1,
        "referral_codes": 0,
        "referrals": 0,
        "rewards": 0,
    }
    assert summary["kept"] == {"suppressions": 1}
    assert summary["stores"]["sink_folders"] == []  # nothing was sent to the file sink
    assert summary["stores"]["analytics"] == "syncing"

    ids = [person.survivor, person.merged]
    alias = {cid: pseudonym(cid) for cid in ids}
    assert _aggregates(engine) == before
    assert not _rows(engine, Identity)
    assert not _rows(engine, Consent)
    assert not _rows(engine, Merge)
    assert not _rows(engine, Outbox)
    assert not _rows(engine, Contact, col(Contact.id).in_(ids))
    for row in _rows(engine, Contact):
        assert row.id in alias.values()
        assert (row.locale, row.timezone, list(row.traits)) == (None, None, ["erased_at"])
    for event in _rows(engine, Event):
        assert event.contact_id == alias[person.survivor]
        assert (event.properties, event.context) == ({}, {})
    for transition in _rows(engine, StageTransition):
        assert transition.contact_id in alias.values()
        assert transition.key.startswith(transition.contact_id + ":")
        assert "Li Lei" not in transition.reason
    for delivery in _rows(engine, Delivery):
        assert delivery.contact_id in alias.values()
        assert delivery.idempotency_key.startswith(delivery.contact_id + ":")
        assert (delivery.provider_message_id, delivery.error) == (None, None)
    [enrolment] = _rows(engine, JourneyEnrolment)
    assert enrolment.contact_id == alias[person.merged]
    assert EMAIL not in f"{enrolment.reason} {enrolment.trail}"
    assert enrolment.reason == "delivery_failed"
    [suppression] = _rows(engine, Suppression)
    assert (suppression.address, suppression.contact_id) == (EMAIL, None)  # still protects her


def test_a_second_erasure_is_404_saying_when(api: TestClient, person: Person) -> None:
    assert api.delete(f"/v1/contacts/{person.survivor}").status_code == 202
    for contact_id in (person.survivor, person.merged):
        for method in ("GET", "DELETE"):
            response = api.request(method, f"/v1/contacts/{contact_id}")
            assert response.status_code == 404, (method, contact_id)
            assert "was erased at" in response.json()["detail"]
    response = api.delete(f"/v1/contacts/{pseudonym(person.survivor)}")
    assert response.status_code == 404
    assert "anonymous record" in response.json()["detail"]


def test_erasing_a_merged_id_erases_the_person(
    api: TestClient, engine: Engine, person: Person
) -> None:
    response = api.delete(f"/v1/contacts/{person.merged}")
    assert response.status_code == 202
    assert response.json()["contact_id"] == person.merged
    assert response.json()["erased"] == [person.survivor, person.merged]
    assert not _rows(engine, Identity)


def test_erasure_needs_temporal_and_changes_nothing_without_it(
    offline: TestClient, engine: Engine, person: Person
) -> None:
    before = len(_rows(engine, Identity))
    response = offline.delete(f"/v1/contacts/{person.survivor}")
    assert response.status_code == 503
    assert "without Temporal" in response.json()["detail"]
    assert len(_rows(engine, Identity)) == before


def test_erasure_refused_by_temporal_leaves_the_database_as_it_was(
    api: TestClient, engine: Engine, temporal: FakeTemporal, person: Person
) -> None:
    temporal.start(person.survivor)
    temporal.failure = RPCError("namespace is busy", RPCStatusCode.UNAVAILABLE, b"")
    response = api.delete(f"/v1/contacts/{person.survivor}")
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert "nothing was erased" in response.json()["detail"]
    assert len(_rows(engine, Identity)) == 3
    temporal.failure = None
    assert api.delete(f"/v1/contacts/{person.survivor}").status_code == 202  # the retry


def test_rows_written_during_the_erasure_are_caught_by_the_second_pass(
    api: TestClient, engine: Engine, temporal: FakeTemporal, person: Person
) -> None:
    """An activity that was mid-write when its workflow was terminated writes after the
    first scrub (here: as the second pass starts); the second pass erases it."""
    workflow_id = temporal.start(person.survivor)
    described: list[str] = []

    def late_activity(described_id: str) -> None:
        described.append(described_id)
        if described_id == workflow_id and described.count(workflow_id) == 2:
            save_transition(
                engine,
                TransitionRecord(
                    key=f"{person.survivor}:2",  # a retry of a row the first pass moved
                    contact_id=person.survivor,
                    transition={
                        "to_stage": "lead",
                        "at": datetime.now(UTC).isoformat(),
                        "reason": "retried",
                    },
                    contact={"stage": "lead", "traits": {"email": EMAIL}},
                ),
            )

    temporal.on_describe.append(late_activity)
    response = api.delete(f"/v1/contacts/{person.survivor}")
    assert response.status_code == 202, response.text
    assert not _rows(engine, Contact, col(Contact.id) == person.survivor)
    keys = [t.key for t in _rows(engine, StageTransition)]
    assert len(keys) == len(set(keys)) == 3  # the retried row was a duplicate: dropped


# --- OpenAPI ------------------------------------------------------------------------------


def test_the_openapi_document_describes_the_admin_routes(api: TestClient) -> None:
    document = api.get("/openapi.json").json()
    path = document["paths"]["/v1/contacts/{contact_id}"]
    assert document["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"
    for method, success in (("get", "200"), ("delete", "202")):
        operation = path[method]
        assert operation["summary"]
        assert operation["security"] == [{"adminToken": []}]
        assert {success, "401", "404", "503"} <= set(operation["responses"])
        assert operation["responses"][success]["content"]["application/json"]["example"]
        assert operation["responses"]["404"]["content"]["application/json"]["examples"]


@pytest.mark.parametrize("wired", [True, False], ids=["temporal", "no-temporal"])
def test_no_generated_request_makes_the_contacts_api_fail(
    settings: Settings, engine: Engine, wired: bool
) -> None:
    """Schemathesis: any id, any query; answers are documented and never a 5xx."""
    app = _app(settings, engine, FakeTemporal() if wired else None)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    for method in ("GET", "DELETE"):
        operation = schema["/v1/contacts/{contact_id}"][method]

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=40, deadline=None, suppress_health_check=list(HealthCheck)
        )
        def call(case: Any) -> None:
            response = case.call(headers=ADMIN)
            assert response.status_code < 500, response.text
            # A schema cannot say which strings are phone numbers or email addresses:
            # such a value is refused with 400 naming the field, checked here instead.
            case.validate_response(response, excluded_checks=[positive_data_acceptance])
            if response.status_code == 400:
                field = response.json()["detail"].split(":", 1)[0]
                assert field in ("email", "phone", "id", "user_id", "anonymous_id"), field

        call()


def test_a_referrer_and_the_friend_they_brought_can_be_erased(
    api: TestClient, engine: Engine, temporal: FakeTemporal
) -> None:
    """Referral codes, referrals and rewards point at contacts: they move to the
    pseudonyms, the device id goes, and the erased referrer's code stops working."""
    key = create_write_key(engine, "web", source="web")
    _identify(api, key, "m-ref-promoter", userId="u-ref", traits={"email": "ref@example.cn"})
    promoter = _contact_of(engine, "m-ref-promoter")
    code = api.post(f"/v1/contacts/{promoter}/referral-code").json()["code"]
    signup = api.post(
        f"/r/{code}",
        json={"name": "Friend", "email": "friend@example.cn", "consent": True,
              "device_id": "dev-friend-1"},
        headers={"Accept": "application/json"},
    )  # fmt: skip
    assert signup.status_code == 200, signup.text
    friend = api.get("/v1/contacts/friend@example.cn").json()["id"]
    temporal.start(promoter)
    temporal.start(friend)

    for who, alias in ((promoter, pseudonym(promoter)), (friend, pseudonym(friend))):
        erased = api.delete(f"/v1/contacts/{who}")
        assert erased.status_code == 202, erased.text
        assert erased.json()["anonymised"]["referrals"] == 1
        with Session(engine) as session:
            referral = session.exec(select(Referral)).one()
            assert alias in (referral.referrer_id, referral.referee_id)
    assert (referral.referrer_id, referral.referee_id, referral.device_id) == (
        pseudonym(promoter),
        pseudonym(friend),
        None,
    )
    again = api.post(f"/r/{code}", json={"name": "X", "email": "x@example.cn", "consent": True},
                     headers={"Accept": "application/json"})  # fmt: skip
    assert again.status_code in (404, 410), again.text


def test_erasure_deletes_the_contacts_propensity_score(
    api: TestClient, engine: Engine, temporal: FakeTemporal, person: Person
) -> None:
    from stagecoach.engine.services.storage.models import PropensityScore

    temporal.start(person.survivor, "run-1")
    with Session(engine) as session:
        for cid in (person.survivor, "bystander"):
            session.add(
                PropensityScore(
                    contact_id=cid,
                    model_version=1,
                    probability=0.4,
                    top=[{"feature": "trait:employees", "value": 500.0, "effect": 0.7}],
                )
            )
        session.commit()

    response = api.delete(f"/v1/contacts/{person.survivor}")

    assert response.status_code == 202, response.text
    assert response.json()["removed"]["propensity_scores"] == 1
    assert [row.contact_id for row in _rows(engine, PropensityScore)] == ["bystander"]
