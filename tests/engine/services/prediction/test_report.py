"""The propensity report's spread of scores: each contact in its tenth, 1.0 in the last."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import Session

from stagecoach.engine.services.prediction.report import propensity_report
from stagecoach.engine.services.storage.models import PropensityModelVersion, PropensityScore
from tests.helpers import migrated_engine


def test_scores_fall_in_their_tenth(tmp_path: Path) -> None:
    engine = migrated_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    at = datetime(2026, 12, 1, tzinfo=UTC)
    with Session(engine) as session:
        session.add(
            PropensityModelVersion(
                version=1,
                trained_at=at,
                window_start=at,
                window_end=at,
                target_stage="customer",
                horizon_days=30,
                rows=10,
                customers=2,
                features=["events_30d"],
                artifact={"coef": [0.5]},
                artifact_sha256="0" * 64,
                metrics={"auc": 0.8, "reliability": []},
            )
        )
        for i, p in enumerate([0.0, 0.05, 0.1, 0.15, 0.55, 0.9999, 1.0]):
            session.add(PropensityScore(contact_id=f"c{i}", model_version=1, probability=p))
        session.commit()
    report = propensity_report(engine)
    counts = dict(report.section("scores").rows)
    assert counts == {
        "0.0-0.1": 2,
        "0.1-0.2": 2,
        "0.2-0.3": 0,
        "0.3-0.4": 0,
        "0.4-0.5": 0,
        "0.5-0.6": 1,
        "0.6-0.7": 0,
        "0.7-0.8": 0,
        "0.8-0.9": 0,
        "0.9-1.0": 2,
    }
    assert report.section("drivers").rows == [("events_30d", 0.5)]
    assert report.section("models").rows[0][0] == 1
    engine.dispose()
