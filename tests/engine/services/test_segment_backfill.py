"""Backfilling segment versions from stored history: from nothing (ingested events, a
published segment, members read back through the queries), a changed version (members
equal to the row-by-row evaluation of the new definition, changes and notifications only
for the contacts that changed), a backfill killed part-way (never half-applied, resumed
without writing anything twice), previews that write nothing, and the CLI."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from stagecoach.engine.cli import app
from stagecoach.engine.domain.conditions import (
    Condition,
    has_tag,
    performed,
    score_at_least,
    trait,
)
from stagecoach.engine.domain.segments import MEMBERSHIP, Segment, SegmentSpec
from stagecoach.engine.protocol.messages import SegmentChanges
from stagecoach.engine.services.analytics.store import AnalyticsStore, default_path
from stagecoach.engine.services.ingest import Incoming, Ingestor
from stagecoach.engine.services.segments import backfill as bf
from stagecoach.engine.services.segments.catalog import publish_segments
from stagecoach.engine.services.segments.queries import members, segment_summary
from stagecoach.engine.services.storage.models import (
    Event,
    Outbox,
    SegmentChange,
    SegmentMember,
    SegmentVersion,
)
from stagecoach.engine.services.storage.segments import save_segment_changes
from stagecoach.engine.settings import Settings
from stagecoach.workflows.definitions import SEVEN_STAGE

NOW = datetime.now(UTC).replace(microsecond=0)
PIPELINE = SEVEN_STAGE.pipeline

HOT = Segment(
    "hot-manufacturers",
    description="Manufacturing contacts who viewed pages twice this week",
    when=trait("industry", "eq", "manufacturing")
    & performed("page.viewed", at_least=2, within=timedelta(days=7)),
)
DEFS = dataclasses.replace(SEVEN_STAGE, segments=(HOT,))
"""The project the CLI tests load (``--definitions``)."""


def _ingest(db: Engine, people: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each person: an identify with traits, then ``views`` page views spread over the
    last ``days`` days. Returns user id -> contact id."""
    messages: list[Incoming] = []
    for user, person in people.items():
        messages.append(
            Incoming(
                kind="identify",
                message_id=f"id-{user}",
                type="identify",
                occurred_at=NOW - timedelta(days=20),
                user_id=user,
                identities={"user_id": user},
                traits=person.get("traits", {}),
            )
        )
        for n in range(person.get("views", 0)):
            messages.append(
                Incoming(
                    kind="track",
                    message_id=f"pv-{user}-{n}",
                    type="page.viewed",
                    occurred_at=NOW - timedelta(days=person.get("days", 1), minutes=n),
                    user_id=user,
                    identities={"user_id": user},
                )
            )
    [outcomes] = Ingestor(db).store([messages])
    return {
        o.message_id.removeprefix("id-"): o.contact_id
        for o in outcomes
        if o.message_id.startswith("id-")
    }


PEOPLE: dict[str, dict[str, Any]] = {
    "ada": {"traits": {"industry": "manufacturing"}, "views": 3},
    "bo": {"traits": {"industry": "manufacturing"}, "views": 1},
    "cy": {"traits": {"industry": "energy"}, "views": 5},
    "di": {"traits": {"industry": "manufacturing"}, "views": 4, "days": 10},
    "ed": {"traits": {"industry": "manufacturing"}, "views": 2},
    "fu": {"traits": {"industry": "manufacturing", "employees": 500}, "views": 6},
    "gu": {"traits": {"industry": "retail"}, "views": 2},
}


DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=DATABASES)
def db(request: pytest.FixtureRequest) -> Engine:
    """The migrated database, on SQLite and on PostgreSQL (the insert-if-new differs)."""
    engine: Engine = request.getfixturevalue("db_engine")
    return engine


@pytest.fixture
def people(db_engine: Engine) -> dict[str, str]:
    return _ingest(db_engine, PEOPLE)


def _reference(settings: Settings, db: Engine, cond: Condition) -> list[str]:
    store = AnalyticsStore(default_path(settings.data_dir))
    store.sync(db)
    with store.read() as con:
        return bf.row_members(con, cond, now=NOW, pipeline=PIPELINE)


def _all_members(db: Engine, name: str) -> list[str]:
    return [m.contact_id for m in members(db, name, limit=10_000)]


def _membership_events(db: Engine, version: str) -> list[Event]:
    with Session(db) as session:
        rows = session.exec(select(Event).where(Event.name == MEMBERSHIP)).all()
    return [e for e in rows if e.properties.get("version") == version]


def _spec(cond: Condition, name: str = HOT.name) -> SegmentSpec:
    return Segment(name, description="", when=cond).spec()


def test_a_new_segment_is_backfilled_from_ingested_history(
    db: Engine, settings: Settings, people: dict[str, str]
) -> None:
    spec = HOT.spec()
    [published] = publish_segments(db, [spec])
    assert published.status == "backfilling"
    before = segment_summary(db, HOT.name)
    assert (before.status, before.ready_version, before.members) == ("backfilling", None, 0)

    [result] = bf.backfill(db, settings, now=NOW)

    want = sorted(people[u] for u in ("ada", "ed", "fu"))
    assert _all_members(db, HOT.name) == want
    assert _reference(settings, db, spec.condition) == want  # type: ignore[arg-type]
    after = segment_summary(db, HOT.name)
    assert (after.status, after.ready_version, after.members) == ("ready", spec.version, 3)
    assert (result.members, result.entered, result.exited, result.compiled) == (3, 3, 0, True)
    # Every member entered (a brand-new segment); each is told once, through the outbox.
    with Session(db) as session:
        changes = session.exec(select(SegmentChange)).all()
        assert sorted(c.contact_id for c in changes) == want
        assert {(c.source, c.entered, c.version) for c in changes} == {
            ("backfill", True, spec.version)
        }
        notified = _membership_events(db, spec.version)
        assert sorted(e.contact_id for e in notified) == want
        assert all(
            e.properties == {"segment": HOT.name, "version": spec.version, "member": True}
            for e in notified
        )
        queued = session.exec(
            select(func.count()).where(col(Outbox.event_id).in_([e.id for e in notified]))
        ).one()
        assert queued == 3
    assert result.notified == 3
    # Nothing left to do: a second run is a no-op.
    assert bf.backfill(db, settings, now=NOW) == []


def test_a_changed_version_equals_row_by_row_and_touches_only_changed_contacts(
    db: Engine, settings: Settings, people: dict[str, str]
) -> None:
    publish_segments(db, [HOT.spec()])
    bf.backfill(db, settings, now=NOW)
    with Session(db) as session:
        since = {m.contact_id: m.since for m in session.exec(select(SegmentMember)).all()}

    wider = trait("industry", "in", ["manufacturing", "retail"]) & performed(
        "page.viewed", at_least=2, within=timedelta(days=14)
    )
    new = _spec(wider)
    [published] = publish_segments(db, [new])
    assert published.status == "backfilling"
    [result] = bf.backfill(db, settings, now=NOW + timedelta(minutes=5))

    reference = _reference(settings, db, wider)
    assert _all_members(db, HOT.name) == reference
    assert sorted(reference) == sorted(people[u] for u in ("ada", "di", "ed", "fu", "gu"))
    assert (result.entered, result.exited) == (2, 0)
    with Session(db) as session:
        changes = session.exec(
            select(SegmentChange).where(SegmentChange.version == new.version)
        ).all()
        kept = {
            m.contact_id: m.since
            for m in session.exec(
                select(SegmentMember).where(SegmentMember.version == new.version)
            ).all()
        }
    assert sorted(c.contact_id for c in changes) == sorted([people["di"], people["gu"]])
    # Carried-over members keep the moment they entered.
    assert all(kept[cid] == since[cid] for cid in since)
    # Only the two that entered are told; the three carried over cost nothing.
    assert sorted(e.contact_id for e in _membership_events(db, new.version)) == sorted(
        [people["di"], people["gu"]]
    )
    assert result.notified == 2

    # Narrowing: exits are recorded and told, with member False.
    narrow = _spec(trait("industry", "eq", "manufacturing") & trait("employees", "exists", True))
    publish_segments(db, [narrow])
    [result] = bf.backfill(db, settings, now=NOW + timedelta(minutes=10))
    assert _all_members(db, HOT.name) == [people["fu"]]
    assert (result.entered, result.exited, result.notified) == (0, 4, 4)
    told = _membership_events(db, narrow.version)
    assert {e.properties["member"] for e in told} == {False}


def test_a_version_superseded_before_its_backfill_is_retired_not_computed(
    db_engine: Engine, settings: Settings, people: dict[str, str]
) -> None:
    first = _spec(trait("industry", "eq", "energy"))
    second = _spec(trait("industry", "eq", "retail"))
    publish_segments(db_engine, [first])
    publish_segments(db_engine, [second])
    [result] = bf.backfill(db_engine, settings, now=NOW)
    assert result.version == second.version
    assert _all_members(db_engine, HOT.name) == [people["gu"]]
    with Session(db_engine) as session:
        row = session.get(SegmentVersion, first.version)
        assert row is not None
        assert row.status == "retired"
        assert not session.exec(
            select(SegmentMember).where(SegmentMember.version == first.version)
        ).all()


def test_a_workflow_that_decided_under_the_new_version_keeps_its_decision(
    db_engine: Engine, settings: Settings, people: dict[str, str]
) -> None:
    spec = HOT.spec()
    publish_segments(db_engine, [spec])
    # While the version backfills, ada's workflow sees a newer event and records her exit
    # under it, and gu's records an entry: both decided on facts the store has not copied.
    for user, entered in (("ada", False), ("gu", True)):
        change = {
            "segment": HOT.name,
            "version": spec.version,
            "entered": entered,
            "at": NOW.isoformat(),
            "reason": "page.viewed",
        }
        save_segment_changes(
            db_engine,
            SegmentChanges(key=f"{people[user]}:1", contact_id=people[user], changes=[change]),
        )
    [result] = bf.backfill(db_engine, settings, now=NOW)

    assert _all_members(db_engine, HOT.name) == sorted([people["ed"], people["fu"], people["gu"]])
    told = sorted(e.contact_id for e in _membership_events(db_engine, spec.version))
    assert told == sorted([people["ed"], people["fu"]])
    assert (result.members, result.entered, result.notified) == (3, 2, 2)
    with Session(db_engine) as session:
        sources = {(c.contact_id, c.source) for c in session.exec(select(SegmentChange)).all()}
    assert (people["ada"], "backfill") not in sources


class Killed(RuntimeError):
    pass


def test_a_backfill_killed_part_way_is_never_half_applied_and_resumes(
    db: Engine, settings: Settings, people: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_segments(db, [HOT.spec()])
    bf.backfill(db, settings, now=NOW)
    old = _all_members(db, HOT.name)
    everyone = _spec(trait("industry", "exists", True))
    publish_segments(db, [everyone])

    real = bf._write_batch
    calls = {"n": 0}

    def dies_on_the_third_batch(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed("the machine went away")
        real(*args, **kwargs)

    monkeypatch.setattr(bf, "_write_batch", dies_on_the_third_batch)
    with pytest.raises(Killed):
        bf.backfill(db, settings, batch=2, now=NOW)

    # Half-way: readers still see the old version, whole.
    assert _all_members(db, HOT.name) == old
    summary = segment_summary(db, HOT.name)
    assert (summary.status, summary.ready_version) == ("backfilling", HOT.spec().version)
    with Session(db) as session:
        row = session.get(SegmentVersion, everyone.version)
        assert row is not None
        assert row.status == "backfilling"
        assert row.cursor == sorted(people.values())[3]
        written = session.exec(
            select(func.count()).where(SegmentMember.version == everyone.version)
        ).one()
        assert written == 4

    monkeypatch.setattr(bf, "_write_batch", real)
    [result] = bf.backfill(db, settings, batch=2, now=NOW)
    assert result.resumed_after == sorted(people.values())[3]

    want = sorted(people.values())
    assert _all_members(db, HOT.name) == want
    assert _reference(settings, db, everyone.condition) == want  # type: ignore[arg-type]
    entered = sorted(set(want) - set(old))
    with Session(db) as session:
        changes = session.exec(
            select(SegmentChange).where(SegmentChange.version == everyone.version)
        ).all()
    assert sorted(c.contact_id for c in changes) == entered  # each written once
    # The killed batch's notifications were stored before it died; the resumed run's
    # copies are duplicates by message id: one event per changed contact.
    assert sorted(e.contact_id for e in _membership_events(db, everyone.version)) == entered


def test_a_score_segment_is_evaluated_row_by_row(
    db_engine: Engine, settings: Settings, people: dict[str, str]
) -> None:
    cond = score_at_least(1) & trait("industry", "eq", "manufacturing")
    spec = _spec(cond, "engaged")
    publish_segments(db_engine, [spec])
    [result] = bf.backfill(db_engine, settings, now=NOW)
    assert result.compiled is False
    reference = _reference(settings, db_engine, cond)
    assert _all_members(db_engine, "engaged") == reference
    assert reference  # page views score in the bundled pipeline


def test_a_tag_segment_cannot_be_backfilled_and_says_why(
    db_engine: Engine, settings: Settings, people: dict[str, str]
) -> None:
    publish_segments(db_engine, [_spec(has_tag("vip"), "tagged")])
    with pytest.raises(bf.NotBackfillable, match="has_tag") as caught:
        bf.backfill(db_engine, settings, now=NOW)
    assert "trait" in caught.value.fix
    assert segment_summary(db_engine, "tagged").status == "backfilling"
    with pytest.raises(bf.NotBackfillable, match="tags are not stored"):
        bf.preview(db_engine, settings, _spec(has_tag("vip"), "tagged"))


def test_preview_counts_and_samples_and_writes_nothing(
    db_engine: Engine, settings: Settings, people: dict[str, str]
) -> None:
    found = bf.preview(db_engine, settings, HOT.spec(), sample=2, now=NOW)
    assert found.count == 3
    assert len(found.sample) == 2
    assert set(found.sample) <= {people[u] for u in ("ada", "ed", "fu")}
    again = bf.preview(db_engine, settings, HOT.spec(), sample=2, now=NOW)
    assert again == found  # a stable sample
    with Session(db_engine) as session:
        assert session.exec(select(func.count()).select_from(SegmentVersion)).one() == 0
        assert session.exec(select(func.count()).select_from(SegmentMember)).one() == 0
        assert session.exec(select(func.count()).where(Event.name == MEMBERSHIP)).one() == 0


def test_preview_of_a_manual_list_says_there_is_nothing_to_preview(
    db_engine: Engine, settings: Settings
) -> None:
    with pytest.raises(bf.NotBackfillable, match="manual list"):
        bf.preview(db_engine, settings, Segment("vip", manual=True).spec())


# --- the CLI --------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'stagecoach.db'}"
    environ = {
        "STAGECOACH_DATA_DIR": str(tmp_path / ".stagecoach"),
        "STAGECOACH_DATABASE_URL": url,
        "STAGECOACH_DEFINITIONS": f"{__name__}:DEFS",
    }
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    return environ


def test_the_cli_previews_the_project_segment_then_backfills_it(cli_env: dict[str, str]) -> None:
    from stagecoach.engine.services.storage import make_engine, upgrade

    db = make_engine(cli_env["STAGECOACH_DATABASE_URL"])
    upgrade(db)
    people = _ingest(db, PEOPLE)
    runner = CliRunner()

    shown = runner.invoke(app, ["segments", "preview", HOT.name])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == f"{HOT.name}: 3 contacts"
    assert sorted(line.strip() for line in lines[1:]) == sorted(
        people[u] for u in ("ada", "ed", "fu")
    )

    unknown = runner.invoke(app, ["segments", "preview", "hot-manufacturer"])
    assert unknown.exit_code == 2
    assert "no segment 'hot-manufacturer' (did you mean 'hot-manufacturers'?)" in unknown.output
    assert "use one of: hot-manufacturers" in unknown.output

    missing = runner.invoke(app, ["segments", "backfill", "hot-manufacturer"])
    assert missing.exit_code == 2
    assert "segment 'hot-manufacturer' is not published" in missing.output

    nothing = runner.invoke(app, ["segments", "backfill"])
    assert nothing.exit_code == 0, nothing.output
    assert "nothing to backfill" in nothing.output

    publish_segments(db, [HOT.spec()])
    done = runner.invoke(app, ["segments", "backfill", HOT.name])
    assert done.exit_code == 0, done.output
    assert f"{HOT.name} {HOT.spec().version[:12]}: ready, 3 members (+3 -0)" in done.output
    assert "3 contacts notified, sql" in done.output
    assert _all_members(db, HOT.name) == sorted(people[u] for u in ("ada", "ed", "fu"))
    db.dispose()
