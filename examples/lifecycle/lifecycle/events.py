"""The events this project receives: Stagecoach's standard events, with nothing added.

Every rule and journey may only name an event listed here. The standard catalog
(``stagecoach.workflows.events.CATALOG``) is what the engine's own channels, the tracking
API, the CRM webhooks and the WeChat callbacks send; ``stagecoach events list`` prints it
with each event's properties. A project adds its own events after it, as
``examples/b2b_funnel`` does.
"""

from __future__ import annotations

from stagecoach import EventCatalog
from stagecoach.workflows.events import CATALOG as STANDARD

EVENTS = EventCatalog([*STANDARD])
