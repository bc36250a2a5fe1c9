"""Alembic environment: runs migrations on the database (``db``)
stagecoach.engine.services.storage.migrate hands in."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine
from sqlmodel import SQLModel

import stagecoach.engine.services.storage.models  # noqa: F401  (registers the tables on the metadata)

target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    db: Engine | None = context.config.attributes.get("db")
    if db is None:
        raise RuntimeError("run migrations through 'stagecoach db upgrade'")
    with db.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=db.dialect.name == "sqlite",
            compare_type=True,
        )
        context.run_migrations()


run_migrations_online()
