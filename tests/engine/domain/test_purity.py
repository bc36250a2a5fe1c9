"""ARCHITECTURE.md: the pure domain imports no Temporal, no database, no network.

The whole ``stagecoach.engine.domain`` package, every module found on disk, is imported
in a fresh interpreter and the loaded modules are checked: an indirect import (a helper
that pulls in SQLAlchemy) fails as surely as a direct one, and a new module is covered
the day it is written. The import contract in pyproject.toml says the same statically.
"""

import json
import pkgutil
import subprocess
import sys

import pytest

import stagecoach.engine.domain as domain

FORBIDDEN = (
    "temporalio",
    "sqlalchemy",
    "sqlmodel",
    "alembic",
    "httpx",
    "psycopg",
    "fastapi",
    "starlette",
    "uvicorn",
    "duckdb",
    "prometheus_client",
    "stagecoach.workflows",
    "stagecoach.connectors",
    "stagecoach.engine.protocol",
    "stagecoach.engine.services",
    "stagecoach.engine.temporal",
    "stagecoach.engine.api",
    "stagecoach.engine.dashboard",
    "stagecoach.engine.cli",
)

DOMAIN = sorted(
    info.name for info in pkgutil.walk_packages(domain.__path__, prefix=f"{domain.__name__}.")
)


def test_the_domain_package_is_walked_whole() -> None:
    assert {
        "stagecoach.engine.domain.conditions",
        "stagecoach.engine.domain.journeys._interpreter",
        "stagecoach.engine.domain.content._render",
        "stagecoach.engine.domain.sales",
    } <= set(DOMAIN)
    assert len(DOMAIN) > 30


def _loaded_by(modules: list[str]) -> list[str]:
    probe = (
        f"import importlib, json, sys; [importlib.import_module(m) for m in {modules!r}]; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def _leaks(loaded: list[str]) -> list[str]:
    return sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def test_the_whole_domain_imports_no_io_framework() -> None:
    assert _leaks(_loaded_by(DOMAIN)) == []


def test_verifying_signed_links_needs_no_io_either() -> None:
    module = "stagecoach.engine.services.links"
    loaded = [m for m in _loaded_by([module]) if m not in (module, "stagecoach.engine.services")]
    assert _leaks(loaded) == []


@pytest.mark.parametrize("module", ["stagecoach.engine.domain.journeys", "stagecoach.engine.app"])
def test_the_probe_sees_a_leak_where_there_is_one(module: str) -> None:
    """The check above can fail: the app (not pure) leaks, a pure package does not."""
    leaks = _leaks(_loaded_by([module]))
    assert bool(leaks) is (module == "stagecoach.engine.app"), leaks[:5]
