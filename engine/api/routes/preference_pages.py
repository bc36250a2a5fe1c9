"""The unsubscribe and preference pages behind the link in every message we send.

::

    GET  /u/{token}                 confirmation page with one button (a GET never
                                    unsubscribes: mail scanners fetch every link)
    POST /u/{token}                 "List-Unsubscribe=One-Click" (RFC 8058): 200, no page,
                                    no redirect; "confirm=unsubscribe" (the page's form):
                                    the "you are unsubscribed" page
    GET  /u/{token}/preferences     channels (email, WeChat) and topics, as a form
    POST /u/{token}/preferences     saves them: an identify with traits.consent and
                                    traits.topics, source "preference_page"

A bad link is refused before anything is stored (``stagecoach.engine.services.links``): malformed
400, tampered with or signed for another purpose 403, expired 410; each page says what
the reader can do. When the database cannot take a write the answer is 503 and the
request can be repeated: every write is idempotent (suppressions by address).

Unsubscribing records ``<channel>.unsubscribed`` (with ``traits.consent``, so the consent
ledger has the withdrawal and its wording) and a ``Suppression`` row for each of the
contact's addresses on that channel (``stagecoach.engine.services.consent``).

The pages are in the contact's locale (zh-CN or en) when it is known, else in the one the
browser prefers (Accept-Language), else in English; the copy and the consent wording are
templates in ``content/_layouts/pages/``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from sqlmodel import Session

from stagecoach.engine.api import _pages
from stagecoach.engine.api._common import in_thread, ingest_one, read_body
from stagecoach.engine.api._forms import FORM_LIMIT, parse_form
from stagecoach.engine.api._pages import Locale
from stagecoach.engine.api.deps import SessionDep, SignerDep, TokenPath
from stagecoach.engine.domain.content import UNSUBSCRIBE
from stagecoach.engine.domain.errors import DatabaseError
from stagecoach.engine.services.consent import (
    CHANNELS,
    PREFERENCE_TOPICS,
    Known,
    Preferences,
    contact_event,
    current_preferences,
    find_contact,
    latest_consent,
    lift,
    suppress,
)
from stagecoach.engine.services.links import Link, Refused, delivery_digest, verify_link

router = APIRouter(tags=["email"])

_log = structlog.get_logger("stagecoach.api.email")

_UNKNOWN_CONTACT = Refused(404, "unknown_contact")
_UNAVAILABLE = Refused(503, "unavailable")

_UNSUBSCRIBE_DOC = (
    "The link in the List-Unsubscribe header and in the message footer. A mailbox "
    "provider's one-click POST (RFC 8058) gets a plain 200; the confirmation page's form "
    "gets the 'you are unsubscribed' page. The page is in the contact's locale (zh-CN or "
    "en), else the browser's (Accept-Language), else English."
)
_LINK_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "The link is malformed, or the body is not a form we accept"},
    403: {"description": "The link was tampered with, or is for another purpose"},
    404: {"description": "The link's contact no longer exists"},
    410: {"description": "The link expired; the page says what to do instead"},
    503: {"description": "The database could not take the write; nothing changed, retry"},
}
_HTML_OK = {"content": {"text/html": {"example": "<!DOCTYPE html><html>...</html>"}}}


def _locale(request: Request, known: Known | None = None) -> Locale:
    return _pages.email_page_locale(
        request.headers.get("accept-language"), known.locale if known else None
    )


def _refused(request: Request, refused: Refused, known: Known | None = None) -> HTMLResponse:
    return _pages.refusal_page(request, refused, _locale(request, known))


async def _form(request: Request) -> dict[str, list[str]] | Refused:
    body = await read_body(request, FORM_LIMIT)
    if body is None:
        return Refused(413, "form_too_large")
    fields = parse_form(request.headers.get("content-type", ""), body)
    return Refused(400, "form_unreadable") if fields is None else fields


def _channel_of(link: Link) -> str | Refused:
    channel = link.text("ch") or "email"
    if channel not in CHANNELS:
        return Refused(400, "channel_closed", {"channel": channel})
    return channel


def _preferences_path(request: Request, token: str) -> str:
    return request.url_for("preferences_page", token=token).path


def _unsubscribe_page(
    page: str, request: Request, token: str, known: Known, channel: str
) -> HTMLResponse:
    return _pages.render(
        request,
        page,
        _locale(request, known),
        channel=channel,
        addresses=_pages.masked(known.addresses(channel)) if channel == "email" else [],
        preferences_url=_preferences_path(request, token),
    )


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
    if isinstance(link, Refused):
        return _refused(request, link)
    channel = _channel_of(link)
    if isinstance(channel, Refused):
        return _refused(request, channel)
    try:
        known = await in_thread(session, find_contact, link.contact_id)
    except DatabaseError:
        return _refused(request, _UNAVAILABLE)
    if known is None:
        return _refused(request, _UNKNOWN_CONTACT)
    return _unsubscribe_page("unsubscribe", request, token, known, channel)


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
    if isinstance(link, Refused):
        return _refused(request, link)
    channel = _channel_of(link)
    if isinstance(channel, Refused):
        return _refused(request, channel)
    form = await _form(request)
    if isinstance(form, Refused):
        return _refused(request, form)
    one_click = "One-Click" in form.get("List-Unsubscribe", [])
    if not one_click and "unsubscribe" not in form.get("confirm", []):
        return _refused(request, Refused(400, "unsubscribe_unconfirmed"))
    try:
        known = await in_thread(session, find_contact, link.contact_id)
        if known is None:
            return _refused(request, _UNKNOWN_CONTACT)
        await _unsubscribe(
            request, session, known, link, channel, "list_unsubscribe" if one_click else "page"
        )
    except DatabaseError:
        return _refused(request, _UNAVAILABLE)
    if one_click:
        # RFC 8058: the answer is for a machine; no page, no redirect.
        return PlainTextResponse("Unsubscribed.\n", headers=dict(_pages.PAGE_HEADERS))
    return _unsubscribe_page("unsubscribed", request, token, known, channel)


async def _unsubscribe(
    request: Request, session: Session, known: Known, link: Link, channel: str, how: str
) -> None:
    """Suppress the contact's addresses on ``channel`` and record the withdrawal, once.

    A repeated POST (mailbox providers retry) finds the consent already withdrawn and
    records nothing more; after a re-subscription the same link works again, since the
    message id names the consent row it withdraws."""
    latest = await in_thread(session, latest_consent, known.id, channel)
    addresses = known.addresses(channel)
    added = await in_thread(
        session, suppress, [(channel, a) for a in addresses], "unsubscribe", known.id
    )
    if latest is not None and not latest[1]:
        _log.info("unsubscribe.repeated", contact_id=known.id, channel=channel)
        return
    epoch = latest[0] if latest is not None else 0
    wording = _pages.consent_wording(request, "unsubscribe", _locale(request, known))
    await ingest_one(
        request,
        contact_event(
            known,
            type_=f"{channel}.unsubscribed",
            message_id=f"unsubscribe:{link.digest}:{epoch}",
            source="unsubscribe_link",
            occurred_at=datetime.now(UTC),
            properties={
                "content_id": link.content_id,
                "method": how,
                **({"message_id": d} if (d := delivery_digest(link.text("i"))) else {}),
            },
            traits={"consent": {channel: False}},
            context={"consent_wording": wording},
            channel=channel,
        ),
    )
    _log.info("unsubscribed", contact_id=known.id, channel=channel, method=how, suppressed=added)


def parse_preferences(form: Mapping[str, Sequence[str]]) -> Preferences | Refused:
    """The preference form's fields: ``email``/``wechat`` = ``on`` and repeated ``topic``."""
    if "preferences" not in form.get("form", []):
        return Refused(400, "not_the_preference_form")
    channels = {}
    for channel in CHANNELS:
        values = set(form.get(channel, []))
        if values - {"on"}:
            return Refused(400, "channel_value", {"channel": channel, "sent": repr(sorted(values))})
        channels[channel] = bool(values)
    topics = list(dict.fromkeys(form.get("topic", [])))
    unknown = [t for t in topics if t not in PREFERENCE_TOPICS]
    if unknown:
        return Refused(400, "unknown_topic", {"topic": unknown[0], "topics": PREFERENCE_TOPICS})
    return Preferences(channels, tuple(topics))


def _form_page(
    request: Request, known: Known, prefs: Preferences, *, saved: bool = False
) -> HTMLResponse:
    return _pages.render(
        request,
        "preferences",
        _locale(request, known),
        channels=[(c, prefs.channels.get(c, False)) for c in CHANNELS],
        topics=[(t, t in prefs.topics) for t in PREFERENCE_TOPICS],
        saved=saved,
    )


@router.get(
    "/u/{token}/preferences",
    name="preferences_page",
    summary="Preference page: choose channels (email, WeChat) and topics",
    description="Reached with the unsubscribe link's token; a plain HTML form, in the "
    "contact's locale (zh-CN or en), else the browser's, else English.",
    response_class=HTMLResponse,
    responses={200: _HTML_OK, **_LINK_ERRORS},
)
async def preferences_page(
    *, request: Request, token: TokenPath, session: SessionDep, signer: SignerDep
) -> Response:
    link = verify_link(signer, UNSUBSCRIBE, token, datetime.now(UTC))
    if isinstance(link, Refused):
        return _refused(request, link)
    try:
        known = await in_thread(session, find_contact, link.contact_id)
        if known is None:
            return _refused(request, _UNKNOWN_CONTACT)
        prefs = await in_thread(session, current_preferences, known)
    except DatabaseError:
        return _refused(request, _UNAVAILABLE)
    return _form_page(request, known, prefs)


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
    if isinstance(link, Refused):
        return _refused(request, link)
    form = await _form(request)
    if isinstance(form, Refused):
        return _refused(request, form)
    prefs = parse_preferences(form)
    if isinstance(prefs, Refused):
        return _refused(request, prefs)
    try:
        known = await in_thread(session, find_contact, link.contact_id)
        if known is None:
            return _refused(request, _UNKNOWN_CONTACT)
        for channel, wanted in prefs.channels.items():
            addresses = known.addresses(channel)
            if wanted:
                await in_thread(session, lift, channel, addresses)
            else:
                targets = [(channel, a) for a in addresses]
                await in_thread(session, suppress, targets, "preferences", known.id)
        wording = _pages.consent_wording(request, "preferences", _locale(request, known))
        await ingest_one(
            request,
            contact_event(
                known,
                type_="identify",
                message_id=f"preferences:{secrets.token_hex(16)}",
                source="preference_page",
                occurred_at=datetime.now(UTC),
                traits={"consent": dict(prefs.channels), "topics": list(prefs.topics)},
                context={"consent_wording": wording},
                channel=None,
            ),
        )
    except DatabaseError:
        return _refused(request, _UNAVAILABLE)
    _log.info(
        "preferences.saved", contact_id=known.id, channels=dict(prefs.channels), topics=prefs.topics
    )
    return _form_page(request, known, prefs, saved=True)
