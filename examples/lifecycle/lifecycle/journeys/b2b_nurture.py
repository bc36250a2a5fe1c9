"""B2B nurture on the default pipeline: awareness, evaluation, purchase, in one journey.

One journey, three phases, rather than a family of three: a contact's nurture is one
story with one enrolment, one re-entry policy and one goal, and a single spec keeps the
phase hand-overs (a wait that ends on a download) inside one diagram and one simulator
run. The phases are marked below and in the step ids.

- Awareness (entered on stage ``suspect``): the whitepaper ``wp-digital-transformation``,
  then the short video ``video-product-tour`` if the whitepaper drew no interest.
- Evaluation, entered on a whitepaper download (``content.downloaded``) or a pricing-page
  view (``page.viewed`` with category ``pricing``): a suspect becomes a prospect, then the
  case study ``case-study-manufacturing`` three days later and the competitive
  comparison ``comparison-vs-legacy`` four days after that. A marketing-qualified lead
  (the pipeline's ``MQL`` definition) is handed to sales.
- Purchase: the trial invitation ``trial-invitation``; without a trial within a week, the
  consultation offer ``consultation-offer``.

The goal is a paid order. Contacts leave when they unsubscribe (email or WeChat) or when
the pipeline already made them a customer. Other stage moves (lead, opportunity) belong
to the pipeline rules, which see the same events.
"""

from __future__ import annotations

from stagecoach import (
    EventMatcher,
    Journey,
    PropertyFilter,
    ReEntry,
    branch,
    change_stage,
    event,
    exit_journey,
    exit_to,
    goal,
    hand_off,
    send,
    stage_entered,
    stage_in,
    timedelta,
    wait,
    wait_for,
)

from ..pipeline import MQL

WHITEPAPER = "wp-digital-transformation"

WHITEPAPER_DOWNLOADED = EventMatcher(
    "content.downloaded", (PropertyFilter("content_id", "eq", WHITEPAPER),)
)
PRICING_VIEWED = EventMatcher("page.viewed", (PropertyFilter("category", "eq", "pricing"),))

B2B_NURTURE = Journey(
    "b2b_nurture",
    description=(
        "Suspect to customer: whitepaper and product tour, then case study and comparison"
        " once interested, then a trial or a consultation; MQLs go to sales."
    ),
    entry=stage_entered("suspect"),
    # A suspect who went quiet and comes back to "suspect" (reactivated) may start again,
    # but not within a quarter of the last attempt.
    reentry=ReEntry.after(timedelta(days=90)),
    exit_when=(
        stage_in("customer", "fan", "advocate")
        | event("email.unsubscribed")
        | event("wechat.unsubscribed")
    ),
    goal=event("order.paid"),
    locales=("zh-CN", "en"),
    steps=[
        # Awareness
        send(WHITEPAPER, id="awareness-whitepaper"),
        wait_for(
            WHITEPAPER_DOWNLOADED,
            PRICING_VIEWED,
            timeout=timedelta(days=3),
            id="awareness-await-interest",
            next="evaluation-entry",
        ),
        send("video-product-tour", id="awareness-video"),
        wait_for(
            WHITEPAPER_DOWNLOADED,
            PRICING_VIEWED,
            timeout=timedelta(days=7),
            id="awareness-await-interest-after-video",
            on_timeout="awareness-unanswered",
        ),
        # Evaluation: only a suspect moves to prospect here; a contact the pipeline already
        # made a lead must not be moved back.
        branch(
            stage_in("suspect"),
            then=[
                change_stage(
                    "prospect",
                    reason="interested: downloaded the whitepaper or viewed pricing",
                    id="evaluation-prospect",
                ),
            ],
            id="evaluation-entry",
        ),
        wait(timedelta(days=3), id="evaluation-pause"),
        send("case-study-manufacturing", id="evaluation-case-study"),
        wait(timedelta(days=4), id="evaluation-pause-before-comparison"),
        send("comparison-vs-legacy", id="evaluation-comparison"),
        wait(timedelta(days=3), id="evaluation-pause-before-qualifying"),
        branch(
            MQL.condition,
            then=[
                # A failed CRM hand-off must not end the nurture: carry on to the purchase
                # phase.
                hand_off(
                    reason="marketing-qualified after evaluation content",
                    id="evaluation-hand-off",
                    on_failure="purchase-trial",
                ),
            ],
            id="evaluation-is-mql",
        ),
        # Purchase
        send("trial-invitation", id="purchase-trial"),
        wait_for(
            "trial.started",
            timeout=timedelta(days=7),
            id="purchase-await-trial",
            next="purchase-await-order",
        ),
        send("consultation-offer", id="purchase-consultation"),
        wait_for(
            "consultation.booked",
            "demo.requested",
            timeout=timedelta(days=14),
            id="purchase-await-consultation",
            on_timeout=exit_to("purchase_unanswered"),
        ),
        wait_for(
            "order.paid",
            timeout=timedelta(days=30),
            id="purchase-await-order",
            on_timeout=exit_to("purchase_stalled"),
        ),
        goal(id="converted"),
        exit_journey("no interest in awareness content", id="awareness-unanswered"),
    ],
)
"""The bundled B2B nurture journey."""
