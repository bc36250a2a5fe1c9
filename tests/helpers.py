"""Small helpers shared by tests (fixtures live in conftest.py)."""

import atexit
import fcntl
import hashlib
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, make_url

from stagecoach.engine.domain.journeys import Journey
from stagecoach.engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


_PORT_BASE = 10_000
_PORT_SLICE = 2_500


def free_port() -> int:
    """A TCP port nobody listens on right now, chosen below the kernel's ephemeral range.

    Ports the operating system hands out for ``bind(0)`` (the Temporal dev server's own
    listeners, every outgoing connection) come from the ephemeral range (32768 and up
    here), so none of them can take a port chosen here between now and the test's use of
    it. Parallel test workers (``pytest -n``) draw from disjoint slices of 2,500 ports, and
    two runs on one machine start at random places in theirs.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    low = _PORT_BASE + (index % 8) * _PORT_SLICE
    start = random.randrange(_PORT_SLICE)  # a spread, not a secret
    for step in range(_PORT_SLICE):
        port = low + (start + step) % _PORT_SLICE
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{low + _PORT_SLICE - 1}")


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

    from stagecoach.engine.services.storage import make_engine

    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    admin = make_engine(f"{base}/postgres").execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{base}/{name}"


# --- migrated databases ------------------------------------------------------------------
#
# Running Alembic to head takes a large fraction of a second per database, and most tests
# want a migrated database. The schema is built once per test process (a SQLite file, a
# PostgreSQL template database per server) and each test gets a copy: SQLite's backup API
# copies the pages in milliseconds, PostgreSQL's CREATE DATABASE ... TEMPLATE copies the
# files. Tests of the migrations themselves keep calling ``upgrade``.

_template_lock = threading.Lock()
_sqlite_template: Path | None = None
_pg_templates: dict[str, str] = {}


def _sqlite_template_path() -> Path:
    """A SQLite file migrated to head, built on first use and removed at exit."""
    global _sqlite_template
    with _template_lock:
        if _sqlite_template is None:
            from stagecoach.engine.services.storage import make_engine, upgrade

            folder = Path(tempfile.mkdtemp(prefix="stagecoach-template-"))
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            path = folder / "template.db"
            engine = make_engine(f"sqlite:///{path}")
            upgrade(engine)
            engine.dispose()  # the last close checkpoints the WAL into the file
            _sqlite_template = path
        return _sqlite_template


def _postgres_template(base: str) -> str:
    """The name of a migrated template database on the server at ``base``."""
    with _template_lock:
        name = _pg_templates.get(base)
        if name is None:
            from stagecoach.engine.services.storage import make_engine, upgrade

            url = fresh_postgres_database(base, prefix="template")
            engine = make_engine(url)
            upgrade(engine)
            engine.dispose()  # CREATE DATABASE ... TEMPLATE needs it unused
            name = url.rsplit("/", 1)[1]
            _pg_templates[base] = name
        return name


def migrated_engine(url: str) -> Engine:
    """An engine on ``url`` holding the schema at head, as ``upgrade`` would leave it.

    SQLite (a file or in-memory) gets a copy of the session's migrated template; a
    PostgreSQL URL names a database that must not exist yet: it is created from the
    server's migrated template.
    """
    from stagecoach.engine.services.storage import make_engine

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = make_engine(url)
        source = sqlite3.connect(_sqlite_template_path())
        try:
            with engine.connect() as conn:
                target = conn.connection.dbapi_connection
                assert isinstance(target, sqlite3.Connection)
                source.backup(target)
        finally:
            source.close()
        return engine
    name = parsed.database
    assert name, f"{url} names no database"
    base = url.rsplit("/", 1)[0]
    template = _postgres_template(base)
    _create_postgres_database(base, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return make_engine(url)


def _create_postgres_database(base: str, statement: str) -> None:
    from sqlalchemy import text

    from stagecoach.engine.services.storage import make_engine

    admin = make_engine(f"{base}/postgres").execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(statement))
    admin.dispose()


def bundled_checkout(monkeypatch: Any, journeys: Mapping[str, Journey]) -> None:
    """Make the bundled example's journeys ``journeys`` for this test, as a checkout of
    another version of the definitions would: what publishing, ``plan`` and the worker's
    start see. Undone with the test's monkeypatch."""
    from stagecoach.engine.services.project import forget_loaded
    from stagecoach.workflows.definitions import BUNDLED, SEVEN_STAGE

    monkeypatch.setitem(BUNDLED, "default", replace(SEVEN_STAGE, journeys=dict(journeys)))
    forget_loaded()


def build_wheel(root: Path, out: Path) -> Path:
    """``pip wheel`` of the checkout at ``root`` into ``out``, one build at a time per
    checkout: setuptools builds in the source tree (``build/``, the egg-info), so two
    xdist workers building at once can break each other's build."""

    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    lock = Path(tempfile.gettempdir()) / f"stagecoach-wheel-{digest}.lock"
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "wheel",
                    "-q",
                    "--no-deps",
                    "-w",
                    str(out),
                    str(root),
                ],
                check=True,
                capture_output=True,
                timeout=300,
            )
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    (built,) = out.glob("stagecoach-*.whl")
    return built


def run_cli_here(cwd: Path, env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``stagecoach *args`` in this process (``stagecoach.engine.cli.run``, what the
    console command runs before it exits), with exactly ``env`` as the environment and
    ``cwd`` as the working folder: the exit code, stdout and stderr the command would
    give. For the many refused commands of a bad-input test, which would otherwise cost
    a Python start and the CLI's imports each; a test keeps at least one real process."""
    import contextlib
    import io
    from unittest import mock

    from stagecoach.engine.cli import run

    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, dict(env), clear=True),
        contextlib.chdir(cwd),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = run(list(args))
    return subprocess.CompletedProcess(["stagecoach", *args], code, out.getvalue(), err.getvalue())
