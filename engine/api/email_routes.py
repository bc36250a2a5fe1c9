"""Email touchpoints: unsubscribe, preferences, click and open tracking, Postmark webhooks.

The links come from :class:`engine.content.LinkSigner`; the token in the path carries
the contact id, the content id and (open pixel) the Message-ID, signed for one purpose::

    GET  /u/{token}                 confirmation page with one button (a GET never
                                    unsubscribes: mail scanners fetch every link)
    POST /u/{token}                 "List-Unsubscribe=One-Click" (RFC 8058): 200, no page,
                                    no redirect; "confirm=unsubscribe" (the page's form):
                                    the "you are unsubscribed" page
    GET  /u/{token}/preferences     channels (email, WeChat) and topics, as a form
    POST /u/{token}/preferences     saves them: an identify with traits.consent and
                                    traits.topics, source "preference_page"
    GET  /t/c/{token}               302 to the signed URL only; records email.clicked
    GET  /t/o/{token}.gif           a 1x1 GIF, always; records email.opened for a good token
    POST /webhooks/postmark         Postmark Delivery, Bounce, SpamComplaint and
                                    SubscriptionChange webhooks, behind HTTP basic auth

A bad link is refused before anything is stored: malformed 400, tampered with or signed
for another purpose 403, expired 410; each page says what the reader can do. When the
database cannot take a write the answer is 503 and the request can be repeated: every
write is idempotent (events by message id, suppressions by address).

Unsubscribing records ``<channel>.unsubscribed`` (with ``traits.consent``, so the consent
ledger has the withdrawal and its wording) and a ``Suppression`` row for each of the
contact's addresses on that channel. Bounces and complaints follow
:class:`engine.bounces.BouncePolicy`; soft bounces are counted from the contact's
``email.bounced`` events for the same address.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from email.policy import HTTP
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import orjson
import structlog
from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import SecretStr
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select

from engine.api import _pages
from engine.api._common import in_thread, ingest_one, read_body
from engine.api.app import SessionDep
from engine.bounces import (
    METADATA_CONTACT,
    METADATA_KEY,
    POSTMARK_RECORD_TYPES,
    BouncePolicy,
    NotificationError,
    parse_postmark_webhook,
)
from engine.content import CLICK, OPEN, UNSUBSCRIBE, LinkSigner, TokenExpired, TokenInvalid
from engine.errors import DatabaseError
from engine.ingest import IdentityError, Incoming, normalise_email
from engine.ingest._store import survivors
from engine.settings import Settings
from engine.storage.models import Consent, Event, Identity, Suppression

router = APIRouter(tags=["email"])

_log = structlog.get_logger("stagecoach.api.email")

PREFERENCE_TOPICS: Mapping[str, str] = {
    "newsletter": "Monthly newsletter",
    "product-updates": "Product updates",
    "event": "Events and webinars",
    "customer-story": "Customer stories",
    "offer": "Offers and promotions",
}
"""Topics a contact can choose on the preference page (ids match content ``topics``)."""

CHANNEL_LABELS: Mapping[str, str] = {"email": "Email", "wechat": "WeChat messages"}
"""Channels on the preference page, and the channels an unsubscribe link can close."""

_ADDRESS_KIND: Mapping[str, str] = {"email": "email", "wechat": "wechat_openid"}
"""The identity kind that is a contact's address on a channel (what a suppression names)."""

UNSUBSCRIBE_WORDING = "Unsubscribed with the link in a message we sent."
PREFERENCES_WORDING = "Chose channels and topics on the preference page."

LIFTABLE_REASONS = frozenset({"unsubscribe", "preferences"})
"""Suppressions the contact's own choice on the preference page may lift. Bounces and
complaints are never lifted by a page."""

FORM_LIMIT = 16 * 1024
WEBHOOK_LIMIT = 1024 * 1024  # bounce webhooks may carry the message content

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,8192}\.[A-Za-z0-9_-]{43}$")
"""A token's shape: unpadded URL-safe base64 payload, a dot, a 32-byte HMAC."""

_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
"""A 1x1 transparent GIF (43 bytes)."""

_NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private",
    "Pragma": "no-cache",
    "Expires": "0",
}

_T = TypeVar("_T")

# --- dependencies -------------------------------------------------------------------------


def link_signer(settings: Settings) -> LinkSigner:
    """The signer for ``settings``: the same key, base URL and TTL the workers sign with,
    and the former keys still accepted while a rotation's grace period lasts."""
    return LinkSigner(
        settings.link_secret.get_secret_value().encode(),
        settings.api_base_url,
        timedelta(days=settings.link_ttl_days),
        previous_secrets=settings.previous_link_secrets,
    )


def get_signer(request: Request) -> LinkSigner:
    """The app's link signer (``app.state.link_signer``), built from settings on first use."""
    signer: LinkSigner | None = getattr(request.app.state, "link_signer", None)
    if signer is None:
        try:
            signer = link_signer(request.app.state.settings)
        except TokenInvalid as exc:
            raise HTTPException(503, f"links cannot be checked: {exc.one_line()}") from exc
        request.app.state.link_signer = signer
    return signer


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


SignerDep = Annotated[LinkSigner, Depends(get_signer)]
CredentialsDep = Annotated[WebhookCredentials | None, Depends(postmark_webhook_credentials)]
PolicyDep = Annotated[BouncePolicy, Depends(bounce_policy)]

TokenPath = Annotated[
    str,
    Path(
        description="The signed token from the link, exactly as sent: <payload>.<mac>.",
        examples=[
            "eyJjIjoiY18xIiwibSI6Im5ld3NsZXR0ZXItbW9udGhseSIsImV4cCI6MTc5OTk5OTk5OX0"
            ".Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eHF1dXh"
        ],
    ),
]

# --- links --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Why a link or a request is refused: HTTP status, what is wrong, what to do."""

    status: int
    title: str
    problem: str
    fix: str

    def page(self) -> HTMLResponse:
        return _pages.problem_page(self.status, self.title, self.problem, self.fix)

    def json(self, **extra: Any) -> JSONResponse:
        return JSONResponse(
            {"success": False, "error": f"{self.problem} {self.fix}", **extra},
            status_code=self.status,
        )


_EXPIRED_FIX = {
    UNSUBSCRIBE: (
        "This unsubscribe link has expired. To stop our messages, use the unsubscribe "
        "link in a more recent message from us, or reply to it asking to be removed."
    ),
    CLICK: (
        "This link has expired. Open a more recent message from us, or go to our website directly."
    ),
}


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


def verify_link(signer: LinkSigner, purpose: str, token: str, now: datetime) -> Link | Refusal:
    """The link behind ``token``, or why it is refused (400, 403 or 410)."""
    if not _TOKEN.match(token):
        return Refusal(
            400,
            "This link is incomplete",
            "The link is malformed: part of it is missing or damaged.",
            "Click the link in the message again, or copy all of it into the address bar.",
        )
    try:
        payload = signer.verify(purpose, token, now)
    except TokenExpired:
        return Refusal(
            410,
            "This link has expired",
            f"The {purpose} link expired: links in our messages work for {signer.ttl.days} days.",
            _EXPIRED_FIX.get(purpose, _EXPIRED_FIX[CLICK]),
        )
    except TokenInvalid as exc:
        return Refusal(
            403,
            "This link cannot be trusted",
            f"The link was changed after we sent it ({exc.message}), so nothing was done.",
            "Use the link exactly as it appears in the message.",
        )
    contact_id, content_id = payload.get("c"), payload.get("m")
    if not isinstance(contact_id, str) or not contact_id or not isinstance(content_id, str):
        return Refusal(
            400,
            "This link is incomplete",
            "The link does not say whom it is for.",
            "Use a link from a more recent message from us.",
        )
    return Link(token, contact_id, content_id, payload)


def _unavailable_page() -> HTMLResponse:
    response = _pages.problem_page(
        503,
        "Please try again",
        "We could not save this just now; nothing was changed.",
        "Reload this page in a minute.",
    )
    response.headers["Retry-After"] = "30"
    return response


# --- contacts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """A contact found in the database, with its identities by kind."""

    id: str
    identities: Mapping[str, tuple[str, ...]]

    def addresses(self, channel: str) -> tuple[str, ...]:
        kind = _ADDRESS_KIND.get(channel)
        return self.identities.get(kind, ()) if kind else ()


def _find(session: Session, contact_id: str) -> Known | None:
    """The contact (following merges), or None if unknown (never ours, or erased)."""
    current = survivors(session.connection(), [contact_id]).get(contact_id)
    if current is None:
        return None
    rows = session.exec(
        select(Identity.kind, Identity.value)
        .where(col(Identity.contact_id) == current)
        .order_by(col(Identity.created_at), col(Identity.value))
    ).all()
    identities: dict[str, tuple[str, ...]] = {}
    for kind, value in rows:
        identities[kind] = (*identities.get(kind, ()), value)
    return Known(current, identities)


def _find_notified(session: Session, contact_id: str | None, address: str) -> Known | None:
    """A provider notification's contact: from our metadata, else by its email address."""
    if contact_id:
        known = _find(session, contact_id)
        if known is not None:
            return known
    owner = session.get(Identity, ("email", address))
    return None if owner is None else _find(session, owner.contact_id)


def _latest_consent(session: Session, contact_id: str, channel: str) -> tuple[int, bool] | None:
    """The contact's latest consent decision on ``channel``: (row id, granted)."""
    row = session.exec(
        select(Consent.id, Consent.granted)
        .where(col(Consent.contact_id) == contact_id, col(Consent.channel) == channel)
        .order_by(col(Consent.id).desc())
        .limit(1)
    ).first()
    return None if row is None else (row[0] or 0, row[1])


def _suppress(
    session: Session, targets: Iterable[tuple[str, str]], reason: str, contact_id: str | None
) -> int:
    """Suppress each ``(channel, address)`` not yet suppressed; the count added.

    An existing row keeps its reason: a complaint must not turn into an unsubscribe
    that a preference page could lift. Email rows are keyed by the canonical address,
    the form the delivery activity looks up."""
    added = 0
    for channel, address in dict.fromkeys((c, _suppression_key(c, a)) for c, a in targets):
        if session.get(Suppression, (channel, address)) is not None:
            continue
        session.add(
            Suppression(channel=channel, address=address, reason=reason, contact_id=contact_id)
        )
        try:
            session.commit()
        except IntegrityError:  # a concurrent request suppressed it first: same outcome
            session.rollback()
        else:
            added += 1
    return added


def _suppression_key(channel: str, address: str) -> str:
    """An email address in canonical form (``normalise_email``); an identity stored
    before canonicalisation that has none is kept as it is, so it is still suppressed."""
    if channel != "email":
        return address
    try:
        return normalise_email(address)
    except IdentityError:
        return address


def _lift(session: Session, channel: str, addresses: Sequence[str]) -> None:
    """Remove the contact's own opt-out suppressions on ``channel`` (never bounces)."""
    addresses = list(
        dict.fromkeys([*addresses, *(_suppression_key(channel, a) for a in addresses)])
    )
    if addresses:
        session.execute(
            delete(Suppression).where(
                col(Suppression.channel) == channel,
                col(Suppression.address).in_(addresses),
                col(Suppression.reason).in_(LIFTABLE_REASONS),
            )
        )


def _event(
    known: Known,
    *,
    type_: str,
    message_id: str,
    source: str,
    occurred_at: datetime,
    properties: Mapping[str, Any] | None = None,
    traits: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    channel: str | None = "email",
) -> Incoming:
    """An event for a known contact, named by its id (``Incoming.contact_id``): no
    identity is sent, so none can be attached or merged because of a link."""
    return Incoming(
        kind="identify" if type_ == "identify" else "track",
        message_id=message_id,
        type=type_,
        occurred_at=occurred_at,
        properties=dict(properties or {}),
        traits=dict(traits or {}),
        context=dict(context or {}),
        source=source,
        channel=channel,
        contact_id=known.id,
    )


def _delivery_digest(value: str | None) -> str | None:
    """The idempotency-key digest from a Message-ID (``<digest@domain>``) or a digest."""
    if not value:
        return None
    return value.strip("<>").partition("@")[0] or None


# --- request bodies -----------------------------------------------------------------------


def parse_form(content_type: str, body: bytes) -> dict[str, list[str]] | None:
    """An HTML form body (urlencoded or multipart, as RFC 8058 allows); None if unreadable."""
    kind = content_type.partition(";")[0].strip().lower()
    try:
        if kind in ("", "application/x-www-form-urlencoded"):
            return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
        if kind == "multipart/form-data":
            header = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
            message = BytesParser(policy=HTTP).parsebytes(header + body)
            if not message.is_multipart():
                return None
            fields: dict[str, list[str]] = {}
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if not isinstance(name, str):
                    continue
                raw = part.get_payload(decode=True)
                value = raw.decode("utf-8") if isinstance(raw, bytes) else ""
                fields.setdefault(name, []).append(value)
            return fields
    except (UnicodeError, ValueError):
        return None
    return None


_BAD_FORM = Refusal(
    400,
    "This request is malformed",
    "The form could not be read.",
    "Use the button on the page, or send List-Unsubscribe=One-Click as a form (RFC 8058).",
)


async def _form(request: Request) -> dict[str, list[str]] | Refusal:
    body = await read_body(request, FORM_LIMIT)
    if body is None:
        return Refusal(413, "This request is too large", "The form is over 16 KB.", "Send less.")
    fields = parse_form(request.headers.get("content-type", ""), body)
    return _BAD_FORM if fields is None else fields


# --- unsubscribe --------------------------------------------------------------------------

_UNKNOWN_CONTACT = Refusal(
    404,
    "We cannot find you",
    "This link is for someone we no longer have a record of, so there is nothing to stop.",
    "If you still receive messages from us, use the link in the newest one.",
)

_UNSUBSCRIBE_DOC = (
    "The link in the List-Unsubscribe header and in the message footer. A mailbox "
    "provider's one-click POST (RFC 8058) gets a plain 200; the confirmation page's form "
    "gets the 'you are unsubscribed' page."
)
_LINK_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "The link is malformed, or the body is not a form we accept"},
    403: {"description": "The link was tampered with, or is for another purpose"},
    404: {"description": "The link's contact no longer exists"},
    410: {"description": "The link expired; the page says what to do instead"},
    503: {"description": "The database could not take the write; nothing changed, retry"},
}
_HTML_OK = {"content": {"text/html": {"example": "<!DOCTYPE html><html>...</html>"}}}


def _channel_of(link: Link) -> str | Refusal:
    channel = link.text("ch") or "email"
    if channel not in CHANNEL_LABELS:
        return Refusal(
            400,
            "This link is incomplete",
            f"The link is for channel {channel!r}, which cannot be unsubscribed here.",
            "Reply to the message asking to be removed.",
        )
    return channel


def _preferences_path(request: Request, token: str) -> str:
    return request.url_for("preferences_page", token=token).path


@router.get(
    "/u/{token}",
    summary="Unsubscribe page: confirm with one button (no JavaScript)",
    description=_UNSUBSCRIBE_DOC,
    response_class=HTMLResponse,
    responses={200: _HTML_OK, **_LINK_ERRORS},
)
async def unsubscribe_page(
    *, request: Request, token: TokenPath, session: SessionDep, signer: SignerDep
) -> Response:
    link = verify_link(signer, UNSUBSCRIBE, token, datetime.now(UTC))
    if isinstance(link, Refusal):
        return link.page()
    channel = _channel_of(link)
    if isinstance(channel, Refusal):
        return channel.page()
    try:
        known = await in_thread(session, _find, link.contact_id)
    except DatabaseError:
        return _unavailable_page()
    if known is None:
        return _UNKNOWN_CONTACT.page()
    return _pages.unsubscribe_confirm(
        channel_label=CHANNEL_LABELS[channel].lower(),
        addresses=known.addresses(channel) if channel == "email" else (),
        preferences_url=_preferences_path(request, token),
    )


@router.post(
    "/u/{token}",
    summary="Unsubscribe: RFC 8058 one-click POST, or the confirmation page's form",
    description=_UNSUBSCRIBE_DOC,
    responses={
        200: {
            "description": "Unsubscribed (or already unsubscribed)",
            "content": {
                "text/plain": {"example": "Unsubscribed.\n"},
                "text/html": {"example": "<!DOCTYPE html><html>...</html>"},
            },
        },
        413: {"description": "The body is over 16 KB"},
        **_LINK_ERRORS,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                media: {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "List-Unsubscribe": {"type": "string", "enum": ["One-Click"]},
                            "confirm": {"type": "string", "enum": ["unsubscribe"]},
                        },
                    },
                    "examples": {
                        "one-click": {
                            "summary": "A mailbox provider's one-click POST (RFC 8058)",
                            "value": {"List-Unsubscribe": "One-Click"},
                        },
                        "page": {
                            "summary": "The confirmation page's button",
                            "value": {"confirm": "unsubscribe"},
                        },
                    },
                }
                for media in ("application/x-www-form-urlencoded", "multipart/form-data")
            },
        }
    },
)
async def unsubscribe(
    *, request: Request, token: TokenPath, session: SessionDep, signer: SignerDep
) -> Response:
    link = verify_link(signer, UNSUBSCRIBE, token, datetime.now(UTC))
    if isinstance(link, Refusal):
        return link.page()
    channel = _channel_of(link)
    if isinstance(channel, Refusal):
        return channel.page()
    form = await _form(request)
    if isinstance(form, Refusal):
        return form.page()
    one_click = "One-Click" in form.get("List-Unsubscribe", [])
    if not one_click and "unsubscribe" not in form.get("confirm", []):
        return Refusal(
            400,
            "This request is malformed",
            "The POST says neither List-Unsubscribe=One-Click nor confirm=unsubscribe.",
            "Send List-Unsubscribe=One-Click (RFC 8058), or use the button on the page.",
        ).page()
    try:
        known = await in_thread(session, _find, link.contact_id)
        if known is None:
            return _UNKNOWN_CONTACT.page()
        await _unsubscribe(
            request, session, known, link, channel, "list_unsubscribe" if one_click else "page"
        )
    except DatabaseError:
        return _unavailable_page()
    if one_click:
        # RFC 8058: the answer is for a machine; no page, no redirect.
        return PlainTextResponse("Unsubscribed.\n", headers=dict(_pages.PAGE_HEADERS))
    return _pages.unsubscribed(
        channel_label=CHANNEL_LABELS[channel].lower(),
        addresses=known.addresses(channel) if channel == "email" else (),
        preferences_url=_preferences_path(request, token),
    )


async def _unsubscribe(
    request: Request, session: Session, known: Known, link: Link, channel: str, how: str
) -> None:
    """Suppress the contact's addresses on ``channel`` and record the withdrawal, once.

    A repeated POST (mailbox providers retry) finds the consent already withdrawn and
    records nothing more; after a re-subscription the same link works again, since the
    message id names the consent row it withdraws."""
    latest = await in_thread(session, _latest_consent, known.id, channel)
    addresses = known.addresses(channel)
    added = await in_thread(
        session, _suppress, [(channel, a) for a in addresses], "unsubscribe", known.id
    )
    if latest is not None and not latest[1]:
        _log.info("unsubscribe.repeated", contact_id=known.id, channel=channel)
        return
    epoch = latest[0] if latest is not None else 0
    await ingest_one(
        request,
        _event(
            known,
            type_=f"{channel}.unsubscribed",
            message_id=f"unsubscribe:{link.digest}:{epoch}",
            source="unsubscribe_link",
            occurred_at=datetime.now(UTC),
            properties={
                "content_id": link.content_id,
                "method": how,
                **({"message_id": d} if (d := _delivery_digest(link.text("i"))) else {}),
            },
            traits={"consent": {channel: False}},
            context={"consent_wording": UNSUBSCRIBE_WORDING},
            channel=channel,
        ),
    )
    _log.info("unsubscribed", contact_id=known.id, channel=channel, method=how, suppressed=added)


# --- preferences --------------------------------------------------------------------------


@dataclass(frozen=True)
class Preferences:
    """What the preference page shows and saves."""

    channels: Mapping[str, bool]
    topics: tuple[str, ...]


def _current_preferences(session: Session, known: Known) -> Preferences:
    channels = {}
    for channel in CHANNEL_LABELS:
        latest = _latest_consent(session, known.id, channel)
        # No decision recorded: email is opt-out, WeChat follows the follow (an openid).
        channels[channel] = latest[1] if latest else bool(known.addresses(channel))
    saved = session.exec(
        select(Event)
        .where(col(Event.contact_id) == known.id, col(Event.source) == "preference_page")
        .order_by(col(Event.id).desc())
        .limit(1)
    ).first()
    traits = saved.context.get("traits", {}) if saved is not None else {}
    chosen = traits.get("topics") if isinstance(traits, dict) else None
    if not isinstance(chosen, list):
        return Preferences(channels, tuple(PREFERENCE_TOPICS))  # never chosen: everything
    return Preferences(channels, tuple(t for t in chosen if t in PREFERENCE_TOPICS))


def parse_preferences(form: Mapping[str, Sequence[str]]) -> Preferences | Refusal:
    """The preference form's fields: ``email``/``wechat`` = ``on`` and repeated ``topic``."""
    if "preferences" not in form.get("form", []):
        return Refusal(
            400,
            "This request is malformed",
            "The POST is not the preference form (form=preferences is missing).",
            "Use the Save button on the preference page.",
        )
    channels = {}
    for channel in CHANNEL_LABELS:
        values = set(form.get(channel, []))
        if values - {"on"}:
            return Refusal(
                400,
                "This request is malformed",
                f"The field {channel!r} is {sorted(values)!r}; a ticked box sends 'on'.",
                f"Send {channel}=on to choose it, or leave the field out.",
            )
        channels[channel] = bool(values)
    topics = list(dict.fromkeys(form.get("topic", [])))
    unknown = [t for t in topics if t not in PREFERENCE_TOPICS]
    if unknown:
        return Refusal(
            400,
            "This request is malformed",
            f"Unknown topic {unknown[0]!r}.",
            f"Choose from {', '.join(PREFERENCE_TOPICS)}.",
        )
    return Preferences(channels, tuple(topics))


def _form_page(prefs: Preferences, *, saved: bool = False) -> HTMLResponse:
    return _pages.preferences_form(
        channels={c: (label, prefs.channels.get(c, False)) for c, label in CHANNEL_LABELS.items()},
        topics={t: (label, t in prefs.topics) for t, label in PREFERENCE_TOPICS.items()},
        saved=saved,
    )


@router.get(
    "/u/{token}/preferences",
    name="preferences_page",
    summary="Preference page: choose channels (email, WeChat) and topics",
    description="Reached with the unsubscribe link's token; a plain HTML form.",
    response_class=HTMLResponse,
    responses={200: _HTML_OK, **_LINK_ERRORS},
)
async def preferences_page(*, token: TokenPath, session: SessionDep, signer: SignerDep) -> Response:
    link = verify_link(signer, UNSUBSCRIBE, token, datetime.now(UTC))
    if isinstance(link, Refusal):
        return link.page()
    try:
        known = await in_thread(session, _find, link.contact_id)
        if known is None:
            return _UNKNOWN_CONTACT.page()
        prefs = await in_thread(session, _current_preferences, known)
    except DatabaseError:
        return _unavailable_page()
    return _form_page(prefs)


@router.post(
    "/u/{token}/preferences",
    summary="Save channel and topic preferences (identify with traits.consent and topics)",
    description=(
        "Records an identify event with traits.consent {email, wechat} and traits.topics, "
        "source preference_page. Turning a channel off suppresses its addresses; turning "
        "it on lifts only suppressions the contact chose (never bounces or complaints)."
    ),
    response_class=HTMLResponse,
    responses={200: _HTML_OK, 413: {"description": "The body is over 16 KB"}, **_LINK_ERRORS},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["form"],
                        "properties": {
                            "form": {"type": "string", "enum": ["preferences"]},
                            "email": {"type": "string", "enum": ["on"]},
                            "wechat": {"type": "string", "enum": ["on"]},
                            "topic": {
                                "type": "array",
                                "items": {"type": "string", "enum": list(PREFERENCE_TOPICS)},
                            },
                        },
                    },
                    "examples": {
                        "email, two topics": {
                            "value": {
                                "form": "preferences",
                                "email": "on",
                                "topic": ["newsletter", "event"],
                            }
                        }
                    },
                }
            },
        }
    },
)
async def save_preferences(
    *, request: Request, token: TokenPath, session: SessionDep, signer: SignerDep
) -> Response:
    link = verify_link(signer, UNSUBSCRIBE, token, datetime.now(UTC))
    if isinstance(link, Refusal):
        return link.page()
    form = await _form(request)
    if isinstance(form, Refusal):
        return form.page()
    prefs = parse_preferences(form)
    if isinstance(prefs, Refusal):
        return prefs.page()
    try:
        known = await in_thread(session, _find, link.contact_id)
        if known is None:
            return _UNKNOWN_CONTACT.page()
        for channel, wanted in prefs.channels.items():
            addresses = known.addresses(channel)
            if wanted:
                await in_thread(session, _lift, channel, addresses)
            else:
                targets = [(channel, a) for a in addresses]
                await in_thread(session, _suppress, targets, "preferences", known.id)
        await ingest_one(
            request,
            _event(
                known,
                type_="identify",
                message_id=f"preferences:{secrets.token_hex(16)}",
                source="preference_page",
                occurred_at=datetime.now(UTC),
                traits={"consent": dict(prefs.channels), "topics": list(prefs.topics)},
                context={"consent_wording": PREFERENCES_WORDING},
                channel=None,
            ),
        )
    except DatabaseError:
        return _unavailable_page()
    _log.info(
        "preferences.saved", contact_id=known.id, channels=dict(prefs.channels), topics=prefs.topics
    )
    return _form_page(prefs, saved=True)


# --- tracking -----------------------------------------------------------------------------


def _safe_target(url: str) -> bool:
    """An absolute http(s) URL with no whitespace or control characters."""
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def _location(url: str) -> str:
    """``url`` as a header value: a link with non-ASCII characters (an IRI, say a Chinese
    path) percent-encoded as UTF-8 (RFC 3987, 3.1), which browsers read back as the same
    page; HTTP headers carry Latin-1 at most, so the raw IRI would be a 500."""
    return _NON_ASCII.sub(lambda m: quote(m.group(0), safe=""), url)


async def _record_quietly(request: Request, incoming: Incoming) -> None:
    """Tracking is best effort: a click still lands and a pixel still loads without it."""
    try:
        await ingest_one(request, incoming)
    except DatabaseError as exc:
        _log.warning("tracking.not_recorded", event=incoming.type, error=exc.one_line())


async def _tracked(session: Session, contact_id: str) -> Known | None:
    try:
        return await in_thread(session, _find, contact_id)
    except DatabaseError as exc:
        _log.warning("tracking.lookup_failed", error=exc.one_line())
        return None


def _minute(now: datetime) -> int:
    return int(now.timestamp()) // 60


@router.get(
    "/t/c/{token}",
    summary="Click redirect: 302 to the signed URL, recording email.clicked",
    description=(
        "Only the URL inside a valid token is ever a redirect target, so this is not an "
        "open redirect: a changed token gets 403, an unsigned one 400, and no redirect."
    ),
    status_code=302,
    response_class=Response,
    responses={
        302: {
            "description": "To the URL the message linked to",
            "headers": {
                "Location": {
                    "schema": {"type": "string"},
                    "example": "https://example.cn/whitepapers/oee",
                }
            },
        },
        400: {"description": "The token is malformed, or the URL in it is not http(s)"},
        403: {"description": "The token was tampered with, or is for another purpose"},
        410: {"description": "The link expired"},
    },
)
async def click(
    *,
    request: Request,
    token: TokenPath,
    session: SessionDep,
    signer: SignerDep,
    background: BackgroundTasks,
) -> Response:
    now = datetime.now(UTC)
    link = verify_link(signer, CLICK, token, now)
    if isinstance(link, Refusal):
        return link.page()
    url = link.text("u")
    if url is None or not _safe_target(url):
        return Refusal(
            400,
            "This link cannot be followed",
            "The link does not lead to a web address.",
            "Go to our website directly.",
        ).page()
    known = await _tracked(session, link.contact_id)
    if known is not None:
        digest = _delivery_digest(link.text("k") or link.text("i"))
        background.add_task(
            _record_quietly,
            request,
            _event(
                known,
                type_="email.clicked",
                message_id=f"click:{link.digest}:{_minute(now)}",
                source="email_tracking",
                occurred_at=now,
                properties={
                    "url": url,
                    "content_id": link.content_id,
                    **({"message_id": digest} if digest else {}),
                },
            ),
        )
    return Response(
        status_code=302,
        headers={
            "Location": _location(url),
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
        },
        background=background,
    )


@router.get(
    "/t/o/{token}",
    summary="Open pixel: a 1x1 transparent GIF, recording email.opened",
    description=(
        "The path is /t/o/<token>.gif. The GIF is returned whatever the token (a broken "
        "image in a message helps no one); only a valid token records email.opened."
    ),
    response_class=Response,
    responses={200: {"content": {"image/gif": {}}, "description": "Always the same GIF"}},
)
async def open_pixel(
    *,
    request: Request,
    token: Annotated[
        str, Path(description="The signed token, followed by .gif", examples=["<token>.gif"])
    ],
    session: SessionDep,
    signer: SignerDep,
    background: BackgroundTasks,
) -> Response:
    now = datetime.now(UTC)
    link = verify_link(signer, OPEN, token.removesuffix(".gif"), now)
    if not isinstance(link, Refusal):
        known = await _tracked(session, link.contact_id)
        if known is not None:
            digest = _delivery_digest(link.text("i"))
            background.add_task(
                _record_quietly,
                request,
                _event(
                    known,
                    type_="email.opened",
                    message_id=f"open:{link.digest}:{_minute(now)}",
                    source="email_tracking",
                    occurred_at=now,
                    properties={
                        "content_id": link.content_id,
                        **({"message_id": digest} if digest else {}),
                    },
                ),
            )
    return Response(_GIF, media_type="image/gif", headers=_NO_CACHE, background=background)


# --- Postmark webhooks --------------------------------------------------------------------


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


def _soft_bounces(
    session: Session, contact_id: str, address: str, excluding: str
) -> list[datetime]:
    """When earlier soft bounces of ``address`` happened (from the contact's events)."""
    rows = session.exec(
        select(Event).where(
            col(Event.contact_id) == contact_id,
            col(Event.name) == "email.bounced",
            col(Event.message_id) != excluding,
        )
    ).all()
    times = [
        r.occurred_at if r.occurred_at.tzinfo else r.occurred_at.replace(tzinfo=UTC)
        for r in rows
        if r.properties.get("kind") == "soft" and r.properties.get("address") == address
    ]
    return times


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
        session, _find_notified, contact if isinstance(contact, str) else None, address
    )
    if known is None:
        _log.info("postmark.delivered.unknown_contact")
        return JSONResponse({"success": True, "event": None, "duplicate": False, "suppressed": 0})
    key = metadata.get(METADATA_KEY)
    outcome = await ingest_one(
        request,
        _event(
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
    known = await in_thread(session, _find_notified, notification.contact_id, address)
    message_id = _event_id(notification.provider_event_id)
    earlier: list[datetime] = []
    if known is not None:
        earlier = await in_thread(session, _soft_bounces, known.id, address, message_id)
    decision = policy.decide(notification, recent_soft_bounces=earlier)
    suppressed = 0
    if decision.suppress:
        targets = [(decision.channel, address)]
        if decision.scope == "global" and known is not None:
            targets += [(c, a) for c in CHANNEL_LABELS for a in known.addresses(c)]
        suppressed = await in_thread(
            session, _suppress, targets, decision.reason, known.id if known else None
        )
    duplicate = False
    if decision.event_type and known is not None:
        outcome = await ingest_one(
            request,
            _event(
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
