"""Ingestion signals the events segments use, and only those."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from stagecoach.engine.domain.conditions import last_performed
from stagecoach.engine.domain.segments import Segment
from stagecoach.engine.protocol.messages import Definitions as Loaded
from stagecoach.engine.services.ingest import relevant_event_types
from stagecoach.workflows.definitions import SEVEN_STAGE

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def test_ingestion_signals_the_events_segments_use_and_only_those() -> None:
    def relevant(*segments: Segment) -> frozenset[str]:
        return relevant_event_types(
            Loaded(
                pipeline=SEVEN_STAGE.pipeline.to_dict(),
                journeys={},
                policy={},
                loaded_at=NOW,
                segments={s.name: s.spec().to_dict() for s in segments},
            )
        )

    assert "site.visited" not in relevant()
    assert "segment.list_added" not in relevant()
    inactive = Segment("inactive", when=last_performed("site.visited", before=30 * DAY))
    assert "site.visited" in relevant(inactive)
    assert "segment.list_added" in relevant(Segment("vip", manual=True))
