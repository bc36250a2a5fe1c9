"""The SQLAlchemy engine and session factory for SQLite (default) or PostgreSQL."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

from stagecoach.engine.domain.errors import ConfigurationError, DatabaseError
from stagecoach.engine.services.storage.models import outbox_bucket

_URL_FIX = (
    "set STAGECOACH_DATABASE_URL to sqlite:///path/to/stagecoach.db or "
    "postgresql://user:password@host:5432/dbname, or unset it for the embedded SQLite file"
)


def parse_database_url(raw: str) -> URL:
    """Parse and normalise a database URL; PostgreSQL URLs get the psycopg 3 driver."""
    try:
        url = make_url(raw)
    except ArgumentError as exc:
        raise ConfigurationError(
            f"STAGECOACH_DATABASE_URL={redact(raw)!r} is not a database URL", fix=_URL_FIX
        ) from exc
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigurationError(
            f"database {url.get_backend_name()!r} in STAGECOACH_DATABASE_URL is not supported",
            fix=_URL_FIX,
        )
    return url


def redact(raw: str) -> str:
    """A URL fit for logs and error messages: the password is hidden."""
    try:
        return make_url(raw).render_as_string(hide_password=True)
    except ArgumentError:
        return raw.split("@")[-1] if "@" in raw else raw


PRIVATE_UMASK = 0o077
"""Files and folders a Stagecoach process creates are its user's alone: the database,
the analytics copy, logs and sent messages hold contacts' personal data."""


def private_umask() -> None:
    """From now on, create files 0600 and folders 0700 in this process and its children
    (the umask only ever narrows): for the entry points that keep personal data."""
    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists, so whatever later opens it
    (SQLite, DuckDB) writes personal data into a file nobody else can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API write while the worker and reports read; busy_timeout rides out
    # the short write locks two processes take on one file instead of failing at once.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    # Ingestion inserts into a few large indexes (events, identities, outbox). A 32 MiB
    # page cache (the default is 2 MiB) keeps their pages in memory, and checkpointing
    # the WAL every ~40 MB instead of every ~4 MB writes a page that many commits changed
    # back once: together about a quarter of the CPU of storing an event at 100,000
    # events. Commits still sync the WAL (synchronous=FULL): acknowledged is on disk.
    cursor.execute("PRAGMA cache_size=-32768")
    cursor.execute("PRAGMA wal_autocheckpoint=10000")
    cursor.close()
    # The outbox's bucket, computed by SQL in the ingestion's bulk insert (PostgreSQL
    # computes it with md5() instead): see models.OUTBOX_BUCKET_SQL.
    dbapi_connection.create_function("outbox_bucket", 1, outbox_bucket, deterministic=True)


def make_engine(raw_url: str, *, echo: bool = False) -> Engine:
    """Create the Engine for ``raw_url``; a bad URL is a ConfigurationError naming the fix."""
    url = parse_database_url(raw_url)
    kwargs: dict[str, Any] = {"echo": echo}
    if url.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False}
        if url.database in (None, "", ":memory:"):
            # One shared in-memory database for every session, as tests expect.
            kwargs["poolclass"] = StaticPool
        else:
            # An empty file is an empty SQLite database; its -wal and -shm files take
            # the database file's mode.
            create_private_file(Path(url.database).expanduser())
    else:
        kwargs["pool_pre_ping"] = True
    try:
        db = create_engine(url, **kwargs)
    except (NoSuchModuleError, ArgumentError) as exc:
        raise ConfigurationError(
            f"no driver for {url.drivername!r} in STAGECOACH_DATABASE_URL", fix=_URL_FIX
        ) from exc
    if url.get_backend_name() == "sqlite":
        event.listen(db, "connect", _sqlite_pragmas)
    return db


def driver_reason(exc: SADatabaseError | OperationalError) -> str:
    """The first line of the driver's own message: the part a person can act on."""
    return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)


def check_connection(db: Engine) -> None:
    """Open a connection and run ``SELECT 1``; raise DatabaseError with the fix if that fails."""
    shown = db.url.render_as_string(hide_password=True)
    try:
        with db.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (OperationalError, SADatabaseError) as exc:
        raise DatabaseError(
            f"cannot connect to the database {shown}: {driver_reason(exc)}",
            fix="check that the server is running and that STAGECOACH_DATABASE_URL names "
            "the right host, port, user, password and database",
        ) from exc


def session_factory(db: Engine) -> Callable[[], Session]:
    """A callable that opens a new SQLModel session on ``db``."""

    def open_session() -> Session:
        return Session(db, expire_on_commit=False)

    return open_session
