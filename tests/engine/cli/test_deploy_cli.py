"""``stagecoach journeys publish`` refuses older definitions, ``stagecoach journeys
rollback`` goes back on purpose, and ``stagecoach plan`` says what a publish would do.

Each test starts from an empty directory: no database until a command makes one. An
"older checkout" is the bundled ``b2b_nurture`` swapped for a variant in the journeys
registry, as a marketer's older commit would have it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from sqlmodel import Session
from typer.testing import CliRunner, Result

from stagecoach.engine.cli import app
from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.domain.journeys import Journey, SendStep, WaitStep
from stagecoach.engine.services.publishing import (
    JourneyNotFound,
    VersionNotFound,
    latest,
    validate_definitions,
    versions,
)
from stagecoach.engine.services.storage import make_engine
from stagecoach.engine.services.storage.enrolments import save_active_enrolment
from stagecoach.engine.services.storage.models import Contact
from stagecoach.engine.settings import Settings
from stagecoach.workflows.journeys import B2B_NURTURE, JOURNEYS
from tests.helpers import bundled_checkout

NAME = "b2b_nurture"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # Each command configures logging onto the runner's stderr, which closes afterwards.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


@pytest.fixture
def db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Settings point at an SQLite file in an empty tmp_path; no .env is read."""
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'stagecoach.db'}"
    monkeypatch.setenv("STAGECOACH_DATABASE_URL", url)
    monkeypatch.setenv("STAGECOACH_DATA_DIR", str(tmp_path / ".stagecoach"))
    monkeypatch.setenv("STAGECOACH_LOG_FORMAT", "json")
    monkeypatch.setenv("STAGECOACH_LOG_LEVEL", "warning")
    monkeypatch.delenv("STAGECOACH_PIPELINE", raising=False)
    return url


def b2b(pause_days: int) -> Journey:
    """b2b_nurture with another pause before the case study (3 days is the bundled one)."""
    steps = [
        replace(s, duration=timedelta(days=pause_days))
        if isinstance(s, WaitStep) and s.id == "evaluation-pause"
        else s
        for s in B2B_NURTURE.steps
    ]
    return replace(B2B_NURTURE, steps=steps)


def version(pause_days: int) -> str:
    return validate_definitions(Settings(), journeys={**JOURNEYS, NAME: b2b(pause_days)})[
        NAME
    ].version


def checkout(monkeypatch: pytest.MonkeyPatch, pause_days: int) -> None:
    """The bundled definitions are those of a checkout whose b2b_nurture pauses this long."""
    bundled_checkout(monkeypatch, {**JOURNEYS, NAME: b2b(pause_days)})


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def line_of(result: Result, journey: str) -> str:
    return next(line for line in result.stdout.splitlines() if f" {journey} " in f"{line} ")


def test_publishing_an_older_checkout_keeps_the_latest_and_says_so(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, v2 = version(2), version(3)
    checkout(monkeypatch, 2)
    first = run("journeys", "publish")
    assert first.exit_code == 0, first.output
    assert line_of(first, NAME).split() == ["created", NAME, v1[:12]]
    checkout(monkeypatch, 3)
    second = run("journeys", "publish")
    assert line_of(second, NAME).split() == ["created", NAME, v2[:12]]

    checkout(monkeypatch, 2)
    again = run("journeys", "publish")

    assert again.exit_code == 0, again.output
    stale = line_of(again, NAME)
    assert stale.split()[:3] == ["older", NAME, v1[:12]]
    assert f"{v1[:12]}  older than the latest: kept {v2[:12]};" in stale
    assert f"'stagecoach journeys rollback {NAME} --to {v1[:12]}'" in stale
    assert line_of(again, "onboarding").startswith("unchanged")
    engine = make_engine(db_url)
    assert latest(engine, NAME).version == v2
    engine.dispose()
    # The log says it too, for a worker's operators (the CLI logs warnings to stderr).
    logged = [json.loads(line) for line in again.stderr.splitlines() if line.startswith("{")]
    assert [
        (e["level"], e["journey"], e["stale_version"], e["latest_version"])
        for e in logged
        if "stale_version" in e
    ] == [("warning", NAME, v1, v2)]


def test_rollback_goes_back_says_what_changes_and_is_recorded(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, v2 = version(2), version(3)
    checkout(monkeypatch, 2)
    assert run("journeys", "publish").exit_code == 0
    checkout(monkeypatch, 3)
    assert run("journeys", "publish").exit_code == 0
    engine = make_engine(db_url)
    for contact_id, pinned in (("c-1", v1), ("c-2", v2), ("c-3", v2)):
        with Session(engine) as session:
            session.add(Contact(id=contact_id))
            session.commit()
        save_active_enrolment(
            engine,
            contact_id=contact_id,
            journey=NAME,
            version=pinned,
            enrolment=1,
            started_at=datetime.now(UTC),
            trail=[],
        )

    result = run("journeys", "rollback", NAME)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"rolled back {NAME}: {v2[:12]} -> {v1[:12]}; new enrolments get {v1[:12]}"
    assert "source 'rollback'" in lines[1]
    assert f"journey diff {v2[:12]} -> {v1[:12]}" in result.stdout
    assert "~ step evaluation-pause" in result.stdout
    assert "wait: 3d -> 2d" in result.stdout
    pinned = ", ".join(f"{n} on {v[:12]}" for v, n in sorted({v1: 1, v2: 2}.items()))
    assert f"in flight: 3 active enrolments keep their pinned versions: {pinned}" in result.stdout
    assert latest(engine, NAME).version == v1
    assert [(v.version, v.source) for v in versions(engine, NAME)] == [
        (v1, "rollback"),
        (v2, "bundled"),
    ]
    listed = run("journeys", "versions", NAME)
    assert listed.stdout.splitlines()[0].startswith(v1)
    assert "rollback  (latest)" in listed.stdout.splitlines()[0]

    # The current checkout published again keeps the rollback; --to goes forward.
    kept = run("journeys", "publish")
    assert line_of(kept, NAME).split()[:3] == ["older", NAME, v2[:12]]
    assert latest(engine, NAME).version == v1
    forward = run("journeys", "rollback", NAME, "--to", v2[:10])
    assert forward.exit_code == 0, forward.output
    assert forward.stdout.startswith(f"rolled back {NAME}: {v1[:12]} -> {v2[:12]}")
    assert latest(engine, NAME).version == v2
    same = run("journeys", "rollback", NAME, "--to", v2)
    assert same.stdout.startswith(f"{NAME}: {v2[:12]} is already the latest; nothing changed")
    engine.dispose()


def test_rollback_before_anything_is_published_says_to_publish(db_url: str, tmp_path: Path) -> None:
    result = run("journeys", "rollback", NAME)
    assert isinstance(result.exception, JourneyNotFound)
    assert "has no published version to roll back (no database yet)" in str(result.exception)
    assert "publish first" in result.exception.fix
    assert not (tmp_path / "stagecoach.db").exists()


@pytest.mark.parametrize(
    ("args", "error", "message", "fix"),
    [
        (["b2b_nurtur"], JourneyNotFound, "'b2b_nurtur' has no published", "did you mean"),
        (["nope"], JourneyNotFound, "'nope' has no published", "known: 'b2b_nurture'"),
        ([NAME, "--to", "0123456789ab"], VersionNotFound, "no published version", "versions"),
        ([NAME, "--to", "abc"], VersionNotFound, "too short", "6+ characters"),
        (["onboarding"], VersionNotFound, "no earlier version", "journeys publish"),
    ],
)
def test_rollback_refuses_bad_input_naming_the_fix(
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    error: type,
    message: str,
    fix: str,
) -> None:
    checkout(monkeypatch, 2)
    assert run("journeys", "publish").exit_code == 0
    checkout(monkeypatch, 3)
    assert run("journeys", "publish").exit_code == 0

    result = run("journeys", "rollback", *args)

    assert isinstance(result.exception, error), result.output
    assert isinstance(result.exception, StagecoachError)
    assert message in str(result.exception)
    assert fix in result.exception.fix
    engine = make_engine(db_url)
    assert latest(engine, NAME).version == version(3)  # nothing moved
    engine.dispose()


def test_plan_from_nothing_to_changed_and_older_with_exit_codes(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, v2, v3 = version(2), version(3), version(4)
    fresh = run("plan")
    assert fresh.exit_code == 2, fresh.output
    assert fresh.stdout.splitlines()[0].endswith(": 7 new, 0 changed, 0 unchanged, 0 older")
    assert line_of(fresh, NAME).split()[:3] == ["new", NAME, v2[:12]]
    assert not (tmp_path / "stagecoach.db").exists()  # planning creates nothing

    checkout(monkeypatch, 2)
    assert run("journeys", "publish").exit_code == 0
    checkout(monkeypatch, 3)
    assert run("journeys", "publish").exit_code == 0
    same = run("plan")
    assert same.exit_code == 0, same.output
    assert same.stdout.splitlines()[-1] == "nothing to publish"
    assert line_of(same, NAME).split()[:3] == ["unchanged", NAME, v2[:12]]

    engine = make_engine(db_url)
    for contact_id in ("c-1", "c-2"):
        with Session(engine) as session:
            session.add(Contact(id=contact_id))
            session.commit()
        save_active_enrolment(
            engine,
            contact_id=contact_id,
            journey=NAME,
            version=v2,
            enrolment=1,
            started_at=datetime.now(UTC),
            trail=[],
        )
    checkout(monkeypatch, 4)
    changed = run("plan")
    assert changed.exit_code == 2, changed.output
    assert changed.stdout.splitlines()[0].endswith(": 0 new, 1 changed, 6 unchanged, 0 older")
    head = line_of(changed, NAME)
    assert head.split()[:5] == ["changed", NAME, v2[:12], "->", v3[:12]]
    assert f"IN FLIGHT: 2 active enrolments on {v2[:12]} keep it" in head
    assert "  ~ step evaluation-pause" in changed.stdout
    assert "wait: 3d -> 4d" in changed.stdout

    as_json = run("plan", "--json")
    assert as_json.exit_code == 2
    body = json.loads(as_json.stdout)
    assert body["changes"] == 1
    entry = next(j for j in body["journeys"] if j["name"] == NAME)
    assert (entry["status"], entry["version"], entry["latest"]) == ("changed", v3, v2)
    assert entry["in_flight_on_latest"] == 2
    assert entry["in_flight"] == {v2: 2}
    assert entry["diff"]["changed"][0]["step"] == "evaluation-pause"
    assert entry["diff"]["changed"][0]["fields"] == [
        {"field": "duration_seconds", "old": 259200.0, "new": 345600.0}
    ]

    checkout(monkeypatch, 2)
    older = run("plan")
    assert older.exit_code == 0, older.output  # publishing would refuse it: no change
    assert older.stdout.splitlines()[0].endswith(": 0 new, 0 changed, 6 unchanged, 1 older")
    assert f"older than the latest: publishing keeps {v2[:12]}" in line_of(older, NAME)
    assert latest(engine, NAME).version == v2  # planning published nothing
    assert [v.version for v in versions(engine, NAME)] == [v2, v1]
    engine.dispose()


def test_plan_with_invalid_definitions_exits_1_with_every_problem(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = replace(
        B2B_NURTURE,
        steps=[
            replace(s, content="no-such-content")
            if isinstance(s, SendStep) and s.id == "awareness-whitepaper"
            else s
            for s in B2B_NURTURE.steps
        ],
    )
    bundled_checkout(monkeypatch, {**JOURNEYS, NAME: broken})
    result = run("plan")
    assert result.exit_code == 1, result.output
    assert "no plan: the definitions are invalid" in result.stderr
    assert "no-such-content" in result.stderr
    as_json = run("plan", "--json")
    assert as_json.exit_code == 1
    assert "no-such-content" in json.loads(as_json.stdout)["error"]


def test_the_installed_command_exits_as_documented(db_url: str, tmp_path: Path) -> None:
    """Through ``python -m stagecoach.engine.cli``, as a CI job runs it: a usage error of
    plan is 1 (2 means changes), and a refused rollback is one line with the fix."""
    environ = dict(os.environ)  # the db_url fixture's settings, as a shell would have them

    def stagecoach(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stagecoach.engine.cli", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=environ,
            timeout=120,
            check=False,
        )

    typo = stagecoach("plan", "--jsn")
    assert typo.returncode == 1, typo.stderr
    assert "--jsn" in typo.stderr
    assert stagecoach("plan").returncode == 2
    assert stagecoach("journeys", "publish").returncode == 0
    assert stagecoach("plan").returncode == 0
    refused = stagecoach("journeys", "rollback", NAME)
    assert refused.returncode == 2
    assert refused.stderr.startswith("stagecoach: error: journey 'b2b_nurture' has one published")
    assert "journeys publish" in refused.stderr
