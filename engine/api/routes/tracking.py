"""Click and open tracking: the redirect and the pixel behind the links in our messages.

::

    GET  /t/c/{token}               302 to the signed URL only; records email.clicked
    GET  /t/o/{token}.gif           a 1x1 GIF, always; records email.opened for a good token

Tracking is best effort: a click still lands and a pixel still loads when the database
cannot take the event. Events are recorded once per token and minute, so a mail
scanner's burst of fetches is one click.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import quote, urlsplit

import structlog
from fastapi import APIRouter, BackgroundTasks, Path, Request
from fastapi.responses import Response
from sqlmodel import Session

from stagecoach.engine.api import _pages
from stagecoach.engine.api._common import in_thread, ingest_one
from stagecoach.engine.api.deps import SessionDep, SignerDep, TokenPath
from stagecoach.engine.domain.content import CLICK, OPEN
from stagecoach.engine.domain.errors import DatabaseError
from stagecoach.engine.services.consent import Known, contact_event, find_contact
from stagecoach.engine.services.ingest import Incoming
from stagecoach.engine.services.links import Refused, delivery_digest, verify_link

router = APIRouter(tags=["email"])

_log = structlog.get_logger("stagecoach.api.email")

_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
"""A 1x1 transparent GIF (43 bytes)."""

_NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private",
    "Pragma": "no-cache",
    "Expires": "0",
}


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
        return await in_thread(session, find_contact, contact_id)
    except DatabaseError as exc:
        _log.warning("tracking.lookup_failed", error=exc.one_line())
        return None


def _minute(now: datetime) -> int:
    return int(now.timestamp()) // 60


def _refused(request: Request, refused: Refused) -> Response:
    return _pages.refusal_page(
        request, refused, _pages.email_page_locale(request.headers.get("accept-language"))
    )


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
    if isinstance(link, Refused):
        return _refused(request, link)
    url = link.text("u")
    if url is None or not _safe_target(url):
        return _refused(request, Refused(400, "not_a_web_address"))
    known = await _tracked(session, link.contact_id)
    if known is not None:
        digest = delivery_digest(link.text("k") or link.text("i"))
        background.add_task(
            _record_quietly,
            request,
            contact_event(
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
    if not isinstance(link, Refused):
        known = await _tracked(session, link.contact_id)
        if known is not None:
            digest = delivery_digest(link.text("i"))
            background.add_task(
                _record_quietly,
                request,
                contact_event(
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
