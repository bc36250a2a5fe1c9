from __future__ import annotations

import json
from datetime import time, timedelta

import pytest

from stagecoach.engine.domain.conditions import (
    PropertyFilter,
    attribute,
    event,
    grade_at_least,
    has_tag,
    stage_in,
)
from stagecoach.engine.domain.journeys import (
    Journey,
    JourneySpec,
    ReEntry,
    SpecFormatError,
    add_tag,
    branch,
    change_stage,
    compile_journey,
    enrol,
    exit_journey,
    goal,
    hand_off,
    holdout,
    next_best,
    on_event,
    send,
    set_attribute,
    split,
    stage_entered,
    wait,
    wait_for,
    wait_until,
)


def every_kind() -> Journey:
    return Journey(
        "every_kind",
        description="One of each step kind.",
        entry=[stage_entered("suspect"), on_event("page.viewed", where={"category": "pricing"})],
        reentry=ReEntry.after(timedelta(days=30)),
        exit_when=has_tag("unsubscribed") | stage_in("customer"),
        goal=event("order.paid"),
        locales=("zh-CN", "en"),
        steps=[
            holdout(10),
            send("wp", channel="email", on_failure="fallback"),
            wait(hours=36),
            wait_until(time(9, 30)),
            wait_for(
                "content.downloaded",
                where=[PropertyFilter("content_id", "in", ["wp", "video"])],
                timeout=timedelta(days=3),
                on_timeout="fallback",
            ),
            branch(grade_at_least("B") & ~attribute("competitor"), else_="fallback", id="fit"),
            split({"tag": 1, "fallback": 3}, id="ab"),
            add_tag("engaged", id="tag"),
            set_attribute("nurture", {"phase": "evaluation"}),
            change_stage("prospect", reason="engaged"),
            hand_off(on_failure="fallback"),
            enrol("onboarding"),
            goal(),
            send(next_best(stage="prospect", kinds=["case_study"]), id="fallback"),
            exit_journey("fell back"),
        ],
    )


def test_json_round_trip_is_exact(ctx):
    spec = compile_journey(every_kind(), ctx)
    text = json.dumps(spec.to_dict())
    again = JourneySpec.from_dict(json.loads(text))
    assert again == spec
    assert again.to_dict() == spec.to_dict()
    assert JourneySpec.from_json(spec.to_json()) == spec


def test_version_is_sha256_of_content_and_stable(ctx):
    first = compile_journey(every_kind(), ctx)
    second = compile_journey(every_kind(), ctx)
    assert first.version == second.version
    assert len(first.version) == 64
    int(first.version, 16)


def test_version_changes_when_anything_changes(ctx):
    base = every_kind()
    other = Journey(
        base.name,
        entry=base.entries,
        steps=base.steps,
        description=base.description + " Edited.",
        reentry=base.reentry,
        exit_when=base.exit_when,
        goal=base.goal,
        locales=base.locales,
    )
    assert compile_journey(base, ctx).version != compile_journey(other, ctx).version


def test_canonical_json_has_sorted_keys(ctx):
    spec = compile_journey(every_kind(), ctx)
    text = spec.to_json()
    assert text == json.dumps(
        json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def test_edited_spec_with_stale_version_is_refused(ctx):
    data = compile_journey(every_kind(), ctx).to_dict()
    data["steps"][2]["duration_seconds"] = 60
    with pytest.raises(SpecFormatError, match="does not match its content"):
        JourneySpec.from_dict(data)


def test_unknown_step_kind_is_a_format_error(ctx):
    data = compile_journey(every_kind(), ctx).to_dict()
    data["steps"][0]["kind"] = "teleport"
    with pytest.raises(SpecFormatError, match="unknown kind 'teleport'"):
        JourneySpec.from_dict(data)


def test_spec_reports_its_event_types_and_entry(ctx):
    spec = compile_journey(every_kind(), ctx)
    assert spec.event_types() == {"page.viewed", "order.paid", "content.downloaded"}
    assert spec.entered_by_stage("suspect")
    assert not spec.entered_by_stage("lead")


def test_version_survives_whole_numbers_decoded_as_floats(ctx):
    from stagecoach.engine.domain.conditions import score_at_least

    journey = Journey(
        "scores", entry=stage_entered("suspect"), steps=[branch(score_at_least(60)), send("wp")]
    )
    spec = compile_journey(journey, ctx)
    data = json.loads(spec.to_json())
    assert data["steps"][0]["condition"]["points"] == 60
    assert JourneySpec.from_dict(data).version == spec.version


def test_event_entry_matches_only_events_passing_its_filters(ctx):
    from datetime import UTC, datetime

    from stagecoach.engine.domain.conditions import EventRecord

    spec = compile_journey(every_kind(), ctx)
    at = datetime(2026, 1, 5, tzinfo=UTC)
    assert spec.entered_by_event(EventRecord("page.viewed", at, {"category": "pricing"}))
    assert not spec.entered_by_event(EventRecord("page.viewed", at, {"category": "blog"}))
