"""The propensity model on generated history whose generating process is known: trained
through the public functions, stored as JSON, loaded back and scored the same."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from stagecoach.engine.services.analytics.pipeline import STAGES
from stagecoach.engine.services.analytics.store import create_tables
from stagecoach.engine.services.analytics.synthetic import generate
from stagecoach.engine.services.prediction.features import FeatureError, Vocabulary, frame
from stagecoach.engine.services.prediction.model import (
    PropensityModel,
    artifact_hash,
    calibration_error,
    expand_top,
)
from stagecoach.engine.services.prediction.propensity import (
    NotEnoughData,
    Trained,
    TrainingConfig,
    fit_on_store,
    publish,
    score_store,
)
from stagecoach.engine.services.prediction.scores import current_propensity
from stagecoach.engine.services.storage.models import PropensityModelVersion, PropensityScore

START = datetime(2025, 1, 1)
AS_OF = (START + timedelta(days=150)).replace(tzinfo=UTC)


@pytest.fixture(scope="module")
def history() -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect(":memory:")
    create_tables(con)
    generate(con, 6000, events_per_contact=10, seed=3, start=START, fit_signal=0.5)
    yield con
    con.close()


@pytest.fixture(scope="module")
def trained(history: duckdb.DuckDBPyConnection) -> Trained:
    return fit_on_store(history, STAGES, TrainingConfig(), AS_OF)


def test_it_learns_the_generating_process_and_is_calibrated(trained: Trained) -> None:
    metrics = trained.fit.metrics
    assert metrics["auc"] > 0.85
    assert metrics["calibration_error"] < 0.03
    coef = dict(zip(trained.model.vocab.names(), trained.model.coef, strict=True))
    # The process: bigger companies and software/finance go further, retail does not.
    assert coef["trait:employees"] > 0.2
    assert coef["trait:industry=software"] > coef["trait:industry=retail"]
    assert trained.customers >= 50
    assert trained.window_start == AS_OF - timedelta(days=30 + 14 * 5)


def test_the_json_artifact_scores_exactly_as_scikit_learn_would(
    history: duckdb.DuckDBPyConnection, trained: Trained
) -> None:
    raw = json.loads(json.dumps(trained.model.to_json()))  # as the database returns it
    loaded = PropensityModel.from_json(raw, artifact_hash(raw))
    current = frame(history, loaded.vocab, AS_OF)
    assert len(current.ids) > 1000
    np.testing.assert_allclose(
        loaded.probability(current.x), trained.model.probability(current.x), atol=1e-12
    )
    # And against scikit-learn's own predict_proba, refitting the same pipeline.
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = frame(history, loaded.vocab, AS_OF - timedelta(days=30), horizon=timedelta(days=30))
    assert rows.y is not None
    fitted = CalibratedClassifierCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        method="isotonic",
        cv=3,
        ensemble=False,
    ).fit(rows.x.astype(np.float64), rows.y)
    inner = fitted.calibrated_classifiers_[0]
    mirror = PropensityModel(
        vocab=loaded.vocab,
        mean=inner.estimator[0].mean_,
        scale=np.where(inner.estimator[0].scale_ > 0, inner.estimator[0].scale_, 1.0),
        coef=inner.estimator[1].coef_[0],
        intercept=float(inner.estimator[1].intercept_[0]),
        iso_x=inner.calibrators[0].X_thresholds_,
        iso_y=inner.calibrators[0].y_thresholds_,
    )
    np.testing.assert_allclose(
        mirror.probability(current.x),
        fitted.predict_proba(current.x.astype(np.float64))[:, 1],
        atol=1e-9,
    )


def test_a_tampered_or_foreign_artifact_is_refused(trained: Trained) -> None:
    raw = trained.model.to_json()
    good = artifact_hash(raw)
    changed = {**raw, "intercept": raw["intercept"] + 1}
    with pytest.raises(FeatureError, match="sha256"):
        PropensityModel.from_json(changed, good)
    with pytest.raises(FeatureError, match="unknown kind"):
        PropensityModel.from_json({**raw, "kind": "pickle"})
    with pytest.raises(FeatureError, match="wrong shape"):
        PropensityModel.from_json({**raw, "coef": raw["coef"][:-1]})
    with pytest.raises(FeatureError, match="not finite"):
        PropensityModel.from_json({**raw, "mean": [float("nan")] * len(raw["mean"])})
    bad_vocab = {**raw["vocabulary"], "events": ["x') OR 1=1 --"]}
    with pytest.raises(FeatureError, match="not plain"):
        PropensityModel.from_json({**raw, "vocabulary": bad_vocab})


def test_scores_come_with_the_features_that_moved_them(
    history: duckdb.DuckDBPyConnection, trained: Trained
) -> None:
    scores = score_store(history, trained.model, AS_OF)
    assert len(scores.ids) == len(scores.probability) == len(scores.top)
    assert ((scores.probability >= 0) & (scores.probability <= 1)).all()
    top = expand_top(scores.top[0])
    assert 1 <= len(top) <= 3
    assert all(set(t) == {"feature", "value", "effect"} for t in top)
    effects = [abs(t["effect"]) for t in top]
    assert effects == sorted(effects, reverse=True)
    # The effects are the model's contributions, and the values read as counts and days.
    row = frame(history, trained.model.vocab, AS_OF)
    contrib = trained.model.contributions(row.x[:1])[0]
    names = trained.model.vocab.names()
    for t in top:
        assert t["effect"] == pytest.approx(contrib[names.index(t["feature"])], abs=1e-3)
        if t["feature"].startswith("stage:"):
            assert isinstance(t["value"], bool)
        elif t["feature"].startswith("events"):
            assert t["value"] == round(t["value"])  # a count, not its logarithm


def test_too_little_history_builds_no_model(history: duckdb.DuckDBPyConnection) -> None:
    early = (START + timedelta(days=25)).replace(tzinfo=UTC)  # every cut-off before day 1
    with pytest.raises(NotEnoughData, match=r"^not enough data: \d+ customers, need 5000$"):
        fit_on_store(history, STAGES, TrainingConfig(min_customers=5000), AS_OF)
    with pytest.raises(NotEnoughData, match=r"^not enough data: 0 customers, need 50"):
        fit_on_store(history, STAGES, TrainingConfig(), early)


@pytest.mark.parametrize(
    ("stages", "target", "message"),
    [
        (STAGES, "buyer", "not a stage of the pipeline"),
        (STAGES, "suspect", "is the first stage"),
    ],
)
def test_a_bad_target_stage_is_named(stages: tuple[str, ...], target: str, message: str) -> None:
    with pytest.raises(FeatureError, match=message):
        Vocabulary(stages=stages, target=target)


def test_bad_training_settings_are_named() -> None:
    with pytest.raises(ValueError, match="horizon_days must be at least 1"):
        TrainingConfig(horizon_days=0)


def test_calibration_error_of_a_perfectly_calibrated_score_is_zero() -> None:
    p = np.array([0.25] * 4 + [0.75] * 4)
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    assert calibration_error(y, p) == 0.0
    assert calibration_error(y, 1 - p) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_publishing_records_the_version_and_replaces_every_score(
    history: duckdb.DuckDBPyConnection, trained: Trained, db_engine: Engine, database: str
) -> None:
    assert db_engine.dialect.name == database
    scores = score_store(history, trained.model, AS_OF)
    first = publish(db_engine, trained, scores, now=AS_OF)
    second = publish(db_engine, trained, scores, now=AS_OF + timedelta(days=1))
    assert second == first + 1
    with Session(db_engine) as session:
        rows = session.exec(select(PropensityScore)).all()
        assert len(rows) == len(scores.ids)
        assert {r.model_version for r in rows} == {second}
        version = session.get(PropensityModelVersion, second)
        assert version is not None
        assert version.features == trained.model.vocab.names()
        assert version.scored == len(scores.ids)
        loaded = PropensityModel.from_json(version.artifact, version.artifact_sha256)
    contact = scores.ids[0]
    shown = current_propensity(db_engine, contact)
    assert shown is not None
    assert shown["model_version"] == second
    assert shown["probability"] == round(
        float(loaded.probability(frame(history, loaded.vocab, AS_OF).x[:1])[0]), 3
    )
    assert shown["top_features"] == expand_top(scores.top[0])
    assert current_propensity(db_engine, "nobody") is None
