"""Publishing journeys: validate every definition, store specs by content hash, read back."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from stagecoach.engine.domain.errors import ConfigurationError, DatabaseError
from stagecoach.engine.domain.journeys import (
    Journey,
    JourneySpec,
    JourneyValidationError,
    WaitStep,
    send,
    stage_entered,
    wait_for,
)
from stagecoach.engine.services.publishing import (
    DefinitionsInvalid,
    JourneyNotFound,
    VersionNotFound,
    definitions_context,
    get_version,
    latest,
    latest_versions,
    publish,
    publish_bundled,
    validate_definitions,
    versions,
)
from stagecoach.engine.services.storage import make_engine
from stagecoach.engine.services.storage.models import JourneyVersion
from stagecoach.engine.settings import Settings
from stagecoach.workflows.journeys import B2B_NURTURE, JOURNEYS, compile_journeys


def _stored(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(JourneyVersion)).one()


def _variant(settings: Settings, *, pause_days: int = 2) -> JourneySpec:
    """b2b_nurture with a shorter pause before the case study: a different version."""
    steps = [
        replace(s, duration=timedelta(days=pause_days))
        if isinstance(s, WaitStep) and s.id == "evaluation-pause"
        else s
        for s in B2B_NURTURE.steps
    ]
    journeys = {**JOURNEYS, "b2b_nurture": replace(B2B_NURTURE, steps=steps)}
    return validate_definitions(settings, journeys=journeys)["b2b_nurture"]


def _broken(name: str) -> Journey:
    return Journey(
        name,
        entry=stage_entered("suspect"),
        steps=[
            send("wp-digital-transformation", id="hello"),
            wait_for("no.such.event", timeout=timedelta(days=1), id="listen"),
        ],
    )


def test_bundled_definitions_validate(settings: Settings) -> None:
    specs = validate_definitions(settings)
    assert set(specs) == set(JOURNEYS)
    direct = compile_journeys(definitions_context(settings))
    assert {n: s.version for n, s in specs.items()} == {n: s.version for n, s in direct.items()}


def test_context_holds_catalogue_pipeline_stages_and_states_and_journeys(
    settings: Settings,
) -> None:
    ctx = definitions_context(settings)
    assert "content.downloaded" in ctx.known_event_types
    assert {"suspect", "advocate", "disqualified"} <= ctx.stages
    assert ctx.known_journeys == frozenset(JOURNEYS)
    assert ctx.content is None


def test_unknown_pipeline_is_a_configuration_error_naming_the_choices(tmp_path: Any) -> None:
    with pytest.raises(ConfigurationError, match="STAGECOACH_PIPELINE") as caught:
        validate_definitions(Settings(data_dir=tmp_path, pipeline="nope"))
    assert "'default'" in caught.value.fix


def test_publish_is_idempotent(db_engine: Engine, settings: Settings) -> None:
    first = publish_bundled(db_engine, settings)
    second = publish_bundled(db_engine, settings)
    assert [(r.name, r.status) for r in first] == [(n, "created") for n in JOURNEYS]
    assert [(r.name, r.status) for r in second] == [(n, "unchanged") for n in JOURNEYS]
    assert [r.version for r in first] == [r.version for r in second]
    assert _stored(db_engine) == len(JOURNEYS)


def test_losing_the_insert_race_counts_as_already_published(
    db_engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = validate_definitions(settings)["onboarding"]
    publish(db_engine, spec)
    real_get = Session.get
    looks = 0

    def blind_once(self: Session, *args: Any, **kwargs: Any) -> Any:
        # The first look misses the row, as when another process inserts it just after.
        nonlocal looks
        looks += 1
        return None if looks == 1 else real_get(self, *args, **kwargs)

    monkeypatch.setattr(Session, "get", blind_once)
    result = publish(db_engine, spec)
    assert (result.created, result.kept) == (False, None)
    assert looks == 2
    assert _stored(db_engine) == 1


def test_latest_picks_the_newest_and_an_older_spec_is_not_reinstated(
    db_engine: Engine, settings: Settings
) -> None:
    bundled = validate_definitions(settings)["b2b_nurture"]
    older = _variant(settings)
    assert publish(db_engine, older).created
    assert publish(db_engine, bundled).created
    assert latest(db_engine, "b2b_nurture") == bundled
    assert [v.version for v in versions(db_engine, "b2b_nurture")] == [
        bundled.version,
        older.version,
    ]

    # Going back is 'rollback' (tests/engine/services/test_deploy_safety.py), never a
    # publish: the older spec is reported and the latest stays.
    back = publish(db_engine, older)
    assert (back.created, back.kept, back.status) == (False, bundled.version, "older")
    assert latest(db_engine, "b2b_nurture") == bundled
    assert latest_versions(db_engine)["b2b_nurture"].version == bundled.version
    assert _stored(db_engine) == 2


def test_a_journey_failing_validation_is_refused_and_nothing_is_stored(
    db_engine: Engine, settings: Settings
) -> None:
    journeys = {**JOURNEYS, "broken": _broken("broken")}
    with pytest.raises(JourneyValidationError) as caught:
        publish_bundled(db_engine, settings, journeys=journeys)
    assert caught.value.journey == "broken"
    assert "no.such.event" in caught.value.message
    assert "'listen'" in caught.value.message
    assert _stored(db_engine) == 0


def test_every_problem_of_every_journey_is_listed_at_once(settings: Settings) -> None:
    journeys = {**JOURNEYS, "broken": _broken("broken"), "also_broken": _broken("also_broken")}
    with pytest.raises(DefinitionsInvalid) as caught:
        validate_definitions(settings, journeys=journeys)
    assert caught.value.journeys == ("broken", "also_broken")
    assert {p.journey for p in caught.value.problems} == {"broken", "also_broken"}
    assert "journeys 'broken', 'also_broken' have 2 problems" in caught.value.message


def test_get_version_round_trips_the_compiled_spec(db_engine: Engine, settings: Settings) -> None:
    spec = validate_definitions(settings)["b2b_nurture"]
    publish(db_engine, spec)
    stored = get_version(db_engine, spec.version)
    assert stored == spec
    assert stored.version == spec.version
    assert get_version(db_engine, spec.version[:10]) == spec


def test_unknown_version_and_unpublished_journey_name_the_fix(db_engine: Engine) -> None:
    with pytest.raises(VersionNotFound):
        get_version(db_engine, "0" * 64)
    with pytest.raises(JourneyNotFound) as caught:
        latest(db_engine, "b2b_nurture")
    assert "stagecoach journeys publish" in caught.value.fix


def test_an_unmigrated_database_is_a_database_error() -> None:
    bare = make_engine("sqlite://")
    with pytest.raises(DatabaseError, match="journey_versions") as caught:
        latest(bare, "b2b_nurture")
    assert "stagecoach db upgrade" in caught.value.fix
