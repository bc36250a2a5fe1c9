"""HTTP pieces every HTTP connector shares: the pooled client, ``Retry-After``, transport
failures and lenient JSON bodies, each translated once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from stagecoach.engine.protocol.connector import RetryableDeliveryError


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> timedelta | None:
    """A ``Retry-After`` header as a delay: delta-seconds or an HTTP date (RFC 9110);
    ``None`` if absent or unreadable. A date in the past means "now" (zero)."""
    if value is None or not value.strip():
        return None
    raw = value.strip()
    if raw.isdigit():
        return timedelta(seconds=int(raw))
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(timedelta(0), when - (now or datetime.now(UTC)))


def transport_error(exc: httpx.HTTPError, *, peer: str) -> RetryableDeliveryError:
    """A timeout or a broken connection, translated once: always worth another attempt."""
    if isinstance(exc, httpx.TimeoutException):
        what = f"{peer} did not answer in time ({type(exc).__name__})"
    else:
        what = f"could not reach {peer} ({type(exc).__name__}: {exc})"
    return RetryableDeliveryError(what)


def response_json(response: httpx.Response) -> dict[str, Any]:
    """The response body as a JSON object, or ``{}`` when it is empty or not an object."""
    if not response.content:
        return {}
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def build_client(
    *,
    client: httpx.AsyncClient | None,
    transport: httpx.AsyncBaseTransport | None,
    timeout: float,
) -> tuple[httpx.AsyncClient, bool]:
    """The connector's pooled client, and whether the connector owns (and closes) it.

    Connectors send their own headers (auth, signature) with each request, so a client
    passed in works without being configured for them.
    """
    if client is not None:
        return client, False
    return (
        httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(timeout), follow_redirects=False
        ),
        True,
    )
