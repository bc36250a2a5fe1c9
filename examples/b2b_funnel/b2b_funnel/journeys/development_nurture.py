"""Development 开发: a qualified lead goes to sales, and marketing keeps it warm meanwhile.

Entered when a contact reaches ``development`` (the MQL test, or a demo or consultation
asked for). The lead is handed to sales at once: the pipeline's MQL rule may already have
done so, and a lead that only asked for a demo has not been handed over yet. While sales
works it, the lead gets the case study, then the competitive comparison four days later;
without a demo or consultation asked for by day 10, the demo invitation. Sales accepting
the lead is the goal; the pipeline then moves it to ``proposal``, where
``proposal_follow_up`` takes over. A lead sales rejects (sent back to verification), a
lost or closed deal, or an unsubscribe ends the journey.
"""

from __future__ import annotations

from stagecoach import (
    Journey,
    ReEntry,
    event,
    exit_to,
    goal,
    hand_off,
    send,
    since_enrolment,
    stage_entered,
    stage_in,
    timedelta,
    wait,
    wait_for,
)

from ..pipeline import RECYCLE

DEVELOPMENT_NURTURE = Journey(
    "development_nurture",
    description=(
        "Qualified leads: to sales at once, then the case study and the comparison while"
        " sales works them, and a demo invitation if they have not asked for one by day 10."
    ),
    entry=stage_entered("development"),
    # A lead recycled to verification that qualifies again starts over, once a quarter.
    reentry=ReEntry.after(timedelta(days=90)),
    # Sales sent it back to verification (recently rejected), the deal was lost, or it
    # closed without a proposal: nothing more to say here.
    exit_when=(
        RECYCLE.recently_rejected()
        | stage_in("closing", "lost")
        | event("email.unsubscribed")
        | event("wechat.unsubscribed")
    ),
    goal=event("sales.accepted"),
    locales=("zh-CN", "en"),
    steps=[
        # A hand-off that fails for good (no CRM) must not end the nurture.
        hand_off(reason="qualified: entered development", id="hand-off", on_failure="case-study"),
        send("case-study-manufacturing", id="case-study"),
        wait(timedelta(days=4), id="pause-before-comparison"),
        send("comparison-vs-legacy", id="comparison"),
        wait_for(
            "demo.requested",
            "consultation.booked",
            timeout=since_enrolment(timedelta(days=10)),
            id="await-demo-request",
            next="await-sales",
        ),
        send("demo-request", id="demo-invitation"),
        wait_for(
            "sales.accepted",
            timeout=timedelta(days=21),
            id="await-sales",
            on_timeout=exit_to("sales_silent"),
        ),
        goal(id="accepted"),
    ],
)
"""The funnel's development nurture."""
