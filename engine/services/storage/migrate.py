"""Versioned schema migrations with Alembic, driven from code (no alembic.ini to find).

Alembic is imported when a migration function runs, not with this module: every
``stagecoach`` command imports the storage package, and most never migrate (Alembic is
about a third of a second of each command's start)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import OperationalError

from stagecoach.engine.domain.errors import DatabaseError
from stagecoach.engine.services.storage.db import driver_reason

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(db: Engine | None = None) -> Config:
    """An Alembic config pointing at our migrations; ``db`` is handed to env.py."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["db"] = db
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the migrations directory has no revisions"
    return head


def current_revision(db: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with db.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(db: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``. Safe to run on every start: it is a no-op at head."""
    from alembic import command

    try:
        command.upgrade(alembic_config(db), revision)
    except (OperationalError, SADatabaseError) as exc:
        raise DatabaseError(
            f"migration to {revision} failed on {db.url.render_as_string()}: {driver_reason(exc)}",
            fix="check the database is reachable and writable, then run "
            "'stagecoach db upgrade' again",
        ) from exc
