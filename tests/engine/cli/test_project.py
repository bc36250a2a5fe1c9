"""A marketing team's own repository, as a new user drives it: ``stagecoach init``,
``validate``, the project's own tests, and the engine's commands on THEIR definitions.

Every command runs as a subprocess from the project's folder, outside the checkout, so
the project is found the way a team's is: ``[tool.stagecoach]`` in its pyproject.toml.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port

STAGECOACH = [sys.executable, "-m", "stagecoach.engine.cli"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECOACH_")}
    env.update(
        STAGECOACH_DATA_DIR=str(tmp_path / ".stagecoach"),
        STAGECOACH_DATABASE_URL=f"sqlite:///{tmp_path / 'stagecoach.db'}",
    )
    env.update(extra)
    return env


def _run(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STAGECOACH, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project made by ``stagecoach init`` (the init test checks that command itself)."""
    done = _run(tmp_path, "init", "acme-marketing", "--no-git", env=_env(tmp_path))
    assert done.returncode == 0, done.stderr
    return tmp_path / "acme-marketing"


def test_init_validate_and_the_projects_own_tests_from_nothing(
    tmp_path: Path, test_server_path: str
) -> None:
    env = _env(tmp_path)
    made = _run(tmp_path, "init", "acme-marketing", env=env)
    assert made.returncode == 0, made.stderr
    root = tmp_path / "acme-marketing"
    assert (root / ".git").is_dir()
    assert (
        'definitions = "acme_marketing.definitions:defs"' in (root / "pyproject.toml").read_text()
    )
    for locale in ("zh-CN", "en"):
        assert (root / "content" / "trial-invitation" / f"email.{locale}.html.j2").is_file()
    assert (root / ".github" / "workflows" / "stagecoach.yml").is_file()

    checked = _run(root, "validate", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "from [tool.stagecoach] definitions in" in checked.stdout
    lines = {line.split()[1]: line for line in checked.stdout.splitlines() if line.startswith("ok")}
    assert "acme_marketing/journeys/welcome.py:" in lines["welcome"]
    assert "acme_marketing/journeys/onboarding.py:" in lines["onboarding"]
    assert "b2b_nurture" not in checked.stdout  # the bundled example is not in play

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=root,
        # The template's stagecoach.testing test runs on the provisioned test server.
        env={**env, "STAGECOACH_TEST_SERVER_PATH": test_server_path},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "3 passed" in tests.stdout

    # From a folder deep inside the project, the engine's own commands use its journeys.
    deep = root / "acme_marketing" / "journeys"
    listed = _run(deep, "journeys", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^welcome\b", listed.stdout, re.M), listed.stdout
    assert "b2b_nurture" not in listed.stdout
    events = _run(root, "events", "list", "--json", env=env)
    assert events.returncode == 0, events.stderr
    assert "quote.requested" in {e["name"] for e in json.loads(events.stdout)}
    published = _run(root, "journeys", "publish", env=env)
    assert published.returncode == 0, published.stdout + published.stderr
    versions = _run(root, "journeys", "versions", "welcome", env=env)
    assert versions.returncode == 0, versions.stderr
    assert "welcome" in versions.stdout or re.search(r"[0-9a-f]{12}", versions.stdout)


def test_init_refuses_a_folder_in_use_and_a_name_with_no_package(tmp_path: Path) -> None:
    env = _env(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("ours")
    taken = _run(tmp_path, "init", "taken", env=env)
    assert taken.returncode == 2
    assert "already exists and is not empty" in taken.stderr
    assert (tmp_path / "taken" / "notes.txt").read_text() == "ours"
    digits = _run(tmp_path, "init", "2026", env=env)
    assert digits.returncode == 2
    assert "cannot make a Python package name from '2026'" in digits.stderr
    assert not (tmp_path / "2026").exists()


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_a_module_that_does_not_load_is_one_line_naming_its_file_and_line(
    project: Path, tmp_path: Path
) -> None:
    env = _env(tmp_path)
    welcome = project / "acme_marketing" / "journeys" / "welcome.py"
    original = welcome.read_text()
    welcome.write_text(original + "\nbroken = (\n")
    line = _one_error_line(_run(project, "validate", env=env))
    assert f"{welcome}:" in line, line
    assert "never closed" in line, line

    welcome.write_text(original + "\nraise RuntimeError('the CRM export is missing')\n")
    line = _one_error_line(_run(project, "validate", env=env))
    number = original.count("\n") + 2
    assert f"{welcome}:{number}: RuntimeError: the CRM export is missing" in line, line
    welcome.write_text(original)

    missing = _run(project, "--definitions", "acme_marketing.definitions:nope", "validate", env=env)
    line = _one_error_line(missing)
    assert "acme_marketing.definitions has no 'nope'" in line
    assert "defs" in line

    wrong = _run(project, "--definitions", "acme_marketing.pipeline:PIPELINE", "validate", env=env)
    assert "is a Pipeline, not a Definitions" in _one_error_line(wrong)

    shapeless = _run(project, "--definitions", "acme_marketing.definitions", "validate", env=env)
    assert "is not module:attribute" in _one_error_line(shapeless)

    absent = _run(project, "--definitions", "acme_marketin.definitions:defs", "validate", env=env)
    assert "no module 'acme_marketin'" in _one_error_line(absent)


def test_an_invalid_journey_is_listed_with_its_file_line_step_and_fix(
    project: Path, tmp_path: Path
) -> None:
    welcome = project / "acme_marketing" / "journeys" / "welcome.py"
    welcome.write_text(welcome.read_text().replace('"case-study-manufacturing"', '"case-study-x"'))
    done = _run(project, "validate", env=_env(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"^FAIL  welcome +acme_marketing/journeys/welcome\.py:\d+$", done.stdout, re.M)
    assert "step 'case-study': content 'case-study-x' does not exist" in done.stdout
    assert "Fix: add those variants" in done.stdout
    assert re.search(r"^ok    onboarding ", done.stdout, re.M)
    assert "1 problem; nothing was published" in done.stdout


def test_the_flag_and_the_setting_win_over_the_pyproject(project: Path, tmp_path: Path) -> None:
    other = project / "acme_marketing" / "other.py"
    other.write_text(
        "from stagecoach.engine.domain.definitions import Definitions\n"
        "from acme_marketing.definitions import defs\n"
        "small = Definitions(name='just onboarding', pipeline=defs.pipeline, events=defs.events,"
        " journeys=[defs.journeys_by_name['onboarding']], content='content')\n"
    )
    env = _env(tmp_path)
    by_flag = _run(project, "--definitions", "acme_marketing.other:small", "validate", env=env)
    assert by_flag.returncode == 0, by_flag.stdout + by_flag.stderr
    assert "project just onboarding" in by_flag.stdout
    assert "welcome" not in by_flag.stdout
    by_env = _run(
        project, "validate", env=_env(tmp_path, STAGECOACH_DEFINITIONS="acme_marketing.other:small")
    )
    assert "project just onboarding" in by_env.stdout
    # Outside any project, the bundled example runs.
    bundled = _run(tmp_path, "validate", env=env)
    assert bundled.returncode == 0, bundled.stdout + bundled.stderr
    assert "the bundled example (STAGECOACH_PIPELINE='default')" in bundled.stdout
    assert "b2b_nurture" in bundled.stdout


def test_up_refuses_a_project_with_problems_before_starting_anything(
    project: Path, tmp_path: Path, temporal_cli_path: str
) -> None:
    welcome = project / "acme_marketing" / "journeys" / "welcome.py"
    welcome.write_text(
        welcome.read_text().replace('stage_entered("prospect")', 'stage_entered("prospekt")')
    )
    env = _env(
        tmp_path,
        TEMPORAL_CLI_PATH=temporal_cli_path,
        STAGECOACH_TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
        STAGECOACH_TEMPORAL_UI_PORT=str(free_port()),
        STAGECOACH_API_PORT=str(free_port()),
        STAGECOACH_WORKER_METRICS_PORT=str(free_port()),
        STAGECOACH_TEMPORAL_METRICS_PORT=str(free_port()),
    )
    line = _one_error_line(_run(project, "up", env=env))
    assert "the project's definitions (acme_marketing.definitions:defs) have 1 problem" in line
    assert "prospekt" in line
    assert "run 'stagecoach validate'" in line
    assert not (tmp_path / ".stagecoach" / "temporal.db").exists()


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), "-c", "user.email=team@acme.test", "-c", "user.name=team", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_deploy_publishes_the_project_version_to_an_environment_and_never_goes_back(
    tmp_path: Path,
) -> None:
    env = _env(tmp_path)
    assert _run(tmp_path, "init", "acme-marketing", env=env).returncode == 0
    root = tmp_path / "acme-marketing"
    staging = tmp_path / "staging.db"
    with (root / "pyproject.toml").open("a") as toml:
        toml.write(
            "\n[tool.stagecoach.environments.staging]\n"
            'database_url = "sqlite:///${STAGING_DIR}/staging.db"\n'
        )
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "our first journeys")
    commit = _git(root, "rev-parse", "--short=7", "HEAD")
    env = _env(tmp_path, STAGING_DIR=str(tmp_path))

    planned = _run(root, "deploy", "--to", "staging", "--dry-run", env=env)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert re.search(r"^new +welcome ", planned.stdout, re.M)
    assert not staging.exists()  # a dry run writes nothing, not even the database

    first = _run(root, "deploy", "--to", "staging", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    version = re.search(r"deploying acme-marketing ([0-9a-f]{12}) \(git (\w+)\)", first.stdout)
    assert version is not None, first.stdout
    assert version.group(2) == commit
    assert f"recorded as 'deploy {version.group(1)}@{commit}'" in first.stdout
    on_staging = _env(tmp_path, STAGECOACH_DATABASE_URL=f"sqlite:///{staging}")
    history = _run(root, "journeys", "versions", "welcome", env=on_staging)
    assert f"deploy {version.group(1)}@{commit}" in history.stdout

    # A change: only the changed journey gets a new version, and the commit says "changed".
    welcome = root / "acme_marketing" / "journeys" / "welcome.py"
    original = welcome.read_text()
    welcome.write_text(original.replace("timedelta(days=3)", "timedelta(days=2)"))
    second = _run(root, "deploy", "--to", "staging", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "uncommitted changes" in second.stdout
    assert re.search(r"^created +welcome ", second.stdout, re.M)
    assert re.search(r"^unchanged +onboarding ", second.stdout, re.M)

    # The older checkout deploys nothing back: the latest stays, and it says how to go back.
    welcome.write_text(original)
    third = _run(root, "deploy", "--to", "staging", env=env)
    assert third.returncode == 0, third.stdout + third.stderr
    assert re.search(r"^older +welcome .*kept .*journeys rollback welcome --to", third.stdout, re.M)
    assert "nothing new to record" in third.stdout


def test_deploy_refuses_what_it_cannot_do_and_publishes_nothing(
    project: Path, tmp_path: Path
) -> None:
    env = _env(tmp_path)
    unknown = _run(project, "deploy", "--to", "prod", env=env)
    assert "no environment 'prod'" in _one_error_line(unknown)
    with (project / "pyproject.toml").open("a") as toml:
        toml.write(
            "\n[tool.stagecoach.environments.staging]\n"
            'database_url = "sqlite:///${STAGING_DIR}/staging.db"\n'
            "\n[tool.stagecoach.environments.typo]\n"
            'databse_url = "sqlite:///x.db"\n'
        )
    unset = _run(project, "deploy", "--to", "staging", env=env)
    assert "needs ${STAGING_DIR}, which is not set" in _one_error_line(unset)
    typo = _run(project, "deploy", "--to", "typo", env=env)
    line = _one_error_line(typo)
    assert "sets 'databse_url', which is no setting" in line
    assert "database_url" in line.split("Fix:")[1]

    welcome = project / "acme_marketing" / "journeys" / "welcome.py"
    welcome.write_text(welcome.read_text().replace('"trial-invitation"', '"trial-invite"'))
    broken = _run(project, "deploy", "--to", "local", env=env)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "nothing was deployed: 1 problem(s)" in broken.stdout
    assert not (tmp_path / "stagecoach.db").exists()
