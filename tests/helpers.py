"""Small helpers shared by tests (fixtures live in conftest.py)."""

import socket
import uuid
from pathlib import Path
from typing import Any

from engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def runtime_settings(tmp_path: Path, task_queue: str, **overrides: Any) -> Settings:
    """Settings for a test or benchmark runtime, confined to ``tmp_path``.

    Quiet hours and the frequency cap are off: tests run at any hour, and the ones about
    those rules switch them on with overrides.
    """
    values: dict[str, Any] = {
        "data_dir": tmp_path / ".stagecoach",
        "database_url": f"sqlite:///{tmp_path / 'stagecoach.db'}",
        "temporal_task_queue": task_queue,
        "content_dir": ROOT / "content",
        "quiet_hours_start": "00:00",
        "quiet_hours_end": "00:00",
        "frequency_cap": 0,
    }
    values.update(overrides)
    return Settings(**values)


def fresh_postgres_database(base: str, prefix: str = "t") -> str:
    """Create an empty database on the PostgreSQL server at ``base`` (a URL without a
    database name) and return its URL."""
    from sqlalchemy import text

    from engine.storage import make_engine

    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    admin = make_engine(f"{base}/postgres").execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{base}/{name}"
