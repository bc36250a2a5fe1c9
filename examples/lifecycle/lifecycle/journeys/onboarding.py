"""Customer onboarding: welcome, quick start, and a checklist nudge if onboarding stalls.

Entered when a contact reaches stage ``customer``. Sends ``onboarding-welcome``, waits two
days, sends ``onboarding-quickstart``, then waits up to a week for ``onboarding.finished``;
without it the contact gets the ``onboarding-checklist`` nudge. Finishing onboarding at
any point is the goal and ends the journey early.
"""

from __future__ import annotations

from stagecoach import END, Journey, event, goal, send, stage_entered, timedelta, wait, wait_for

ONBOARDING = Journey(
    "onboarding",
    description="New customers: welcome, quick start, then a checklist if they stall.",
    entry=stage_entered("customer"),
    exit_when=event("email.unsubscribed") | event("wechat.unsubscribed"),
    goal=event("onboarding.finished"),
    locales=("zh-CN", "en"),
    steps=[
        send("onboarding-welcome", id="welcome"),
        wait(timedelta(days=2), id="pause-before-quickstart"),
        send("onboarding-quickstart", id="quickstart"),
        wait_for(
            "onboarding.finished",
            timeout=timedelta(days=7),
            id="await-onboarding-finished",
            next="onboarded",
        ),
        send("onboarding-checklist", id="checklist-nudge", next=END),
        # The NPS survey (nps_survey) follows on its own: it is entered on
        # onboarding.finished.
        goal(id="onboarded"),
    ],
)
"""The bundled customer onboarding journey."""
