"""Identities found in a message, normalised (pure).

One contact, many identities: ``user_id``, ``anonymous_id``, ``email``, ``phone``
(E.164, by the maintained ``phonenumbers`` library), ``wechat_openid``,
``wechat_unionid`` and ``crm_id``. Emails take their canonical form from
:func:`normalise_email` (``stagecoach.engine.domain.addresses``, on the maintained
``email-validator``
library): the one form used for identity, consent, suppression, referrals and sending.
A phone without a leading ``+`` needs ``traits.country`` (ISO 3166, e.g. ``CN``) to be
read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import phonenumbers

from stagecoach.engine.domain.addresses import AddressError, canonical_email

KINDS = (
    "user_id",
    "anonymous_id",
    "email",
    "phone",
    "wechat_openid",
    "wechat_unionid",
    "crm_id",
)
"""Strongest first: a merge keeps the contact found by the earliest kind."""

_TRAIT_KEYS = {
    "email": "email",
    "phone": "phone",
    "wechat_openid": "wechat_openid",
    "openid": "wechat_openid",
    "wechat_unionid": "wechat_unionid",
    "unionid": "wechat_unionid",
    "crm_id": "crm_id",
}


class IdentityError(ValueError):
    """A trait that should identify someone cannot be read; ``field`` names it,
    ``message`` says why with the value, ``reason`` says why without it."""

    def __init__(self, field: str, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.reason = reason  # what is wrong, without echoing the input


def normalise_email(raw: str, field: str = "email") -> str:
    """The canonical form of an email address: THE function every entry point calls
    (ingestion, CSV import, referral forms, unsubscribe and preference pages, bounce
    webhooks, suppression checks); see ``stagecoach.engine.domain.addresses`` for the rules.

    Raises:
        IdentityError: ``field`` names the input; the message says what is wrong, e.g. an
            invisible character, and how to fix it.
    """
    try:
        return canonical_email(raw)
    except AddressError as exc:
        raise IdentityError(field, exc.message, reason=exc.reason) from None


def normalise_phone(raw: str, country: str | None = None) -> str:
    """E.164, e.g. ``+8613800138000``."""
    try:
        number = phonenumbers.parse(raw, None if raw.strip().startswith("+") else country)
    except phonenumbers.NumberParseException as exc:
        raise IdentityError(
            "phone",
            f"{raw!r} is not a phone number ({exc}): send E.164 (+8613800138000) or "
            "set traits.country",
        ) from exc
    if not phonenumbers.is_possible_number(number):
        raise IdentityError("phone", f"{raw!r} is not a possible phone number: check digits")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def identities_from(
    traits: Mapping[str, Any], *, user_id: str | None = None, anonymous_id: str | None = None
) -> dict[str, str]:
    """``{kind: normalised value}`` for every identity in the message."""
    found: dict[str, str] = {}
    if user_id:
        found["user_id"] = user_id
    if anonymous_id:
        found["anonymous_id"] = anonymous_id
    country = traits.get("country") if isinstance(traits.get("country"), str) else None
    for key, kind in _TRAIT_KEYS.items():
        value = traits.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str | int):
            raise IdentityError(key, f"{key} must be a string")
        text = str(value)
        if kind == "email":
            text = normalise_email(text)
        elif kind == "phone":
            text = normalise_phone(text, country)
        found[kind] = text
    return found
