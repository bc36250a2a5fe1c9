"""The test harness every later test builds on.

- ``env``: a Temporal environment. The real dev server (from the provisioned Temporal
  CLI) by default; the Java time-skipping test server for tests marked
  ``time_skipping``. Both are started once per session and only if a test needs them.
- ``task_queue``: a fresh task queue per test, so workers never steal each other's work.
- ``db_engine``: a migrated database per test, copied from a template migrated once per
  session (``tests.helpers.migrated_engine``). In-memory SQLite by default; a database on
  a real PostgreSQL server (installed and started here) for tests marked ``postgres``.
- ``settings``, ``api_app``, ``api``: settings confined to the test's directory
  (``@pytest.mark.settings(...)`` overrides them) and the HTTP API built on them and on
  ``db_engine``, driven in-process by a TestClient.
- ``--run-bench``: benchmarks under tests/bench run only when asked (``make bench``).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.app import create_app
from stagecoach.engine.protocol.search_keys import ALL_KEYS, register_search_attributes
from stagecoach.engine.services.project import forget_loaded
from stagecoach.engine.services.storage import make_engine
from stagecoach.engine.settings import Settings
from tests.helpers import free_port, fresh_postgres_database, migrated_engine

ROOT = Path(__file__).resolve().parent.parent


# How a stuck time-skipping server shows itself: pytest-timeout's failure, the SDK's
# RPC deadline or a broken connection, or a test's own wait for a state that needs the
# server's clock to move (tests/workflows/conftest.py).
STUCK_SERVER = [
    r"Timeout \(>[0-9.]+s\) from pytest-timeout",
    r"RPCError: Timeout expired",
    r"RPCError: h2 protocol error",
    r"condition not reached in time",
    r"Failed starting test server",
]
TIME_SKIPPING_TIMEOUT = 120


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-bench", action="store_true", help="run tests/bench benchmarks")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("time_skipping"):
            # A time-skipping server overwhelmed on a loaded machine shows as a timeout
            # or an RPC timeout: the test gets one rerun, on a fresh server, and a timeout
            # well under the suite's, so that a stuck one costs two minutes, not five.
            if not item.get_closest_marker("timeout"):
                item.add_marker(pytest.mark.timeout(TIME_SKIPPING_TIMEOUT))
            if not item.get_closest_marker("flaky"):
                item.add_marker(pytest.mark.flaky(reruns=1, only_rerun=STUCK_SERVER))
    if config.getoption("--run-bench"):
        return
    skip = pytest.mark.skip(reason="benchmark: run with 'make bench' (--run-bench)")
    for item in items:
        # The marker, not a keyword: keywords include the folders of the checkout's path,
        # so a clone in a folder named "bench" would skip every test.
        if item.get_closest_marker("bench"):
            item.add_marker(skip)


def _provision(env_var: str, script: str) -> str:
    """A binary from the environment (the Makefile sets it) or from our own script."""
    path = os.environ.get(env_var)
    if path and os.access(path, os.X_OK):
        return path
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / script)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/{script} failed: {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(autouse=True)
def _project_loaded_per_test() -> Iterator[None]:
    """A test that swaps the project's definitions (``tests.helpers.bundled_checkout``,
    a tmp project) never leaves them remembered for the next test."""
    yield
    forget_loaded()


@pytest.fixture(scope="session")
def temporal_cli_path() -> str:
    return _provision("TEMPORAL_CLI_PATH", "temporal-cli.sh")


@pytest.fixture(scope="session")
def test_server_path() -> str:
    return _provision("STAGECOACH_TEST_SERVER_PATH", "test-server.sh")


@pytest.fixture(scope="session")
async def dev_env(temporal_cli_path: str) -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli_path,
        search_attributes=ALL_KEYS,
        dev_server_log_level="error",
        ui=False,
    )
    try:
        yield env
    finally:
        await env.shutdown()


# pytest-timeout's signal only reaches a test that returns to the interpreter. A test
# stuck anywhere else would hold its worker, and so the whole run, until CI's own limit
# kills it with no word of which test it was. So one test's whole protocol (setup, call,
# teardown and a rerun) that runs this long dumps every thread's stack and ends its
# process; pytest-xdist reports the test as crashed and carries on with a new worker.
PROTOCOL_LIMIT = 15 * 60
_running: dict[str, float] = {}


def _watchdog() -> None:
    while True:
        time.sleep(5)
        for nodeid, started in list(_running.items()):
            if time.monotonic() - started > PROTOCOL_LIMIT:
                sys.stderr.write(f"\n{nodeid} has run for over {PROTOCOL_LIMIT} s; its stacks:\n")
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                sys.stderr.flush()
                os._exit(3)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Watched by ``_watchdog``. With ``STAGECOACH_TEST_CPU=FILE``, each test's CPU
    seconds are appended to FILE: its process's (user + system, every thread) and its
    reaped children's (the CLI commands, the servers it started and stopped), setup and
    teardown included. The suite is CPU-bound on this machine, so this, not the wall
    time, says what a test costs (docs/testing.md)."""
    _running[item.nodeid] = time.monotonic()
    target = os.environ.get("STAGECOACH_TEST_CPU")
    own, children = _cpu()
    try:
        return (yield)
    finally:
        _running.pop(item.nodeid, None)
        if target:
            now_own, now_children = _cpu()
            own, children = now_own - own, now_children - children
            with open(target, "a", encoding="utf-8") as out:
                out.write(f"{own + children:.2f}\t{own:.2f}\t{children:.2f}\t{item.nodeid}\n")


def _cpu() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its reaped children."""
    me, reaped = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime, reaped.ru_utime + reaped.ru_stime


def pytest_sessionstart(session: pytest.Session) -> None:
    # A benchmark at full size may rightly run longer than any test should.
    if not session.config.getoption("--run-bench"):
        threading.Thread(target=_watchdog, name="test-watchdog", daemon=True).start()


@pytest.fixture
async def time_skipping_env(test_server_path: str) -> AsyncIterator[WorkflowEnvironment]:
    """A Java time-skipping test server of the test's own (about 2 s to start).

    One server has one clock for everything on it. A workflow an earlier test left
    running, with no worker any more, has its next timer fire into a workflow task nobody
    completes, and the server then never skips time again: a later test's 30-day sleep
    hung until a CI run passed its 90 minutes. So no test shares a server."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=test_server_path,
        # The SDK waits 5 s for the JVM; on two loaded cores it has taken longer.
        test_server_startup_timeout=timedelta(seconds=30),
    )
    await register_search_attributes(env.client, "default")
    try:
        yield env
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(env.shutdown(), 30)


@pytest.fixture
def env(request: pytest.FixtureRequest) -> WorkflowEnvironment:
    """The Temporal environment this test asked for (see the module docstring)."""
    name = "time_skipping_env" if request.node.get_closest_marker("time_skipping") else "dev_env"
    environment: WorkflowEnvironment = request.getfixturevalue(name)
    return environment


@pytest.fixture
def client(env: WorkflowEnvironment) -> Client:
    return env.client


@pytest.fixture
def task_queue() -> str:
    return f"test-{uuid.uuid4().hex}"


# --- databases ---------------------------------------------------------------------------


def _pg_bin() -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "postgres.sh")], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        pytest.fail(f"scripts/postgres.sh failed: {out.stderr.strip()}")
    return Path(out.stdout.strip().splitlines()[-1])


def _as_postgres_user(argv: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; CI and dev machines run tests as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port; yields its base URL."""
    bindir = _pg_bin()
    datadir = Path(tempfile.mkdtemp(prefix="stagecoach-pg-"))
    if os.geteuid() == 0:
        shutil.chown(datadir, user="postgres", group="postgres")
    port = free_port()
    subprocess.run(
        _as_postgres_user(
            [
                str(bindir / "initdb"),
                "-D",
                str(datadir / "data"),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    server = subprocess.Popen(
        _as_postgres_user(
            [
                str(bindir / "postgres"),
                "-D",
                str(datadir / "data"),
                "-p",
                str(port),
                "-k",
                str(datadir),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"postgresql://postgres@127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        admin = make_engine(f"{base}/postgres")
        while True:
            try:
                with admin.connect() as conn:
                    conn.execute(text("SELECT 1"))
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        admin.dispose()
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(datadir, ignore_errors=True)


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> str:
    """A URL to an empty database: a fresh PostgreSQL database or in-memory SQLite. For
    tests of the migrations themselves; everything else wants ``db_engine``."""
    if not request.node.get_closest_marker("postgres"):
        return "sqlite://"
    base: str = request.getfixturevalue("postgres_server")
    return fresh_postgres_database(base)


@pytest.fixture
def db_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A migrated database for this test: a copy of the session's migrated template
    (in-memory SQLite, or a PostgreSQL database for tests marked ``postgres``)."""
    url = "sqlite://"
    if request.node.get_closest_marker("postgres"):
        base: str = request.getfixturevalue("postgres_server")
        url = f"{base}/t_{uuid.uuid4().hex[:16]}"
    engine = migrated_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings confined to this test's temporary directory; a test's
    ``@pytest.mark.settings(...)`` keywords override them."""
    marker = request.node.get_closest_marker("settings")
    values: dict[str, Any] = {"data_dir": tmp_path / ".stagecoach", "cache_dir": tmp_path / "cache"}
    values.update(marker.kwargs if marker else {})
    return Settings(**values)


# --- the API -----------------------------------------------------------------------------


@pytest.fixture
def api_app(settings: Settings, db_engine: Engine) -> FastAPI:
    """The HTTP API as ``create_app`` builds it, on this test's migrated database. A module
    changes what it is built from by overriding ``settings`` or ``db_engine``."""
    return create_app(settings, db=db_engine)


@pytest.fixture
def api(api_app: FastAPI) -> Iterator[TestClient]:
    """The API driven in-process, its startup and shutdown run; redirects are answers,
    not followed, so tests see where they point."""
    with TestClient(api_app, follow_redirects=False) as client:
        yield client
    api_app.state.reports.wait(30)  # a background report copy must not outlive the test
