"""``stagecoach up``: the Temporal dev server, the worker and the API as one command.

Each child runs in its own session (process group), so a Ctrl-C at the terminal reaches
only this supervisor, which then stops the children in order (API, worker, Temporal),
each first with SIGTERM and then, past a grace period, SIGKILL to its whole group. A
child that dies on its own stops everything, with the log to read named.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import httpx

from engine.codec import ensure_key_file, key_file
from engine.errors import ProcessFailed, StagecoachError
from engine.runtime import ensure_port_free, find_temporal_cli, port_open
from engine.search_attributes import dev_server_args
from engine.settings import Settings, check_api_credentials, ensure_link_secret_file
from engine.storage import make_engine, upgrade
from engine.storage.db import redact

STARTUP_TIMEOUT = 90.0
STOP_GRACE = 15.0


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
    from engine.cli.doctor import check_temporal, check_worker

    async def probe() -> bool:
        _temporal, client = await check_temporal(settings)
        return client is not None and (await check_worker(client, settings)).ok

    return asyncio.run(probe())


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

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    engine.dispose()
    # The embedded default encrypts contacts' payloads too: a key file under data_dir
    # unless STAGECOACH_PAYLOAD_KEYS is set; the children read the same one.
    ensure_key_file(settings)
    # Links are signed with this install's own secret, never the published default.
    secret = ensure_link_secret_file(settings)
    check_api_credentials(settings.model_copy(update={"link_secret": secret}))

    logs = settings.data_dir / "logs"
    python = [sys.executable, "-m", "engine.cli"]
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
            "--ui-port",
            str(settings.temporal_ui_port),
            "--namespace",
            settings.temporal_namespace,
            "--log-level",
            "warn",
            "--ui-codec-endpoint",  # the UI decrypts through the API (docs/codec.md)
            f"{settings.api_base_url}/codec",
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
        _wait_for("Temporal Web UI", lambda: port_open(host, settings.temporal_ui_port), started)
        out("starting the worker and the API ...")
        for child in (worker, api):
            child.start(env)
            started.append(child)
        _wait_for("API", lambda: _api_healthy(f"{settings.api_base_url}/healthz"), started)
        _wait_for("worker", lambda: _worker_polling(settings), started)
        out(_banner(settings, logs))
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


def _banner(settings: Settings, logs: Path) -> str:
    api = settings.api_base_url
    keys = "STAGECOACH_PAYLOAD_KEYS" if settings.payload_keys else str(key_file(settings))
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
            f"  Database           {redact(settings.resolved_database_url)}",
            f"  Payload keys       {keys}  (Web UI decryption: sign in at {api}/codec/login)",
            f"  Logs               {logs}/{{temporal,worker,api}}.log",
            "Press Ctrl-C to stop.",
        ]
    )
