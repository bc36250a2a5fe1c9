"""Sales feedback through HTTP: signed like the hand-off webhook, applied once per
decision, with the event on the hand-off's contact and the hand-off row updated."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from stagecoach.connectors.crm import sign
from stagecoach.engine.api.routes.handoffs import router
from stagecoach.engine.app import create_app
from stagecoach.engine.services.storage.models import Contact, Event, Handoff, Merge, Outbox
from stagecoach.engine.settings import Settings
from tests.helpers import migrated_engine

SECRET = "whsec-feedback-test-0123456789abcdef"
OLD_SECRET = "whsec-the-one-before-0123456789abcdef"
CONTACT = "c_0123456789abcdef01234567"
HANDOFF = "h_7f3a9c2e41d7b3a8"
PATH = f"/v1/handoffs/{HANDOFF}/feedback"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = migrated_engine(f"sqlite:///{tmp_path}/handoffs.db")
    with Session(db) as session:
        session.add(Contact(id=CONTACT, stage="lead"))
        session.add(
            Handoff(
                id=HANDOFF,
                idempotency_key=f"{CONTACT}:handoff:1",
                contact_id=CONTACT,
                reason="mql",
                grade="A",
                team="east",
                owner="li.na",
                owner_timezone="Asia/Shanghai",
            )
        )
        session.commit()
    yield db
    db.dispose()


def make_app(engine: Engine, tmp_path: Path, secret: str | None = SECRET) -> FastAPI:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path}/handoffs.db",
        webhook_secret=SecretStr(secret) if secret is not None else None,
    )
    app = create_app(settings, db=engine)
    if not any(
        getattr(r, "path", None) == "/v1/handoffs/{handoff_id}/feedback" for r in app.routes
    ):
        app.include_router(router)  # until create_app includes it
    return app


@pytest.fixture
def api(engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(make_app(engine, tmp_path)) as client:
        yield client


def post(
    api: TestClient,
    body: dict[str, Any] | bytes,
    *,
    path: str = PATH,
    secrets: str | list[str] = SECRET,
    at: float | None = None,
    key: str | None = None,
    signature: str | None = None,
    bind: bool = True,
) -> Response:
    """POST ``body`` signed as the hand-off webhook is (``stagecoach.connectors.crm.sign``).

    A dict body names the path's hand-off (``handoff_id``) unless it has one or ``bind``
    is off, as a receiver following docs/webhooks.md sends it."""
    if isinstance(body, dict) and bind and "handoff_id" not in body:
        body = {"handoff_id": path.split("/")[3], **body}
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    headers["Stagecoach-Signature"] = (
        signature
        if signature is not None
        else sign(secrets, raw, timestamp=int(time.time() if at is None else at))
    )
    if key is not None:
        headers["Idempotency-Key"] = key
    response: Response = api.post(path, content=raw, headers=headers)
    return response


def handoff(engine: Engine) -> Handoff:
    with Session(engine) as session:
        row = session.get(Handoff, HANDOFF)
        assert row is not None
        return row


def feedback_events(engine: Engine) -> list[Event]:
    with Session(engine) as session:
        query = select(Event).where(col(Event.name).startswith("sales.")).order_by(col(Event.id))
        return list(session.exec(query).all())


def nothing_recorded(engine: Engine) -> None:
    assert feedback_events(engine) == []
    row = handoff(engine)
    assert (row.status, row.feedback_reason, row.feedback_at) == ("sent", None, None)


# --- each decision ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"decision": "accepted"}, None),
        ({"decision": "accepted", "reason": "good fit"}, "good fit"),
        ({"decision": "rejected", "reason": "no_budget"}, "no_budget"),
        ({"decision": "converted"}, None),
    ],
)
def test_each_decision_updates_the_handoff_and_records_one_event_on_its_contact(
    api: TestClient, engine: Engine, body: dict[str, Any], reason: str | None
) -> None:
    decision = body["decision"]
    before = datetime.now(UTC)
    response = post(api, body)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "success": True,
        "handoff_id": HANDOFF,
        "contact_id": CONTACT,
        "decision": decision,
        "status": decision,
        "duplicate": False,
        "event": f"sales.{decision}",
        "message_id": f"handoff:{HANDOFF}:{decision}",
    }
    row = handoff(engine)
    assert (row.status, row.feedback_reason, row.owner) == (decision, reason, "li.na")
    assert row.feedback_at is not None
    assert row.feedback_at.replace(tzinfo=UTC) >= before - timedelta(seconds=1)
    [event] = feedback_events(engine)
    assert (event.name, event.contact_id, event.source, event.message_id) == (
        f"sales.{decision}",
        CONTACT,
        "sales_feedback",
        f"handoff:{HANDOFF}:{decision}",
    )
    expected = {"handoff_id": HANDOFF, "owner": "li.na"}
    assert event.properties == ({**expected, "reason": reason} if reason else expected)
    with Session(engine) as session:  # waiting for the contact's workflow
        assert session.exec(select(Outbox).where(col(Outbox.event_id) == event.id)).one()


def test_owner_and_time_when_given_are_recorded(api: TestClient, engine: Engine) -> None:
    at = "2026-11-23T10:00:00+08:00"
    body = {"decision": "rejected", "reason": "wrong_contact", "owner": "wang.wei", "at": at}
    assert post(api, body).status_code == 200
    row = handoff(engine)
    assert row.owner == "wang.wei"
    assert row.feedback_at is not None
    assert row.feedback_at.replace(tzinfo=UTC) == datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
    [event] = feedback_events(engine)
    assert event.properties == {
        "handoff_id": HANDOFF,
        "owner": "wang.wei",
        "reason": "wrong_contact",
    }
    assert event.occurred_at.replace(tzinfo=UTC) == datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def test_accepted_then_converted_records_both(api: TestClient, engine: Engine) -> None:
    assert post(api, {"decision": "accepted"}).status_code == 200
    assert post(api, {"decision": "converted"}).status_code == 200
    assert [e.name for e in feedback_events(engine)] == ["sales.accepted", "sales.converted"]
    assert handoff(engine).status == "converted"


def test_a_merged_contact_gets_the_event_on_its_survivor(api: TestClient, engine: Engine) -> None:
    with Session(engine) as session:
        session.add(Contact(id="c_survivor", stage="lead"))
        session.add(Merge(merged_id=CONTACT, into_id="c_survivor", reason="test"))
        session.commit()
    assert post(api, {"decision": "accepted"}).status_code == 200
    [event] = feedback_events(engine)
    assert event.contact_id == "c_survivor"


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"decision": "rejected"}, "reason"),
        ({"decision": "rejected", "reason": "   "}, "reason"),
        ({}, "decision"),
        ({"decision": "maybe"}, "decision"),
        ({"decision": "accepted", "reasn": "typo"}, "reasn"),
        ({"decision": "accepted", "at": "yesterday"}, "at"),
        ({"decision": "accepted", "at": "2026-11-23T10:00:00"}, "at"),
        ({"decision": "accepted", "at": "2999-01-01T00:00:00Z"}, "at"),
        ({"decision": "accepted", "owner": "x" * 129}, "owner"),
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
    ],
)
def test_a_bad_body_is_400_naming_the_field_and_records_nothing(
    api: TestClient, engine: Engine, body: dict[str, Any] | bytes, field: str
) -> None:
    response = post(api, body)
    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert error["field"] == field
    assert error["message"]
    nothing_recorded(engine)


def test_rejected_without_reason_says_what_to_send(api: TestClient) -> None:
    response = post(api, {"decision": "rejected"})
    assert response.status_code == 400
    assert "reason is required" in response.json()["errors"][0]["message"]


def test_a_body_without_its_handoff_id_is_400_naming_the_field(
    api: TestClient, engine: Engine
) -> None:
    response = post(api, {"decision": "accepted"}, bind=False)
    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert error["field"] == "handoff_id"
    assert "as in the path" in error["message"]
    nothing_recorded(engine)


def test_a_body_naming_another_handoff_is_401_and_records_nothing(
    api: TestClient, engine: Engine
) -> None:
    """The signature covers the body, not the URL: the body's id is what binds it."""
    response = post(api, {"handoff_id": "h_someone_else", "decision": "accepted"})
    assert response.status_code == 401, response.text
    assert "h_someone_else" in response.json()["error"]
    assert "Stagecoach-Signature" in response.headers["www-authenticate"]
    nothing_recorded(engine)


def test_an_unknown_handoff_is_404_with_a_message(api: TestClient, engine: Engine) -> None:
    response = post(api, {"decision": "accepted"}, path="/v1/handoffs/h_nope/feedback")
    assert response.status_code == 404
    assert "h_nope" in response.json()["error"]
    nothing_recorded(engine)


# --- idempotency and order --------------------------------------------------------------------


def test_the_same_decision_twice_is_a_duplicate_and_records_nothing_new(
    api: TestClient, engine: Engine
) -> None:
    first = post(api, {"decision": "rejected", "reason": "no_budget"})
    assert first.json()["duplicate"] is False
    stored = handoff(engine)
    again = post(api, {"decision": "rejected", "reason": "timing", "owner": "wang.wei"})
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is True
    assert again.json()["status"] == "rejected"
    [event] = feedback_events(engine)
    assert event.properties["reason"] == "no_budget"
    row = handoff(engine)
    assert (row.feedback_reason, row.owner, row.feedback_at) == (
        "no_budget",
        "li.na",
        stored.feedback_at,
    )


def test_a_retry_with_its_idempotency_key_is_a_duplicate_even_after_another_decision(
    api: TestClient, engine: Engine
) -> None:
    assert post(api, {"decision": "accepted"}, key="crm-1").status_code == 200
    assert post(api, {"decision": "converted"}, key="crm-2").status_code == 200
    retry = post(api, {"decision": "accepted"}, key="crm-1")
    assert retry.status_code == 200, retry.text
    assert (retry.json()["duplicate"], retry.json()["status"]) == (True, "converted")
    assert [e.name for e in feedback_events(engine)] == ["sales.accepted", "sales.converted"]
    assert handoff(engine).status == "converted"
    # Without the key it is a decision given before another one: a conflict.
    assert post(api, {"decision": "accepted"}).status_code == 409


def test_an_idempotency_key_reused_for_another_decision_is_409(
    api: TestClient, engine: Engine
) -> None:
    assert post(api, {"decision": "accepted"}, key="crm-1").status_code == 200
    response = post(api, {"decision": "converted"}, key="crm-1")
    assert response.status_code == 409
    assert "Idempotency-Key" in response.json()["error"]
    assert handoff(engine).status == "accepted"


@pytest.mark.parametrize(
    "later", [{"decision": "accepted"}, {"decision": "rejected", "reason": "lost"}]
)
def test_a_different_decision_after_converted_is_409(
    api: TestClient, engine: Engine, later: dict[str, Any]
) -> None:
    assert post(api, {"decision": "converted"}).status_code == 200
    response = post(api, later)
    assert response.status_code == 409, response.text
    assert "converted" in response.json()["error"]
    assert "final" in response.json()["error"]
    assert handoff(engine).status == "converted"
    assert [e.name for e in feedback_events(engine)] == ["sales.converted"]


def test_accepted_after_rejected_is_409_but_converted_may_follow(
    api: TestClient, engine: Engine
) -> None:
    """Decisions move forward, so none is ever given twice: a rejected lead is recycled
    and comes back to sales as a new hand-off, but the deal may still close."""
    assert post(api, {"decision": "rejected", "reason": "no_budget"}).status_code == 200
    response = post(api, {"decision": "accepted"})
    assert response.status_code == 409
    assert response.json()["error"] == (
        f"hand-off {HANDOFF!r} is already rejected, so 'accepted' cannot follow: only "
        "'converted' may follow it (a rejected lead is back in nurture and returns to sales "
        "as a new hand-off (send converted if the deal closed anyway))"
    )
    assert handoff(engine).status == "rejected"
    assert post(api, {"decision": "converted"}).status_code == 200
    assert [e.name for e in feedback_events(engine)] == ["sales.rejected", "sales.converted"]


def test_rejected_after_accepted_is_409_naming_the_state_and_what_may_follow(
    api: TestClient, engine: Engine
) -> None:
    """A lead sales took is theirs: a later rejection does not recycle it or cost it the
    rejection's points; only the deal closing may follow."""
    assert post(api, {"decision": "accepted"}).status_code == 200
    response = post(api, {"decision": "rejected", "reason": "no_budget"})
    assert response.status_code == 409, response.text
    assert response.json() == {
        "success": False,
        "error": f"hand-off {HANDOFF!r} is already accepted, so 'rejected' cannot follow: "
        "only 'converted' may follow it (sales took the lead, so only the deal closing can "
        "follow)",
    }
    assert handoff(engine).status == "accepted"
    assert handoff(engine).feedback_reason is None
    assert [e.name for e in feedback_events(engine)] == ["sales.accepted"]


_REJECTED = {"decision": "rejected", "reason": "no_budget"}


@pytest.mark.parametrize(
    ("first", "then", "status", "duplicate"),
    [
        # the same decision twice: idempotent, the first one stands
        ("accepted", "accepted", 200, True),
        ("rejected", "rejected", 200, True),
        ("converted", "converted", 200, True),
        # forward
        ("accepted", "converted", 200, False),
        ("rejected", "converted", 200, False),
        # backwards or sideways
        ("accepted", "rejected", 409, None),
        ("rejected", "accepted", 409, None),
        ("converted", "accepted", 409, None),
        ("converted", "rejected", 409, None),
    ],
)
def test_what_each_decision_on_a_settled_handoff_answers(
    api: TestClient, engine: Engine, first: str, then: str, status: int, duplicate: bool | None
) -> None:
    def body(decision: str) -> dict[str, Any]:
        return _REJECTED if decision == "rejected" else {"decision": decision}

    assert post(api, body(first)).status_code == 200
    response = post(api, body(then))
    assert response.status_code == status, response.text
    if duplicate is None:
        assert f"already {first}" in response.json()["error"]
        assert handoff(engine).status == first
    else:
        assert response.json()["duplicate"] is duplicate
        assert handoff(engine).status == then
    recorded = [first] if then == first or status == 409 else [first, then]
    assert [e.name for e in feedback_events(engine)] == [f"sales.{d}" for d in recorded]


def test_concurrent_answers_apply_in_order_and_each_decision_once(
    api: TestClient, engine: Engine
) -> None:
    bodies = [{"decision": "accepted"}, {"decision": "rejected", "reason": "no_budget"}] * 8
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda body: post(api, body), bodies))
    assert {r.status_code for r in responses} <= {200, 409}
    applied = [r.json()["decision"] for r in responses if r.json().get("duplicate") is False]
    # Accepted and rejected exclude each other: whichever came first stands.
    assert len(applied) == 1
    assert [e.name for e in feedback_events(engine)] == [f"sales.{applied[0]}"]
    assert handoff(engine).status == applied[0]


def test_a_lost_event_is_recorded_by_the_retry(api: TestClient, engine: Engine) -> None:
    """The row is written first: if the event then failed (503), the retry, a duplicate
    by the row, still stores it, once."""
    with Session(engine) as session:
        row = session.get(Handoff, HANDOFF)
        assert row is not None
        row.status, row.feedback_reason = "rejected", "no_budget"
        row.feedback_at = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
        session.add(row)
        session.commit()
    for _ in range(2):
        response = post(api, {"decision": "rejected", "reason": "no_budget"})
        assert response.json()["duplicate"] is True
    [event] = feedback_events(engine)
    assert event.properties["reason"] == "no_budget"
    assert event.occurred_at.replace(tzinfo=UTC) == datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "words"),
    [
        ("missing", "missing"),
        ("wrong secret", "no signature matches"),
        ("stale", "beyond the 300 s tolerance"),
        ("tampered", "no signature matches"),
        ("garbage", "malformed"),
    ],
)
def test_a_missing_wrong_or_stale_signature_is_401_and_records_nothing(
    api: TestClient, engine: Engine, how: str, words: str
) -> None:
    body = {"decision": "accepted"}
    raw = json.dumps(body).encode()
    now = int(time.time())
    response = {
        "missing": lambda: post(api, body, signature=""),
        "wrong secret": lambda: post(api, body, secrets="not-the-secret"),
        "stale": lambda: post(api, body, at=now - 600),
        "tampered": lambda: post(
            api, raw.replace(b"accepted", b"converted"), signature=sign(SECRET, raw, timestamp=now)
        ),
        "garbage": lambda: post(api, body, signature="nonsense"),
    }[how]()
    assert response.status_code == 401, response.text
    assert words in response.json()["error"]
    assert "STAGECOACH_WEBHOOK_SECRET" in response.json()["error"]
    assert "Stagecoach-Signature" in response.headers["www-authenticate"]
    nothing_recorded(engine)


def test_an_unknown_handoff_with_a_bad_signature_is_401_not_404(api: TestClient) -> None:
    response = post(
        api, {"decision": "accepted"}, path="/v1/handoffs/h_nope/feedback", secrets="wrong"
    )
    assert response.status_code == 401


def test_either_secret_works_while_rotating(engine: Engine, tmp_path: Path) -> None:
    app = make_app(engine, tmp_path, secret=f"{SECRET}, {OLD_SECRET}")
    with TestClient(app) as api:
        assert post(api, {"decision": "accepted"}, secrets=OLD_SECRET).status_code == 200
        assert post(api, {"decision": "converted"}, secrets=[SECRET, OLD_SECRET]).status_code == 200


@pytest.mark.parametrize("secret", [None, "", " , "])
def test_unset_secret_is_503_naming_the_setting(
    engine: Engine, tmp_path: Path, secret: str | None
) -> None:
    with TestClient(make_app(engine, tmp_path, secret=secret)) as api:
        response = post(api, {"decision": "accepted"})
    assert response.status_code == 503
    assert "STAGECOACH_WEBHOOK_SECRET" in response.json()["error"]
    nothing_recorded(engine)


# --- documentation ----------------------------------------------------------------------------


def test_openapi_documents_the_route_with_examples(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    operation = spec["paths"]["/v1/handoffs/{handoff_id}/feedback"]["post"]
    assert operation["summary"]
    body = operation["requestBody"]["content"]["application/json"]
    assert set(body["examples"]) == {"accepted", "rejected", "converted"}
    assert body["schema"]["properties"]["decision"]["enum"] == ["accepted", "rejected", "converted"]
    for status in ("200", "400", "401", "404", "409"):
        content = operation["responses"][status]["content"]["application/json"]
        assert content.get("example") or content.get("examples"), status
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert headers == {"Stagecoach-Signature", "Idempotency-Key"}


def test_the_documented_decision_table_is_what_the_endpoint_answers(
    engine: Engine, tmp_path: Path
) -> None:
    """docs/webhooks.md prints, per hand-off status, what each decision answers; every
    cell is checked against the endpoint itself."""
    text = (Path(__file__).parents[3] / "docs" / "webhooks.md").read_text(encoding="utf-8")
    table = text.split("<!-- decisions:start -->", 1)[1].split("<!-- decisions:end -->", 1)[0]
    rows = [
        [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        for line in table.strip().splitlines()[2:]
    ]
    decisions = ["accepted", "rejected", "converted"]
    assert [row[0] for row in rows] == ["sent", *decisions]
    for status, *cells in rows:
        for decision, cell in zip(decisions, cells, strict=True):
            with Session(engine) as session:
                row = session.get(Handoff, HANDOFF)
                assert row is not None
                row.status = status
                session.add(row)
                session.commit()
            with TestClient(make_app(engine, tmp_path)) as api:
                body: dict[str, Any] = {"decision": decision}
                if decision == "rejected":
                    body["reason"] = "no_budget"
                response = post(api, body)
            answer = str(response.status_code)
            if response.status_code == 200 and response.json()["duplicate"]:
                answer += " duplicate"
            assert answer == cell, (status, decision, response.text)
