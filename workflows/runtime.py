"""Assembling the contact runtime from settings: content, connectors, definitions, policy.

Used by the composition root (``stagecoach worker``) and by tests, so a test worker is
the production worker with a different task queue and directory.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import Engine

from engine import contact as model
from engine.conditions import EventRecord
from engine.content import ContentLibrary
from engine.delivery import Connector
from engine.errors import ConfigurationError
from engine.gateway import Opening
from engine.messages import Definitions, DeliverRequest, EventMessage, OpenRequest
from engine.pipeline import Pipeline
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


UNPUBLISHED_TTL = timedelta(seconds=1)
"""How long a ContactOpener trusts "no journey published yet"."""

OPENED_MEMORY = 100_000
"""Contact ids a ContactOpener remembers as opened (about 10 MB)."""


class ContactOpener:
    """Records new contacts before their workflow starts (see ``engine.gateway.Opening``).

    Whoever starts contact workflows in bulk (the ingestion API's forwarder, rehearsals,
    the demo) holds one. The definitions are cached for ``ttl``, well inside the
    workflow's own reload interval, so a deploy or a publish reaches new contacts within
    a minute (``STAGECOACH_OPENER_TTL_SECONDS``).
    """

    def __init__(self, engine: Engine, settings: Settings, *, ttl: timedelta | None = None) -> None:
        self._engine = engine
        self._load: Callable[[], Definitions] = definitions_loader(engine, settings)
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
    ) -> Opening | None:
        """Record ``contact_id`` at the first stage; None if it was already recorded, or
        if no journey is published yet (the workflow then opens the contact itself, with
        a worker's definitions, so it still enters the journeys of its first stage).

        ``event`` is the one that creates the contact (its type and id are the creation's
        trigger, its locale the initial ``Locale``); ``journey`` is one it is being
        enrolled in by the same call."""
        if contact_id in self._opened:
            return None
        opening = await asyncio.to_thread(self._open, contact_id, event, journey)
        self._opened[contact_id] = None
        if len(self._opened) > OPENED_MEMORY:
            self._opened.popitem(last=False)
        return opening

    def _open(
        self, contact_id: str, event: EventMessage | None, journey: str | None
    ) -> Opening | None:
        from engine.storage.contacts import open_contact

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
        )
        if not open_contact(self._engine, request, first):
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
            for k, v in model.search_values(state, [journey] if journey else []).items()
            if v not in ("", [])
        }
        return Opening(definitions=definitions, search_attributes=values)


def file_sink_connectors(settings: Settings) -> Mapping[str, Connector]:
    from connectors.filesink import FileSinkConnector

    root = settings.resolved_sink_dir
    return {ch: FileSinkConnector(root / ch, channel=ch) for ch in ("email", "wechat", "crm")}


def connectors_from_settings(
    settings: Settings, engine: Engine | None = None
) -> dict[str, Connector]:
    """One connector per channel, as configured; the file sink where none is.

    Built once per worker, so SMTP sessions, HTTP clients, WeChat tokens and rate
    limits are shared by every concurrent activity in it."""
    from connectors.ratelimit import RateLimiter

    chosen = dict(file_sink_connectors(settings))
    if settings.crm_connector == "webhook":
        from connectors.webhook import WebhookConnector

        if not settings.webhook_url or settings.webhook_secret is None:
            raise ConfigurationError(
                "STAGECOACH_CRM_CONNECTOR=webhook needs a URL and a secret",
                fix="set STAGECOACH_WEBHOOK_URL and STAGECOACH_WEBHOOK_SECRET",
            )
        chosen["crm"] = WebhookConnector(
            settings.webhook_url,
            settings.webhook_secrets,
            timeout=settings.webhook_timeout,
            limiter=RateLimiter(settings.crm_rate) if settings.crm_rate else None,
        )
    elif settings.crm_connector == "hubspot":
        from connectors.hubspot import HubSpotConnector

        if settings.hubspot_token is None:
            raise ConfigurationError(
                "STAGECOACH_CRM_CONNECTOR=hubspot needs a private app token",
                fix="set STAGECOACH_HUBSPOT_TOKEN (scopes crm.objects.contacts.read/write)",
            )
        chosen["crm"] = HubSpotConnector(
            settings.hubspot_token.get_secret_value(),
            base_url=settings.hubspot_base_url,
            lifecycle_stage=settings.hubspot_lifecycle_stage or None,
            timeline_url=f"{settings.api_base_url}/v1/contacts/{{contact_id}}",
            limiter=RateLimiter(settings.crm_rate) if settings.crm_rate else None,
        )
    email_limiter = RateLimiter(settings.email_rate) if settings.email_rate else None
    if settings.email_connector == "smtp":
        from connectors.smtp import SmtpConfig, SmtpConnector

        chosen["email"] = SmtpConnector(
            SmtpConfig(
                host=settings.smtp_host,
                port=settings.smtp_port,
                from_addr=settings.email_from,
                security=settings.smtp_security,
                username=settings.smtp_username,
                password=(
                    settings.smtp_password.get_secret_value() if settings.smtp_password else None
                ),
                pool_size=settings.smtp_pool_size,
                pipeline_messages=settings.smtp_pipeline_messages,
            ),
            limiter=email_limiter,
        )
    elif settings.email_connector == "http":
        from connectors.http_email import HttpEmailConfig, HttpEmailConnector

        if not settings.email_http_url:
            raise ConfigurationError(
                "STAGECOACH_EMAIL_CONNECTOR=http needs the provider's send endpoint",
                fix="set STAGECOACH_EMAIL_HTTP_URL (and STAGECOACH_EMAIL_HTTP_TOKEN)",
            )
        token = settings.email_http_token
        chosen["email"] = HttpEmailConnector(
            HttpEmailConfig(
                url=settings.email_http_url,
                from_addr=settings.email_from,
                token=token.get_secret_value() if token else None,
            ),
            limiter=email_limiter,
        )
    elif settings.email_connector == "postmark":
        from connectors.http_email import PostmarkConfig, PostmarkConnector

        if settings.postmark_token is None:
            raise ConfigurationError(
                "STAGECOACH_EMAIL_CONNECTOR=postmark needs a server token",
                fix="set STAGECOACH_POSTMARK_TOKEN",
            )
        chosen["email"] = PostmarkConnector(
            PostmarkConfig(
                server_token=settings.postmark_token.get_secret_value(),
                from_addr=settings.email_from,
                message_stream=settings.postmark_message_stream,
                base_url=settings.postmark_base_url,
            ),
            limiter=email_limiter,
        )
    if settings.wechat_connector == "wechat":
        from connectors.wechat import WeChatConfig, WeChatConnector
        from engine.storage.interactions import interaction_hook

        if not settings.wechat_appid or settings.wechat_secret is None:
            raise ConfigurationError(
                "STAGECOACH_WECHAT_CONNECTOR=wechat needs the Official Account's credentials",
                fix="set STAGECOACH_WECHAT_APPID and STAGECOACH_WECHAT_SECRET",
            )
        chosen["wechat"] = WeChatConnector(
            WeChatConfig(
                appid=settings.wechat_appid,
                secret=settings.wechat_secret.get_secret_value(),
                api_base=settings.wechat_api_base,
            ),
            limiter=RateLimiter(settings.wechat_rate) if settings.wechat_rate else None,
            last_interaction=interaction_hook(engine) if engine is not None else None,
        )
    return chosen


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
    from engine.referrals import ReferralPolicy

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
        connectors=connectors or connectors_from_settings(settings, engine),
        policy=send_policy(settings),
        render_contact=render_contact,
        signer=signer,
        rehearsal_sink=FileSinkConnector(settings.resolved_sink_dir / "rehearsal", channel="any"),
        timeline_url=lambda contact_id: f"{settings.api_base_url}/v1/contacts/{contact_id}",
        public_url=settings.api_base_url,
        referral_policy=ReferralPolicy.from_settings(settings),
        retry_hint_max=(
            timedelta(seconds=settings.retry_hint_max_seconds)
            if settings.retry_hint_max_seconds
            else None
        ),
    )
