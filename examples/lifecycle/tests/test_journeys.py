"""The lifecycle's journeys, tested offline: they validate against the pipeline, the events
and the content, and they send what we mean, when we mean.

The simulator is the interpreter the workflow runs, on fake time, so each test takes
milliseconds; ``stagecoach journeys rehearse`` plays the same journeys on a real server.
"""

from datetime import UTC, datetime, timedelta

from lifecycle.definitions import defs
from lifecycle.segments import GONE_QUIET_CUSTOMERS

from stagecoach.engine.domain import contact as model
from stagecoach.engine.domain.conditions import EventRecord, Facts
from stagecoach.engine.domain.content import BUNDLED_CONTENT_DIR, ContentLibrary
from stagecoach.engine.domain.journeys import (
    SIMULATION_EPOCH,
    ChangeStage,
    HandOff,
    SimContact,
    simulate,
)

CONTENT = ContentLibrary.load(BUNDLED_CONTENT_DIR)
SPECS, PROBLEMS = defs.compile(CONTENT)
DAY = timedelta(days=1)


def test_the_definitions_have_no_problems() -> None:
    assert PROBLEMS == []
    assert set(SPECS) == {
        "b2b_nurture",
        "onboarding",
        "nps_survey",
        "value_nurture",
        "win_back",
        "replenishment",
        "cross_sell",
    }


def test_a_suspect_who_downloads_the_whitepaper_reads_the_case_study_three_days_later() -> None:
    whitepaper = {"content_id": "wp-digital-transformation", "kind": "whitepaper"}
    downloaded = (DAY, EventRecord("content.downloaded", SIMULATION_EPOCH + DAY, whitepaper))
    result = simulate(SPECS["b2b_nurture"], SimContact(stage="suspect"), [downloaded], 30 * DAY)
    assert result.deliveries()[:3] == [
        (timedelta(0), "wp-digital-transformation"),
        (4 * DAY, "case-study-manufacturing"),
        (8 * DAY, "comparison-vs-legacy"),
    ]
    [(at, move)] = result.commands(ChangeStage)
    assert (at, move.stage) == (DAY, "prospect")


def test_a_quiet_suspect_gets_the_product_tour_and_then_leaves() -> None:
    result = simulate(SPECS["b2b_nurture"], SimContact(stage="suspect"), [], 30 * DAY)
    assert result.deliveries() == [
        (timedelta(0), "wp-digital-transformation"),
        (3 * DAY, "video-product-tour"),
    ]
    assert result.outcome == "exited: no interest in awareness content"


def test_a_detractor_is_handed_to_customer_care_with_an_apology() -> None:
    script = [(timedelta(0), "order.paid"), (4 * DAY, "nps.answered")]
    contact = SimContact(stage="customer")
    result = simulate(SPECS["nps_survey"], contact, script, 10 * DAY)
    assert [c for _, c in result.deliveries()] == ["survey-nps", "service-apology"]
    [(_, handoff)] = result.commands(HandOff)
    assert handoff.reason == "service_recovery"


def test_the_segments_validate_and_decide_as_written() -> None:
    """The project's audiences: valid, and a customer who stopped visiting falls into
    'gone-quiet-customers' exactly 60 days after the last page view."""
    assert defs.problems() == []
    assert set(defs.segment_specs()) == {
        "a-grade-pipeline",
        "gone-quiet-customers",
        "engaged-prospects",
        "expo-2026",
    }
    last = datetime(2026, 10, 1, tzinfo=UTC)
    customer = Facts(
        now=last + timedelta(days=59),
        stage="customer",
        stages=defs.pipeline.stage_names,
        events=(EventRecord("page.viewed", last),),
    )
    assert GONE_QUIET_CUSTOMERS.when is not None
    assert not GONE_QUIET_CUSTOMERS.when.evaluate(customer)
    assert GONE_QUIET_CUSTOMERS.when.next_change(customer) == last + timedelta(days=60)


def test_the_broadcasts_name_the_projects_segments_and_events() -> None:
    """deploy keeps these as drafts: each names a segment and events the project has."""
    assert defs.broadcast_problems() == []
    assert {b.name: b.segment for b in defs.broadcasts} == {
        "newsletter-2027-01": "engaged-prospects",
        "expo-webinar-invite": "expo-2026",
    }


def test_an_import_of_old_orders_makes_no_one_dormant_until_a_value_refresh_scores_them() -> None:
    """Orders imported today with last year's dates: the 180-day rule holds for all of
    them, but only the value refresh, which has every order, decides who is dormant."""
    pipeline, now = defs.pipeline, datetime(2026, 10, 1, tzinfo=UTC)
    state = model.ContactState("c", "customer", now)
    for n, days in enumerate((360, 300, 200)):
        imported = model.observe(
            state, pipeline, message_id=f"o{n}", event=EventRecord("order.paid", now - days * DAY),
            traits={}, now=now, source="import",
        )  # fmt: skip
        assert imported.transition is None, days
        state = imported.state
    scored = model.observe(
        state, pipeline, message_id="v", event=EventRecord("value.scored", now + DAY),
        traits={"value_as_of": (now + DAY).isoformat(), "churn_risk": 0.5}, now=now + DAY,
        source="value",
    )  # fmt: skip
    assert scored.transition is not None
    assert (scored.transition.to_stage, scored.transition.kind) == ("dormant", "detour")
    assert scored.transition.reason == (
        "dormant: last order.paid before 180 days ago and no order.paid in 30 days and"
        f" value_as_of set ({(now + DAY).isoformat()})"
    )  # the 180-day rule, not the churn risk


def test_a_customer_the_model_gives_up_on_goes_dormant_and_an_order_wins_them_back() -> None:
    """The dormant detour is taken on the value refresh's churn risk, never within a month
    of an order; the win-back journey sends its offer, then a reminder two weeks later."""
    pipeline, now = defs.pipeline, datetime(2026, 10, 1, tzinfo=UTC)
    state = model.ContactState("c", "customer", now - 200 * DAY)
    ordered = EventRecord("order.paid", now - 10 * DAY)
    state = model.observe(
        state, pipeline, message_id="o", event=ordered, traits={}, now=ordered.at, source="t"
    ).state
    scored = EventRecord("value.scored", now)
    early = model.observe(
        state, pipeline, message_id="v", event=scored,
        traits={"churn_risk": 0.9, "value_as_of": now.isoformat()}, now=now, source="t",
    )  # fmt: skip
    assert early.transition is None  # ordered ten days ago: the churn risk is stale
    later = now + 30 * DAY
    seen = model.observe(
        state, pipeline, message_id="v2", event=scored,
        traits={"churn_risk": 0.9, "value_as_of": later.isoformat()}, now=later, source="t",
    )  # fmt: skip
    # A customer still engaging (churn risk medium) is not dormant for it.
    engaged = model.observe(
        state, pipeline, message_id="v3", event=scored,
        traits={"churn_risk": 0.5, "value_as_of": later.isoformat()}, now=later, source="t",
    )  # fmt: skip
    assert engaged.transition is None
    assert seen.transition is not None
    assert (seen.transition.to_stage, seen.transition.kind) == ("dormant", "detour")
    assert seen.transition.reason.startswith("dormant: churn_risk gte 0.7 (was 0.9)")
    result = simulate(SPECS["win_back"], SimContact(stage="dormant"), [], 20 * DAY)
    assert result.deliveries() == [(timedelta(0), "winback-offer"), (14 * DAY, "winback-offer")]
    dormant = model.enter_stage(seen.state, seen.transition)
    back = model.observe(
        dormant, pipeline, message_id="o2", event=EventRecord("order.paid", later + DAY),
        traits={}, now=later + DAY, source="t",
    )  # fmt: skip
    assert back.transition is not None
    assert (back.transition.to_stage, back.transition.reason) == (
        "customer",
        "won_back: order.paid within 1 days",
    )
