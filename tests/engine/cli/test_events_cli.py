"""``stagecoach events list``: the event catalog with each event's properties, as text for
a marketer and as JSON for a script, checked against the catalog object itself."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from stagecoach.engine.cli import app
from stagecoach.workflows.events import CATALOG


def test_events_list_prints_every_event_with_its_properties_and_their_meaning() -> None:
    result = CliRunner().invoke(app, ["events", "list"])
    assert result.exit_code == 0, result.output
    *body, footer = result.stdout.splitlines()
    blocks: list[tuple[str, list[str]]] = []  # an event's line, then its property lines
    for line in body:
        if line.startswith(" "):
            blocks[-1][1].append(line.strip())
        else:
            blocks.append((line, []))
    assert [head.split()[0] for head, _ in blocks] == list(CATALOG.names())
    for (head, props), event in zip(blocks, CATALOG, strict=True):
        assert event.description in head
        assert ("analytics only" in head) is (not event.signal)
        if not event.properties:
            assert props == ["(no properties)"]
            continue
        shown = [line.split(None, 1) for line in props]
        assert shown == [[prop, meaning] for prop, meaning in event.properties.items()]
    assert footer == f"{len(CATALOG)} event types"


def test_events_list_json_parses_and_is_the_catalog() -> None:
    result = CliRunner().invoke(app, ["events", "list", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [e["name"] for e in listed] == list(CATALOG.names())
    for item, event in zip(listed, CATALOG, strict=True):
        assert item == {
            "name": event.name,
            "description": event.description,
            "properties": dict(event.properties),
            "signal": event.signal,
        }


def test_events_list_runs_as_the_installed_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stagecoach.engine.cli", "events", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == len(CATALOG)


def test_events_without_a_subcommand_shows_its_help() -> None:
    result = CliRunner().invoke(app, ["events"])
    assert "list" in result.output
    assert "event catalog" in result.output
