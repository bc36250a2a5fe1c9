"""``stagecoach.testing`` as a marketing team uses it: from nothing, in THEIR repository.

``stagecoach init`` makes a project; a test file written there with ``stagecoach.testing``
runs the project's welcome journey on the Temporal test server (``pytest`` as a
subprocess, from the project's folder); a wrong expectation fails, and says what was
sent instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stagecoach.testing import TEST_SERVER_ENV

ROOT = Path(__file__).resolve().parents[1]

TEAM_TEST = """
from datetime import timedelta

from stagecoach.testing import JourneyTest

from acme_marketing.definitions import defs


async def test_the_welcome_journey_and_a_trial_that_ends_it() -> None:
    async with JourneyTest(defs) as t:
        patient = await t.start("welcome", contact={"stage": "prospect", "locale": "en"})
        await patient.until(timedelta(days=30))
        keen = await t.start("welcome", contact={"stage": "prospect", "locale": "en"})
        await keen.event("trial.started", at=timedelta(days=1), properties={"plan": "pro"})
        await keen.until(timedelta(days=30))

    assert patient.deliveries == [
        (timedelta(0), "wp-digital-transformation", "email", "whitepaper"),
        (timedelta(days=3), "case-study-manufacturing", "email", "case-study"),
        (timedelta(days=7), "trial-invitation", "email", "trial-invitation"),
    ]
    assert keen.deliveries == [
        (timedelta(0), "wp-digital-transformation", "email", "whitepaper"),
    ]
    assert keen.stage_changes == [(timedelta(days=1), "prospect", "lead")]
    assert [(e.at, e.journey, e.reason) for e in keen.ended] == [
        (timedelta(days=1), "welcome", "goal")
    ]
    assert keen.messages[0].rendered["subject"]
"""

WRONG_TEST = """
from datetime import timedelta

from stagecoach.testing import JourneyTest

from acme_marketing.definitions import defs


async def test_we_wrongly_expect_the_case_study_after_a_trial() -> None:
    async with JourneyTest(defs) as t:
        run = await t.start("welcome", contact={"stage": "prospect"})
        await run.event("trial.started", at=timedelta(days=1))
        await run.until(timedelta(days=30))
    assert run.deliveries == [
        (timedelta(0), "wp-digital-transformation", "email", "whitepaper"),
        (timedelta(days=3), "case-study-manufacturing", "email", "case-study"),
    ], run.story()
"""


def _env(tmp_path: Path, test_server: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECOACH_")}
    env.update(
        STAGECOACH_DATA_DIR=str(tmp_path / ".stagecoach"),
        **{TEST_SERVER_ENV: test_server},
    )
    return env


def _pytest(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def project(tmp_path: Path, test_server_path: str) -> Path:
    made = subprocess.run(
        [sys.executable, "-m", "stagecoach.engine.cli", "init", "acme-marketing", "--no-git"],
        cwd=tmp_path,
        env=_env(tmp_path, test_server_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    return tmp_path / "acme-marketing"


def _docs_example() -> str:
    """The example in docs/authoring/projects.md, "Testing your journeys"."""
    page = (ROOT / "docs" / "authoring" / "projects.md").read_text(encoding="utf-8")
    section = page.split("## Testing your journeys", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "the section has no python example"
    return found.group(1)


def test_a_teams_journey_test_runs_on_temporal_from_its_own_repository(
    project: Path, tmp_path: Path, test_server_path: str
) -> None:
    (project / "tests" / "test_team.py").write_text(TEAM_TEST, encoding="utf-8")
    (project / "tests" / "test_docs_example.py").write_text(_docs_example(), encoding="utf-8")
    done = _pytest(
        project,
        _env(tmp_path, test_server_path),
        "tests/test_team.py",
        "tests/test_docs_example.py",
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout


def test_a_wrong_expectation_fails_saying_what_was_sent_instead(
    project: Path, tmp_path: Path, test_server_path: str
) -> None:
    (project / "tests" / "test_wrong.py").write_text(WRONG_TEST, encoding="utf-8")
    done = _pytest(project, _env(tmp_path, test_server_path), "tests/test_wrong.py")
    assert done.returncode == 1, done.stdout[-4000:]
    out = done.stdout
    assert "1 failed" in out
    # pytest's own diff names the missing delivery...
    assert (
        "Right contains one more item: (datetime.timedelta(days=3), "
        "'case-study-manufacturing', 'email', 'case-study')"
    ) in out
    # ...and the story says why: the trial on day 1 reached the journey's goal.
    assert "day 0 00:00  sent     wp-digital-transformation: sent" in out
    assert "day 1 00:00  event    trial.started" in out
    assert "day 1 00:00  stage    prospect -> lead (engaged)" in out
    assert "day 1 00:00  ended    welcome completed: goal" in out
    assert "Traceback" not in out
