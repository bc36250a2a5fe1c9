"""The journey driver: enrolments, the pure interpreter on pinned specs, and its effects.

Each enrolment runs ``stagecoach.engine.domain.journeys.step`` on its pinned spec; its commands
become timers and activities here, and their results are fed back. Sends go through the one
delivery activity, after quiet hours (a wait here, in the contact's zone); a send the
contact has no usable channel for yet does what its journey declares (``NoChannel``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from datetime import datetime

    from stagecoach.engine.domain import contact as model
    from stagecoach.engine.domain.journeys import (
        AddTag,
        ChangeStage,
        ChannelReady,
        Command,
        Cursor,
        Deliver,
        DeliveryResult,
        Enrol,
        HandOff,
        Input,
        JourneyError,
        NextBestItem,
        SetAttribute,
        Start,
        StartTimer,
        TimerFired,
        can_enrol,
        step_traced,
    )
    from stagecoach.engine.domain.journeys import CancelTimer as CancelTimerCommand
    from stagecoach.engine.domain.pipeline import PipelineError, advance_to
    from stagecoach.engine.protocol import (
        DELIVER_ACTIVITY,
        RECORD_ENROLMENT_ACTIVITY,
        defer_timer,
        is_defer_timer,
    )
    from stagecoach.engine.protocol.messages import (
        ActiveJourney,
        DeliverOutcome,
        DeliverRequest,
        EnrolmentRecord,
        EnrolResult,
    )

from stagecoach.workflows.contact.core import ContactCore

DEFINITIONS_TTL = timedelta(minutes=10)
"""Enrolments reload the published journeys when the snapshot is older than this."""

DELIVERY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
    non_retryable_error_types=["PermanentDeliveryError", "ConsentRevoked"],
)
"""Retryable connector errors back off up to 10 minutes apart, for a day at most."""


class JourneyDriver(ContactCore):
    """Enrolment queue, interpreter runs, timers and sends of the contact's journeys."""

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

    async def _on_journey_timer(self, journey: str, timer_id: str) -> None:
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
        self, name: str, time_scale: float, *, reload_definitions: bool = True, unseen: int = 0
    ) -> EnrolResult:
        """Enrol in journey ``name`` now, if its re-entry policy allows. ``unseen``: how
        many of the newest events came after the one that enrolled it (a new contact's
        opening batch); the journey starts without them and hears them afterwards."""
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
        facts = self._facts(now, aj)
        if unseen:
            facts = replace(facts, events=facts.events[: max(0, len(facts.events) - unseen)])
        await self._drive(
            name,
            Start(
                now=now,
                facts=facts,
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
                task_queue=self._send_queue(channel),
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

    def _enrol_entered_on(self, stage: str) -> None:
        """Queue the journeys whose entry is ``stage`` (not for rehearsal contacts)."""
        if self._rehearsal:
            return
        for name, raw in sorted(self._published().items()):
            if name not in self._active and self._spec(raw).entered_by_stage(stage):
                self._enrol_queue.append((name, 1.0))


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
