"""canonical email suppressions: every email suppression also under its canonical form

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Before addresses had one canonical form (``stagecoach.engine.domain.addresses``), a suppression was
stored under the address lower-cased, so ``someone@ｅｘａｍｐｌｅ.com`` and
``someone@example.com`` were two keys for one mailbox, and the delivery activity, which
now looks up the canonical form, would miss the first. Each such row gets a copy under
the canonical key, with its reason and contact; the original row stays (nothing already
recorded is lost), and a row with no canonical form (an invisible character) is left as
it is: the delivery activity sends nothing to such an address anyway.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from stagecoach.engine.domain.addresses import AddressError, canonical_email

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

_suppressions = sa.table(
    "suppressions",
    sa.column("channel", sa.String()),
    sa.column("address", sa.String()),
    sa.column("reason", sa.String()),
    sa.column("contact_id", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(
            _suppressions.c.address,
            _suppressions.c.reason,
            _suppressions.c.contact_id,
            _suppressions.c.created_at,
        ).where(_suppressions.c.channel == "email")
    ).all()
    present = {r.address for r in rows}
    added: dict[str, dict[str, object]] = {}
    for row in rows:
        try:
            canonical = canonical_email(row.address)
        except AddressError:
            continue
        if canonical in present or canonical in added:
            continue
        added[canonical] = {
            "channel": "email",
            "address": canonical,
            "reason": row.reason,
            "contact_id": row.contact_id,
            "created_at": row.created_at,
        }
    if added:
        op.bulk_insert(_suppressions, list(added.values()))


def downgrade() -> None:
    # The copies cannot be told from rows written under the canonical key since; keeping
    # them suppresses nothing that was not suppressed before.
    pass
