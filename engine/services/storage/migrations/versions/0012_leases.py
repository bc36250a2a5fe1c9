"""leases: shared background work held by one replica at a time; the outbox in buckets

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None

BUCKETS = 64
"""``stagecoach.engine.services.storage.models.OUTBOX_BUCKETS`` when this was written: a
migration keeps its own copy, so it means the same thing whatever the code says later."""


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("token", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("bucket", sa.Integer(), nullable=True))
    # Rows waiting at upgrade time get their bucket as new ones will (MD5 of the id).
    conn = op.get_bind()
    outbox = sa.table("outbox", sa.column("id", sa.Integer), sa.column("contact_id", sa.String))
    rows = conn.execute(sa.select(outbox.c.id, outbox.c.contact_id)).all()
    by_bucket: dict[int, list[int]] = {}
    for row_id, contact_id in rows:
        digest = hashlib.md5(contact_id.encode(), usedforsecurity=False).digest()
        by_bucket.setdefault(digest[15] % BUCKETS, []).append(row_id)
    for bucket, ids in by_bucket.items():
        for n in range(0, len(ids), 500):
            conn.execute(
                sa.text("UPDATE outbox SET bucket = :b WHERE id IN :ids").bindparams(
                    sa.bindparam("ids", expanding=True), b=bucket, ids=ids[n : n + 500]
                )
            )
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("bucket", existing_type=sa.Integer(), nullable=False)
        batch.create_index("ix_outbox_bucket", ["bucket", "id"])


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index("ix_outbox_bucket")
        batch.drop_column("bucket")
    op.drop_table("leases")
