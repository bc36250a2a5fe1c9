"""The Pythons Stagecoach supports, and the temporalio pin.

The package claims 3.11, 3.12 and 3.13 (``requires-python`` and the classifiers). Each
claim is tested: ``make test`` runs the whole suite on 3.11 (scripts/bootstrap.sh), and
``make test-pythons`` (scripts/test-pythons.sh) the fast tests on every other version,
this module among them. The code reaches into private temporalio modules
(workflows/sandbox.py), so temporalio is pinned to the minor release those were checked on.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.helpers import ROOT

SCRIPT = ROOT / "scripts" / "test-pythons.sh"
CLAIMED = ("3.11", "3.12", "3.13")


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads(
        (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    )["project"]
    return project


def _script_versions() -> set[str]:
    match = re.search(r"PYTHON_VERSIONS:-([0-9. ]+)\}", SCRIPT.read_text(encoding="utf-8"))
    assert match, "scripts/test-pythons.sh no longer names its default versions"
    return set(match.group(1).split())


def _bootstrap_version() -> str:
    text = (ROOT / "scripts" / "bootstrap.sh").read_text(encoding="utf-8")
    match = re.search(r"sys\.version_info\[:2\] == \((\d+), (\d+)\)", text)
    assert match, "scripts/bootstrap.sh no longer names the Python of .venv"
    return f"{match.group(1)}.{match.group(2)}"


def test_requires_python_admits_exactly_the_claimed_versions() -> None:
    allowed = SpecifierSet(str(_project()["requires-python"]))
    for version in CLAIMED:
        assert f"{version}.0" in allowed, version
    assert "3.10.13" not in allowed
    assert "3.14.0" not in allowed, "3.14 is not tested: add it to the script first"
    here = ".".join(map(str, sys.version_info[:3]))
    assert here in allowed, f"running on {here}, which pyproject.toml does not admit"


def test_every_claimed_version_is_tested_and_has_its_classifier() -> None:
    classifiers = _project()["classifiers"]
    assert isinstance(classifiers, list)
    listed = {
        c.removeprefix("Programming Language :: Python :: ")
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert listed == set(CLAIMED)
    # 3.11 runs the whole suite in .venv; the others run the fast tests in cached venvs.
    assert {_bootstrap_version()} | _script_versions() == set(CLAIMED)


def _private_temporalio_imports() -> list[str]:
    """``module:line`` of every import from a private temporalio module or name."""
    found = []
    for room in ("engine", "workflows", "connectors"):
        for path in sorted((ROOT / room).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "temporalio" and any(p.startswith("_") for p in parts):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
                        break
    return found


def test_temporalio_is_pinned_to_the_minor_release_while_private_modules_are_used() -> None:
    private = _private_temporalio_imports()
    assert private, "no private temporalio imports left: the minor pin can be relaxed"
    dependencies = _project()["dependencies"]
    assert isinstance(dependencies, list)
    (temporalio,) = [r for r in map(Requirement, dependencies) if r.name == "temporalio"]
    import temporalio as sdk

    installed = Version(sdk.__version__)
    next_minor = f"{installed.major}.{installed.minor + 1}.0"
    assert str(installed) in temporalio.specifier, (installed, temporalio)
    assert next_minor not in temporalio.specifier, (
        f"{temporalio} admits {next_minor}, but these import private SDK modules that a "
        f"minor release may move: {private}. Pin to <{installed.major}.{installed.minor + 1}."
    )


def _run_script(env: dict[str, str], versions: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=ROOT,
        env={**env, "PYTHON_VERSIONS": versions},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_missing_python_fails_loudly_naming_pyenv_and_the_fix(tmp_path: Path) -> None:
    # A fake pyenv whose root has no 3.98 and 3.99; the real versions cannot be touched.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pyenv = bin_dir / "pyenv"
    pyenv.write_text(f"#!/bin/sh\necho {tmp_path / 'pyenv-root'}\n", encoding="utf-8")
    pyenv.chmod(0o755)
    (tmp_path / "pyenv-root" / "versions").mkdir(parents=True)
    path = f"{bin_dir}:/usr/bin:/bin"

    result = _run_script({"PATH": path, "HOME": str(tmp_path)}, "3.98 3.99")

    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    for version in ("3.98", "3.99"):
        assert f"error: Python {version} not found" in result.stderr
        assert f"'pyenv install {version}'" in result.stderr
    assert f"{tmp_path / 'pyenv-root'}/versions" in result.stderr
    assert not any((tmp_path / ".cache").rglob("py3.9[89]-*")), "a venv was built for nothing"


def test_without_pyenv_the_error_says_so(tmp_path: Path) -> None:
    result = _run_script({"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, "3.99")

    assert result.returncode == 2, result.stderr
    assert "pyenv is not installed and there is no python3.99 on PATH" in result.stderr
    assert "'pyenv install 3.99'" in result.stderr


def test_the_fast_tests_include_this_module() -> None:
    """This module checks the running interpreter against pyproject.toml, so it must be
    among the tests each version runs."""
    text = SCRIPT.read_text(encoding="utf-8")
    assert "tests/test_pythons.py" in text
    assert os.access(SCRIPT, os.X_OK)
