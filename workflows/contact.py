"""The contact entity workflow: one per contact, id ``contact-<id>``, for the contact's life.

It owns the live state (stage, score, grade, consent, active journey cursors) and turns
what the pure core decides into durable effects:

- an ``event`` signal is applied with ``engine.contact.observe`` (score, grade, consent,
  stage rules), fed to the active journeys, and may enrol journeys entered on it;
- a stage change is recorded by an activity, updates the search attributes, and enrols
  the journeys entered on the new stage;
- each journey enrolment runs the pure interpreter (``engine.journeys.step``) on its
  pinned spec; its commands become timers and activities, their results are fed back;
- sends go through the one delivery activity, after quiet hours (a wait here, in the
  contact's zone) and with consent, suppression and the frequency cap checked there;
  a send the contact has no usable channel for yet does what its journey declares
  (``NoChannel``): wait for one (sent when an event brings it), skip, or exit;
- a new contact applies its opening event and everything delivered with it before its
  first journeys start (``ContactInput.applies_opening_first``).

Everything that decides is pure and lives in ``engine``; this module only orchestrates,
so it stays deterministic: time from ``workflow.now()``, no I/O, no randomness.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import replace
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from datetime import datetime

    from engine import contact as model
    from engine.conditions import EventRecord, Facts
    from engine.journeys import (
        AddTag,
        ChangeStage,
        ChannelReady,
        Command,
        Cursor,
        Deliver,
        DeliveryResult,
        Enrol,
        EventReceived,
        HandOff,
        HandoffResult,
        Input,
        JourneyError,
        JourneySpec,
        NextBestItem,
        SetAttribute,
        Start,
        StartTimer,
        TimerFired,
        can_enrol,
        parsed_spec,
        step_traced,
    )
    from engine.journeys import CancelTimer as CancelTimerCommand
    from engine.messages import (
        ActiveJourney,
        ContactInput,
        ContactView,
        ConversionRequest,
        Definitions,
        DeliverOutcome,
        DeliverRequest,
        EnrolmentRecord,
        EnrolRequest,
        EnrolResult,
        EventBatch,
        EventMessage,
        HandOffOutcome,
        HandOffRequest,
        Merged,
        OpenRequest,
        RewardDecision,
        SlaRequest,
        TransitionRecord,
    )
    from engine.pipeline import (
        PipelineError,
        Recycle,
        Transition,
        advance_to,
        apply_recycle,
        parsed_pipeline,
    )
    from engine.policy import SendPolicy
    from engine.protocol import (
        CONTACT_WORKFLOW,
        DELIVER_ACTIVITY,
        ENROL_UPDATE,
        EVENT_SIGNAL,
        EVENTS_SIGNAL,
        HAND_OFF_ACTIVITY,
        HANDOFF_SLA_ACTIVITY,
        LOAD_DEFINITIONS_ACTIVITY,
        MERGED_SIGNAL,
        OPEN_ACTIVITY,
        RECORD_CONVERSION_ACTIVITY,
        RECORD_ENROLMENT_ACTIVITY,
        RECORD_TRANSITION_ACTIVITY,
        REFERRAL_TIMERS,
        RELEASE_REWARDS_ACTIVITY,
        REWARD_RELEASE_TIMER,
        SALES_TIMERS,
        SLA_ESCALATION_TIMER,
        SLA_REMINDER_TIMER,
        STATE_QUERY,
        defer_timer,
        is_defer_timer,
        timer_summary,
    )
    from engine.scoring import shown_score
    from engine.search_keys import KEYS

DEFINITIONS_TTL = timedelta(minutes=10)
"""Enrolments reload the published journeys when the snapshot is older than this."""

DELIVERY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
    non_retryable_error_types=["PermanentDeliveryError", "ConsentRevoked"],
)
"""Retryable connector errors back off up to 10 minutes apart, for a day at most."""

HANDOFF_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=10),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=30),
    non_retryable_error_types=["PermanentDeliveryError", "ConsentRevoked"],
)
"""A CRM or webhook receiver may be down for hours (a deploy, an outage): keep trying
for 12 hours, at most 30 minutes apart."""


SALES_FEEDBACK = {
    "sales.accepted": "accepted",
    "sales.rejected": "rejected",
    "sales.converted": "converted",
}
SERVICE_RECOVERY = "service_recovery"
"""The hand-off reason that goes to customer service (a detractor), not to sales."""
HANDOFF_EPISODES = "handoff-episodes"
"""Patch: an accepted or converted hand-off stays the contact's hand-off (its episode)
until the contact drops below the MQL bar; before it, every answer cleared the hand-off
and the still-qualified contact was handed off again at once. A patch rather than an
input gate so that contacts already running get it at their next answer; it is asked
only when sales answer, so its marker and search-attribute upsert are rare."""
SETTLED = ("accepted", "converted")
"""Answers that keep the hand-off's episode open (the stage moves they cause are its own)."""


@workflow.defn(name=CONTACT_WORKFLOW)
class ContactWorkflow:
    """The contact's whole story, as one durable entity."""

    @workflow.init
    def __init__(self, inp: ContactInput) -> None:
        self._contact_id = inp.contact_id
        self._rehearsal = inp.rehearsal
        self._records_enrolments = inp.records_enrolments
        self._records_in_background = inp.records_in_background
        self._applies_opening_first = inp.applies_opening_first
        self._waits_for_channel = inp.waits_for_channel
        self._recording: list[workflow.ActivityHandle[None]] = []
        self._inbox: deque[EventMessage] = deque(inp.pending)
        self._fired: deque[tuple[str, str]] = deque()
        self._enrol_queue: deque[tuple[str, float]] = deque()
        self._state: model.ContactState | None = None
        self._definitions: Definitions | None = inp.definitions
        self._active: dict[str, ActiveJourney] = {}
        self._specs: dict[str, JourneySpec] = {}
        self._timers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._run_events = 0
        self._merged_into: str | None = None
        self._handoff: dict[str, Any] | None = inp.handoff
        self._score_as_shown = inp.score_as_shown

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
            while self._inbox and not self._run_full(inp):
                record = await self._on_event(self._inbox.popleft(), opening=True)
                if record is not None:
                    opening.append(record)
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
        if not opening:
            # Enrolments already due (the first stage's journeys, when this event created
            # the contact, in a run started before ``applies_opening_first``) start with
            # the event's traits but before its stage move, and then hear the event
            # itself: a whitepaper download that created the contact counts as interest.
            await self._drain_enrolments()
        listening = list(self._active)
        if seen.transition is not None:
            await self._record_transition(seen.transition)
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
        if self._rehearsal:
            return record  # a rehearsal contact is only in the journeys it was enrolled in
        for name, raw in sorted(self._published().items()):
            if name not in self._active and self._spec(raw).entered_by_event(record):
                self._enrol_queue.append((name, 1.0))
        self._end_episode_below_bar(now)
        if self._handoff is None and self._qualifies(now):
            await self._open_handoff("mql", journey="", step_id="mql")
        return record

    async def _channels_ready(self) -> None:
        """Sends waiting for a channel go out once the contact has one. Asked each time
        an event changes the contact (its address, consent or preferred channel only
        change that way), never polled; the wait's limit is a durable timer."""
        state = self._require_state()
        now = workflow.now()
        for name, aj in list(self._active.items()):
            waiting = aj.cursor.get("waiting") or {}
            if self._active.get(name) is not aj or waiting.get("kind") != "channel":
                continue
            step = self._spec(aj.spec).step(str(waiting.get("step_id")))
            if _usable(state, str(getattr(step, "channel", "preferred"))) is None:
                continue
            await self._drive(
                name,
                ChannelReady(
                    now=self._journey_now(aj, now), facts=self._facts(now, aj), step_id=step.id
                ),
            )

    async def _on_timer(self, journey: str, timer_id: str) -> None:
        self._timers.pop((journey, timer_id), None)
        if journey == SALES_TIMERS:
            await self._on_sla(timer_id)
            return
        if journey == REFERRAL_TIMERS:
            # The return window is over: release what is due (this reward among them).
            await workflow.execute_activity(
                RELEASE_REWARDS_ACTIVITY,
                workflow.now(),
                start_to_close_timeout=timedelta(seconds=60),
                summary="release referral reward",
            )
            return
        aj = self._active.get(journey)
        if aj is None:
            return
        now = workflow.now()
        if is_defer_timer(timer_id) and aj.deferred is not None:
            command = _deliver_from_dict(aj.deferred)
            aj.deferred, aj.deferred_until = None, None
            result = await self._deliver(journey, aj, command)
            if result is not None:
                await self._drive(journey, result)
            return
        await self._drive(
            journey,
            TimerFired(
                now=self._journey_now(aj, now), facts=self._facts(now, aj), timer_id=timer_id
            ),
        )

    # --- journeys ----------------------------------------------------------------------

    async def _drain_enrolments(self) -> None:
        while self._enrol_queue:
            name, scale = self._enrol_queue.popleft()
            await self._try_enrol(name, scale)

    async def _try_enrol(
        self, name: str, time_scale: float, *, reload_definitions: bool = True
    ) -> EnrolResult:
        state = self._require_state()
        now = workflow.now()
        # An enrolment at start uses the starter's definitions as given: the starter
        # answered from them (see gateway.enrol).
        stale = (
            self._definitions is not None and now - self._definitions.loaded_at > DEFINITIONS_TTL
        )
        if reload_definitions and stale:
            self._definitions = await self._load_definitions()
        raw = self._published().get(name)
        if raw is None:
            return EnrolResult(False, name, reason="no published version of this journey")
        spec = self._spec(raw)
        record = state.journeys.get(name, model.JourneyRecord())
        if not can_enrol(
            spec,
            active=name in self._active,
            previous_enrolments=record.enrolments,
            last_ended_at=record.last_ended_at,
            now=now,
        ):
            return EnrolResult(False, name, reason="active, or refused by the re-entry policy")
        enrolment = record.enrolments + 1
        self._state = model.with_journey(
            state,
            name,
            model.JourneyRecord(
                enrolments=enrolment, active=True, last_ended_at=record.last_ended_at
            ),
        )
        aj = ActiveJourney(spec=raw, cursor={}, time_scale=time_scale, origin=now)
        self._active[name] = aj
        await self._drive(
            name,
            Start(
                now=now,
                facts=self._facts(now, aj),
                contact_id=self._contact_id,
                enrolment=enrolment,
            ),
        )
        return EnrolResult(True, name, enrolment=enrolment, version=spec.version)

    async def _drive(self, name: str, first: Input) -> None:
        """Run one journey's interpreter on ``first`` and on every result it leads to."""
        aj = self._active[name]
        spec = self._spec(aj.spec)
        inputs: deque[Input] = deque([first])
        cursor: Cursor | None = Cursor.from_dict(aj.cursor) if aj.cursor else None
        while inputs and name in self._active:
            try:
                cursor, commands, passages = step_traced(spec, cursor, inputs.popleft())
            except JourneyError as exc:
                # A defect in a spec must not fail workflow tasks forever: leave the journey.
                workflow.logger.error("journey %s stopped: %s", name, exc)
                await self._finish(name, f"runtime_error: {exc}", status="exited")
                return
            aj.cursor = cursor.to_dict()
            at = workflow.now().isoformat()
            aj.trail.extend({**p.to_dict(), "at": at} for p in passages)
            for command in commands:
                follow_up = await self._execute(name, aj, command)
                if follow_up is not None:
                    inputs.append(follow_up)
            if not cursor.active:
                await self._finish(name, cursor.reason or cursor.status, status=cursor.status)
                return

    async def _execute(self, name: str, aj: ActiveJourney, command: Command) -> Input | None:
        now = workflow.now()
        match command:
            case StartTimer(timer_id=timer_id, fire_at=fire_at):
                self._arm(name, timer_id, self._real_delay(aj, fire_at, now))
            case CancelTimerCommand(timer_id=timer_id):
                self._disarm(name, timer_id)
            case Deliver():
                return await self._deliver(name, aj, command)
            case HandOff():
                return await self._hand_off(name, aj, command)
            case ChangeStage(stage=stage, reason=reason):
                state = self._require_state()
                try:
                    moved = advance_to(
                        self._pipeline,
                        state.stage,
                        stage,
                        reason=reason or f"journey {name}",
                        at=now,
                        source=f"journey:{name}",
                    )
                except PipelineError as exc:
                    # Already further along (or off-pipeline): stages only move forward.
                    workflow.logger.info("journey %s: stage %s not applied: %s", name, stage, exc)
                else:
                    await self._record_transition(moved)
            case SetAttribute(name=attr, value=value):
                self._state = model.with_attribute(self._require_state(), attr, value)
            case AddTag(tag=tag):
                self._state = model.with_tag(self._require_state(), tag)
            case Enrol(journey=other):
                self._enrol_queue.append((other, aj.time_scale))
            case _:
                pass  # WaitForEvent, Exit, Completed: the cursor already says it
        return None

    async def _finish(self, name: str, reason: str, *, status: str) -> None:
        aj = self._active.pop(name, None)
        if aj is None:
            return
        cursor = aj.cursor
        for key in [k for k in self._timers if k[0] == name]:
            self._disarm(*key)
        state = self._require_state()
        record = state.journeys.get(name, model.JourneyRecord())
        self._state = model.with_journey(
            state, name, replace(record, active=False, last_ended_at=workflow.now())
        )
        workflow.logger.info("journey %s ended: %s", name, reason)
        if not self._records_enrolments:
            return
        # The enrolment's outcome and trail, for journey analytics: one activity per
        # finished enrolment (sends record the enrolment while it is in flight).
        recording = workflow.start_activity(
            RECORD_ENROLMENT_ACTIVITY,
            EnrolmentRecord(
                contact_id=self._contact_id,
                journey=name,
                version=str(cursor.get("version", "")),
                enrolment=int(cursor.get("enrolment", 1)),
                status=status,
                reason=reason,
                started_at=aj.origin or workflow.now(),
                finished_at=workflow.now(),
                trail=aj.trail,
            ),
            start_to_close_timeout=timedelta(seconds=30),
            summary=f"{name} {status}: {reason}",
        )
        if self._records_in_background:
            self._recording = [*(r for r in self._recording if not r.done()), recording]
        else:
            await recording

    async def _records_written(self) -> None:
        """Wait for the enrolment records still in flight: a run ends only after them."""
        while self._recording:
            await self._recording.pop()

    def _restore(self, aj: ActiveJourney) -> None:
        """Re-arm a carried-over enrolment's timers in a new run."""
        name = str(aj.cursor["journey"])
        self._active[name] = aj
        now = workflow.now()
        waiting = aj.cursor.get("waiting") or {}
        if waiting.get("timer_id") and waiting.get("deadline"):
            deadline = datetime.fromisoformat(waiting["deadline"])
            self._arm(name, waiting["timer_id"], self._real_delay(aj, deadline, now))
        if aj.deferred is not None and aj.deferred_until is not None:
            self._arm(
                name,
                defer_timer(aj.deferred["step_id"]),
                max(aj.deferred_until - now, timedelta(0)),
            )

    # --- effects -----------------------------------------------------------------------

    async def _deliver(
        self, name: str, aj: ActiveJourney, command: Deliver
    ) -> DeliveryResult | None:
        """Send through the delivery activity; ``None`` means deferred (a timer will retry)."""
        state = self._require_state()
        now = workflow.now()
        jnow = self._journey_now(aj, now)
        cursor = aj.cursor

        def result(
            ok: bool,
            error: str | None = None,
            outcome: DeliverOutcome | None = None,
            *,
            no_channel: bool = False,
        ) -> DeliveryResult:
            return DeliveryResult(
                now=self._journey_now(aj, workflow.now()),
                facts=self._facts(workflow.now(), aj),
                step_id=command.step_id,
                ok=ok,
                permanent_error=error,
                content_id=outcome.content_id if outcome else None,
                content_version=outcome.content_version if outcome else None,
                no_channel=no_channel,
            )

        usable = _usable(state, command.channel)
        if usable is None:
            # Not reachable yet: the journey's NoChannel says whether to wait, skip or exit
            # (a run started before ``waits_for_channel`` fails the step, as it did).
            return result(
                False, f"no_address:{command.channel}", no_channel=self._waits_for_channel
            )
        channel, address = usable
        quiet_end = self._policy.quiet_until(jnow, state.timezone)
        if quiet_end is not None:
            self._defer(name, aj, command, self._real_delay(aj, quiet_end, now))
            return None
        request = DeliverRequest(
            contact_id=self._contact_id,
            idempotency_key=f"{self._contact_id}:{command.idempotency_key}",
            journey=name,
            journey_version=str(cursor.get("version", "")),
            step_id=command.step_id,
            enrolment=int(cursor.get("enrolment", 1)),
            channel=channel,
            address=address,
            locale=state.locale or "en",
            content_id=command.content_id,
            selector=command.selector.to_dict() if command.selector else None,
            stage=state.stage,
            attributes=dict(state.attributes),
            received=list(state.received_content),
            consented=state.consented(channel),
            now=jnow,
            time_scale=aj.time_scale,
            rehearsal=self._rehearsal,
            enrolment_started_at=aj.origin,
            trail=list(aj.trail),
        )
        try:
            outcome: DeliverOutcome = await workflow.execute_activity(
                DELIVER_ACTIVITY,
                request,
                result_type=DeliverOutcome,
                start_to_close_timeout=timedelta(seconds=60),
                # The attempt heartbeats all along: one lost with its worker is retried
                # (same idempotency key) within seconds, not at the 60 s above.
                heartbeat_timeout=timedelta(seconds=10),
                schedule_to_close_timeout=timedelta(days=1),
                retry_policy=DELIVERY_RETRY,
                summary=f"{name}/{command.step_id} via {channel}",
            )
        except ActivityError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError):
                return result(False, cause.type or cause.message)
            if isinstance(cause, TimeoutError):
                return result(False, "delivery_timed_out")
            raise
        if outcome.status == "deferred" and outcome.not_before is not None:
            self._defer(name, aj, command, self._real_delay(aj, outcome.not_before, now))
            return None
        if outcome.status == "blocked":
            return result(False, outcome.reason or "blocked", outcome)
        if outcome.content_id:
            self._state = model.with_received(self._require_state(), outcome.content_id)
        return result(True, None, outcome)

    def _defer(self, name: str, aj: ActiveJourney, command: Deliver, delay: timedelta) -> None:
        aj.deferred = _deliver_to_dict(command)
        aj.deferred_until = workflow.now() + delay
        self._arm(name, defer_timer(command.step_id), delay)

    async def _hand_off(self, name: str, aj: ActiveJourney, command: HandOff) -> HandoffResult:
        """A journey's hand-off step: the contact's one hand-off (already open: done)."""
        outcome = None
        if command.reason == SERVICE_RECOVERY:
            # A detractor goes to customer service now, beside any sales hand-off.
            outcome = await self._send_handoff(
                command.reason, journey=name, step_id=command.step_id, time_scale=aj.time_scale
            )
            ok = outcome.ok and outcome.routed
        else:
            if self._handoff is None:
                outcome = await self._open_handoff(
                    command.reason, journey=name, step_id=command.step_id, time_scale=aj.time_scale
                )
            ok = self._handoff is not None
        return HandoffResult(
            now=self._journey_now(aj, workflow.now()),
            facts=self._facts(workflow.now(), aj),
            step_id=command.step_id,
            ok=ok,
            error=None if ok else (outcome.error if outcome else None) or "not routed",
        )

    # --- sales hand-off ----------------------------------------------------------------

    def _qualifies(self, now: datetime) -> bool:
        """MQL now, and not rejected by sales within the cool-down."""
        facts = self._facts(now)
        if not self._pipeline.mql.is_mql(facts):
            return False
        # A pipeline pinned before recycling was declared gets the declaration's defaults.
        recycle = self._pipeline.recycle or Recycle()
        return not recycle.cooling_down(facts.events, now)

    def _end_episode_below_bar(self, now: datetime) -> None:
        """A hand-off sales accepted (or converted) is the contact's until the contact
        is no longer an MQL; then the episode is over and qualifying again is a new one.

        Checked before an event is applied (the score only decays between events, so a
        dip below the bar since the last event shows now) and after it (the event itself
        took points or changed the grade)."""
        handoff = self._handoff
        if handoff is None or handoff.get("status") not in SETTLED:
            return  # unanswered hand-offs stay with sales whatever the score does
        if not self._pipeline.mql.is_mql(self._facts(now)):
            workflow.logger.info(
                "hand-off %s: episode over, the contact is below the MQL bar", handoff["id"]
            )
            self._handoff = None

    async def _open_handoff(
        self, reason: str, *, journey: str, step_id: str, time_scale: float = 1.0
    ) -> HandOffOutcome:
        """Route and send the lead (one activity), then arm the SLA's timers."""
        now = workflow.now()
        outcome = await self._send_handoff(
            reason, journey=journey, step_id=step_id, time_scale=time_scale
        )
        if outcome.ok and outcome.routed:
            self._handoff = {
                "id": outcome.handoff_id or outcome.reference,
                "status": "sent",
                "owner": outcome.owner,
                "opened_at": now.isoformat(),
                "remind_at": outcome.remind_at.isoformat() if outcome.remind_at else None,
                "escalate_at": outcome.escalate_at.isoformat() if outcome.escalate_at else None,
                "reminded": False,
            }
            self._arm_sla()
        return outcome

    async def _send_handoff(
        self, reason: str, *, journey: str, step_id: str, time_scale: float = 1.0
    ) -> HandOffOutcome:
        """The hand-off activity: routes, records and sends; returns who and by when.

        A rehearsal contact's goes to the rehearsal sink, with its SLA on the enrolment's
        scaled clock: only the activity's input says so, so no command changes and
        running histories replay as they ran."""
        state = self._require_state()
        now = workflow.now()
        outcome: HandOffOutcome = await workflow.execute_activity(
            HAND_OFF_ACTIVITY,
            HandOffRequest(
                contact_id=self._contact_id,
                idempotency_key=f"{self._contact_id}:{reason}:{now.isoformat()}",
                journey=journey,
                step_id=step_id,
                reason=reason,
                # The activity routes the lead and builds what sales sees from this, the
                # pipeline and the stored identities and stage history.
                payload={"state": state.to_dict(), "pipeline": self._pipeline.to_dict()},
                now=now,
                rehearsal=self._rehearsal,
                time_scale=time_scale,
            ),
            result_type=HandOffOutcome,
            # A HubSpot hand-off is up to five requests of 10 s each.
            start_to_close_timeout=timedelta(minutes=2),
            schedule_to_close_timeout=timedelta(hours=12),
            retry_policy=HANDOFF_RETRY,
            summary=f"hand-off: {reason}",
        )
        return outcome

    def _arm_sla(self) -> None:
        """Timers for the reminder and the escalation, visible in history."""
        handoff = self._handoff
        if handoff is None:
            return
        now = workflow.now()
        if handoff.get("remind_at") and not handoff.get("reminded"):
            due = datetime.fromisoformat(handoff["remind_at"])
            self._arm(SALES_TIMERS, SLA_REMINDER_TIMER, max(due - now, timedelta(0)))
        elif handoff.get("escalate_at"):
            due = datetime.fromisoformat(handoff["escalate_at"])
            self._arm(SALES_TIMERS, SLA_ESCALATION_TIMER, max(due - now, timedelta(0)))

    async def _on_sla(self, timer_id: str) -> None:
        handoff = self._handoff
        if handoff is None or handoff.get("status") in SETTLED:
            return
        kind = "reminder" if timer_id == SLA_REMINDER_TIMER else "escalation"
        await workflow.execute_activity(
            HANDOFF_SLA_ACTIVITY,
            SlaRequest(
                contact_id=self._contact_id,
                handoff_id=str(handoff["id"]),
                kind=kind,
                rehearsal=self._rehearsal,
            ),
            start_to_close_timeout=timedelta(minutes=2),
            schedule_to_close_timeout=timedelta(hours=12),
            retry_policy=HANDOFF_RETRY,
            summary=f"hand-off {kind}",
        )
        if kind == "reminder":
            handoff["reminded"] = True
            self._arm_sla()  # the escalation's timer
        else:
            handoff["escalate_at"] = None

    async def _on_feedback(self, decision: str, record: EventRecord) -> None:
        """Sales answered: the SLA stops; a rejection recycles the lead to nurture and
        ends the episode, an acceptance or conversion keeps it (the stage moves they cause
        are not a new qualification). Feedback quoting an older hand-off than the open
        one changes nothing here."""
        handoff = self._handoff
        quoted = record.properties.get("handoff_id")
        if handoff is not None and quoted and quoted != handoff.get("id"):
            return
        for timer_id in (SLA_REMINDER_TIMER, SLA_ESCALATION_TIMER):
            self._disarm(SALES_TIMERS, timer_id)
        if handoff is not None and decision in SETTLED and workflow.patched(HANDOFF_EPISODES):
            handoff.update(status=decision, remind_at=None, escalate_at=None)
        else:
            self._handoff = None
        if decision != "rejected":
            return  # accepted and converted move the stage through the pipeline's rules
        state = self._require_state()
        reason = str(record.properties.get("reason") or "rejected by sales")
        try:
            recycled = apply_recycle(
                self._pipeline, state.stage, reason, at=workflow.now(), source="sales"
            )
        except PipelineError as exc:
            workflow.logger.info("rejection not applied as a detour: %s", exc)
            return
        if recycled is not None:
            await self._record_transition(recycled)

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

    async def _referral_converted(self) -> None:
        """A referred contact's first purchase: the referrer may earn a reward, held for
        the return window; a timer releases it."""
        decision: RewardDecision = await workflow.execute_activity(
            RECORD_CONVERSION_ACTIVITY,
            ConversionRequest(contact_id=self._contact_id, at=workflow.now()),
            result_type=RewardDecision,
            start_to_close_timeout=timedelta(seconds=60),
            summary="referral conversion",
        )
        if decision.rewarded and decision.hold_until is not None:
            self._arm(
                REFERRAL_TIMERS,
                REWARD_RELEASE_TIMER,
                max(decision.hold_until - workflow.now(), timedelta(0)),
            )

    def _enrol_entered_on(self, stage: str) -> None:
        """Queue the journeys whose entry is ``stage`` (not for rehearsal contacts)."""
        if self._rehearsal:
            return
        for name, raw in sorted(self._published().items()):
            if name not in self._active and self._spec(raw).entered_by_stage(stage):
                self._enrol_queue.append((name, 1.0))

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

    async def _load_definitions(self) -> Definitions:
        definitions: Definitions = await workflow.execute_activity(
            LOAD_DEFINITIONS_ACTIVITY,
            result_type=Definitions,
            start_to_close_timeout=timedelta(seconds=30),
        )
        self._specs.clear()
        return definitions

    # --- timers, clocks, facts ---------------------------------------------------------

    def _arm(self, journey: str, timer_id: str, delay: timedelta) -> None:
        key = (journey, timer_id)
        self._disarm(journey, timer_id)
        if delay <= timedelta(0):
            self._fired.append(key)
            return
        self._timers[key] = asyncio.create_task(self._sleep(key, delay))

    async def _sleep(self, key: tuple[str, str], delay: timedelta) -> None:
        await workflow.sleep(delay, summary=timer_summary(*key))
        self._fired.append(key)

    def _disarm(self, journey: str, timer_id: str) -> None:
        task = self._timers.pop((journey, timer_id), None)
        if task is not None:
            task.cancel()

    def _journey_now(self, aj: ActiveJourney, now: datetime) -> datetime:
        """A rehearsal's clock runs ``1/time_scale`` times faster from its enrolment."""
        if aj.time_scale == 1.0 or aj.origin is None:
            return now
        return aj.origin + (now - aj.origin) / aj.time_scale

    def _journey_event(self, aj: ActiveJourney, record: EventRecord) -> EventRecord:
        if aj.time_scale == 1.0 or aj.origin is None or record.at < aj.origin:
            return record
        return replace(record, at=self._journey_now(aj, record.at))

    def _real_delay(self, aj: ActiveJourney, fire_at: datetime, now: datetime) -> timedelta:
        return max(fire_at - self._journey_now(aj, now), timedelta(0)) * aj.time_scale

    def _facts(self, now: datetime, aj: ActiveJourney | None = None) -> Facts:
        facts = model.facts(
            self._require_state(), self._pipeline, now, as_shown=self._score_as_shown
        )
        if aj is None or aj.time_scale == 1.0:
            return facts
        return replace(
            facts,
            now=self._journey_now(aj, now),
            events=tuple(self._journey_event(aj, e) for e in facts.events),
        )

    # --- bookkeeping -------------------------------------------------------------------

    def _published(self) -> dict[str, dict[str, Any]]:
        return self._definitions.journeys if self._definitions else {}

    def _spec(self, raw: dict[str, Any]) -> JourneySpec:
        version = str(raw.get("version", ""))
        spec = self._specs.get(version)
        if spec is None:
            spec = self._specs[version] = parsed_spec(raw)
        return spec

    def _require_state(self) -> model.ContactState:
        if self._state is None:
            raise ApplicationError("contact state used before the workflow started")
        return self._state

    def _sync_search_attributes(self) -> None:
        """Upsert only what differs from the workflow's current search attributes (as set
        at start or by the last upsert): each upsert is a billed action."""
        wanted = model.search_values(self._require_state(), self._active)
        current = workflow.info().typed_search_attributes
        updates: list[SearchAttributeUpdate[Any]] = []
        for name, value in wanted.items():
            key = KEYS[name]
            have = current.get(key)
            if have == value or (have is None and value in ("", [], 0.0)):
                continue  # unset reads as empty: no need to write an empty value
            updates.append(key.value_set(value))
        if updates:
            workflow.upsert_search_attributes(updates)


def _usable(state: model.ContactState, wanted: str) -> tuple[str, str] | None:
    """The channel and address a send on ``wanted`` goes to now, or None: for
    ``preferred``, a channel with an address and consent; otherwise its address."""
    channel = state.preferred_channel() if wanted == "preferred" else wanted
    address = state.address(channel) if channel else None
    if channel is None or address is None:
        return None
    return channel, address


def _deliver_to_dict(command: Deliver) -> dict[str, Any]:
    return {
        "step_id": command.step_id,
        "channel": command.channel,
        "content_id": command.content_id,
        "selector": command.selector.to_dict() if command.selector else None,
        "idempotency_key": command.idempotency_key,
    }


def _deliver_from_dict(data: dict[str, Any]) -> Deliver:
    selector = data.get("selector")
    return Deliver(
        step_id=data["step_id"],
        channel=data["channel"],
        content_id=data.get("content_id"),
        selector=NextBestItem.from_dict(selector) if selector else None,
        idempotency_key=data["idempotency_key"],
    )
