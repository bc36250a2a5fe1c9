"""Before launch: how many a broadcast would reach, a sample of them, what would stop it,
and a test send to a seed list.

The preview reads the segment's ready version as it is now; the audience is fixed only
when sending starts (the snapshot), so the numbers can move until then. A test send
renders the broadcast's content (each A/B arm's too) for each seed address and sends it
through the channel's connector, with no delivery record and no effect on caps: seeds
are the team's own inboxes, not contacts.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from stagecoach.engine.domain.broadcasts import Broadcast
from stagecoach.engine.domain.content import ContentError, ContentLibrary, LinkSigner, RenderContact
from stagecoach.engine.protocol.connector import Connector, DeliveryError, OutgoingMessage
from stagecoach.engine.services.broadcasts.store import (
    _member_version,
    check_launch,
)
from stagecoach.engine.services.segments.catalog import ready_version
from stagecoach.engine.services.storage.models import Contact, SegmentMember


@dataclass
class Preview:
    broadcast_id: str
    segment: str
    audience: int
    locales: dict[str, int] = field(default_factory=dict)
    timezones: dict[str, int] = field(default_factory=dict)
    sample: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def content_catalogue(library: ContentLibrary) -> dict[str, frozenset[tuple[str, str]]]:
    """Each content item's (locale, channel) variants: what a launch is checked against."""
    return {
        item.id: frozenset((loc, ch) for loc in item.locales for ch in item.channels)
        for item in library.items
    }


def preview(
    db: Engine,
    broadcast: Broadcast,
    *,
    library: ContentLibrary,
    events: frozenset[str] | None = None,
    now: datetime,
    sample: int = 10,
) -> Preview:
    """The audience now: its size, locales and zones, a sample, and launch problems."""
    found = Preview(broadcast_id=broadcast.name, segment=broadcast.segment, audience=0)
    found.problems = check_launch(
        db, broadcast, content=content_catalogue(library), events=events, now=now
    )
    version = ready_version(db, broadcast.segment)
    if version is None:
        return found
    with Session(db) as session:
        members = _member_version(session, broadcast.segment, version.version)
        where = (
            col(SegmentMember.segment) == broadcast.segment,
            col(SegmentMember.version) == members,
        )
        joined = (Contact, col(Contact.id) == col(SegmentMember.contact_id))
        found.audience = int(
            session.exec(select(func.count()).select_from(SegmentMember).where(*where)).one()
        )
        for column, target in (
            (Contact.locale, found.locales),
            (Contact.timezone, found.timezones),
        ):
            for value, n in session.execute(
                select(col(column), func.count())
                .select_from(SegmentMember)
                .join(*joined, isouter=True)
                .where(*where)
                .group_by(col(column))
            ).all():
                target[str(value or "unknown")] = int(n)
        for contact_id, locale, zone, traits in session.execute(
            select(
                col(SegmentMember.contact_id),
                col(Contact.locale),
                col(Contact.timezone),
                col(Contact.traits),
            )
            .select_from(SegmentMember)
            .join(*joined, isouter=True)
            .where(*where)
            .order_by(col(SegmentMember.contact_id))
            .limit(sample)
        ).all():
            found.sample.append(
                {
                    "contact_id": contact_id,
                    "locale": locale,
                    "timezone": zone,
                    "stage": (traits or {}).get("stage"),
                }
            )
    return found


@dataclass(frozen=True)
class SeedResult:
    address: str
    arm: str | None
    ok: bool
    detail: str


async def send_to_seeds(
    broadcast: Broadcast,
    *,
    seeds: Sequence[str],
    library: ContentLibrary,
    connector: Connector,
    now: datetime,
    locale: str = "en",
    signer: LinkSigner | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> list[SeedResult]:
    """Send the broadcast (every arm of an A/B test) to each seed address now."""
    results: list[SeedResult] = []
    arms: list[tuple[str | None, str, str | None]] = [(None, broadcast.content, None)]
    if broadcast.ab is not None:
        arms = [(v.name, v.content or broadcast.content, v.subject) for v in broadcast.ab.variants]
    run = uuid.uuid4().hex[:12]
    channel = "wechat" if broadcast.channel == "wechat_mass" else broadcast.channel
    for address in seeds:
        for arm, content_id, subject in arms:
            key = f"broadcast:{broadcast.name}:seed:{run}:{address}:{arm or 'all'}"
            try:
                rendered = library.render(
                    content_id,
                    channel=channel,
                    locale=locale,
                    contact=RenderContact(
                        contact_id="seed",
                        attributes=dict(attributes or {"first_name": "Seed"}),
                        email=address if channel == "email" else None,
                        openid=address if channel == "wechat" else None,
                    ),
                    now=now,
                    signer=signer,
                    idempotency_key=key,
                )
                body = rendered.to_dict()
                if subject:
                    body["subject"] = f"[test] {subject}"
                elif body.get("subject"):
                    body["subject"] = f"[test] {body['subject']}"
                sent = await connector.send(
                    OutgoingMessage(
                        channel=channel,
                        to=address,
                        idempotency_key=key,
                        contact_id="seed",
                        rendered=body,
                    )
                )
                results.append(SeedResult(address, arm, True, sent.provider_message_id or "sent"))
            except (ContentError, DeliveryError) as exc:
                results.append(SeedResult(address, arm, False, str(exc)))
    return results
