"""A contact's story, read from its workflow history across continue-as-new runs.

The history is the source of truth: every event signalled, every stage recorded, every
send and its outcome, every wait, with the server's timestamps. ``contact_timeline``
reads the history with the one history reader (``stagecoach.engine.temporal.history``, which
``contact why`` reads too) and turns its records into ``Entry`` lines; ``stagecoach contact
timeline`` prints them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus

from stagecoach.engine.domain.journeys import (
    EXITED_NO_CHANNEL,
    NO_CHANNEL_WITHIN,
    SKIPPED_NO_CHANNEL,
    handoff_audience,
    human_duration,
)
from stagecoach.engine.protocol import (
    CHANNEL_TIMER_PREFIX,
    DELIVER_ACTIVITY,
    HAND_OFF_ACTIVITY,
    OPEN_ACTIVITY,
    RECORD_ENROLMENT_ACTIVITY,
    RECORD_SEGMENTS_ACTIVITY,
    RECORD_TRANSITION_ACTIVITY,
    contact_workflow_id,
)
from stagecoach.engine.protocol.messages import ContactView
from stagecoach.engine.temporal.history import (
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    LocalActivityRecorded,
    Record,
    Signalled,
    Started,
    TimerStarted,
    UpdateAccepted,
    contact_history,
)
from stagecoach.engine.temporal.ignored import ignored_events


@dataclass(frozen=True)
class Entry:
    """One line of the story."""

    at: datetime
    kind: str
    """``created``, ``event``, ``stage``, ``send``, ``sent``, ``not_sent``, ``handoff``,
    ``wait``, ``waited``, ``enrol``, ``continued``, ``ignored``, ``broadcast``."""
    summary: str
    data: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""

    def line(self) -> str:
        return f"{self.at.isoformat(timespec='seconds')}  {self.kind:<9} {self.summary}"


def _scheduled_entry(at: datetime, kind: str, data: dict[str, Any], run_id: str) -> Entry | None:
    if kind == RECORD_TRANSITION_ACTIVITY:
        tr = data.get("transition", {})
        change = f"{tr.get('from_stage') or '-'} -> {tr.get('to_stage')} ({tr.get('reason', '')})"
        return Entry(at, "stage", change, tr, run_id)
    if kind == DELIVER_ACTIVITY:
        what = data.get("content_id") or "next best item"
        where = f"[{data.get('journey')}/{data.get('step_id')}]"
        return Entry(at, "send", f"{what} via {data.get('channel')} {where}", data, run_id)
    if kind == HAND_OFF_ACTIVITY:
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


def _signal_entries(rec: Signalled) -> list[Entry]:
    """One ``event`` line per event a signal carried: a batch (``events``, the outbox
    forwarder's signal for a contact's queued events) is read as the events in it."""
    fallback = "?" if rec.is_batch else rec.name
    return [
        Entry(rec.at, "event", _event_summary(e, fallback), e, rec.run_id) for e in rec.events()
    ]


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


def entries_from_records(records: Iterable[Record]) -> list[Entry]:
    """Turn one run's history records (``stagecoach.engine.temporal.history``) into story
    entries."""
    out: list[Entry] = []
    no_channel: set[str] = set()
    for rec in records:
        at, run_id = rec.at, rec.run_id
        if isinstance(rec, Started):
            if rec.continued_from:
                out.append(Entry(at, "continued", "run continued as new", {}, run_id))
            else:
                contact = rec.input.get("contact_id", "?")
                out.append(Entry(at, "created", f"contact {contact}", {}, run_id))
        elif isinstance(rec, Signalled):
            out.extend(_signal_entries(rec))
        elif isinstance(rec, ActivityScheduled):
            entry = _scheduled_entry(at, rec.name, rec.input, run_id)
            if entry is not None:
                out.append(entry)
            if rec.name in (DELIVER_ACTIVITY, RECORD_ENROLMENT_ACTIVITY):
                out.extend(_no_channel_entries(rec.input, run_id, no_channel))
        elif isinstance(rec, ActivityCompleted) and rec.activity is not None:
            kind, request = rec.activity.name, rec.activity.input
            if kind == OPEN_ACTIVITY:
                stages = rec.result.get("pipeline", {}).get("stages", [{}])
                first = stages[0].get("name", "?")
                out.append(Entry(at, "stage", f"- -> {first} (created)", request, run_id))
            elif kind == DELIVER_ACTIVITY:
                result = rec.result
                status = result.get("status", "?")
                label = "sent" if status in ("sent", "duplicate") else "not_sent"
                text = f"{result.get('content_id') or request.get('content_id')}: {status}"
                if result.get("reason"):
                    text += f" ({result['reason']})"
                out.append(Entry(at, label, text, {**request, "outcome": result}, run_id))
        elif isinstance(rec, ActivityFailed) and not rec.timed_out and rec.activity is not None:
            if rec.activity.name == DELIVER_ACTIVITY:
                request = rec.activity.input
                text = f"{request.get('content_id')}: failed ({rec.error_type or rec.message})"
                out.append(Entry(at, "not_sent", text, request, run_id))
        elif isinstance(rec, TimerStarted):
            label = rec.summary or rec.timer_id
            if rec.name.startswith(CHANNEL_TIMER_PREFIX):
                step = rec.name.removeprefix(CHANNEL_TIMER_PREFIX).rsplit(":", 1)[0]
                label = f"waiting for a channel [{rec.namespace}/{step}], at most"
            out.append(Entry(at, "wait", f"{label} for {human_duration(rec.delay)}", {}, run_id))
        elif isinstance(rec, LocalActivityRecorded) and rec.name == RECORD_SEGMENTS_ACTIVITY:
            # "+trial-pricing, -vip-list": entered and left, as the workflow decided.
            out.append(Entry(at, "segment", f"segments {rec.summary}", {}, run_id))
        elif isinstance(rec, UpdateAccepted):
            req = rec.request
            out.append(Entry(at, "enrol", f"enrol requested: {req.get('journey')}", req, run_id))
    return out


def ignored_entries(
    records: Iterable[Record], view: ContactView | None = None, *, closed: bool = False
) -> list[Entry]:
    """One ``ignored`` line per event an enrolment ignored (``engine.temporal.ignored``):
    it arrived while the journey was elsewhere, and a later ``wait_for`` waits for it in
    vain."""
    return [
        Entry(i.at, "ignored", i.text(), {**i.to_dict(), "at": i.at.isoformat()})
        for i in ignored_events(records, view, closed=closed)
    ]


async def contact_timeline(
    client: Client, contact_id: str, *, view: ContactView | None = None
) -> list[Entry]:
    """Every entry of the contact's story, oldest first, across all runs, with the events
    its journeys ignored where they arrived. ``view``: the live state, which settles
    whether the newest events were applied yet."""
    description = await client.get_workflow_handle(contact_workflow_id(contact_id)).describe()
    history = await contact_history(client, contact_id, newest_run_id=description.run_id)
    story = [entry for run in history.runs for entry in entries_from_records(run.records)]
    closed = description.status != WorkflowExecutionStatus.RUNNING
    ignored = ignored_entries(history.records(), view, closed=closed)
    # Each ignored line goes after everything that happened by its arrival.
    for entry in ignored:
        where = next((n for n, e in enumerate(story) if e.at > entry.at), len(story))
        story.insert(where, entry)
    return story


def with_entries(story: list[Entry], extra: Iterable[Entry]) -> list[Entry]:
    """``story`` with ``extra`` entries (sends no workflow history holds: a broadcast's,
    read from the delivery records) placed in time order."""
    merged = list(story)
    for entry in sorted(extra, key=lambda e: e.at):
        where = next((n for n, e in enumerate(merged) if e.at > entry.at), len(merged))
        merged.insert(where, entry)
    return merged


def broadcast_entry(
    at: datetime, broadcast: str, channel: str, content_id: str | None, status: str, arm: str
) -> Entry:
    """A broadcast's send to the contact: ``broadcast`` lines, from the delivery row."""
    what = content_id or "content"
    where = f"[broadcast {broadcast}" + (f", arm {arm}" if arm and arm != "all" else "") + "]"
    return Entry(
        at,
        "broadcast",
        f"{what} via {channel} {where}: {status}",
        {"broadcast": broadcast, "channel": channel, "content_id": content_id, "status": status},
    )
