"""Assembling the contact runtime from settings: content, definitions, policy, and the
activities around the connectors the composition root hands in.

Which connectors a worker sends through is decided in one place, the composition root
(``stagecoach.engine.cli.compose``); nothing here builds one. Used by that root and by tests, so a
test worker is the production worker with a different task queue and directory.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import Engine

from stagecoach.engine.domain import contact as model
from stagecoach.engine.domain.conditions import EventRecord
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.domain.pipeline import Pipeline
from stagecoach.engine.domain.policy import SendPolicy
from stagecoach.engine.protocol.connector import Connector
from stagecoach.engine.protocol.messages import (
    Definitions,
    DeliverRequest,
    EventMessage,
    OpenRequest,
)
from stagecoach.engine.protocol.search_attributes import search_values
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.gateway import Opening
from stagecoach.workflows.broadcasts import BroadcastActivities
from stagecoach.workflows.contact import ContactActivities


def send_policy(settings: Settings) -> SendPolicy:
    return SendPolicy(
        quiet_start=time.fromisoformat(settings.quiet_hours_start),
        quiet_end=time.fromisoformat(settings.quiet_hours_end),
        frequency_cap=settings.frequency_cap,
        frequency_window=timedelta(hours=settings.frequency_window_hours),
    )


def definitions_loader(db: Engine, settings: Settings) -> Any:
    """A function returning the active pipeline, latest published journeys and policy."""
    from stagecoach.engine.services.project import load_project
    from stagecoach.engine.services.publishing import (
        JourneyNotFound,
        active_pipeline_of,
        latest,
        latest_versions,
    )
    from stagecoach.engine.services.segments.catalog import latest_segments

    pipeline = active_pipeline_of(settings)
    project_journeys = load_project(settings).definitions.journeys_by_name
    policy = send_policy(settings)
    queues = {channel: queue for channel, (queue, _) in settings.send_queues().items()}

    def load() -> Definitions:
        journeys: dict[str, dict[str, Any]] = {}
        # Every published journey: the project's and any published from elsewhere.
        for name in sorted(set(project_journeys) | set(latest_versions(db))):
            try:
                journeys[name] = latest(db, name).to_dict()
            except JourneyNotFound:
                continue  # not published yet: nobody can enrol in it
        return Definitions(
            pipeline=pipeline.to_dict(),
            journeys=journeys,
            policy=policy.to_dict(),
            loaded_at=datetime.now(UTC),
            segments={name: spec.to_dict() for name, spec in latest_segments(db).items()},
            send_queues=queues,
        )

    return load


UNPUBLISHED_TTL = timedelta(seconds=1)
"""How long a ContactOpener trusts "no journey published yet"."""

OPENED_MEMORY = 100_000
"""Contact ids a ContactOpener remembers as opened (about 10 MB)."""


class ContactOpener:
    """Records new contacts before their workflow starts (see
    ``stagecoach.engine.temporal.gateway.Opening``).

    Whoever starts contact workflows in bulk (the ingestion API's forwarder, rehearsals,
    the demo) holds one. The definitions are cached for ``ttl``, well inside the
    workflow's own reload interval, so a deploy or a publish reaches new contacts within
    a minute (``STAGECOACH_OPENER_TTL_SECONDS``).
    """

    def __init__(self, db: Engine, settings: Settings, *, ttl: timedelta | None = None) -> None:
        self._db = db
        self._load: Callable[[], Definitions] = definitions_loader(db, settings)
        self._ttl = ttl if ttl is not None else timedelta(seconds=settings.opener_ttl_seconds)
        self._cached: Definitions | None = None
        self._guard = threading.Lock()
        # Contacts this opener saw opened: the forwarder asks for every batch it sends,
        # and an already opened contact should not cost a database read each time.
        self._opened: OrderedDict[str, None] = OrderedDict()

    def definitions(self) -> Definitions:
        with self._guard:
            cached = self._cached
            # Nothing published yet (no worker has started): asked again within a second,
            # so the first publish is seen at once, but not read again for every call
            # (the ingestion writer asks at each group commit).
            ttl = self._ttl if cached is not None and cached.journeys else UNPUBLISHED_TTL
            if cached is None or datetime.now(UTC) - cached.loaded_at > ttl:
                cached = self._cached = self._load()
            return cached

    async def open(
        self,
        contact_id: str,
        *,
        event: EventMessage | None = None,
        journey: str | None = None,
        rehearsal: bool = False,
    ) -> Opening | None:
        """Record ``contact_id`` at the first stage; None if it was already recorded, or
        if no journey is published yet (the workflow then opens the contact itself, with
        a worker's definitions, so it still enters the journeys of its first stage).

        ``event`` is the one that creates the contact (its type and id are the creation's
        trigger, its locale the initial ``Locale``); ``journey`` is one it is being
        enrolled in by the same call; ``rehearsal`` marks the row as a rehearsal contact's,
        which reports, metrics and sales routing leave out."""
        if contact_id in self._opened:
            return None
        opening = await asyncio.to_thread(self._open, contact_id, event, journey, rehearsal)
        self._opened[contact_id] = None
        if len(self._opened) > OPENED_MEMORY:
            self._opened.popitem(last=False)
        return opening

    def _open(
        self,
        contact_id: str,
        event: EventMessage | None,
        journey: str | None,
        rehearsal: bool = False,
    ) -> Opening | None:
        from stagecoach.engine.services.storage.contacts import open_contact

        definitions = self.definitions()
        if not definitions.journeys:
            # No journey published yet: a contact opened with these definitions would
            # never enter one. Leave it to the workflow's own contact.open activity,
            # which loads the definitions on a worker (a worker publishes at start).
            return None
        first = str(definitions.pipeline["stages"][0]["name"])
        now = datetime.now(UTC)
        request = OpenRequest(
            contact_id=contact_id,
            at=now,
            trigger_event_type=event.type if event else None,
            trigger_message_id=event.message_id if event else None,
            rehearsal=rehearsal,
        )
        if not open_contact(self._db, request, first):
            return None
        # The search attributes the workflow would upsert after this first event, from
        # the same pure code, so it finds them already set.
        pipeline = Pipeline.from_dict(definitions.pipeline)
        state = model.new_contact(contact_id, pipeline, now)
        if event is not None:
            seen = model.observe(
                state,
                pipeline,
                message_id=event.message_id,
                event=EventRecord(event.type, event.occurred_at, dict(event.properties)),
                traits=event.traits,
                now=now,
                source=event.source,
            )
            state = seen.state
            if seen.transition is not None:
                state = model.enter_stage(state, seen.transition)
        values = {
            k: v
            for k, v in search_values(state, [journey] if journey else []).items()
            if v not in ("", [])
        }
        return Opening(definitions=definitions, search_attributes=values)


def contact_activities(
    db: Engine,
    settings: Settings,
    *,
    connectors: Mapping[str, Connector],
    rehearsal_sink: Connector,
    content: ContentLibrary | None = None,
) -> ContactActivities:
    """ContactActivities from settings and the connectors the composition root built
    (``stagecoach.engine.cli.compose``); the bundled journeys are published first."""
    from stagecoach.engine.domain.content import LinkSigner, RenderContact
    from stagecoach.engine.services.project import load_project
    from stagecoach.engine.services.publishing import publish_bundled
    from stagecoach.engine.services.referrals import ReferralPolicy

    library = content or ContentLibrary.load(load_project(settings).content_dir(settings))
    publish_bundled(db, settings, content=library)

    def render_contact(request: DeliverRequest) -> RenderContact:
        return RenderContact(
            contact_id=request.contact_id,
            attributes=request.attributes,
            email=request.address if request.channel == "email" else None,
            openid=request.address if request.channel == "wechat" else None,
        )

    signer = LinkSigner(
        secret=settings.link_secret.get_secret_value().encode(),
        base_url=settings.api_base_url,
        ttl=timedelta(days=settings.link_ttl_days),
    )
    return ContactActivities(
        db=db,
        definitions=definitions_loader(db, settings),
        content=library,
        connectors=connectors,
        policy=send_policy(settings),
        render_contact=render_contact,
        signer=signer,
        rehearsal_sink=rehearsal_sink,
        timeline_url=lambda contact_id: f"{settings.api_base_url}/v1/contacts/{contact_id}",
        public_url=settings.api_base_url,
        referral_policy=ReferralPolicy.from_settings(settings),
        retry_hint_max=(
            timedelta(seconds=settings.retry_hint_max_seconds)
            if settings.retry_hint_max_seconds
            else None
        ),
    )


def broadcast_activities(
    db: Engine,
    settings: Settings,
    *,
    connectors: Mapping[str, Connector],
    content: ContentLibrary | None = None,
    mass_sender: Any = None,
) -> BroadcastActivities:
    """BroadcastActivities on the same connectors, content and send policy as the
    contact workflow's, so caps and quiet hours mean the same for both."""
    from stagecoach.engine.domain.content import LinkSigner
    from stagecoach.engine.services.project import load_project

    library = content or ContentLibrary.load(load_project(settings).content_dir(settings))
    return BroadcastActivities(
        db=db,
        content=library,
        connectors=connectors,
        policy=send_policy(settings),
        signer=LinkSigner(
            secret=settings.link_secret.get_secret_value().encode(),
            base_url=settings.api_base_url,
            ttl=timedelta(days=settings.link_ttl_days),
        ),
        mass_sender=mass_sender,
    )
