"""Reading a segment's days: the size counts members a new version carried over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from stagecoach.engine.domain.conditions import grade_in
from stagecoach.engine.domain.segments import Segment
from stagecoach.engine.protocol.messages import SegmentChanges
from stagecoach.engine.services.segments.catalog import mark_ready, publish_segments
from stagecoach.engine.services.segments.queries import daily_activity
from stagecoach.engine.services.storage.models import Contact, SegmentMember
from stagecoach.engine.services.storage.segments import save_segment_changes

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def test_size_over_time_counts_carried_over_members_and_each_days_changes(
    db_engine: Engine,
) -> None:
    with Session(db_engine) as session:
        session.add(Contact(id="c0", stage="lead", traits={}))
        session.commit()
    spec = Segment("a-grade", when=grade_in("A")).spec()
    publish_segments(db_engine, [spec])
    mark_ready(db_engine, spec.version)
    with Session(db_engine) as session:
        # Two members carried over from the previous version: no entries of this one.
        for cid in ("c1", "c2"):
            session.add(
                SegmentMember(
                    segment="a-grade",
                    version=spec.version,
                    contact_id=cid,
                    since=NOW - timedelta(days=40),
                    reason="carried",
                )
            )
        session.commit()

    def change(cid: str, entered: bool, days_ago: int) -> None:
        at = NOW - timedelta(days=days_ago)
        body = {"segment": "a-grade", "version": spec.version, "entered": entered}
        save_segment_changes(
            db_engine,
            SegmentChanges(
                key=f"{cid}:{days_ago}",
                contact_id=cid,
                changes=[{**body, "at": at.isoformat(), "reason": "test"}],
            ),
        )

    change("c3", True, 2)
    change("c4", True, 1)
    change("c3", False, 0)
    days = daily_activity(db_engine, "a-grade", days=4, now=NOW)
    assert [(d.entered, d.exited, d.size) for d in days] == [
        (0, 0, 2),
        (1, 0, 3),
        (1, 0, 4),
        (0, 1, 3),
    ]
