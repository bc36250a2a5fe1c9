"""Passives (NPS 7-8): show them more of the value they bought, then ask them to tell it.

A customer story invitation, a fortnight, then the monthly newsletter. Entered on a
passive answer, or by enrolment from the NPS survey.
"""

from __future__ import annotations

from datetime import timedelta

from stagecoach.engine.domain.conditions import PropertyFilter, event
from stagecoach.engine.domain.journeys import Journey, ReEntry, on_event, send, wait

VALUE_NURTURE = Journey(
    "value_nurture",
    description="Passives: a customer story invitation, then the newsletter two weeks later.",
    # A passive answer enrols them (the NPS survey also enrols them by name).
    entry=on_event(
        "nps.answered",
        where=[PropertyFilter("score", "gte", 7), PropertyFilter("score", "lte", 8)],
    ),
    reentry=ReEntry.after(timedelta(days=90)),
    exit_when=event("email.unsubscribed") | event("wechat.unsubscribed"),
    locales=("zh-CN", "en"),
    steps=[
        send("customer-story-invite", id="story"),
        wait(days=14, id="fortnight"),
        send("newsletter-monthly", id="newsletter"),
    ],
)
"""The bundled value nurture for passives."""
