"""Connecting to Temporal: the local dev server, a self-hosted cluster, or Temporal Cloud.

Every Stagecoach client gets its data converter from
``stagecoach.engine.temporal.codec.data_converter``:
with payload keys configured, payloads are encrypted before they leave the process.
"""

from __future__ import annotations

from pathlib import Path

from temporalio.client import Client
from temporalio.service import TLSConfig

from stagecoach.engine.domain.errors import ConfigurationError, TemporalUnavailable
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.codec import data_converter


def _read(path: Path | None, setting: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.expanduser().read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"{setting}={path} cannot be read ({exc.strerror})",
            fix=f"point {setting} at a readable PEM file",
        ) from exc


def tls_config(settings: Settings) -> TLSConfig | bool:
    """TLS for the connection: mTLS certificates, a custom CA, or plain TLS for API keys."""
    cert = _read(settings.temporal_tls_cert_path, "STAGECOACH_TEMPORAL_TLS_CERT_PATH")
    key = _read(settings.temporal_tls_key_path, "STAGECOACH_TEMPORAL_TLS_KEY_PATH")
    ca = _read(settings.temporal_tls_ca_path, "STAGECOACH_TEMPORAL_TLS_CA_PATH")
    if bool(cert) != bool(key):
        raise ConfigurationError(
            "only one of STAGECOACH_TEMPORAL_TLS_CERT_PATH and _KEY_PATH is set",
            fix="set both for mTLS, or neither",
        )
    if cert or ca:
        return TLSConfig(client_cert=cert, client_private_key=key, server_root_ca_cert=ca)
    return bool(settings.temporal_tls or settings.temporal_api_key)


async def connect(settings: Settings, **kwargs: object) -> Client:
    """Connect a client as configured; an unreachable server is one clear error."""
    settings.temporal_host_port  # noqa: B018  (validates the address before dialling)
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            tls=tls_config(settings),
            api_key=api_key,
            data_converter=data_converter(settings),
            **kwargs,  # type: ignore[arg-type]
        )
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0]
        raise TemporalUnavailable(
            f"cannot reach Temporal at {settings.temporal_address} "
            f"(namespace {settings.temporal_namespace}): {reason}",
            fix="start it with 'make run' / 'stagecoach up', or set "
            "STAGECOACH_TEMPORAL_ADDRESS (and TLS or API key settings for Temporal Cloud)",
        ) from exc


def with_settings(client: Client, settings: Settings) -> Client:
    """``client``'s connection with the data converter ``settings`` ask for: how a client
    made elsewhere (a test environment's) becomes a Stagecoach client, the same way
    :func:`connect` makes one."""
    config = client.config()
    config["data_converter"] = data_converter(settings)
    return Client(**config)
