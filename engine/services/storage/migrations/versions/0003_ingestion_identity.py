"""identities, outbox, write keys, merges, consents

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "identities",
        sa.Column("kind", sa.String(length=32), primary_key=True),
        sa.Column("value", sa.String(length=320), primary_key=True),
        sa.Column("contact_id", sa.String(length=64), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        _ts("created_at"),
    )
    op.create_index("ix_identities_contact_id", "identities", ["contact_id"])

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("contact_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.Integer(), sa.ForeignKey("events.id"), nullable=True),
        sa.Column("merged_into", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=512), nullable=True),
        _ts("created_at"),
    )
    op.create_index("ix_outbox_contact_id", "outbox", ["contact_id", "id"])

    op.create_table(
        "write_keys",
        sa.Column("key_hash", sa.String(length=64), primary_key=True),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=True),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
    )

    op.create_table(
        "merges",
        sa.Column("merged_id", sa.String(length=64), primary_key=True),
        sa.Column("into_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=256), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=True),
        _ts("at"),
    )
    op.create_index("ix_merges_into_id", "merges", ["into_id"])

    op.create_table(
        "consents",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("contact_id", sa.String(length=64), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("wording", sa.String(length=2048), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=True),
        _ts("at"),
        sa.Column("proof", sa.String(length=64), nullable=False),
    )
    op.create_index("ix_consents_contact_at", "consents", ["contact_id", "id"])


def downgrade() -> None:
    op.drop_table("consents")
    op.drop_table("merges")
    op.drop_table("write_keys")
    op.drop_table("outbox")
    op.drop_table("identities")
