"""Segments with a known history, for the dashboard's segments pages (the route tests in
tests/engine/dashboard and the browser test read the same truth).

The rows are written the way a reader's test should get them: the segments through
``publish_segments`` and the entries and exits through the storage function the
contact workflow's record activity calls (``save_segment_changes``), not by a workflow:
the pages only read what those rows say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from stagecoach.engine.domain.conditions import grade_in, stage_in
from stagecoach.engine.domain.segments import Segment, SegmentSpec
from stagecoach.engine.protocol.messages import SegmentChanges
from stagecoach.engine.services.segments.catalog import MANUAL_VERSION, publish_segments
from stagecoach.engine.services.storage.models import Contact
from stagecoach.engine.services.storage.segments import save_segment_changes

COMPUTED = Segment(
    "a-grade-leads",
    "Leads graded A: sales follows them up first",
    when=stage_in("lead") & grade_in("A"),
)
MANUAL = Segment("trade-show-2026", "Met at the Shanghai trade show", manual=True)
LIST_ACTOR = "ops@example.com"


def reason(contact_id: str, entered: bool) -> str:
    return f"lead.graded for {contact_id}" if entered else f"grade.changed for {contact_id}"


@dataclass(frozen=True)
class SegmentTruth:
    """What the segments pages must show for :func:`seed_segments`.

    Relative to ``today``: s1 and s2 entered ``a-grade-leads`` three days ago, s3 two
    days ago, s2 left yesterday; s1 was added to the manual list two days ago."""

    today: date
    computed: str = COMPUTED.name
    manual: str = MANUAL.name
    members: dict[str, int] = field(default_factory=lambda: {COMPUTED.name: 2, MANUAL.name: 1})
    member_ids: tuple[str, ...] = ("s1", "s3")
    list_reason: str = f"added by {LIST_ACTOR}"

    def day(self, ago: int) -> str:
        return (self.today - timedelta(days=ago)).isoformat()

    @property
    def activity(self) -> dict[str, tuple[int, int, int]]:
        """Day -> (entered, exited, size at the day's end) of ``a-grade-leads``."""
        return {
            self.day(3): (2, 0, 2),
            self.day(2): (1, 0, 3),
            self.day(1): (0, 1, 2),
            self.day(0): (0, 0, 2),
        }


def seed_segments(engine: Engine, now: datetime) -> SegmentTruth:
    """Publish the two segments (before any contact exists, so the computed one is ready
    at once), then write three contacts and their entries and exits."""
    computed, manual = COMPUTED.spec(), MANUAL.spec()
    publish_segments(engine, [computed, manual], source="test")
    today = now.astimezone(UTC).date()

    def at(ago: int, hour: int) -> datetime:
        return datetime.combine(today - timedelta(days=ago), time(hour), UTC)

    with Session(engine) as session:
        for n in (1, 2, 3):
            born = at(5, n)
            session.add(
                Contact(
                    id=f"s{n}",
                    stage="lead",
                    traits={"email": f"s{n}@example.com"},
                    created_at=born,
                    updated_at=born,
                )
            )
        session.commit()

    def change(spec: SegmentSpec, entered: bool, when: datetime, why: str) -> dict[str, object]:
        return {
            "segment": spec.name,
            "version": MANUAL_VERSION if spec.manual else spec.version,
            "entered": entered,
            "at": when.isoformat(),
            "reason": why,
        }

    plan = [
        ("s1", computed, True, at(3, 9)),
        ("s2", computed, True, at(3, 10)),
        ("s3", computed, True, at(2, 11)),
        ("s2", computed, False, at(1, 12)),
    ]
    for n, (contact_id, spec, entered, when) in enumerate(plan):
        record = SegmentChanges(
            key=f"{contact_id}:{n}",
            contact_id=contact_id,
            changes=[change(spec, entered, when, reason(contact_id, entered))],
        )
        assert save_segment_changes(engine, record) == 1
    listed = SegmentChanges(
        key="s1:list:1",
        contact_id="s1",
        changes=[change(manual, True, at(2, 8), f"added by {LIST_ACTOR}")],
        source="list",
    )
    assert save_segment_changes(engine, listed, actor=LIST_ACTOR) == 1
    return SegmentTruth(today)
