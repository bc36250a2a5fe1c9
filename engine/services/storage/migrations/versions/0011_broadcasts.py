"""broadcasts: the campaign, its audience snapshot, and WeChat mass-send jobs

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def _ts(name: str, *, nullable: bool = True) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "broadcasts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(512), nullable=True),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.Column("audience_version", sa.String(64), nullable=True),
        sa.Column("audience_size", sa.Integer(), nullable=False),
        sa.Column("winner", sa.String(64), nullable=True),
        sa.Column("ab", sa.JSON(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("scheduled_at"),
        _ts("started_at"),
        _ts("finished_at"),
    )
    op.create_index("ix_broadcasts_status", "broadcasts", ["status"])
    op.create_table(
        "broadcast_recipients",
        sa.Column("broadcast_id", sa.String(64), primary_key=True),
        sa.Column("contact_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        _ts("send_at", nullable=False),
        sa.Column("variant", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(256), nullable=True),
        _ts("sent_at"),
    )
    op.create_index(
        "ix_broadcast_recipients_batch",
        "broadcast_recipients",
        ["broadcast_id", "status", "send_at", "seq"],
    )
    op.create_table(
        "broadcast_jobs",
        sa.Column("clientmsgid", sa.String(64), primary_key=True),
        sa.Column("broadcast_id", sa.String(64), nullable=False),
        sa.Column("appid", sa.String(64), nullable=False),
        sa.Column("msg_id", sa.String(64), nullable=True),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("total", sa.Integer(), nullable=True),
        sa.Column("filtered", sa.Integer(), nullable=True),
        sa.Column("sent", sa.Integer(), nullable=True),
        sa.Column("errors", sa.Integer(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("finished_at"),
    )
    op.create_index("ix_broadcast_jobs_broadcast_id", "broadcast_jobs", ["broadcast_id"])
    op.create_index("ix_broadcast_jobs_msg_id", "broadcast_jobs", ["msg_id"])


def downgrade() -> None:
    op.drop_table("broadcast_jobs")
    op.drop_table("broadcast_recipients")
    op.drop_table("broadcasts")
