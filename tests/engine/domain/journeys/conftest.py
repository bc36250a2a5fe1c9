"""Shared fixtures for journey tests: a validation context and a tiny journey factory."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stagecoach.engine.domain.journeys import InMemoryContentIndex, ValidationContext

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

EVENT_TYPES = frozenset(
    {
        "page.viewed",
        "email.opened",
        "email.clicked",
        "email.unsubscribed",
        "content.downloaded",
        "video.watched",
        "form.submitted",
        "trial.started",
        "demo.requested",
        "order.paid",
        "onboarding.finished",
    }
)
STAGES = frozenset({"suspect", "prospect", "lead", "opportunity", "customer", "fan", "advocate"})
CONTENT = ("wp", "video", "case-study", "nudge", "fallback")


@pytest.fixture
def ctx() -> ValidationContext:
    """Every listed content id exists in zh-CN and en, on email and WeChat."""
    return ValidationContext(
        known_event_types=EVENT_TYPES,
        stages=STAGES,
        content=InMemoryContentIndex.full(CONTENT),
        known_journeys=frozenset({"onboarding"}),
    )
