"""Proposal 提案: once the proposal has been read, offer a consultation to talk it through.

Entered when sales accepts the lead (stage ``proposal``). The journey waits up to three
days for the contact to open the proposal (``proposal.viewed``, from the CRM), then
offers a free consultation. No consultation or demo booked within a week: the product
sheet, for the people who sign off. A paid order or a deal closed by sales is the goal;
a month without one ends the journey as stalled, and the deal stays with sales. A
rejection by sales, a lost deal or an unsubscribe ends it earlier.
"""

from __future__ import annotations

from stagecoach import (
    Journey,
    event,
    exit_to,
    goal,
    send,
    stage_entered,
    stage_in,
    timedelta,
    wait_for,
)

from ..pipeline import RECYCLE

PROPOSAL_FOLLOW_UP = Journey(
    "proposal_follow_up",
    description=(
        "A proposal out: a consultation offer once it has been read (or after three days),"
        " the product sheet if no meeting follows, then the wait for the decision."
    ),
    entry=stage_entered("proposal"),
    # Sales sent it back to verification (recently rejected) or lost the deal.
    exit_when=(
        RECYCLE.recently_rejected()
        | stage_in("lost")
        | event("email.unsubscribed")
        | event("wechat.unsubscribed")
    ),
    goal=event("order.paid") | event("sales.converted"),
    locales=("zh-CN", "en"),
    steps=[
        # Read or not after three days, the offer goes out: the wait only times it.
        wait_for("proposal.viewed", timeout=timedelta(days=3), id="await-proposal-read"),
        send("consultation-offer", id="consultation-offer"),
        wait_for(
            "consultation.booked",
            "demo.requested",
            timeout=timedelta(days=7),
            id="await-consultation",
            next="await-decision",
        ),
        send("product-sheet-edge-gateway", id="product-sheet"),
        wait_for(
            "order.paid",
            "sales.converted",
            timeout=timedelta(days=30),
            id="await-decision",
            on_timeout=exit_to("proposal_stalled"),
        ),
        goal(id="won"),
    ],
)
"""The funnel's proposal follow-up."""
