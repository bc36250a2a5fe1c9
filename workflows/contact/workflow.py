"""The contact entity workflow: one per contact, id ``contact-<id>``, for the contact's life.

It owns the live state (stage, score, grade, consent, active journey cursors) and turns
what the pure core decides into durable effects:

- an ``event`` signal is applied with ``stagecoach.engine.domain.contact.observe`` (score, grade,
consent,
  stage rules), fed to the active journeys, and may enrol journeys entered on it;
- a stage change is recorded by an activity, updates the search attributes, and enrols
  the journeys entered on the new stage;
- each journey enrolment runs the pure interpreter (``stagecoach.engine.domain.journeys.step``) on
its
  pinned spec; its commands become timers and activities, their results are fed back;
- sends go through the one delivery activity, after quiet hours (a wait here, in the
  contact's zone) and with consent, suppression and the frequency cap checked there;
  a send the contact has no usable channel for yet does what its journey declares
  (``NoChannel``): wait for one (sent when an event brings it), skip, or exit;
- a new contact applies its opening event and everything delivered with it before its
  first journeys start (``ContactInput.applies_opening_first``).

Everything that decides is pure and lives in ``engine``; this module only orchestrates,
so it stays deterministic: time from ``workflow.now()``, no I/O, no randomness.

This module holds the handlers and the run loop; the journey driver (``journeys``), the
sales hand-off (``sales``) and the referral rewards (``referrals``) are mixins of the
one workflow class, over the state and helpers they share (``core``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import replace
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from datetime import datetime

    from stagecoach.engine.domain import contact as model
    from stagecoach.engine.domain.conditions import EventRecord
    from stagecoach.engine.domain.journeys import EventReceived
    from stagecoach.engine.domain.pipeline import Transition, parsed_pipeline
    from stagecoach.engine.domain.policy import SendPolicy
    from stagecoach.engine.domain.scoring import shown_score
    from stagecoach.engine.domain.segments import SYSTEM_EVENTS
    from stagecoach.engine.protocol import (
        CONTACT_WORKFLOW,
        ENROL_UPDATE,
        EVENT_SIGNAL,
        EVENTS_SIGNAL,
        MERGED_SIGNAL,
        OPEN_ACTIVITY,
        RECORD_TRANSITION_ACTIVITY,
        REFERRAL_TIMERS,
        SALES_TIMERS,
        SEGMENT_TIMERS,
        STATE_QUERY,
    )
    from stagecoach.engine.protocol.messages import (
        ContactInput,
        ContactView,
        Definitions,
        EnrolRequest,
        EnrolResult,
        EventBatch,
        EventMessage,
        Merged,
        OpenRequest,
        TransitionRecord,
    )

from stagecoach.workflows.contact.journeys import JourneyDriver
from stagecoach.workflows.contact.referrals import REFUND_CANCELS_REWARD, ReferralRewards
from stagecoach.workflows.contact.sales import SALES_FEEDBACK, SalesHandoff
from stagecoach.workflows.contact.segments import SegmentMembership


@workflow.defn(name=CONTACT_WORKFLOW)
class ContactWorkflow(JourneyDriver, SalesHandoff, ReferralRewards, SegmentMembership):
    """The contact's whole story, as one durable entity."""

    @workflow.init
    def __init__(self, inp: ContactInput) -> None:
        self._contact_id = inp.contact_id
        self._rehearsal = inp.rehearsal
        self._records_enrolments = inp.records_enrolments
        self._records_in_background = inp.records_in_background
        self._applies_opening_first = inp.applies_opening_first
        self._opens_in_order = inp.opens_in_order
        self._waits_for_channel = inp.waits_for_channel
        self._recording = []
        self._inbox = deque(inp.pending)
        self._fired = deque()
        self._enrol_queue = deque()
        self._state = None
        self._definitions = inp.definitions
        self._active = {}
        self._specs = {}
        self._timers = {}
        self._lock = asyncio.Lock()
        self._run_events = 0
        self._merged_into = None
        self._handoff = inp.handoff
        self._score_as_shown = inp.score_as_shown
        self._segment_specs_of = None
        self._segment_due = None
        self._segment_batches = {}
        self._segment_recording = None

    # --- handlers ----------------------------------------------------------------------

    @workflow.signal(name=EVENT_SIGNAL)
    def event(self, message: EventMessage) -> None:
        """Behaviour arrives here; it is applied in order by the main loop."""
        self._inbox.append(message)

    @workflow.signal(name=EVENTS_SIGNAL)
    def events(self, batch: EventBatch) -> None:
        """Several events at once (the outbox forwarder batches a contact's backlog)."""
        self._inbox.extend(batch.events)

    @workflow.signal(name=MERGED_SIGNAL)
    def merged(self, merged: Merged) -> None:
        """This contact turned out to be another: end, pointing to the survivor (which
        has been sent this contact's events)."""
        self._merged_into = merged.into

    @workflow.update(name=ENROL_UPDATE)
    async def enrol(self, request: EnrolRequest) -> EnrolResult:
        """Enrol now and say how it went (used by callers that need an answer).

        Events signalled before the update are applied first, so an identify sent just
        before an enrolment is what the journey's first step sees."""
        await workflow.wait_condition(lambda: self._state is not None and not self._inbox)
        return await self._enrol_now(request)

    @enrol.validator
    def _validate_enrol(self, request: EnrolRequest) -> None:
        problem = request.problem()
        if problem is not None:
            raise ValueError(problem)

    async def _enrol_now(self, request: EnrolRequest, *, at_start: bool = False) -> EnrolResult:
        async with self._lock:
            if request.event is not None:
                await self._on_event(request.event)
            result = await self._try_enrol(
                request.journey, request.time_scale, reload_definitions=not at_start
            )
            await self._drain_enrolments()
            self._sync_search_attributes()
            return result

    @workflow.query(name=STATE_QUERY)
    def state(self) -> ContactView:
        """The live state, for ``stagecoach contact show`` and the API."""
        state = self._require_state()
        return ContactView(
            contact_id=state.contact_id,
            stage=state.stage,
            score=shown_score(self._facts(workflow.now()).score),
            grade=state.grade,
            journeys=[
                {
                    "journey": name,
                    "version": aj.cursor.get("version", ""),
                    "enrolment": aj.cursor.get("enrolment", 0),
                    "step": aj.cursor.get("step_id", ""),
                    "waiting": aj.cursor.get("waiting"),
                    "time_scale": aj.time_scale,
                    "trail": list(aj.trail),
                }
                for name, aj in sorted(self._active.items())
            ],
            state=state.to_dict(),
            run_events=self._run_events,
        )

    # --- the main loop -----------------------------------------------------------------

    @workflow.run
    async def run(self, inp: ContactInput) -> str | None:
        """Runs for the contact's life; returns only when merged, with the survivor's id."""
        now = workflow.now()
        if inp.state is None and not (inp.opened and self._definitions is not None):
            # A new contact nobody opened: one activity loads the definitions and records
            # the contact at the first stage.
            self._definitions = await self._open(now)
        elif self._definitions is None:
            self._definitions = await self._load_definitions()
        self._pipeline = parsed_pipeline(self._definitions.pipeline)
        self._policy = SendPolicy.from_dict(self._definitions.policy)
        if inp.state is not None:
            self._state = model.ContactState.from_dict(inp.state)
            for aj in inp.journeys:
                self._restore(aj)
            self._arm_sla()
            if self._segments_defined():
                # A new run: the previous run's flip timer went with it.
                self._arm_segment_timer(self._segment_specs()[0])
        else:
            self._state = replace(
                model.new_contact(self._contact_id, self._pipeline, now), transitions=1
            )
            self._enrol_entered_on(self._state.stage)
            if inp.enrol is not None and inp.enrol.problem() is None:
                await self._enrol_now(inp.enrol, at_start=True)
            elif self._applies_opening_first and self._inbox:
                await self._apply_opening(inp)
        while True:
            await workflow.wait_condition(
                lambda: bool(self._inbox or self._fired or self._merged_into)
            )
            if self._merged_into is not None:
                await workflow.wait_condition(workflow.all_handlers_finished)
                for name in list(self._active):
                    await self._finish(name, f"merged into {self._merged_into}", status="exited")
                await self._records_written()
                workflow.logger.info("contact merged into %s", self._merged_into)
                return self._merged_into
            async with self._lock:
                while (self._inbox or self._fired) and not self._run_full(inp):
                    if self._fired:
                        journey, timer_id = self._fired.popleft()
                        await self._on_timer(journey, timer_id)
                    else:
                        await self._on_event(self._inbox.popleft())
                    await self._drain_enrolments()
                self._sync_search_attributes()
            if self._run_full(inp):
                await workflow.wait_condition(workflow.all_handlers_finished)
                await self._records_written()
                if self._fired:
                    continue  # a timer fired while handlers finished: apply it first
                workflow.continue_as_new(
                    ContactInput.current(
                        self._contact_id,
                        state=self._require_state().to_dict(),
                        journeys=list(self._active.values()),
                        pending=list(self._inbox),
                        definitions=self._definitions,
                        max_events_per_run=inp.max_events_per_run,
                        rehearsal=inp.rehearsal,
                        handoff=self._handoff,
                    )
                )

    def _run_full(self, inp: ContactInput) -> bool:
        """Time to continue as new: the SDK says so, or this run applied enough events.
        Unapplied events travel to the next run as ``pending``, in order."""
        return (
            workflow.info().is_continue_as_new_suggested()
            or self._run_events >= inp.max_events_per_run
        )

    async def _apply_opening(self, inp: ContactInput) -> None:
        """A new contact's opening event and everything delivered with it (the rest of
        its batch, and what arrived while it was opened), applied before any journey
        starts: the first stage's journeys start, and send, with the identity and
        consent those events brought. Then they hear the events, so a whitepaper
        download that created the contact still counts as interest."""
        async with self._lock:
            due = [name for name, _ in self._enrol_queue]
            opening: list[EventRecord] = []
            # How many opening events each queued enrolment had seen when it was queued.
            seen: dict[str, int] = dict.fromkeys(due, 0)
            while self._inbox and not self._run_full(inp):
                record = await self._on_event(self._inbox.popleft(), opening=True)
                if record is not None:
                    opening.append(record)
                for name, _ in self._enrol_queue:
                    seen.setdefault(name, len(opening))
            if self._opens_in_order:
                behind = {n: c for n, c in seen.items() if n not in due and c < len(opening)}
                await self._enrol_opened(opening, behind)
            await self._drain_enrolments()
            now = workflow.now()
            for record in opening:
                for name in due:
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
            await self._drain_enrolments()
            self._sync_search_attributes()

    async def _enrol_opened(self, opening: list[EventRecord], seen: dict[str, int]) -> None:
        """Enrol what the opening events queued, each journey as if its events had come
        one at a time: it starts on the events up to the one that enrolled it (so
        ``since="enrolment"`` counts from there), then hears the ones behind it."""
        while self._enrol_queue:
            name, scale = self._enrol_queue.popleft()
            first = seen.get(name)
            if first is None:
                await self._try_enrol(name, scale)
                continue
            result = await self._try_enrol(name, scale, unseen=len(opening) - first)
            aj = self._active.get(name)
            if not result.accepted or aj is None:
                continue
            for n in range(first, len(opening)):
                if name not in self._active:
                    break
                now = workflow.now()
                facts = self._facts(now, aj)
                kept = max(0, len(facts.events) - (len(opening) - n - 1))
                await self._drive(
                    name,
                    EventReceived(
                        now=self._journey_now(aj, now),
                        facts=replace(facts, events=facts.events[:kept]),
                        event=self._journey_event(aj, opening[n]),
                    ),
                )

    async def _on_event(
        self, message: EventMessage, *, opening: bool = False
    ) -> EventRecord | None:
        """Apply one event; ``opening``: one of a new contact's opening events, applied
        before its journeys start (``_apply_opening``). The event applied, or None."""
        state = self._require_state()
        now = workflow.now()
        problem = message.problem()
        if problem is not None:
            # Refused at the gateway; one that slipped past is dropped, not retried forever.
            workflow.logger.error("event %r dropped: %s", message.message_id, problem)
            return None
        record = EventRecord(message.type, message.occurred_at, dict(message.properties))
        self._end_episode_below_bar(now)  # a dip since the last event ends it too
        seen = model.observe(
            state,
            self._pipeline,
            message_id=message.message_id,
            event=record,
            traits=message.traits,
            now=now,
            source=message.source,
            as_shown=self._score_as_shown,
        )
        if seen.duplicate:
            return None
        self._run_events += 1
        self._state = seen.state
        if record.type in SYSTEM_EVENTS:
            await self._adopt_segment_event(record)
            return record
        if not opening:
            # Enrolments already due (the first stage's journeys, when this event created
            # the contact, in a run started before ``applies_opening_first``) start with
            # the event's traits but before its stage move, and then hear the event
            # itself: a whitepaper download that created the contact counts as interest.
            await self._drain_enrolments()
        listening = list(self._active)
        if seen.transition is not None:
            await self._record_transition(seen.transition)
        # Segments are decided on the state this event made, before journeys act on it
        # (their sends take time), so membership is as fresh as the event.
        await self._update_segments(f"{record.type} event")
        for name in listening:
            aj = self._active.get(name)
            if aj is not None:
                jnow = self._journey_now(aj, now)
                await self._drive(
                    name,
                    EventReceived(
                        now=jnow, facts=self._facts(now, aj), event=self._journey_event(aj, record)
                    ),
                )
        await self._channels_ready()
        decision = SALES_FEEDBACK.get(record.type)
        if decision is not None:
            await self._on_feedback(decision, record)
        if (
            record.type == "order.refunded"
            and state.attributes.get("referred_by")
            and workflow.patched(REFUND_CANCELS_REWARD)
        ):
            await self._refunded(record)
        if self._rehearsal:
            return record  # a rehearsal contact is only in the journeys it was enrolled in
        for name, raw in sorted(self._published().items()):
            if name not in self._active and self._spec(raw).entered_by_event(record):
                self._enrol_queue.append((name, 1.0))
        self._end_episode_below_bar(now)
        if self._handoff is None and self._qualifies(now):
            await self._open_handoff("mql", journey="", step_id="mql")
        return record

    async def _on_timer(self, journey: str, timer_id: str) -> None:
        self._timers.pop((journey, timer_id), None)
        if journey == SALES_TIMERS:
            await self._on_sla(timer_id)
        elif journey == REFERRAL_TIMERS:
            await self._release_rewards()
        elif journey == SEGMENT_TIMERS:
            await self._on_segment_timer()
        else:
            await self._on_journey_timer(journey, timer_id)
            # A send or an ended enrolment may change received()/in_journey() answers.
            await self._update_segments(f"journey {journey}")

    async def _record_transition(self, transition: Transition) -> None:
        state = self._require_state()
        if transition.from_stage:
            state = model.enter_stage(state, transition)
        else:
            state = replace(state, transitions=state.transitions + 1)
        self._state = state
        await workflow.execute_activity(
            RECORD_TRANSITION_ACTIVITY,
            TransitionRecord(
                key=f"{self._contact_id}:{state.transitions}",
                contact_id=self._contact_id,
                transition=transition.to_dict(),
                contact={
                    "stage": state.stage,
                    "locale": state.locale,
                    "timezone": state.timezone,
                    "traits": dict(state.attributes),
                },
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
            summary=f"{transition.from_stage or '-'} -> {transition.to_stage}",
        )
        self._enrol_entered_on(transition.to_stage)
        if transition.to_stage == "customer" and state.attributes.get("referred_by"):
            await self._referral_converted()

    async def _open(self, now: datetime) -> Definitions:
        first = self._inbox[0] if self._inbox else None
        definitions: Definitions = await workflow.execute_activity(
            OPEN_ACTIVITY,
            OpenRequest(
                contact_id=self._contact_id,
                at=now,
                trigger_event_type=first.type if first else None,
                trigger_message_id=first.message_id if first else None,
                rehearsal=self._rehearsal,
            ),
            result_type=Definitions,
            start_to_close_timeout=timedelta(seconds=30),
            summary="new contact",
        )
        return definitions
