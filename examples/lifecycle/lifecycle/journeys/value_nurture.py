"""Passives (NPS 7-8): show them more of the value they bought, then ask them to tell it.

A customer story invitation, then the monthly newsletter on day 14 of the journey.
Entered on a passive answer, or by enrolment from the NPS survey.
"""

from __future__ import annotations

from stagecoach import (
    Journey,
    PropertyFilter,
    ReEntry,
    event,
    on_event,
    send,
    since_enrolment,
    timedelta,
    wait,
)

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
        wait(until=since_enrolment(timedelta(days=14)), id="fortnight"),
        send("newsletter-monthly", id="newsletter"),
    ],
)
"""The bundled value nurture for passives."""
