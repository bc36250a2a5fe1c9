"""``stagecoach journeys ...`` in process, through Typer's CliRunner, on an SQLite file."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner, Result

from stagecoach.engine.cli.journeys import InvalidOption, journeys_app, parse_duration
from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.domain.journeys import WaitStep
from stagecoach.engine.services.publishing import publish, validate_definitions
from stagecoach.engine.services.storage import make_engine
from stagecoach.engine.settings import Settings
from stagecoach.workflows.journeys import B2B_NURTURE, JOURNEYS
from tests.helpers import migrated_engine

WHITEPAPER_ON_DAY_2 = "2d:content.downloaded:content_id=wp-digital-transformation"


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


def test_validate_prints_one_ok_line_per_journey(db_url: str) -> None:
    result = run("validate")
    assert result.exit_code == 0, result.output
    ok = [line for line in result.stdout.splitlines() if line.startswith("ok ")]
    assert [line.split()[1] for line in ok] == list(JOURNEYS)
    assert all(len(line.split()[2]) == 12 for line in ok)


def test_list_before_any_database_says_not_published_and_creates_nothing(
    db_url: str, tmp_path: Path
) -> None:
    result = run("list")
    assert result.exit_code == 0, result.output
    assert "b2b_nurture" in result.stdout
    assert "stage suspect" in result.stdout
    assert result.stdout.count("not published") == len(JOURNEYS)
    assert not (tmp_path / "stagecoach.db").exists()


def test_list_on_an_unmigrated_database_says_not_published(db_url: str, tmp_path: Path) -> None:
    make_engine(db_url).connect().close()  # creates the file, no tables
    result = run("list")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("not published") == len(JOURNEYS)


def test_publish_twice_creates_then_reports_unchanged(db_url: str) -> None:
    first = run("publish")
    assert first.exit_code == 0, first.output
    assert [line.split()[:2] for line in first.stdout.splitlines()[:2]] == [
        ["created", "b2b_nurture"],
        ["created", "cross_sell"],  # the example's journeys, in module order
    ]
    second = run("publish")
    assert second.exit_code == 0, second.output
    assert [line.split()[:2] for line in second.stdout.splitlines()[:2]] == [
        ["unchanged", "b2b_nurture"],
        ["unchanged", "cross_sell"],
    ]
    listed = run("list").stdout
    assert "not published" not in listed


def test_show_prints_json_or_an_outline(db_url: str) -> None:
    as_json = run("show", "b2b_nurture", "--json")
    assert as_json.exit_code == 0, as_json.output
    assert '"name": "b2b_nurture"' in as_json.stdout
    outline = run("show", "b2b_nurture")
    assert outline.exit_code == 0, outline.output
    assert "evaluation-case-study" in outline.stdout
    assert "send case-study-manufacturing" in outline.stdout
    assert "goal:      event order.paid" in outline.stdout


def test_show_a_version_by_prefix_or_the_latest_published(db_url: str) -> None:
    assert run("publish").exit_code == 0
    version = validate_definitions(Settings())["onboarding"].version
    by_prefix = run("show", "onboarding", "--version", version[:8])
    assert by_prefix.exit_code == 0, by_prefix.output
    assert f"version {version}" in by_prefix.stdout
    published = run("show", "onboarding", "--version", "latest")
    assert published.exit_code == 0, published.output
    assert f"(published {version[:12]})" in published.stdout


def test_unknown_journey_is_a_one_line_error(db_url: str) -> None:
    result = run("show", "b2b_nurtur")
    assert result.exit_code != 0
    assert isinstance(result.exception, StagecoachError)
    assert "did you mean 'b2b_nurture'" in result.exception.one_line()


def test_diagram_is_mermaid(db_url: str) -> None:
    result = run("diagram", "onboarding")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("flowchart TD\n")
    assert "s_welcome" in result.stdout


def test_diff_without_a_published_version_says_so(db_url: str) -> None:
    result = run("diff", "b2b_nurture")
    assert result.exit_code == 0, result.output
    assert "no published version" in result.stdout


def test_diff_after_publishing_unchanged_definitions_shows_no_changes(db_url: str) -> None:
    assert run("publish").exit_code == 0
    result = run("diff", "b2b_nurture")
    assert result.exit_code == 0, result.output
    assert "no changes" in result.stdout


def test_diff_against_an_older_published_variant_shows_the_changed_step(db_url: str) -> None:
    steps = [
        replace(s, duration=timedelta(days=2))
        if isinstance(s, WaitStep) and s.id == "evaluation-pause"
        else s
        for s in B2B_NURTURE.steps
    ]
    variant = validate_definitions(
        Settings(), journeys={**JOURNEYS, "b2b_nurture": replace(B2B_NURTURE, steps=steps)}
    )["b2b_nurture"]
    engine = migrated_engine(db_url)
    publish(engine, variant)
    engine.dispose()

    result = run("diff", "b2b_nurture")
    assert result.exit_code == 0, result.output
    assert f"published {variant.version[:12]} -> bundled" in result.stdout
    assert "~ step evaluation-pause" in result.stdout
    assert "      wait: 2d -> 3d" in result.stdout.splitlines()
    reverse = run("diff", "b2b_nurture", "--from", "bundled", "--to", variant.version)
    assert reverse.exit_code == 0, reverse.output
    assert "      wait: 3d -> 2d" in reverse.stdout.splitlines()


def test_simulate_whitepaper_on_day_two_brings_the_case_study_on_day_five(db_url: str) -> None:
    result = run("simulate", "b2b_nurture", "--event", WHITEPAPER_ON_DAY_2, "--until", "30d")
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert any(line.startswith("d0 00:00  send   wp-digital-transformation") for line in lines)
    assert any(line.startswith("d2 00:00  event  content.downloaded") for line in lines)
    assert any(line.startswith("d2 00:00  stage  -> prospect") for line in lines)
    assert any(line.startswith("d5 00:00  send   case-study-manufacturing") for line in lines)
    assert lines[-1] == "outcome: active"


def test_simulate_takes_attributes_time_zone_and_failures(db_url: str) -> None:
    result = run(
        "simulate",
        "onboarding",
        "--stage",
        "customer",
        "--timezone",
        "Asia/Shanghai",
        "--attr",
        "company_size=500",
        "--fail",
        "welcome:invalid_address",
    )
    assert result.exit_code == 0, result.output
    assert '"company_size": 500' in result.stdout
    assert "outcome: exited: delivery_failed: welcome: invalid_address" in result.stdout


def test_the_detractor_hand_off_reads_as_customer_care_not_sales(db_url: str) -> None:
    outline = run("show", "nps_survey")
    assert outline.exit_code == 0, outline.output
    assert "recovery-handoff  hand off to customer care" in outline.stdout
    assert "hand off to sales" not in outline.stdout
    # A sales hand-off still says sales.
    assert "hand off to sales" in run("show", "b2b_nurture").stdout

    detractor = run(
        "simulate",
        "nps_survey",
        "--until",
        "5d",
        "--event",
        "0d:order.paid",
        "--event",
        "3d2h:nps.answered:score=3",
    )
    assert detractor.exit_code == 0, detractor.output
    lines = [line.strip() for line in detractor.stdout.splitlines()]
    assert "d3 02:00  hand-off to customer care  (step recovery-handoff): service_recovery" in (
        lines
    )


def test_simulate_without_its_entry_event_says_which_event_enters_it(db_url: str) -> None:
    """nps_survey is entered by an event: with none in the script nothing happens, and
    the command says why and what to add (exit code 1), rather than just "not entered"."""
    result = run("simulate", "nps_survey")
    assert result.exit_code == 1, result.output
    last = result.stdout.splitlines()[-1]
    assert last.startswith("not entered: nps_survey is entered by event order.paid or")
    assert "add --event 0d:order.paid or --event 0d:onboarding.finished" in last
    as_json = run("simulate", "nps_survey", "--json")
    assert as_json.exit_code == 1
    assert "--event 0d:order.paid" in json.loads(as_json.stdout)["not_entered"]
    # A journey entered at a stage names the stage to start at.
    staged = run("simulate", "onboarding")
    assert staged.exit_code == 1
    assert "add --stage customer" in staged.stdout
    # Given the event, it enters and runs.
    entered = run("simulate", "nps_survey", "--event", "0d:order.paid", "--until", "1d")
    assert entered.exit_code == 0, entered.output
    assert "not entered" not in entered.stdout


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--event", "2x:content.downloaded"], ["--event", "'2x'", "2d, 36h, 90m"]),
        (["--event", "2d:content.downlaoded"], ["--event", "did you mean 'content.downloaded'"]),
        (["--event", "2d"], ["--event", "OFFSET:TYPE"]),
        (["--event", "2d:page.viewed:category"], ["--event", "key=value"]),
        (["--until", "forever"], ["--until", "2d, 36h"]),
        (["--stage", "susp"], ["--stage", "did you mean 'suspect'"]),
        (["--timezone", "Mars/Olympus"], ["--timezone", "Asia/Shanghai"]),
        (["--fail", "nope:boom"], ["--fail", "no step 'nope'"]),
    ],
)
def test_bad_simulate_options_are_one_line_errors(
    db_url: str, args: list[str], names: list[str]
) -> None:
    result = run("simulate", "b2b_nurture", *args)
    assert result.exit_code != 0
    assert isinstance(result.exception, InvalidOption)
    line = result.exception.one_line()
    assert "\n" not in line
    assert "Fix:" in line
    for name in names:
        assert name in line


def test_durations_read_like_people_write_them() -> None:
    assert parse_duration("2d", flag="--until") == timedelta(days=2)
    assert parse_duration("36h", flag="--until") == timedelta(hours=36)
    assert parse_duration("90m", flag="--until") == timedelta(minutes=90)
    assert parse_duration("1d12h", flag="--until") == timedelta(hours=36)
    assert parse_duration("0", flag="--until") == timedelta(0)


def test_versions_lists_published_versions_newest_first(db_url: str) -> None:
    assert "no published version" in run("versions", "onboarding").stdout
    assert run("publish").exit_code == 0
    result = run("versions", "onboarding")
    assert result.exit_code == 0, result.output
    version = validate_definitions(Settings())["onboarding"].version
    assert result.stdout.startswith(version)
    assert "(latest, bundled)" in result.stdout
