"""ARCHITECTURE.md: engine's pure modules import no Temporal, no database, no network.

Each module is imported in a fresh interpreter and the loaded modules are checked, so
an indirect import (a helper that pulls in SQLAlchemy) fails as surely as a direct one.
"""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest


def _pure_domain() -> list[str]:
    """The modules the import contract in pyproject.toml calls the pure domain: one list."""
    config = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    for contract in config["tool"]["importlinter"]["contracts"]:
        if contract["name"].startswith("The pure domain"):
            return list(contract["source_modules"])
    raise AssertionError("pyproject.toml has no 'The pure domain' import contract")


# engine.services.links verifies signed links with no I/O of its own.
PURE = [*_pure_domain(), "engine.services.links"]
FORBIDDEN = ("temporalio", "sqlalchemy", "sqlmodel", "httpx", "psycopg", "fastapi", "workflows")


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_framework(module: str) -> None:
    probe = (
        f"import importlib, json, sys; importlib.import_module({module!r}); "
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout
    )
    leaks = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)
    assert leaks == [], f"{module} pulls in {leaks[:5]}"
