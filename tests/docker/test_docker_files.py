"""The production files are checked, not run: no Docker engine exists on build machines."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def test_compose_file_validates_against_the_compose_specification() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_temporal_on_postgres_with_ui_worker_and_api() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert services["temporal"]["environment"]["DB"] == "postgres12"
    assert {"postgresql", "temporal", "temporal-ui", "api", "worker", "migrate"} <= set(services)
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert "ports" not in services["worker"]  # scalable: no fixed host port to collide on
    worker_env = services["worker"]["environment"]
    assert worker_env["STAGECOACH_DATABASE_URL"].startswith("postgresql://")


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM ", text, flags=re.M)) >= 2
    user = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert user
    assert not user[-1].startswith(("root", "0:", "0"))
    assert re.search(r"^HEALTHCHECK ", text, flags=re.M)
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.M):
        assert (ROOT / copied).exists(), f"Dockerfile copies missing path {copied}"


def test_wheel_ships_the_migrations_the_image_runs(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("stagecoach-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "stagecoach/engine/services/storage/migrations/env.py" in names
    versions = "stagecoach/engine/services/storage/migrations/versions/"
    assert any(n.startswith(f"{versions}0001") for n in names)
