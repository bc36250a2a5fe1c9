"""The Postmark webhook: delivery, bounce, spam-complaint and subscription-change
notifications, behind HTTP basic auth.

::

    POST /webhooks/postmark         Postmark Delivery, Bounce, SpamComplaint and
                                    SubscriptionChange webhooks

Bounces and complaints follow :class:`stagecoach.engine.domain.bounces.BouncePolicy`; soft bounces
are counted from the contact's ``email.bounced`` events for the same address. Suppressions
are stored by ``stagecoach.engine.services.consent``. Retries are safe: each notification is
recorded once (events by message id, suppressions by address), and a database that
cannot take the write is a 503 Postmark retries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import SecretStr
from sqlmodel import Session

from stagecoach.engine.api._common import in_thread, ingest_one, read_body
from stagecoach.engine.api.deps import SessionDep
from stagecoach.engine.domain.bounces import (
    METADATA_CONTACT,
    METADATA_KEY,
    POSTMARK_RECORD_TYPES,
    BouncePolicy,
    NotificationError,
    parse_postmark_webhook,
)
from stagecoach.engine.domain.errors import DatabaseError
from stagecoach.engine.services.consent import (
    CHANNELS,
    contact_event,
    find_notified,
    soft_bounces,
    suppress,
)
from stagecoach.engine.services.ingest import IdentityError, normalise_email

router = APIRouter(tags=["email"])

_log = structlog.get_logger("stagecoach.api.email")

WEBHOOK_LIMIT = 1024 * 1024  # bounce webhooks may carry the message content


@dataclass(frozen=True)
class WebhookCredentials:
    """The HTTP basic auth user name and password configured on the Postmark webhook."""

    username: str
    password: str = field(repr=False)


def postmark_webhook_credentials(request: Request) -> WebhookCredentials | None:
    """``STAGECOACH_POSTMARK_WEBHOOK_USER`` and ``_PASSWORD``, or None when unset."""
    settings = request.app.state.settings
    user = settings.postmark_webhook_user
    password = settings.postmark_webhook_password
    if isinstance(password, SecretStr):
        password = password.get_secret_value()
    if not user or not password:
        return None
    return WebhookCredentials(str(user), str(password))


def bounce_policy(request: Request) -> BouncePolicy:
    """The suppression policy for bounces (``app.state.bounce_policy``, else defaults)."""
    policy: BouncePolicy | None = getattr(request.app.state, "bounce_policy", None)
    return policy or BouncePolicy()


CredentialsDep = Annotated[WebhookCredentials | None, Depends(postmark_webhook_credentials)]
PolicyDep = Annotated[BouncePolicy, Depends(bounce_policy)]


def _authorised(request: Request, expected: WebhookCredentials) -> bool:
    """HTTP basic auth as Postmark sends it (``HttpAuth`` on the webhook), compared in
    constant time."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, sep, password = decoded.partition(":")
    user_ok = hmac.compare_digest(user.encode(), expected.username.encode())
    password_ok = hmac.compare_digest(password.encode(), expected.password.encode())
    return bool(sep) and user_ok and password_ok


def _event_id(text: str) -> str:
    """A message id for a provider notification, short enough for any database."""
    return "postmark:" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _address(raw: str) -> str | IdentityError:
    """The normalised email address a notification is about, or why it is not one."""
    try:
        return normalise_email(raw)
    except IdentityError as exc:
        return exc


def _bad(field_name: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"success": False, "errors": [{"field": field_name, "message": message}]},
        status_code=400,
    )


_WEBHOOK_EXAMPLES: dict[str, dict[str, Any]] = {
    "delivery": {
        "summary": "Delivered: records email.delivered",
        "value": {
            "RecordType": "Delivery",
            "ServerID": 23,
            "MessageStream": "outbound",
            "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
            "Recipient": "li.lei@example.cn",
            "Tag": "newsletter-monthly",
            "DeliveredAt": "2026-11-22T09:00:04Z",
            "Details": "smtp;250 2.0.0 OK",
            "Metadata": {
                METADATA_CONTACT: "c_0123456789abcdef01234567",
                METADATA_KEY: "5d41402abc4b2a76b9719d911017c592",
            },
        },
    },
    "hard-bounce": {
        "summary": "Hard bounce: suppresses the address, records email.bounced",
        "value": {
            "RecordType": "Bounce",
            "ID": 4323372036854775807,
            "Type": "HardBounce",
            "TypeCode": 1,
            "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
            "Email": "li.lei@example.cn",
            "BouncedAt": "2026-11-22T09:00:05Z",
            "Description": "The server was unable to deliver your message.",
            "Inactive": True,
            "MessageStream": "outbound",
            "Metadata": {METADATA_CONTACT: "c_0123456789abcdef01234567"},
        },
    },
    "spam-complaint": {
        "summary": "Spam complaint: suppresses every channel, records email.complained",
        "value": {
            "RecordType": "SpamComplaint",
            "ID": 42,
            "Type": "SpamComplaint",
            "TypeCode": 512,
            "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
            "Email": "li.lei@example.cn",
            "BouncedAt": "2026-11-23T10:00:00Z",
            "Inactive": True,
            "MessageStream": "outbound",
        },
    },
}


@router.post(
    "/webhooks/postmark",
    tags=["webhooks"],
    summary="Postmark delivery, bounce, spam-complaint and subscription-change webhooks",
    description=(
        "Configure the webhook in Postmark with HTTP basic auth (HttpAuth, or "
        "https://user:password@host/webhooks/postmark) matching "
        "STAGECOACH_POSTMARK_WEBHOOK_USER and STAGECOACH_POSTMARK_WEBHOOK_PASSWORD. "
        "Delivery records email.delivered; a hard bounce suppresses the address at once "
        "and records email.bounced; soft bounces suppress after the policy's limit within "
        "its window; a spam complaint suppresses every channel of the contact and records "
        "email.complained. Retries are safe: each notification is recorded once."
    ),
    responses={
        200: {
            "description": "Applied (or ignored: another record type)",
            "content": {
                "application/json": {
                    "example": {
                        "success": True,
                        "event": "email.bounced",
                        "duplicate": False,
                        "suppressed": 1,
                    }
                }
            },
        },
        400: {"description": "Not JSON, or a field is wrong: errors[].field names it"},
        401: {"description": "Missing or wrong basic auth credentials; nothing recorded"},
        413: {"description": "Body over 1 MB"},
        503: {"description": "Webhook credentials unset, or the database is unavailable"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"examples": _WEBHOOK_EXAMPLES}},
        }
    },
)
async def postmark_webhook(
    *,
    request: Request,
    session: SessionDep,
    credentials: CredentialsDep,
    policy: PolicyDep,
) -> Response:
    if credentials is None:
        return JSONResponse(
            {
                "success": False,
                "error": "Postmark webhooks are not configured: set "
                "STAGECOACH_POSTMARK_WEBHOOK_USER and STAGECOACH_POSTMARK_WEBHOOK_PASSWORD "
                "and the same basic auth on the Postmark webhook",
            },
            status_code=503,
        )
    if not _authorised(request, credentials):
        return JSONResponse(
            {"success": False, "error": "wrong or missing basic auth credentials"},
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="stagecoach-webhooks"'},
        )
    body = await read_body(request, WEBHOOK_LIMIT)
    if body is None:
        return JSONResponse({"success": False, "error": "body over 1 MB"}, status_code=413)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _bad("body", f"malformed JSON ({exc}): send the webhook's JSON object")
    if not isinstance(payload, dict):
        return _bad("body", "a Postmark webhook body is a JSON object")
    record_type = payload.get("RecordType")
    try:
        if record_type == "Delivery":
            return await _delivered(request, session, payload)
        if isinstance(record_type, str) and record_type not in POSTMARK_RECORD_TYPES:
            _log.warning("postmark.ignored", record_type=record_type)
            return JSONResponse({"success": True, "ignored": record_type})
        return await _bounced(request, session, policy, payload)
    except DatabaseError as exc:
        return JSONResponse(
            {"success": False, "error": exc.one_line()},
            status_code=503,
            headers={"Retry-After": "30"},
        )


async def _delivered(request: Request, session: Session, payload: Mapping[str, Any]) -> Response:
    fields = {}
    for name in ("Recipient", "DeliveredAt", "MessageID"):
        value = payload.get(name)
        if not isinstance(value, str) or not value.strip():
            return _bad(name, f"Postmark Delivery field {name!r} must be a non-empty string")
        fields[name] = value.strip()
    address = _address(fields["Recipient"])
    if isinstance(address, IdentityError):
        return _bad("Recipient", address.message)
    try:
        delivered_at = datetime.fromisoformat(fields["DeliveredAt"])
    except ValueError:
        return _bad("DeliveredAt", f"not an ISO 8601 time: {fields['DeliveredAt']!r}")
    if delivered_at.tzinfo is None:
        delivered_at = delivered_at.replace(tzinfo=UTC)
    metadata = payload.get("Metadata") or {}
    if not isinstance(metadata, dict):
        return _bad("Metadata", "Postmark field 'Metadata' must be an object")
    contact = metadata.get(METADATA_CONTACT)
    known = await in_thread(
        session, find_notified, contact if isinstance(contact, str) else None, address
    )
    if known is None:
        _log.info("postmark.delivered.unknown_contact")
        return JSONResponse({"success": True, "event": None, "duplicate": False, "suppressed": 0})
    key = metadata.get(METADATA_KEY)
    outcome = await ingest_one(
        request,
        contact_event(
            known,
            type_="email.delivered",
            message_id=_event_id(f"delivery:{fields['MessageID']}:{address}"),
            source="postmark",
            occurred_at=delivered_at.astimezone(UTC),
            properties={
                "message_id": str(key) if key else fields["MessageID"],
                "provider_message_id": fields["MessageID"],
                "provider": "postmark",
            },
        ),
    )
    return JSONResponse(
        {
            "success": True,
            "event": "email.delivered",
            "duplicate": outcome.duplicate,
            "suppressed": 0,
        }
    )


async def _bounced(
    request: Request, session: Session, policy: BouncePolicy, payload: Mapping[str, Any]
) -> Response:
    try:
        notification = parse_postmark_webhook(payload)
    except NotificationError as exc:
        return _bad(exc.field, str(exc))
    address = _address(notification.address)
    if isinstance(address, IdentityError):
        return _bad("Recipient" if "Recipient" in payload else "Email", address.message)
    known = await in_thread(session, find_notified, notification.contact_id, address)
    message_id = _event_id(notification.provider_event_id)
    earlier: list[datetime] = []
    if known is not None:
        earlier = await in_thread(session, soft_bounces, known.id, address, message_id)
    decision = policy.decide(notification, recent_soft_bounces=earlier)
    suppressed = 0
    if decision.suppress:
        targets = [(decision.channel, address)]
        if decision.scope == "global" and known is not None:
            targets += [(c, a) for c in CHANNELS for a in known.addresses(c)]
        suppressed = await in_thread(
            session, suppress, targets, decision.reason, known.id if known else None
        )
    duplicate = False
    if decision.event_type and known is not None:
        outcome = await ingest_one(
            request,
            contact_event(
                known,
                type_=decision.event_type,
                message_id=message_id,
                source="postmark",
                occurred_at=notification.occurred_at.astimezone(UTC),
                properties={
                    **decision.properties,
                    "address": address,
                    "reason": decision.reason,
                    "provider": "postmark",
                    "provider_type": notification.provider_type,
                },
            ),
        )
        duplicate = outcome.duplicate
    _log.info(
        "postmark.notification",
        kind=notification.kind.value,
        contact_id=known.id if known else None,
        reason=decision.reason,
        suppressed=suppressed,
        duplicate=duplicate,
    )
    return JSONResponse(
        {
            "success": True,
            "event": decision.event_type if known is not None else None,
            "duplicate": duplicate,
            "suppressed": suppressed,
        }
    )
