"""Migration 0007: suppressions stored before addresses had one canonical form still
suppress the canonical address; nothing recorded before is lost."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text
from sqlmodel import Session, select

from stagecoach.engine.services.storage import make_engine, upgrade
from stagecoach.engine.services.storage.models import Suppression

LEGACY = [
    # (address as 0006 stored it: trimmed and lower-cased, reason)
    ("someone@ｅｘａｍｐｌｅ.com", "unsubscribe"),  # full-width domain
    ("other@example.com.", "hard_bounce"),  # trailing root dot
    ("ghost@exa\u200bmple.com", "complaint"),  # no canonical form at all
    ("plain@example.com", "unsubscribe"),  # already canonical
    ("twin@ｅｘａｍｐｌｅ.com", "complaint"),
    ("twin@example.com", "unsubscribe"),  # its canonical row exists: kept as it is
]


def test_legacy_email_suppressions_are_copied_under_their_canonical_address(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/legacy.db")
    upgrade(engine, "0006")
    with engine.begin() as conn:
        for address, reason in LEGACY:
            conn.execute(
                text(
                    "INSERT INTO suppressions (channel, address, reason, contact_id, created_at)"
                    " VALUES ('email', :a, :r, NULL, '2026-11-01 00:00:00')"
                ),
                {"a": address, "r": reason},
            )
        conn.execute(
            text(
                "INSERT INTO suppressions (channel, address, reason, contact_id, created_at)"
                " VALUES ('wechat', 'oWx-ＡＢＣ', 'complaint', NULL, '2026-11-01 00:00:00')"
            )
        )

    upgrade(engine)

    with Session(engine) as session:
        rows = {(s.channel, s.address): s.reason for s in session.exec(select(Suppression))}
    engine.dispose()
    assert rows == {
        **{("email", address): reason for address, reason in LEGACY},
        ("wechat", "oWx-ＡＢＣ"): "complaint",  # not an email: untouched
        ("email", "someone@example.com"): "unsubscribe",
        ("email", "other@example.com"): "hard_bounce",
    }
