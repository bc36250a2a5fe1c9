"""Leaving rehearsal contacts out of every report, in one place.

A journey rehearsal (``stagecoach journeys rehearse``) creates a real contact, marked
``contacts.rehearsal``; its stage changes, sends, enrolments, hand-offs and referrals
are stored like anyone's. Reports must not count them unless asked, and each report
filtering for itself would be one forgotten ``WHERE`` away from a leak. So for the
length of one report, on the report's own connection, a temporary view named after each
contact-bearing table shadows it with the rehearsal contacts' rows removed (DuckDB
resolves a name in ``temp`` before the database's own schema). Reports stay written
against the plain table names and cannot tell the difference.

When the store holds no rehearsal contact, nothing is created: the common case costs
one count of the contacts table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_KEYED = ("events", "stage_transitions")
"""Tables carrying ``contact_key``: filtered by it, the fast join."""
_BY_ID = ("deliveries", "journey_enrolments", "handoffs")
"""Tables carrying ``contact_id`` only."""
SHADOWED = ("contacts", *_KEYED, *_BY_ID, "referrals")


def rehearsal_count(con: Any) -> int:
    """Rehearsal contacts in the store behind ``con``."""
    rows = con.execute("SELECT count(*) FROM contacts WHERE rehearsal").fetchall()
    return int(rows[0][0])


@contextlib.contextmanager
def without_rehearsals(con: Any) -> Iterator[int]:
    """Within the block, every report query on ``con`` sees no rehearsal contact's rows.

    Yields how many rehearsal contacts were left out (0: nothing was shadowed).
    """
    left_out = rehearsal_count(con)
    if not left_out:
        yield 0
        return
    db = con.execute("SELECT current_database()").fetchall()[0][0].replace('"', '""')

    def table(name: str) -> str:
        return f'"{db}".main.{name}'

    con.execute(
        "CREATE OR REPLACE TEMP TABLE _rehearsal_contacts AS "
        f"SELECT id, contact_key FROM {table('contacts')} WHERE rehearsal"
    )
    views = {"contacts": f"SELECT * FROM {table('contacts')} WHERE NOT rehearsal"}
    for name in _KEYED:
        views[name] = (
            f"SELECT * FROM {table(name)} t WHERE NOT EXISTS "
            "(SELECT 1 FROM _rehearsal_contacts r WHERE r.contact_key = t.contact_key)"
        )
    for name in _BY_ID:
        views[name] = (
            f"SELECT * FROM {table(name)} t WHERE NOT EXISTS "
            "(SELECT 1 FROM _rehearsal_contacts r WHERE r.id = t.contact_id)"
        )
    # A referral counts only between two real people: either side rehearsed, it goes.
    views["referrals"] = (
        f"SELECT * FROM {table('referrals')} t WHERE NOT EXISTS "
        "(SELECT 1 FROM _rehearsal_contacts r WHERE r.id IN (t.referrer_id, t.referee_id))"
    )
    try:
        for name in SHADOWED:
            con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {views[name]}")
        yield left_out
    finally:
        for name in SHADOWED:
            con.execute(f"DROP VIEW IF EXISTS temp.main.{name}")
        con.execute("DROP TABLE IF EXISTS temp.main._rehearsal_contacts")
