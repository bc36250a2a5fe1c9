"""The contact entity workflow, as a package.

- ``workflow``: ``ContactWorkflow`` (one Temporal workflow class), its signal, query and
  update handlers and its run loop;
- ``core``: the state its parts share, and the timers, clocks and facts they use;
- ``journeys``: the journey driver (enrolments, the pure interpreter, sends);
- ``sales``: the sales hand-off and its SLA;
- ``referrals``: the referral reward timers;
- ``activities``: ``ContactActivities``, every side effect the workflow has.

The activities are loaded on first use, never by importing this package: the workflow
sandbox imports the package afresh for each run, and the activities' database and
connector imports have no place there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stagecoach.workflows.contact.workflow import ContactWorkflow

if TYPE_CHECKING:
    from stagecoach.workflows.contact.activities import ContactActivities

__all__ = ["ContactActivities", "ContactWorkflow"]


def __getattr__(name: str) -> Any:
    if name == "ContactActivities":
        from stagecoach.workflows.contact.activities import ContactActivities

        return ContactActivities
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
