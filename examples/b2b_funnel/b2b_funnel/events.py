"""The events this project receives: Stagecoach's standard events, and the funnel's own.

Every rule and journey may only name an event listed here, with the properties
described. The standard catalog (``stagecoach.workflows.events.CATALOG``) is what the
engine's channels, the tracking API, the CRM webhooks and the WeChat callbacks send.
"""

from __future__ import annotations

from stagecoach import EventCatalog, EventType
from stagecoach.workflows.events import CATALOG as STANDARD

EVENTS = EventCatalog(
    [
        *STANDARD,
        # Sent by the CRM's document tracking when the contact opens the proposal that
        # sales sent them; the proposal follow-up waits for it before it offers a meeting.
        EventType(
            "proposal.viewed",
            "The contact opened the proposal sales sent",
            {"proposal_id": "the CRM's proposal id", "amount": "proposal total, a number"},
        ),
    ]
)
