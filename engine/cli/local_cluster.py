"""Stagecoach's production topology on one host, without Docker (``stagecoach cluster up``).

The same parts as ``docker/compose.yaml``, each a process of its own on loopback:

- PostgreSQL (Debian's package, ``scripts/postgres.sh``), one server holding the Temporal
  server's two databases (``temporal``, ``temporal_visibility``) and Stagecoach's own
  (``stagecoach``);
- the real Temporal server (``scripts/temporal-server.sh`` builds it: the server the
  CLI's dev server embeds), configured by ``docker/temporal/stagecoach.yaml``, its
  schemas set up by ``temporal-sql-tool`` from the schemas embedded in it;
- N workers and M API replicas (``stagecoach worker``, ``stagecoach api``), each API on
  a port of its own.

``LocalCluster`` is what the command runs and what ``tests/cluster`` starts once per
module, so the topology the tests prove is the one the command gives an operator
(docs/operations/cluster.md). Everything is set up idempotently: a second ``up`` on the
same directory keeps the data and finds the schemas current.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from google.protobuf.duration_pb2 import Duration
from sqlalchemy import text
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest, RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from stagecoach.engine.cli.supervisor import Child
from stagecoach.engine.domain.errors import (
    BinaryNotFound,
    ConfigurationError,
    PortInUse,
    ProcessFailed,
)
from stagecoach.engine.protocol.search_attributes import SEARCH_ATTRIBUTES
from stagecoach.engine.services.storage import make_engine, upgrade

TEMPORAL_SERVER_VERSION = "v1.29.1"
"""The server CLI v1.5.1's dev server embeds: the cluster runs what the suite proved."""
SQL_PLUGIN = "postgres12_pgx"
"""The server's PostgreSQL plugin on the maintained pgx driver (``postgres12`` is lib/pq)."""
TEMPORAL_DATABASES = {
    "temporal": "postgresql/v12/temporal",
    "temporal_visibility": "postgresql/v12/visibility",
}
"""Database -> the versioned schema embedded in ``temporal-sql-tool`` that sets it up."""
APP_DATABASE = "stagecoach"
RETENTION = timedelta(days=7)
"""How long the server keeps a closed workflow's history (a contact's runs are long-lived;
this only bounds finished ones: a continued-as-new run's predecessors, broadcasts)."""
STARTUP_TIMEOUT = 120.0
CHECKOUT = Path(__file__).resolve().parents[2]
CONFIG_DIR = CHECKOUT / "docker" / "temporal"
"""The server's config kept in the repository, shared with ``docker/compose.yaml``."""

_INDEXED = {
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
    "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
}
_PROBE = " OR ".join(
    f"{name} = 0" if kind == "Double" else f'{name} = "probe"'
    for name, kind in SEARCH_ATTRIBUTES.items()
)
"""A visibility query naming every contact search attribute: answered once the
namespace and all of them are known to the frontend."""
_SERVER_PORTS = (
    "FRONTEND_PORT",
    "FRONTEND_HTTP_PORT",
    "FRONTEND_MEMBERSHIP_PORT",
    "HISTORY_PORT",
    "HISTORY_MEMBERSHIP_PORT",
    "MATCHING_PORT",
    "MATCHING_MEMBERSHIP_PORT",
    "WORKER_PORT",
    "WORKER_MEMBERSHIP_PORT",
    "METRICS_PORT",
)


def low_free_port() -> int:
    """A port nobody listens on now, below 32768.

    The server records each service's membership port in PostgreSQL as a ``smallint``
    (``cluster_membership.rpc_port``): a port the kernel would hand out for ``bind(0)``
    (32768 and up) makes the server exit at start ("greater than maximum value for
    int2"). So ports come from 15000-32767, tried in a random order."""
    for port in random.sample(range(15_000, 32_768), 2_000):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise PortInUse(
        "no free TCP port found in 15000-32767 on 127.0.0.1",
        fix="stop some of the processes listening there ('ss -ltn')",
    )


def _last_line(child: Child) -> str:
    tail = child.log_tail(lines=1)
    return tail[-300:] if tail else "no output"


def _server_failure(child: Child) -> str:
    """The server's fatal log line as ``message: error`` (its JSON lines end in long
    stack traces), else its last line."""
    try:
        lines = child.log_path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        if '"level":"fatal"' in line:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                return f"{entry.get('msg')}: {entry.get('error', '')}".strip(": ")
    return _last_line(child)


def find_temporal_server(cache_dir: Path) -> Path:
    """The directory holding ``temporal-server`` and ``temporal-sql-tool``:
    ``TEMPORAL_SERVER_PATH``, then the build cache. Only looks, as ``find_temporal_cli``;
    ``scripts/temporal-server.sh`` builds them."""
    names = ("temporal-server", "temporal-sql-tool")
    override = os.environ.get("TEMPORAL_SERVER_PATH", "").strip()
    where = Path(override).expanduser() if override else None
    cached = cache_dir / "temporal-server" / TEMPORAL_SERVER_VERSION / "bin"
    for folder in [where] if where is not None else [cached]:
        if all(os.access(folder / n, os.X_OK) for n in names):
            return folder
    if where is not None:
        raise BinaryNotFound(
            f"TEMPORAL_SERVER_PATH={where} is not a directory holding the executables "
            "temporal-server and temporal-sql-tool",
            fix="fix the path, or unset it so the cache is used "
            "(scripts/temporal-server.sh builds into it)",
        )
    raise BinaryNotFound(
        f"the Temporal server {TEMPORAL_SERVER_VERSION} was not found (TEMPORAL_SERVER_PATH "
        f"unset, none in {cached})",
        fix="run scripts/temporal-server.sh to build it with Go (a few minutes, once), "
        "or set TEMPORAL_SERVER_PATH to a directory holding temporal-server and "
        "temporal-sql-tool",
    )


def find_postgres() -> Path:
    """PostgreSQL's bin directory (Debian's layout, then ``pg_config``); only looks,
    ``scripts/postgres.sh`` installs it."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(out.stdout.strip()))
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise BinaryNotFound(
        "PostgreSQL's server programs (initdb, postgres) were not found",
        fix="run scripts/postgres.sh (installs Debian's postgresql as root), or put the "
        "directory holding initdb and postgres on PATH with pg_config",
    )


def _as_postgres_user(argv: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@dataclass
class Postgres:
    """One PostgreSQL server on a loopback port, its data kept under ``root``."""

    bindir: Path
    root: Path
    port: int
    durable: bool = True
    """``False`` (tests): ``fsync=off``, which loses nothing a process crash could."""
    child: Child | None = None

    @property
    def base_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def url(self, database: str) -> str:
        return f"{self.base_url}/{database}"

    def _init(self) -> None:
        data = self.root / "data"
        if (data / "PG_VERSION").exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres", group="postgres")
            reach = subprocess.run(_as_postgres_user(["test", "-w", str(self.root)]), check=False)
            if reach.returncode != 0:
                raise ConfigurationError(
                    f"PostgreSQL runs as the user postgres, which cannot reach {self.root} "
                    "(a folder above it is private to root)",
                    fix="choose a directory under a path others may enter, e.g. "
                    "'stagecoach cluster up --dir /var/tmp/stagecoach-cluster'",
                )
        subprocess.run(
            _as_postgres_user(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    # Loopback only, and only this machine's users reach it: the
                    # cluster's own processes. Production sets passwords (compose).
                    "--auth=trust",
                    "--encoding=UTF8",
                    *([] if self.durable else ["--no-sync"]),
                ]
            ),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        self._init()
        argv = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.root / "data"),
            "-p",
            str(self.port),
            "-k",
            str(self.root),
            "-c",
            "listen_addresses=127.0.0.1",
            # The server's pools (30), two APIs and two workers (15 each), tools.
            "-c",
            "max_connections=200",
        ]
        if not self.durable:
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
        self.child = Child("PostgreSQL", _as_postgres_user(argv), self.root / "postgres.log")
        self.child.start(dict(os.environ))

    async def ready(self, within: float = 30.0) -> None:
        admin = make_engine(self.url("postgres"))
        deadline = time.monotonic() + within
        try:
            while True:
                try:
                    with admin.connect() as conn:
                        conn.execute(text("SELECT 1"))
                    return
                except Exception:
                    if self.child is not None and self.child.exited() is not None:
                        raise ProcessFailed(
                            f"PostgreSQL exited while starting: {_last_line(self.child)}",
                            fix=f"read {self.child.log_path}",
                        ) from None
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
        finally:
            admin.dispose()

    def stop(self) -> None:
        """A fast shutdown: sessions are ended, the data is flushed."""
        if self.child is None or self.child.exited() is not None:
            return
        subprocess.run(
            _as_postgres_user(
                [str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "stop", "-m", "fast"]
            ),
            capture_output=True,
            check=False,
        )
        self.child.stop()

    def create_database(self, name: str) -> bool:
        """Create ``name`` unless it exists; True if created."""
        admin = make_engine(self.url("postgres")).execution_options(isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                found = conn.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
                ).first()
                if found is None:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
                return found is None
        finally:
            admin.dispose()

    def has_table(self, database: str, table: str) -> bool:
        db = make_engine(self.url(database))
        try:
            with db.connect() as conn:
                return (
                    conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is not None
                )
        finally:
            db.dispose()


@dataclass
class TemporalServer:
    """The real Temporal server (all four services in one process) on ``postgres``."""

    bindir: Path
    postgres: Postgres
    root: Path
    ports: dict[str, int]
    config_dir: Path = CONFIG_DIR
    namespace: str = "default"
    child: Child | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports['FRONTEND_PORT']}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({f"TEMPORAL_{name}": str(port) for name, port in self.ports.items()})
        env.update(
            TEMPORAL_DB_ADDRESS=f"127.0.0.1:{self.postgres.port}",
            TEMPORAL_DB_USER="postgres",
            TEMPORAL_DB_PASSWORD="",
            TEMPORAL_BIND_IP="127.0.0.1",
            TEMPORAL_BROADCAST_ADDRESS="127.0.0.1",
            TEMPORAL_DYNAMIC_CONFIG=str(self.config_dir / "dynamicconfig.yaml"),
        )
        return env

    def setup_schemas(self) -> None:
        """Create the server's two databases and bring them to the newest schema with
        the schemas embedded in ``temporal-sql-tool`` (the commands compose runs too)."""
        for database, schema in TEMPORAL_DATABASES.items():
            tool = [
                str(self.bindir / "temporal-sql-tool"),
                "--plugin",
                SQL_PLUGIN,
                "--endpoint",
                "127.0.0.1",
                "--port",
                str(self.postgres.port),
                "--user",
                "postgres",
                "--database",
                database,
            ]
            steps: list[list[str]] = []
            if self.postgres.create_database(database) or not self.postgres.has_table(
                database, "schema_version"
            ):
                steps.append(["setup-schema", "-v", "0.0"])
            steps.append(["update-schema", "--schema-name", schema])
            for step in steps:
                done = subprocess.run(
                    [*tool, *step], capture_output=True, text=True, check=False, env=self.env()
                )
                if done.returncode != 0:
                    raise ProcessFailed(
                        f"temporal-sql-tool {step[0]} on {database} failed: "
                        f"{(done.stderr or done.stdout).strip()[-400:]}",
                        fix="read the message; a database from another server version "
                        "needs its own update first",
                    )

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.child = Child(
            "Temporal server",
            [
                str(self.bindir / "temporal-server"),
                "--root",
                str(self.config_dir),
                "--config",
                ".",
                "--env",
                "stagecoach",
                "--allow-no-auth",
                "start",
            ],
            self.root / "temporal.log",
        )
        self.child.start(self.env())

    def kill(self) -> None:
        """SIGKILL, no shutdown of any kind: what a crashed host looks like."""
        if self.child is not None and self.child.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.child.proc.send_signal(signal.SIGKILL)
            self.child.stop(grace=0)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()

    async def ready(self, within: float = STARTUP_TIMEOUT) -> Client:
        """A client once the frontend answers and the namespace serves requests."""
        deadline = time.monotonic() + within
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.child is not None and self.child.exited() is not None:
                raise ProcessFailed(
                    f"the Temporal server exited while starting: {_server_failure(self.child)}",
                    fix=f"read {self.child.log_path}",
                )
            try:
                client = await Client.connect(self.address, namespace=self.namespace)
                # Visibility and the namespace registry both answer: the server serves.
                await client.workflow_service.get_system_info(
                    GetSystemInfoRequest(), timeout=timedelta(seconds=5)
                )
                return client
            except (RPCError, RuntimeError) as exc:
                last = exc
                await asyncio.sleep(0.5)
        raise ProcessFailed(
            f"the Temporal server did not answer within {within:.0f} s ({last})",
            fix=f"read {self.root / 'temporal.log'}",
        )

    async def register(self, client: Client, within: float = STARTUP_TIMEOUT) -> None:
        """The namespace and the contact search attributes, idempotently; returns once
        a visibility query by them is answered (each service caches namespaces for a
        few seconds after they change)."""
        try:
            await client.workflow_service.register_namespace(
                RegisterNamespaceRequest(
                    namespace=self.namespace,
                    workflow_execution_retention_period=Duration(
                        seconds=int(RETENTION.total_seconds())
                    ),
                )
            )
        except RPCError as exc:
            if exc.status != RPCStatusCode.ALREADY_EXISTS:  # a second ``up`` finds it
                raise
        deadline = time.monotonic() + within
        while True:
            try:
                have = await client.operator_service.list_search_attributes(
                    ListSearchAttributesRequest(namespace=self.namespace)
                )
                missing = {
                    name: _INDEXED[kind]
                    for name, kind in SEARCH_ATTRIBUTES.items()
                    if name not in have.custom_attributes
                }
                if missing:
                    await client.operator_service.add_search_attributes(
                        AddSearchAttributesRequest(
                            namespace=self.namespace, search_attributes=missing
                        )
                    )
                await client.count_workflows(_PROBE)
                return
            except RPCError as exc:
                if exc.status not in (
                    RPCStatusCode.NOT_FOUND,
                    RPCStatusCode.INVALID_ARGUMENT,
                    RPCStatusCode.UNAVAILABLE,
                    RPCStatusCode.FAILED_PRECONDITION,
                ):
                    raise
                if time.monotonic() > deadline:
                    raise ProcessFailed(
                        f"namespace {self.namespace} or its search attributes are not "
                        f"served after {within:.0f} s: {exc}",
                        fix=f"read {self.root / 'temporal.log'}",
                    ) from exc
                await asyncio.sleep(0.5)


@dataclass
class LocalCluster:
    """PostgreSQL, the Temporal server on it, and Stagecoach's workers and APIs."""

    root: Path
    server_bin: Path
    postgres_bin: Path
    pick_port: Callable[[], int] = low_free_port
    durable: bool = True
    namespace: str = "default"
    frontend_port: int | None = None
    """The Temporal frontend's port (default: a free one)."""
    postgres: Postgres = field(init=False)
    temporal: TemporalServer = field(init=False)
    workers: list[Child] = field(default_factory=list)
    apis: dict[int, Child] = field(default_factory=dict)
    client: Client | None = None

    def __post_init__(self) -> None:
        self.postgres = Postgres(
            self.postgres_bin, self.root / "postgres", self.pick_port(), durable=self.durable
        )
        self.temporal = TemporalServer(
            self.server_bin,
            self.postgres,
            self.root / "temporal",
            self._server_ports(),
            namespace=self.namespace,
        )

    def _server_ports(self) -> dict[str, int]:
        ports: dict[str, int] = {}
        while len(ports) < len(_SERVER_PORTS):
            name = _SERVER_PORTS[len(ports)]
            port = self.pick_port()
            if name == "FRONTEND_PORT" and self.frontend_port:
                port = self.frontend_port
            if port not in ports.values() and port != self.postgres.port:
                ports[name] = port
        return ports

    @property
    def database_url(self) -> str:
        """Stagecoach's own database, on the same PostgreSQL server."""
        return self.postgres.url(APP_DATABASE)

    async def start_backends(self) -> Client:
        """PostgreSQL, the schemas, the Temporal server, the namespace; Stagecoach's
        database migrated. Returns a client of the namespace (no payload codec)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # PostgreSQL runs as the user postgres: it must be able to pass through
            # this folder (only that; nothing here becomes readable to others).
            self.root.chmod(self.root.stat().st_mode | 0o011)
        self.postgres.start()
        await self.postgres.ready()
        self.temporal.setup_schemas()
        self.postgres.create_database(APP_DATABASE)
        db = make_engine(self.database_url)
        try:
            upgrade(db)
        finally:
            db.dispose()
        client: Client | None = None
        for attempt in range(3):
            self.temporal.start()
            try:
                client = await self.temporal.ready()
                break
            except ProcessFailed as exc:
                # A port picked free was taken before the server bound it (another
                # program on this host): pick again, twice at most.
                if "address already in use" not in exc.message or attempt == 2:
                    raise
                self.temporal.stop()
                self.temporal.ports = self._server_ports()
        assert client is not None
        await self.temporal.register(client)
        self.client = client
        return client

    def stagecoach_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment a worker or an API of this cluster runs with."""
        env = dict(os.environ if base is None else base)
        env.update(
            STAGECOACH_DATABASE_URL=self.database_url,
            STAGECOACH_TEMPORAL_ADDRESS=self.temporal.address,
            STAGECOACH_TEMPORAL_NAMESPACE=self.namespace,
            PYTHONUNBUFFERED="1",
        )
        env.setdefault("STAGECOACH_LOG_FORMAT", "json")
        return env

    def start_stagecoach(
        self, env: dict[str, str], *, workers: int, api_ports: list[int], logs: Path
    ) -> None:
        python = [sys.executable, "-m", "stagecoach.engine.cli"]
        for n in range(workers):
            worker = Child(f"worker {n + 1}", [*python, "worker"], logs / f"worker-{n + 1}.log")
            worker.start(
                {
                    **env,
                    "STAGECOACH_WORKER_METRICS_PORT": str(self.pick_port()),
                    "STAGECOACH_TEMPORAL_METRICS_PORT": str(self.pick_port()),
                }
            )
            self.workers.append(worker)
        for n, port in enumerate(api_ports):
            api = Child(f"API {n + 1}", [*python, "api"], logs / f"api-{n + 1}.log")
            api.start({**env, "STAGECOACH_API_PORT": str(port)})
            self.apis[port] = api

    def children(self) -> list[Child]:
        found = [self.postgres.child, self.temporal.child, *self.workers, *self.apis.values()]
        return [c for c in found if c is not None]

    def stop(self) -> None:
        """Stop everything, Stagecoach first, then the server, then PostgreSQL."""
        for child in [*self.apis.values(), *self.workers]:
            child.stop()
        self.temporal.stop()
        self.postgres.stop()
