"""Assembling the contact runtime from settings: content, connectors, definitions, policy.

Used by the composition root (``stagecoach worker``) and by tests, so a test worker is
the production worker with a different task queue and directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import Engine

from engine.content import ContentLibrary
from engine.delivery import Connector
from engine.messages import Definitions, DeliverRequest
from engine.policy import SendPolicy
from engine.settings import Settings
from workflows.activities import ContactActivities


def send_policy(settings: Settings) -> SendPolicy:
    return SendPolicy(
        quiet_start=time.fromisoformat(settings.quiet_hours_start),
        quiet_end=time.fromisoformat(settings.quiet_hours_end),
        frequency_cap=settings.frequency_cap,
        frequency_window=timedelta(hours=settings.frequency_window_hours),
    )


def definitions_loader(engine: Engine, settings: Settings) -> Any:
    """A function returning the active pipeline, latest published journeys and policy."""
    from engine.publishing import JourneyNotFound, latest, latest_versions
    from workflows.journeys import JOURNEYS
    from workflows.pipeline import active_pipeline

    pipeline = active_pipeline(settings.pipeline)
    policy = send_policy(settings)

    def load() -> Definitions:
        journeys: dict[str, dict[str, Any]] = {}
        # Every published journey: the bundled ones and any published from elsewhere.
        for name in sorted(set(JOURNEYS) | set(latest_versions(engine))):
            try:
                journeys[name] = latest(engine, name).to_dict()
            except JourneyNotFound:
                continue  # not published yet: nobody can enrol in it
        return Definitions(
            pipeline=pipeline.to_dict(),
            journeys=journeys,
            policy=policy.to_dict(),
            loaded_at=datetime.now(UTC),
        )

    return load


def file_sink_connectors(settings: Settings) -> Mapping[str, Connector]:
    from connectors.filesink import FileSinkConnector

    root = settings.resolved_sink_dir
    return {ch: FileSinkConnector(root / ch, channel=ch) for ch in ("email", "wechat", "crm")}


def build_activities(
    engine: Engine,
    settings: Settings,
    *,
    connectors: Mapping[str, Connector] | None = None,
    content: ContentLibrary | None = None,
) -> ContactActivities:
    """ContactActivities wired from settings; the bundled journeys are published first."""
    from connectors.filesink import FileSinkConnector
    from engine.content import LinkSigner, RenderContact
    from engine.publishing import publish_bundled

    library = content or ContentLibrary.load(settings.resolved_content_dir)
    publish_bundled(engine, settings, content=library)

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
        engine=engine,
        definitions=definitions_loader(engine, settings),
        content=library,
        connectors=connectors or file_sink_connectors(settings),
        policy=send_policy(settings),
        render_contact=render_contact,
        signer=signer,
        rehearsal_sink=FileSinkConnector(settings.resolved_sink_dir / "rehearsal", channel="any"),
    )
