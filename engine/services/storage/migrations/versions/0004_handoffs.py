"""handoffs

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "handoffs",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("idempotency_key", sa.String(length=256), nullable=False, unique=True),
        sa.Column("contact_id", sa.String(length=64), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("reason", sa.String(length=256), nullable=False),
        sa.Column("grade", sa.String(length=8), nullable=True),
        sa.Column("team", sa.String(length=64), nullable=True),
        sa.Column("owner", sa.String(length=128), nullable=True),
        sa.Column("owner_timezone", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        _ts("reminded_at", nullable=True),
        _ts("escalated_at", nullable=True),
        sa.Column("feedback_reason", sa.String(length=512), nullable=True),
        _ts("feedback_at", nullable=True),
        _ts("created_at"),
    )
    op.create_index("ix_handoffs_status", "handoffs", ["status"])
    op.create_index("ix_handoffs_contact_created", "handoffs", ["contact_id", "created_at"])


def downgrade() -> None:
    op.drop_table("handoffs")
