"""journey enrolments: where each enrolment went, for analytics and `contact why`

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "journey_enrolments",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("contact_id", sa.String(length=64), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("journey", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("enrolment", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=512), nullable=True),
        sa.Column("arms", sa.JSON(), nullable=False),
        sa.Column("trail", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ux_journey_enrolments_contact",
        "journey_enrolments",
        ["contact_id", "journey", "enrolment"],
        unique=True,
    )
    op.create_index(
        "ix_journey_enrolments_journey_started", "journey_enrolments", ["journey", "started_at"]
    )


def downgrade() -> None:
    op.drop_table("journey_enrolments")
