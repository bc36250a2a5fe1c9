"""Message types that cross the Temporal boundary: workflow, signal, update and activity
inputs and results.

They live in ``engine`` so the API and the CLI can talk to workflows without importing
workflow code. One dataclass in, one out. Fields are only ever added, with defaults, so
histories recorded by older code still decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stagecoach.engine.domain.contact import event_problem
from stagecoach.engine.domain.journeys._steps import EXIT_PREFIX
from stagecoach.engine.protocol import (
    CONTACT_WORKFLOW,
    ENROL_UPDATE,
    EVENT_SIGNAL,
    EVENTS_SIGNAL,
    MERGED_SIGNAL,
    STATE_QUERY,
    contact_workflow_id,
)

__all__ = [
    "CONTACT_WORKFLOW",
    "ENROL_UPDATE",
    "EVENTS_SIGNAL",
    "EVENT_SIGNAL",
    "MERGED_SIGNAL",
    "STATE_QUERY",
    "ActiveJourney",
    "ContactInput",
    "ContactView",
    "ConversionRequest",
    "Definitions",
    "DeliverOutcome",
    "DeliverRequest",
    "EnrolRequest",
    "EnrolResult",
    "EnrolmentRecord",
    "EventBatch",
    "EventMessage",
    "HandOffOutcome",
    "HandOffRequest",
    "Merged",
    "OpenRequest",
    "RewardDecision",
    "SlaRequest",
    "SystemCheckInput",
    "SystemCheckResult",
    "TransitionRecord",
    "contact_workflow_id",
    "split_arms",
]


@dataclass
class SystemCheckInput:
    """Ask a worker to prove it runs workflows and activities and reaches the database."""

    requested_by: str = "doctor"


@dataclass
class SystemCheckResult:
    database_ok: bool
    database_detail: str = ""
    task_queue: str = ""


# --- the contact workflow --------------------------------------------------------------

# The contact workflow's names (its type, signals, query, update and workflow id) are
# defined in ``stagecoach.engine.protocol`` and re-exported at the top of this module.


@dataclass
class EventMessage:
    """Behaviour delivered to a contact workflow (signal ``event``)."""

    message_id: str
    type: str
    occurred_at: datetime
    properties: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    source: str = "api"
    channel: str | None = None

    def problem(self) -> str | None:
        """What is wrong with this event (field, then the fix); ``None`` if it is fine."""
        return event_problem(
            message_id=self.message_id,
            type=self.type,
            occurred_at=self.occurred_at,
            properties=self.properties,
            traits=self.traits,
        )


@dataclass
class EventBatch:
    """Several events for one contact in one signal (``events``), applied in order: the
    outbox forwarder's way of saving a signal per event when a contact's events queue."""

    events: list[EventMessage]


@dataclass
class Merged:
    """Signal ``merged``: this contact turned out to be ``into``; the workflow ends."""

    into: str
    reason: str = ""


@dataclass
class Definitions:
    """Pipeline, journey specs and send policy as data, loaded by an activity so that
    deploys never change what a running workflow replays."""

    pipeline: dict[str, Any]
    journeys: dict[str, dict[str, Any]]
    policy: dict[str, Any]
    loaded_at: datetime
    segments: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Segment name -> published spec (``SegmentSpec.to_dict()``, with its version):
    each segment's newest published version, which the workflow decides membership by."""
    send_queues: dict[str, str] = field(default_factory=dict)
    """Channel (``email``, ``wechat``; ``crm`` for hand-offs) -> the task queue its
    journey sends run on, for channels whose rate is enforced across every worker
    (``Settings.send_queues``). A channel not here sends from the contact's queue."""


@dataclass
class ActiveJourney:
    """One enrolment in flight: its pinned spec, its cursor and its clock."""

    spec: dict[str, Any]
    cursor: dict[str, Any]
    time_scale: float = 1.0
    origin: datetime | None = None
    """Real instant of enrolment; a scaled journey's clock runs from here."""
    deferred: dict[str, Any] | None = None
    """A send held back by quiet hours or the frequency cap: the Deliver command."""
    deferred_until: datetime | None = None
    trail: list[dict[str, Any]] = field(default_factory=list)
    """The steps this enrolment went through: ``Passage.to_dict()`` plus ``at``."""


@dataclass
class ContactInput:
    """Start (or continue-as-new) a contact workflow."""

    contact_id: str
    state: dict[str, Any] | None = None
    journeys: list[ActiveJourney] = field(default_factory=list)
    pending: list[EventMessage] = field(default_factory=list)
    definitions: Definitions | None = None
    max_events_per_run: int = 2000
    """Continue-as-new after this many events even if the SDK does not suggest it."""
    rehearsal: bool = False
    """A rehearsal contact: no automatic enrolments, and every send goes to the sink."""
    opened: bool = False
    """The starter already recorded the contact at the first stage and passed
    ``definitions``: the workflow skips its ``contact.open`` activity."""
    handoff: dict[str, Any] | None = None
    """The open hand-off to sales (id, SLA times) carried across continue-as-new."""
    enrol: EnrolRequest | None = None
    """Enrol at start, exactly as the ``enrol`` update would: for a new rehearsal
    contact, whose starter knows the answer, so the update's action is saved."""
    records_enrolments: bool = False
    """Record each finished enrolment (``contact.record_enrolment``). An input, not a
    code patch, so it costs no marker or search-attribute upsert: runs started before
    it existed replay without the activity, and take it up at their next
    continue-as-new. Every starter sets it (through :meth:`current`)."""
    records_in_background: bool = False
    """Record finished enrolments without waiting for the record: the contact's next
    move (an event's stage change, say) is not held back by a database write. Gated by
    the input like ``records_enrolments``, since it changes the commands a run issues:
    runs started without it replay as they ran."""
    score_as_shown: bool = False
    """Rules (stage rules, MQL, journey conditions) compare the score as it is shown,
    rounded by ``stagecoach.engine.domain.scoring.shown_score``. Gated by the input like
    ``records_enrolments``: a run started without it decides as it did."""
    applies_opening_first: bool = False
    """A new contact applies its opening event, and every event delivered with it (a
    batch, or what arrived while it was opened), before its first journeys start or
    send. Gated by the input: runs started without it replay as they ran."""
    waits_for_channel: bool = False
    """A send with no usable channel does what its journey declares (``NoChannel``:
    wait for one, skip, or exit) instead of failing the step. Gated the same way."""
    opens_in_order: bool = False
    """In a new contact's opening batch, a journey enrolled by one event starts on the
    events up to that one and then hears those behind it, as if they had come one at a
    time (so ``wait_for(..., since="enrolment")`` counts them). Gated the same way."""

    @classmethod
    def current(cls, contact_id: str, **fields: Any) -> ContactInput:
        """An input with every behaviour gate a starter of today's code sets."""
        return cls(
            contact_id=contact_id,
            records_enrolments=True,
            records_in_background=True,
            score_as_shown=True,
            applies_opening_first=True,
            waits_for_channel=True,
            opens_in_order=True,
            **fields,
        )


@dataclass
class EnrolRequest:
    """Enrol now (update ``enrol``); ``time_scale`` < 1 rehearses a journey faster."""

    journey: str
    time_scale: float = 1.0
    event: EventMessage | None = None
    """Applied just before enrolling, in the same update: who the contact is (an
    identify) arrives with the enrolment instead of costing a signal of its own."""

    def problem(self) -> str | None:
        """Why this request cannot be carried out, or None."""
        if not self.journey:
            return "journey is empty; name a published journey"
        if not 0 < self.time_scale <= 1:
            return "time_scale must be in (0, 1]; 0.0001 runs 30 days in ~4 minutes"
        if self.event is not None:
            problem = self.event.problem()
            if problem is not None:
                return f"event {self.event.message_id!r}: {problem}"
        return None


@dataclass
class EnrolResult:
    accepted: bool
    journey: str
    enrolment: int = 0
    version: str = ""
    reason: str = ""


@dataclass
class ContactView:
    """The live state (query ``state``)."""

    contact_id: str
    stage: str
    score: float
    grade: str | None
    journeys: list[dict[str, Any]]
    state: dict[str, Any]
    run_events: int = 0


@dataclass
class TransitionRecord:
    """Activity input: persist one stage change and the contact row."""

    key: str
    contact_id: str
    transition: dict[str, Any]
    contact: dict[str, Any]


@dataclass
class SegmentChanges:
    """Activity input: record a contact's segment entries and exits.

    ``key`` is ``<contact id>:<n>`` with ``n`` counting the contact's recorded batches, so
    a retry (or a replayed activity) writes nothing twice. ``changes`` are
    ``Change.to_dict()`` forms; ``source`` is ``workflow``, ``list`` or ``backfill``."""

    key: str
    contact_id: str
    changes: list[dict[str, Any]]
    source: str = "workflow"


@dataclass
class OpenRequest:
    """Activity input: a new contact's first step, in one action: load the definitions
    and record the contact at the pipeline's first stage."""

    contact_id: str
    at: datetime
    trigger_event_type: str | None = None
    trigger_message_id: str | None = None
    rehearsal: bool = False
    """A rehearsal contact: its row is marked, so reports and metrics leave it out."""


@dataclass
class DeliverRequest:
    """Activity input: the one delivery activity."""

    contact_id: str
    idempotency_key: str
    journey: str
    journey_version: str
    step_id: str
    enrolment: int
    channel: str
    address: str
    locale: str
    content_id: str | None = None
    selector: dict[str, Any] | None = None
    stage: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    received: list[str] = field(default_factory=list)
    consented: bool = True
    now: datetime | None = None
    time_scale: float = 1.0
    """The enrolment's time scale (``now`` is already on the journey's clock)."""
    rehearsal: bool = False
    """Send to the rehearsal sink, never through a real connector."""
    enrolment_started_at: datetime | None = None
    """When the enrolment began: the activity records it as active with ``trail``."""
    trail: list[dict[str, Any]] = field(default_factory=list)
    """The steps the enrolment went through up to this send (``ActiveJourney.trail``)."""


@dataclass
class EnrolmentRecord:
    """Activity input: a finished enrolment, for ``journey_enrolments``."""

    contact_id: str
    journey: str
    version: str
    enrolment: int
    status: str
    reason: str
    started_at: datetime
    finished_at: datetime
    trail: list[dict[str, Any]] = field(default_factory=list)

    def arms(self) -> dict[str, str]:
        """Each split step passed and the arm it chose (see ``split_arms``)."""
        return split_arms(self.trail)


def split_arms(trail: list[dict[str, Any]]) -> dict[str, str]:
    """Each split step in an enrolment's trail and the target it chose (a later pass
    wins); an arm that leaves the journey (a holdout) is named by its exit reason."""
    return {
        p["step"]: str(p["outcome"]).removeprefix(EXIT_PREFIX)
        for p in trail
        if p.get("kind") == "split"
    }


@dataclass
class DeliverOutcome:
    """``sent``, ``duplicate`` (already sent before a retry), ``blocked`` (consent,
    suppression, exhausted content: a permanent outcome), or ``deferred`` (frequency cap:
    try again at ``not_before``)."""

    status: str
    content_id: str | None = None
    content_version: str | None = None
    provider_message_id: str | None = None
    reason: str = ""
    not_before: datetime | None = None


@dataclass
class HandOffRequest:
    contact_id: str
    idempotency_key: str
    journey: str
    step_id: str
    reason: str
    payload: dict[str, Any] = field(default_factory=dict)
    now: datetime | None = None
    """The workflow's clock: the SLA runs from here (skipped time in tests)."""
    rehearsal: bool = False
    """A rehearsal contact's hand-off: to the rehearsal sink, never to the CRM, and its
    SLA runs on the enrolment's scaled clock."""
    time_scale: float = 1.0
    """The enrolment's time scale: a rehearsal's SLA deadlines are compressed by it."""


@dataclass
class HandOffOutcome:
    ok: bool
    reference: str = ""
    error: str = ""
    handoff_id: str = ""
    """The id sales quote back in feedback (``POST /v1/handoffs/{id}/feedback``)."""
    owner: str = ""
    remind_at: datetime | None = None
    """When the owner is reminded if no feedback has come (business hours, their zone)."""
    escalate_at: datetime | None = None
    """When the team lead is told instead."""
    routed: bool = True
    """False: the grade is below every route (C and below stay in nurture); not sent."""


@dataclass
class SlaRequest:
    """Activity input: the hand-off's SLA lapsed; ``kind`` is reminder or escalation."""

    contact_id: str
    handoff_id: str
    kind: str
    rehearsal: bool = False
    """A rehearsal contact's reminder or escalation: to the rehearsal sink, not counted."""


@dataclass
class ConversionRequest:
    """Activity input: ``contact_id`` (a referee, perhaps) became a customer at ``at``."""

    contact_id: str
    at: datetime


@dataclass
class RefundRequest:
    """Activity input: ``contact_id`` (a referee, perhaps) had an order refunded at
    ``at``; ``order_id`` names it (empty when the refund did not say)."""

    contact_id: str
    at: datetime
    order_id: str = ""


@dataclass
class RewardDecision:
    """What a conversion earned. ``duplicate``: decided before (a retry, or a later
    purchase); the answer is the first one and nothing new was granted."""

    referred: bool
    rewarded: bool = False
    reason: str = "not_referred"
    duplicate: bool = False
    referral_id: int | None = None
    referrer_id: str | None = None
    reward_id: int | None = None
    content_id: str | None = None
    coupon_code: str | None = None
    hold_until: datetime | None = None
    reward_status: str | None = None
    """held, released or cancelled: a repeated answer says what became of the reward."""


# --- broadcasts --------------------------------------------------------------------------


@dataclass
class BroadcastInput:
    """The broadcast workflow's input: which broadcast, launched when (the snapshot's
    "now" for local-time slots), and its progress when continued as new."""

    broadcast_id: str
    launched_at: datetime
    sent: int = 0
    held: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    batches: int = 0
    phase: str = "start"
    winner: str | None = None
    ab_window_seconds: float = 0.0
    batch_size: int = 200
    batch_queue: str = ""
    """The task queue batches run on ("": the workflow's own)."""


@dataclass
class SnapshotRequest:
    broadcast_id: str
    launched_at: datetime


@dataclass
class SnapshotResult:
    size: int
    skipped: int
    first_due: datetime | None = None
    ab: bool = False
    ab_window_seconds: float = 0.0


@dataclass
class BatchRequest:
    """Send the next ``limit`` recipients due by ``now`` (only the A/B sample's arms
    while ``arms_only``)."""

    broadcast_id: str
    now: datetime
    limit: int = 500
    arms_only: bool = False


@dataclass
class BatchResult:
    sent: int = 0
    held: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    retry: int = 0
    remaining: int = 0
    """Unused (kept so recorded histories decode): the workflow needs only ``next_due``."""
    next_due: datetime | None = None
    refused: str | None = None


@dataclass
class EvaluateRequest:
    broadcast_id: str
    now: datetime


@dataclass
class EvaluateResult:
    winner: str
    reason: str
    decision: dict[str, Any] = field(default_factory=dict)


@dataclass
class BroadcastStatus:
    broadcast_id: str
    status: str
    reason: str | None = None
    at: datetime | None = None
