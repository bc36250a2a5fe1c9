"""What the Segment API does with hostile batches (issue 17): a message nested too deep is
refused by index while the rest of its batch is stored, and an answer lists at most
``MAX_PROBLEMS`` problems and counts the rest, so a bad batch never makes a huge answer."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from stagecoach.engine.api.routes.events import MAX_PROBLEMS, create_write_key
from stagecoach.engine.app import create_app
from stagecoach.engine.services.ingest import MAX_BATCH_BYTES
from stagecoach.engine.services.ingest._segment import MAX_DEPTH
from stagecoach.engine.services.storage.models import Event
from stagecoach.engine.settings import Settings
from tests.helpers import migrated_engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = migrated_engine(f"sqlite:///{tmp_path}/ingest.db")
    yield db
    db.dispose()


@pytest.fixture
def api(engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/ingest.db")
    key = create_write_key(engine, "web", source="web")
    auth = base64.b64encode(f"{key}:".encode()).decode()
    with TestClient(
        create_app(settings, db=engine), headers={"Authorization": f"Basic {auth}"}
    ) as client:
        yield client


def stored(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return list(session.exec(select(Event.message_id).order_by(col(Event.id))).all())


def nested(levels: int) -> Any:
    """A JSON value ``levels`` deep: ``[[...[]...]]``."""
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


def track(message_id: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": "u-1",
        "messageId": message_id,
        "event": "content.downloaded",
        "properties": properties,
    }


# --- nesting -------------------------------------------------------------------------------


def test_a_message_nested_too_deep_is_refused_by_index_and_the_rest_stored(
    api: TestClient, engine: Engine
) -> None:
    batch = [track("d-0"), track("d-1", deep=nested(300)), track("d-2")]
    response = api.post("/v1/batch", json={"batch": batch, "context": {"locale": "en"}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 2
    [problem] = body["errors"]
    assert problem["index"] == 1
    assert problem["field"] == "body"
    assert f"the limit is {MAX_DEPTH}" in problem["message"]
    assert stored(engine) == ["d-0", "d-2"]


def test_a_batch_of_only_deep_messages_is_400_listing_each(api: TestClient, engine: Engine) -> None:
    batch = [track(f"d-{n}", deep=nested(400)) for n in range(3)]
    response = api.post("/v1/batch", json={"batch": batch})
    assert response.status_code == 400, response.text
    assert [e["index"] for e in response.json()["errors"]] == [0, 1, 2]
    assert stored(engine) == []


def test_a_single_call_nested_too_deep_is_400_naming_the_limit(
    api: TestClient, engine: Engine
) -> None:
    response = api.post("/v1/track", json=track("d-9", deep=nested(300)))
    assert response.status_code == 400, response.text
    assert str(MAX_DEPTH) in response.json()["errors"][0]["message"]
    assert stored(engine) == []


def test_nesting_just_within_the_limit_is_stored(api: TestClient, engine: Engine) -> None:
    # The message object, properties and the value: MAX_DEPTH levels in all.
    response = api.post("/v1/track", json=track("d-ok", deep=nested(MAX_DEPTH - 2)))
    assert response.status_code == 200, response.text
    assert stored(engine) == ["d-ok"]


def test_a_body_too_deep_to_decode_is_400_malformed_json(api: TestClient, engine: Engine) -> None:
    # Past the JSON reader's own limit nothing of the body can be read, so no item can
    # be stored or named: the whole body is refused, and a client must not retry it.
    body = '{"batch": [' + "[" * 2000 + "]" * 2000 + "]}"
    response = api.post("/v1/batch", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["field"] == "body"
    assert stored(engine) == []


def test_a_context_that_is_not_an_object_is_named_not_a_500(
    api: TestClient, engine: Engine
) -> None:
    batch = [track("c-0"), {**track("c-1"), "context": "not an object"}]
    response = api.post("/v1/batch", json={"batch": batch, "context": {"locale": "en"}})
    assert response.status_code == 200, response.text
    [problem] = response.json()["errors"]
    assert (problem["index"], problem["field"]) == (1, "context")
    assert stored(engine) == ["c-0"]


# --- the size of an answer ----------------------------------------------------------------


def test_a_batch_of_empty_objects_gets_a_small_answer(api: TestClient, engine: Engine) -> None:
    count = (MAX_BATCH_BYTES - 1024) // 3  # "{}," each: the probe's 480 KB batch
    body = '{"batch": [' + ",".join(["{}"] * count) + "]}"
    assert len(body) < MAX_BATCH_BYTES
    response = api.post("/v1/batch", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert len(response.content) < 20_000
    answer = response.json()
    assert len(answer["errors"]) == MAX_PROBLEMS
    assert [e["index"] for e in answer["errors"]] == list(range(MAX_PROBLEMS))
    assert answer["omitted"] == count - MAX_PROBLEMS
    assert stored(engine) == []


def test_good_messages_among_many_bad_are_stored_and_the_rest_counted(
    api: TestClient, engine: Engine
) -> None:
    batch: list[Any] = [{"type": "track"}] * 250
    batch[7] = track("g-7")
    batch[249] = track("g-249")
    response = api.post("/v1/batch", content=json.dumps({"batch": batch}))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["accepted"] == 2
    assert len(answer["errors"]) == MAX_PROBLEMS
    assert answer["omitted"] == 248 - MAX_PROBLEMS
    assert stored(engine) == ["g-7", "g-249"]


def test_an_answer_with_few_problems_has_no_omitted(api: TestClient) -> None:
    response = api.post("/v1/batch", json={"batch": [track("f-0"), {"type": "track"}]})
    assert response.status_code == 200
    assert "omitted" not in response.json()
