"""Publishing never moves a journey back; ``rollback`` does, on purpose and recorded;
``plan_publish`` says what publishing would change, changing nothing.

Each test starts from a fresh migrated database with nothing published."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session
from structlog.testing import capture_logs

from stagecoach.engine import metrics
from stagecoach.engine.cli.compose import build_activities
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.domain.journeys import Journey, WaitStep
from stagecoach.engine.protocol.messages import EnrolmentRecord
from stagecoach.engine.services.publishing import (
    ROLLBACK_SOURCE,
    JourneyNotFound,
    VersionNotFound,
    latest,
    plan_publish,
    publish_bundled,
    rollback,
    validate_definitions,
    versions,
)
from stagecoach.engine.services.storage.enrolments import save_active_enrolment, save_enrolment
from stagecoach.engine.services.storage.models import Contact
from stagecoach.engine.settings import Settings
from stagecoach.workflows.journeys import B2B_NURTURE, JOURNEYS
from tests.helpers import bundled_checkout

ROOT = Path(__file__).resolve().parents[3]
NAME = "b2b_nurture"
BOTH = pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
"""Run on both databases: ``db_engine`` is PostgreSQL for a test marked ``postgres``."""


def b2b(pause_days: int) -> Journey:
    """b2b_nurture with another pause before the case study: another version (3 days is
    the bundled one)."""
    steps = [
        replace(s, duration=timedelta(days=pause_days))
        if isinstance(s, WaitStep) and s.id == "evaluation-pause"
        else s
        for s in B2B_NURTURE.steps
    ]
    return replace(B2B_NURTURE, steps=steps)


def with_b2b(pause_days: int) -> dict[str, Journey]:
    return {**JOURNEYS, NAME: b2b(pause_days)}


def version_of(settings: Settings, pause_days: int) -> str:
    return validate_definitions(settings, journeys=with_b2b(pause_days))[NAME].version


def refused_older() -> float:
    value = metrics.REGISTRY.get_sample_value(
        "stagecoach_journeys_refused_older_total", {"journey": NAME}
    )
    return value or 0.0


def enrol(db: Engine, contact_id: str, version: str, *, rehearsal: bool = False) -> None:
    with Session(db) as session:
        session.add(Contact(id=contact_id, rehearsal=rehearsal))
        session.commit()
    save_active_enrolment(
        db,
        contact_id=contact_id,
        journey=NAME,
        version=version,
        enrolment=1,
        started_at=datetime.now(UTC),
        trail=[],
    )


def finish(db: Engine, contact_id: str, version: str) -> None:
    now = datetime.now(UTC)
    save_enrolment(
        db,
        EnrolmentRecord(
            contact_id=contact_id,
            journey=NAME,
            version=version,
            enrolment=1,
            status="completed",
            reason="goal",
            started_at=now,
            finished_at=now,
        ),
    )


@BOTH
def test_publishing_v1_v2_then_v1_again_keeps_v2_and_says_so(
    db_engine: Engine, settings: Settings, backend: str
) -> None:
    v1, v2 = version_of(settings, 2), version_of(settings, 3)
    first = {r.name: r for r in publish_bundled(db_engine, settings, journeys=with_b2b(2))}
    assert first[NAME].status == "created"
    second = {r.name: r for r in publish_bundled(db_engine, settings, journeys=with_b2b(3))}
    assert (second[NAME].status, second[NAME].version) == ("created", v2)
    assert second["onboarding"].status == "unchanged"
    before = refused_older()

    with capture_logs() as logs:
        again = {r.name: r for r in publish_bundled(db_engine, settings, journeys=with_b2b(2))}

    stale = again[NAME]
    assert (stale.status, stale.created, stale.version, stale.kept) == ("older", False, v1, v2)
    assert f"older than the latest: kept {v2[:12]}" in stale.note
    assert f"stagecoach journeys rollback {NAME} --to {v1[:12]}" in stale.note
    assert latest(db_engine, NAME).version == v2
    assert [(v.version, v.source) for v in versions(db_engine, NAME)] == [
        (v2, "bundled"),
        (v1, "bundled"),
    ]
    # The others are the latest already: unchanged, and not warned about.
    assert {r.status for n, r in again.items() if n != NAME} == {"unchanged"}
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["journey"] == NAME
    assert (warnings[0]["stale_version"], warnings[0]["latest_version"]) == (v1, v2)
    assert refused_older() - before == 1


def test_a_worker_starting_from_an_older_image_does_not_roll_a_journey_back(
    db_engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker publishes its bundled journeys in build_activities (run_worker's first
    step after migrating); an older image's definition must leave the latest alone."""
    library = ContentLibrary.load(ROOT / "content")
    v1, v2 = version_of(settings, 2), version_of(settings, 3)
    bundled_checkout(monkeypatch, {**JOURNEYS, NAME: b2b(2)})
    build_activities(db_engine, settings, content=library)  # the old image, first deploy
    bundled_checkout(monkeypatch, {**JOURNEYS, NAME: b2b(3)})
    build_activities(db_engine, settings, content=library)  # the new image
    assert latest(db_engine, NAME).version == v2

    bundled_checkout(monkeypatch, {**JOURNEYS, NAME: b2b(2)})  # a stale worker restarts
    with capture_logs() as logs:
        build_activities(db_engine, settings, content=library)

    assert latest(db_engine, NAME).version == v2
    warned = [e for e in logs if e["log_level"] == "warning" and e.get("journey") == NAME]
    assert [(e["stale_version"], e["latest_version"]) for e in warned] == [(v1, v2)]


@BOTH
def test_rollback_moves_the_latest_back_and_records_it(
    db_engine: Engine, settings: Settings, backend: str
) -> None:
    v1, v2 = version_of(settings, 2), version_of(settings, 3)
    publish_bundled(db_engine, settings, journeys=with_b2b(2))
    publish_bundled(db_engine, settings, journeys=with_b2b(3))
    enrol(db_engine, "c-1", v1)
    enrol(db_engine, "c-2", v2)
    enrol(db_engine, "c-3", v2)
    enrol(db_engine, "rehearsal-1", v2, rehearsal=True)  # not a contact in flight
    enrol(db_engine, "c-4", v2)
    finish(db_engine, "c-4", v2)  # finished: not in flight

    done = rollback(db_engine, NAME, by="ops@example.com")

    assert (done.from_version, done.to_version, done.changed) == (v2, v1, True)
    assert latest(db_engine, NAME).version == v1
    listed = versions(db_engine, NAME)
    assert [(v.version, v.source) for v in listed] == [(v1, ROLLBACK_SOURCE), (v2, "bundled")]
    assert listed[0].published_at == done.at
    assert [c.step_id for c in done.diff.changed] == ["evaluation-pause"]
    assert dict(done.in_flight) == {v1: 1, v2: 2}

    # The definition rolled back from is now older than the latest: publishing it (a
    # worker of the current image restarting) does not undo the rollback.
    again = {r.name: r for r in publish_bundled(db_engine, settings, journeys=with_b2b(3))}
    assert (again[NAME].status, again[NAME].kept) == ("older", v1)
    assert latest(db_engine, NAME).version == v1

    # Forward again is a rollback --to, by prefix; asking for the latest changes nothing.
    forward = rollback(db_engine, NAME, v2[:8])
    assert (forward.from_version, forward.to_version) == (v1, v2)
    assert latest(db_engine, NAME).version == v2
    same = rollback(db_engine, NAME, v2)
    assert not same.changed
    assert latest(db_engine, NAME).version == v2


def test_rollback_refuses_unknown_journeys_and_versions_naming_the_fix(
    db_engine: Engine, settings: Settings
) -> None:
    with pytest.raises(JourneyNotFound, match="no published version") as nothing:
        rollback(db_engine, NAME)
    assert "known: none" in nothing.value.fix

    publish_bundled(db_engine, settings, journeys=with_b2b(3))
    with pytest.raises(VersionNotFound, match="no earlier version") as single:
        rollback(db_engine, NAME)
    assert "publish" in single.value.fix

    publish_bundled(db_engine, settings, journeys=with_b2b(2))
    with pytest.raises(JourneyNotFound, match="'b2b_nurtur'") as typo:
        rollback(db_engine, "b2b_nurtur")
    assert "did you mean 'b2b_nurture'" in typo.value.fix
    with pytest.raises(VersionNotFound, match="no published version 'abcdef0123'") as unknown:
        rollback(db_engine, NAME, "abcdef0123")
    assert f"stagecoach journeys versions {NAME}" in unknown.value.fix
    with pytest.raises(VersionNotFound, match="too short") as short:
        rollback(db_engine, NAME, "ab")
    assert "6+ characters" in short.value.fix
    onboarding = latest(db_engine, "onboarding").version
    with pytest.raises(VersionNotFound, match="journey 'onboarding', not 'b2b_nurture'"):
        rollback(db_engine, NAME, onboarding[:10])
    assert latest(db_engine, NAME).version == version_of(settings, 2)  # nothing moved


@BOTH
def test_plan_says_new_changed_unchanged_older_and_who_is_in_flight(
    db_engine: Engine, settings: Settings, backend: str
) -> None:
    v1, v2, v3 = (version_of(settings, d) for d in (2, 3, 4))
    fresh = plan_publish(None, settings, journeys=with_b2b(3))
    assert {e.status for e in fresh} == {"new"}
    assert all(e.changes and e.latest is None for e in fresh)

    published = {n: j for n, j in with_b2b(2).items() if n != "nps_survey"}
    publish_bundled(db_engine, settings, journeys=published)
    publish_bundled(db_engine, settings, journeys={**published, NAME: b2b(3)})
    enrol(db_engine, "c-1", v2)
    enrol(db_engine, "c-2", v2)
    enrol(db_engine, "c-3", v1)

    changed = {e.name: e for e in plan_publish(db_engine, settings, journeys=with_b2b(4))}
    assert {n: e.status for n, e in changed.items()} == {
        NAME: "changed",
        "onboarding": "unchanged",
        "nps_survey": "new",
        "value_nurture": "unchanged",
        "win_back": "unchanged",
        "replenishment": "unchanged",
        "cross_sell": "unchanged",
    }
    b2b_plan = changed[NAME]
    assert (b2b_plan.version, b2b_plan.latest) == (v3, v2)
    assert b2b_plan.diff is not None
    assert [c.step_id for c in b2b_plan.diff.changed] == ["evaluation-pause"]
    assert b2b_plan.in_flight_on_latest == 2
    assert dict(b2b_plan.in_flight) == {v1: 1, v2: 2}

    older = {e.name: e for e in plan_publish(db_engine, settings, journeys=with_b2b(2))}
    assert (older[NAME].status, older[NAME].changes, older[NAME].latest) == ("older", False, v2)
    # Planning changed nothing.
    assert latest(db_engine, NAME).version == v2
    assert [v.version for v in versions(db_engine, NAME)] == [v2, v1]
    assert versions(db_engine, "nps_survey") == []
