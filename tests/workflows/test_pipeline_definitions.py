"""The bundled pipelines: they validate, and scripted contacts walk them as marketers expect."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from stagecoach.engine.domain.conditions import EventRecord, Facts
from stagecoach.engine.domain.contact import new_contact, observe
from stagecoach.engine.domain.pipeline import (
    BackwardMoveError,
    DetourNotAllowedError,
    Pipeline,
    PipelineDefinitionError,
    Transition,
    advance_to,
    apply_detour,
    apply_recycle,
    evaluate_transition,
)
from stagecoach.engine.domain.sales import handoff_payload
from stagecoach.engine.domain.scoring import (
    ScoreState,
    apply_event,
    grade_attributes,
    score_at,
    top_contributions,
)
from stagecoach.workflows.events import CATALOG
from stagecoach.workflows.pipeline import B2B_FUNNEL, DEFAULT, PIPELINES, active_pipeline

T0 = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
FIT = {"industry": "software", "company_size": 500, "role": "cto", "region": "east_china"}


@dataclass
class Contact:
    """What the contact workflow will do with these pure functions, minus Temporal."""

    pipeline: Pipeline
    attributes: dict[str, Any] = field(default_factory=dict)
    stage: str = ""
    score: ScoreState = field(default_factory=ScoreState)
    events: list[EventRecord] = field(default_factory=list)
    history: list[Transition] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stage = self.stage or self.pipeline.first_stage

    def facts(self, now: datetime) -> Facts:
        return Facts(
            now=now,
            stage=self.stage,
            score=score_at(self.pipeline.scoring, self.score, now),
            grade=grade_attributes(self.pipeline.grading, self.attributes, now).grade,
            attributes=self.attributes,
            events=tuple(self.events),
        )

    def on(self, type_: str, day: float, **props: Any) -> Transition | None:
        record = EventRecord(type_, T0 + day * DAY, props)
        self.events.append(record)
        self.score, _ = apply_event(self.pipeline.scoring, self.score, record)
        t = evaluate_transition(self.pipeline, self.stage, self.facts(record.at), record, "test")
        if t is not None:
            self.stage = t.to_stage
            self.history.append(t)
        return t


# The definitions


def test_bundled_pipelines_validate_against_the_bundled_catalog() -> None:
    for pipeline in PIPELINES.values():
        pipeline.check_events(CATALOG)
        assert pipeline.event_types() <= set(CATALOG.names())


def test_bundled_pipelines_use_only_signalled_event_types() -> None:
    for pipeline in PIPELINES.values():
        assert pipeline.event_types() <= CATALOG.signal_names()


def test_catalog_has_the_event_types_rules_and_journeys_rely_on() -> None:
    required = {
        "page.viewed", "email.opened", "email.clicked", "email.unsubscribed", "email.bounced",
        "email.complained", "content.downloaded", "video.watched", "form.submitted",
        "webinar.attended", "trial.started", "trial.activated", "demo.requested",
        "consultation.booked", "order.paid", "onboarding.finished", "ticket.closed",
        "nps.answered", "sales.accepted", "sales.rejected", "sales.converted",
        "referral.signed_up", "referral.converted", "coupon.redeemed", "wechat.subscribed",
        "wechat.unsubscribed", "wechat.scanned", "wechat.menu_clicked", "wechat.message_received",
    }  # fmt: skip
    assert required <= set(CATALOG.names())
    assert {"path", "category"} <= set(CATALOG.get("page.viewed").properties)
    assert {"score", "comment", "touchpoint"} <= set(CATALOG.get("nps.answered").properties)


def test_default_has_seven_stages_with_chinese_labels_in_two_phases() -> None:
    assert [(s.name, s.label_zh) for s in DEFAULT.stages] == [
        ("suspect", "怀疑者"),
        ("prospect", "潜在客户"),
        ("lead", "线索"),
        ("opportunity", "商机"),
        ("customer", "客户"),
        ("fan", "粉丝"),
        ("advocate", "鼓吹者"),
    ]
    assert [(p.name, p.label_zh) for p in DEFAULT.phases] == [
        ("acquisition", "获新"),
        ("delight", "悦旧"),
    ]
    assert DEFAULT.phase_stages("acquisition")[-1] == "customer"
    assert DEFAULT.phase_stages("delight")[0] == "customer"


def test_b2b_funnel_has_the_four_steps() -> None:
    assert B2B_FUNNEL.stage_names == ("verification", "development", "proposal", "closing")


def test_active_pipeline_picks_by_name() -> None:
    assert active_pipeline("default") is DEFAULT
    assert active_pipeline("b2b_funnel") is B2B_FUNNEL


def test_unknown_active_pipeline_lists_the_choices() -> None:
    with pytest.raises(PipelineDefinitionError, match=r"'b2b' is unknown.*b2b_funnel, default"):
        active_pipeline("b2b")


def test_bundled_pipelines_round_trip_with_a_stable_version() -> None:
    for pipeline in PIPELINES.values():
        again = Pipeline.from_dict(json.loads(json.dumps(pipeline.to_dict())), catalog=CATALOG)
        assert again == pipeline
        assert again.version == pipeline.version


# A scripted contact walks the default pipeline


def test_scripted_contact_walks_suspect_to_customer() -> None:
    c = Contact(DEFAULT, attributes=FIT)
    assert c.on("page.viewed", 0, path="/blog/x", category="blog") is None
    assert c.stage == "suspect"
    assert c.on("content.downloaded", 1, content_id="wp-1", kind="whitepaper") is not None
    assert c.stage == "prospect"
    c.on("page.viewed", 2, path="/pricing", category="pricing")
    c.on("email.clicked", 3, content_id="cs-1")
    assert c.stage == "prospect"
    c.on("webinar.attended", 4)  # 15 + 10 + 5 + 20 + 1 = 51, decayed a little: >= 40
    assert c.stage == "lead"
    c.on("sales.accepted", 6)
    assert c.stage == "opportunity"
    c.on("order.paid", 20, amount=19800, currency="CNY")
    assert c.stage == "customer"
    assert [(t.from_stage, t.to_stage, t.reason) for t in c.history] == [
        ("suspect", "prospect", "raised_hand"),
        ("prospect", "lead", "engaged"),
        ("lead", "opportunity", "sales_accepted"),
        ("opportunity", "customer", "purchased"),
    ]
    assert c.history[-1].trigger_event_type == "order.paid"


def test_customer_becomes_fan_on_a_promoter_nps_then_advocate_on_referrals() -> None:
    c = Contact(DEFAULT, stage="customer")
    c.on("nps.answered", 0, score=8, touchpoint="onboarding")
    assert c.stage == "customer"
    c.on("nps.answered", 30, score=9, touchpoint="onboarding")
    assert c.stage == "fan"
    c.on("referral.converted", 40)
    assert c.stage == "fan"
    c.on("referral.converted", 50)
    assert c.stage == "advocate"


def test_promoter_nps_before_purchase_does_not_make_a_fan() -> None:
    c = Contact(DEFAULT, stage="lead")
    c.on("nps.answered", 0, score=10, touchpoint="webinar")
    assert c.stage == "lead"


def test_paying_suspect_jumps_straight_to_customer() -> None:
    c = Contact(DEFAULT)
    t = c.on("order.paid", 0, amount=99, currency="CNY")
    assert t is not None
    assert (t.from_stage, t.to_stage, t.reason) == ("suspect", "customer", "purchased")


def test_demo_request_makes_a_lead() -> None:
    c = Contact(DEFAULT, stage="prospect")
    c.on("demo.requested", 0)
    assert c.stage == "lead"


def test_backward_move_without_a_detour_is_refused() -> None:
    with pytest.raises(BackwardMoveError, match=r"from 'customer' to 'lead'"):
        advance_to(DEFAULT, "customer", "lead", reason="sales says so", at=T0, source="api")


def test_recycled_lead_goes_back_to_prospect_and_does_not_bounce_straight_back() -> None:
    c = Contact(DEFAULT, attributes=FIT)
    c.on("content.downloaded", 0, content_id="wp-1")
    c.on("demo.requested", 1)
    c.on("webinar.attended", 2)
    assert c.stage == "lead"
    c.on("sales.rejected", 3, reason="no_budget")
    t = apply_detour(DEFAULT, c.stage, "recycled", "no budget until Q3", T0 + 3 * DAY, "api")
    c.stage = t.to_stage
    assert c.stage == "prospect"
    # The demo request is still inside its 90-day window, so the contact re-qualifies on
    # its next event: recycling is deliberate, the rules say why it comes back.
    c.on("page.viewed", 4, path="/", category="home")
    assert c.history[-1].reason == "engaged"


def test_recycled_lead_with_a_still_high_score_stays_in_nurture_after_rejection() -> None:
    c = Contact(DEFAULT, stage="prospect", attributes=FIT)
    for day in range(4):
        c.on("content.downloaded", day, content_id=f"wp-{day}")
    c.on("webinar.attended", 4)
    for hour in range(3):
        c.on("page.viewed", 5 + hour / 24, path="/pricing", category="pricing")
    assert c.stage == "lead"
    c.on("sales.rejected", 6, reason="wrong_contact")
    c.stage = apply_detour(DEFAULT, "lead", "recycled", "wrong contact", T0 + 6 * DAY, "x").to_stage
    c.on("page.viewed", 7, path="/blog", category="blog")
    assert score_at(DEFAULT.scoring, c.score, T0 + 7 * DAY) >= 40
    assert c.stage == "prospect"


def test_disqualified_contact_is_parked_until_reactivated() -> None:
    t = apply_detour(DEFAULT, "lead", "disqualified", "competitor", T0, "api")
    assert t.to_stage == "disqualified"
    c = Contact(DEFAULT, stage="disqualified")
    c.on("order.paid", 1, amount=1, currency="CNY")
    assert c.stage == "disqualified"
    back = apply_detour(DEFAULT, "disqualified", "reactivated", "new role", T0 + 2 * DAY, "api")
    assert back.to_stage == "suspect"


def test_recycling_a_customer_is_not_a_declared_detour() -> None:
    with pytest.raises(DetourNotAllowedError, match=r"'recycled' is not allowed from 'customer'"):
        apply_detour(DEFAULT, "customer", "recycled", "churned", T0, "api")


# Scoring and grading in the bundled model


def test_default_score_halves_after_one_half_life() -> None:
    state, _ = apply_event(DEFAULT.scoring, ScoreState(), EventRecord("webinar.attended", T0))
    assert score_at(DEFAULT.scoring, state, T0 + 30 * DAY) == pytest.approx(10.0)


def test_default_caps_hold_for_pricing_page_views() -> None:
    state = ScoreState()
    awarded = []
    for hour in range(10):
        record = EventRecord("page.viewed", T0 + timedelta(hours=hour), {"category": "pricing"})
        state, change = apply_event(DEFAULT.scoring, state, record)
        assert change is not None
        awarded.append(change.points_awarded)
    assert sum(awarded) == 30
    assert awarded[3:] == [0.0] * 7


def test_default_caps_hold_for_downloads_over_a_lifetime() -> None:
    state = ScoreState()
    for day in range(10):
        record = EventRecord("content.downloaded", T0 + day * 10 * DAY, {"content_id": "x"})
        state, _ = apply_event(DEFAULT.scoring, state, record)
    assert state.per_rule_totals["content_downloaded"] == 60


def test_unsubscribe_and_sales_rejection_take_points_away() -> None:
    state = ScoreState()
    for type_ in ("demo.requested", "email.unsubscribed", "sales.rejected"):
        state, _ = apply_event(DEFAULT.scoring, state, EventRecord(type_, T0))
    assert state.value == 30 - 20 - 30


def test_handoff_shows_top_contributing_events() -> None:
    c = Contact(DEFAULT, attributes=FIT)
    c.on("content.downloaded", 0, content_id="wp-1")
    c.on("demo.requested", 1)
    c.on("email.opened", 2)
    top = top_contributions(DEFAULT.scoring, c.score, T0 + 3 * DAY)
    assert [t.contribution.rule for t in top] == [
        "demo_requested",
        "content_downloaded",
        "email_opened",
    ]


def test_fit_contact_grades_a_with_its_reasons_and_student_grades_d() -> None:
    result = grade_attributes(DEFAULT.grading, FIT, T0)
    assert result.grade == "A"
    assert result.matched_rules == (
        "target_industry",
        "large_company",
        "decision_maker",
        "served_region",
    )
    assert grade_attributes(DEFAULT.grading, {"role": "student"}, T0).grade == "D"


def test_default_mql_needs_score_60_and_grade_b() -> None:
    c = Contact(DEFAULT, attributes=FIT)
    c.on("demo.requested", 0)
    c.on("webinar.attended", 0)
    assert not DEFAULT.mql.is_mql(c.facts(T0))
    c.on("trial.started", 0)
    assert DEFAULT.mql.is_mql(c.facts(T0))
    c.attributes = {"role": "student"}
    assert not DEFAULT.mql.is_mql(c.facts(T0))


# The B2B funnel


def test_b2b_contact_walks_the_four_steps() -> None:
    c = Contact(B2B_FUNNEL, attributes=FIT)
    c.on("consultation.booked", 0)
    assert c.stage == "development"
    c.on("sales.accepted", 2)
    assert c.stage == "proposal"
    c.on("sales.converted", 30)
    assert c.stage == "closing"
    with pytest.raises(BackwardMoveError):
        advance_to(B2B_FUNNEL, "closing", "proposal", reason="x", at=T0, source="api")


# Sales hand-off: routing, SLA and recycling as declared


def test_default_routes_a_to_key_accounts_and_b_in_turn_to_inside_sales() -> None:
    routing = DEFAULT.routing
    assert routing is not None
    team = routing.route("A", FIT, assigned_owner=None, pool_counts={})
    assert team is not None
    assert (team.team, team.owner, team.lead, team.owner_timezone) == (
        "key-accounts",
        None,
        "li.na",
        "Asia/Shanghai",
    )
    assert len(routing.teams["A"].members) == 2
    owners = []
    counts: dict[str, int] = {}
    for _ in range(6):
        lead = routing.route("B", FIT, assigned_owner=None, pool_counts={"inside-sales": counts})
        assert lead is not None
        assert lead.owner is not None
        owners.append(lead.owner)
        counts[lead.owner] = counts.get(lead.owner, 0) + 1
    assert owners == ["wang.fang", "chen.jing", "zhao.lei"] * 2
    for grade in ("C", "D", None):
        assert routing.route(grade, FIT, assigned_owner="wang.fang", pool_counts={}) is None


def test_default_sends_overseas_leads_to_the_international_pool_on_london_hours() -> None:
    routing = DEFAULT.routing
    assert routing is not None
    for grade in ("A", "B"):
        lead = routing.route(
            grade, {**FIT, "region": "overseas"}, assigned_owner=None, pool_counts={}
        )
        assert lead is not None
        assert (lead.team, lead.owner_timezone, lead.territory) == (
            "international",
            "Europe/London",
            "overseas",
        )


def test_default_sla_is_four_business_hours_then_four_more_in_the_owner_zone() -> None:
    routing = DEFAULT.routing
    assert routing is not None
    shanghai = ZoneInfo("Asia/Shanghai")
    friday = datetime(2026, 6, 5, 16, tzinfo=shanghai)
    deadlines = routing.sla.deadlines(friday, "Asia/Shanghai")
    assert deadlines.respond_by == datetime(2026, 6, 8, 11, tzinfo=shanghai)
    assert deadlines.escalate_at == datetime(2026, 6, 8, 15, tzinfo=shanghai)


def test_both_bundled_pipelines_hand_off_and_recycle_the_same_way() -> None:
    assert B2B_FUNNEL.routing == DEFAULT.routing
    assert B2B_FUNNEL.recycle == DEFAULT.recycle
    recycle = DEFAULT.recycle
    assert recycle is not None
    assert (recycle.detour, recycle.cool_down, recycle.event) == (
        "recycled",
        30 * DAY,
        "sales.rejected",
    )
    rejected = [r for r in DEFAULT.scoring.rules if r.matcher.type == "sales.rejected"]
    assert [r.points for r in rejected] == [-30]


def test_rejection_recycles_a_lead_to_nurture_and_a_customer_stays() -> None:
    t = apply_recycle(DEFAULT, "lead", "no budget until Q3", at=T0, source="sales")
    assert t is not None
    assert (t.to_stage, t.reason) == ("prospect", "recycled: no budget until Q3")
    assert apply_recycle(DEFAULT, "customer", "wrong contact", at=T0, source="sales") is None
    b2b = apply_recycle(B2B_FUNNEL, "proposal", "lost to a competitor", at=T0, source="sales")
    assert b2b is not None
    assert b2b.to_stage == "verification"


def test_recycled_b2b_lead_stays_in_verification_until_the_cool_down_ends() -> None:
    c = Contact(B2B_FUNNEL, attributes=FIT)
    for day in range(4):
        c.on("content.downloaded", day, content_id=f"wp-{day}")
    c.on("webinar.attended", 4)
    c.on("trial.started", 4)
    assert c.stage == "development"
    c.on("sales.rejected", 5, reason="no_budget")
    recycled = apply_recycle(B2B_FUNNEL, c.stage, "no budget", at=T0 + 5 * DAY, source="x")
    assert recycled is not None
    c.stage = recycled.to_stage
    for day in (6, 20):
        c.on("page.viewed", day, path="/pricing", category="pricing")
        assert B2B_FUNNEL.mql.is_mql(c.facts(T0 + day * DAY))  # still qualifies, held back
        assert c.stage == "verification"
    c.on("page.viewed", 34, path="/pricing", category="pricing")
    c.on("page.viewed", 36, path="/pricing", category="pricing")  # 31 days on: MQL again
    assert c.stage == "development"


def test_handoff_payload_shows_the_scripted_contacts_top_events_and_grade_reasons() -> None:
    state = new_contact("c-7", DEFAULT, T0)
    for i, (type_, props) in enumerate(
        [
            ("content.downloaded", {"content_id": "wp-1"}),
            ("demo.requested", {}),
            ("email.opened", {}),
        ]
    ):
        state = observe(
            state,
            DEFAULT,
            message_id=f"m{i}",
            event=EventRecord(type_, T0 + i * DAY, props),
            traits=FIT if i == 0 else {},
            now=T0 + i * DAY,
            source="test",
        ).state
    payload = handoff_payload(
        state,
        DEFAULT,
        identities={"email": "cto@example.cn"},
        now=T0 + 3 * DAY,
        timeline_url="http://localhost:8000/contacts/c-7/timeline",
    )
    assert [e["rule"] for e in payload["score"]["top_events"]] == [
        "demo_requested",
        "content_downloaded",
        "email_opened",
    ]
    assert payload["grade"]["grade"] == "A"
    assert [r["rule"] for r in payload["grade"]["rules"]] == [
        "target_industry",
        "large_company",
        "decision_maker",
        "served_region",
    ]
    assert payload["content_consumed"][0]["content_id"] == "wp-1"
