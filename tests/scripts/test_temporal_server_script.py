"""``scripts/temporal-server.sh``: where it finds the server and its SQL tool, and what
it says when it cannot. (The build itself is what the cluster tests run on: the
session's ``temporal_server_bin`` fixture calls this script.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "temporal-server.sh"


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        ["bash", str(SCRIPT)], env={**base, **env}, capture_output=True, text=True, check=False
    )


def _executables(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = folder / name
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    return folder


def test_a_cached_build_is_found_and_nothing_is_built(tmp_path: Path) -> None:
    bin_dir = _executables(
        tmp_path / "temporal-server" / "v1.29.1" / "bin", "temporal-server", "temporal-sql-tool"
    )
    # No Go on PATH: finding the cache must not need it.
    done = _run({"STAGECOACH_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(bin_dir)
    assert done.stderr == ""


def test_temporal_server_path_names_a_folder_holding_both(tmp_path: Path) -> None:
    both = _executables(tmp_path / "both", "temporal-server", "temporal-sql-tool")
    assert _run({"TEMPORAL_SERVER_PATH": str(both)}).stdout.strip() == str(both)

    half = _executables(tmp_path / "half", "temporal-server")
    done = _run({"TEMPORAL_SERVER_PATH": str(half), "STAGECOACH_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert f"TEMPORAL_SERVER_PATH={half}" in done.stderr
    assert "temporal-sql-tool" in done.stderr
    assert "unset it" in done.stderr


def test_without_a_cache_or_go_it_says_how_to_get_them(tmp_path: Path) -> None:
    done = _run({"STAGECOACH_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert "no Go toolchain" in done.stderr
    assert "TEMPORAL_SERVER_PATH=" in done.stderr
    assert "go install go.temporal.io/server/cmd/server@v1.29.1" in done.stderr
    assert not (tmp_path / "temporal-server" / "v1.29.1" / "bin").exists()
