"""Leases: shared background work held by one replica at a time, with fencing tokens.

Several API replicas share one application database. Work that must happen once per
cluster (forwarding one bucket of the outbox, a periodic job) is named, and a replica
does it only while it holds that name's lease in the ``leases`` table:

- **Time comes from the database.** ``expires_at`` is set and compared with the
  database's clock, so replicas whose clocks disagree still agree on who holds what.
- **A lease is taken only when free or expired**, by one conditional ``UPDATE``: of two
  replicas racing for it, one row count is 1 and the other's 0.
- **Each change of holder adds one to ``token``**: the fencing token. A holder's writes
  that must not happen after it lost the lease go through :meth:`Leases.fenced`, which
  locks the lease row (``FOR SHARE`` on PostgreSQL; SQLite has one writer at a time) and
  refuses to go on if the token moved. A replica paused past its lease (a GC pause, a
  SIGSTOP, a VM migration) and then resumed is refused by the database, not trusted.
- **A holder also keeps a local deadline** (:attr:`Grant.valid_until`, by the monotonic
  clock from when it asked): the lease surely lasts until then. Work the database cannot
  fence (an RPC to Temporal) checks it first, so a resumed replica stops by itself.
- **A holder renews every ``ttl / 3``**; a replica that dies stops renewing and its
  leases are free after at most ``ttl`` (``STAGECOACH_LEASE_SECONDS``).

Why a table, not PostgreSQL advisory locks: advisory locks are tied to one connection
(a pooled connection dropped mid-way silently frees them), carry no token to fence
with, and do not exist in SQLite, which one machine still uses. Why not a coordinator
(etcd, ZooKeeper, Consul): the database is already the one thing every replica shares,
and a lease is a few rows in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, and_, case, delete, func, literal_column, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from stagecoach.engine.services.storage.models import Lease

log = logging.getLogger("stagecoach.leases")

RENEW_FRACTION = 3
"""A holder renews ``RENEW_FRACTION`` times per ``ttl``: two renewals can fail (a
database hiccup) before the lease lapses."""
MARGIN_FRACTION = 5
"""Work that checks the local deadline stops ``ttl / MARGIN_FRACTION`` before it: room
for the RPC that the check guards to land before anyone else may take over."""
MEMBER_PRUNE_SECONDS = 3600.0
"""Membership rows of replicas gone this long are deleted (each process start adds one)."""


class Fenced(Exception):
    """This replica's lease moved to another replica: its write was refused."""


@dataclass
class Grant:
    """A lease this replica holds: the name, the fencing token and the local deadline."""

    name: str
    token: int
    valid_until: float
    """``time.monotonic()`` before which the lease surely has not expired."""

    def usable(self, margin: float = 0.0) -> bool:
        return time.monotonic() < self.valid_until - margin


def default_holder() -> str:
    """This process's name in the table: host, pid and a random part (a pid is reused)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _db_now(dialect: str) -> ColumnElement[float]:
    """Seconds since the epoch by the database's clock, with sub-second precision."""
    if dialect == "postgresql":
        # clock_timestamp(), not now(): now() is frozen at the transaction's start.
        return literal_column("CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)")
    return literal_column("((julianday('now') - 2440587.5) * 86400.0)")


class Leases:
    """One replica's handle on the ``leases`` table.

    Args:
        db: The application database every replica shares.
        ttl: Seconds a lease lasts unless renewed.
        holder: This replica's name (default: host, pid and a random part).
    """

    def __init__(self, db: Engine, *, ttl: float, holder: str | None = None) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._db = db
        self.ttl = ttl
        self.holder = holder or default_holder()
        self._now = _db_now(db.dialect.name)

    @property
    def renew_every(self) -> float:
        return self.ttl / RENEW_FRACTION

    @property
    def margin(self) -> float:
        return self.ttl / MARGIN_FRACTION

    def _insert_missing(self, conn: Connection, names: Sequence[str]) -> None:
        self._insert_missing_rows(conn, names)

    @staticmethod
    def _insert_missing_rows(conn: Connection, names: Sequence[str]) -> None:
        if not names:
            return
        have = set(
            conn.execute(select(col(Lease.name)).where(col(Lease.name).in_(names))).scalars()
        )
        missing = [n for n in names if n not in have]
        if not missing:
            return
        rows = [{"name": n, "holder": "", "token": 0, "expires_at": 0.0} for n in missing]
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            conn.execute(pg_insert(Lease).on_conflict_do_nothing(), rows)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            conn.execute(sqlite_insert(Lease).on_conflict_do_nothing(), rows)

    def acquire(self, names: Sequence[str], *, limit: int | None = None) -> dict[str, Grant]:
        """Take up to ``limit`` of ``names`` that are free, expired or already this
        replica's; returns the grants taken. A new holder gets a new token; a lease this
        replica still held keeps its token (nobody else held it in between)."""
        if not names or (limit is not None and limit <= 0):
            return {}
        asked = time.monotonic()
        with self._db.begin() as conn:
            self._insert_missing(conn, names)
            mine = col(Lease.holder) == self.holder
            candidates = select(col(Lease.name)).where(
                col(Lease.name).in_(names), or_(col(Lease.expires_at) < self._now, mine)
            )
            if limit is not None:
                candidates = candidates.order_by(col(Lease.name)).limit(limit)
            picked = list(conn.execute(candidates).scalars())
            if not picked:
                return {}
            # Conditional again: another replica may have taken one since the select.
            rows = conn.execute(
                update(Lease)
                .where(col(Lease.name).in_(picked), or_(col(Lease.expires_at) < self._now, mine))
                .values(
                    token=case((mine, col(Lease.token)), else_=col(Lease.token) + 1),
                    holder=self.holder,
                    expires_at=self._now + self.ttl,
                )
                .returning(col(Lease.name), col(Lease.token))
            ).all()
        return {name: Grant(name, token, asked + self.ttl) for name, token in rows}

    def renew(self, grants: Iterable[Grant]) -> dict[str, Grant]:
        """Extend the grants still held (same holder, same token); returns those. A grant
        missing from the answer was taken by another replica: stop its work."""
        held = {g.name: g for g in grants}
        if not held:
            return {}
        asked = time.monotonic()
        with self._db.begin() as conn:
            rows = conn.execute(
                update(Lease)
                .where(col(Lease.name).in_(list(held)), col(Lease.holder) == self.holder)
                .values(expires_at=self._now + self.ttl)
                .returning(col(Lease.name), col(Lease.token))
            ).all()
        out: dict[str, Grant] = {}
        for name, token in rows:
            if token == held[name].token:
                out[name] = Grant(name, token, asked + self.ttl)
        return out

    def release(self, grants: Iterable[Grant]) -> None:
        """Give leases back at once (a clean stop, or fewer wanted): nobody waits ``ttl``."""
        pairs = [(g.name, g.token) for g in grants]
        if not pairs:
            return
        with self._db.begin() as conn:
            conn.execute(
                update(Lease)
                .where(
                    col(Lease.holder) == self.holder,
                    or_(*(and_(col(Lease.name) == n, col(Lease.token) == t) for n, t in pairs)),
                )
                .values(holder="", expires_at=0.0)
            )

    def held(self, conn: Connection, grants: Iterable[Grant]) -> set[str]:
        """The names among ``grants`` still held with the same token, checked inside the
        caller's transaction on ``conn`` and kept so until it ends: on PostgreSQL the
        rows are locked ``FOR SHARE``, so a takeover waits for the commit."""
        tokens = {g.name: g.token for g in grants}
        if not tokens:
            return set()
        if conn.dialect.name == "postgresql":
            # A holder paused inside this transaction (a GC pause, a SIGSTOP, a frozen VM)
            # would keep the rows locked, and the takeover waiting, for as long as it is
            # paused. Past the lease's own length PostgreSQL ends its session instead: the
            # locks go, and the paused holder's write fails when it resumes.
            conn.exec_driver_sql(
                f"SET LOCAL idle_in_transaction_session_timeout = {max(1, int(self.ttl * 1000))}"
            )
        rows = conn.execute(
            select(col(Lease.name), col(Lease.token))
            .where(col(Lease.name).in_(list(tokens)), col(Lease.holder) == self.holder)
            .with_for_update(read=True)
        ).all()
        return {name for name, token in rows if tokens[name] == token}

    def holds(self, grant: Grant) -> ColumnElement[bool]:
        """A condition for a guarded write's ``WHERE``: true while ``grant`` holds. The
        write and the check are one statement, so on SQLite (one writer at a time) no
        takeover can come between them; on PostgreSQL lock the row first (:meth:`held`)."""
        return (
            select(col(Lease.name))
            .where(
                col(Lease.name) == grant.name,
                col(Lease.holder) == self.holder,
                col(Lease.token) == grant.token,
            )
            .exists()
        )

    def fence(self, conn: Connection, grant: Grant) -> None:
        """Raise :class:`Fenced` unless ``grant`` still holds, keeping it held until the
        caller's transaction on ``conn`` ends. Call it after the guarded write on SQLite
        (whose write lock then shuts out a takeover), before it on PostgreSQL, or both.

        Raises:
            Fenced: The lease has another holder or token: roll the transaction back.
        """
        if grant.name not in self.held(conn, [grant]):
            raise Fenced(
                f"lease {grant.name!r} (token {grant.token}) is no longer held by "
                f"{self.holder}: the write was refused"
            )

    def live(self, prefix: str) -> int:
        """How many leases named ``prefix``... are held and unexpired."""
        with self._db.connect() as conn:
            count = conn.execute(
                select(func.count())
                .select_from(Lease)
                .where(
                    col(Lease.name).startswith(prefix, autoescape=True),
                    col(Lease.holder) != "",
                    col(Lease.expires_at) >= self._now,
                )
            ).scalar_one()
        return int(count)

    def prune(self, prefix: str) -> None:
        """Delete leases named ``prefix``... expired for an hour (per-process names)."""
        with self._db.begin() as conn:
            conn.execute(
                delete(Lease).where(
                    col(Lease.name).startswith(prefix, autoescape=True),
                    col(Lease.expires_at) < self._now - MEMBER_PRUNE_SECONDS,
                )
            )

    def holders(self, names: Sequence[str]) -> dict[str, tuple[str, int, bool]]:
        """Who holds each of ``names``: holder, token and whether unexpired (for ops)."""
        with self._db.connect() as conn:
            rows = conn.execute(
                select(
                    col(Lease.name),
                    col(Lease.holder),
                    col(Lease.token),
                    col(Lease.expires_at) >= self._now,
                ).where(col(Lease.name).in_(names))
            ).all()
        return {n: (h, int(t), bool(live) and h != "") for n, h, t, live in rows}


# --- a synchronous job held once per cluster --------------------------------------------


class Held:
    """One lease held by a long synchronous job (a CLI command, a backfill): taken on
    entering, waiting while another process holds it; :meth:`keep` between steps renews
    it when due and raises :class:`Fenced` if it was lost; :meth:`fence` guards a step's
    transaction; given back on leaving."""

    def __init__(
        self, leases: Leases, name: str, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.leases = leases
        self.name = name
        self._sleep = sleep
        self.grant: Grant | None = None
        self.waited = 0.0
        """Seconds spent waiting for another holder to finish or lapse."""
        self._renewed = 0.0

    def __enter__(self) -> Held:
        started = time.monotonic()
        while True:
            got = self.leases.acquire([self.name])
            if self.name in got:
                self.grant = got[self.name]
                self._renewed = time.monotonic()
                self.waited = self._renewed - started
                return self
            self._sleep(self.leases.renew_every)

    def __exit__(self, *exc: object) -> None:
        if self.grant is not None:
            with contextlib.suppress(Exception):  # it lapses by itself anyway
                self.leases.release([self.grant])
            self.grant = None

    def keep(self) -> None:
        """Renew if a third of the lease went by; raise Fenced if another took it."""
        assert self.grant is not None, "keep() outside the with block"
        if time.monotonic() - self._renewed < self.leases.renew_every:
            return
        renewed = self.leases.renew([self.grant])
        if self.name not in renewed:
            lost, self.grant = self.grant, None
            raise Fenced(f"lease {lost.name!r} was taken by another process")
        self.grant = renewed[self.name]
        self._renewed = time.monotonic()

    def fence(self, conn: Connection) -> None:
        """Inside a step's transaction, after its writes: refuse them if the lease moved."""
        assert self.grant is not None, "fence() outside the with block"
        self.leases.fence(conn, self.grant)


# --- generations: "something changed" for every replica --------------------------------
#
# Some per-replica state must follow a change made through another replica (an erasure
# must reach every replica's analytics copy, not only the one that served the DELETE).
# A generation is a lease row nobody holds whose token counts the changes: the replica
# making one bumps it, and every replica polls it (a primary-key read) and acts when it
# moved.


ERASURES = "generation/erasures"
"""Bumped by each erasure: every replica then syncs its analytics copy, which drops the
person's rows (``stagecoach.engine.services.analytics.store``)."""


def bump(db: Engine, name: str) -> int:
    """Count one change of ``name``; returns the new generation."""
    with db.begin() as conn:
        Leases._insert_missing_rows(conn, [name])
        token = conn.execute(
            update(Lease)
            .where(col(Lease.name) == name)
            .values(token=col(Lease.token) + 1)
            .returning(col(Lease.token))
        ).scalar_one()
    return int(token)


def generation(db: Engine, name: str) -> int:
    """How many changes of ``name`` were counted (0: none yet)."""
    with db.connect() as conn:
        token = conn.execute(select(col(Lease.token)).where(col(Lease.name) == name)).scalar()
    return int(token or 0)


async def follow(
    db: Engine,
    name: str,
    every: float,
    on_change: Callable[[], Awaitable[None] | None],
    *,
    seen: int | None = None,
) -> None:
    """Call ``on_change`` each time ``name`` moves past ``seen`` (checked every ``every``
    seconds), until cancelled. Without ``seen`` the first reading is the baseline. A
    database that cannot be read is tried again at the next check."""
    while True:
        await asyncio.sleep(every)
        try:
            now = await asyncio.to_thread(generation, db, name)
        except Exception as exc:  # the database away: try again later
            log.warning("cannot read generation %s: %s", name, exc)
            continue
        if seen is not None and now != seen:
            try:
                result = on_change()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                log.warning("acting on %s failed: %s", name, exc)
        seen = now


__all__ = [
    "ERASURES",
    "Fenced",
    "Grant",
    "Held",
    "Leases",
    "bump",
    "default_holder",
    "follow",
    "generation",
]
