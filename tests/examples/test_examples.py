"""The example projects under ``examples/``: each validates, passes its own tests and
rehearses a journey on a real Temporal server, run the way a team runs its own project
(from its folder, ``stagecoach`` and ``pytest`` in subprocesses). The engine's bundled
definitions are these projects, so ``STAGECOACH_PIPELINE`` picks one of them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.content import BUNDLED_CONTENT_DIR, ContentLibrary
from stagecoach.engine.settings import Settings
from tests.engine.cli.conftest import Shell
from tests.helpers import ROOT
from tests.workflows.conftest import open_runtime

EXAMPLES = ROOT / "examples"
STAGECOACH = [sys.executable, "-m", "stagecoach.engine.cli"]

# name -> (pipeline name, its journeys)
EXPECTED = {
    "lifecycle": (
        "default",
        {
            "b2b_nurture",
            "nps_survey",
            "onboarding",
            "value_nurture",
            "win_back",
            "replenishment",
            "cross_sell",
        },
    ),
    "b2b_funnel": ("b2b_funnel", {"development_nurture", "proposal_follow_up"}),
}


def _environ(tmp_path: Path) -> dict[str, str]:
    """A user's shell: no Stagecoach settings but a data directory of the test's own, and
    nothing written into the checkout (no bytecode, no pytest cache)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STAGECOACH_")}
    environ.pop("PYTHONPATH", None)
    environ.update(STAGECOACH_DATA_DIR=str(tmp_path / ".stagecoach"), PYTHONDONTWRITEBYTECODE="1")
    return environ


def _run(cwd: Path, environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=environ, capture_output=True, text=True, timeout=180)


def test_the_examples_are_the_lifecycle_and_the_b2b_funnel() -> None:
    found = sorted(p.parent.name for p in EXAMPLES.glob("*/pyproject.toml"))
    assert found == sorted(EXPECTED)
    for name in found:
        root = EXAMPLES / name
        # Laid out as `stagecoach init` lays out a project.
        for part in ("definitions.py", "pipeline.py", "events.py", "journeys/__init__.py"):
            assert (root / name / part).is_file(), f"{name}/{part}"
        assert list((root / "tests").glob("test_*.py")), name
        assert (root / "README.md").is_file(), name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_example_validates_from_its_folder(name: str, tmp_path: Path) -> None:
    pipeline, journeys = EXPECTED[name]
    result = _run(EXAMPLES / name, _environ(tmp_path), *STAGECOACH, "validate")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"({name}.definitions:defs, from [tool.stagecoach] definitions in " in out, out
    assert f"ok    pipeline {pipeline}:" in out, out
    for journey in journeys:
        assert f"ok    {journey} " in out, out
    assert f"{len(journeys)} journeys valid" in out, out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_example_passes_its_own_tests(name: str, tmp_path: Path) -> None:
    result = _run(
        EXAMPLES / name, _environ(tmp_path), sys.executable, "-m", "pytest", "-q", "-p",
        "no:cacheprovider",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout, result.stdout
    assert "failed" not in result.stdout, result.stdout


def test_an_example_copied_out_of_the_checkout_is_a_project_of_its_own(tmp_path: Path) -> None:
    """A team can start from an example: copied anywhere, it validates and its tests pass
    with nothing from the checkout but the installed package."""
    root = tmp_path / "acme-funnel"
    shutil.copytree(EXAMPLES / "b2b_funnel", root, ignore=shutil.ignore_patterns("__pycache__"))
    environ = _environ(tmp_path)
    checked = _run(root, environ, *STAGECOACH, "validate")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"in {root / 'pyproject.toml'})" in checked.stdout, checked.stdout
    assert "2 journeys valid" in checked.stdout
    tested = _run(root, environ, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider")
    assert tested.returncode == 0, tested.stdout[-4000:]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_without_a_project_the_engine_runs_the_example_the_pipeline_setting_names(
    name: str, tmp_path: Path
) -> None:
    """From a folder with no project, ``STAGECOACH_PIPELINE`` picks a bundled example: the
    funnel now comes with journeys written for its own stages."""
    pipeline, journeys = EXPECTED[name]
    environ = _environ(tmp_path) | {"STAGECOACH_PIPELINE": pipeline}
    result = _run(tmp_path, environ, *STAGECOACH, "validate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"the bundled example (STAGECOACH_PIPELINE={pipeline!r})" in result.stdout
    for journey in journeys:
        assert f"ok    {journey} " in result.stdout, result.stdout
        # Each journey is read from the example project's file.
        assert f"examples/{name}/{name}/journeys/{journey}.py:" in result.stdout, result.stdout
    assert f"{len(journeys)} journeys valid" in result.stdout


def test_the_engine_loads_no_example_unless_it_runs_the_bundled_one(tmp_path: Path) -> None:
    """The API, the worker, the CLI and the connectors import no example code: only the
    bundled fallback (``stagecoach.workflows.definitions``) does, when asked for."""
    code = (
        "import sys, stagecoach.engine.app, stagecoach.engine.cli, stagecoach.workflows.worker, "
        "stagecoach.connectors; "
        "print(sorted(m for m in sys.modules if m.startswith('stagecoach.examples')))"
    )
    result = _run(tmp_path, _environ(tmp_path), sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


# One short journey per example, rehearsed as a user would from the example's folder
# against a production worker running the same example as the bundled definitions.
# x50,000: a journey day is 1.7 seconds, so each rehearsal takes a few seconds.
REHEARSALS = {
    "lifecycle": (
        "onboarding",
        # Two journey days (3.4 s) after the quick start goes out: a busy machine's
        # second of lag is half a journey day at this speed.
        ["4d:onboarding.finished"],
        ["onboarding-welcome", "onboarding-quickstart"],
    ),
    "b2b_funnel": (
        "proposal_follow_up",
        ["1d:proposal.viewed", "2d:consultation.booked", "3d:order.paid"],
        ["consultation-offer"],
    ),
}


def _user_shell(env: WorkflowEnvironment, settings: Settings, cwd: Path) -> Shell:
    """``stagecoach`` as a user runs it from ``cwd`` against the deployment ``settings``
    describe (its database, Temporal and task queue)."""
    environ = _environ(settings.data_dir.parent)
    environ.update(
        STAGECOACH_DATA_DIR=str(settings.data_dir),
        STAGECOACH_DATABASE_URL=settings.resolved_database_url,
        STAGECOACH_TEMPORAL_ADDRESS=env.client.service_client.config.target_host,
        STAGECOACH_TEMPORAL_TASK_QUEUE=settings.temporal_task_queue,
        STAGECOACH_LOG_LEVEL="warning",
    )
    return Shell(environ, cwd)


@pytest.mark.parametrize("name", sorted(REHEARSALS))
async def test_each_example_rehearses_a_journey(
    name: str, env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    journey, script, sent = REHEARSALS[name]
    pipeline, _ = EXPECTED[name]
    content = ContentLibrary.load(BUNDLED_CONTENT_DIR)
    async with open_runtime(env, task_queue, tmp_path, content, pipeline=pipeline) as runtime:
        user = _user_shell(env, runtime.settings, EXAMPLES / name)
        events = [arg for raw in script for arg in ("--event", raw)]
        code, out, err = await user.run(
            "journeys", "rehearse", journey, "--time-scale", "0.00002", *events,
            "--timeout", "120",
        )  # fmt: skip
        assert code == 0, err
        contact_id = out.split(" as ", 1)[1].split()[0]
        runtime.touched.add(contact_id)
        assert "still running" not in out, out
        for item in sent:
            assert f"{item}: sent" in out, out
        folder = runtime.settings.resolved_sink_dir / "rehearsal" / contact_id
        sunk = [json.loads(p.read_text("utf-8")) for p in sorted(folder.glob("*.json"))]
        delivered: list[Any] = [f["message"].get("content_id") for f in sunk]
        assert sorted(delivered) == sorted(sent), sunk
