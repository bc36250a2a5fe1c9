"""propensity: model versions and per-contact scores

Revision ID: 0014
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
# The lead re-chains the issue-23 migrations at merge; on this branch main's 0011 is next.
down_revision: str | None = "0013"
branch_labels: str | None = None
depends_on: str | None = None


def _ts(name: str, *, nullable: bool = True) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "propensity_models",
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=True),
        _ts("trained_at", nullable=False),
        _ts("window_start", nullable=False),
        _ts("window_end", nullable=False),
        sa.Column("target_stage", sa.String(64), nullable=False),
        sa.Column("horizon_days", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("customers", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("artifact", sa.JSON(), nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("scored", sa.Integer(), nullable=False),
    )
    op.create_index("ix_propensity_models_trained_at", "propensity_models", ["trained_at"])
    op.create_table(
        "propensity_scores",
        sa.Column("contact_id", sa.String(64), primary_key=True),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        _ts("scored_at", nullable=False),
        sa.Column("top", sa.JSON(), nullable=False),
    )
    op.create_index("ix_propensity_scores_model_version", "propensity_scores", ["model_version"])


def downgrade() -> None:
    op.drop_table("propensity_scores")
    op.drop_table("propensity_models")
