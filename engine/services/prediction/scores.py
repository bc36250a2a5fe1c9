"""A contact's published propensity, as the hand-off, ``contact show`` and the API read it.

Kept apart from training (no DuckDB, scikit-learn or numpy here): the contact
activities import it on every worker."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from stagecoach.engine.services.storage.models import PropensityModelVersion, PropensityScore


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def current_propensity(db: sa.Engine, contact_id: str) -> dict[str, Any] | None:
    """The contact's latest score with its model version and "as of"; None if unscored."""
    with Session(db) as session:
        found = session.exec(
            select(PropensityScore, PropensityModelVersion)
            .join(
                PropensityModelVersion,
                col(PropensityModelVersion.version) == col(PropensityScore.model_version),
            )
            .where(col(PropensityScore.contact_id) == contact_id)
        ).first()
    if found is None:
        return None
    score, model = found
    return {
        "probability": round(score.probability, 3),
        "target_stage": model.target_stage,
        "horizon_days": model.horizon_days,
        "model_version": score.model_version,
        "as_of": _aware(score.scored_at).isoformat(),
        # Stored as [feature, value, effect] triples: a million scores write faster.
        "top_features": [
            t if isinstance(t, dict) else {"feature": t[0], "value": t[1], "effect": t[2]}
            for t in score.top
        ],
    }


def latest_version(db: sa.Engine) -> PropensityModelVersion | None:
    with Session(db) as session:
        return session.exec(
            select(PropensityModelVersion).order_by(col(PropensityModelVersion.version).desc())
        ).first()
