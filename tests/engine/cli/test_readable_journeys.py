"""``stagecoach journeys diagram`` and ``diff`` speak to a marketer: a branch names its
condition, a wait its events, filters and timeout, and a diff gives days and hours."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner, Result

from stagecoach.engine.cli.journeys import journeys_app
from stagecoach.engine.domain.conditions import event, score_at_least, stage_in
from stagecoach.engine.domain.journeys import (
    BranchStep,
    Journey,
    Step,
    WaitForEventStep,
    WaitStep,
    branch,
    exit_to,
    send,
    stage_entered,
    wait_for,
)
from stagecoach.engine.services.publishing import publish, validate_definitions
from stagecoach.engine.settings import Settings
from stagecoach.workflows.journeys import B2B_NURTURE, JOURNEYS
from tests.helpers import migrated_engine


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
    """Settings point at an SQLite file in tmp_path; no .env from elsewhere is read."""
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'stagecoach.db'}"
    monkeypatch.setenv("STAGECOACH_DATABASE_URL", url)
    monkeypatch.setenv("STAGECOACH_DATA_DIR", str(tmp_path / ".stagecoach"))
    monkeypatch.setenv("STAGECOACH_LOG_FORMAT", "json")
    monkeypatch.setenv("STAGECOACH_LOG_LEVEL", "warning")
    monkeypatch.delenv("STAGECOACH_PIPELINE", raising=False)
    return url


def run(*args: str) -> Result:
    return CliRunner().invoke(journeys_app, list(args))


def publish_variant(db_url: str, journey: Journey) -> str:
    """Compile ``journey`` beside the bundled ones, publish it, return its version."""
    spec = validate_definitions(Settings(), journeys={**JOURNEYS, journey.name: journey})[
        journey.name
    ]
    engine = migrated_engine(db_url)
    try:
        publish(engine, spec)
    finally:
        engine.dispose()
    return spec.version


def node_label(diagram: str, step_id: str) -> str:
    """The text of the step's node, with Mermaid's quote escapes undone."""
    match = re.search(rf'^\s+s_\S+?[\[{{(]+"({re.escape(step_id)}: [^"]*)"', diagram, re.M)
    assert match, f"no node for step {step_id!r} in:\n{diagram}"
    return match[1].replace("#quot;", '"').replace("#124;", "|")


def test_diagram_names_each_branch_condition_and_each_wait_filters(db_url: str) -> None:
    probe = Journey(
        "readable_probe",
        entry=stage_entered("suspect"),
        steps=[
            send("wp-digital-transformation", id="whitepaper"),
            wait_for(
                "content.downloaded",
                where={"kind": "whitepaper"},
                timeout=timedelta(days=7, hours=12),
                on_timeout=exit_to("cold"),
                id="await-download",
            ),
            branch(score_at_least(60), then="case", id="hot?"),
            branch(
                event("page.viewed", where={"category": "pricing"}, within=timedelta(days=7)),
                then="case",
                else_=exit_to("lukewarm"),
                id="pricing?",
            ),
            send("case-study-manufacturing", id="case"),
        ],
        goal=event("order.paid"),
    )
    publish_variant(db_url, probe)

    result = run("diagram", "readable_probe")

    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith("flowchart TD\n")
    assert node_label(text, "hot?") == "hot?: branch if score >= 60"
    assert (
        node_label(text, "pricing?")
        == "pricing?: branch if event page.viewed[category = 'pricing'] within 7d"
    )
    assert (
        node_label(text, "await-download")
        == "await-download: wait up to 7d12h for content.downloaded[kind = 'whitepaper']"
    )
    assert "journey_goal" in text
    assert "goal: event order.paid" in text
    assert "branch yes/no" not in text


def test_the_bundled_diagram_names_the_mql_condition(db_url: str) -> None:
    result = run("diagram", "b2b_nurture")
    assert result.exit_code == 0, result.output
    assert (
        node_label(result.stdout, "evaluation-is-mql")
        == "evaluation-is-mql: branch if score >= 60 and grade >= B"
    )
    assert node_label(result.stdout, "purchase-await-consultation") == (
        "purchase-await-consultation: wait up to 14d for consultation.booked or demo.requested"
    )
    branches = [s for s in B2B_NURTURE.steps if isinstance(s, BranchStep)]
    for s in branches:
        assert node_label(result.stdout, s.id).startswith(f"{s.id}: branch if ")


def test_diff_speaks_in_days_and_hours(db_url: str) -> None:
    def changed(step: Step) -> Step:
        if isinstance(step, WaitStep) and step.id == "evaluation-pause":
            return replace(step, duration=timedelta(days=2, hours=3, minutes=30))
        if isinstance(step, WaitForEventStep) and step.id == "purchase-await-trial":
            return replace(step, timeout=timedelta(days=5))
        if isinstance(step, BranchStep) and step.id == "evaluation-entry":
            return replace(step, condition=stage_in("suspect", "prospect"))
        return step

    older = replace(B2B_NURTURE, steps=[changed(s) for s in B2B_NURTURE.steps])
    version = publish_variant(db_url, older)

    result = run("diff", "b2b_nurture")

    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert f"b2b_nurture: published {version[:12]} -> bundled" in lines
    assert "~ step evaluation-pause" in lines
    assert "wait: 2d3h30m -> 3d" in lines
    assert "timeout: 5d -> 7d" in lines
    assert "condition: stage in suspect, prospect -> stage in suspect" in lines
    assert "_seconds" not in result.stdout
    assert not re.search(r"\b\d{4,}(\.0)?\b", result.stdout), result.stdout  # no raw seconds

    reverse = run("diff", "b2b_nurture", "--from", "bundled", "--to", version)
    assert reverse.exit_code == 0, reverse.output
    assert "wait: 3d -> 2d3h30m" in [line.strip() for line in reverse.stdout.splitlines()]


def test_show_outlines_each_wait_with_its_filters_and_timeout(db_url: str) -> None:
    result = run("show", "b2b_nurture")
    assert result.exit_code == 0, result.output
    steps = [line.split(None, 1) for line in result.stdout.splitlines() if line.startswith("    ")]
    lines = dict((step_id, rest) for step_id, rest in steps)
    assert lines["awareness-await-interest"].startswith(
        "wait up to 3d for content.downloaded[content_id = 'wp-digital-transformation']"
        " or page.viewed[category = 'pricing']  ["
    )
    assert lines["evaluation-is-mql"].startswith("branch if score >= 60 and grade >= B  [")
