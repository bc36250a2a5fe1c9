"""journey versions, stage transitions, deliveries, suppressions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "journey_versions",
        sa.Column("version", sa.String(length=64), primary_key=True),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        _ts("published_at"),
    )
    op.create_index("ix_journey_versions_name", "journey_versions", ["name"])
    op.create_index("ix_journey_versions_published_at", "journey_versions", ["published_at"])

    op.create_table(
        "stage_transitions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(length=160), nullable=False, unique=True),
        sa.Column("contact_id", sa.String(length=64), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("from_stage", sa.String(length=64), nullable=True),
        sa.Column("to_stage", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=512), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("trigger_event_type", sa.String(length=128), nullable=True),
        sa.Column("trigger_message_id", sa.String(length=128), nullable=True),
        _ts("at"),
    )
    op.create_index("ix_stage_transitions_to_stage", "stage_transitions", ["to_stage"])
    op.create_index("ix_stage_transitions_contact_at", "stage_transitions", ["contact_id", "at"])

    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("idempotency_key", sa.String(length=256), nullable=False, unique=True),
        sa.Column("contact_id", sa.String(length=64), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("journey", sa.String(length=128), nullable=False),
        sa.Column("journey_version", sa.String(length=64), nullable=False),
        sa.Column("step_id", sa.String(length=128), nullable=False),
        sa.Column("enrolment", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("content_id", sa.String(length=128), nullable=True),
        sa.Column("content_version", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("provider_message_id", sa.String(length=256), nullable=True),
        sa.Column("error", sa.String(length=1024), nullable=True),
        _ts("created_at"),
        _ts("sent_at", nullable=True),
    )
    op.create_index("ix_deliveries_journey", "deliveries", ["journey"])
    op.create_index("ix_deliveries_status", "deliveries", ["status"])
    op.create_index("ix_deliveries_contact_created", "deliveries", ["contact_id", "created_at"])

    op.create_table(
        "suppressions",
        sa.Column("channel", sa.String(length=32), primary_key=True),
        sa.Column("address", sa.String(length=320), primary_key=True),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("contact_id", sa.String(length=64), nullable=True),
        _ts("created_at"),
    )
    op.create_index("ix_suppressions_contact_id", "suppressions", ["contact_id"])


def downgrade() -> None:
    op.drop_table("suppressions")
    op.drop_table("deliveries")
    op.drop_table("stage_transitions")
    op.drop_table("journey_versions")
