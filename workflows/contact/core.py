"""The contact workflow's state and what every part of it shares: timers, clocks, facts.

``ContactWorkflow`` is one Temporal workflow class; its behaviour is split over mixins
(``journeys``, ``sales``, ``referrals``) that all build on this one. They hold no state
of their own: every field lives on the workflow instance, set by its ``__init__`` and
``run``, so the commands the workflow issues are the same as when it was one class.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from datetime import datetime

    from stagecoach.engine.domain import contact as model
    from stagecoach.engine.domain.conditions import EventRecord, Facts
    from stagecoach.engine.domain.journeys import (
        HandOff,
        HandoffResult,
        Input,
        JourneySpec,
        parsed_spec,
    )
    from stagecoach.engine.domain.pipeline import Pipeline, Transition
    from stagecoach.engine.domain.policy import SendPolicy
    from stagecoach.engine.protocol import LOAD_DEFINITIONS_ACTIVITY, timer_summary
    from stagecoach.engine.protocol.messages import ActiveJourney, Definitions, EventMessage
    from stagecoach.engine.protocol.search_attributes import search_values
    from stagecoach.engine.protocol.search_keys import KEYS


class ContactCore:
    """The contact workflow's fields and shared helpers (a mixin base, not a workflow)."""

    _contact_id: str
    _rehearsal: bool
    _records_enrolments: bool
    _records_in_background: bool
    _applies_opening_first: bool
    _opens_in_order: bool
    _waits_for_channel: bool
    _recording: list[workflow.ActivityHandle[None]]
    _inbox: deque[EventMessage]
    _fired: deque[tuple[str, str]]
    _enrol_queue: deque[tuple[str, float]]
    _state: model.ContactState | None
    _definitions: Definitions | None
    _active: dict[str, ActiveJourney]
    _specs: dict[str, JourneySpec]
    _timers: dict[tuple[str, str], asyncio.Task[None]]
    _lock: asyncio.Lock
    _run_events: int
    _merged_into: str | None
    _handoff: dict[str, Any] | None
    _score_as_shown: bool
    _pipeline: Pipeline
    _policy: SendPolicy

    if TYPE_CHECKING:
        # Provided by the workflow class and the sales mixin; declared for the other parts.
        async def _record_transition(self, transition: Transition) -> None: ...

        async def _drive(self, name: str, first: Input) -> None: ...

        async def _hand_off(
            self, name: str, aj: ActiveJourney, command: HandOff
        ) -> HandoffResult: ...

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

    def _send_queue(self, channel: str) -> str | None:
        """The task queue a send (or, for ``crm``, a hand-off) on ``channel`` runs on:
        the channel's own, under its cluster-wide rate, or None for the contact's queue.
        A rehearsal's sends go to its sink and are never held to a provider's rate."""
        if self._rehearsal or self._definitions is None:
            return None
        return self._definitions.send_queues.get(channel)

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
        raw = self._definitions.segments if self._definitions is not None else {}
        searchable = [name for name, spec in raw.items() if spec.get("searchable")]
        wanted = search_values(self._require_state(), self._active, searchable)
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
