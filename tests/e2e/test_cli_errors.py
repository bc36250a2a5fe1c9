"""Bad input at the CLI: each ends with one line naming the cause and the fix."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port

pytestmark = pytest.mark.e2e


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.update(STAGECOACH_DATA_DIR=str(tmp_path / ".stagecoach"), **env)
    return subprocess.run(
        [sys.executable, "-m", "stagecoach.engine.cli", *args],
        env=full,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=90,
    )


def _one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("stagecoach: error:")]
    assert len(lines) == 1, result.stderr
    for needle in (*needles, "Fix:"):
        assert needle in lines[0], lines[0]
    return lines[0]


def test_wrong_database_url_names_the_setting(tmp_path: Path) -> None:
    result = _run(["db", "upgrade"], tmp_path, STAGECOACH_DATABASE_URL="nosuchdb://x/y")
    _one_line_error(result, "STAGECOACH_DATABASE_URL")


def test_unreachable_database_names_host_and_port(tmp_path: Path) -> None:
    result = _run(
        ["db", "upgrade"], tmp_path, STAGECOACH_DATABASE_URL="postgresql://u@127.0.0.1:1/x"
    )
    _one_line_error(result, "127.0.0.1:1")


def test_unreachable_temporal_names_the_address(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = _run(["worker"], tmp_path, STAGECOACH_TEMPORAL_ADDRESS=address)
    _one_line_error(result, address, "STAGECOACH_TEMPORAL_ADDRESS")


def test_missing_temporal_binary_names_the_options(tmp_path: Path) -> None:
    result = _run(["up"], tmp_path, TEMPORAL_CLI_PATH=str(tmp_path / "nowhere" / "temporal"))
    _one_line_error(result, "TEMPORAL_CLI_PATH")


@pytest.mark.parametrize("command", ["up", "api"])
def test_port_taken_names_the_port_and_the_setting(
    tmp_path: Path, temporal_cli_path: str, command: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run(
            [command],
            tmp_path,
            STAGECOACH_API_PORT=str(port),
            TEMPORAL_CLI_PATH=temporal_cli_path,
            STAGECOACH_TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
            STAGECOACH_TEMPORAL_UI_PORT=str(free_port()),
        )
    _one_line_error(result, str(port), "STAGECOACH_API_PORT")


def test_doctor_reports_each_failure_with_its_fix(tmp_path: Path) -> None:
    result = _run(["doctor"], tmp_path, STAGECOACH_TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "FAIL  temporal" in result.stdout
    assert "FAIL  migrations" in result.stdout  # a fresh data dir has no schema yet
    assert result.stdout.count("fix:") == 2
