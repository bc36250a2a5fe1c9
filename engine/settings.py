"""Typed settings, read from ``STAGECOACH_*`` environment variables (and a ``.env`` file).

One immutable object is built per entry point and passed down; nothing reads the
environment anywhere else. ``TEMPORAL_CLI_PATH`` keeps its conventional unprefixed name.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.errors import ConfigurationError
from engine.wechat_callback import WeChatApp

LogFormat = Literal["auto", "json", "console"]


def _off_is_none(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() in ("", "off", "none"):
        return None
    return value


OptionalPort = Annotated[
    Annotated[int, Field(ge=1, le=65535)] | None, BeforeValidator(_off_is_none)
]
"""A port to listen on, or ``off`` (empty, ``none``) for no listener."""


class Settings(BaseSettings):
    """Stagecoach configuration. Every field maps to ``STAGECOACH_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="STAGECOACH_", env_file=".env", extra="ignore", frozen=True
    )

    data_dir: Path = Field(
        default=Path(".stagecoach"),
        description="Where the embedded defaults keep state: SQLite files and logs.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL. Default: SQLite at <data_dir>/stagecoach.db. "
        "PostgreSQL: postgresql://user:password@host:5432/stagecoach",
    )
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "stagecoach"
    temporal_tls: bool = False
    temporal_tls_cert_path: Path | None = None
    temporal_tls_key_path: Path | None = None
    temporal_tls_ca_path: Path | None = None
    temporal_api_key: SecretStr | None = None
    temporal_ui_port: int = Field(default=8233, ge=1, le=65535)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    public_url: str | None = Field(
        default=None, description="Base URL the API is reached at; default http://api_host:port"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: LogFormat = "auto"
    pipeline: str = "default"
    content_dir: Path = Field(default=Path("content"), description="The content library.")
    sink_dir: Path | None = Field(
        default=None,
        description="File-sink connector directory (default <data_dir>/sink): where "
        "messages go until real connectors are configured, and where rehearsals send.",
    )
    link_secret: SecretStr = Field(
        default=SecretStr("stagecoach-dev-secret-change-me"),
        description="HMAC key for unsubscribe, tracking and referral tokens. Set it in "
        "production; rotating it invalidates outstanding links.",
    )
    link_ttl_days: int = Field(default=60, ge=1)
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for the admin API (contacts, reports); unset refuses it.",
    )
    payload_keys: SecretStr | None = Field(
        default=None,
        description="Keys encrypting workflow payloads: '<key id>:<base64 32 bytes>' "
        "entries, comma-separated; the first encrypts, all decrypt. Unset: the file "
        "<data_dir>/payload-keys if it exists ('stagecoach up' writes one), else no "
        "encryption. See docs/codec.md.",
    )
    codec_origins: str | None = Field(
        default=None,
        description="Browser origins allowed to call the codec endpoint (/codec), "
        "comma-separated; default the Temporal Web UI's (temporal_ui_url).",
    )
    analytics_path: Path | None = Field(
        default=None,
        description="The analytics store (a DuckDB file) reports read; default "
        "<data_dir>/analytics.duckdb.",
    )
    dashboard_cache_seconds: float = Field(
        default=60,
        ge=0,
        description="The dashboard copies the database into the analytics store at most "
        "this often, when a page asks; its numbers are that old at most (plus one copy).",
    )
    quiet_hours_start: str = Field(default="21:00", pattern=r"^\d{2}:\d{2}$")
    quiet_hours_end: str = Field(default="08:00", pattern=r"^\d{2}:\d{2}$")
    frequency_cap: int = Field(default=3, ge=0, description="Messages per window; 0 disables.")
    frequency_window_hours: float = Field(default=24, gt=0)
    worker_max_cached_workflows: int = Field(
        default=400,
        ge=0,
        description="Contact workflows a worker keeps in memory (about 0.4 MB each); an "
        "evicted one is replayed from history when it next has work.",
    )
    worker_metrics_host: str = Field(
        default="127.0.0.1",
        description="Where the worker's metrics ports listen; 0.0.0.0 when Prometheus "
        "scrapes from another host or container.",
    )
    worker_metrics_port: OptionalPort = Field(
        default=9464, description="The worker's Stagecoach metrics (/metrics); off: none."
    )
    temporal_metrics_port: OptionalPort = Field(
        default=9465,
        description="The worker's Temporal SDK metrics (/metrics: task latencies, "
        "activity failures, pollers); off: none.",
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve the API's /metrics without the admin token. Only where the "
        "API port is private: the counters name teams, sources and volumes.",
    )
    ingest_concurrency: int = Field(
        default=32,
        ge=0,
        description="Admission control: ingestion calls (/v1/batch, /v1/track...) "
        "handled at once; more wait in a queue or are answered 429 with Retry-After, "
        "nothing stored. 0 turns admission control off.",
    )
    ingest_queue: int = Field(
        default=512,
        ge=0,
        description="Ingestion calls waiting for a slot, at most; one more is answered 429.",
    )
    ingest_max_wait: float = Field(
        default=1.0,
        gt=0,
        description="Seconds an ingestion call may wait for a slot; a call that would "
        "wait longer (by the recent pace) or did is answered 429.",
    )
    max_events_per_run: int = Field(
        default=2000, ge=1, description="Continue-as-new after this many events in one run."
    )
    # --- connectors: each channel goes to the file sink until one is configured --------
    email_connector: Literal["sink", "smtp", "http", "postmark"] = "sink"
    email_from: str = "Stagecoach <news@example.com>"
    email_rate: float | None = Field(
        default=None, gt=0, description="Emails per second per worker (unset: unlimited)."
    )
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_security: Literal["none", "starttls", "tls"] = "none"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_pool_size: int = Field(
        default=8,
        ge=1,
        description="SMTP sessions kept per worker, also the most concurrent sends; "
        "pooled throughput to a relay is about this many messages per round trip once "
        "they queue (see smtp_pipeline_messages).",
    )
    smtp_pipeline_messages: bool = Field(
        default=True,
        description="While sends queue for a busy session, pipeline the next message's "
        "MAIL/RCPT/DATA behind the previous one's content (RFC 2920 3.1): one round trip "
        "a message instead of two. Turn off for a relay that mishandles it.",
    )
    email_http_url: str | None = Field(
        default=None, description="Generic JSON email provider: its send endpoint."
    )
    email_http_token: SecretStr | None = None
    postmark_token: SecretStr | None = Field(default=None, description="Postmark server token.")
    postmark_base_url: str = "https://api.postmarkapp.com"
    postmark_message_stream: str = "outbound"
    postmark_webhook_user: str | None = Field(
        default=None, description="HTTP basic auth user set on the Postmark webhook (HttpAuth)."
    )
    postmark_webhook_password: SecretStr | None = Field(
        default=None, description="HTTP basic auth password set on the Postmark webhook."
    )
    wechat_apps: dict[str, WeChatApp] = Field(
        default_factory=dict,
        description="Official Accounts whose callbacks arrive at /wechat/<name>: "
        '{"main": {"token": "...", "aes_key": "<43-char EncodingAESKey, omit for '
        'plaintext>", "appid": "wx..."}}',
    )
    wechat_connector: Literal["sink", "wechat"] = "sink"
    wechat_appid: str | None = None
    wechat_secret: SecretStr | None = None
    wechat_api_base: str = "https://api.weixin.qq.com"
    wechat_rate: float | None = Field(default=None, gt=0)
    crm_connector: Literal["sink", "webhook", "hubspot"] = "sink"
    crm_rate: float | None = Field(default=None, gt=0)
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC key(s), comma-separated while rotating (new first)."
    )
    webhook_timeout: float = Field(default=10.0, gt=0)
    hubspot_token: SecretStr | None = Field(default=None, description="Private app token.")
    hubspot_base_url: str = "https://api.hubapi.com"
    hubspot_lifecycle_stage: str = "marketingqualifiedlead"
    # --- retry and cache timings (the fault suite's short form shortens them) ----------
    retry_hint_max_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Longest wait a connector's retry hint may ask for (SMTP 421: 120 s, "
        "a dropped connection: 30 s, a rate limit: 60 s); unset: the hint as given.",
    )
    opener_ttl_seconds: float = Field(
        default=60,
        gt=0,
        description="How long the API trusts its copy of the published journeys: a "
        "publish reaches new contacts within it.",
    )
    # --- referral programme (engine.referrals.ReferralPolicy) --------------------------
    referral_code_ttl_days: float = Field(default=180, gt=0)
    referral_max_uses: int = Field(default=50, ge=1, description="Sign-ups per code.")
    referral_reward_cap: int = Field(
        default=10, ge=0, description="Rewards per referrer per period."
    )
    referral_reward_period_days: float = Field(default=30, gt=0)
    referral_return_window_days: float = Field(
        default=14, ge=0, description="A reward is held this long before release."
    )
    referral_reward_content: str = Field(
        default="coupon-annual-plan", description="The coupon content item a reward is."
    )
    referral_phone_country: str = Field(
        default="CN", description="Region for phone numbers given without +country."
    )
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "stagecoach")
    temporal_cli_path: Path | None = Field(
        default=None, validation_alias="TEMPORAL_CLI_PATH", description="The Temporal CLI binary."
    )

    @cached_property
    def resolved_database_url(self) -> str:
        """The database URL in use: the configured one or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'stagecoach.db'}"

    @cached_property
    def temporal_host_port(self) -> tuple[str, int]:
        """``temporal_address`` split into host and port, validated."""
        host, sep, port = self.temporal_address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(
                f"STAGECOACH_TEMPORAL_ADDRESS={self.temporal_address!r} is not host:port",
                fix="set it like 127.0.0.1:7233 or my-ns.a1b2c.tmprl.cloud:7233",
            )
        return host, int(port)

    @property
    def resolved_content_dir(self) -> Path:
        """``content_dir`` when it exists, else the catalog bundled with this checkout."""
        if self.content_dir.is_dir():
            return self.content_dir
        return Path(__file__).resolve().parents[1] / "content"

    @property
    def webhook_secrets(self) -> list[str]:
        """``STAGECOACH_WEBHOOK_SECRET`` as a list: comma-separated while rotating, new first."""
        raw = self.webhook_secret.get_secret_value() if self.webhook_secret else ""
        return [s.strip() for s in raw.split(",") if s.strip()]

    @property
    def resolved_sink_dir(self) -> Path:
        return self.sink_dir or self.data_dir / "sink"

    @property
    def api_base_url(self) -> str:
        return (self.public_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def temporal_ui_url(self) -> str:
        host, _ = self.temporal_host_port
        return f"http://{host}:{self.temporal_ui_port}"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning validation errors into one clear line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        env = field if field.isupper() else f"STAGECOACH_{field.upper()}"
        raise ConfigurationError(
            f"{env} is invalid: {first['msg']}",
            fix=f"correct or unset {env} (see README, 'Settings')",
        ) from exc
