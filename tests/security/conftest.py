"""Fixtures of the security suite: a migrated SQLite file, the fully configured app.

The app and its TestClient are the shared ``api_app`` and ``api`` fixtures of
tests/conftest.py, built on the settings and database defined here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from stagecoach.engine.settings import Settings
from tests.helpers import migrated_engine
from tests.security._support import make_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Every credential configured (admin token, webhooks, one WeChat app)."""
    return make_settings(tmp_path)


@pytest.fixture
def db_engine(settings: Settings) -> Iterator[Engine]:
    """The database file the settings name, migrated: the app as deployed opens it."""
    db = migrated_engine(settings.resolved_database_url)
    yield db
    db.dispose()


@pytest.fixture
def engine(db_engine: Engine) -> Engine:
    return db_engine
