"""Which contacts a published propensity version tells, read against the stored events:
the first score always, later ones only when they moved a step or crossed a band, small
drifts adding up; an unchanged score never; the same version twice stores nothing new."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from stagecoach.engine.domain.propensity import PROPENSITY_SCORED, SignalRule
from stagecoach.engine.services.analytics.pipeline import STAGES
from stagecoach.engine.services.analytics.store import AnalyticsStore, create_tables
from stagecoach.engine.services.analytics.synthetic import generate, to_database
from stagecoach.engine.services.prediction.propensity import TrainingConfig, retrain
from stagecoach.engine.services.prediction.signal import signal_moved
from stagecoach.engine.services.storage.models import Contact, Event, PropensityScore
from tests.helpers import migrated_engine

AT = datetime(2026, 12, 1, 6, tzinfo=UTC)


def _publish(db: Engine, version: int, scores: dict[str, float]) -> None:
    """Scores as ``publish`` leaves them: the table replaced by one version's rows."""
    with Session(db) as session:
        for contact_id in scores:
            if session.get(Contact, contact_id) is None:
                session.add(Contact(id=contact_id, stage="lead", traits={}))
        session.execute(sa.delete(PropensityScore))
        for contact_id, p in scores.items():
            session.add(
                PropensityScore(
                    contact_id=contact_id, model_version=version, probability=p, scored_at=AT
                )
            )
        session.commit()


def _events(db: Engine) -> list[tuple[str, str, dict[str, object]]]:
    with Session(db) as session:
        rows = session.exec(
            select(Event).where(col(Event.name) == PROPENSITY_SCORED).order_by(col(Event.id))
        ).all()
        return [(e.contact_id, e.message_id, dict(e.properties)) for e in rows]


def test_only_scores_that_moved_enough_are_sent(db_engine: Engine) -> None:
    _publish(db_engine, 1, {"a": 0.30, "b": 0.48, "c": 0.9012})
    first = signal_moved(db_engine, 1)
    assert (first.scored, first.signalled) == (3, 3)
    sent = _events(db_engine)
    assert [(c, m) for c, m, _ in sent] == [
        ("a", "propensity-v1:a"),
        ("b", "propensity-v1:b"),
        ("c", "propensity-v1:c"),
    ]
    assert sent[2][2] == {"propensity": 0.9, "previous": None, "model_version": 1, "band": 3}
    with Session(db_engine) as session:
        event = session.exec(select(Event).where(col(Event.message_id) == "propensity-v1:c")).one()
        assert event.context["traits"] == {
            "propensity": 0.9,
            "propensity_version": 1,
            "propensity_as_of": AT.isoformat(),
        }

    # a drifts 0.03 (kept back), b crosses 0.5, c does not move.
    _publish(db_engine, 2, {"a": 0.33, "b": 0.51, "c": 0.9})
    assert signal_moved(db_engine, 2).signalled == 1
    assert _events(db_engine)[-1] == (
        "b",
        "propensity-v2:b",
        {"propensity": 0.51, "previous": 0.48, "model_version": 2, "band": 2},
    )
    # a's drift adds up against the value last sent (0.30), not the last version's.
    _publish(db_engine, 3, {"a": 0.35, "b": 0.51, "c": 0.9})
    assert signal_moved(db_engine, 3).signalled == 1
    assert _events(db_engine)[-1][2]["previous"] == 0.30
    # The same version signalled again stores nothing: its message ids are taken.
    before = _events(db_engine)
    signal_moved(db_engine, 3)
    assert _events(db_engine) == before
    # Unchanged scores under a new version: nothing.
    _publish(db_engine, 4, {"a": 0.35, "b": 0.51, "c": 0.9})
    assert signal_moved(db_engine, 4).signalled == 0
    assert _events(db_engine) == before


def test_the_declared_step_and_bands_decide(db_engine: Engine) -> None:
    coarse = SignalRule(step=0.2, bands=())
    _publish(db_engine, 1, {"a": 0.40})
    signal_moved(db_engine, 1, rule=coarse)
    _publish(db_engine, 2, {"a": 0.55})
    assert signal_moved(db_engine, 2, rule=coarse).signalled == 0
    _publish(db_engine, 3, {"a": 0.61})
    assert signal_moved(db_engine, 3, rule=coarse).signalled == 1


def test_a_retrain_on_unchanged_history_sends_nothing(tmp_path: Path) -> None:
    """The events a retrain sends are not activity: were they counted, every contact told
    would look freshly active to the next retrain, and its score would move."""
    engine = migrated_engine(f"sqlite:///{tmp_path / 'stagecoach.db'}")
    con = duckdb.connect()
    create_tables(con)
    now = datetime.now(UTC)
    start = (now - timedelta(days=300)).replace(tzinfo=None)
    generate(con, 700, events_per_contact=8, start=start, days=300, fit_signal=0.5)
    to_database(con, engine, until=now)
    con.close()
    config = TrainingConfig(min_customers=20)
    with AnalyticsStore(tmp_path / "analytics.duckdb") as store:
        first = retrain(engine, store, STAGES, config)
        second = retrain(engine, store, STAGES, config)
    assert first.published
    assert second.published
    assert first.signalled == first.scored > 0
    assert second.signalled == 0
    assert len(_events(engine)) == first.scored
    engine.dispose()
