"""The composition root: the one place that wires concrete parts together.

It chooses and builds the connectors from settings and hands them to the worker's
activities (:func:`build_activities`), runs the worker (:func:`run_worker`) and serves the
API (:func:`serve_api`); the ``stagecoach worker`` and ``stagecoach api`` commands only
load the settings and call it. Tests build their activities here too, so a test worker is
the production worker with other settings. Connectors are built once per worker, so SMTP
sessions, HTTP clients, WeChat tokens and rate limits are shared by every concurrent
activity in it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from stagecoach.connectors import (
    FileSinkConnector,
    HttpEmailConfig,
    HttpEmailConnector,
    HubSpotConnector,
    PostmarkConfig,
    PostmarkConnector,
    RateLimiter,
    SmtpConfig,
    SmtpConnector,
    WebhookConnector,
    WeChatConfig,
    WeChatConnector,
)
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.domain.errors import ConfigurationError
from stagecoach.engine.protocol.connector import Connector
from stagecoach.engine.services.storage.interactions import interaction_hook
from stagecoach.engine.settings import Settings
from stagecoach.workflows.broadcasts import BroadcastActivities
from stagecoach.workflows.contact import ContactActivities
from stagecoach.workflows.runtime import broadcast_activities, contact_activities

if TYPE_CHECKING:
    from temporalio.runtime import Runtime

    from stagecoach.workflows.prediction import PredictionActivities
    from stagecoach.workflows.value import ValueActivities


def file_sink_connectors(settings: Settings) -> Mapping[str, Connector]:
    root = settings.resolved_sink_dir
    return {ch: FileSinkConnector(root / ch, channel=ch) for ch in ("email", "wechat", "crm")}


def connectors_from_settings(settings: Settings, db: Engine | None = None) -> dict[str, Connector]:
    """One connector per channel, as configured; the file sink where none is.

    Built once per worker, so SMTP sessions, HTTP clients, WeChat tokens and rate
    limits are shared by every concurrent activity in it."""
    chosen = dict(file_sink_connectors(settings))
    if settings.crm_connector == "webhook":
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
            last_interaction=interaction_hook(db) if db is not None else None,
        )
    return chosen


def build_activities(
    db: Engine,
    settings: Settings,
    *,
    connectors: Mapping[str, Connector] | None = None,
    content: ContentLibrary | None = None,
) -> ContactActivities:
    """ContactActivities wired from settings; the bundled journeys are published first.

    ``connectors`` replaces the configured ones (tests hand in a peer's connector or a
    deliberately failing one); rehearsals always go to the file sink's ``rehearsal``
    folder."""
    return contact_activities(
        db,
        settings,
        connectors=connectors or connectors_from_settings(settings, db),
        rehearsal_sink=FileSinkConnector(settings.resolved_sink_dir / "rehearsal", channel="any"),
        content=content,
    )


def build_broadcast_activities(
    db: Engine,
    settings: Settings,
    *,
    connectors: Mapping[str, Connector] | None = None,
    content: ContentLibrary | None = None,
) -> BroadcastActivities:
    """BroadcastActivities wired from settings, on the connectors journeys use; with the
    WeChat connector configured, a mass sender on the same access tokens."""
    chosen = connectors or connectors_from_settings(settings, db)
    mass_sender = None
    wechat = chosen.get("wechat")
    if isinstance(wechat, WeChatConnector):
        from stagecoach.connectors.wechat.masssend import WeChatMassSender

        mass_sender = WeChatMassSender(wechat.config, tokens=wechat.tokens)
    return broadcast_activities(
        db, settings, connectors=chosen, content=content, mass_sender=mass_sender
    )


def build_prediction_activities(db: Engine, settings: Settings) -> PredictionActivities:
    """The propensity retrain's activities: the database, the analytics store the
    reports read, the active pipeline's stage order and the training settings."""
    from stagecoach.engine.services.analytics.store import default_path
    from stagecoach.engine.services.publishing import active_pipeline_of
    from stagecoach.workflows.prediction import PredictionActivities

    return PredictionActivities(
        db=db,
        analytics_path=settings.analytics_path or default_path(settings.data_dir),
        stages=lambda: active_pipeline_of(settings).stage_names,
        target=settings.propensity_target_stage,
        horizon_days=settings.propensity_horizon_days,
        min_customers=settings.propensity_min_customers,
        signal_step=settings.propensity_signal_step,
        signal_bands=settings.propensity_band_edges,
    )


def build_value_activities(db: Engine, settings: Settings) -> ValueActivities:
    """The value refresh's activities: the database and the project's definitions, read
    at each run as ``stagecoach value refresh`` reads them."""
    from stagecoach.engine.services.project import load_project
    from stagecoach.workflows.value import ValueActivities

    return ValueActivities(db=db, definitions=lambda: load_project(settings).definitions)


def run_worker(settings: Settings) -> None:
    """Run a worker (the contact workflows and their activities) until it is signalled."""
    from stagecoach.engine.cli.programs import freeze_startup_heap
    from stagecoach.engine.services.storage import make_engine, upgrade
    from stagecoach.engine.services.storage.db import private_umask

    private_umask()
    from stagecoach.workflows.client import connect
    from stagecoach.workflows.system import SystemActivities
    from stagecoach.workflows.worker import (
        build_broadcast_worker,
        build_send_workers,
        build_worker,
        run_until_signalled,
    )

    db = make_engine(settings.resolved_database_url)
    upgrade(db)
    # Loads and validates the content library and publishes the bundled journeys: a
    # definition that does not validate stops the worker here, never a contact later.
    contact = build_activities(db, settings)
    broadcasts = build_broadcast_activities(db, settings, content=contact.content)
    prediction = build_prediction_activities(db, settings)
    value = build_value_activities(db, settings)
    runtime = worker_metrics(settings)

    async def serve() -> None:
        client = await connect(settings, runtime=runtime)
        if settings.value_refresh_hours > 0:
            from datetime import timedelta

            from stagecoach.workflows.value.schedule import ensure_value_schedule

            await ensure_value_schedule(
                client,
                task_queue=settings.temporal_task_queue,
                every=timedelta(hours=settings.value_refresh_hours),
            )
        if settings.propensity_retrain_hours > 0:
            from datetime import timedelta

            from stagecoach.workflows.prediction.schedule import ensure_retrain_schedule

            await ensure_retrain_schedule(
                client,
                task_queue=settings.temporal_task_queue,
                every=timedelta(hours=settings.propensity_retrain_hours),
            )
        activities = [
            *SystemActivities(db).all(),
            *contact.all(),
            *broadcasts.all(),
            *prediction.all(),
            *value.all(),
        ]
        built = build_worker(
            client,
            task_queue=settings.temporal_task_queue,
            activities=activities,
            max_cached_workflows=settings.worker_max_cached_workflows,
        )
        batches = build_broadcast_worker(
            client,
            task_queue=settings.broadcast_task_queue,
            activities=broadcasts.batches(),
            batch_size=settings.broadcast_batch_size,
            rate=settings.broadcast_rate,
        )
        sends = build_send_workers(
            client, settings.send_queues(), deliver=contact.deliver, hand_off=contact.hand_off
        )
        freeze_startup_heap()
        await run_until_signalled(built, batches, *sends)

    asyncio.run(serve())


def worker_metrics(settings: Settings) -> Runtime | None:
    """Start the worker's metrics server and return a Temporal runtime exporting the
    SDK's metrics (None: the default runtime, no SDK metrics), each on its own port
    unless that is off. A taken port stops the worker here, naming its setting."""
    from stagecoach.engine import metrics
    from stagecoach.engine.cli.supervisor import ensure_worker_metrics_ports_free
    from stagecoach.workflows.metrics import prometheus_runtime

    host, ours, sdk = (
        settings.worker_metrics_host,
        settings.worker_metrics_port,
        settings.temporal_metrics_port,
    )
    ensure_worker_metrics_ports_free(settings)
    if ours is not None:
        metrics.serve(host, ours)
    return prometheus_runtime(host, sdk) if sdk is not None else None


def serve_api(settings: Settings) -> None:
    """Serve the HTTP API with uvicorn until it is stopped."""
    import uvicorn

    from stagecoach.engine.app import create_app
    from stagecoach.engine.cli.programs import ensure_port_free, freeze_startup_heap
    from stagecoach.engine.services.storage.db import private_umask
    from stagecoach.engine.settings import check_api_credentials

    check_api_credentials(settings)
    private_umask()

    ensure_port_free(
        settings.api_host, settings.api_port, what="HTTP API", setting="STAGECOACH_API_PORT"
    )
    from stagecoach.engine.services.storage import make_engine
    from stagecoach.workflows.client import connect
    from stagecoach.workflows.runtime import ContactOpener

    db = make_engine(settings.resolved_database_url)

    async def temporal() -> Any:
        return await connect(settings)

    served = create_app(
        settings,
        db=db,
        temporal=temporal,
        opener=ContactOpener(db, settings),
        connectors=lambda: connectors_from_settings(settings, db),  # a test send's
    )
    freeze_startup_heap()
    uvicorn.run(
        served,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        timeout_graceful_shutdown=10,
        # X-Forwarded-For is believed from the configured proxies only, never by default.
        proxy_headers=bool(settings.trusted_proxy_list),
        forwarded_allow_ips=settings.trusted_proxy_list or None,
    )
