"""``stagecoach cluster up`` from nothing: an empty directory, the binaries, and the
command. It starts PostgreSQL, the Temporal server, two workers and two API replicas,
``stagecoach doctor --deep`` against what it printed passes (a SystemCheck workflow runs
through a worker), and Ctrl-C stops every process it started. Bad input stops it before
anything starts, with the cause and the fix (the command prints them as one line, exit
2: shown here for a folder the postgres user cannot enter; the others are checked on
``run_cluster``, in-process, to spare the suite an interpreter start each)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stagecoach.engine.cli.cluster import run_cluster
from stagecoach.engine.domain.errors import BinaryNotFound, PortInUse
from stagecoach.engine.settings import Settings
from tests.helpers import free_port

pytestmark = pytest.mark.cluster

CLI = [sys.executable, "-m", "stagecoach.engine.cli"]


def _two_free_ports() -> int:
    """A port whose next one is free too (the second API replica's)."""
    while True:
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    # Outside pytest's private tmp folders: PostgreSQL runs as the postgres user.
    root = Path(tempfile.mkdtemp(prefix="stagecoach-cluster-up-"))
    os.chmod(root, 0o711)  # noqa: S103  (enter only: the postgres user needs its subfolder)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _env(tmp: Path, server_bin: Path, api_port: int, frontend: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECOACH_")}
    env.update(
        TEMPORAL_SERVER_PATH=str(server_bin),
        STAGECOACH_DATA_DIR=str(tmp / ".stagecoach"),
        STAGECOACH_API_PORT=str(api_port),
        STAGECOACH_TEMPORAL_ADDRESS=f"127.0.0.1:{frontend}",
        STAGECOACH_TEMPORAL_TASK_QUEUE="cluster-up",
        STAGECOACH_WORKER_METRICS_PORT="off",
        STAGECOACH_TEMPORAL_METRICS_PORT="off",
        STAGECOACH_LOG_FORMAT="json",
    )
    return env


def _open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.timeout(240)
def test_cluster_up_starts_the_topology_from_nothing_and_ctrl_c_stops_it(
    temporal_server_bin: Path, postgres_bin: Path, cluster_dir: Path, tmp_path: Path
) -> None:
    api_port, frontend = _two_free_ports(), free_port()
    env = _env(tmp_path, temporal_server_bin, api_port, frontend)
    up = subprocess.Popen(
        [*CLI, "cluster", "up", "--dir", str(cluster_dir / "c")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert up.stdout is not None
        deadline = time.monotonic() + 180
        while not any("Press Ctrl-C to stop." in line for line in lines):
            line = up.stdout.readline()
            assert line or up.poll() is None, "".join(lines)
            lines.append(line)
            assert time.monotonic() < deadline, "".join(lines)
        banner = "".join(lines)
        assert "The Stagecoach cluster is up." in banner
        assert "Workers            2" in banner
        for port in (api_port, api_port + 1):
            assert f"http://127.0.0.1:{port}" in banner
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        database = re.search(r"STAGECOACH_DATABASE_URL=(\S+)", banner)
        assert database is not None, banner
        pg_port = int(database.group(1).rsplit(":", 1)[1].split("/")[0])

        # The operator's next command, as the banner says: doctor on the same cluster.
        doctor = subprocess.run(
            [*CLI, "doctor", "--deep"],
            env={**env, "STAGECOACH_DATABASE_URL": database.group(1)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr

        up.send_signal(signal.SIGINT)
        rest, _ = up.communicate(timeout=90)
        assert up.returncode == 0, banner + rest
        assert rest.strip().endswith("stopped."), rest
        for port in (api_port, api_port + 1, frontend, pg_port):
            assert not _open(port), f"port {port} still open after the cluster stopped"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def _settings(tmp: Path, api_port: int) -> Settings:
    return Settings(
        data_dir=tmp / ".stagecoach",
        api_port=api_port,
        temporal_address=f"127.0.0.1:{free_port()}",
        worker_metrics_port=None,
        temporal_metrics_port=None,
    )


async def test_a_busy_api_port_stops_cluster_up_before_anything_starts(
    temporal_server_bin: Path, cluster_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_SERVER_PATH", str(temporal_server_bin))
    api_port = _two_free_ports()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", api_port + 1))
        busy.listen()
        with pytest.raises(PortInUse) as refused:
            await run_cluster(
                _settings(tmp_path, api_port), workers=2, apis=2, directory=cluster_dir / "c"
            )
    assert f"port {api_port + 1}" in refused.value.message
    assert "STAGECOACH_API_PORT" in refused.value.fix
    assert not (cluster_dir / "c").exists(), "nothing is created before the checks pass"


async def test_a_wrong_temporal_server_path_names_the_fix(
    cluster_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_SERVER_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(BinaryNotFound) as missing:
        await run_cluster(
            _settings(tmp_path, _two_free_ports()), workers=2, apis=2, directory=cluster_dir / "c"
        )
    assert f"TEMPORAL_SERVER_PATH={tmp_path / 'nowhere'}" in missing.value.message
    assert "temporal-server and temporal-sql-tool" in missing.value.message
    assert "scripts/temporal-server.sh" in missing.value.fix
    assert not (cluster_dir / "c").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_a_directory_the_postgres_user_cannot_enter_names_the_fix(
    temporal_server_bin: Path, postgres_bin: Path, tmp_path: Path
) -> None:
    private = tmp_path / "private"  # pytest's tmp folders are 0700, root's own
    done = subprocess.run(
        [*CLI, "cluster", "up", "--dir", str(private)],
        env=_env(tmp_path, temporal_server_bin, _two_free_ports(), free_port()),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "cannot reach" in done.stderr
    assert "--dir" in done.stderr
