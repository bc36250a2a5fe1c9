"""Segment membership, decided where the deciding input lands.

After each input the contact workflow applies (an event, a timer, an enrolment), the
published segments are decided again from the live state, purely
(``stagecoach.engine.domain.segments.decide``). Nothing is spent unless an answer flips:

- a flip is recorded by one local activity (all the flips of one input together, written
  in the background while the workflow goes on, one batch after the other), and shown
  to journeys as the event ``segment.entered`` / ``segment.exited``: journeys entered
  on it enrol (under their re-entry policy), waits on it end, exits on it exit;
- a segment whose answer can change with time alone ("no visit in 30 days") gets one
  timer, at the earliest such moment (``next_due``). The timer is moved earlier when an
  input brings the moment closer, and left alone when the moment moves later: it then
  fires early, finds nothing changed, and is set again. No polling, no scan;
- manual lists and backfills decide elsewhere; their decisions arrive as the events
  ``segment.list_added``/``segment.list_removed``/``segment.membership`` and are adopted
  as they stand.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from datetime import datetime

    from stagecoach.engine.domain import contact as model
    from stagecoach.engine.domain.conditions import EventRecord
    from stagecoach.engine.domain.journeys import EventReceived
    from stagecoach.engine.domain.segments import (
        LIST_ADDED,
        LIST_EVENTS,
        MANUAL_VERSION,
        MEMBERSHIP,
        Change,
        Decision,
        SegmentSpec,
        adopt,
        decide,
        evaluation_order,
        next_due,
        transition_event,
    )
    from stagecoach.engine.protocol import (
        RECORD_SEGMENTS_ACTIVITY,
        SEGMENT_FLIP_TIMER,
        SEGMENT_TIMERS,
    )
    from stagecoach.engine.protocol.messages import SegmentChanges

from stagecoach.workflows.contact.core import ContactCore


class SegmentMembership(ContactCore):
    """Decides the contact's segments and acts on the flips."""

    _segment_specs_of: tuple[str, dict[str, SegmentSpec], list[str]] | None
    _segment_due: datetime | None
    _segment_batches: dict[datetime, int]
    _segment_recording: workflow.ActivityHandle[None] | None

    def _segment_specs(self) -> tuple[dict[str, SegmentSpec], list[str]]:
        """The published specs (parsed once per set of versions) in evaluation order."""
        raw = self._definitions.segments if self._definitions is not None else {}
        key = ",".join(f"{name}={spec.get('version', '')}" for name, spec in sorted(raw.items()))
        cached = self._segment_specs_of
        if cached is None or cached[0] != key:
            specs = {name: SegmentSpec.from_dict(spec) for name, spec in raw.items()}
            cached = (key, specs, evaluation_order(specs))
            self._segment_specs_of = cached
        return cached[1], cached[2]

    def _segments_defined(self) -> bool:
        return bool(self._definitions is not None and self._definitions.segments) or bool(
            self._state is not None and self._state.segments
        )

    async def _update_segments(self, reason: str) -> None:
        """Decide every computed segment again after an input; act on what flipped."""
        if self._rehearsal or not self._segments_defined():
            return
        specs, order = self._segment_specs()
        state = self._require_state()
        now = workflow.now()
        decision = decide(specs, self._facts(now), state.segments, reason=reason, order=order)
        await self._apply_decision(decision, source="workflow")
        self._arm_segment_timer(specs)

    async def _adopt_segment_event(self, record: EventRecord) -> None:
        """A manual list change or a backfill's decision, taken as it stands."""
        if self._rehearsal:
            return
        props = record.properties
        segment = str(props.get("segment", ""))
        specs, _ = self._segment_specs()
        if segment and segment not in specs:
            # Published after this workflow loaded its definitions (a backfill of a new
            # segment, an upload to a new list): load them again before deciding.
            self._definitions = await self._load_definitions()
            specs, _ = self._segment_specs()
        spec = specs.get(segment)
        if not segment or spec is None:
            workflow.logger.warning("segment event for unpublished segment %r ignored", segment)
            return
        state = self._require_state()
        now = workflow.now()
        if record.type in LIST_EVENTS:
            if not spec.manual:
                workflow.logger.warning("list change for computed segment %r ignored", segment)
                return
            actor = str(props.get("actor", "") or "")
            member = record.type == LIST_ADDED
            decision = adopt(
                state.segments,
                segment=segment,
                version=MANUAL_VERSION,
                member=member,
                at=now,
                reason=f"{'added to' if member else 'removed from'} the list"
                + (f" by {actor}" if actor else ""),
            )
            await self._apply_decision(decision, source="list", actor=actor or None)
        elif record.type == MEMBERSHIP:
            decision = adopt(
                state.segments,
                segment=segment,
                version=str(props.get("version", spec.version)),
                member=bool(props.get("member")),
                at=now,
                reason=str(props.get("reason") or "backfill of a new version"),
            )
            # The backfill wrote its rows: only the workflow's own view and journeys move.
            await self._apply_decision(decision, source="backfill", record=False)

    async def _apply_decision(
        self,
        decision: Decision,
        *,
        source: str,
        actor: str | None = None,
        record: bool = True,
    ) -> None:
        state = self._require_state()
        if dict(decision.members) != dict(state.segments):
            self._state = model.with_segments(state, decision.members)
        if not decision.changes:
            return
        if record:
            changes = [
                {**c.to_dict(), **({"actor": actor} if actor else {})} for c in decision.changes
            ]
            previous = self._segment_recording
            if previous is not None and not previous.done():
                await previous  # batches are written in order: an exit never precedes its entry
            # A local activity: it runs in this worker at once (no round trip through the
            # server's task queue), and the writes are idempotent by key if it is retried.
            recording = workflow.start_local_activity(
                RECORD_SEGMENTS_ACTIVITY,
                SegmentChanges(
                    key=f"{self._contact_id}:{self._segment_key(decision.changes)}",
                    contact_id=self._contact_id,
                    changes=changes,
                    source=source,
                ),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
                summary=", ".join(
                    f"{'+' if c.entered else '-'}{c.segment}" for c in decision.changes
                ),
            )
            # Written in the background: journeys hear the flip now, and a run ends only
            # after its records (``_records_written``), as enrolment records do.
            self._recording = [*(r for r in self._recording if not r.done()), recording]
            self._segment_recording = recording
        await self._show_journeys(decision.changes)

    def _segment_key(self, changes: tuple[Change, ...]) -> str:
        """A key for one batch of changes, the same on every retry and replay: the
        instant of the decision and how many batches this run recorded at it (several
        inputs of one workflow task share an instant)."""
        at = changes[0].at
        n = self._segment_batches.get(at, 0) + 1
        self._segment_batches = {at: n}  # only the current instant can repeat
        return f"{at.isoformat()}:{n}"

    async def _show_journeys(self, changes: tuple[Change, ...]) -> None:
        """Journeys hear each flip as an event: waits end, exits exit, entries enrol."""
        now = workflow.now()
        for change in changes:
            kind, props = transition_event(change)
            record = EventRecord(kind, now, props)
            for name in list(self._active):
                aj = self._active.get(name)
                if aj is not None:
                    await self._drive(
                        name,
                        EventReceived(
                            now=self._journey_now(aj, now),
                            facts=self._facts(now, aj),
                            event=self._journey_event(aj, record),
                        ),
                    )
            for name, raw in sorted(self._published().items()):
                queued = any(n == name for n, _ in self._enrol_queue)
                fresh = name not in self._active and not queued
                if fresh and self._spec(raw).entered_by_event(record):
                    self._enrol_queue.append((name, 1.0))

    def _arm_segment_timer(self, specs: dict[str, SegmentSpec]) -> None:
        due = next_due(specs, self._facts(workflow.now()))
        armed = self._segment_due
        if due is None or (armed is not None and armed <= due and armed > workflow.now()):
            return  # nothing to wait for, or the armed timer comes first (it re-arms then)
        self._segment_due = due
        self._arm(SEGMENT_TIMERS, SEGMENT_FLIP_TIMER, due - workflow.now())

    async def _on_segment_timer(self) -> None:
        self._segment_due = None
        await self._update_segments("time: a condition came due")


__all__ = ["SegmentMembership"]
