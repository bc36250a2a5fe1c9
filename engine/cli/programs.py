"""Finding the programs Stagecoach runs, and the ports it listens on."""

from __future__ import annotations

import gc
import os
import shutil
import socket
from pathlib import Path

from stagecoach.engine.domain.errors import BinaryNotFound, PortInUse
from stagecoach.engine.settings import Settings

TEMPORAL_CLI_VERSION = "v1.5.1"


def find_temporal_cli(settings: Settings) -> Path:
    """Locate the Temporal CLI: ``TEMPORAL_CLI_PATH``, then PATH, then the build cache.

    The same order as ``scripts/temporal-cli.sh``, which also builds the binary when
    none is found; this function only looks, so it never starts a build by surprise.
    """
    if settings.temporal_cli_path is not None:
        path = settings.temporal_cli_path.expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise BinaryNotFound(
            f"TEMPORAL_CLI_PATH={path} is not an executable file",
            fix="point TEMPORAL_CLI_PATH at the 'temporal' binary, or unset it so "
            "'make run' builds one into the cache",
        )
    on_path = shutil.which("temporal")
    if on_path:
        return Path(on_path)
    cached = settings.cache_dir / "temporal-cli" / TEMPORAL_CLI_VERSION / "bin" / "temporal"
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached
    raise BinaryNotFound(
        "the Temporal CLI was not found (TEMPORAL_CLI_PATH unset, no 'temporal' on PATH, "
        f"none in {cached.parent})",
        fix="run 'make run' or 'scripts/temporal-cli.sh' to build it with Go, "
        "or set TEMPORAL_CLI_PATH to an existing binary",
    )


def ensure_port_free(host: str, port: int, *, what: str, setting: str) -> None:
    """Raise PortInUse, naming the setting that moves us elsewhere, if ``port`` is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR, as uvicorn and the dev server bind: a live listener still makes
        # bind fail, but the TIME_WAIT connections a crashed server leaves behind do not,
        # so a supervisor's restart right after a crash is not refused for a minute.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUse(
                f"port {port} on {host} for the {what} is already in use ({exc.strerror})",
                fix=f"stop whatever listens there (e.g. 'ss -ltnp sport = :{port}') or set "
                f"{setting} to a free port",
            ) from exc


def port_open(host: str, port: int, *, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def freeze_startup_heap() -> None:
    """Exempt what exists at start-up from garbage collection, for good.

    Modules, the app or the worker, definitions and schemas are most of a long-running
    process's heap and live as long as it does. Frozen, a full collection stops walking
    them: under batch ingest that walk was a sixth of the API's CPU, and in a worker each
    full collection stalled every workflow task for 0.2-0.3 s instead of 0.03-0.1 s.
    Call it once, when start-up is done and before serving."""
    gc.collect()
    gc.freeze()
