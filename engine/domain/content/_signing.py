"""Signed, expiring link tokens for unsubscribe, click redirects and the open pixel.

A token is ``<payload>.<mac>``: ``payload`` is URL-safe base64 (unpadded) of compact JSON
holding the caller's fields plus ``exp`` (Unix seconds); ``mac`` is URL-safe base64 of
HMAC-SHA256 over ``purpose + "." + payload``. Binding the purpose into the MAC means a
click token can never be replayed as an unsubscribe token, and the original URL of a click
is readable only after the MAC checks out, so the redirect endpoint is never an open one.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from ._errors import TokenExpired, TokenInvalid

CLICK = "click"
"""Purpose of click-redirect tokens (``{base_url}/t/c/<token>``)."""
OPEN = "open"
"""Purpose of open-pixel tokens (``{base_url}/t/o/<token>.gif``)."""
UNSUBSCRIBE = "unsubscribe"
"""Purpose of unsubscribe tokens (``{base_url}/u/<token>``)."""

DEFAULT_TOKEN_TTL = timedelta(days=90)
"""Suggested TTL: unsubscribe links must keep working long after the send (CAN-SPAM asks
for 30 days at least; people unsubscribe from old mail), and click links in an old email
should still land somewhere."""


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise TokenInvalid(
            "a naive datetime was given as 'now'",
            fix="pass a timezone-aware datetime, e.g. datetime.now(UTC)",
        )


def _previous(entry: bytes | tuple[bytes, datetime | None]) -> tuple[bytes, float | None]:
    key, until = entry if isinstance(entry, tuple) else (entry, None)
    if len(key) < 16:
        raise TokenInvalid(
            "a previous link signing secret is shorter than 16 bytes",
            fix="list only former secrets as they were, or drop the short one",
        )
    if until is None:
        return key, None
    _require_aware(until)
    return key, until.timestamp()


class LinkSigner:
    """Signs and verifies the tokens inside tracking and unsubscribe URLs.

    Args:
        secret: HMAC key; at least 16 bytes. Every worker and the API share it.
        base_url: Public base URL of the API that serves ``/t/c``, ``/t/o`` and ``/u``.
        ttl: How long a token stays valid after signing.
        previous_secrets: Older keys still accepted by ``verify`` during a key rotation
            (never used to sign): a key alone, or ``(key, until)`` with the aware moment
            from which it is refused (``None``: until removed).
    """

    def __init__(
        self,
        secret: bytes,
        base_url: str,
        ttl: timedelta,
        *,
        previous_secrets: Sequence[bytes | tuple[bytes, datetime | None]] = (),
    ) -> None:
        if len(secret) < 16:
            raise TokenInvalid(
                "the link signing secret is shorter than 16 bytes",
                fix="use a random secret of 32 bytes, e.g. from 'openssl rand -hex 32'",
            )
        if ttl <= timedelta(0):
            raise TokenInvalid("the link token TTL is not positive", fix="pass a positive ttl")
        self._secret = secret
        self._keys: tuple[tuple[bytes, float | None], ...] = (
            (secret, None),
            *(_previous(entry) for entry in previous_secrets),
        )
        self.base_url = base_url.rstrip("/")
        self.ttl = ttl
        self._ttl_seconds = ttl.total_seconds()

    def _mac(self, key: bytes, purpose: str, payload: str) -> str:
        # "sha256" by name takes OpenSSL's one-shot path, faster than hashlib.sha256 here.
        return _b64encode(hmac.digest(key, f"{purpose}.{payload}".encode(), "sha256"))

    def sign(self, purpose: str, payload: Mapping[str, Any], now: datetime) -> str:
        """A token carrying ``payload`` for ``purpose``, valid until ``now + ttl``.

        Args:
            purpose: What the token is for (``"click"``, ``"open"``, ``"unsubscribe"``).
            payload: JSON-able fields; the key ``exp`` is reserved.
            now: Signing time (timezone-aware).
        """
        _require_aware(now)
        body = dict(payload)
        body["exp"] = int(now.timestamp() + self._ttl_seconds)
        encoded = _b64encode(_ENCODER.encode(body).encode("utf-8"))
        return f"{encoded}.{self._mac(self._secret, purpose, encoded)}"

    def verify(self, purpose: str, token: str, now: datetime) -> dict[str, Any]:
        """The payload of a token, once its signature, purpose and expiry check out.

        Raises:
            TokenInvalid: Malformed, tampered with, or signed for another purpose.
            TokenExpired: Signature valid, but ``now`` is past its expiry.
        """
        _require_aware(now)
        encoded, _, mac = token.partition(".")
        if not encoded or not mac:
            raise TokenInvalid(
                "the link token is malformed", fix="use the link exactly as it was sent"
            )
        moment = now.timestamp()
        if not any(
            hmac.compare_digest(mac, self._mac(key, purpose, encoded))
            for key, until in self._keys
            if until is None or moment < until
        ):
            raise TokenInvalid(
                f"the {purpose} link token's signature does not match",
                fix="use the link exactly as it was sent; a changed token is refused",
            )
        try:
            body = json.loads(_b64decode(encoded))
        except (binascii.Error, ValueError) as exc:
            raise TokenInvalid(
                "the link token's payload is unreadable", fix="use the link as it was sent"
            ) from exc
        if not isinstance(body, dict) or not isinstance(body.get("exp"), int):
            raise TokenInvalid("the link token has no expiry", fix="use the link as it was sent")
        if now.timestamp() >= body["exp"]:
            raise TokenExpired(
                f"the {purpose} link token expired",
                fix="ask for a fresh message; unsubscribe links can also be honoured by reply",
            )
        del body["exp"]
        return body

    def click_url(self, url: str, *, contact_id: str, content_id: str, now: datetime) -> str:
        """The signed click-redirect URL standing in for ``url``."""
        token = self.sign(CLICK, {"u": url, "c": contact_id, "m": content_id}, now)
        return f"{self.base_url}/t/c/{token}"

    def open_url(self, *, contact_id: str, content_id: str, message_id: str, now: datetime) -> str:
        """The signed open-pixel URL of one message."""
        token = self.sign(OPEN, {"c": contact_id, "m": content_id, "i": message_id}, now)
        return f"{self.base_url}/t/o/{token}.gif"

    def unsubscribe_url(
        self, *, contact_id: str, content_id: str, channel: str, now: datetime
    ) -> str:
        """The signed unsubscribe URL (landing page on GET, RFC 8058 one-click on POST)."""
        token = self.sign(UNSUBSCRIBE, {"c": contact_id, "m": content_id, "ch": channel}, now)
        return f"{self.base_url}/u/{token}"
