"""ARCHITECTURE.md: engine's pure modules import no Temporal, no database, no network.

Each module is imported in a fresh interpreter and the loaded modules are checked, so
an indirect import (a helper that pulls in SQLAlchemy) fails as surely as a direct one.
"""

import json
import subprocess
import sys

import pytest

PURE = [
    "engine.conditions",
    "engine.events",
    "engine.pipeline",
    "engine.scoring",
    "engine.hashing",
    "engine.journeys",
    "engine.contact",
    "engine.policy",
    "engine.delivery",
    "engine.messages",
    "engine.protocol",
    "engine.search_attributes",
    "engine.content",
    "engine.wechat_callback",
    "engine.bounces",
    "engine.sales",
    "engine.nps",
    "engine.addresses",
    "engine.serial",
    "engine.services.links",
]
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
