"""Repeat buyers: a restocking reminder at each customer's own repurchase interval.

The value refresh sets ``next_purchase_due`` on every repeat buyer: their last order plus
their own median interval between orders. The first refresh after that moment (run it
daily: ``stagecoach value refresh``) marks its ``value.scored`` event
``replenishment_due``, and this journey sends the reminder, naming the product they last
bought (``last_product``) and their interval. The next refresh after their next order
sets the next due date.
"""

from __future__ import annotations

from stagecoach import Journey, PropertyFilter, ReEntry, event, on_event, send, timedelta

REPLENISHMENT = Journey(
    "replenishment",
    description="Repeat buyers, when their own repurchase interval has passed: a restocking "
    "reminder for what they last bought.",
    entry=on_event("value.scored", where=[PropertyFilter("replenishment_due", "eq", True)]),
    reentry=ReEntry.after(timedelta(days=7)),
    exit_when=event("email.unsubscribed") | event("wechat.unsubscribed"),
    locales=("zh-CN", "en"),
    steps=[send("replenishment-reminder", id="remind")],
)
"""The bundled replenishment reminder."""
