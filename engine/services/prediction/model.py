"""The propensity model: scikit-learn fits it, plain JSON stores it, numpy scores it.

The fit is a logistic regression on standardised features, calibrated by scikit-learn's
``CalibratedClassifierCV`` with isotonic regression (out-of-fold predictions, one
calibrator: ``ensemble=False``). A logistic model was chosen over boosted trees because
each feature's share of a contact's score is exact and readable (coefficient times the
standardised value), which is what sales see with a hand-off, and because the whole
fitted model is a few hundred numbers: it is stored as JSON (``PropensityModel.to_json``)
in the database next to its metrics, never as a pickle, so loading a model runs no code
whoever wrote the row. ``PropensityModel.probability`` reproduces scikit-learn's
``predict_proba`` from those numbers (a test holds them equal).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from stagecoach.engine.services.prediction.features import FeatureError, Vocabulary

CALIBRATION_BINS = 10
TOP_FEATURES = 3
_KIND_CODES = {"flag": 0, "log_count": 1, "log_days": 1, "log_number": 2}
"""How each feature kind reads (``features.readable``), as codes for vectorised work."""


def expand_top(row: list[Any]) -> list[dict[str, Any]]:
    """Stored ``[feature, value, effect]`` triples as the hand-off and reports show them."""
    return [{"feature": f, "value": v, "effect": e} for f, v, e in row]


@dataclass(frozen=True)
class PropensityModel:
    vocab: Vocabulary
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    iso_x: np.ndarray
    iso_y: np.ndarray

    def decision(self, x: np.ndarray) -> np.ndarray:
        """The logistic model's log-odds, before calibration."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return np.asarray(z @ self.coef + self.intercept)

    def probability(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: the isotonic map of the log-odds (clipped at its ends)."""
        p = np.interp(self.decision(x), self.iso_x, self.iso_y)
        return np.asarray(np.clip(p, 0.0, 1.0))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Each feature's share of each row's log-odds, relative to the average contact."""
        return np.asarray((np.asarray(x, dtype=np.float64) - self.mean) / self.scale * self.coef)

    def top(self, x: np.ndarray, k: int = TOP_FEATURES) -> list[list[dict[str, Any]]]:
        """Per row, the ``k`` features that moved its score most, either way, as
        ``{"feature", "value", "effect"}`` (value as a person reads it, effect in log-odds)."""
        return [expand_top(row) for row in self.top_rows(x, k)]

    def top_rows(self, x: np.ndarray, k: int = TOP_FEATURES) -> list[list[list[Any]]]:
        """:meth:`top` in the compact form stored with each score: ``[feature, value,
        effect]`` triples. A million contacts' worth is built in seconds: the picking and
        the readable values are vectorised, only the lists are Python."""
        contrib = self.contributions(x)
        if not len(contrib):
            return []
        cols = self.vocab.columns()
        k = min(k, contrib.shape[1])
        size = np.abs(contrib)
        # The k largest per row without sorting whole rows, then those k in order.
        picked = np.argpartition(-size, k - 1, axis=1)[:, :k]
        rows = np.arange(len(contrib))[:, None]
        order = np.take_along_axis(picked, np.argsort(-size[rows, picked], axis=1), axis=1)
        effects = np.round(contrib[rows, order], 3)
        raw = np.asarray(x, dtype=np.float64)[rows, order]
        kind = np.array([_KIND_CODES.get(c.kind, 3) for c in cols])[order]
        shown = np.where(
            kind == 1,
            np.round(np.expm1(raw), 1),
            np.where(kind == 2, np.round(np.sign(raw) * np.expm1(np.abs(raw)), 1), raw),
        )
        shown = np.where(kind == 3, np.round(raw, 3), shown)
        names = [c.name for c in cols]
        out: list[list[list[Any]]] = []
        for row, vrow, erow, krow in zip(
            order.tolist(), shown.tolist(), effects.tolist(), kind.tolist(), strict=True
        ):
            out.append(
                [
                    [names[j], v >= 0.5 if kd == 0 else v, e]
                    for j, v, e, kd in zip(row, vrow, erow, krow, strict=True)
                    if e != 0
                ]
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "logistic+isotonic",
            "vocabulary": self.vocab.to_dict(),
            "features": self.vocab.names(),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": float(self.intercept),
            "isotonic_x": self.iso_x.tolist(),
            "isotonic_y": self.iso_y.tolist(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any], sha256: str | None = None) -> PropensityModel:
        """Rebuild a stored model; numbers only, checked for shape and finiteness.

        Raises:
            FeatureError: the artifact is not one this code wrote, or its hash differs.
        """
        if sha256 is not None and artifact_hash(raw) != sha256:
            raise FeatureError("model artifact does not match its recorded sha256")
        if raw.get("kind") != "logistic+isotonic":
            raise FeatureError(f"model artifact of unknown kind {raw.get('kind')!r}")
        vocab = Vocabulary.from_dict(raw.get("vocabulary") or {})
        n = len(vocab.names())

        def vector(name: str, size: int | None = n) -> np.ndarray:
            value = np.asarray(raw.get(name), dtype=np.float64)
            if value.ndim != 1 or (size is not None and value.shape[0] != size):
                raise FeatureError(f"model artifact: {name} has the wrong shape")
            if not np.all(np.isfinite(value)):
                raise FeatureError(f"model artifact: {name} is not finite")
            return value

        iso_x = vector("isotonic_x", None)
        iso_y = vector("isotonic_y", len(iso_x))
        intercept = float(raw.get("intercept", math.nan))
        if not math.isfinite(intercept) or len(iso_x) < 1:
            raise FeatureError("model artifact: intercept or calibration missing")
        scale = vector("scale")
        if np.any(scale <= 0):
            raise FeatureError("model artifact: a scale is not positive")
        return cls(vocab, vector("mean"), scale, vector("coef"), intercept, iso_x, iso_y)


def artifact_hash(raw: dict[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


@dataclass(frozen=True)
class Fit:
    model: PropensityModel
    metrics: dict[str, Any]


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error: the count-weighted mean gap between the predicted
    and the observed rate over ``bins`` equal-width probability bins."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if len(y) == 0:
        return math.nan
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += mask.sum() * abs(p[mask].mean() - y[mask].mean())
    return float(total / len(y))


def reliability(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict[str, Any]]:
    """Per probability bin: contacts, mean predicted and observed rate (calibration plot)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        mask = idx == b
        n = int(mask.sum())
        out.append(
            {
                "bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}",
                "contacts": n,
                "predicted": round(float(p[mask].mean()), 4) if n else None,
                "observed": round(float(y[mask].mean()), 4) if n else None,
            }
        )
    return out


def auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(set(np.asarray(y).tolist())) < 2:
        return math.nan
    return float(roc_auc_score(y, score))


def train(
    vocab: Vocabulary,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    seed: int = 0,
    test_share: float = 0.25,
) -> Fit:
    """Fit and calibrate on three quarters of the contacts; measure on the rest.

    Rows of one contact (several cut-off dates) stay on one side of the split, so the
    metrics are for contacts the model has never seen."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupShuffleSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    split = GroupShuffleSplit(n_splits=1, test_size=test_share, random_state=seed)
    train_idx, test_idx = next(split.split(x, y, groups))
    if len(set(y[train_idx].tolist())) < 2:
        train_idx = test_idx = np.arange(len(y))
    base = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    calibrated = CalibratedClassifierCV(base, method="isotonic", cv=3, ensemble=False)
    calibrated.fit(x[train_idx], y[train_idx])
    fitted = calibrated.calibrated_classifiers_[0]
    scaler, logistic = fitted.estimator[0], fitted.estimator[1]
    iso = fitted.calibrators[0]
    scale = np.where(np.asarray(scaler.scale_) > 0, scaler.scale_, 1.0)
    model = PropensityModel(
        vocab=vocab,
        mean=np.asarray(scaler.mean_, dtype=np.float64),
        scale=np.asarray(scale, dtype=np.float64),
        coef=np.asarray(logistic.coef_[0], dtype=np.float64),
        intercept=float(logistic.intercept_[0]),
        iso_x=np.asarray(iso.X_thresholds_, dtype=np.float64),
        iso_y=np.asarray(iso.y_thresholds_, dtype=np.float64),
    )
    p = model.probability(x[test_idx])
    held = y[test_idx]
    metrics = {
        "auc": _round(auc(held, p)),
        "calibration_error": _round(calibration_error(held, p)),
        "brier": _round(float(np.mean((p - held) ** 2)) if len(held) else math.nan),
        "base_rate": _round(float(held.mean()) if len(held) else math.nan),
        "train_rows": len(train_idx),
        "test_rows": len(test_idx),
        "test_contacts": len(set(groups[test_idx].tolist())),
        "reliability": reliability(held, p),
    }
    return Fit(model=model, metrics=metrics)


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)
