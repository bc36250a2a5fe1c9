"""``stagecoach up``: the Temporal dev server, the worker and the API as one command.

The Web UI is Temporal's own UI server (``scripts/temporal-ui.sh``) beside a headless
dev server, configured as the ``temporalio/ui`` container is in production: the codec
endpoint ``<api>/codec`` with cross-origin credentials, so an operator who signed in at
``<api>/codec/login`` reads decrypted histories with no per-browser setting. The dev
server's built-in UI has no flag for credentials; without the UI server binary ``up``
falls back to it and says what that costs (docs/codec.md).

Each child runs in its own session (process group), so a Ctrl-C at the terminal reaches
only this supervisor, which then stops the children in order (API, worker, Temporal),
each first with SIGTERM and then, past a grace period, SIGKILL to its whole group. A
child that dies on its own stops everything, with the log to read named.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import httpx

from stagecoach.engine.cli.programs import ensure_port_free, find_temporal_cli, port_open
from stagecoach.engine.domain.errors import (
    BinaryNotFound,
    ConfigurationError,
    ProcessFailed,
    StagecoachError,
)
from stagecoach.engine.protocol.search_attributes import dev_server_args
from stagecoach.engine.services.storage import make_engine, upgrade
from stagecoach.engine.services.storage.db import redact
from stagecoach.engine.settings import Settings, check_api_credentials, ensure_link_secret_file
from stagecoach.engine.temporal.codec import ensure_key_file, key_file

STARTUP_TIMEOUT = 90.0
STOP_GRACE = 15.0
TEMPORAL_UI_SERVER_VERSION = "v2.42.1"
"""The UI server the Temporal CLI v1.5.1 embeds, so both UIs are the same build."""
UI_ENV = "stagecoach"
"""The UI server's config name: it reads ``<root>/<UI_ENV>.yaml``."""


@dataclass
class Child:
    """A supervised process and the log file its output goes to."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM the child's group, wait, then SIGKILL the group; never leave orphans."""
        if self.proc is None:
            return
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = None
        if self.proc.poll() is None and pgid is not None:
            os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        if pgid is not None:
            # Grandchildren that outlived their parent share its group: reap them too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self.proc.wait()
        if self._log is not None:
            self._log.close()

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM if the supervisor dies.

    Ctrl-C and SIGTERM let the supervisor stop its children in order; this covers the
    supervisor being killed outright (SIGKILL, OOM), which would otherwise leave the
    Temporal server, the worker and the API running in their own sessions. Linux only.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


class Stopped(Exception):
    """Raised inside the supervisor when SIGINT or SIGTERM arrives."""


def _child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    # Children must agree with the supervisor even when it resolved a default.
    env["STAGECOACH_DATA_DIR"] = str(settings.data_dir)
    env["STAGECOACH_DATABASE_URL"] = settings.resolved_database_url
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("STAGECOACH_LOG_FORMAT", "json")
    return env


def _wait_for(
    what: str, ready: Callable[[], bool], children: list[Child], timeout: float = STARTUP_TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            code = child.exited()
            if code is not None:
                raise ProcessFailed(
                    f"the {child.name} exited with code {code} while starting: "
                    f"{child.log_tail() or 'no output'}",
                    fix=f"read {child.log_path} for the cause",
                )
        if ready():
            return
        time.sleep(0.2)
    raise ProcessFailed(
        f"the {what} did not become ready within {timeout:.0f}s",
        fix=f"read the logs under {children[-1].log_path.parent}",
    )


def _api_healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _worker_polling(settings: Settings) -> bool:
    from stagecoach.engine.cli.doctor import check_temporal, check_worker

    async def probe() -> bool:
        _temporal, client = await check_temporal(settings)
        return client is not None and (await check_worker(client, settings)).ok

    return asyncio.run(probe())


def find_ui_server(settings: Settings) -> Path | None:
    """Temporal's UI server binary: ``TEMPORAL_UI_SERVER_PATH``, then the build cache
    (``scripts/temporal-ui.sh``); None when there is none. Only looks, never builds."""
    if settings.temporal_ui_server_path is not None:
        path = settings.temporal_ui_server_path.expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise BinaryNotFound(
            f"TEMPORAL_UI_SERVER_PATH={path} is not an executable file",
            fix="point it at Temporal's UI server binary, or unset it so 'stagecoach up' "
            "uses the one scripts/temporal-ui.sh builds into the cache",
        )
    cached = (
        settings.cache_dir
        / "temporal-ui-server"
        / TEMPORAL_UI_SERVER_VERSION
        / "bin"
        / "temporal-ui-server"
    )
    return cached if cached.is_file() and os.access(cached, os.X_OK) else None


def ui_server_config(settings: Settings) -> dict[str, Any]:
    """The UI server's configuration: the dev server's UI settings plus the codec
    endpoint with credentials, the same keys as ``TEMPORAL_CODEC_*`` in the container."""
    host, port = settings.temporal_host_port
    return {
        "host": host,
        "port": settings.temporal_ui_port,
        "temporalGrpcAddress": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "enableUi": True,
        "defaultNamespace": settings.temporal_namespace,
        "notifyOnNewVersion": False,
        "hideLogs": True,
        # Plain http on loopback, as the dev server's own UI: its CSRF cookie must not
        # be Secure or the browser drops it.
        "cors": {"cookieInsecure": True},
        "codec": {"endpoint": f"{settings.api_base_url}/codec", "includeCredentials": True},
    }


def _ui_server_child(settings: Settings, binary: Path, logs: Path) -> Child:
    root = settings.data_dir / "temporal-ui"
    root.mkdir(parents=True, exist_ok=True)
    # JSON is YAML: no quoting rules to get wrong for hosts and URLs.
    (root / f"{UI_ENV}.yaml").write_text(json.dumps(ui_server_config(settings), indent=2))
    return Child(
        "Temporal Web UI",
        [str(binary), "--root", str(root), "--config", ".", "--env", UI_ENV, "start"],
        logs / "temporal-ui.log",
    )


def ensure_worker_metrics_ports_free(settings: Settings) -> None:
    """Raise, naming the setting, if the worker's metrics ports clash or are taken.

    The worker checks this when it starts; ``up`` checks it before it starts anything,
    so a second ``up`` on the same machine stops with the setting to change instead of
    a worker that dies after the dev server and the API came up.
    """
    host, ours, sdk = (
        settings.worker_metrics_host,
        settings.worker_metrics_port,
        settings.temporal_metrics_port,
    )
    if ours is not None and ours == sdk:
        raise ConfigurationError(
            f"STAGECOACH_WORKER_METRICS_PORT and STAGECOACH_TEMPORAL_METRICS_PORT are both {ours}",
            fix="give each its own port (defaults 9464 and 9465), or set one to 'off'",
        )
    if ours is not None:
        ensure_port_free(
            host, ours, what="worker metrics", setting="STAGECOACH_WORKER_METRICS_PORT"
        )
    if sdk is not None:
        ensure_port_free(
            host, sdk, what="Temporal SDK metrics", setting="STAGECOACH_TEMPORAL_METRICS_PORT"
        )


def check_definitions(settings: Settings) -> str:
    """Load and validate the project the worker will run, before anything starts.

    Returns:
        What to print for it: its name and where it came from.

    Raises:
        StagecoachError: The definitions do not load (the file and line), or do not
            validate (how many problems, the first, and the command that lists all).
    """
    from stagecoach.engine.domain.content import ContentLibrary, ContentValidationError
    from stagecoach.engine.services.project import load_project

    project = load_project(settings)
    try:
        library = ContentLibrary.load(project.content_dir(settings))
    except ContentValidationError as exc:
        raise StagecoachError(
            f"the project's content does not load: {exc}",
            fix="run 'stagecoach validate' and correct what it lists",
        ) from exc
    problems = project.definitions.problems(library)
    if problems:
        count = len(problems)
        raise StagecoachError(
            f"the project's definitions ({project.ref}) have {count} "
            f"problem{'s' if count != 1 else ''}, the first: {problems[0]}; the worker "
            "would publish none of them",
            fix="run 'stagecoach validate' for the list, and correct them",
        )
    label = project.definitions.name or project.ref
    return f"{label}  ({project.ref}, from {project.origin})"


def run_up(settings: Settings, *, out: Callable[[str], None] = print) -> int:
    """Start everything, print where it is, and supervise until signalled. Returns the
    process exit code."""
    host, port = settings.temporal_host_port
    if host not in ("127.0.0.1", "localhost", "0.0.0.0", "::1"):  # noqa: S104
        raise StagecoachError(
            f"'stagecoach up' starts a local dev server, but STAGECOACH_TEMPORAL_ADDRESS "
            f"points at {settings.temporal_address}",
            fix="unset it for the embedded default, or run 'stagecoach worker' and "
            "'stagecoach api' against your cluster",
        )
    temporal_cli = find_temporal_cli(settings)
    ui_server = find_ui_server(settings)
    ensure_port_free(host, port, what="Temporal frontend", setting="STAGECOACH_TEMPORAL_ADDRESS")
    ensure_port_free(
        host,
        settings.temporal_ui_port,
        what="Temporal Web UI",
        setting="STAGECOACH_TEMPORAL_UI_PORT",
    )
    ensure_port_free(
        settings.api_host, settings.api_port, what="HTTP API", setting="STAGECOACH_API_PORT"
    )
    ensure_worker_metrics_ports_free(settings)
    project = check_definitions(settings)

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = make_engine(settings.resolved_database_url)
    upgrade(db)
    db.dispose()
    # The embedded default encrypts contacts' payloads too: a key file under data_dir
    # unless STAGECOACH_PAYLOAD_KEYS is set; the children read the same one.
    ensure_key_file(settings)
    # Links are signed with this install's own secret, never the published default.
    secret = ensure_link_secret_file(settings)
    check_api_credentials(settings.model_copy(update={"link_secret": secret}))

    logs = settings.data_dir / "logs"
    python = [sys.executable, "-m", "stagecoach.engine.cli"]
    ui = _ui_server_child(settings, ui_server, logs) if ui_server is not None else None
    built_in_ui = (
        ["--headless"]
        if ui is not None
        else [
            "--ui-port",
            str(settings.temporal_ui_port),
            # The built-in UI knows the endpoint but cannot send credentials: each
            # browser must turn them on (docs/codec.md).
            "--ui-codec-endpoint",
            f"{settings.api_base_url}/codec",
        ]
    )
    temporal = Child(
        "Temporal dev server",
        [
            str(temporal_cli),
            "server",
            "start-dev",
            "--db-filename",
            str(settings.data_dir / "temporal.db"),
            "--ip",
            host,
            "--port",
            str(port),
            *built_in_ui,
            "--namespace",
            settings.temporal_namespace,
            "--log-level",
            "warn",
            *dev_server_args(),
        ],
        logs / "temporal.log",
    )
    worker = Child("worker", [*python, "worker"], logs / "worker.log")
    api = Child("API", [*python, "api"], logs / "api.log")

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise Stopped(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    env = _child_env(settings)
    started: list[Child] = []
    code = 0
    try:
        out("starting the Temporal dev server ...")
        temporal.start(env)
        started.append(temporal)
        _wait_for("Temporal dev server", lambda: port_open(host, port), started)
        if ui is not None:
            ui.start(env)
            started.append(ui)
        _wait_for("Temporal Web UI", lambda: port_open(host, settings.temporal_ui_port), started)
        out("starting the worker and the API ...")
        for child in (worker, api):
            child.start(env)
            started.append(child)
        _wait_for("API", lambda: _api_healthy(f"{settings.api_base_url}/healthz"), started)
        _wait_for("worker", lambda: _worker_polling(settings), started)
        out(_banner(settings, logs, project, codec_ready=ui is not None))
        while True:
            for child in started:
                exit_code = child.exited()
                if exit_code is not None:
                    raise ProcessFailed(
                        f"the {child.name} exited with code {exit_code}: {child.log_tail()}",
                        fix=f"read {child.log_path}, fix the cause and run 'stagecoach up' again",
                    )
            time.sleep(0.5)
    except Stopped:
        out("stopping ...")
    except StagecoachError:
        code = 1
        raise
    finally:
        # Ignore further Ctrl-C while children stop: a second press must not orphan them.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        for child in reversed(started):
            child.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if code == 0:
            out("stopped.")
    return code


def _banner(settings: Settings, logs: Path, project: str, *, codec_ready: bool) -> str:
    api = settings.api_base_url
    keys = "STAGECOACH_PAYLOAD_KEYS" if settings.payload_keys else str(key_file(settings))
    decrypt = (
        f"Web UI decryption: sign in at {api}/codec/login"
        if codec_ready
        else f"Web UI decryption: sign in at {api}/codec/login, then turn on the UI's "
        "codec credentials once per browser (docs/codec.md), or run scripts/temporal-ui.sh "
        "so that no setting is needed"
    )
    names = "temporal,temporal-ui,worker,api" if codec_ready else "temporal,worker,api"
    return "\n".join(
        [
            "Stagecoach is up.",
            f"  Temporal frontend  {settings.temporal_address}"
            f"  (namespace {settings.temporal_namespace})",
            f"  Temporal Web UI    {settings.temporal_ui_url}",
            f"  HTTP API           {api}  (docs {api}/docs, health {api}/healthz)",
            "  Send events        stagecoach keys create website  (then Segment's API, "
            f"basic auth, at {api}/v1/track)",
            f"  Dashboard          {api}/dashboard  ("
            + (
                "sign in with STAGECOACH_ADMIN_TOKEN)"
                if settings.admin_token and settings.admin_token.get_secret_value().strip()
                else "set STAGECOACH_ADMIN_TOKEN to sign in)"
            ),
            "  Try it             stagecoach demo, then stagecoach report funnel",
            f"  Definitions        {project}",
            f"  Database           {redact(settings.resolved_database_url)}",
            f"  Payload keys       {keys}  ({decrypt})",
            f"  Logs               {logs}/{{{names}}}.log",
            "Press Ctrl-C to stop.",
        ]
    )
