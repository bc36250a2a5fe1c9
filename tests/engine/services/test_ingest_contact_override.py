"""``Incoming.contact_id``: an event that names its contact is stored on it (or on the
contact it was merged into), its new identities join that contact, identities of other
contacts stay theirs, and an unknown id falls back to identity resolution. Both ways the
store writes (the bulk path, and row by row for consent and aliases) behave the same."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from stagecoach.engine.services.ingest import Incoming, Ingestor, Outcome
from stagecoach.engine.services.ingest._store import survivors
from stagecoach.engine.services.storage.models import (
    Consent,
    Contact,
    Event,
    Identity,
    Merge,
    Outbox,
)

WHEN = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)

ROW_BY_ROW = {"consent": {"email": True}}
"""Traits that send a message down the row-by-row path (consent is recorded row by row)."""


@pytest.fixture(params=["bulk", "row_by_row"])
def path(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def engine(db_engine: Engine) -> Engine:
    return db_engine


def store(engine: Engine, *messages: Incoming) -> list[Outcome]:
    """One transaction, as one group commit writes it."""
    [outcomes] = Ingestor(engine).store([list(messages)])
    return outcomes


def identify(message_id: str, **identities: str) -> Incoming:
    return Incoming(
        kind="identify",
        message_id=message_id,
        type="identify",
        occurred_at=WHEN,
        user_id=identities.get("user_id"),
        identities=dict(identities),
    )


def event(
    message_id: str, contact_id: str | None, *, path: str = "bulk", **identities: str
) -> Incoming:
    traits: dict[str, Any] = dict(ROW_BY_ROW) if path == "row_by_row" else {}
    return Incoming(
        kind="track",
        message_id=message_id,
        type="email.clicked",
        occurred_at=WHEN,
        properties={"url": "https://example.cn/oee"},
        traits=traits,
        identities=dict(identities),
        source="email_tracking",
        channel="email",
        contact_id=contact_id,
    )


def contact_of(engine: Engine, message_id: str) -> str:
    with Session(engine) as session:
        row = session.exec(select(Event).where(col(Event.message_id) == message_id)).one()
    return row.contact_id


def owners(engine: Engine) -> dict[tuple[str, str], str]:
    with Session(engine) as session:
        return {(i.kind, i.value): i.contact_id for i in session.exec(select(Identity)).all()}


def count(engine: Engine, model: Any) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


def test_contact_id_is_the_last_field_and_optional() -> None:
    message = identify("m-1", user_id="u-1")
    assert message.contact_id is None
    assert list(Incoming.__dataclass_fields__)[-1] == "contact_id"


def test_event_goes_to_the_named_contact_and_its_new_identities_join_it(
    engine: Engine, path: str
) -> None:
    [seed] = store(engine, identify("seed", user_id="u-1"))
    [outcome] = store(engine, event("click-1", seed.contact_id, path=path, email="li@example.cn"))
    assert outcome.contact_id == seed.contact_id
    assert (outcome.duplicate, outcome.merged) == (False, [])
    assert contact_of(engine, "click-1") == seed.contact_id
    assert owners(engine)[("email", "li@example.cn")] == seed.contact_id
    assert count(engine, Contact) == 1
    assert count(engine, Outbox) == 2  # relevance unknown: every event is signalled


def test_a_named_event_without_identities_needs_none(engine: Engine, path: str) -> None:
    [seed] = store(engine, identify("seed", user_id="u-1"))
    [outcome] = store(engine, event("click-1", seed.contact_id, path=path))
    assert outcome.contact_id == seed.contact_id
    assert count(engine, Contact) == 1


def test_identities_of_another_contact_stay_theirs_and_nobody_is_merged(
    engine: Engine, path: str
) -> None:
    first, second = store(
        engine,
        identify("seed-1", user_id="u-1"),
        identify("seed-2", user_id="u-2", email="shared@example.cn"),
    )
    assert first.contact_id != second.contact_id
    [outcome] = store(
        engine, event("click-1", first.contact_id, path=path, email="shared@example.cn")
    )
    assert outcome.contact_id == first.contact_id
    assert outcome.merged == []
    assert owners(engine)[("email", "shared@example.cn")] == second.contact_id
    assert count(engine, Merge) == 0
    with Session(engine) as session:
        assert session.get(Contact, second.contact_id).stage != "merged"  # type: ignore[union-attr]


def test_a_merged_contact_id_leads_to_the_survivor(engine: Engine, path: str) -> None:
    a, b = store(engine, identify("seed-a", user_id="u-a"), identify("seed-b", user_id="u-b"))
    alias = Incoming(
        kind="alias",
        message_id="alias-1",
        type="alias",
        occurred_at=WHEN,
        user_id="u-a",
        previous_id="u-b",
        identities={"user_id": "u-a"},
    )
    [merged] = store(engine, alias)
    assert merged.merged == [b.contact_id]
    [outcome] = store(engine, event("click-1", b.contact_id, path=path))
    assert outcome.contact_id == a.contact_id
    assert contact_of(engine, "click-1") == a.contact_id


def test_merge_chains_are_followed_to_their_end(engine: Engine) -> None:
    with Session(engine) as session:
        for cid in ("c_a", "c_b", "c_c"):
            session.add(Contact(id=cid))
        session.add(Merge(merged_id="c_a", into_id="c_b", reason="test"))
        session.add(Merge(merged_id="c_b", into_id="c_c", reason="test"))
        session.commit()
        found = survivors(session.connection(), ["c_a", "c_b", "c_c", "c_gone", ""])
    assert found == {"c_a": "c_c", "c_b": "c_c", "c_c": "c_c"}


def test_an_unknown_contact_id_falls_back_to_the_identities(engine: Engine, path: str) -> None:
    [seed] = store(engine, identify("seed", user_id="u-1"))
    [outcome] = store(engine, event("click-1", "c_never_ours", path=path, user_id="u-1"))
    assert outcome.contact_id == seed.contact_id
    assert count(engine, Contact) == 1


def test_an_unknown_contact_id_with_two_owners_still_merges_as_before(engine: Engine) -> None:
    first, second = store(
        engine,
        identify("seed-1", user_id="u-1"),
        identify("seed-2", email="x@example.cn"),
    )
    [outcome] = store(engine, event("m", "c_gone", user_id="u-1", email="x@example.cn"))
    assert outcome.contact_id == first.contact_id
    assert outcome.merged == [second.contact_id]


def test_a_replayed_named_event_is_a_duplicate(engine: Engine, path: str) -> None:
    [seed] = store(engine, identify("seed", user_id="u-1"))
    store(engine, event("click-1", seed.contact_id, path=path))
    [again] = store(engine, event("click-1", seed.contact_id, path=path))
    assert again.duplicate
    assert again.contact_id == seed.contact_id
    assert count(engine, Event) == 2


def test_in_one_transaction_a_later_message_still_finds_the_identitys_real_owner(
    engine: Engine, path: str
) -> None:
    """The bulk path caches who owns what: a named event must not teach it that the
    named contact owns an identity it was not given."""
    first, second = store(
        engine,
        identify("seed-1", user_id="u-1"),
        identify("seed-2", user_id="u-2", email="shared@example.cn"),
    )
    named, anonymous = store(
        engine,
        event("click-1", first.contact_id, path=path, email="shared@example.cn"),
        event("click-2", None, email="shared@example.cn"),
    )
    assert named.contact_id == first.contact_id
    assert anonymous.contact_id == second.contact_id
    assert count(engine, Merge) == 0


def test_named_events_mixed_with_others_in_one_transaction(engine: Engine) -> None:
    [seed] = store(engine, identify("seed", user_id="u-1"))
    outcomes = store(
        engine,
        event("n-1", seed.contact_id, email="new@example.cn"),
        event("o-1", None, user_id="u-9"),
        event("n-2", seed.contact_id, path="row_by_row"),
        event("o-2", None, email="new@example.cn"),  # learnt from n-1 in this transaction
    )
    assert [o.contact_id == seed.contact_id for o in outcomes] == [True, False, True, True]
    assert count(engine, Consent) == 1


def test_a_named_alias_attaches_the_previous_id_without_merging(engine: Engine) -> None:
    first, second = store(
        engine, identify("seed-1", user_id="u-1"), identify("seed-2", user_id="u-2")
    )
    alias = Incoming(
        kind="alias",
        message_id="alias-1",
        type="alias",
        occurred_at=WHEN,
        user_id="u-1",
        previous_id="anon-7",
        identities={"user_id": "u-1"},
        contact_id=second.contact_id,
    )
    [outcome] = store(engine, alias)
    assert outcome.contact_id == second.contact_id
    assert owners(engine)[("anonymous_id", "anon-7")] == second.contact_id
    assert owners(engine)[("user_id", "u-1")] == first.contact_id
    [taken] = store(engine, replace(alias, message_id="alias-2", previous_id="u-1"))
    assert taken.merged == []
    assert ("anonymous_id", "u-1") not in owners(engine)  # u-1 is a user id already
    assert count(engine, Merge) == 0


async def test_accept_takes_the_override_too(engine: Engine) -> None:
    ingestor = Ingestor(engine)
    try:
        [seed] = await ingestor.accept([identify("seed", user_id="u-1")])
        [outcome] = await ingestor.accept([event("click-1", seed.contact_id)])
    finally:
        await ingestor.close()
    assert outcome.contact_id == seed.contact_id


@pytest.mark.postgres
def test_override_on_postgresql(db_engine: Engine) -> None:
    first, second = store(
        db_engine,
        identify("seed-1", user_id="u-1"),
        identify("seed-2", user_id="u-2", email="shared@example.cn"),
    )
    for path in ("bulk", "row_by_row"):
        [outcome] = store(
            db_engine,
            event(f"click-{path}", first.contact_id, path=path, email="shared@example.cn"),
        )
        assert outcome.contact_id == first.contact_id
    assert owners(db_engine)[("email", "shared@example.cn")] == second.contact_id
    assert count(db_engine, Merge) == 0
