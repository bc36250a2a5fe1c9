"""The readable wording the diagram, the diff and the outline share: conditions, event
filters, durations and spec fields as a marketer reads them."""

from __future__ import annotations

import re
from datetime import time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagecoach.engine.domain.conditions import (
    Always,
    Condition,
    EventMatcher,
    PropertyFilter,
    attribute,
    event,
    grade_at_least,
    has_tag,
    score_at_least,
    stage_in,
)
from stagecoach.engine.domain.journeys import (
    END,
    Journey,
    JourneySpec,
    NoChannel,
    ReEntry,
    Step,
    branch,
    compile_journey,
    describe_condition,
    describe_value,
    diff_specs,
    exit_to,
    next_best,
    on_event,
    send,
    split,
    stage_entered,
    to_mermaid,
    wait,
    wait_for,
    wait_until,
)
from tests.security.test_fuzz_pure import EXAMPLES, FUZZ, _compile, filters, sound_conditions


@pytest.mark.parametrize(
    ("condition", "text"),
    [
        (score_at_least(60), "score >= 60"),
        (score_at_least(12.5), "score >= 12.5"),
        (grade_at_least("B"), "grade >= B"),
        (stage_in("customer", "fan"), "stage in customer, fan"),
        (has_tag("vip"), "has tag vip"),
        (Always(), "always"),
        (attribute("company_size", "gte", 500), "company_size >= 500"),
        (attribute("plan.tier", "in", ["pro", "team"]), "plan.tier in ['pro', 'team']"),
        (attribute("phone", "exists", True), "phone exists"),
        (attribute("phone", "exists", False), "phone is missing"),
        (attribute("city", "ne", "上海"), "city != '上海'"),
        (attribute("trial", "eq", True), "trial = true"),
        (
            event("content.downloaded", within=timedelta(days=7)),
            "event content.downloaded within 7d",
        ),
        (
            event(
                "page.viewed", where={"category": "pricing"}, count=3, within=timedelta(hours=36)
            ),
            "event page.viewed[category = 'pricing'] at least 3 times within 1d12h",
        ),
        (
            event(
                "nps.answered",
                where=[PropertyFilter("score", "gte", 7), PropertyFilter("score", "lte", 8)],
            ),
            "event nps.answered[score >= 7 and score <= 8]",
        ),
        # Nested groups of one kind read flat; a group inside another keeps parentheses.
        (
            (stage_in("customer") | event("email.unsubscribed")) | event("wechat.unsubscribed"),
            "stage in customer or event email.unsubscribed or event wechat.unsubscribed",
        ),
        (
            score_at_least(60) & (has_tag("vip") | grade_at_least("A")),
            "score >= 60 and (has tag vip or grade >= A)",
        ),
        (~has_tag("vip"), "not has tag vip"),
        (~(has_tag("vip") | has_tag("partner")), "not (has tag vip or has tag partner)"),
    ],
)
def test_conditions_read_as_words_and_symbols(condition: Condition, text: str) -> None:
    assert describe_condition(condition) == text


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("duration_seconds", 432000.0, "5d"),
        ("duration_seconds", 12600.0, "3h30m"),
        ("timeout_seconds", 90.0, "1m30s"),
        ("next", END, "end"),
        ("on_timeout", exit_to("cold"), "exit (cold)"),
        ("next", "send-wp", "send-wp"),
        ("goal", score_at_least(60).to_dict(), "score >= 60"),
        ("reentry", ReEntry.after(timedelta(days=90)).to_dict(), "after 90d"),
        ("reentry", ReEntry.never().to_dict(), "never"),
        ("on_no_channel", None, "the journey's default"),
        ("on_no_channel", NoChannel.skip().to_dict(), "skip without a channel"),
        ("on_no_channel", NoChannel.wait(days=2).to_dict(), "wait up to 2d for a channel"),
        ("at", "09:30:00", "09:30 local"),
        ("value", "7", "'7'"),
        ("value", 7, "7"),
        ("locales", ["zh-CN", "en"], "zh-CN, en"),
        (
            "branches",
            [{"weight": 3, "target": "a", "label": "A"}, {"weight": 1, "target": "$end"}],
            "A 75% -> a, 25% -> end",
        ),
        ("content", "wp", "wp"),
        (
            "content",
            {
                "next_best": next_best(
                    kinds=("case_study", "whitepaper"), tags=("manufacturing",)
                ).to_dict()
            },
            "next best item (case_study or whitepaper, tagged manufacturing)",
        ),
        (
            "content",
            {"next_best": next_best(stage="lead", exclude_consumed=False).to_dict()},
            "next best item (for stage lead, even if already received)",
        ),
        ("goal", None, "none"),
        # A malformed stored value is shown as it is rather than failing the diff.
        ("goal", {"kind": "nonsense"}, '{"kind": "nonsense"}'),
    ],
)
def test_spec_values_read_in_days_hours_and_words(key: str, value: object, text: str) -> None:
    assert describe_value(key, value) == text


def journey(*steps: Step, **options: object) -> Journey:
    return Journey("tools", entry=stage_entered("suspect"), steps=list(steps), **options)  # type: ignore[arg-type]


def test_diff_text_has_no_seconds_and_says_what_added_steps_do(ctx) -> None:
    old = compile_journey(
        journey(send("wp"), wait(days=5, id="pause"), wait_until(time(9), id="morning")), ctx
    )
    new = compile_journey(
        journey(
            send("wp"),
            wait(days=6, hours=2, id="pause"),
            wait_until(time(10, 30), id="morning"),
            send(next_best(kinds=("case_study",)), id="best"),
            split({None: 90, exit_to("holdout"): 10}, id="ab"),
            send("video"),
        ),
        ctx,
    )
    text = str(diff_specs(old, new))
    lines = [line.strip() for line in text.splitlines()]
    assert "wait: 5d -> 6d2h" in lines
    assert "at: 09:00 local -> 10:30 local" in lines
    assert "+ step best: send next best item (case_study) via preferred" in lines
    assert "+ step ab: random split" in lines
    assert "+ step send-video: send video via preferred" in lines
    assert "_seconds" not in text


def test_journey_settings_changes_read_as_words(ctx) -> None:
    old = compile_journey(
        journey(send("wp"), reentry=ReEntry.after(timedelta(days=30)), goal=event("order.paid")),
        ctx,
    )
    new = compile_journey(
        Journey(
            "tools",
            entry=[stage_entered("suspect"), on_event("form.submitted", where={"form": "demo"})],
            steps=[send("wp")],
            reentry=ReEntry.after(timedelta(days=45)),
            goal=event("order.paid", within=timedelta(days=7)),
        ),
        ctx,
    )
    lines = [line.strip() for line in str(diff_specs(old, new)).splitlines()]
    assert "~ entry: stage suspect -> stage suspect or event form.submitted[form = 'demo']" in lines
    assert "~ reentry: after 30d -> after 45d" in lines
    assert "~ goal: event order.paid -> event order.paid within 7d" in lines


def test_a_changed_no_channel_declaration_is_a_change(ctx) -> None:
    old = compile_journey(journey(send("wp")), ctx)
    new = compile_journey(journey(send("wp"), on_no_channel=NoChannel.skip()), ctx)
    diff = diff_specs(old, new)
    assert not diff.empty
    assert "~ on_no_channel: the journey's default -> skip without a channel" in str(diff)


NODE = re.compile(r'^    \S+(\["|\{"|\(\["|\[/")[^"]*("\]|"\}|"\]\)|/"\])$')
"""A node line whose quoted label holds no stray quote (Mermaid would end it early)."""


def _bundled() -> JourneySpec:
    from stagecoach.engine.domain.journeys import ValidationContext
    from stagecoach.workflows.events import CATALOG
    from stagecoach.workflows.journeys import compile_journeys
    from stagecoach.workflows.pipeline import DEFAULT

    ctx = ValidationContext(frozenset(CATALOG.names()), frozenset(DEFAULT.stage_names))
    return compile_journeys(ctx)["b2b_nurture"]


BUNDLED = _bundled()


# Fewer examples than the security suite's: this file runs with the fast tests.
@settings(FUZZ, max_examples=min(EXAMPLES, 60))
@given(
    condition=sound_conditions,
    where=st.lists(filters, max_size=3),
    timeout=st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=400)),
    goal=st.none() | sound_conditions,
)
def test_any_condition_and_filters_draw_as_valid_nodes_and_diff_without_seconds(
    condition: Condition, where: list[PropertyFilter], timeout: timedelta, goal: Condition | None
) -> None:
    spec = _compile(
        Journey(
            "fuzz",
            entry=stage_entered("suspect"),
            steps=[
                branch(condition, then="await", id="check"),
                wait_for(EventMatcher("page.viewed", tuple(where)), timeout=timeout, id="await"),
            ],
            goal=goal,
        )
    )
    if spec is None:
        return  # refused with its problems: the security suite checks those
    nodes = [line for line in to_mermaid(spec).splitlines()[1:] if "-->" not in line]
    assert all(NODE.match(line) for line in nodes), nodes
    assert any(line.startswith('    s_check{"check: branch if ') for line in nodes)
    assert any(line.startswith('    s_await["await: wait up to ') for line in nodes)
    for diff in (diff_specs(BUNDLED, spec), diff_specs(spec, BUNDLED)):
        assert "_seconds" not in str(diff)
