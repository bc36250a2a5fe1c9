"""Referral landing page and coupon redemption.

::

    GET  /r/{code}?ch=wechat|email     the invitation page: a form, no JavaScript, in
                                       zh-CN or en (Accept-Language; ?lang= overrides)
    POST /r/{code}                     the form (urlencoded or multipart), or the same
                                       fields as JSON: name, email and/or phone,
                                       consent, and optionally device_id, wechat_openid,
                                       ch, lang
    POST /v1/coupons/{code}/redeem     a referral reward's coupon was used (admin token)
    POST /v1/contacts/{id}/referral-code   the contact's live code and share links, issued
                                       if they have none (admin token)
    GET  /v1/contacts/{id}/referrals   who referred them (nearest first) and everyone they
                                       brought in, to any depth (admin token)

A sign-up is screened before anything is stored
(``stagecoach.engine.services.referrals.screen_signup``),
then stored in order: an ``identify`` for the new contact (traits ``email``, ``phone``,
``name``, ``referred_by``, ``referral_code``, ``consent`` and ``consent_wording``, the
exact sentence the page showed next to the checkbox), the ``Referral`` row, and
``referral.signed_up`` on the referrer. Re-posting the same form repeats nothing.

Refusals say why, on the page (in the reader's language) or, for API clients (a JSON
body, or ``Accept: application/json``), as ``{"success": false, "reason", "error"}``:

=================  ======  ===========================================================
reason             status  when
=================  ======  ===========================================================
(field errors)     400     ``errors[].field`` names each: consent, name, email, phone...
unknown_code       404     no such code (or its referrer was erased)
expired_code       410     the code is past its expiry
used_up            409     the code brought as many sign-ups as it may
already_referred   409     the person signed up through another code before
referral_loop      409     the person is the referrer's own referrer (or further up)
self_referral      403     the email, phone, WeChat openid or device id is the referrer's
=================  ======  ===========================================================

The device id comes from the ``device_id`` field or the ``stagecoach_device`` cookie the
page sets. It and the WeChat openid are the sender's word, so they are only ever used to
refuse, never to identify anyone.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from stagecoach.engine.api import _pages
from stagecoach.engine.api._common import ingest_one, read_body
from stagecoach.engine.api._forms import FORM_LIMIT, parse_form
from stagecoach.engine.api._pages import LOCALES, Locale
from stagecoach.engine.api.auth import ADMIN_RESPONSES, require_admin
from stagecoach.engine.domain.errors import DatabaseError
from stagecoach.engine.services.ingest import (
    IdentityError,
    Incoming,
    normalise_email,
    normalise_phone,
)
from stagecoach.engine.services.referrals import (
    SHARE_CHANNELS,
    Claimed,
    RedemptionRefused,
    ReferralPolicy,
    ReferralRefused,
    UnknownReferrer,
    ancestors,
    attribute,
    find_code,
    identify_message_id,
    issue_code,
    redeem_coupon,
    redeemed_event,
    referral_tree,
    screen_signup,
    share_links,
    signed_up_event,
)

router = APIRouter(tags=["referrals"])

_log = structlog.get_logger("stagecoach.api.referrals")

DEFAULT_LOCALE: Locale = "zh-CN"
"""For a reader whose Accept-Language names neither (most links are shared on WeChat)."""

DEVICE_COOKIE = "stagecoach_device"
_DEVICE_MAX_AGE = 400 * 24 * 3600  # the longest browsers keep a cookie
_DEVICE = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
_OPENID = re.compile(r"^[A-Za-z0-9_-]{6,64}$")
NAME_LIMIT = 128
_MAX_LENGTH = {"name": NAME_LIMIT, "email": 320, "phone": 32}
SOURCE = "referral_page"


class _BundledWording(Mapping[Locale, str]):
    """The bundled checkbox label per locale, read when first asked for."""

    def __getitem__(self, locale: Locale) -> str:
        return _pages.bundled().consent_wording("referral", locale)

    def __iter__(self) -> Iterator[Locale]:
        return iter(LOCALES)

    def __len__(self) -> int:
        return len(LOCALES)


CONSENT_WORDING: Mapping[Locale, str] = _BundledWording()
"""The bundled checkbox label (``content/_layouts/pages/consent.<locale>.j2``), stored
word for word with the consent it records. An app shows and stores its content
directory's wording when it has its own."""

REFUSAL_STATUS: Mapping[str, int] = {
    "unknown_code": 404,
    "expired_code": 410,
    "used_up": 409,
    "already_referred": 409,
    "referral_loop": 409,
    "self_referral": 403,
}

# --- the form (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class FieldProblem:
    """One wrong field: its name, the problem's code (the page templates word it in each
    locale), the API's English message, and the details the wording needs."""

    field: str
    code: str
    en: str
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Signup:
    """A readable sign-up form."""

    name: str
    email: str | None
    phone: str | None
    device_id: str | None
    wechat_openid: str | None

    def claimed(self) -> Claimed:
        return Claimed(self.email, self.phone, self.wechat_openid, self.device_id)


def negotiate_locale(accept_language: str | None, override: str | None = None) -> Locale:
    """zh-CN or en: ``override`` when it is one, else the reader's preferred of the two
    by Accept-Language q-values (earlier wins a tie), else :data:`DEFAULT_LOCALE`."""
    return _pages.negotiate_locale(accept_language, override, default=DEFAULT_LOCALE)


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() in ("on", "yes", "true", "1")


def _text(fields: Mapping[str, Any], key: str) -> str:
    value = fields.get(key)
    return value.strip() if isinstance(value, str) else ""


def parse_signup(
    fields: Mapping[str, Any], *, country: str | None = "CN"
) -> Signup | list[FieldProblem]:
    """The form's fields (first value of each) as a sign-up, or every problem by field.

    ``country`` reads phone numbers given without ``+``; consent must be ticked."""
    problems: list[FieldProblem] = []
    name = _text(fields, "name")
    if not name:
        problems.append(FieldProblem("name", "name_required", "name is required: enter your name"))
    elif len(name) > NAME_LIMIT:
        problems.append(
            FieldProblem(
                "name",
                "name_too_long",
                f"name is over {NAME_LIMIT} characters",
                {"limit": NAME_LIMIT},
            )
        )
    email = phone = None
    raw_email, raw_phone = _text(fields, "email"), _text(fields, "phone")
    if not raw_email and not raw_phone:
        problems.append(
            FieldProblem(
                "email",
                "contact_required",
                "email or phone is required: give an email address or a mobile number",
            )
        )
    if raw_email:
        try:
            email = normalise_email(raw_email)
        except IdentityError as exc:
            why = f" ({exc.reason})" if exc.reason else ""
            problems.append(
                FieldProblem(
                    "email",
                    "email_invalid",
                    f"email is not an email address{why}: send name@domain",
                    {"reason": exc.reason or ""},
                )
            )
    if raw_phone:
        try:
            phone = normalise_phone(raw_phone, country)
        except IdentityError:
            problems.append(
                FieldProblem(
                    "phone",
                    "phone_invalid",
                    "phone is not a phone number: include the country code, e.g. +8613800138000",
                )
            )
    if not _truthy(fields.get("consent")):
        problems.append(
            FieldProblem(
                "consent",
                "consent_required",
                "consent is required: tick the box to agree to be contacted",
            )
        )
    device_id = _text(fields, "device_id") or None
    if device_id is not None and not _DEVICE.match(device_id):
        problems.append(
            FieldProblem(
                "device_id",
                "device_invalid",
                "device_id must be 8 to 128 letters, digits, '-' or '_'",
            )
        )
    openid = _text(fields, "wechat_openid") or None
    if openid is not None and not _OPENID.match(openid):
        problems.append(
            FieldProblem(
                "wechat_openid",
                "openid_invalid",
                "wechat_openid must be 6 to 64 letters, digits, '-' or '_'",
            )
        )
    if problems:
        return problems
    return Signup(name, email, phone, device_id, openid)


def identify(
    signup: Signup,
    *,
    code: str,
    referrer_id: str,
    locale: Locale,
    channel: str | None,
    now: datetime,
    consent_wording: str,
    context: Mapping[str, Any] | None = None,
) -> Incoming:
    """The referee's identify: who they are, who referred them, what they agreed to
    (``consent_wording``: the sentence the page showed next to the checkbox)."""
    consent = {kind: True for kind in ("email", "phone") if getattr(signup, kind)}
    traits: dict[str, Any] = {
        "name": signup.name,
        "referred_by": referrer_id,
        "referral_code": code,
        "consent": consent,
        "consent_wording": consent_wording,
        "locale": locale,
    }
    identities: dict[str, str] = {}
    for kind in ("email", "phone"):
        value = getattr(signup, kind)
        if value:
            traits[kind] = identities[kind] = value
    return Incoming(
        kind="identify",
        message_id=identify_message_id(code, signup.claimed(), name=signup.name, locale=locale),
        type="identify",
        occurred_at=now,
        traits=traits,
        context={
            "consent_wording": consent_wording,
            "locale": locale,
            **({"device": {"id": signup.device_id}} if signup.device_id else {}),
            **(context or {}),
        },
        identities=identities,
        source=SOURCE,
        channel=channel,
    )


# --- pages --------------------------------------------------------------------------------


def _form_page(
    request: Request,
    locale: Locale,
    *,
    channel: str | None,
    device_id: str,
    values: Mapping[str, str] | None = None,
    problems: list[FieldProblem] | None = None,
    status: int = 200,
) -> HTMLResponse:
    hidden = {"lang": locale, "device_id": device_id, **({"ch": channel} if channel else {})}
    return _pages.render(
        request,
        "referral",
        locale,
        status=status,
        hidden=list(hidden.items()),
        fields=[("name", "text", "name"), ("email", "email", "email"), ("phone", "tel", "tel")],
        limits=_MAX_LENGTH,
        values=dict(values or {}),
        problems=problems or [],
        consent_wording=_pages.consent_wording(request, "referral", locale),
    )


def _thanks_page(request: Request, locale: Locale) -> HTMLResponse:
    return _pages.render(request, "referral-thanks", locale)


def _wants_json(request: Request) -> bool:
    """An API client: it sent JSON, or asks for JSON rather than a page."""
    if request.headers.get("content-type", "").partition(";")[0].strip() == "application/json":
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _refused(request: Request, locale: Locale, refusal: ReferralRefused) -> Response:
    status = REFUSAL_STATUS[refusal.reason]
    if _wants_json(request):
        return JSONResponse(
            {"success": False, "reason": refusal.reason, "error": refusal.one_line()},
            status_code=status,
        )
    return _pages.render(request, "referral-problem", locale, status=status, reason=refusal.reason)


def _unavailable(request: Request, locale: Locale, exc: DatabaseError) -> Response:
    headers = {"Retry-After": "30"}
    if _wants_json(request):
        return JSONResponse(
            {"success": False, "error": exc.one_line()}, status_code=503, headers=headers
        )
    response = _pages.render(request, "referral-problem", locale, status=503, reason="unavailable")
    response.headers.update(headers)
    return response


def _channel(value: Any) -> str | None:
    return value if isinstance(value, str) and value in SHARE_CHANNELS else None


def _db(request: Request) -> Engine:
    db: Engine = request.app.state.db
    return db


def _device(request: Request) -> tuple[str, bool]:
    """The reader's device id from the cookie, or a new one (True: set the cookie)."""
    cookie = request.cookies.get(DEVICE_COOKIE, "")
    if _DEVICE.match(cookie):
        return cookie, False
    return secrets.token_urlsafe(18), True


def _set_device(request: Request, response: Response, device_id: str) -> None:
    response.set_cookie(
        DEVICE_COOKIE,
        device_id,
        max_age=_DEVICE_MAX_AGE,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/r/",
    )


# --- routes -------------------------------------------------------------------------------

CodePath = Annotated[
    str,
    Path(
        description="The referral code from the share link (case and hyphens do not matter)",
        examples=["7KQ2M9XH4C"],
        max_length=64,
    ),
]

_PAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "A field is wrong: errors[].field names it (consent, name, email...)",
        "content": {
            "application/json": {
                "example": {
                    "success": False,
                    "errors": [
                        {
                            "field": "consent",
                            "message": "consent is required: tick the box to agree to be contacted",
                        }
                    ],
                }
            }
        },
    },
    403: {"description": "self_referral: the new contact is the referrer"},
    404: {"description": "unknown_code"},
    409: {"description": "used_up, already_referred or referral_loop"},
    410: {"description": "expired_code"},
    413: {"description": "The body is over 16 KB"},
    503: {"description": "The database could not take the write; nothing was lost, retry"},
}
_HTML = {"text/html": {"example": '<!DOCTYPE html><html lang="zh-CN">...</html>'}}


@router.get(
    "/r/{code}",
    summary="Referral landing page: the sign-up form (zh-CN or en, no JavaScript)",
    response_class=HTMLResponse,
    responses={
        200: {
            "description": "The form; JSON clients get the code's state",
            "content": {
                **_HTML,
                "application/json": {
                    "example": {
                        "success": True,
                        "code": "7KQ2M9XH4C",
                        "expires_at": "2027-05-23T09:00:00+00:00",
                    }
                },
            },
        },
        **{k: v for k, v in _PAGE_ERRORS.items() if k in (404, 409, 410, 503)},
    },
)
async def referral_page(
    *,
    request: Request,
    code: CodePath,
    ch: Annotated[
        str | None, Query(description="Where the link was shared: wechat or email")
    ] = None,
    lang: Annotated[str | None, Query(description="zh-CN or en, over Accept-Language")] = None,
) -> Response:
    locale = negotiate_locale(request.headers.get("accept-language"), lang)
    try:
        row = await run_in_threadpool(find_code, _db(request), code, now=datetime.now(UTC))
    except ReferralRefused as refusal:
        return _refused(request, locale, refusal)
    except DatabaseError as exc:
        return _unavailable(request, locale, exc)
    if _wants_json(request):
        return JSONResponse(
            {"success": True, "code": row.code, "expires_at": row.expires_at.isoformat()}
        )
    device_id, new = _device(request)
    response = _form_page(request, locale, channel=_channel(ch), device_id=device_id)
    if new:
        _set_device(request, response, device_id)
    return response


async def _fields(request: Request) -> dict[str, Any] | Response:
    """The body as ``{field: value}`` (the first of repeated form fields)."""
    body = await read_body(request, FORM_LIMIT)
    if body is None:
        return JSONResponse({"success": False, "error": "the body is over 16 KB"}, 413)
    content_type = request.headers.get("content-type", "")
    if content_type.partition(";")[0].strip() == "application/json":
        try:
            parsed = orjson.loads(body or b"null")
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    else:
        form = parse_form(content_type, body)
        if form is not None:
            return {k: v[0] for k, v in form.items() if v}
    return JSONResponse(
        {
            "success": False,
            "errors": [
                {
                    "field": "body",
                    "message": "send a form or a JSON object with name, email or "
                    "phone, and consent",
                }
            ],
        },
        400,
    )


@router.post(
    "/r/{code}",
    summary="Sign up through a referral: the landing page's form, or the same fields as JSON",
    response_class=HTMLResponse,
    responses={
        200: {
            "description": "Signed up (or already signed up with this code: duplicate true)",
            "content": {
                **_HTML,
                "application/json": {
                    "example": {"success": True, "duplicate": False, "code": "7KQ2M9XH4C"}
                },
            },
        },
        **_PAGE_ERRORS,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "example": {
                        "name": "李雷",
                        "email": "li.lei@example.cn",
                        "phone": "+8613800138000",
                        "consent": True,
                        "ch": "wechat",
                        "lang": "zh-CN",
                    }
                },
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["name", "consent"],
                        "properties": {
                            name: {"type": "string"}
                            for name in (
                                "name",
                                "email",
                                "phone",
                                "consent",
                                "device_id",
                                "wechat_openid",
                                "ch",
                                "lang",
                            )
                        },
                    }
                },
            },
        }
    },
)
async def referral_signup(*, request: Request, code: CodePath) -> Response:
    now = datetime.now(UTC)
    db = _db(request)
    fields = await _fields(request)
    if isinstance(fields, Response):
        return fields
    lang = fields.get("lang")
    locale = negotiate_locale(
        request.headers.get("accept-language"), lang if isinstance(lang, str) else None
    )
    try:
        await run_in_threadpool(find_code, db, code, now=now, check_uses=False)
    except ReferralRefused as refusal:
        return _refused(request, locale, refusal)
    except DatabaseError as exc:
        return _unavailable(request, locale, exc)
    cookie_device = request.cookies.get(DEVICE_COOKIE, "")
    if not _text(fields, "device_id") and _DEVICE.match(cookie_device):
        fields = {**fields, "device_id": cookie_device}
    country = request.app.state.settings.referral_phone_country
    signup = parse_signup(fields, country=country)
    channel = _channel(fields.get("ch"))
    if isinstance(signup, list):
        if _wants_json(request):
            return JSONResponse(
                {
                    "success": False,
                    "errors": [{"field": p.field, "message": p.en} for p in signup],
                },
                400,
            )
        values = {k: _text(fields, k) for k in ("name", "email", "phone")}
        device_id = _text(fields, "device_id")
        return _form_page(
            request,
            locale,
            channel=channel,
            device_id=device_id if _DEVICE.match(device_id) else _device(request)[0],
            values=values,
            problems=signup,
            status=400,
        )
    try:
        screened = await run_in_threadpool(screen_signup, db, code, signup.claimed(), now=now)
        outcome = await ingest_one(
            request,
            identify(
                signup,
                code=screened.code,
                referrer_id=screened.referrer_id,
                locale=locale,
                channel=channel,
                now=now,
                consent_wording=_pages.consent_wording(request, "referral", locale),
                context={
                    k: v
                    for k, v in (
                        ("ip", request.client.host if request.client else None),
                        ("userAgent", request.headers.get("user-agent")),
                    )
                    if v
                },
            ),
        )
        attribution = await run_in_threadpool(
            attribute,
            db,
            screened.code,
            outcome.contact_id,
            now=now,
            channel=channel,
            device_id=signup.device_id,
        )
        await ingest_one(
            request,
            signed_up_event(attribution.referral, referrer_id=attribution.referrer_id),
        )
    except ReferralRefused as refusal:
        return _refused(request, locale, refusal)
    except DatabaseError as exc:
        return _unavailable(request, locale, exc)
    _log.info(
        "referral.signup",
        contact_id=outcome.contact_id,
        referrer_id=attribution.referrer_id,
        referral_id=attribution.referral.id,
        channel=channel,
        duplicate=attribution.duplicate,
    )
    if _wants_json(request):
        return JSONResponse(
            {"success": True, "duplicate": attribution.duplicate, "code": screened.code}
        )
    return _thanks_page(request, locale)


_REDEEM_STATUS: Mapping[str, int] = {"unknown_coupon": 404, "held": 409, "cancelled": 410}


@router.post(
    "/v1/coupons/{coupon_code}/redeem",
    summary="A referral reward's coupon was redeemed: records coupon.redeemed on its referrer",
    dependencies=[Depends(require_admin)],
    responses={
        200: {
            "description": "Redeemed now, or before (duplicate: true)",
            "content": {
                "application/json": {
                    "example": {
                        "success": True,
                        "coupon_code": "REF-7KQ2M9XH4C",
                        "reward_id": 1,
                        "referrer_id": "c_0123456789abcdef01234567",
                        "redeemed_at": "2026-12-20T09:00:00+00:00",
                        "duplicate": False,
                        "event": "coupon.redeemed",
                        "message_id": "coupon:REF-7KQ2M9XH4C:redeemed",
                    }
                }
            },
        },
        404: {"description": "unknown_coupon"},
        409: {"description": "held: the referred purchase is still in its return window"},
        410: {"description": "cancelled: the referred purchase was returned"},
        **ADMIN_RESPONSES,
    },
)
async def redeem(
    *,
    request: Request,
    coupon_code: Annotated[
        str,
        Path(description="The reward's coupon code", examples=["REF-7KQ2M9XH4C"], max_length=64),
    ],
) -> JSONResponse:
    try:
        redemption = await run_in_threadpool(
            redeem_coupon, _db(request), coupon_code, at=datetime.now(UTC)
        )
        event = redeemed_event(redemption.reward)
        await ingest_one(request, event)  # again on a duplicate: it may have been lost
    except RedemptionRefused as refused:
        return JSONResponse(
            {"success": False, "reason": refused.reason, "error": refused.one_line()},
            status_code=_REDEEM_STATUS[refused.reason],
        )
    except DatabaseError as exc:
        return _unavailable_json(exc)
    reward = redemption.reward
    _log.info(
        "coupon.redeemed",
        contact_id=redemption.referrer_id,
        reward_id=reward.id,
        duplicate=redemption.duplicate,
    )
    return JSONResponse(
        {
            "success": True,
            "coupon_code": reward.coupon_code,
            "reward_id": reward.id,
            "referrer_id": redemption.referrer_id,
            "redeemed_at": event.occurred_at.isoformat(),
            "duplicate": redemption.duplicate,
            "event": event.type,
            "message_id": event.message_id,
        }
    )


# --- admin: codes and the tree ------------------------------------------------------------

ContactPath = Annotated[
    str,
    Path(
        description="The contact's id (a merged id is followed to the contact it is now)",
        examples=["c_0123456789abcdef01234567"],
        max_length=64,
    ),
]


def _unavailable_json(exc: DatabaseError) -> JSONResponse:
    return JSONResponse(
        {"success": False, "error": exc.one_line()}, status_code=503, headers={"Retry-After": "5"}
    )


@router.post(
    "/v1/contacts/{contact_id}/referral-code",
    summary="The contact's referral code and share links (issued if they have no live one)",
    dependencies=[Depends(require_admin)],
    responses={
        200: {
            "description": "The live code: the same one on every call until it runs out",
            "content": {
                "application/json": {
                    "example": {
                        "success": True,
                        "contact_id": "c_0123456789abcdef01234567",
                        "code": "7KQ2M9XH4C",
                        "expires_at": "2027-05-23T09:00:00+00:00",
                        "uses": 0,
                        "max_uses": 50,
                        "links": {
                            "wechat": "https://mkt.example.com/r/7KQ2M9XH4C?ch=wechat",
                            "email": "https://mkt.example.com/r/7KQ2M9XH4C?ch=email",
                        },
                    }
                }
            },
        },
        404: {"description": "No contact has this id"},
        **ADMIN_RESPONSES,
    },
)
async def referral_code(*, request: Request, contact_id: ContactPath) -> JSONResponse:
    settings = request.app.state.settings
    try:
        code = await run_in_threadpool(
            issue_code,
            _db(request),
            contact_id,
            now=datetime.now(UTC),
            policy=ReferralPolicy.from_settings(settings),
        )
    except UnknownReferrer as exc:
        return JSONResponse({"success": False, "error": exc.one_line()}, status_code=404)
    except DatabaseError as exc:
        return _unavailable_json(exc)
    return JSONResponse(
        {
            "success": True,
            "contact_id": code.referrer_id,
            "code": code.code,
            "expires_at": code.expires_at.isoformat(),
            "uses": code.uses,
            "max_uses": code.max_uses,
            "links": share_links(settings.api_base_url, code.code),
        }
    )


@router.get(
    "/v1/contacts/{contact_id}/referrals",
    summary="Who referred the contact, and everyone they brought in, to any depth",
    dependencies=[Depends(require_admin)],
    responses={
        200: {
            "description": "ancestors: nearest first; tree: nested children in sign-up order",
            "content": {
                "application/json": {
                    "example": {
                        "success": True,
                        "contact_id": "c_b",
                        "ancestors": ["c_a"],
                        "tree": {
                            "contact_id": "c_b",
                            "children": [
                                {
                                    "contact_id": "c_c",
                                    "referral_id": 2,
                                    "code": "7KQ2M9XH4C",
                                    "channel": "wechat",
                                    "status": "converted",
                                    "created_at": "2026-11-24T09:00:00+00:00",
                                    "children": [],
                                }
                            ],
                        },
                    }
                }
            },
        },
        **ADMIN_RESPONSES,
    },
)
async def referrals_of(*, request: Request, contact_id: ContactPath) -> JSONResponse:
    db = _db(request)
    try:
        tree = await run_in_threadpool(referral_tree, db, contact_id)
        up = await run_in_threadpool(ancestors, db, contact_id)
    except DatabaseError as exc:
        return _unavailable_json(exc)
    return JSONResponse(
        {"success": True, "contact_id": tree["contact_id"], "ancestors": up, "tree": tree}
    )
