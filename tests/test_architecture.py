"""The layout you can check: the import contracts in pyproject.toml hold.

``[tool.importlinter]`` declares ARCHITECTURE.md's dependency direction with
import-linter (a maintained library, rather than an allow-list of file names):
- the pure domain imports no I/O framework, storage, service, API, CLI, workflow or
  connector;
- connectors import no storage, service, API, CLI or workflow;
- workflows never import the API, the dashboard or the CLI;
- services over storage never import the API, the dashboard or the CLI;
- no two sibling modules or packages import each other, at any depth.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def test_every_import_contract_is_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in result.stdout


def test_the_contracts_cover_direction_and_cycles() -> None:
    """A contract quietly deleted would make the test above pass for nothing."""
    kinds = {str(c["type"]) for c in _contracts()}
    assert {"forbidden", "acyclic_siblings"} <= kinds
    sources = {s for c in _contracts() for s in c.get("source_modules", [])}  # type: ignore[attr-defined]
    assert {"engine.journeys", "engine.protocol", "connectors", "workflows"} <= sources
