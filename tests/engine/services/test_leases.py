"""Leases on the application database: one holder at a time, expiry by the database's
clock, fencing tokens that refuse a stale holder's writes; on SQLite and PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlmodel import col

from stagecoach.engine.domain.errors import ConfigurationError
from stagecoach.engine.services.leases import Fenced, Held, Leases
from stagecoach.engine.services.storage import make_engine, upgrade
from stagecoach.engine.services.storage.models import Lease, Outbox, outbox_bucket
from stagecoach.engine.settings import load_settings


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest) -> Engine:
    engine: Engine = request.getfixturevalue("db_engine")
    return engine


def test_one_holder_at_a_time_and_the_token_grows_at_each_change(db: Engine) -> None:
    a, b = Leases(db, ttl=30, holder="a"), Leases(db, ttl=30, holder="b")
    got = a.acquire(["job"])
    assert set(got) == {"job"}
    first = got["job"].token
    assert b.acquire(["job"]) == {}  # held and unexpired: refused
    assert a.acquire(["job"])["job"].token == first  # its own again: same token
    a.release([got["job"]])
    taken = b.acquire(["job"])
    assert taken["job"].token == first + 1
    assert a.renew([got["job"]]) == {}  # a's grant is gone: a stops its work


def test_an_expired_lease_is_taken_over_and_the_old_holders_writes_are_fenced(db: Engine) -> None:
    a, b = Leases(db, ttl=1, holder="a"), Leases(db, ttl=30, holder="b")
    old = a.acquire(["job"])["job"]
    assert b.acquire(["job"]) == {}
    time.sleep(1.2)  # a "paused" past its lease: no renewal
    assert not old.usable()
    new = b.acquire(["job"])["job"]
    assert new.token == old.token + 1
    with db.begin() as conn:
        with pytest.raises(Fenced, match="no longer held by a"):
            a.fence(conn, old)
        b.fence(conn, new)
    # A guarded write by the stale holder changes nothing; the new holder's does.
    with db.begin() as conn:
        conn.execute(
            insert(Outbox),
            [
                {
                    "contact_id": "c-1",
                    "bucket": outbox_bucket("c-1"),
                    "attempts": 0,
                    "created_at": datetime.now(UTC),
                }
            ],
        )
    with db.begin() as conn:
        assert conn.execute(delete(Outbox).where(a.holds(old))).rowcount == 0
    with db.begin() as conn:
        assert conn.execute(delete(Outbox).where(b.holds(new))).rowcount == 1


def test_renewal_keeps_a_lease_past_its_ttl_and_acquire_honours_the_limit(db: Engine) -> None:
    a, b = Leases(db, ttl=1, holder="a"), Leases(db, ttl=1, holder="b")
    names = [f"bucket/{n}" for n in range(6)]
    held = a.acquire(names, limit=4)
    assert len(held) == 4
    for _ in range(3):
        time.sleep(0.4)
        held = a.renew(held.values())
        assert len(held) == 4
    assert set(b.acquire(names)) == set(names) - set(held)  # only the two free ones
    assert a.live("bucket/") + b.live("bucket/") == 2 * 6  # each counts every live lease
    holders = a.holders(names)
    assert sorted(h for h, _, live in holders.values() if live) == ["a"] * 4 + ["b"] * 2


def test_a_lease_needs_a_positive_ttl(db_engine: Engine) -> None:
    with pytest.raises(ValueError, match="ttl must be positive"):
        Leases(db_engine, ttl=0)


@pytest.mark.parametrize("url", ["sqlite", pytest.param("pg", marks=pytest.mark.postgres)])
def test_the_migration_gives_waiting_outbox_rows_their_bucket(url: str, database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine, "0011")
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO outbox (contact_id, attempts, created_at) VALUES "
                "('c-alpha', 0, CURRENT_TIMESTAMP), ('c-beta', 0, CURRENT_TIMESTAMP)"
            )
        upgrade(engine)
        with engine.connect() as conn:
            rows = conn.execute(select(col(Outbox.contact_id), col(Outbox.bucket))).all()
            assert conn.execute(select(Lease)).all() == []
        assert {cid: b for cid, b in rows} == {
            "c-alpha": outbox_bucket("c-alpha"),
            "c-beta": outbox_bucket("c-beta"),
        }
    finally:
        engine.dispose()


def test_a_held_job_waits_for_the_holder_and_stops_once_its_lease_is_taken(db: Engine) -> None:
    first, second = Leases(db, ttl=1, holder="first"), Leases(db, ttl=1, holder="second")
    naps: list[float] = []

    def nap(seconds: float) -> None:  # the second waits until the first is done
        naps.append(seconds)
        if len(naps) == 2:
            first.release([held.grant])  # type: ignore[list-item]

    with Held(first, "job") as held:
        with Held(second, "job", sleep=nap) as waiting:
            assert waiting.grant is not None
            assert waiting.grant.token == held.grant.token + 1  # type: ignore[union-attr]
            assert len(naps) == 2
        # The first's lease is gone: its next step is refused, before any write.
        time.sleep(first.renew_every)
        with pytest.raises(Fenced, match="taken by another process"):
            held.keep()
        held.grant = None


def test_members_gone_for_an_hour_are_pruned_and_live_ones_kept(db: Engine) -> None:
    gone, here = Leases(db, ttl=30, holder="gone"), Leases(db, ttl=30, holder="here")
    gone.acquire(["member/gone", "other/gone"])
    here.acquire(["member/here"])
    with db.begin() as conn:  # "gone" stopped renewing long ago
        conn.execute(update(Lease).where(col(Lease.holder) == "gone").values(expires_at=1_000.0))
    here.prune("member/")
    with db.connect() as conn:
        names = sorted(conn.execute(select(col(Lease.name))).scalars())
    assert names == ["member/here", "other/gone"]  # only the prefix asked for


@pytest.mark.parametrize("value", ["0", "0.5", "301", "ten"])
def test_a_lease_length_out_of_range_is_refused_naming_the_setting(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under a second, renewals (a third of it) would crowd the database and a loaded
    # replica would lose its lease; over five minutes, a dead replica's work waits too long.
    monkeypatch.setenv("STAGECOACH_LEASE_SECONDS", value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    line = caught.value.one_line()
    assert "STAGECOACH_LEASE_SECONDS" in line
    assert "Fix:" in line


@pytest.mark.postgres
def test_a_holder_paused_inside_its_fenced_transaction_does_not_hold_off_the_takeover(
    db_engine: Engine,
) -> None:
    """A holds its lease rows locked ``FOR SHARE`` while it fences a write, then stops
    (a SIGSTOP, a long GC pause: here, a transaction left open). Once A's lease has
    expired, B takes it over within about the lease's length: PostgreSQL ends A's idle
    session instead of leaving B waiting on its lock until A resumes. A's write, when it
    resumes, fails."""
    a, b = Leases(db_engine, ttl=1, holder="a"), Leases(db_engine, ttl=30, holder="b")
    grant = a.acquire(["job"])["job"]
    paused = db_engine.connect()
    paused.begin()
    a.fence(paused, grant)  # the rows are locked until this transaction ends
    time.sleep(1.1)  # past A's lease

    pool = concurrent.futures.ThreadPoolExecutor(1)
    asked = pool.submit(b.acquire, ["job"])
    try:
        taken = asked.result(timeout=15)
    except concurrent.futures.TimeoutError:
        paused.close()  # A "resumes" and ends its transaction: only then would B get in
        pytest.fail("B waited on the paused holder's lock past its lease")
    finally:
        pool.shutdown(wait=True)

    assert set(taken) == {"job"}
    assert taken["job"].token == grant.token + 1
    with pytest.raises(DBAPIError, match="idle-in-transaction"):
        paused.execute(delete(Outbox).where(a.holds(grant)))
    paused.close()
