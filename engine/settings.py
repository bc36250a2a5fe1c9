"""Typed settings, read from ``STAGECOACH_*`` environment variables (and a ``.env`` file).

One immutable object is built per entry point and passed down; nothing reads the
environment anywhere else. ``TEMPORAL_CLI_PATH`` keeps its conventional unprefixed name.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from datetime import UTC, date, datetime
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from stagecoach.engine.domain.content import BUNDLED_CONTENT_DIR
from stagecoach.engine.domain.errors import ConfigurationError
from stagecoach.engine.domain.wechat_callback import REPLAY_WINDOW_SECONDS, WeChatApp

LogFormat = Literal["auto", "json", "console"]

DEV_LINK_SECRET = "stagecoach-dev-secret-change-me"  # noqa: S105 (published on purpose)
"""The well-known link secret of a checkout with nothing configured: published, so only
an API bound to loopback (development) may verify links with it."""
LINK_SECRET_FILE = "link-secret"  # noqa: S105 (a file name)
"""``<data_dir>/link-secret``: the link secret ``stagecoach up`` generates (mode 0600)."""
MIN_LINK_SECRET_LENGTH = 32
"""Characters an API reachable from other hosts needs in its link secret."""
MIN_ADMIN_TOKEN_LENGTH = 24
"""Characters the admin token needs: about 140 bits as ``openssl rand -hex 32`` makes."""
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


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

    @property
    def broadcast_task_queue(self) -> str:
        """The task queue broadcast batches run on, so its server-side activity rate
        limit bounds broadcast sends across all workers (``broadcast_rate``)."""
        return f"{self.temporal_task_queue}-broadcasts"

    def send_queues(self) -> dict[str, tuple[str, float]]:
        """Channel (``email``, ``wechat``, ``crm``) -> its own task queue and rate, for
        each channel with a rate set: journeys' sends (and hand-offs) on that channel run
        there, under the server-enforced activity rate of the whole queue, across every
        worker polling it. Channels without a rate send from the main queue."""
        rates = {"email": self.email_rate, "wechat": self.wechat_rate, "crm": self.crm_rate}
        return {
            channel: (f"{self.temporal_task_queue}-send-{channel}", rate)
            for channel, rate in rates.items()
            if rate
        }

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
    pipeline: str = Field(
        default="default",
        description="Which bundled example definitions run when no project names its own "
        "(default or b2b_funnel); ignored when definitions are set.",
    )
    definitions: str | None = Field(
        default=None,
        description="The project's definitions as module:attribute (e.g. "
        "acme_marketing.definitions:defs). Default: [tool.stagecoach] definitions in the "
        "nearest pyproject.toml, else the bundled example.",
    )
    content_dir: Path = Field(default=Path("content"), description="The content library.")
    sink_dir: Path | None = Field(
        default=None,
        description="File-sink connector directory (default <data_dir>/sink): where "
        "messages go until real connectors are configured, and where rehearsals send.",
    )
    link_secret: SecretStr = Field(
        default=SecretStr(DEV_LINK_SECRET),
        description="HMAC key for unsubscribe, tracking and referral tokens, at least "
        f"{MIN_LINK_SECRET_LENGTH} characters. Unset: the file <data_dir>/{LINK_SECRET_FILE} "
        "if it exists ('stagecoach up' writes a random one), else a published development "
        "value that only an API bound to loopback accepts. Rotate with "
        "link_secret_previous.",
    )
    link_secret_previous: SecretStr | None = Field(
        default=None,
        description="Former link secrets still accepted when verifying links (never for "
        "signing), comma-separated, each optionally '@<ISO date or time>' after which it "
        "is refused, e.g. 'old-secret@2027-02-01'. Keep one for link_ttl_days after a "
        "rotation so links in mail already sent keep working.",
    )
    link_ttl_days: int = Field(default=60, ge=1)
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for the admin API (contacts, reports), the dashboard and "
        f"the codec sign-in; at least {MIN_ADMIN_TOKEN_LENGTH} characters. Unset refuses "
        "them all.",
    )
    auth_failure_limit: int = Field(
        default=10,
        ge=1,
        description="Failed sign-ins or admin bearer tokens one client may send within "
        "auth_failure_window; past it that client is answered 429 with Retry-After, "
        "whatever it sends, until its oldest failure leaves the window.",
    )
    auth_failure_window: float = Field(
        default=60.0, gt=0, description="Seconds over which failed authentications count."
    )
    trusted_proxies: str = Field(
        default="",
        description="Addresses or CIDRs of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed, comma-separated; empty (default): nobody's, the "
        "client is the TCP peer. '*' trusts every peer: only where no client reaches the "
        "API except through the proxy.",
    )
    write_key_cache_size: int = Field(
        default=10_000,
        ge=1,
        description="Write-key lookups (known and unknown keys) kept in memory; the least "
        "recently used is dropped first.",
    )
    write_key_cache_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long a write-key lookup is kept: a key revoked through another "
        "API replica is refused here within this time (at once on the replica that revoked "
        "it).",
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
    # --- broadcasts ---------------------------------------------------------------------
    broadcast_batch_size: int = Field(
        default=200,
        ge=1,
        le=10_000,
        description="Recipients per broadcast batch (one activity); pause and cancel act "
        "between batches.",
    )
    broadcast_rate: float | None = Field(
        default=None,
        gt=0,
        description="Broadcast messages per second across every worker (unset: unlimited). "
        "Enforced by the Temporal server as the broadcast task queue's activity rate "
        "(this divided by the batch size).",
    )
    # --- prediction (conversion propensity) ---------------------------------------------
    propensity_retrain_hours: float = Field(
        default=24.0,
        ge=0,
        description="How often the worker's Temporal Schedule retrains the conversion "
        "propensity model and rescores every contact, in hours (0: no schedule).",
    )
    propensity_target_stage: str = Field(
        default="customer",
        description="The stage a conversion reaches: propensity is the chance of reaching "
        "it (or a later stage) within the horizon.",
    )
    propensity_horizon_days: int = Field(
        default=30,
        ge=1,
        le=365,
        description="Propensity is the chance of converting within this many days.",
    )
    propensity_min_customers: int = Field(
        default=50,
        ge=1,
        description="Contacts that must have converted within the training window before a "
        "model is trained; with fewer the retrain publishes nothing and says so.",
    )
    # --- customer value -----------------------------------------------------------------
    value_refresh_hours: float = Field(
        default=24.0,
        ge=0,
        # A year at most: a longer interval is a typo, and the value traits' time-based
        # parts (dormant, replenishment due) would go stale without anyone noticing.
        le=24 * 366,
        allow_inf_nan=False,
        description="How often the worker's Temporal Schedule runs the customer-value "
        "refresh, in hours (0: no schedule; at most 8784, a year).",
    )
    propensity_signal_step: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="How far a contact's propensity must move since the value last sent "
        "before a retrain sends it a new propensity.scored event (the trait segments read).",
    )
    propensity_signal_bands: str = Field(
        default="0.2,0.5,0.8",
        description="Propensity band edges, comma-separated and increasing: crossing one "
        "sends a propensity.scored event even when the move is below the step.",
    )
    # --- connectors: each channel goes to the file sink until one is configured --------
    email_connector: Literal["sink", "smtp", "http", "postmark"] = "sink"
    email_from: str = "Stagecoach <news@example.com>"
    email_rate: float | None = Field(
        default=None,
        gt=0,
        description="Journey emails per second across every worker (the email send queue's "
        "rate); each worker's connector holds to it as well (unset: unlimited).",
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
    wechat_replay_window_seconds: int = Field(
        default=REPLAY_WINDOW_SECONDS,
        ge=10,
        le=3600,
        description="A WeChat callback whose timestamp is further than this from the "
        "server's clock is refused (403), and one seen before within it is not stored.",
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
    lease_seconds: float = Field(
        default=10,
        ge=1,
        le=300,
        description="How long an API replica's lease on shared background work (outbox "
        "buckets, once-per-cluster jobs) lasts unless renewed (every third of it): a "
        "replica that dies is replaced within it. docs/operations/replicas.md.",
    )
    # --- referral programme (stagecoach.engine.services.referrals.ReferralPolicy)
    # --------------------------
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
    temporal_ui_server_path: Path | None = Field(
        default=None,
        validation_alias="TEMPORAL_UI_SERVER_PATH",
        description="Temporal's Web UI server binary, which 'stagecoach up' runs so the UI "
        "decrypts through the codec endpoint (scripts/temporal-ui.sh builds one).",
    )

    @model_validator(mode="before")
    @classmethod
    def _link_secret_from_file(cls, data: Any) -> Any:
        """Unset ``link_secret``: take ``<data_dir>/link-secret`` when it exists, so every
        process of one data directory signs and verifies with the secret ``up`` made."""
        if not isinstance(data, dict) or data.get("link_secret") not in (None, ""):
            return data
        data_dir = Path(data.get("data_dir") or ".stagecoach")
        path = data_dir / LINK_SECRET_FILE
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return data
        except OSError as exc:
            raise ValueError(
                f"{path} cannot be read ({exc.strerror}): make it readable by this user "
                "only, or set STAGECOACH_LINK_SECRET"
            ) from exc
        if text:
            return {**data, "link_secret": text}
        return data

    @field_validator("link_secret_previous")
    @classmethod
    def _previous_parse(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _parse_previous(value.get_secret_value())
        return value

    @property
    def previous_link_secrets(self) -> list[tuple[bytes, datetime | None]]:
        """``STAGECOACH_LINK_SECRET_PREVIOUS`` as (secret, refused from) pairs."""
        raw = self.link_secret_previous.get_secret_value() if self.link_secret_previous else ""
        return _parse_previous(raw)

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
        return BUNDLED_CONTENT_DIR

    @property
    def webhook_secrets(self) -> list[str]:
        """``STAGECOACH_WEBHOOK_SECRET`` as a list: comma-separated while rotating, new first."""
        raw = self.webhook_secret.get_secret_value() if self.webhook_secret else ""
        return [s.strip() for s in raw.split(",") if s.strip()]

    @property
    def trusted_proxy_list(self) -> list[str]:
        """``STAGECOACH_TRUSTED_PROXIES`` as a list (empty: no proxy is believed)."""
        return [p.strip() for p in self.trusted_proxies.split(",") if p.strip()]

    @property
    def propensity_band_edges(self) -> tuple[float, ...]:
        """``STAGECOACH_PROPENSITY_SIGNAL_BANDS`` as numbers (checked when loaded)."""
        return _parse_bands(self.propensity_signal_bands)

    @field_validator("propensity_signal_bands")
    @classmethod
    def _bands_parse(cls, value: str) -> str:
        _parse_bands(value)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_parse(cls, value: str) -> str:
        for entry in (p.strip() for p in value.split(",")):
            if not entry or entry == "*":
                continue
            try:
                ipaddress.ip_network(entry)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or CIDR: list the proxies' addresses, "
                    "e.g. '10.0.0.5,10.1.0.0/16', or '*'"
                ) from None
        return value

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


def _parse_bands(raw: str) -> tuple[float, ...]:
    try:
        edges = tuple(float(p) for p in raw.split(",") if p.strip())
    except ValueError:
        raise ValueError(
            f"{raw!r} is not a list of numbers: give increasing band edges between 0 and 1, "
            "e.g. '0.2,0.5,0.8', or '' for none"
        ) from None
    if any(not 0 < e < 1 for e in edges) or list(edges) != sorted(set(edges)):
        raise ValueError(
            f"{raw!r}: band edges must be increasing and each between 0 and 1, "
            "e.g. '0.2,0.5,0.8', or '' for none"
        )
    return edges


def _parse_previous(raw: str) -> list[tuple[bytes, datetime | None]]:
    """Former link secrets, ``<secret>[@<ISO date or time>]`` comma-separated; a date
    means its midnight, UTC.

    Raises:
        ValueError: An expiry is not an ISO date or time, or a secret is too short.
    """
    found: list[tuple[bytes, datetime | None]] = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        secret, at, until = entry.rpartition("@")
        if not at:
            secret, until = entry, ""
        if len(secret) < 16:
            raise ValueError(
                "an entry is shorter than 16 characters: list each former secret exactly "
                "as it was, as '<secret>' or '<secret>@2027-02-01', comma-separated"
            )
        if not until:
            found.append((secret.encode(), None))
            continue
        try:
            if len(until) == 10:
                day = date.fromisoformat(until)
                moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            else:
                moment = datetime.fromisoformat(until)
        except ValueError:
            raise ValueError(
                f"an entry ends '@{until}', which is not an ISO date or time: write "
                "'<secret>@2027-02-01' or '<secret>@2027-02-01T12:00:00+00:00'"
            ) from None
        found.append((secret.encode(), moment if moment.tzinfo else moment.replace(tzinfo=UTC)))
    return found


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address to bind) is reachable only from this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_api_credentials(settings: Settings) -> None:
    """Refuse to serve the API with credentials anyone could know or guess.

    - The admin token, when set, is at least ``MIN_ADMIN_TOKEN_LENGTH`` characters.
    - The link secret is not the published development value, nor shorter than
      ``MIN_LINK_SECRET_LENGTH``, unless the API is bound to loopback: with it anyone
      could forge click redirects (an open redirect on the brand's domain),
      unsubscribes and opens.

    Raises:
        ConfigurationError: Naming the setting and the fix.
    """
    token = settings.admin_token.get_secret_value().strip() if settings.admin_token else ""
    if token and len(token) < MIN_ADMIN_TOKEN_LENGTH:
        raise ConfigurationError(
            f"STAGECOACH_ADMIN_TOKEN is {len(token)} characters; it must be at least "
            f"{MIN_ADMIN_TOKEN_LENGTH}, so it cannot be guessed",
            fix="set it to a long random value, e.g. the output of 'openssl rand -hex 32'",
        )
    if is_loopback(settings.api_host):
        return
    secret = settings.link_secret.get_secret_value()
    if secret == DEV_LINK_SECRET:
        problem = "is the published development value"
    elif len(secret) < MIN_LINK_SECRET_LENGTH:
        problem = f"is {len(secret)} characters, under {MIN_LINK_SECRET_LENGTH}"
    else:
        return
    raise ConfigurationError(
        f"STAGECOACH_LINK_SECRET {problem}, and the API listens on {settings.api_host}, "
        "beyond this machine: anyone could forge click redirects, unsubscribes and opens",
        fix="set STAGECOACH_LINK_SECRET to a random value (e.g. 'openssl rand -hex 32'), "
        f"the same for the API and every worker, or put one in <data_dir>/{LINK_SECRET_FILE} "
        "('stagecoach up' does); for development only, bind STAGECOACH_API_HOST=127.0.0.1",
    )


def ensure_link_secret_file(settings: Settings) -> SecretStr:
    """For ``stagecoach up``: make sure links are signed with a secret of this install.

    With nothing configured (no ``STAGECOACH_LINK_SECRET``, no file yet), writes a fresh
    ``secrets.token_urlsafe(32)`` to ``<data_dir>/link-secret`` (mode 0600, never
    overwritten), which every process of this data directory then reads. Returns the
    secret the processes ``up`` starts will use.
    """
    if settings.link_secret.get_secret_value() != DEV_LINK_SECRET:
        return settings.link_secret
    path = settings.data_dir / LINK_SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return SecretStr(path.read_text(encoding="utf-8").strip() or DEV_LINK_SECRET)
    secret = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(f"{secret}\n")
    return SecretStr(secret)


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
