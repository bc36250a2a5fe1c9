"""Dormant customers: win them back.

A customer whose churn risk (``churn_risk``, from the value refresh: the BG/NBD model's
probability alive weighed with recent engagement) reaches the pipeline's threshold, or who
has not ordered for ``DORMANT_AFTER``, takes the ``dormant`` detour (``pipeline.py``): the
decline period (衰退期). This journey is entered on it: an offer to come back, and a
second nudge two weeks later. An order ends it (the goal), and the pipeline's ``won_back``
detour takes the customer back to ``customer``.
"""

from __future__ import annotations

from stagecoach import (
    Journey,
    ReEntry,
    event,
    exit_journey,
    send,
    stage_entered,
    timedelta,
    wait_for,
)

WIN_BACK = Journey(
    "win_back",
    description="Dormant customers: a come-back offer, then a reminder two weeks later; an "
    "order ends it.",
    entry=stage_entered("dormant"),
    reentry=ReEntry.after(timedelta(days=90)),
    exit_when=event("email.unsubscribed") | event("wechat.unsubscribed"),
    locales=("zh-CN", "en"),
    steps=[
        send("winback-offer", id="offer"),
        # Their past orders are not an answer: only one placed from now on is.
        wait_for("order.paid", timeout=timedelta(days=14), on_timeout="reminder", id="await"),
        exit_journey("ordered again", id="came-back"),
        send("winback-offer", id="reminder"),
    ],
)
"""The bundled win-back journey."""
