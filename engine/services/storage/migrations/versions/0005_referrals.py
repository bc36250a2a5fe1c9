"""referral codes, referrals and rewards

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _contact(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.String(length=64), sa.ForeignKey("contacts.id"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "referral_codes",
        sa.Column("code", sa.String(length=16), primary_key=True),
        _contact("referrer_id"),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("expires_at"),
    )
    op.create_index("ix_referral_codes_referrer_id", "referral_codes", ["referrer_id"])
    op.create_index(
        "ux_referral_codes_referrer_generation",
        "referral_codes",
        ["referrer_id", "generation"],
        unique=True,
    )

    op.create_table(
        "referrals",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "code", sa.String(length=16), sa.ForeignKey("referral_codes.code"), nullable=False
        ),
        _contact("referrer_id"),
        sa.Column(
            "referee_id",
            sa.String(length=64),
            sa.ForeignKey("contacts.id"),
            nullable=False,
            unique=True,
        ),
        sa.Column("channel", sa.String(length=32), nullable=True),
        sa.Column("device_id", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        _ts("created_at"),
        _ts("converted_at", nullable=True),
    )
    op.create_index("ix_referrals_code", "referrals", ["code"])
    op.create_index("ix_referrals_referrer_id", "referrals", ["referrer_id"])
    op.create_index("ix_referrals_device_id", "referrals", ["device_id"])
    op.create_index("ix_referrals_status", "referrals", ["status"])

    op.create_table(
        "rewards",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "referral_id",
            sa.Integer(),
            sa.ForeignKey("referrals.id"),
            nullable=False,
            unique=True,
        ),
        _contact("referrer_id"),
        sa.Column("content_id", sa.String(length=128), nullable=False),
        sa.Column("coupon_code", sa.String(length=32), nullable=False, unique=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        _ts("hold_until"),
        _ts("created_at"),
        _ts("released_at", nullable=True),
        _ts("cancelled_at", nullable=True),
        sa.Column("cancel_reason", sa.String(length=256), nullable=True),
        _ts("redeemed_at", nullable=True),
    )
    op.create_index("ix_rewards_status", "rewards", ["status"])
    op.create_index("ix_rewards_referrer_created", "rewards", ["referrer_id", "created_at"])


def downgrade() -> None:
    op.drop_table("rewards")
    op.drop_table("referrals")
    op.drop_table("referral_codes")
