"""Fixtures of the security suite: a migrated SQLite file, the fully configured app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from engine.settings import Settings
from tests.helpers import migrated_engine
from tests.security._support import make_app, make_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Every credential configured (admin token, webhooks, one WeChat app)."""
    return make_settings(tmp_path)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    db = migrated_engine(settings.resolved_database_url)
    yield db
    db.dispose()


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """The app as deployed, driven in-process; redirects are answers, not followed."""
    with TestClient(make_app(settings, engine), follow_redirects=False) as client:
        yield client
