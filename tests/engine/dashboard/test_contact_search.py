"""The dashboard's "Open contact" search over HTTP: contacts made through the event API,
found by the ids an integrator knows; several matches listed, none a 404 naming it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from stagecoach.engine.api.routes.events import create_write_key
from stagecoach.engine.app import create_app
from stagecoach.engine.services.storage.models import Event
from stagecoach.engine.settings import Settings
from tests.browser.conftest import ADMIN_TOKEN, seeded_settings
from tests.helpers import migrated_engine

OPENID = "oWx1f2G3h4J5k6L7m8N9p0QrStUv"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return seeded_settings(tmp_path)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    db = migrated_engine(settings.resolved_database_url)
    yield db
    db.dispose()


@pytest.fixture
def client(engine: Engine, settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, db=engine)
    with TestClient(app, follow_redirects=False) as test_client:
        signed = test_client.post(
            "/dashboard/login",
            content=f"token={ADMIN_TOKEN}",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert signed.status_code == 303
        yield test_client
    app.state.reports.wait(30)


def _contact_of(engine: Engine, message_id: str) -> str:
    with Session(engine) as session:
        return session.exec(
            select(Event.contact_id).where(col(Event.message_id) == message_id)
        ).one()


@pytest.fixture
def people(client: TestClient, engine: Engine) -> dict[str, str]:
    """Wang Fang (userId, email, phone, openid; an anonymous visit merged in) and a CRM
    record whose userId is the digits of her phone number."""
    key = create_write_key(engine, "shop", source="shop")

    def post(kind: str, body: dict[str, Any]) -> None:
        response = client.post(f"/v1/{kind}", json=body, auth=(key, ""))
        assert response.status_code == 200, response.text

    post("page", {"anonymousId": "dev-dash-1", "messageId": "d-page", "name": "Pricing"})
    visitor = _contact_of(engine, "d-page")
    post(
        "identify",
        {
            "userId": "u-dash-1",
            "messageId": "d-identify",
            "traits": {
                "email": "Wang.Fang@Example.com",
                "phone": "+86 139 0013 9000",
                "wechat_openid": OPENID,
            },
        },
    )
    post("alias", {"previousId": "dev-dash-1", "userId": "u-dash-1", "messageId": "d-alias"})
    post("identify", {"userId": "13900139000", "messageId": "d-crm"})
    return {
        "wang": _contact_of(engine, "d-identify"),
        "visitor": visitor,
        "digits": _contact_of(engine, "d-crm"),
    }


@pytest.mark.parametrize(
    ("value", "by"),
    [
        ("u-dash-1", "auto"),
        ("WANG.FANG@example.com", "auto"),
        ("139 0013 9000", "phone"),
        (OPENID, "auto"),
        ("dev-dash-1", "auto"),  # the merged visitor's anonymous id
    ],
)
def test_open_contact_finds_one_person_by_any_of_their_ids(
    client: TestClient, people: dict[str, str], value: str, by: str
) -> None:
    found = client.get("/dashboard/contacts", params={"id": value, "by": by})
    assert found.status_code == 303, found.text[:300]
    assert found.headers["location"] == f"/dashboard/contacts/{people['wang']}"
    page = client.get(found.headers["location"])
    assert page.status_code == 200
    assert f"Ids merged into this contact: {people['visitor']}" in page.text


def test_a_merged_contact_id_opens_the_survivor(client: TestClient, people: dict[str, str]) -> None:
    found = client.get("/dashboard/contacts", params={"id": people["visitor"]})
    assert found.headers["location"] == f"/dashboard/contacts/{people['wang']}"


def test_several_matches_are_listed_with_what_matched(
    client: TestClient, people: dict[str, str]
) -> None:
    listed = client.get("/dashboard/contacts", params={"id": "13900139000"})
    assert listed.status_code == 200, listed.text[:300]
    assert 'id="matches"' in listed.text
    assert f'href="/dashboard/contacts/{people["wang"]}"' in listed.text
    assert f'href="/dashboard/contacts/{people["digits"]}"' in listed.text
    assert "phone +8613900139000" in listed.text
    assert "user_id 13900139000" in listed.text


@pytest.mark.parametrize(
    ("value", "by", "status", "says"),
    [
        ("nobody@example.com", "auto", 404, "no contact with email nobody@example.com"),
        ("+8613700137000", "phone", 404, "no contact with phone +8613700137000"),
        ("u-nobody", "user_id", 404, "no contact with user_id &#39;u-nobody&#39;"),
        ("wang.fang@", "auto", 400, "is not an email address"),
        ("call me", "phone", 400, "&#39;call me&#39; is not a phone number"),
        ("u-dash-1", "passport", 400, "by=&#39;passport&#39; is not a kind of id"),
    ],
)
def test_no_match_or_a_malformed_value_is_a_page_naming_it(
    client: TestClient, people: dict[str, str], value: str, by: str, status: int, says: str
) -> None:
    page = client.get("/dashboard/contacts", params={"id": value, "by": by})
    assert page.status_code == status, page.text[:300]
    assert says in page.text


def test_an_unknown_id_opens_the_contact_page_which_says_so(client: TestClient) -> None:
    """An id the database lacks may still have a workflow (a rehearsal): the contact page
    asks Temporal, and without either it is a 404 naming the id."""
    found = client.get("/dashboard/contacts", params={"id": "c_nobody"})
    assert found.headers["location"] == "/dashboard/contacts/c_nobody"
    page = client.get("/dashboard/contacts/c_nobody")
    assert page.status_code == 404
    assert "no contact with id &#39;c_nobody&#39;" in page.text
