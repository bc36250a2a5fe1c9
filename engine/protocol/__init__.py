"""The names that cross the Temporal boundary, each defined once.

Every value here is written into workflow histories (a workflow's type, a signal's or an
update's name, an activity's type, a timer's summary) and read back from them: by the
replayer, by ``contact timeline`` and ``contact why`` (``stagecoach.engine.temporal.history``), by
the Web UI. A constant may be renamed; its value never changes, or every recorded history stops
replaying and every running contact's story stops reading. ``tests/workflows/test_replay.py``
and ``tests/engine/protocol/test_protocol.py`` hold the values to that.

The message types these names carry are in ``stagecoach.engine.protocol.messages``; the search
attributes in ``stagecoach.engine.protocol.search_attributes``. The journey interpreter, pure domain
code, names the
timers of its own waits (``<step>:<n>``, ``channel:<step>:<n>``); its prefix is re-exported
here so readers of histories find every timer name in one place.

This module is pure: no Temporal import, so the API, the CLI and the workflow sandbox all
load it.
"""

from __future__ import annotations

from stagecoach.engine.domain.journeys import CHANNEL_TIMER_PREFIX

# --- workflows, signals, queries, updates --------------------------------------------

CONTACT_WORKFLOW = "Contact"
CONTACT_WORKFLOW_ID_PREFIX = "contact-"
SYSTEM_CHECK_WORKFLOW = "SystemCheck"
BROADCAST_WORKFLOW = "Broadcast"
BROADCAST_WORKFLOW_ID_PREFIX = "broadcast-"
PAUSE_SIGNAL = "pause"
RESUME_SIGNAL = "resume"
CANCEL_SIGNAL = "cancel"
PROGRESS_QUERY = "progress"
PROPENSITY_RETRAIN_WORKFLOW = "PropensityRetrain"
PROPENSITY_SCHEDULE_ID = "stagecoach-propensity-retrain"
"""The Temporal Schedule that starts the retrain workflow (one per namespace and queue:
the task queue is appended, ``stagecoach-propensity-retrain-<queue>``)."""
VALUE_REFRESH_WORKFLOW = "ValueRefresh"
VALUE_SCHEDULE_ID = "stagecoach-value-refresh"
"""The Temporal Schedule that starts the customer-value refresh workflow (one per
namespace and queue: ``stagecoach-value-refresh-<queue>``)."""

EVENT_SIGNAL = "event"
EVENTS_SIGNAL = "events"
MERGED_SIGNAL = "merged"
STATE_QUERY = "state"
ENROL_UPDATE = "enrol"

# --- activities ------------------------------------------------------------------------

OPEN_ACTIVITY = "contact.open"
LOAD_DEFINITIONS_ACTIVITY = "contact.load_definitions"
RECORD_TRANSITION_ACTIVITY = "contact.record_transition"
DELIVER_ACTIVITY = "contact.deliver"
HAND_OFF_ACTIVITY = "contact.hand_off"
HANDOFF_SLA_ACTIVITY = "contact.handoff_sla"
RECORD_ENROLMENT_ACTIVITY = "contact.record_enrolment"
RECORD_CONVERSION_ACTIVITY = "contact.record_conversion"
RELEASE_REWARDS_ACTIVITY = "contact.release_rewards"
CANCEL_REWARD_ACTIVITY = "contact.cancel_reward"
RECORD_SEGMENTS_ACTIVITY = "contact.record_segments"
CHECK_DATABASE_ACTIVITY = "system.check_database"
SNAPSHOT_ACTIVITY = "broadcast.snapshot"
SEND_BATCH_ACTIVITY = "broadcast.send_batch"
EVALUATE_AB_ACTIVITY = "broadcast.evaluate_ab"
BROADCAST_STATUS_ACTIVITY = "broadcast.set_status"
PROPENSITY_RETRAIN_ACTIVITY = "prediction.retrain"
VALUE_REFRESH_ACTIVITY = "value.refresh"

CONTACT_ACTIVITIES: frozenset[str] = frozenset(
    {
        OPEN_ACTIVITY,
        LOAD_DEFINITIONS_ACTIVITY,
        RECORD_TRANSITION_ACTIVITY,
        DELIVER_ACTIVITY,
        HAND_OFF_ACTIVITY,
        HANDOFF_SLA_ACTIVITY,
        RECORD_ENROLMENT_ACTIVITY,
        RECORD_CONVERSION_ACTIVITY,
        RELEASE_REWARDS_ACTIVITY,
        CANCEL_REWARD_ACTIVITY,
        RECORD_SEGMENTS_ACTIVITY,
    }
)
"""The activities the contact workflow schedules."""
BROADCAST_ACTIVITIES: frozenset[str] = frozenset(
    {SNAPSHOT_ACTIVITY, SEND_BATCH_ACTIVITY, EVALUATE_AB_ACTIVITY, BROADCAST_STATUS_ACTIVITY}
)
"""The activities the broadcast workflow schedules."""
PREDICTION_ACTIVITIES: frozenset[str] = frozenset({PROPENSITY_RETRAIN_ACTIVITY})
"""The activities the propensity retrain workflow schedules."""
VALUE_ACTIVITIES: frozenset[str] = frozenset({VALUE_REFRESH_ACTIVITY})
"""The activities the customer-value refresh workflow schedules."""
ACTIVITIES: frozenset[str] = (
    CONTACT_ACTIVITIES
    | BROADCAST_ACTIVITIES
    | PREDICTION_ACTIVITIES
    | VALUE_ACTIVITIES
    | {CHECK_DATABASE_ACTIVITY}
)
"""Every activity a Stagecoach worker registers."""

# --- timers ----------------------------------------------------------------------------
# A contact's timers are keyed by a namespace (the journey's name, or one of the two
# below) and a timer id; the pair is the timer's summary in the history.

DEFER_TIMER_PREFIX = "defer:"
"""A send held by quiet hours or the frequency cap: ``defer:<step id>``."""
SALES_TIMERS = "__sales__"
"""The namespace of the hand-off's SLA timers (journeys use their own names)."""
SLA_REMINDER_TIMER = "sla:reminder"
SLA_ESCALATION_TIMER = "sla:escalation"
REFERRAL_TIMERS = "__referral__"
"""The namespace of a referral reward's return window."""
REWARD_RELEASE_TIMER = "release"
BROADCAST_TIMERS = "__broadcast__"
"""The broadcast workflow's timers: ``start`` (its send time), ``next`` (the next
recipient due) and ``window`` (an A/B test's window)."""
SEGMENT_TIMERS = "__segments__"
"""The namespace of the one timer at the next time-driven segment flip."""
SEGMENT_FLIP_TIMER = "flip"

__all__ = [
    "ACTIVITIES",
    "BROADCAST_ACTIVITIES",
    "BROADCAST_STATUS_ACTIVITY",
    "BROADCAST_TIMERS",
    "BROADCAST_WORKFLOW",
    "BROADCAST_WORKFLOW_ID_PREFIX",
    "CANCEL_REWARD_ACTIVITY",
    "CANCEL_SIGNAL",
    "CHANNEL_TIMER_PREFIX",
    "CHECK_DATABASE_ACTIVITY",
    "CONTACT_ACTIVITIES",
    "CONTACT_WORKFLOW",
    "CONTACT_WORKFLOW_ID_PREFIX",
    "DEFER_TIMER_PREFIX",
    "DELIVER_ACTIVITY",
    "ENROL_UPDATE",
    "EVALUATE_AB_ACTIVITY",
    "EVENTS_SIGNAL",
    "EVENT_SIGNAL",
    "HANDOFF_SLA_ACTIVITY",
    "HAND_OFF_ACTIVITY",
    "LOAD_DEFINITIONS_ACTIVITY",
    "MERGED_SIGNAL",
    "OPEN_ACTIVITY",
    "PAUSE_SIGNAL",
    "PREDICTION_ACTIVITIES",
    "PROGRESS_QUERY",
    "PROPENSITY_RETRAIN_ACTIVITY",
    "PROPENSITY_RETRAIN_WORKFLOW",
    "PROPENSITY_SCHEDULE_ID",
    "RECORD_CONVERSION_ACTIVITY",
    "RECORD_ENROLMENT_ACTIVITY",
    "RECORD_SEGMENTS_ACTIVITY",
    "RECORD_TRANSITION_ACTIVITY",
    "REFERRAL_TIMERS",
    "RELEASE_REWARDS_ACTIVITY",
    "RESUME_SIGNAL",
    "REWARD_RELEASE_TIMER",
    "SALES_TIMERS",
    "SEGMENT_FLIP_TIMER",
    "SEGMENT_TIMERS",
    "SEND_BATCH_ACTIVITY",
    "SLA_ESCALATION_TIMER",
    "SLA_REMINDER_TIMER",
    "SNAPSHOT_ACTIVITY",
    "STATE_QUERY",
    "SYSTEM_CHECK_WORKFLOW",
    "VALUE_ACTIVITIES",
    "VALUE_REFRESH_ACTIVITY",
    "VALUE_REFRESH_WORKFLOW",
    "VALUE_SCHEDULE_ID",
    "broadcast_workflow_id",
    "contact_workflow_id",
    "defer_timer",
    "is_defer_timer",
    "parse_timer_summary",
    "timer_summary",
]


def contact_workflow_id(contact_id: str) -> str:
    """One workflow per contact, reachable by this id."""
    return f"{CONTACT_WORKFLOW_ID_PREFIX}{contact_id}"


def broadcast_workflow_id(broadcast_id: str) -> str:
    """One workflow per broadcast: a second launch finds the first."""
    return f"{BROADCAST_WORKFLOW_ID_PREFIX}{broadcast_id}"


def defer_timer(step_id: str) -> str:
    """The id of the timer that holds ``step_id``'s send."""
    return f"{DEFER_TIMER_PREFIX}{step_id}"


def is_defer_timer(timer_id: str) -> bool:
    """Whether ``timer_id`` holds a deferred send (rather than a journey's own wait)."""
    return timer_id.startswith(DEFER_TIMER_PREFIX)


def timer_summary(namespace: str, timer_id: str) -> str:
    """The summary a timer carries in the history: ``<namespace>/<timer id>``."""
    return f"{namespace}/{timer_id}"


def parse_timer_summary(summary: str) -> tuple[str, str]:
    """``(namespace, timer id)`` from a timer's summary; ``("", "")`` without one."""
    namespace, _, timer_id = summary.partition("/")
    return namespace, timer_id
