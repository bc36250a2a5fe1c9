"""Storage: SQLModel models, the SQLAlchemy Engine and session factory, and migrations."""

from stagecoach.engine.services.storage.db import (
    check_connection,
    make_engine,
    session_factory,
)
from stagecoach.engine.services.storage.migrate import current_revision, head_revision, upgrade

__all__ = [
    "check_connection",
    "current_revision",
    "head_revision",
    "make_engine",
    "session_factory",
    "upgrade",
]
