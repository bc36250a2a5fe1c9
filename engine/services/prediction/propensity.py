"""Conversion propensity: train on the project's own history, publish a version, score.

``fit_on_store`` builds the training set from the analytics store: at ``cutoffs``
past dates ``step_days`` apart, the latest ``horizon_days`` before the store's copy
(so every label is fully observed), each candidate contact's features then, labelled
with whether it reached the target stage within the horizon. Too few contacts reaching
it stops the run with ``NotEnoughData`` ("not enough data: N customers, need M") and
no model. ``publish`` records the version (window, metrics, feature list, the JSON
artifact and its hash) and replaces every contact's score in one transaction; the
hand-off activity and ``contact show`` read the score with :func:`current_propensity`.
``retrain`` is the whole run, as the Temporal Schedule's activity does it, ending with
the ``propensity.scored`` events that make the score a contact trait.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import sqlalchemy as sa
from sqlmodel import Session

from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.domain.propensity import SignalRule
from stagecoach.engine.services.analytics.store import AnalyticsStore, synced_at
from stagecoach.engine.services.prediction.features import (
    FeatureError,
    Frame,
    Vocabulary,
    frame,
    learn_vocabulary,
)
from stagecoach.engine.services.prediction.model import Fit, PropensityModel, artifact_hash, train
from stagecoach.engine.services.prediction.signal import signal_moved
from stagecoach.engine.services.storage.models import PropensityModelVersion, PropensityScore

WRITE_CHUNK = 20_000


class NotEnoughData(StagecoachError):
    """Too little history to train a model that is more than noise."""


@dataclass(frozen=True)
class TrainingConfig:
    target: str = "customer"
    horizon_days: int = 30
    cutoffs: int = 6
    step_days: int = 14
    min_customers: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("horizon_days", "cutoffs", "step_days", "min_customers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")


@dataclass
class Trained:
    fit: Fit
    window_start: datetime
    window_end: datetime
    rows: int
    customers: int
    config: TrainingConfig
    seconds: float = 0.0

    @property
    def model(self) -> PropensityModel:
        return self.fit.model


@dataclass
class Scores:
    at: datetime
    ids: list[str]
    probability: np.ndarray
    top: list[list[list[Any]]] = field(default_factory=list)
    """Per contact, ``[feature, value, effect]`` triples (``PropensityModel.top_rows``)."""
    seconds: float = 0.0


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def training_set(
    con: duckdb.DuckDBPyConnection, vocab: Vocabulary, as_of: datetime, config: TrainingConfig
) -> tuple[Frame, np.ndarray, datetime, datetime]:
    """Stacked rows over the cut-off dates, their contact groups and the data window."""
    horizon = timedelta(days=config.horizon_days)
    latest = _aware(as_of) - horizon
    xs, ys, ids = [], [], []
    cuts = [latest - timedelta(days=config.step_days * j) for j in range(config.cutoffs)]
    for at in cuts:
        part = frame(con, vocab, at, horizon=horizon)
        assert part.y is not None
        xs.append(part.x)
        ys.append(part.y)
        ids.extend(part.ids)
    width = len(vocab.names())
    stacked = Frame(
        ids=ids,
        x=np.vstack(xs) if xs else np.empty((0, width), np.float32),
        y=np.concatenate(ys) if ys else np.empty(0, np.int8),
    )
    return stacked, np.asarray(ids), min(cuts), _aware(as_of)


def fit_on_store(
    con: duckdb.DuckDBPyConnection,
    stages: Sequence[str],
    config: TrainingConfig,
    as_of: datetime,
) -> Trained:
    """Train and calibrate on the store's history up to ``as_of``.

    Raises:
        NotEnoughData: fewer than ``config.min_customers`` contacts reached the target
            within a horizon after a cut-off (or none stayed short of it).
        FeatureError: the target is not one of ``stages``.
    """
    started = time.perf_counter()
    vocab = learn_vocabulary(
        con, stages, config.target, _aware(as_of) - timedelta(days=config.horizon_days)
    )
    rows, groups, start, end = training_set(con, vocab, as_of, config)
    assert rows.y is not None
    customers = len(set(groups[rows.y == 1].tolist())) if len(groups) else 0
    negatives = int((rows.y == 0).sum())
    if customers < config.min_customers or negatives < config.min_customers:
        raise NotEnoughData(
            f"not enough data: {customers} customers, need {config.min_customers}"
            + (
                f" (and {negatives} who did not convert)"
                if negatives < config.min_customers
                else ""
            ),
            fix=f"let more history build up (contacts reaching {config.target!r} within "
            f"{config.horizon_days} days of a cut-off in the last "
            f"{config.cutoffs * config.step_days + config.horizon_days} days), or lower "
            "STAGECOACH_PROPENSITY_MIN_CUSTOMERS knowing the model will be noisier",
        )
    fit = train(vocab, rows.x, rows.y, groups, seed=config.seed)
    return Trained(
        fit=fit,
        window_start=start,
        window_end=end,
        rows=len(rows.ids),
        customers=customers,
        config=config,
        seconds=time.perf_counter() - started,
    )


def score_store(
    con: duckdb.DuckDBPyConnection, model: PropensityModel, at: datetime, *, explain: bool = True
) -> Scores:
    """Every current candidate's calibrated probability (and top features) at ``at``."""
    started = time.perf_counter()
    current = frame(con, model.vocab, at)
    probability = model.probability(current.x) if len(current.ids) else np.empty(0)
    top = model.top_rows(current.x) if explain and len(current.ids) else []
    return Scores(
        at=_aware(at),
        ids=current.ids,
        probability=probability,
        top=top,
        seconds=time.perf_counter() - started,
    )


def publish(db: sa.Engine, trained: Trained, scores: Scores, *, now: datetime) -> int:
    """Record the model version and replace every score with this run's, atomically."""
    artifact = trained.model.to_json()
    row = PropensityModelVersion(
        trained_at=now,
        window_start=trained.window_start,
        window_end=trained.window_end,
        target_stage=trained.config.target,
        horizon_days=trained.config.horizon_days,
        rows=trained.rows,
        customers=trained.customers,
        metrics={**trained.fit.metrics, "train_seconds": round(trained.seconds, 2)},
        features=trained.model.vocab.names(),
        artifact=artifact,
        artifact_sha256=artifact_hash(artifact),
        scored=len(scores.ids),
    )
    with Session(db) as session:
        session.add(row)
        session.flush()
        version = int(row.version or 0)
        session.execute(sa.delete(PropensityScore))
        table = PropensityScore.__table__  # type: ignore[attr-defined]
        for chunk in _chunks(scores, version):
            session.execute(sa.insert(table), chunk)
        session.commit()
    return version


def _chunks(scores: Scores, version: int) -> Iterator[list[dict[str, Any]]]:
    n = len(scores.ids)
    for lo in range(0, n, WRITE_CHUNK):
        hi = min(n, lo + WRITE_CHUNK)
        yield [
            {
                "contact_id": scores.ids[i],
                "model_version": version,
                "probability": round(float(scores.probability[i]), 5),
                "scored_at": scores.at,
                "top": scores.top[i] if scores.top else [],
            }
            for i in range(lo, hi)
        ]


@dataclass(frozen=True)
class RetrainResult:
    published: bool
    version: int | None = None
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    scored: int = 0
    signalled: int = 0
    """``propensity.scored`` events sent: contacts whose score moved enough."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "version": self.version,
            "reason": self.reason,
            "metrics": {k: v for k, v in self.metrics.items() if k != "reliability"},
            "scored": self.scored,
            "signalled": self.signalled,
        }


def retrain(
    db: sa.Engine,
    store: AnalyticsStore,
    stages: Sequence[str],
    config: TrainingConfig,
    *,
    now: datetime | None = None,
    rule: SignalRule | None = None,
    signal: bool = True,
) -> RetrainResult:
    """Copy the database into the store, train, and publish a version with its scores;
    then (``signal``) send ``propensity.scored`` to each contact whose score moved enough
    by ``rule`` (``stagecoach.engine.services.prediction.signal``).

    Too little history is an answer, not a failure: nothing is published and ``reason``
    says how much is missing."""
    store.sync(db)
    with store.read() as con:
        as_of = synced_at(con) or datetime.now(UTC)
        try:
            trained = fit_on_store(con, stages, config, as_of)
        except NotEnoughData as exc:
            return RetrainResult(published=False, reason=exc.message)
        except FeatureError as exc:
            # A pipeline without the target stage (say the B2B funnel's "closing"): the
            # Schedule's runs say so instead of failing every time.
            return RetrainResult(
                published=False,
                reason=f"{exc}: set STAGECOACH_PROPENSITY_TARGET_STAGE to the stage a "
                "conversion reaches",
            )
        scores = score_store(con, trained.model, as_of)
    version = publish(db, trained, scores, now=now or datetime.now(UTC))
    signalled = signal_moved(db, version, rule=rule).signalled if signal else 0
    return RetrainResult(
        published=True,
        version=version,
        metrics=trained.fit.metrics,
        scored=len(scores.ids),
        signalled=signalled,
    )
