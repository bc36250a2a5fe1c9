"""The analytics store copies the database into DuckDB, incrementally and merge-aware;
synthetic data fill it like a real pipeline would."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlmodel import Session, col, update

from stagecoach.engine.domain.bounces import key_digest
from stagecoach.engine.domain.errors import DatabaseError
from stagecoach.engine.services.analytics.store import (
    AnalyticsStore,
    create_tables,
    default_path,
)
from stagecoach.engine.services.analytics.synthetic import generate
from stagecoach.engine.services.storage.models import (
    Contact,
    Delivery,
    Event,
    Handoff,
    Merge,
    Referral,
    ReferralCode,
    StageTransition,
)
from tests.helpers import migrated_engine

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
KEY = "c1|welcome|v1|welcome-1|1"


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite file database, as the embedded default runs."""
    engine = migrated_engine(f"sqlite:///{tmp_path / 'stagecoach.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def store() -> Iterator[AnalyticsStore]:
    with AnalyticsStore(":memory:", id_overlap=0) as s:
        yield s


def add(engine: Engine, *rows: Any) -> None:
    with Session(engine) as session:
        for row in rows:
            session.add(row)
            session.commit()


def event(n: int, contact: str, name: str, at: datetime, **kw: Any) -> Event:
    return Event(message_id=f"m{n}", contact_id=contact, name=name, occurred_at=at, **kw)


def seed(engine: Engine) -> None:
    """Two contacts with events, transitions, a delivery and its open, a hand-off, a
    referral."""
    add(
        engine,
        Contact(id="c1", stage="lead", traits={"company": "Acme"}, created_at=T0, updated_at=T0),
        Contact(id="c2", stage="suspect", created_at=T0, updated_at=T0),
    )
    add(
        engine,
        event(1, "c1", "page.viewed", T0 + timedelta(hours=2), source="web", channel="web",
              properties={"utm_source": "newsletter"}),
        event(2, "c1", "page.viewed", T0 + timedelta(hours=1), source="wechat", channel="wechat",
              context={"campaign": {"source": "wechat-menu"}}),
        event(3, "c1", "email.opened", T0 + timedelta(days=1), source="email_tracking",
              properties={"message_id": key_digest(KEY)}),
        event(4, "c2", "page.viewed", T0 + timedelta(hours=5), source="google"),
        StageTransition(key="c1:1", contact_id="c1", to_stage="suspect", reason="opened",
                        source="workflow", at=T0),
        StageTransition(key="c1:2", contact_id="c1", from_stage="suspect", to_stage="lead",
                        reason="engaged", source="workflow", at=T0 + timedelta(days=2)),
        Delivery(idempotency_key=KEY, contact_id="c1", journey="welcome", journey_version="v1",
                 step_id="welcome-1", channel="email", status="sending", created_at=T0),
        Handoff(id="h_1", idempotency_key="h1", contact_id="c1", grade="A", created_at=T0),
        ReferralCode(code="REF1", referrer_id="c1", expires_at=T0 + timedelta(days=90)),
    )  # fmt: skip
    add(engine, Referral(code="REF1", referrer_id="c1", referee_id="c2", created_at=T0))


def scalar(store: AnalyticsStore, sql: str) -> Any:
    with store.read() as con:
        row = con.execute(sql).fetchone()
    assert row is not None
    return row[0]


def rows(store: AnalyticsStore, sql: str) -> list[tuple[Any, ...]]:
    with store.read() as con:
        return con.execute(sql).fetchall()


def keys_agree(store: AnalyticsStore) -> bool:
    """Every row's contact_key is its contact's key, and contacts' keys are distinct."""
    checks = [
        "SELECT count(*) = count(DISTINCT contact_key) AND count(contact_key) = count(*) "
        "FROM contacts",
        "SELECT bool_and(c.contact_key = t.contact_key) FROM events t "
        "JOIN contacts c ON c.id = t.contact_id",
        "SELECT bool_and(c.contact_key = t.contact_key) FROM stage_transitions t "
        "JOIN contacts c ON c.id = t.contact_id",
    ]
    return all(scalar(store, sql) for sql in checks)


def test_first_sync_copies_every_table(source: Engine, store: AnalyticsStore) -> None:
    seed(source)
    assert store.as_of is None

    result = store.sync(source)

    assert result.rows == {
        "merges": 0,
        "contacts": 2,
        "events": 4,
        "stage_transitions": 2,
        "deliveries": 1,
        "journey_enrolments": 0,
        "handoffs": 1,
        "referrals": 1,
    }
    assert result.skipped == ()
    assert store.as_of == result.as_of
    # Acquisition is the earliest event's, by occurred_at, not by id.
    assert rows(store, "SELECT id, acquired_source, acquired_channel, acquired_campaign "
                       "FROM contacts ORDER BY id") == [
        ("c1", "wechat", "wechat", "wechat-menu"),
        ("c2", "google", None, None),
    ]  # fmt: skip
    # Opens join their delivery through the digest.
    assert rows(
        store,
        "SELECT e.name, d.step_id FROM events e JOIN deliveries d ON d.digest = e.delivery",
    ) == [("email.opened", "welcome-1")]
    # Times are naive UTC.
    assert scalar(store, 'SELECT max("at") FROM stage_transitions') == datetime(2025, 3, 5, 9)
    assert scalar(store, "SELECT traits->>'company' FROM contacts WHERE id = 'c1'") == "Acme"
    assert keys_agree(store)


def test_second_sync_reads_only_what_changed(source: Engine, store: AnalyticsStore) -> None:
    seed(source)
    store.sync(source)
    add(
        source,
        event(5, "c2", "form.submitted", T0 + timedelta(days=3)),
        event(6, "c2", "page.viewed", T0 - timedelta(days=1), source="linkedin"),
    )

    result = store.sync(source)

    assert result.rows["events"] == 2
    assert result.rows["stage_transitions"] == 0
    assert result.rows["contacts"] == 2  # the overlap re-reads recently updated rows
    assert result.added == {
        "contacts": 0,
        "events": 2,
        "stage_transitions": 0,
        "deliveries": 0,
        "journey_enrolments": 0,
        "handoffs": 0,
        "referrals": 0,
    }
    assert scalar(store, "SELECT count(*) FROM events") == 6
    # A late event that happened earlier moves the acquisition.
    assert scalar(store, "SELECT acquired_source FROM contacts WHERE id = 'c2'") == "linkedin"


def test_overlap_picks_up_ids_committed_late(source: Engine) -> None:
    seed(source)
    with AnalyticsStore(":memory:") as store:
        store.sync(source)
        # Simulate a PostgreSQL transaction that took id 3 earlier but committed now.
        with source.begin() as conn:
            conn.execute(sa.text("DELETE FROM events WHERE id = 3"))
        with AnalyticsStore(":memory:") as fresh:
            fresh.sync(source)
            add(source, event(3, "c1", "email.opened", T0 + timedelta(days=1)))
            result = fresh.sync(source)
            assert result.added["events"] == 1
            assert scalar(fresh, "SELECT count(*) FROM events") == 4


def test_changed_rows_replace_their_copies(source: Engine, store: AnalyticsStore) -> None:
    seed(source)
    store.sync(source)
    later = datetime.now(UTC)
    with Session(source) as session:
        session.execute(
            update(Contact)
            .where(col(Contact.id) == "c2")
            .values(stage="prospect", updated_at=later)
        )
        session.execute(
            update(Delivery).where(col(Delivery.idempotency_key) == KEY).values(status="sent")
        )
        session.execute(update(Handoff).values(status="accepted"))
        session.execute(update(Referral).values(status="converted", converted_at=later))
        session.commit()

    result = store.sync(source)

    assert result.added["contacts"] == 0
    assert rows(store, "SELECT id, stage FROM contacts ORDER BY id") == [
        ("c1", "lead"),
        ("c2", "prospect"),
    ]
    # The replaced contact keeps its acquisition.
    assert scalar(store, "SELECT acquired_source FROM contacts WHERE id = 'c2'") == "google"
    assert scalar(store, "SELECT status FROM deliveries") == "sent"
    assert scalar(store, "SELECT status FROM handoffs") == "accepted"
    assert scalar(store, "SELECT status FROM referrals") == "converted"
    # A sent delivery is final: the next sync does not read it again.
    assert store.sync(source).rows["deliveries"] == 0


def merge(engine: Engine, merged: str, into: str) -> None:
    """What ingestion does when two contacts turn out to be one."""
    with Session(engine) as session:
        session.execute(
            update(Event).where(col(Event.contact_id) == merged).values(contact_id=into)
        )
        session.add(Merge(merged_id=merged, into_id=into, reason="alias"))
        session.execute(
            update(Contact)
            .where(col(Contact.id) == merged)
            .values(stage="merged", traits={"merged_into": into})
        )
        session.commit()


def test_a_merge_remaps_copied_rows(source: Engine, store: AnalyticsStore) -> None:
    seed(source)
    add(source, Contact(id="c3", stage="suspect", created_at=T0, updated_at=T0))
    add(
        source,
        event(7, "c3", "page.viewed", T0 - timedelta(days=7), source="linkedin"),
        StageTransition(key="c3:1", contact_id="c3", to_stage="suspect", reason="opened",
                        source="workflow", at=T0 - timedelta(days=7)),
    )  # fmt: skip
    store.sync(source)

    merge(source, "c3", "c2")
    result = store.sync(source)

    assert result.merges_changed == 1
    assert rows(store, "SELECT contact_id, count(*) FROM events GROUP BY 1 ORDER BY 1") == [
        ("c1", 3),
        ("c2", 2),
    ]
    assert scalar(store, "SELECT count(*) FROM stage_transitions WHERE contact_id = 'c3'") == 0
    assert rows(store, "SELECT id FROM contacts ORDER BY id") == [("c1",), ("c2",)]
    # The merged contact's earlier event now acquires the survivor.
    assert scalar(store, "SELECT acquired_source FROM contacts WHERE id = 'c2'") == "linkedin"

    # A merge of a merge: c2 (holding c3's history) becomes c1; c3 resolves to c1 too.
    merge(source, "c2", "c1")
    late = StageTransition(
        key="c3:2", contact_id="c3", from_stage="suspect", to_stage="prospect", reason="late",
        source="workflow", at=T0,
    )  # fmt: skip
    add(source, late)
    result = store.sync(source)

    assert result.merges_changed == 2
    assert rows(store, "SELECT contact_id, count(*) FROM events GROUP BY 1") == [("c1", 5)]
    assert rows(store, "SELECT DISTINCT contact_id FROM stage_transitions") == [("c1",)]
    assert rows(store, "SELECT referrer_id, referee_id FROM referrals") == [("c1", "c1")]
    assert rows(store, "SELECT id, acquired_source FROM contacts") == [("c1", "linkedin")]
    # contact_key follows the id: one key for the survivor everywhere.
    assert keys_agree(store)


def test_journey_enrolments_are_copied_once_the_table_exists(
    source: Engine, store: AnalyticsStore
) -> None:
    seed(source)
    with source.begin() as conn:  # a database from before the table's migration
        conn.execute(sa.text("DROP TABLE journey_enrolments"))
    result = store.sync(source)
    assert result.skipped == ("journey_enrolments",)
    assert "journey_enrolments" not in result.rows
    metadata = sa.MetaData()
    table = sa.Table(
        "journey_enrolments",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("contact_id", sa.String(64)),
        sa.Column("journey", sa.String(128)),
        sa.Column("version", sa.String(64)),
        sa.Column("enrolment", sa.Integer),
        sa.Column("status", sa.String(16)),
        sa.Column("reason", sa.String(256)),
        sa.Column("arms", sa.JSON),
        sa.Column("trail", sa.JSON),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    metadata.create_all(source)
    with source.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {"contact_id": "c1", "journey": "welcome", "version": "v1", "enrolment": 1,
                 "status": "active", "arms": {"holdout": "treatment"}, "trail": ["s1"],
                 "started_at": T0, "finished_at": None},
                {"contact_id": "c2", "journey": "welcome", "version": "v1", "enrolment": 1,
                 "status": "completed", "arms": {"holdout": "holdout"}, "trail": [],
                 "started_at": T0, "finished_at": T0},
            ],
        )  # fmt: skip
    result = store.sync(source)
    assert result.skipped == ()
    assert result.rows["journey_enrolments"] == 2

    with source.begin() as conn:
        conn.execute(
            table.update()
            .where(table.c.contact_id == "c1")
            .values(status="completed", finished_at=T0 + timedelta(days=3))
        )
    assert store.sync(source).rows["journey_enrolments"] == 1  # the unfinished one, re-read
    assert rows(
        store,
        "SELECT contact_id, status, arms->>'holdout' FROM journey_enrolments ORDER BY 1",
    ) == [("c1", "completed", "treatment"), ("c2", "completed", "holdout")]
    assert store.sync(source).rows["journey_enrolments"] == 0


def test_a_file_store_serialises_sync_and_readers(source: Engine, tmp_path: Path) -> None:
    seed(source)
    path = default_path(tmp_path / "data")
    store = AnalyticsStore(path, lock_timeout=0.2)
    assert store.as_of is None  # never synced: the file is created, empty
    store.sync(source)
    assert scalar(store, "SELECT count(*) FROM events") == 4

    with store.read() as con:
        other = AnalyticsStore(path, lock_timeout=0.2)
        with other.read() as con2:  # readers share
            assert con2.execute("SELECT count(*) FROM contacts").fetchone() == (2,)
        with pytest.raises(DatabaseError, match="busy: reports are reading"):
            other.sync(source)
        assert con.execute("SELECT count(*) FROM contacts").fetchone() == (2,)
    assert other.sync(source).added["events"] == 0


def test_a_copy_from_an_older_schema_is_rebuilt(source: Engine, tmp_path: Path) -> None:
    seed(source)
    path = tmp_path / "analytics.duckdb"
    old = duckdb.connect(str(path))
    old.execute("CREATE TABLE events (id BIGINT PRIMARY KEY, contact_id VARCHAR)")
    old.execute("INSERT INTO events VALUES (99, 'gone')")
    old.execute("CREATE TABLE sync_state (name VARCHAR, watermark BIGINT, synced_at TIMESTAMP)")
    old.execute("INSERT INTO sync_state VALUES ('events', 99, now()::TIMESTAMP)")
    old.close()

    result = AnalyticsStore(path).sync(source)

    assert result.added["events"] == 4
    assert scalar(AnalyticsStore(path), "SELECT count(*) FROM events WHERE id = 99") == 0


def test_a_failed_sync_leaves_the_copy_as_it_was(source: Engine, store: AnalyticsStore) -> None:
    seed(source)
    store.sync(source)
    before = store.as_of
    add(source, event(8, "c1", "page.viewed", T0))
    with source.begin() as conn:  # a row no one can read, after the new event
        conn.execute(
            sa.text(
                "INSERT INTO stage_transitions (key, contact_id, to_stage, kind, reason, source,"
                " at) VALUES ('x', 'c1', 'lead', 'rule', 'r', 's', 'not a time')"
            )
        )
    with pytest.raises(duckdb.ConversionException, match="not a time"):
        store.sync(source)
    assert store.as_of == before
    assert scalar(store, "SELECT count(*) FROM events") == 4


@pytest.mark.postgres
def test_sync_from_postgresql(db_engine: Engine, store: AnalyticsStore) -> None:
    seed(db_engine)
    result = store.sync(db_engine)
    assert result.added["events"] == 4
    assert rows(store, "SELECT id, acquired_source FROM contacts ORDER BY id") == [
        ("c1", "wechat"),
        ("c2", "google"),
    ]
    assert scalar(store, "SELECT min(occurred_at) FROM events") == datetime(2025, 3, 3, 10)
    merge(db_engine, "c2", "c1")
    store.sync(db_engine)
    assert rows(store, "SELECT DISTINCT contact_id FROM events") == [("c1",)]


# --- synthetic data -----------------------------------------------------------------------


def snapshot(con: duckdb.DuckDBPyConnection) -> list[Any]:
    return [
        con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()  # noqa: S608
        for t in ("contacts", "events", "stage_transitions", "deliveries", "journey_enrolments")
    ]


def test_synthetic_data_depend_only_on_the_seed(duck: duckdb.DuckDBPyConnection) -> None:
    generate(duck, 300, seed=3)
    other = duckdb.connect(":memory:")
    create_tables(other)
    generate(other, 300, seed=3)
    assert snapshot(duck) == snapshot(other)
    third = duckdb.connect(":memory:")
    create_tables(third)
    generate(third, 300, seed=4)
    assert snapshot(duck) != snapshot(third)


def test_synthetic_data_look_like_a_pipeline(synthetic: duckdb.DuckDBPyConnection) -> None:
    def one(sql: str) -> Any:
        return synthetic.execute(sql).fetchall()[0][0]

    stages = dict(synthetic.execute("SELECT stage, count(*) FROM contacts GROUP BY 1").fetchall())
    assert stages["suspect"] > stages["prospect"] > stages["lead"] > stages["customer"]
    assert stages["advocate"] > 0
    assert stages["disqualified"] > 0
    events = one("SELECT count(*) FROM events") / one("SELECT count(*) FROM contacts")
    assert 19 < events < 22
    assert one("SELECT count(*) FROM stage_transitions WHERE kind = 'detour'") > 50
    # Every contact's acquisition is its first event's; every open quotes a real delivery.
    assert (
        one(
            "SELECT count(*) FROM contacts c JOIN events e ON e.contact_id = c.id "
            "AND e.occurred_at = c.created_at WHERE e.source <> c.acquired_source"
        )
        == 0
    )
    assert one("SELECT count(DISTINCT acquired_campaign) FROM contacts") == 5
    assert (
        one(
            "SELECT count(*) FROM events e LEFT JOIN deliveries d ON d.digest = e.delivery "
            "WHERE e.name = 'email.opened' AND d.id IS NULL"
        )
        == 0
    )
    assert one("SELECT count(*) FROM events WHERE name = 'email.opened'") > 100
    arms = synthetic.execute(
        "SELECT journey, arms->>'holdout', count(*) FROM journey_enrolments GROUP BY ALL"
    ).fetchall()
    assert {(j, a) for j, a, _ in arms} == {
        ("welcome", "treatment"), ("welcome", "holdout"),
        ("b2b_nurture", "treatment"), ("b2b_nurture", "holdout"),
    }  # fmt: skip
    assert one("SELECT count(DISTINCT arms->>'subject-test') FROM journey_enrolments") == 2
    assert one("SELECT count(*) FROM events WHERE name = 'nps.answered' "
               "AND properties->>'score' IS NULL") == 0  # fmt: skip


def test_synthetic_digests_are_the_engines(duck: duckdb.DuckDBPyConnection) -> None:
    # synthetic.py writes deliveries.digest in SQL; the sync uses
    # stagecoach.engine.domain.bounces.key_digest.
    key = "c00000001:welcome-v1:welcome-1:1"
    assert duck.execute("SELECT left(sha256(?), 32)", [key]).fetchall() == [(key_digest(key),)]


def test_a_second_generate_adds_new_contacts(duck: duckdb.DuckDBPyConnection) -> None:
    first = generate(duck, 200)
    second = generate(duck, 100, seed=1)
    assert second["contacts"] == 100
    total = duck.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchall()[0]
    assert total[0] == total[1] == first["events"] + second["events"]


# --- erasure ---------------------------------------------------------------------------------

PERSONAL = ("li.lei@example.cn", "+8613800138000", "Li Lei")


def everything(store: AnalyticsStore) -> str:
    """Every value of every table in the copy, as text, to search for personal data."""
    with store.read() as con:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        return "\n".join(
            f"{t}: {sorted(map(repr, con.execute(f'FROM {t}').fetchall()))}"
            for t in sorted(tables)
            if t != "sync_state"  # watermarks and times, no contact data
        )


def test_an_erased_contact_leaves_the_copy_at_the_next_sync(
    source: Engine, store: AnalyticsStore
) -> None:
    """Li Lei (c1, with c3 merged into her) is erased in the database; the next sync
    replaces every copied row of hers with the pseudonymous rows, counts intact."""
    from stagecoach.engine.api.routes.contacts import pseudonym, scrub
    from stagecoach.engine.services.lookup import find_person

    seed(source)
    add(
        source,
        Contact(id="c3", stage="suspect", traits={"phone": PERSONAL[1]}, created_at=T0,
                updated_at=T0),
        event(8, "c1", "identify", T0 + timedelta(hours=3), kind="identify",
              context={"traits": {"email": PERSONAL[0], "name": PERSONAL[2]}}),
        event(9, "c3", "identify", T0 - timedelta(days=1), kind="identify", source="linkedin",
              context={"traits": {"phone": PERSONAL[1]}}),
        StageTransition(key="c1:3", contact_id="c1", from_stage="lead", to_stage="lead",
                        kind="manual", reason=f"{PERSONAL[2]} called", source="cli",
                        at=T0 + timedelta(days=3)),
    )  # fmt: skip
    with Session(source) as session:
        row = session.get(Contact, "c1")
        assert row is not None
        row.traits = {"email": PERSONAL[0], "name": PERSONAL[2]}
        session.add(row)
        session.commit()
    merge(source, "c3", "c1")
    store.sync(source)
    copy = everything(store)
    assert all(value in copy for value in PERSONAL)  # the search can find them
    stages = rows(store, "SELECT stage, count(*) FROM contacts GROUP BY 1 ORDER BY 1")
    events_by_name = rows(store, "SELECT name, count(*) FROM events GROUP BY 1 ORDER BY 1")

    with Session(source) as session:
        person = find_person(session, "c1")
        assert person.ids == ("c1", "c3")
        scrub(session, person.ids, datetime.now(UTC))
        session.commit()
    result = store.sync(source)

    copy = everything(store)
    assert [value for value in PERSONAL if value in copy] == []
    assert result.erased == 2  # c1, and c3 merged into her
    assert "'c1'" not in copy  # the ids too: only pseudonyms
    assert "'c3'" not in copy
    # c3's events were moved to c1 by the merge: the five are the pseudonym's now.
    assert rows(store, "SELECT contact_id, count(*) FROM events GROUP BY 1 ORDER BY 2") == [
        ("c2", 1),
        (pseudonym("c1"), 5),
    ]
    assert rows(store, "SELECT stage, count(*) FROM contacts GROUP BY 1 ORDER BY 1") == stages
    assert rows(store, "SELECT name, count(*) FROM events GROUP BY 1 ORDER BY 1") == (
        events_by_name
    )
    assert keys_agree(store)
    # Within the overlap the pseudonymous row is read again: nothing changes, nothing fails.
    store.sync(source)
    assert everything(store) == copy
