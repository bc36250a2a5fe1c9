"""The sales hand-off and its SLA: the episode, sales' answers, reminder and escalation."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from datetime import datetime

    from stagecoach.engine.domain.conditions import EventRecord
    from stagecoach.engine.domain.journeys import HandOff, HandoffResult
    from stagecoach.engine.domain.pipeline import PipelineError, Recycle, apply_recycle
    from stagecoach.engine.protocol import (
        HAND_OFF_ACTIVITY,
        HANDOFF_SLA_ACTIVITY,
        SALES_TIMERS,
        SLA_ESCALATION_TIMER,
        SLA_REMINDER_TIMER,
    )
    from stagecoach.engine.protocol.messages import (
        ActiveJourney,
        HandOffOutcome,
        HandOffRequest,
        SlaRequest,
    )

from stagecoach.workflows.contact.core import ContactCore

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


class SalesHandoff(ContactCore):
    """The contact's one hand-off to sales, its SLA timers and sales' feedback."""

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
            task_queue=self._send_queue("crm"),
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
