"""Customers who bought X and not yet Y: recommend Y.

The value refresh finds which products are bought together (item-to-item association over
the stored orders: support, confidence, lift; ``stagecoach report cross-sell`` lists the
pairs) and sets ``cross_sell`` (and ``cross_sell_name``) on each customer to the product
with the strongest lift from what they bought that they have not bought yet. Its
``value.scored`` event carries ``cross_sell`` when there is one; this journey is entered
on it and sends the offer, which names the product through its ``cross_sell_name``
variable.
"""

from __future__ import annotations

from stagecoach import (
    Journey,
    PropertyFilter,
    ReEntry,
    event,
    exit_journey,
    on_event,
    send,
    timedelta,
    wait_for,
)

CROSS_SELL_DELAY = timedelta(days=10)

CROSS_SELL = Journey(
    "cross_sell",
    description="Bought X, not yet Y: the offer for Y, the product most often bought with "
    "what they have.",
    entry=on_event("value.scored", where=[PropertyFilter("cross_sell", "exists")]),
    reentry=ReEntry.after(timedelta(days=60)),
    exit_when=event("email.unsubscribed") | event("wechat.unsubscribed"),
    locales=("zh-CN", "en"),
    # Ten days to settle in with what they bought (and not the same week as a restocking
    # reminder); an order meanwhile ends it, and the next refresh recommends afresh.
    steps=[
        wait_for("order.paid", timeout=CROSS_SELL_DELAY, on_timeout="offer", id="settle"),
        exit_journey("ordered meanwhile", id="ordered"),
        send("cross-sell-offer", id="offer"),
    ],
)
"""The bundled cross-sell journey."""
