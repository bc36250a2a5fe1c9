"""``journeys simulate`` holds sends for quiet hours as ``rehearse`` and the worker do,
says so in its header, and ``--ignore-quiet-hours`` is the one way to turn that off."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from stagecoach.engine.cli import app

# 09:00 UTC, the simulation's start, is 01:00 in Los Angeles: quiet until 08:00 there.
ARGS = ["journeys", "simulate", "b2b_nurture", "--until", "5d", "--timezone", "America/Los_Angeles"]


def test_a_send_at_night_in_the_contacts_zone_is_held_until_morning() -> None:
    result = CliRunner().invoke(app, ARGS)
    assert result.exit_code == 0, result.output
    assert "quiet hours 21:00-08:00 in America/Los_Angeles" in result.output
    assert (
        "send   wp-digital-transformation via preferred  (step awareness-whitepaper)  "
        "held for quiet hours until d0 07:00"
    ) in result.output
    # The journey waits from the moment the message went out, as in production.
    assert "  d0 07:00  wait   for content.downloaded" in result.output


def test_ignore_quiet_hours_says_so_and_sends_at_once() -> None:
    result = CliRunner().invoke(app, [*ARGS, "--ignore-quiet-hours"])
    assert result.exit_code == 0, result.output
    assert "quiet hours off (--ignore-quiet-hours)" in result.output
    assert "held for quiet hours" not in result.output
    assert "  d0 00:00  wait   for content.downloaded" in result.output


def test_the_json_timeline_carries_when_a_held_send_went_out() -> None:
    result = CliRunner().invoke(app, [*ARGS, "--json"])
    assert result.exit_code == 0, result.output
    sends = [e for e in json.loads(result.output)["timeline"] if e["command"] == "Deliver"]
    assert sends[0]["held_until_seconds"] == 7 * 3600
