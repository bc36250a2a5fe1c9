from __future__ import annotations

from datetime import timedelta

from stagecoach.engine.domain.conditions import Condition, event
from stagecoach.engine.domain.journeys import (
    END,
    Journey,
    Step,
    branch,
    compile_journey,
    diff_specs,
    exit_to,
    send,
    stage_entered,
    to_mermaid,
    wait,
    wait_for,
)


def journey(*steps: Step, goal: Condition | None = None) -> Journey:
    return Journey("tools", entry=stage_entered("suspect"), steps=list(steps), goal=goal)


def test_mermaid_draws_every_step_and_labelled_edges(ctx):
    spec = compile_journey(
        journey(
            send("wp"),
            wait_for("content.downloaded", timeout=timedelta(days=3), on_timeout=exit_to("cold")),
            branch(event("page.viewed"), then="case", else_=END, id="pricing?"),
            send("case-study", id="case"),
        ),
        ctx,
    )
    text = to_mermaid(spec)
    assert text.startswith("flowchart TD\n")
    for s in spec.steps:
        assert f"{s.id}:" in text
    assert "-->|content.downloaded|" in text
    assert "-->|timeout 3d| exit_cold" in text
    assert "-->|yes| s_case" in text
    assert "-->|no| end_" in text
    assert 'exit_cold(["exit: cold"])' in text


def test_diff_reports_added_removed_and_changed_steps(ctx):
    old = compile_journey(journey(send("wp"), wait(days=2, id="pause"), send("video")), ctx)
    new = compile_journey(
        journey(send("wp"), wait(days=3, id="pause"), send("case-study"), goal=event("order.paid")),
        ctx,
    )
    diff = diff_specs(old, new)
    assert diff.added == ("send-case-study",)
    assert diff.removed == ("send-video",)
    assert [c.step_id for c in diff.changed] == ["pause"]
    changed = dict((name, (a, b)) for name, a, b in diff.changed[0].fields)
    assert changed["duration_seconds"] == (172800.0, 259200.0)
    assert changed["next"] == ("send-video", "send-case-study")
    assert [name for name, _, _ in diff.settings] == ["goal"]
    text = str(diff)
    assert "+ step send-case-study" in text
    assert "- step send-video" in text
    assert "~ step pause" in text
    assert "      wait: 2d -> 3d" in text.splitlines()
    assert "      next: send-video -> send-case-study" in text.splitlines()


def test_diff_of_identical_specs_is_empty(ctx):
    spec = compile_journey(journey(send("wp")), ctx)
    diff = diff_specs(spec, spec)
    assert diff.empty
    assert str(diff).endswith("no changes")


def test_mermaid_node_ids_stay_unique_when_ids_differ_only_in_punctuation(ctx):
    spec = compile_journey(journey(send("wp", id="a-b"), send("video", id="a_b")), ctx)
    text = to_mermaid(spec)
    assert "s_a_b --> s_a_b_2" in text
