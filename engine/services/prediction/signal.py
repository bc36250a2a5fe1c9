"""Propensity as a contact trait: after a retrain publishes, tell each contact whose score
moved enough (``stagecoach.engine.domain.propensity.SignalRule``) with one
``propensity.scored`` event carrying the traits ``propensity``, ``propensity_version``
and ``propensity_as_of``, so segments, journeys and detours read it like any trait.

"Last sent" is the newest ``propensity.scored`` event stored for the contact: the events
are the record of what each workflow was told, so no extra table (and no migration) is
needed, and an event the outbox has not delivered yet still counts as sent (it will be).
A retrain's events have message ids ``propensity-v<version>:<contact>``: signalling the
same version twice stores nothing new.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlmodel import Session, col, select

from stagecoach.engine.domain.propensity import PROPENSITY_SCORED, SignalRule, scored_traits
from stagecoach.engine.services.ingest import Incoming, Ingestor
from stagecoach.engine.services.storage.models import Event, PropensityScore

_log = structlog.get_logger("stagecoach.prediction")

SIGNAL_CHUNK = 5_000
"""Events per ingest transaction: a first retrain at a million contacts sends one per
scored contact, and one transaction of them all would hold SQLite's write lock too long."""


@dataclass(frozen=True)
class Signalled:
    scored: int
    signalled: int


def last_sent(db: sa.Engine) -> dict[str, float]:
    """Each contact's propensity as its newest ``propensity.scored`` event carried it."""
    events = Event.__table__  # type: ignore[attr-defined]
    newest = (
        sa.select(events.c.contact_id, sa.func.max(events.c.id).label("id"))
        .where(events.c.name == PROPENSITY_SCORED)
        .group_by(events.c.contact_id)
        .subquery()
    )
    query = sa.select(events.c.contact_id, events.c.properties).join(
        newest, newest.c.id == events.c.id
    )
    with db.connect() as conn:
        rows = conn.execute(query).all()
    out: dict[str, float] = {}
    for contact_id, properties in rows:
        value = (properties or {}).get("propensity")
        if isinstance(value, int | float):
            out[str(contact_id)] = float(value)
    return out


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _chunks(items: Sequence[Incoming]) -> Iterator[Sequence[Incoming]]:
    for lo in range(0, len(items), SIGNAL_CHUNK):
        yield items[lo : lo + SIGNAL_CHUNK]


def signal_moved(
    db: sa.Engine,
    version: int,
    *,
    rule: SignalRule | None = None,
    ingestor: Ingestor | None = None,
) -> Signalled:
    """Ingest one ``propensity.scored`` event per contact scored by ``version`` whose
    score moved enough since the value last sent; nothing for the others."""
    rule = rule or SignalRule()
    with Session(db) as session:
        scores = session.exec(
            select(PropensityScore).where(col(PropensityScore.model_version) == version)
        ).all()
    before = last_sent(db)
    events: list[Incoming] = []
    for score in scores:
        if not rule.moved(before.get(score.contact_id), score.probability):
            continue
        at = _aware(score.scored_at)
        traits = scored_traits(rule, score.probability, version, at.isoformat())
        previous = before.get(score.contact_id)
        properties: dict[str, Any] = {
            "propensity": traits["propensity"],
            "previous": previous,
            "model_version": version,
            "band": rule.band(traits["propensity"]),
        }
        events.append(
            Incoming(
                kind="track",
                message_id=f"propensity-v{version}:{score.contact_id}",
                type=PROPENSITY_SCORED,
                occurred_at=at,
                contact_id=score.contact_id,
                properties=properties,
                traits=traits,
                source="propensity",
            )
        )
    store = ingestor or Ingestor(db)
    for chunk in _chunks(events):
        store.store([chunk])
    _log.info("propensity.signalled", version=version, scored=len(scores), signalled=len(events))
    return Signalled(scored=len(scores), signalled=len(events))
