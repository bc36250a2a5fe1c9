"""A contact's story, read from its workflow history across continue-as-new runs.

The history is the source of truth: every event signalled, every stage recorded, every
send and its outcome, every wait, with the server's timestamps. ``contact_timeline``
walks back from the newest run through ``continued_execution_run_id`` and turns the
history events into ``Entry`` lines; ``stagecoach contact timeline`` prints them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.converter import DataConverter

from engine.codec import decode_in_place
from engine.journeys import (
    CHANNEL_TIMER_PREFIX,
    EXITED_NO_CHANNEL,
    NO_CHANNEL_WITHIN,
    SKIPPED_NO_CHANNEL,
    handoff_audience,
)
from engine.messages import EVENTS_SIGNAL, contact_workflow_id


@dataclass(frozen=True)
class Entry:
    """One line of the story."""

    at: datetime
    kind: str
    """``created``, ``event``, ``stage``, ``send``, ``sent``, ``not_sent``, ``handoff``,
    ``wait``, ``waited``, ``enrol``, ``continued``."""
    summary: str
    data: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""

    def line(self) -> str:
        return f"{self.at.isoformat(timespec='seconds')}  {self.kind:<9} {self.summary}"


def decode_payloads(converter: DataConverter, payloads: Any) -> list[Any]:
    """Every value in a ``Payloads`` message, decoded with ``converter``."""
    if not payloads or not payloads.payloads:
        return []
    return list(converter.payload_converter.from_payloads(list(payloads.payloads)))


def first_dict(converter: DataConverter, payloads: Any) -> dict[str, Any]:
    """The first value in a ``Payloads`` message if it is a dict (a dataclass), else ``{}``."""
    values = decode_payloads(converter, payloads)
    return values[0] if values and isinstance(values[0], dict) else {}


def event_summary(event: HistoryEvent, converter: DataConverter) -> str:
    """The event's user-metadata summary (a timer's ``journey/timer_id``), or ``""``."""
    if event.HasField("user_metadata") and event.user_metadata.HasField("summary"):
        value = _decode_one(converter, event.user_metadata.summary)
        return str(value) if value is not None else ""
    return ""


def _decode_one(converter: DataConverter, payload: Any) -> Any:
    try:
        return converter.payload_converter.from_payloads([payload])[0]
    except Exception:  # a summary we cannot decode is just not shown
        return None


def _scheduled_entry(at: datetime, kind: str, data: dict[str, Any], run_id: str) -> Entry | None:
    if kind == "contact.record_transition":
        tr = data.get("transition", {})
        change = f"{tr.get('from_stage') or '-'} -> {tr.get('to_stage')} ({tr.get('reason', '')})"
        return Entry(at, "stage", change, tr, run_id)
    if kind == "contact.deliver":
        what = data.get("content_id") or "next best item"
        where = f"[{data.get('journey')}/{data.get('step_id')}]"
        return Entry(at, "send", f"{what} via {data.get('channel')} {where}", data, run_id)
    if kind == "contact.hand_off":
        return Entry(at, "handoff", _handoff_summary(data), data, run_id)
    return None


def _handoff_summary(data: dict[str, Any]) -> str:
    """``to customer care (service_recovery) [nps_survey/recovery-handoff]``, or for the
    pipeline's own MQL hand-off, which no journey step made, ``to sales (mql)``."""
    reason = str(data.get("reason") or "")
    text = f"to {handoff_audience(reason)}" + (f" ({reason})" if reason else "")
    if data.get("journey"):
        text += f" [{data['journey']}/{data.get('step_id')}]"
    return text


def _event_summary(msg: dict[str, Any], fallback: str) -> str:
    """``order.paid (amount=9800)``: an event's type and its properties."""
    props = msg.get("properties") or {}
    detail = ", ".join(f"{k}={v}" for k, v in sorted(props.items()))
    return f"{msg.get('type', fallback)}" + (f" ({detail})" if detail else "")


def _signal_entries(at: datetime, name: str, msg: dict[str, Any], run_id: str) -> list[Entry]:
    """One ``event`` line per event a signal carried: a batch (``events``, the outbox
    forwarder's signal for a contact's queued events) is read as the events in it."""
    if name == EVENTS_SIGNAL and isinstance(msg.get("events"), list):
        batch = [e for e in msg["events"] if isinstance(e, dict)]
        return [Entry(at, "event", _event_summary(e, "?"), e, run_id) for e in batch]
    return [Entry(at, "event", _event_summary(msg, name), msg, run_id)]


def _no_channel_entries(data: dict[str, Any], run_id: str, seen: set[str]) -> list[Entry]:
    """Sends skipped, and enrolments that exited, for want of a usable channel: read from
    the trail a send or an enrolment's finish record carries (``seen``: shown already)."""
    out: list[Entry] = []
    for p in data.get("trail") or []:
        outcome = str(p.get("outcome") or "")
        if p.get("kind") != "send" or not p.get("at"):
            continue
        where = f"[{data.get('journey')}/{p.get('step')}]"
        if outcome.startswith(SKIPPED_NO_CHANNEL):
            text = f"skipped: no channel {where} ({outcome.split(': ', 2)[-1]})"
        elif outcome.startswith((EXITED_NO_CHANNEL, NO_CHANNEL_WITHIN)):
            text = f"exited: no channel {where} ({data.get('reason') or outcome})"
        else:
            continue
        key = f"{data.get('journey')}:{data.get('enrolment')}:{p.get('step')}:{p.get('at')}"
        if key not in seen:
            seen.add(key)
            out.append(Entry(datetime.fromisoformat(p["at"]), "not_sent", text, p, run_id))
    return out


def entries_from_history(
    events: Sequence[HistoryEvent], run_id: str = "", converter: DataConverter | None = None
) -> list[Entry]:
    """Turn one run's history events into story entries."""
    conv = converter or DataConverter.default
    out: list[Entry] = []
    scheduled: dict[int, tuple[str, dict[str, Any]]] = {}
    no_channel: set[str] = set()
    for ev in events:
        at = ev.event_time.ToDatetime().replace(tzinfo=UTC)
        t = ev.event_type
        if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            started = ev.workflow_execution_started_event_attributes
            if started.continued_execution_run_id:
                out.append(Entry(at, "continued", "run continued as new", {}, run_id))
            else:
                contact = first_dict(conv, started.input).get("contact_id", "?")
                out.append(Entry(at, "created", f"contact {contact}", {}, run_id))
        elif t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            signaled = ev.workflow_execution_signaled_event_attributes
            msg = first_dict(conv, signaled.input)
            out.extend(_signal_entries(at, signaled.signal_name, msg, run_id))
        elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            sched = ev.activity_task_scheduled_event_attributes
            kind = sched.activity_type.name
            data = first_dict(conv, sched.input)
            scheduled[ev.event_id] = (kind, data)
            entry = _scheduled_entry(at, kind, data, run_id)
            if entry is not None:
                out.append(entry)
            if kind in ("contact.deliver", "contact.record_enrolment"):
                out.extend(_no_channel_entries(data, run_id, no_channel))
        elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = ev.activity_task_completed_event_attributes
            kind, request = scheduled.get(done.scheduled_event_id, ("", {}))
            if kind == "contact.open":
                stages = first_dict(conv, done.result).get("pipeline", {}).get("stages", [{}])
                first = stages[0].get("name", "?")
                out.append(Entry(at, "stage", f"- -> {first} (created)", request, run_id))
            elif kind == "contact.deliver":
                result = first_dict(conv, done.result)
                status = result.get("status", "?")
                label = "sent" if status in ("sent", "duplicate") else "not_sent"
                text = f"{result.get('content_id') or request.get('content_id')}: {status}"
                if result.get("reason"):
                    text += f" ({result['reason']})"
                out.append(Entry(at, label, text, {**request, "outcome": result}, run_id))
        elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            failed = ev.activity_task_failed_event_attributes
            kind, request = scheduled.get(failed.scheduled_event_id, ("", {}))
            if kind == "contact.deliver":
                failure = failed.failure
                reason = failure.application_failure_info.type or failure.message
                text = f"{request.get('content_id')}: failed ({reason})"
                out.append(Entry(at, "not_sent", text, request, run_id))
        elif t == EventType.EVENT_TYPE_TIMER_STARTED:
            timer = ev.timer_started_event_attributes
            seconds = timer.start_to_fire_timeout.ToTimedelta().total_seconds()
            label = event_summary(ev, conv) or timer.timer_id
            journey, _, timer_id = label.partition("/")
            if timer_id.startswith(CHANNEL_TIMER_PREFIX):
                step = timer_id.removeprefix(CHANNEL_TIMER_PREFIX).rsplit(":", 1)[0]
                label = f"waiting for a channel [{journey}/{step}], at most"
            out.append(Entry(at, "wait", f"{label} for {seconds:.0f}s", {}, run_id))
        elif t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            accepted = ev.workflow_execution_update_accepted_event_attributes
            req = first_dict(conv, accepted.accepted_request.input.args)
            out.append(Entry(at, "enrol", f"enrol requested: {req.get('journey')}", req, run_id))
    return out


async def contact_runs(
    client: Client, contact_id: str, *, newest_run_id: str | None = None
) -> list[tuple[str, list[HistoryEvent]]]:
    """Each run of the contact's workflow with its history events, oldest run first.

    Walks back from ``newest_run_id`` (default: the newest run, from ``describe``)
    through ``continued_execution_run_id``.
    """
    workflow_id = contact_workflow_id(contact_id)
    runs: list[tuple[str, list[HistoryEvent]]] = []
    run_id: str | None = newest_run_id
    if run_id is None:
        run_id = (await client.get_workflow_handle(workflow_id).describe()).run_id
    while run_id:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        events = [ev async for ev in handle.fetch_history_events()]
        await decode_in_place(events, client.data_converter)  # encrypted payloads, if any
        if not events:
            break
        runs.append((run_id, events))
        previous = events[0].workflow_execution_started_event_attributes.continued_execution_run_id
        if not previous:
            break
        run_id = previous
    return runs[::-1]


async def contact_timeline(client: Client, contact_id: str) -> list[Entry]:
    """Every entry of the contact's story, oldest first, across all runs."""
    story: list[Entry] = []
    for rid, events in await contact_runs(client, contact_id):
        story.extend(entries_from_history(events, rid, client.data_converter))
    return story
