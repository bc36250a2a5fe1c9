"""customer value: value refreshes (model versions) and each contact's latest value

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "value_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_value_runs_version", "value_runs", ["version"])
    op.create_table(
        "contact_values",
        sa.Column("contact_id", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tier", sa.String(16), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("clv", sa.Float(), nullable=True),
        sa.Column("p_alive", sa.Float(), nullable=True),
        sa.Column("traits", sa.JSON(), nullable=False),
    )
    op.create_index("ix_contact_values_run_id", "contact_values", ["run_id"])
    op.create_index("ix_contact_values_tier", "contact_values", ["tier"])


def downgrade() -> None:
    op.drop_table("contact_values")
    op.drop_table("value_runs")
