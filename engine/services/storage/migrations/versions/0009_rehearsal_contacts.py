"""rehearsal contacts: marked on their row, so reports and routing can leave them out

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.add_column(
            sa.Column("rehearsal", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    # Rehearsals before this column had only their id to tell them apart: the CLI has
    # always named them rehearsal-<journey>-<hex>.
    op.execute(
        sa.text("UPDATE contacts SET rehearsal = :yes WHERE id LIKE 'rehearsal-%'").bindparams(
            yes=True
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.drop_column("rehearsal")
