"""After purchase: ask how likely the customer is to recommend us, and act on the answer.

Entered on a declared touchpoint: an order paid, onboarding finished, or a service
ticket closed. After ``SURVEY_DELAY`` the ``survey-nps`` question goes out (the
contact's preferred channel: WeChat for zh-CN contacts who follow us, email otherwise).
The 0-10 answer (``nps.answered`` with ``score``, ``comment`` and ``touchpoint``) is
classified the standard way:

- promoter, 9-10: a thank-you with the referral offer (``referral-offer``, which carries
  their share link); the pipeline moves them to fan;
- passive, 7-8: into the value nurture (``value_nurture``);
- detractor, 0-6: service recovery. ``service_recovery`` is set to ``open``, which stops
  every promotional send (coupons, offers, trials); the case goes to customer service
  (the pipeline's ``Routing.service`` team, 24-hour SLA) with the apology
  ``service-apology``; it is resolved when the ticket closes (``ticket.closed`` or
  ``service.resolved``), or after 30 days.

No answer within a week ends the journey quietly.
"""

from __future__ import annotations

from stagecoach import (
    END,
    Condition,
    Journey,
    PropertyFilter,
    ReEntry,
    branch,
    enrol,
    event,
    exit_journey,
    hand_off,
    on_event,
    send,
    set_attribute,
    timedelta,
    wait,
    wait_for,
)

SURVEY_DELAY = timedelta(days=3)
"""Time to use what they bought before being asked about it."""

PROMOTER = 9
PASSIVE = 7


def _answered(at_least: int) -> Condition:
    return event(
        "nps.answered", where=[PropertyFilter("score", "gte", at_least)], within=timedelta(days=8)
    )


NPS_SURVEY = Journey(
    "nps_survey",
    description="Post-purchase NPS: promoters get the referral offer, passives the value "
    "nurture, detractors a service-recovery hand-off and no offers until it is resolved.",
    entry=[on_event("order.paid"), on_event("onboarding.finished"), on_event("ticket.closed")],
    # One survey a quarter at most, whatever the number of touchpoints.
    reentry=ReEntry.after(timedelta(days=90)),
    exit_when=event("email.unsubscribed") | event("wechat.unsubscribed"),
    locales=("zh-CN", "en"),
    steps=[
        wait(SURVEY_DELAY, id="settle"),
        send("survey-nps", id="survey"),
        wait_for(
            "nps.answered",
            timeout=timedelta(days=7),
            on_timeout="no-answer",
            id="await-answer",
        ),
        branch(_answered(PROMOTER), then="thank-promoter", id="is-promoter"),
        branch(_answered(PASSIVE), then="value-nurture", id="is-passive"),
        # Detractor.
        set_attribute("service_recovery", "open", id="recovery-open"),
        hand_off(reason="service_recovery", id="recovery-handoff"),
        send("service-apology", id="apology"),
        wait_for(
            "ticket.closed",
            "service.resolved",
            timeout=timedelta(days=30),
            on_timeout="recovery-closed",
            id="await-resolution",
        ),
        set_attribute("service_recovery", "resolved", id="recovery-closed", next=END),
        send("referral-offer", id="thank-promoter", next=END),
        enrol("value_nurture", id="value-nurture", next=END),
        exit_journey("no_answer", id="no-answer"),
    ],
)
"""The bundled post-purchase survey."""
