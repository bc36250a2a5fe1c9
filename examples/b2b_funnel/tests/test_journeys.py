"""The funnel's journeys, tested offline: they validate against the funnel's stages, its
events and the content, and they send what we mean, when we mean.

The simulator is the interpreter the workflow runs, on fake time, so each test takes
milliseconds; ``stagecoach journeys rehearse`` plays the same journeys on a real server.
"""

from datetime import timedelta

from b2b_funnel.definitions import defs

from stagecoach.engine.domain.content import BUNDLED_CONTENT_DIR, ContentLibrary
from stagecoach.engine.domain.journeys import HandOff, SimContact, simulate

CONTENT = ContentLibrary.load(BUNDLED_CONTENT_DIR)
SPECS, PROBLEMS = defs.compile(CONTENT)
DAY = timedelta(days=1)


def test_the_definitions_have_no_problems() -> None:
    assert PROBLEMS == []
    assert set(SPECS) == {"development_nurture", "proposal_follow_up"}
    assert defs.pipeline.stage_names[:4] == ("verification", "development", "proposal", "closing")


def test_a_qualified_lead_goes_to_sales_then_reads_the_case_study_and_the_comparison() -> None:
    result = simulate(SPECS["development_nurture"], SimContact(stage="development"), [], 40 * DAY)
    [(at, handoff)] = result.commands(HandOff)
    assert at == timedelta(0)
    assert handoff.reason == "qualified: entered development"
    assert result.deliveries() == [
        (timedelta(0), "case-study-manufacturing"),
        (4 * DAY, "comparison-vs-legacy"),
        (10 * DAY, "demo-request"),
    ]
    assert result.outcome == "exited: sales_silent"


def test_a_lead_who_asks_for_a_demo_gets_no_demo_invitation_and_sales_acceptance_ends_it() -> None:
    script = [(6 * DAY, "demo.requested"), (8 * DAY, "sales.accepted")]
    result = simulate(
        SPECS["development_nurture"], SimContact(stage="development"), script, 30 * DAY
    )
    assert [c for _, c in result.deliveries()] == [
        "case-study-manufacturing",
        "comparison-vs-legacy",
    ]
    assert result.outcome.startswith("completed")


def test_the_consultation_offer_follows_the_proposal_being_read() -> None:
    script = [(DAY, "proposal.viewed"), (3 * DAY, "consultation.booked"), (9 * DAY, "order.paid")]
    result = simulate(SPECS["proposal_follow_up"], SimContact(stage="proposal"), script, 40 * DAY)
    assert result.deliveries() == [(DAY, "consultation-offer")]
    assert result.outcome.startswith("completed")


def test_an_unread_proposal_still_gets_the_offer_after_three_days_then_the_product_sheet() -> None:
    result = simulate(SPECS["proposal_follow_up"], SimContact(stage="proposal"), [], 60 * DAY)
    assert result.deliveries() == [
        (3 * DAY, "consultation-offer"),
        (10 * DAY, "product-sheet-edge-gateway"),
    ]
    assert result.outcome == "exited: proposal_stalled"
