"""The bundled journeys compile against the bundled catalogue and tell the intended story."""

from __future__ import annotations

from datetime import timedelta

import pytest

from stagecoach.engine.domain.conditions import EventRecord, Facts
from stagecoach.engine.domain.journeys import (
    SIMULATION_EPOCH,
    ChangeStage,
    DeliveryResult,
    EventReceived,
    HandOff,
    InMemoryContentIndex,
    JourneySpec,
    SimContact,
    Start,
    StartTimer,
    ValidationContext,
    simulate,
    step,
    to_mermaid,
)
from stagecoach.workflows.journeys import JOURNEYS, compile_journeys

try:
    from stagecoach.workflows.events import CATALOG

    EVENT_TYPES = frozenset(CATALOG.names())
except ImportError:  # pragma: no cover - the catalogue ships alongside the journeys
    EVENT_TYPES = frozenset(
        {
            "page.viewed", "email.opened", "email.clicked", "email.unsubscribed",
            "wechat.unsubscribed", "content.downloaded", "video.watched", "form.submitted",
            "webinar.attended", "trial.started", "trial.activated", "demo.requested",
            "consultation.booked", "order.paid", "onboarding.finished", "ticket.closed",
            "nps.answered", "sales.accepted", "sales.rejected", "sales.converted",
        }
    )  # fmt: skip

STAGES = frozenset({"suspect", "prospect", "lead", "opportunity", "customer", "fan", "advocate"})
CONTENT_IDS = (
    "wp-digital-transformation",
    "video-product-tour",
    "case-study-manufacturing",
    "comparison-vs-legacy",
    "trial-invitation",
    "consultation-offer",
    "onboarding-welcome",
    "onboarding-quickstart",
    "onboarding-checklist",
    "survey-nps",
    "service-apology",
    "referral-offer",
    "customer-story-invite",
    "newsletter-monthly",
    "winback-offer",
    "replenishment-reminder",
    "cross-sell-offer",
)
DAY = timedelta(days=1)
WHITEPAPER_DOWNLOAD = EventRecord(
    "content.downloaded", SIMULATION_EPOCH, {"content_id": "wp-digital-transformation"}
)


@pytest.fixture(scope="module")
def specs() -> dict[str, JourneySpec]:
    ctx = ValidationContext(
        known_event_types=EVENT_TYPES,
        stages=STAGES,
        content=InMemoryContentIndex.full(CONTENT_IDS, ("zh-CN", "en"), ("email", "wechat")),
    )
    return compile_journeys(ctx)


def test_journeys_are_listed_by_name():
    assert set(JOURNEYS) == {
        "b2b_nurture",
        "onboarding",
        "nps_survey",
        "value_nurture",
        "win_back",
        "replenishment",
        "cross_sell",
    }
    assert all(name == journey.name for name, journey in JOURNEYS.items())


def test_bundled_journeys_compile_and_round_trip(specs):
    for spec in specs.values():
        assert JourneySpec.from_json(spec.to_json()) == spec
        assert spec.locales == ("zh-CN", "en")


def test_missing_wechat_variant_fails_validation():
    from stagecoach.engine.domain.journeys import JourneyValidationError

    email_only = InMemoryContentIndex.full(CONTENT_IDS, ("zh-CN", "en"), ("email",))
    with pytest.raises(JourneyValidationError, match="wechat"):
        compile_journeys(ValidationContext(EVENT_TYPES, STAGES, email_only))


def test_whitepaper_download_on_day_two_brings_case_study_on_day_five(specs):
    result = simulate(
        specs["b2b_nurture"],
        SimContact(stage="suspect"),
        [(2 * DAY, WHITEPAPER_DOWNLOAD)],
        60 * DAY,
    )
    assert result.delivered_at("wp-digital-transformation") == timedelta(0)
    assert result.delivered_at("case-study-manufacturing") == 5 * DAY
    assert result.delivered_at("comparison-vs-legacy") == 9 * DAY
    assert result.delivered_at("video-product-tour") is None
    assert [(at, c.stage) for at, c in result.commands(ChangeStage)] == [(2 * DAY, "prospect")]


def test_pricing_page_view_also_starts_evaluation(specs):
    pricing = EventRecord("page.viewed", SIMULATION_EPOCH, {"category": "pricing"})
    result = simulate(specs["b2b_nurture"], SimContact(), [(4 * DAY, pricing)], 60 * DAY)
    # No interest in the first three days: the video goes out, then pricing on day 4.
    assert result.delivered_at("video-product-tour") == 3 * DAY
    assert result.delivered_at("case-study-manufacturing") == 7 * DAY


def test_silent_suspect_leaves_after_awareness(specs):
    result = simulate(specs["b2b_nurture"], SimContact(), [], 60 * DAY)
    assert [c for _, c in result.deliveries()] == [
        "wp-digital-transformation",
        "video-product-tour",
    ]
    assert result.outcome == "exited: no interest in awareness content"


def test_marketing_qualified_lead_is_handed_to_sales(specs):
    mql = SimContact(stage="suspect", score=80, grade="A")
    result = simulate(specs["b2b_nurture"], mql, [(DAY, WHITEPAPER_DOWNLOAD)], 60 * DAY)
    # Download day 1, case study day 4, comparison day 8, qualified three days later.
    assert [at for at, _ in result.commands(HandOff)] == [11 * DAY]
    assert result.delivered_at("trial-invitation") == 11 * DAY


def test_contact_below_mql_skips_the_hand_off(specs):
    result = simulate(specs["b2b_nurture"], SimContact(), [(DAY, WHITEPAPER_DOWNLOAD)], 60 * DAY)
    assert result.commands(HandOff) == []
    assert result.delivered_at("trial-invitation") == 11 * DAY


def test_failed_hand_off_carries_on_to_the_trial(specs):
    mql = SimContact(score=80, grade="A")
    result = simulate(
        specs["b2b_nurture"],
        mql,
        [(DAY, WHITEPAPER_DOWNLOAD)],
        60 * DAY,
        fail_steps={"evaluation-hand-off": "crm rejected payload"},
    )
    assert result.delivered_at("trial-invitation") == 11 * DAY


def test_a_lead_is_not_moved_back_to_prospect(specs):
    already_lead = SimContact(stage="lead")
    spec = specs["b2b_nurture"]
    assert not spec.entered_by_stage("lead")
    # Entered as a suspect, promoted to lead by the pipeline before downloading.
    start = SIMULATION_EPOCH
    cursor, _ = step(
        spec, None, Start(now=start, facts=Facts(now=start, stage="suspect"), contact_id="c-1")
    )
    cursor, _ = step(
        spec,
        cursor,
        DeliveryResult(now=start, facts=Facts(now=start), step_id="awareness-whitepaper", ok=True),
    )
    later = start + DAY
    _, commands = step(
        spec,
        cursor,
        EventReceived(
            now=later, facts=Facts(now=later, stage=already_lead.stage), event=WHITEPAPER_DOWNLOAD
        ),
    )
    assert not any(isinstance(c, ChangeStage) for c in commands)
    assert any(isinstance(c, StartTimer) for c in commands)


def test_paid_order_is_the_goal(specs):
    paid = (20 * DAY, "order.paid")
    result = simulate(
        specs["b2b_nurture"], SimContact(), [(DAY, WHITEPAPER_DOWNLOAD), paid], 60 * DAY
    )
    assert result.outcome == "completed: goal"


def test_unsubscribe_exits_the_nurture(specs):
    result = simulate(specs["b2b_nurture"], SimContact(), [(DAY, "email.unsubscribed")], 60 * DAY)
    assert result.outcome == "exited: exit_criteria"
    assert len(result.deliveries()) == 1


def test_onboarding_nudges_a_customer_who_does_not_finish(specs):
    result = simulate(specs["onboarding"], SimContact(stage="customer"), [], 30 * DAY)
    assert result.deliveries() == [
        (timedelta(0), "onboarding-welcome"),
        (2 * DAY, "onboarding-quickstart"),
        (9 * DAY, "onboarding-checklist"),
    ]
    assert result.outcome == "completed: end"


def test_onboarding_finished_is_the_goal(specs):
    result = simulate(
        specs["onboarding"],
        SimContact(stage="customer"),
        [(4 * DAY, "onboarding.finished")],
        30 * DAY,
    )
    assert result.outcome == "completed: goal"
    assert result.delivered_at("onboarding-checklist") is None


def test_mermaid_of_bundled_journeys_names_every_step(specs):
    for spec in specs.values():
        text = to_mermaid(spec)
        assert all(f"{s.id}:" in text for s in spec.steps)
