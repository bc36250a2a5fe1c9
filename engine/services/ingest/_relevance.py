"""Which event types are worth a signal: those some definition can use (pure)."""

from __future__ import annotations

from stagecoach.engine.domain.journeys import JourneySpec
from stagecoach.engine.domain.pipeline import Pipeline
from stagecoach.engine.domain.segments import SegmentSpec
from stagecoach.engine.domain.segments import event_types as segment_event_types
from stagecoach.engine.protocol.messages import Definitions

CONSENT_EVENTS = frozenset(
    {"email.unsubscribed", "email.complained", "wechat.unsubscribed", "wechat.subscribed"}
)
"""Consent changes are applied by the workflow whatever the definitions say."""

REFUND_EVENTS = frozenset({"order.refunded"})
"""A refund cancels a referral reward the purchase earned, whatever the definitions say."""


def relevant_event_types(definitions: Definitions) -> frozenset[str]:
    """Types used by a stage rule, score or grade rule, MQL, any journey's entry,
    waits, conditions, goal or exit criteria, or any segment's condition, plus the
    consent and refund events (and the list and backfill events when segments exist)."""
    types = set(Pipeline.from_dict(definitions.pipeline).event_types())
    for raw in definitions.journeys.values():
        types |= JourneySpec.from_dict(raw).event_types()
    segments = {name: SegmentSpec.from_dict(raw) for name, raw in definitions.segments.items()}
    types |= segment_event_types(segments)
    return frozenset(types | CONSENT_EVENTS | REFUND_EVENTS)
