"""Verifying the signed links in our messages (unsubscribe, click, open pixel).

The tokens are made and checked by :class:`stagecoach.engine.domain.content.LinkSigner`; this
module turns a token from a request path into the :class:`Link` it names, or the :class:`Refused`
answer that says why not (malformed 400, tampered with or signed for another purpose
403, expired 410). No HTML and no database here: the routes render the answer in the
reader's language from the page templates.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from stagecoach.engine.domain.content import LinkSigner, TokenExpired, TokenInvalid
from stagecoach.engine.settings import Settings

TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{1,8192}\.[A-Za-z0-9_-]{43}$")
"""A token's shape: unpadded URL-safe base64 payload, a dot, a 32-byte HMAC."""


def link_signer(settings: Settings) -> LinkSigner:
    """The signer for ``settings``: the same key, base URL and TTL the workers sign with,
    and the former keys still accepted while a rotation's grace period lasts."""
    return LinkSigner(
        settings.link_secret.get_secret_value().encode(),
        settings.api_base_url,
        timedelta(days=settings.link_ttl_days),
        previous_secrets=settings.previous_link_secrets,
    )


@dataclass(frozen=True)
class Refused:
    """Why a link or a request about it is refused: the HTTP status, a reason the page
    templates know (``link_malformed``, ``link_expired``...), and the details they print."""

    status: int
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Link:
    """A verified token's payload: whom it is for, about which content."""

    token: str
    contact_id: str
    content_id: str
    payload: Mapping[str, Any]

    @property
    def digest(self) -> str:
        """A stable short id of this token (message ids are derived from it)."""
        return hashlib.sha256(self.token.encode()).hexdigest()[:32]

    def text(self, key: str) -> str | None:
        value = self.payload.get(key)
        return value if isinstance(value, str) and value else None


def verify_link(signer: LinkSigner, purpose: str, token: str, now: datetime) -> Link | Refused:
    """The link behind ``token``, or why it is refused (400, 403 or 410)."""
    if not TOKEN_SHAPE.match(token):
        return Refused(400, "link_malformed")
    try:
        payload = signer.verify(purpose, token, now)
    except TokenExpired:
        return Refused(410, "link_expired", {"purpose": purpose, "days": signer.ttl.days})
    except TokenInvalid as exc:
        return Refused(403, "link_tampered", {"detail": exc.message})
    contact_id, content_id = payload.get("c"), payload.get("m")
    if not isinstance(contact_id, str) or not contact_id or not isinstance(content_id, str):
        return Refused(400, "link_without_contact")
    return Link(token, contact_id, content_id, payload)


def delivery_digest(value: str | None) -> str | None:
    """The idempotency-key digest from a Message-ID (``<digest@domain>``) or a digest."""
    if not value:
        return None
    return value.strip("<>").partition("@")[0] or None
