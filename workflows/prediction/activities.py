"""The retrain activity: sync the analytics store, train, publish, rescore, and send
``propensity.scored`` to the contacts whose score moved enough."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from temporalio import activity

from stagecoach.engine.protocol import PROPENSITY_RETRAIN_ACTIVITY


class PredictionActivities:
    """Activities of the retrain workflow, with the database, the analytics store's path,
    the pipeline's stage order and the training settings injected."""

    def __init__(
        self,
        *,
        db: Engine,
        analytics_path: Path,
        stages: Callable[[], Sequence[str]],
        target: str = "customer",
        horizon_days: int = 30,
        min_customers: int = 50,
        signal_step: float = 0.05,
        signal_bands: Sequence[float] = (0.2, 0.5, 0.8),
    ) -> None:
        self._db = db
        self._path = analytics_path
        self._stages = stages
        self._target = target
        self._horizon_days = horizon_days
        self._min_customers = min_customers
        self._signal_step = signal_step
        self._signal_bands = tuple(signal_bands)

    def all(self) -> list[Callable[..., object]]:
        return [self.retrain]

    @activity.defn(name=PROPENSITY_RETRAIN_ACTIVITY)
    def retrain(self) -> dict[str, Any]:
        """Train on the history up to now and publish a version with every score; too
        little history publishes nothing and says so (not an error: the Schedule just
        tries again next time)."""
        from stagecoach.engine.domain.propensity import SignalRule
        from stagecoach.engine.services.analytics.store import AnalyticsStore
        from stagecoach.engine.services.prediction.propensity import TrainingConfig, retrain

        config = TrainingConfig(
            target=self._target,
            horizon_days=self._horizon_days,
            min_customers=self._min_customers,
        )
        with AnalyticsStore(self._path) as store:
            result = retrain(
                self._db,
                store,
                list(self._stages()),
                config,
                rule=SignalRule(step=self._signal_step, bands=self._signal_bands),
            )
        if result.published:
            activity.logger.info(
                "propensity model v%s published: %s contacts scored, AUC %s, %s signalled",
                result.version,
                result.scored,
                result.metrics.get("auc"),
                result.signalled,
            )
        else:
            activity.logger.warning("propensity not retrained: %s", result.reason)
        return result.to_dict()
