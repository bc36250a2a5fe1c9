"""The contact as the workflow holds it: what it did, what it scores, where it stands.

Pure and deterministic: the contact workflow calls ``observe`` for every event it is
signalled and ``facts`` whenever a rule or a journey needs to look at the contact. The
same functions run in plain pytest, so every rule of how a contact changes is tested
without Temporal.

Identity traits arrive on events (``identify`` or any event's ``traits``): ``email``,
``wechat_openid``, ``locale``, ``timezone``, ``preferred_channel`` and ``consent``
(``{"email": true, "wechat": false}``) are read from them; everything else is an
attribute for grading and personalisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from stagecoach.engine.domain import serial
from stagecoach.engine.domain.conditions import EventRecord, Facts
from stagecoach.engine.domain.pipeline import (
    Pipeline,
    Transition,
    evaluate_detours,
    evaluate_transition,
)
from stagecoach.engine.domain.scoring import (
    ScoreState,
    apply_event,
    grade,
    score_at,
    shown_score,
)
from stagecoach.engine.domain.segments import SYSTEM_EVENTS, Membership

EVENT_WINDOW = 200
"""Events kept for rules. Older ones remain in the database and the workflow history."""

SEEN_IDS = 500
"""Message ids remembered to drop duplicate signals (a client retry, an outbox replay)."""

CHANNELS = ("email", "wechat")

# Events that change consent by themselves, whatever the traits say.
CONSENT_EVENTS: Mapping[str, tuple[str, bool]] = {
    "email.unsubscribed": ("email", False),
    "email.complained": ("email", False),
    "wechat.unsubscribed": ("wechat", False),
    "wechat.subscribed": ("wechat", True),
}


@dataclass(frozen=True)
class JourneyRecord(serial.Record):
    """A contact's history with one journey, for the re-entry policy."""

    enrolments: int = 0
    active: bool = False
    last_ended_at: datetime | None = None


@serial.fields(omit_if_default=("segments", "counts", "last_seen"))
@dataclass(frozen=True)
class ContactState(serial.Record):
    """Everything the workflow knows about one contact. Carried across continue-as-new.

    ``segments`` holds the segments the contact is in; ``counts`` and ``last_seen`` keep,
    per event type, how often and when last the contact did it, beyond the window of
    ``events`` (segments ask "never" and "how many times"). They are left out of the
    JSON form while empty, so states written before segments keep their bytes.
    """

    contact_id: str
    stage: str
    stage_entered_at: datetime
    score: ScoreState = field(default_factory=ScoreState)
    grade: str | None = None
    grade_rules: tuple[str, ...] = ()
    attributes: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    consent: Mapping[str, bool] = field(default_factory=dict)
    events: tuple[EventRecord, ...] = ()
    seen_ids: tuple[str, ...] = ()
    transitions: int = 0
    received_content: tuple[str, ...] = ()
    journeys: Mapping[str, JourneyRecord] = field(default_factory=dict)
    segments: Mapping[str, Membership] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)
    last_seen: Mapping[str, datetime] = field(default_factory=dict)

    @property
    def locale(self) -> str | None:
        value = self.attributes.get("locale")
        return str(value) if value else None

    @property
    def timezone(self) -> str | None:
        value = self.attributes.get("timezone")
        return str(value) if value else None

    def address(self, channel: str) -> str | None:
        """Where a message on ``channel`` goes: the email address or the WeChat openid."""
        key = {"email": "email", "wechat": "wechat_openid"}.get(channel)
        value = self.attributes.get(key) if key else None
        return str(value) if value else None

    def consented(self, channel: str) -> bool:
        """Explicit consent wins; otherwise email is opt-out, WeChat needs a follow."""
        if channel in self.consent:
            return self.consent[channel]
        return channel == "email" and self.address("email") is not None

    def preferred_channel(self) -> str | None:
        """The channel to use for "preferred": the declared one if usable, else the first
        usable of WeChat (for zh-CN contacts) or email."""
        declared = self.attributes.get("preferred_channel")
        order = [str(declared)] if declared else []
        order += (
            ["wechat", "email"] if (self.locale or "").startswith("zh") else ["email", "wechat"]
        )
        for channel in order:
            if channel in CHANNELS and self.address(channel) and self.consented(channel):
                return channel
        return None


def event_problem(
    *,
    message_id: object,
    type: object,
    occurred_at: object,
    properties: object,
    traits: object,
) -> str | None:
    """What is wrong with an event, naming the field and the fix; ``None`` if it is fine.

    The gateway refuses such an event before it is sent; the workflow drops one that got
    through some other way, instead of failing its task on every retry.
    """
    if not isinstance(message_id, str) or not message_id.strip():
        return "message_id is empty: give every event a unique id so retries dedupe"
    if not isinstance(type, str) or not type.strip():
        return "type is empty: name the behaviour, e.g. 'content.downloaded'"
    if not isinstance(occurred_at, datetime):
        return "occurred_at is not a datetime: send an ISO 8601 timestamp with a zone"
    if occurred_at.tzinfo is None or occurred_at.utcoffset() is None:
        return "occurred_at has no time zone: send it with an offset, e.g. 2026-11-22T09:00Z"
    if not isinstance(properties, Mapping):
        return "properties is not an object: send a JSON object (or omit it)"
    if not isinstance(traits, Mapping):
        return "traits is not an object: send a JSON object (or omit it)"
    consent = traits.get("consent")
    if consent is not None and not isinstance(consent, Mapping):
        return "traits.consent is not an object: send {'email': true, 'wechat': false}"
    return None


def new_contact(contact_id: str, pipeline: Pipeline, now: datetime) -> ContactState:
    """A contact that has just appeared: at the pipeline's first stage."""
    return ContactState(contact_id=contact_id, stage=pipeline.first_stage, stage_entered_at=now)


def facts(
    state: ContactState, pipeline: Pipeline, now: datetime, *, as_shown: bool = False
) -> Facts:
    """What rules see of the contact at ``now`` (the score decayed to ``now``; with
    ``as_shown``, rounded as it is shown, see
    :func:`stagecoach.engine.domain.scoring.shown_score`)."""
    score = score_at(pipeline.scoring, state.score, now) if state.score.as_of else 0.0
    return Facts(
        now=now,
        stage=state.stage,
        score=shown_score(score) if as_shown else score,
        grade=state.grade,
        attributes=state.attributes,
        tags=frozenset(state.tags),
        events=state.events,
        stages=pipeline.stage_names,
        score_half_life=pipeline.scoring.half_life,
        consent={channel: state.consented(channel) for channel in CHANNELS},
        journeys=frozenset(name for name, record in state.journeys.items() if record.active),
        received=frozenset(state.received_content),
        segments=frozenset(state.segments),
        counts=state.counts,
        last_seen=state.last_seen,
        contact_id=state.contact_id,
    )


@dataclass(frozen=True)
class Observation:
    """What one event did: the new state, and the stage move the rules called for."""

    state: ContactState
    duplicate: bool = False
    transition: Transition | None = None
    regraded: bool = False


def observe(
    state: ContactState,
    pipeline: Pipeline,
    *,
    message_id: str,
    event: EventRecord,
    traits: Mapping[str, Any],
    now: datetime,
    source: str,
    as_shown: bool = False,
) -> Observation:
    """Apply one event: traits, consent, score, grade and the stage rules.

    A message id seen before is a duplicate and changes nothing, so a client retry or an
    outbox replay is applied once. ``as_shown``: stage rules compare the score as shown
    (see :func:`facts`); workflows started before that rule pass ``False``.
    """
    if message_id in state.seen_ids:
        return Observation(state=state, duplicate=True)
    attributes = dict(state.attributes)
    consent = dict(state.consent)
    for key, value in traits.items():
        if key == "consent" and isinstance(value, Mapping):
            consent.update({str(k): bool(v) for k, v in value.items()})
        else:
            attributes[key] = value
    if event.type in CONSENT_EVENTS:
        channel, allowed = CONSENT_EVENTS[event.type]
        consent[channel] = allowed
    seen = (*state.seen_ids, message_id)[-SEEN_IDS:]
    if event.type in SYSTEM_EVENTS:
        # A manual list change or a backfill's decision: membership, not behaviour. Its
        # traits apply (an upload may bring the address), but it scores nothing, joins
        # no event window and moves no stage; the workflow applies it to the segments.
        return Observation(
            state=replace(state, attributes=attributes, consent=consent, seen_ids=seen)
        )
    score, _change = apply_event(pipeline.scoring, state.score, event)
    events = (*state.events, event)[-EVENT_WINDOW:]
    counts = dict(state.counts)
    counts[event.type] = counts.get(event.type, 0) + 1
    last_seen = dict(state.last_seen)
    previous = last_seen.get(event.type)
    if previous is None or event.at > previous:
        last_seen[event.type] = event.at
    updated = replace(
        state,
        attributes=attributes,
        consent=consent,
        score=score,
        events=events,
        seen_ids=seen,
        counts=counts,
        last_seen=last_seen,
    )
    regraded = False
    if traits or state.grade is None:
        result = grade(pipeline.grading, Facts(now=now, attributes=attributes))
        regraded = (result.grade, result.matched_rules) != (state.grade, state.grade_rules)
        updated = replace(updated, grade=result.grade, grade_rules=result.matched_rules)
    transition = evaluate_transition(
        pipeline,
        updated.stage,
        facts(updated, pipeline, now, as_shown=as_shown),
        event,
        source,
        trigger_message_id=message_id,
    )
    if transition is None and any(d.when is not None for d in pipeline.detours):
        transition = evaluate_detours(
            pipeline,
            updated.stage,
            facts(updated, pipeline, now, as_shown=as_shown),
            event,
            source,
            trigger_message_id=message_id,
        )
    return Observation(state=updated, transition=transition, regraded=regraded)


def with_segments(state: ContactState, segments: Mapping[str, Membership]) -> ContactState:
    return replace(state, segments=dict(segments))


def enter_stage(state: ContactState, transition: Transition) -> ContactState:
    """Record a stage move in the state (the database record is the workflow's job)."""
    return replace(
        state,
        stage=transition.to_stage,
        stage_entered_at=transition.at,
        transitions=state.transitions + 1,
    )


def with_journey(state: ContactState, name: str, record: JourneyRecord) -> ContactState:
    journeys = dict(state.journeys)
    journeys[name] = record
    return replace(state, journeys=journeys)


def with_received(state: ContactState, content_id: str) -> ContactState:
    if content_id in state.received_content:
        return state
    return replace(state, received_content=(*state.received_content, content_id))


def with_attribute(state: ContactState, name: str, value: Any) -> ContactState:
    return replace(state, attributes={**state.attributes, name: value})


def with_tag(state: ContactState, tag: str) -> ContactState:
    return state if tag in state.tags else replace(state, tags=(*state.tags, tag))
