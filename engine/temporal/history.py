"""The one reader of a contact's workflow history, for ``contact timeline`` and ``contact why``.

``contact_history`` fetches every run of the contact's workflow, walking back from the
newest through ``continued_execution_run_id``, decodes the payloads with the client's data
converter (and its payload codec: encrypted payloads read as plain data) and turns the
raw history events into typed records: oldest run first, each run in history order.

A record is one thing the history proves, with the server's time and its run. The
payloads it carries are plain data (a dataclass reads as a dict), so a history written
by older code still reads. A completion, a failure, a fired or cancelled timer and an
update's outcome carry the record they complete: readers never pair event ids.

Events neither reader needs (workflow tasks, version markers, search attribute upserts)
are left out; add a record type here when a reader needs one, never a second parser.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.converter import DataConverter

from stagecoach.engine.protocol import EVENTS_SIGNAL, contact_workflow_id, parse_timer_summary
from stagecoach.engine.temporal.codec import decode_in_place


@dataclass(frozen=True, eq=False)
class Record:
    """What every record has: when (server time), in which run, at which event.

    A record is the one event it reads: records compare and hash by identity, so a
    reader can key its own notes by the record a completion points to."""

    at: datetime
    run_id: str
    event_id: int


@dataclass(frozen=True, eq=False)
class Started(Record):
    """A run started: the first run, or a continue-as-new."""

    input: dict[str, Any]
    """``ContactInput`` as data."""
    continued_from: str
    """The previous run's id; ``""`` for the contact's first run."""


@dataclass(frozen=True, eq=False)
class Signalled(Record):
    """A signal arrived (``event``, ``events``, ``merged``)."""

    name: str
    message: dict[str, Any]

    @property
    def is_batch(self) -> bool:
        """An ``events`` signal: several events in one (the outbox forwarder's)."""
        return self.name == EVENTS_SIGNAL and isinstance(self.message.get("events"), list)

    def events(self) -> list[dict[str, Any]]:
        """The events the signal carried: a batch's, in order, or the message itself."""
        if self.is_batch:
            return [e for e in self.message["events"] if isinstance(e, dict)]
        return [self.message]


@dataclass(frozen=True, eq=False)
class UpdateAccepted(Record):
    """An update (``enrol``) the workflow accepted."""

    name: str
    request: dict[str, Any]


@dataclass(frozen=True, eq=False)
class UpdateCompleted(Record):
    """An accepted update's answer."""

    update: UpdateAccepted | None
    result: dict[str, Any]
    """The update's result as data; ``{}`` when it failed."""
    failure: str | None
    """The failure's message when the update failed, else ``None``."""


@dataclass(frozen=True, eq=False)
class ActivityScheduled(Record):
    """The workflow scheduled an activity (``stagecoach.engine.protocol`` names them)."""

    name: str
    activity_id: str
    input: dict[str, Any]


@dataclass(frozen=True, eq=False)
class ActivityStarted(Record):
    """An attempt of an activity started: written when the attempt ends, so it holds
    the last attempt's number and the failure of the one before it."""

    activity: ActivityScheduled | None
    attempt: int
    last_failure: str
    """``failure_text`` of the attempt before, ``""`` if none failed."""


@dataclass(frozen=True, eq=False)
class ActivityCompleted(Record):
    activity: ActivityScheduled | None
    result: dict[str, Any]


@dataclass(frozen=True, eq=False)
class ActivityFailed(Record):
    """An activity failed for good (retries exhausted, a non-retryable error) or timed out."""

    activity: ActivityScheduled | None
    error_type: str
    """The application failure's type (``PermanentDeliveryError``); ``""`` for others."""
    message: str
    text: str
    """The failure in one line (``failure_text``)."""
    timed_out: bool
    """An activity-timed-out event rather than an activity-failed one."""


@dataclass(frozen=True, eq=False)
class TimerStarted(Record):
    timer_id: str
    """The SDK's own timer id (a sequence number)."""
    summary: str
    """``<namespace>/<timer id>`` as the workflow armed it (``stagecoach.engine.protocol``)."""
    namespace: str
    """The journey the timer belongs to, or the sales or referral namespace."""
    name: str
    """The workflow's timer id within the namespace (``defer:<step>``, ``<step>:<n>``)."""
    delay: timedelta

    @property
    def fire_at(self) -> datetime:
        return self.at + self.delay


@dataclass(frozen=True, eq=False)
class TimerFired(Record):
    timer: TimerStarted | None


@dataclass(frozen=True, eq=False)
class TimerCanceled(Record):
    timer: TimerStarted | None


@dataclass(frozen=True, eq=False)
class LocalActivityRecorded(Record):
    """A local activity ran (its marker): the segment records, for one."""

    name: str
    """The activity type, e.g. ``contact.record_segments``."""
    summary: str
    """What the workflow said it was doing, e.g. ``+trial-pricing, -vip-list``."""


@dataclass(frozen=True)
class Run:
    """One run of the contact's workflow."""

    run_id: str
    records: list[Record]


@dataclass(frozen=True)
class ContactHistory:
    """Every run of a contact's workflow, oldest first."""

    runs: list[Run]

    def records(self) -> Iterator[Record]:
        """Every record, oldest run first, each run in history order."""
        for run in self.runs:
            yield from run.records

    @property
    def newest_run_id(self) -> str:
        return self.runs[-1].run_id if self.runs else ""


def failure_text(failure: Failure) -> str:
    """A failure in one line: ``<type>: <message>``, ``timeout: <message>``, or the message."""
    kind = (
        failure.application_failure_info.type
        if failure.HasField("application_failure_info")
        else ""
    )
    if failure.HasField("timeout_failure_info"):
        kind = "timeout"
    return f"{kind}: {failure.message}" if kind else failure.message


def _values(converter: DataConverter, payloads: Payloads) -> list[Any]:
    if not payloads or not payloads.payloads:
        return []
    return list(converter.payload_converter.from_payloads(list(payloads.payloads)))


def _data(converter: DataConverter, payloads: Payloads) -> dict[str, Any]:
    """The first value if it is a dict (a dataclass, as data), else ``{}``."""
    values = _values(converter, payloads)
    return values[0] if values and isinstance(values[0], dict) else {}


def _summary(converter: DataConverter, event: HistoryEvent) -> str:
    """The event's user-metadata summary, or ``""``."""
    if not (event.HasField("user_metadata") and event.user_metadata.HasField("summary")):
        return ""
    payload: Payload = event.user_metadata.summary
    try:
        value = converter.payload_converter.from_payloads([payload])[0]
    except Exception:  # a summary that does not decode is only a label missing
        return ""
    return str(value) if value is not None else ""


def read_run(
    events: Sequence[HistoryEvent], run_id: str = "", converter: DataConverter | None = None
) -> list[Record]:
    """One run's history events (payloads already decoded by the codec) as records."""
    conv = converter or DataConverter.default
    out: list[Record] = []
    activities: dict[int, ActivityScheduled] = {}
    timers: dict[int, TimerStarted] = {}
    updates: dict[int, UpdateAccepted] = {}
    for ev in events:
        at, t, eid = ev.event_time.ToDatetime().replace(tzinfo=UTC), ev.event_type, ev.event_id
        if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            started = ev.workflow_execution_started_event_attributes
            data = _data(conv, started.input)
            out.append(Started(at, run_id, eid, data, started.continued_execution_run_id))
        elif t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            signaled = ev.workflow_execution_signaled_event_attributes
            message = _data(conv, signaled.input)
            out.append(Signalled(at, run_id, eid, signaled.signal_name, message))
        elif t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            request = ev.workflow_execution_update_accepted_event_attributes.accepted_request
            update = UpdateAccepted(
                at, run_id, eid, request.input.name, _data(conv, request.input.args)
            )
            updates[eid] = update
            out.append(update)
        elif t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED:
            completed = ev.workflow_execution_update_completed_event_attributes
            outcome = completed.outcome
            accepted = updates.get(completed.accepted_event_id)
            if outcome.HasField("failure"):
                out.append(UpdateCompleted(at, run_id, eid, accepted, {}, outcome.failure.message))
            else:
                result = _data(conv, outcome.success)
                out.append(UpdateCompleted(at, run_id, eid, accepted, result, None))
        elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            sched = ev.activity_task_scheduled_event_attributes
            activity = ActivityScheduled(
                at,
                run_id,
                eid,
                sched.activity_type.name,
                sched.activity_id,
                _data(conv, sched.input),
            )
            activities[eid] = activity
            out.append(activity)
        elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attempt = ev.activity_task_started_event_attributes
            last = failure_text(attempt.last_failure) if attempt.HasField("last_failure") else ""
            owner = activities.get(attempt.scheduled_event_id)
            out.append(ActivityStarted(at, run_id, eid, owner, attempt.attempt, last))
        elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = ev.activity_task_completed_event_attributes
            owner = activities.get(done.scheduled_event_id)
            out.append(ActivityCompleted(at, run_id, eid, owner, _data(conv, done.result)))
        elif t in (
            EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
            EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
        ):
            timed_out = t == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT
            ended = (
                ev.activity_task_timed_out_event_attributes
                if timed_out
                else ev.activity_task_failed_event_attributes
            )
            failure = ended.failure
            out.append(
                ActivityFailed(
                    at,
                    run_id,
                    eid,
                    activities.get(ended.scheduled_event_id),
                    failure.application_failure_info.type,
                    failure.message,
                    failure_text(failure),
                    timed_out,
                )
            )
        elif t == EventType.EVENT_TYPE_MARKER_RECORDED:
            marker = ev.marker_recorded_event_attributes
            if marker.marker_name == "core_local_activity" and "data" in marker.details:
                info = _values(conv, marker.details["data"])
                kind = (
                    info[0].get("activity_type", "") if info and isinstance(info[0], dict) else ""
                )
                out.append(LocalActivityRecorded(at, run_id, eid, str(kind), _summary(conv, ev)))
        elif t == EventType.EVENT_TYPE_TIMER_STARTED:
            attrs = ev.timer_started_event_attributes
            summary = _summary(conv, ev)
            namespace, name = parse_timer_summary(summary)
            delay = attrs.start_to_fire_timeout.ToTimedelta()
            timer = TimerStarted(at, run_id, eid, attrs.timer_id, summary, namespace, name, delay)
            timers[eid] = timer
            out.append(timer)
        elif t == EventType.EVENT_TYPE_TIMER_FIRED:
            fired = timers.get(ev.timer_fired_event_attributes.started_event_id)
            out.append(TimerFired(at, run_id, eid, fired))
        elif t == EventType.EVENT_TYPE_TIMER_CANCELED:
            cancelled = timers.get(ev.timer_canceled_event_attributes.started_event_id)
            out.append(TimerCanceled(at, run_id, eid, cancelled))
    return out


async def contact_history(
    client: Client, contact_id: str, *, newest_run_id: str | None = None
) -> ContactHistory:
    """Every run of the contact's workflow, read into records, oldest run first.

    Walks back from ``newest_run_id`` (default: the newest run, from ``describe``)
    through ``continued_execution_run_id``. A contact without a workflow raises the
    server's not-found error (``stagecoach.engine.temporal.gateway.missing_contact`` turns it into
    ``ContactNotFound``).
    """
    workflow_id = contact_workflow_id(contact_id)
    runs: list[Run] = []
    run_id: str | None = newest_run_id
    if run_id is None:
        run_id = (await client.get_workflow_handle(workflow_id).describe()).run_id
    while run_id:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        events = [ev async for ev in handle.fetch_history_events()]
        await decode_in_place(events, client.data_converter)  # encrypted payloads, if any
        if not events:
            break
        runs.append(Run(run_id, read_run(events, run_id, client.data_converter)))
        previous = events[0].workflow_execution_started_event_attributes.continued_execution_run_id
        run_id = previous or None
    return ContactHistory(runs[::-1])


_OPENS = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED: "workflow task",
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "activity",
}
_CLOSES = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: "workflow task",
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED: "workflow task",
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT: "workflow task",
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity",
}
_ENDED = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
}


def open_work(events: Sequence[HistoryEvent]) -> str:
    """What is still open in a run's history (``"1 activity"``), ``""`` if nothing: a
    workflow task or an activity scheduled and not yet closed. ``stagecoach.testing``
    waits for a run to settle with it."""
    if events and events[-1].event_type in _ENDED:
        return ""  # a continued run's successor is the one to ask; its history is next
    open_: dict[str, int] = {"workflow task": 0, "activity": 0}
    for event in events:
        if event.event_type in _OPENS:
            open_[_OPENS[event.event_type]] += 1
        elif event.event_type in _CLOSES:
            open_[_CLOSES[event.event_type]] -= 1
    return ", ".join(f"{n} {what}" for what, n in open_.items() if n > 0)
