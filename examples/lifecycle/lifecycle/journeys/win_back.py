"""Dormant customers: win them back.

A customer whose probability of still being a customer (``p_alive``, from the value
refresh's BG/NBD model) falls below the pipeline's threshold, or who has not ordered for
``DORMANT_AFTER``, takes the ``dormant`` detour (``pipeline.py``): the decline period
(衰退期). This journey is entered on it: an offer to come back, and a second nudge two
weeks later. An order ends it (the goal), and the pipeline's ``won_back`` detour takes the
customer back to ``customer``.
"""

from __future__ import annotations

from stagecoach import Journey, ReEntry, event, send, stage_entered, timedelta, wait

WIN_BACK = Journey(
    "win_back",
    description="Dormant customers: a come-back offer, then a reminder two weeks later; an "
    "order ends it.",
    entry=stage_entered("dormant"),
    reentry=ReEntry.after(timedelta(days=90)),
    goal=event("order.paid"),
    exit_when=event("email.unsubscribed") | event("wechat.unsubscribed"),
    locales=("zh-CN", "en"),
    steps=[
        send("winback-offer", id="offer"),
        wait(timedelta(days=14), id="fortnight"),
        send("winback-offer", id="reminder"),
    ],
)
"""The bundled win-back journey."""
