"""The Segment-compatible ingestion API through HTTP: what is stored, what is refused,
and what each kind of bad input gets back."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from stagecoach.engine.api.routes.events import create_write_key
from stagecoach.engine.app import create_app
from stagecoach.engine.services.ingest import verify_consent_chain
from stagecoach.engine.services.storage.models import Consent, Event, Identity, Merge, Outbox
from stagecoach.engine.settings import Settings
from stagecoach.workflows.runtime import ContactOpener
from tests.helpers import migrated_engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = migrated_engine(f"sqlite:///{tmp_path}/ingest.db")
    yield db
    db.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/ingest.db")


@pytest.fixture
def key(engine: Engine) -> str:
    return create_write_key(engine, "web", source="web")


@pytest.fixture
def api(engine: Engine, settings: Settings, key: str) -> Iterator[TestClient]:
    app = create_app(settings, db=engine, opener=ContactOpener(engine, settings))
    auth = base64.b64encode(f"{key}:".encode()).decode()
    with TestClient(app, headers={"Authorization": f"Basic {auth}"}) as client:
        yield client


def _events(engine: Engine) -> list[Event]:
    with Session(engine) as session:
        return list(session.exec(select(Event).order_by(col(Event.id))).all())


def _count(engine: Engine, model: Any) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


def track(**fields: Any) -> dict[str, Any]:
    return {
        "userId": "u-1",
        "messageId": "m-1",
        "event": "content.downloaded",
        "properties": {"content_id": "wp-digital-transformation", "kind": "whitepaper"},
        **fields,
    }


def test_track_is_stored_with_source_and_received_at(api: TestClient, engine: Engine) -> None:
    response = api.post("/v1/track", json=track(context={"channel": "web"}))
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    [event] = _events(engine)
    assert (event.name, event.kind, event.source, event.channel) == (
        "content.downloaded",
        "track",
        "web",  # the write key's source
        "web",
    )
    assert event.received_at is not None
    assert _count(engine, Outbox) == 1  # the nurture's entry uses it: signalled


def test_a_replayed_message_id_is_stored_once(api: TestClient, engine: Engine) -> None:
    assert api.post("/v1/track", json=track()).json()["duplicates"] == 0
    again = api.post("/v1/track", json=track())
    assert again.status_code == 200
    assert again.json()["duplicates"] == 1
    assert len(_events(engine)) == 1
    assert _count(engine, Outbox) == 1


def test_an_unknown_write_key_is_401(api: TestClient) -> None:
    bad = base64.b64encode(b"sk_nope:").decode()
    response = api.post("/v1/track", json=track(), headers={"Authorization": f"Basic {bad}"})
    assert response.status_code == 401
    assert response.json()["errors"][0]["field"] == "authorization"
    response = api.post("/v1/track", json=track(), headers={"Authorization": ""})
    assert response.status_code == 401


def test_write_key_in_the_body_is_accepted(api: TestClient, key: str) -> None:
    response = api.post("/v1/track", json=track(writeKey=key), headers={"Authorization": ""})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b'{"userId": "u", "event": 42, "messageId": "x"}', "event"),
        (b'{"event": "content.downloaded", "messageId": "x"}', "userId"),
        (b'{"userId": "u", "event": "e", "properties": [1]}', "properties"),
        (b'{"userId": "u", "event": "e", "timestamp": "yesterday"}', "timestamp"),
        (b'{"userId": "u", "event": "e", "timestamp": "2126-01-01T00:00:00Z"}', "timestamp"),
        (b'{"userId": "u", "event": "e", "timestamp": "1999-01-01T00:00:00Z"}', "timestamp"),
    ],
)
def test_bad_input_is_400_naming_the_field(
    api: TestClient, engine: Engine, body: bytes, field: str
) -> None:
    response = api.post("/v1/track", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    errors = response.json()["errors"]
    assert errors[0]["field"] == field, errors
    assert errors[0]["message"]
    assert _events(engine) == []


def test_traits_on_a_track_call_identify_nobody(api: TestClient, engine: Engine) -> None:
    """Segment's track has no traits: they are kept as an extra field, and only identify
    and context traits identify someone, so a bad address there is no error."""
    body = b'{"userId": "u", "event": "e", "traits": {"email": "not-an-email"}}'
    response = api.post("/v1/track", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    with Session(engine) as session:
        kinds = {i.kind for i in session.exec(select(Identity)).all()}
    assert kinds == {"user_id"}


def test_an_invalid_email_in_identify_names_the_trait(api: TestClient) -> None:
    response = api.post("/v1/identify", json={"userId": "u", "traits": {"email": "nope"}})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "traits.email"


def test_a_10_mb_body_is_413_and_nothing_is_stored(api: TestClient, engine: Engine) -> None:
    huge = b'{"batch": [' + b" " * (10 * 1024 * 1024) + b"]}"
    response = api.post("/v1/batch", content=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    one = api.post("/v1/track", json=track(properties={"blob": "x" * 40_000}))
    assert one.status_code == 413
    assert _events(engine) == []


def test_batch_stores_the_good_and_lists_the_bad_by_index(api: TestClient, engine: Engine) -> None:
    batch = [
        {"type": "track", **track(messageId="b-0")},
        {"type": "track", "event": "x"},  # no user
        {"type": "page", "anonymousId": "a-1", "messageId": "b-2", "name": "Pricing"},
        {"type": "nonsense", "userId": "u"},
        {"type": "track", **track(messageId="b-4", properties={"blob": "y" * 40_000})},
    ]
    response = api.post("/v1/batch", json={"batch": batch, "context": {"locale": "en"}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 2
    assert [(e["index"], e["field"]) for e in body["errors"]] == [
        (1, "userId"),
        (3, "type"),
        (4, "body"),
    ]
    assert [e.message_id for e in _events(engine)] == ["b-0", "b-2"]
    assert _events(engine)[1].name == "page.viewed"


def test_events_nothing_uses_are_stored_but_not_signalled(api: TestClient, engine: Engine) -> None:
    response = api.post(
        "/v1/track", json=track(messageId="m-x", event="video.paused", properties={})
    )
    assert response.status_code == 200
    assert len(_events(engine)) == 1
    assert _count(engine, Outbox) == 0


def test_anonymous_history_becomes_the_known_contacts(api: TestClient, engine: Engine) -> None:
    api.post("/v1/page", json={"anonymousId": "anon-9", "messageId": "p-1", "name": "Home"})
    api.post(
        "/v1/identify",
        json={
            "userId": "u-9",
            "anonymousId": "anon-9",
            "messageId": "i-1",
            "traits": {
                "email": " Wang.Fang@Example.CN ",
                "phone": "138 0013 8000",
                "country": "CN",
            },
        },
    )
    events = _events(engine)
    assert len({e.contact_id for e in events}) == 1
    with Session(engine) as session:
        ids = {(i.kind, i.value) for i in session.exec(select(Identity)).all()}
    assert ("email", "wang.fang@example.cn") in ids
    assert ("phone", "+8613800138000") in ids
    assert ("user_id", "u-9") in ids


def test_two_known_contacts_that_are_one_are_merged_with_a_record(
    api: TestClient, engine: Engine
) -> None:
    api.post(
        "/v1/identify",
        json={"userId": "u-a", "messageId": "i-a", "traits": {"email": "x@example.com"}},
    )
    api.post(
        "/v1/identify",
        json={"userId": "u-b", "messageId": "i-b", "traits": {"phone": "+14155550123"}},
    )
    first, second = (e.contact_id for e in _events(engine))
    assert first != second
    # u-b turns out to own x@example.com too: one person.
    api.post(
        "/v1/identify",
        json={"userId": "u-b", "messageId": "i-c", "traits": {"email": "X@example.com"}},
    )
    assert len({e.contact_id for e in _events(engine)}) == 1
    with Session(engine) as session:
        [merge] = session.exec(select(Merge)).all()
        controls = session.exec(select(Outbox).where(col(Outbox.merged_into).is_not(None))).all()
    assert {merge.merged_id, merge.into_id} == {first, second}
    assert [c.contact_id for c in controls] == [merge.merged_id]


def test_a_merge_cycle_is_harmless(api: TestClient, engine: Engine) -> None:
    api.post("/v1/identify", json={"userId": "u-1", "messageId": "c-1"})
    api.post("/v1/identify", json={"userId": "u-2", "messageId": "c-2"})
    assert (
        api.post(
            "/v1/alias", json={"previousId": "u-1", "userId": "u-2", "messageId": "c-3"}
        ).status_code
        == 200
    )
    assert (
        api.post(
            "/v1/alias", json={"previousId": "u-2", "userId": "u-1", "messageId": "c-4"}
        ).status_code
        == 200
    )
    assert (
        api.post(
            "/v1/alias", json={"previousId": "u-1", "userId": "u-1", "messageId": "c-5"}
        ).status_code
        == 200
    )
    assert len({e.contact_id for e in _events(engine)}) == 1
    assert _count(engine, Merge) == 1


def test_consent_is_recorded_with_source_time_and_wording_and_can_be_proven(
    api: TestClient, engine: Engine
) -> None:
    for n, granted in enumerate((True, False)):
        api.post(
            "/v1/identify",
            json={
                "userId": "u-c",
                "messageId": f"consent-{n}",
                "traits": {
                    "consent": {"email": granted},
                    "consent_wording": "Send me product news by email.",
                },
            },
        )
    with Session(engine) as session:
        rows = list(session.exec(select(Consent).order_by(col(Consent.id))).all())
        assert [(r.channel, r.granted, r.source) for r in rows] == [
            ("email", True, "web"),
            ("email", False, "web"),
        ]
        assert rows[0].wording == "Send me product news by email."
        assert verify_consent_chain(rows) is None
        rows[0].granted = False  # an edit of the record breaks the proof from there on
        assert verify_consent_chain(rows) == 0


def test_timestamps_are_corrected_for_client_clock_skew(api: TestClient, engine: Engine) -> None:
    now = datetime.now(UTC)
    sent = now + timedelta(hours=3)  # the client's clock runs 3 hours fast
    api.post(
        "/v1/track",
        json=track(timestamp=(sent - timedelta(minutes=5)).isoformat(), sentAt=sent.isoformat()),
    )
    [event] = _events(engine)
    at = event.occurred_at.replace(tzinfo=UTC)
    assert abs((now - timedelta(minutes=5)) - at) < timedelta(seconds=30)


def test_openapi_documents_every_endpoint_with_an_example(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    for kind in ("identify", "track", "page", "screen", "alias", "group", "batch"):
        body = spec["paths"][f"/v1/{kind}"]["post"]["requestBody"]["content"]["application/json"]
        assert body["examples"]["example"]["value"]
    assert api.get("/docs").status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        {"userId": 12345678901234567890},  # a numeric id is Segment-legal
        {"userId": "u-1", "timestamp": "0001-01-02T00:00:00Z", "sentAt": "9999-12-30T00:00:00Z"},
    ],
)
def test_found_by_fuzzing_never_500(api: TestClient, fields: dict[str, Any]) -> None:
    response = api.post("/v1/track", json={"event": "x", "messageId": "fz", **fields})
    assert response.status_code in (200, 400), response.text


@pytest.mark.parametrize("name", ["contact_id", "contactId"])
def test_a_client_cannot_name_the_contact_its_event_goes_to(
    api: TestClient, engine: Engine, name: str
) -> None:
    """``Incoming.contact_id`` is for our own links and peers: a Segment body that tries
    to set it is resolved by its identities like any other."""
    api.post("/v1/identify", json={"userId": "u-victim", "messageId": "i-victim"})
    [victim] = _events(engine)
    response = api.post(
        "/v1/track", json=track(userId="u-other", messageId="t-other", **{name: victim.contact_id})
    )
    assert response.status_code == 200, response.text
    other = _events(engine)[-1]
    assert other.contact_id != victim.contact_id


@pytest.mark.parametrize("score", [11, -1, 7.5, "9", None])
def test_an_nps_answer_outside_0_to_10_is_400(api: TestClient, score: object) -> None:
    body = track(messageId=f"nps-{score}", event="nps.answered", properties={"score": score})
    response = api.post("/v1/track", json=body)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "properties.score"


def test_a_valid_nps_answer_is_stored(api: TestClient, engine: Engine) -> None:
    body = track(
        messageId="nps-ok",
        event="nps.answered",
        properties={"score": 9, "comment": "great", "touchpoint": "onboarding"},
    )
    assert api.post("/v1/track", json=body).status_code == 200
    assert [e.name for e in _events(engine)] == ["nps.answered"]


@pytest.mark.parametrize(
    ("properties", "field", "words"),
    [
        ({}, "properties.score", "a number from 0 to max (5), not None"),
        ({"score": 6}, "properties.score", "from 0 to max (5), not 6"),
        ({"score": -1}, "properties.score", "not -1"),
        ({"score": "4"}, "properties.score", "not '4'"),
        ({"score": True}, "properties.score", "not True"),
        ({"score": 8, "max": 7}, "properties.score", "from 0 to max (7), not 8"),
        ({"score": 3, "max": 0}, "properties.max", "a number above 0"),
        ({"score": 3, "max": "ten"}, "properties.max", "not 'ten'"),
    ],
)
def test_a_survey_answer_the_value_tier_cannot_read_is_400_naming_the_field(
    api: TestClient, engine: Engine, properties: dict[str, object], field: str, words: str
) -> None:
    body = track(messageId="survey-bad", event="survey.answered", properties=properties)
    response = api.post("/v1/track", json=body)
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["field"] == field
    assert words in error["message"]
    assert _events(engine) == []


def test_a_survey_answer_on_its_scale_is_stored_and_in_the_catalog(
    api: TestClient, engine: Engine
) -> None:
    from stagecoach.workflows.events import CATALOG

    assert {"score", "max"} <= set(CATALOG.get("survey.answered").properties)
    for n, properties in enumerate(({"score": 4}, {"score": 8.5, "max": 10, "survey": "csat"})):
        body = track(messageId=f"survey-{n}", event="survey.answered", properties=properties)
        assert api.post("/v1/track", json=body).status_code == 200
    assert [e.name for e in _events(engine)] == ["survey.answered"] * 2
