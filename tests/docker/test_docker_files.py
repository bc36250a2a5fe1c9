"""The production files are checked, not run: no Docker engine exists on build machines."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from stagecoach.engine.domain.errors import BinaryNotFound
from tests.helpers import build_wheel

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
    assert {"postgresql", "temporal", "temporal-ui", "api", "worker", "migrate"} <= set(services)
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert "ports" not in services["worker"]  # scalable: no fixed host port to collide on
    worker_env = services["worker"]["environment"]
    assert worker_env["STAGECOACH_DATABASE_URL"].startswith("postgresql://")


def test_compose_runs_exactly_the_cluster_that_tests_cluster_ran() -> None:
    """The versions, the server's config, its command and the set-up commands are those
    of ``stagecoach cluster up`` (``local_cluster``), which tests/cluster runs."""
    from stagecoach.engine.cli.local_cluster import (
        CONFIG_DIR,
        SQL_PLUGIN,
        TEMPORAL_DATABASES,
        TEMPORAL_SERVER_VERSION,
        find_postgres,
    )
    from stagecoach.engine.protocol.search_attributes import SEARCH_ATTRIBUTES

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    version = TEMPORAL_SERVER_VERSION.removeprefix("v")
    temporal = services["temporal"]
    assert temporal["image"].endswith(f":${{TEMPORAL_VERSION:-{version}}}")
    assert temporal["image"].startswith("temporalio/server:")
    for one_shot in ("temporal-schema", "temporal-namespace"):
        assert services[one_shot]["image"].endswith(f":${{TEMPORAL_VERSION:-{version}}}")

    # The config kept in the repository, mounted where the command reads it.
    assert CONFIG_DIR == ROOT / "docker" / "temporal"
    assert (CONFIG_DIR / "stagecoach.yaml").is_file()
    assert "./temporal:/etc/temporal/stagecoach:ro" in temporal["volumes"]
    assert temporal["entrypoint"] == [
        "temporal-server", "--root", "/etc/temporal/stagecoach", "--config", ".",
        "--env", "stagecoach", "--allow-no-auth", "start",
    ]  # fmt: skip
    assert temporal["environment"]["TEMPORAL_DYNAMIC_CONFIG"].endswith("/dynamicconfig.yaml")
    assert (CONFIG_DIR / "dynamicconfig.yaml").is_file()

    schema = " ".join(services["temporal-schema"]["command"])
    assert f"--plugin {SQL_PLUGIN} " in schema
    for database, schema_name in TEMPORAL_DATABASES.items():
        assert f"{database}={schema_name}" in schema
    assert "setup-schema -v 0.0" in schema
    assert "update-schema --schema-name" in schema

    namespace = " ".join(services["temporal-namespace"]["command"])
    for name, kind in SEARCH_ATTRIBUTES.items():
        assert f"{name}={kind}" in namespace, f"search attribute {name} is not registered"

    # Two API replicas and two workers, Stagecoach's database on the same PostgreSQL.
    assert services["api"]["deploy"]["replicas"] == 2
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["api"]["environment"]["STAGECOACH_DATABASE_URL"].endswith(
        "@postgresql:5432/stagecoach"
    )
    # The PostgreSQL major version the tests ran on, where they ran (a machine without
    # PostgreSQL ran no cluster tests to compare with).
    try:
        tested = find_postgres().parent.name
    except BinaryNotFound:
        return
    assert services["postgresql"]["image"] == f"postgres:{tested}"


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
    wheel = build_wheel(ROOT, tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "stagecoach/engine/services/storage/migrations/env.py" in names
    versions = "stagecoach/engine/services/storage/migrations/versions/"
    assert any(n.startswith(f"{versions}0001") for n in names)
