"""segments: published versions, current members, and every entry and exit

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "segment_versions",
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("cursor", sa.String(64), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_segment_versions_name_status", "segment_versions", ["name", "status"])
    op.create_table(
        "segment_members",
        sa.Column("segment", sa.String(64), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("contact_id", sa.String(64), primary_key=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(512), nullable=False),
    )
    op.create_index("ix_segment_members_contact", "segment_members", ["contact_id"])
    op.create_table(
        "segment_changes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(256), nullable=False, unique=True),
        sa.Column("segment", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("contact_id", sa.String(64), nullable=False),
        sa.Column("entered", sa.Boolean(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=True),
    )
    op.create_index("ix_segment_changes_segment_at", "segment_changes", ["segment", "at"])
    op.create_index("ix_segment_changes_contact_at", "segment_changes", ["contact_id", "at"])


def downgrade() -> None:
    op.drop_table("segment_changes")
    op.drop_table("segment_members")
    op.drop_table("segment_versions")
