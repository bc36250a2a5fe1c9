"""The layout you can check: one import name, and the import contracts in pyproject.toml.

``[tool.importlinter]`` declares ARCHITECTURE.md's dependency direction with
import-linter (a maintained library, rather than an allow-list of file names):
- the pure domain (``stagecoach.engine.domain``, the whole package) imports nothing
  outside itself: no protocol, I/O framework, storage, service, API, CLI, workflow or
  connector;
- the protocol imports the domain and the Temporal SDK only;
- connectors import no storage, service, Temporal client, API, CLI or workflow;
- workflows never import the API, the dashboard or the CLI;
- services and the Temporal client side never import the API, the dashboard or the CLI;
- no router imports another router, and nothing under ``api`` imports the app factory;
- no two sibling modules or packages import each other, at any depth.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("engine", "workflows", "connectors")


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
    assert {"forbidden", "independence", "acyclic_siblings"} <= kinds
    sources = {s for c in _contracts() for s in c.get("source_modules", [])}  # type: ignore[attr-defined]
    assert {
        "stagecoach.engine.domain",
        "stagecoach.engine.protocol",
        "stagecoach.engine.services",
        "stagecoach.connectors",
        "stagecoach.workflows",
    } <= sources


def test_the_rooms_are_linked_into_the_one_package() -> None:
    for room in (*ROOMS, "content", "examples"):
        link = ROOT / "stagecoach" / room
        assert link.is_symlink(), f"stagecoach/{room} should link to ../{room}"
        assert link.resolve() == (ROOT / room).resolve()


def _top_level_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        found += [f"{where} {n}" for n in names if n.split(".")[0] in ROOMS]
    return found


def test_nothing_imports_a_room_by_its_folder_name() -> None:
    """``engine``, ``workflows`` and ``connectors`` are importable from the repository root,
    but the installed name is ``stagecoach.*``: an import by folder name would load a
    second copy of every module it reaches (and fail from the wheel)."""
    sources = [
        p
        for folder in (*ROOMS, "tests", "scripts")
        for p in (ROOT / folder).rglob("*.py")
        if ".venv" not in p.parts
    ]
    assert len(sources) > 300
    offenders = [hit for p in sources for hit in _top_level_imports(p)]
    assert offenders == [], "import these as stagecoach.<room>:\n" + "\n".join(offenders)


def test_importing_the_package_loads_no_module_by_its_folder_name() -> None:
    code = (
        "import sys; import stagecoach.engine.app, stagecoach.engine.cli, "
        "stagecoach.workflows.worker, stagecoach.connectors; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {ROOMS!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
