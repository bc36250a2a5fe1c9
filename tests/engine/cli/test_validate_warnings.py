"""``stagecoach validate`` warnings, as a team meets them: a project from ``stagecoach
init``, a second journey on a trigger one already answers, the warning with its step and
fix, ``--strict`` making it fail, and the overlap declared as intended.

Every command runs as a subprocess from the project's folder, outside the checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

STAGECOACH = [sys.executable, "-m", "stagecoach.engine.cli"]

SURVEY = '''"""Ask new customers how it went, the day after they become customers."""

from stagecoach import Journey, event, send, stage_entered, timedelta, wait

CUSTOMER_SURVEY = Journey(
    "customer_survey",
    entry=stage_entered("customer"),
    exit_when=event("email.unsubscribed") | event("wechat.unsubscribed"),
    steps=[
        wait(timedelta(days=1), id="settle"),
        send("case-study-manufacturing", id="survey"),
    ],
)
'''


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECOACH_")}
    env.update(
        STAGECOACH_DATA_DIR=str(tmp_path / ".stagecoach"),
        STAGECOACH_DATABASE_URL=f"sqlite:///{tmp_path / 'stagecoach.db'}",
    )
    return env


def _run(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STAGECOACH, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def _warn_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stdout.splitlines() if line.startswith("warn")]


def test_a_second_journey_on_the_same_trigger_warns_and_strict_fails(tmp_path: Path) -> None:
    env = _env(tmp_path)
    made = _run(tmp_path, "init", "acme-marketing", "--no-git", env=env)
    assert made.returncode == 0, made.stderr
    root = tmp_path / "acme-marketing"

    # The project init writes has nothing to warn about, even strictly.
    fresh = _run(root, "validate", "--strict", env=env)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert _warn_lines(fresh) == []
    assert fresh.stdout.rstrip().endswith("2 journeys valid")

    (root / "acme_marketing" / "journeys" / "customer_survey.py").write_text(SURVEY)
    warned = _run(root, "validate", env=env)
    assert warned.returncode == 0, warned.stdout + warned.stderr
    assert re.search(r"^ok    customer_survey ", warned.stdout, re.M)
    (line,) = _warn_lines(warned)
    assert line.startswith("warn  customer_survey  step 'survey': stage customer makes this")
    assert "send 'case-study-manufacturing' 1d later (its entry)" in line
    assert "journey 'onboarding' send 'onboarding-welcome' at once (its entry)" in line
    assert "a contact gets both within 7d. Fix: " in line
    assert "intended_overlaps=[('onboarding', 'customer_survey')]" in line
    # After the journeys, before the summary.
    lines = warned.stdout.splitlines()
    assert lines.index(line) > max(n for n, x in enumerate(lines) if x.startswith("ok"))
    assert lines[-1] == "3 journeys valid, 1 warning"

    strict = _run(root, "validate", "--strict", env=env)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert _warn_lines(strict) == [line]
    assert strict.stdout.splitlines()[-1] == "3 journeys valid, 1 warning (--strict: warnings fail)"

    # Declared as intended, it is no longer warned about, even strictly.
    definitions = root / "acme_marketing" / "definitions.py"
    definitions.write_text(
        definitions.read_text().replace(
            '    content="content",\n',
            '    content="content",\n    intended_overlaps=[("onboarding", "customer_survey")],\n',
        )
    )
    declared = _run(root, "validate", "--strict", env=env)
    assert declared.returncode == 0, declared.stdout + declared.stderr
    assert _warn_lines(declared) == []
    assert declared.stdout.splitlines()[-1] == "3 journeys valid"


def test_warnings_are_counted_beside_problems(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert _run(tmp_path, "init", "acme-marketing", "--no-git", env=env).returncode == 0
    root = tmp_path / "acme-marketing"
    (root / "acme_marketing" / "journeys" / "customer_survey.py").write_text(SURVEY)
    welcome = root / "acme_marketing" / "journeys" / "welcome.py"
    welcome.write_text(welcome.read_text().replace('"case-study-manufacturing"', '"case-study-x"'))
    done = _run(root, "validate", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert len(_warn_lines(done)) == 1
    assert done.stdout.splitlines()[-1] == "1 problem, 1 warning; nothing was published"


def test_the_bundled_example_validates_strictly(tmp_path: Path) -> None:
    done = _run(tmp_path, "validate", "--strict", env=_env(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the bundled example" in done.stdout
    assert _warn_lines(done) == []
