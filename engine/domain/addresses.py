"""Email addresses: one canonical form for identity, consent, suppression, referrals and
sending (pure).

The syntax, Unicode and IDNA work is done by the maintained ``email-validator`` library
(the rules are subtle and change with Unicode and IDNA revisions; a hand-written regex got
them wrong: it let ``someone@exa\\u200bmple.com`` through as a new address, which the SMTP
connector's IDNA encoding then delivered to ``someone@example.com``). On top of what it
returns, two project rules:

- the local part is NFKC-normalised and lower-cased, so full-width or compatibility
  characters (``ｓｏｍｅｏｎｅ``) and case (``SomeOne``) do not make a second contact;
  no mainstream provider treats them as different mailboxes;
- one trailing dot on the domain (``example.com.``, the DNS root) is dropped.

The canonical form keeps the domain in Unicode (lower case, UTS-46 mapped: full-width
letters and dots folded); :func:`sending_address` is the same address with the domain
IDNA-encoded, which is what goes into ``RCPT TO``. Both come from one parse, so the
address checked is the address mailed. Invisible and other unsafe characters (zero-width
spaces, bidi controls, control characters) are refused, never silently removed: the sender
of such an address gets an error naming the field.

Self-referral compares :func:`comparison_key`: the canonical form with the provider's
documented sub-address and dot rules (see ``PROVIDER_RULES``). The key is for comparing
only; nothing is ever sent to it or stored as an identity.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

MAX_LENGTH: Final = 320
"""The longest address kept (RFC 3696 errata: 64 + 1 + 255)."""


class AddressError(ValueError):
    """Not an email address we can store or send to; ``message`` says why and how to fix it."""

    def __init__(self, raw: str, reason: str) -> None:
        self.raw = raw
        self.reason = reason
        shown = raw if len(raw) <= 80 else raw[:60] + "..."
        self.message = f"{shown!r} is not an email address ({reason}): send name@domain"
        super().__init__(self.message)


@dataclass(frozen=True)
class EmailAddress:
    """One parsed address.

    Attributes:
        canonical: ``local@domain``; local part NFKC and lower case, domain lower-case
            Unicode. The form stored and compared everywhere.
        local: The canonical local part.
        domain: The canonical domain (Unicode).
        ascii_domain: The domain IDNA-encoded (equal to ``domain`` when it is ASCII).
    """

    canonical: str
    local: str
    domain: str
    ascii_domain: str

    @property
    def sending(self) -> str:
        """The envelope form: the local part as stored, the domain IDNA-encoded."""
        return f"{self.local}@{self.ascii_domain}"

    @property
    def needs_smtputf8(self) -> bool:
        return not self.local.isascii()


@lru_cache(maxsize=4096)  # ingestion sees the same addresses again and again
def parse_email(raw: str) -> EmailAddress:
    """The canonical address for ``raw``.

    Raises:
        AddressError: Not a string address, too long, invalid syntax, or with invisible or
            unsafe characters.
    """
    if not isinstance(raw, str):
        raise AddressError(repr(raw), "not a string")
    text = raw.strip()
    if not text:
        raise AddressError(raw, "empty")
    if len(text) > MAX_LENGTH:
        raise AddressError(raw, f"longer than {MAX_LENGTH} characters")
    local, at, domain = text.rpartition("@")
    if not at:
        raise AddressError(raw, "no @-sign")
    if domain.endswith(".") and not domain.endswith(".."):
        domain = domain[:-1]
    # NFKC before validation: full-width and other compatibility forms of ASCII
    # characters become the ASCII characters the mailbox owner meant; anything invisible
    # or unsafe that survives is refused by the library below.
    local = unicodedata.normalize("NFKC", local).lower()
    if (plain := _plain_address(local, domain)) is not None:
        return plain
    return _validated(raw, local, domain)


def _validated(raw: str, local: str, domain: str) -> EmailAddress:
    """``local@domain`` as ``email_validator`` reads it (``raw`` names it in the error)."""
    try:
        checked = validate_email(
            f"{local}@{domain}",
            check_deliverability=False,
            allow_smtputf8=True,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
        )
    except EmailNotValidError as exc:
        raise AddressError(raw, str(exc).rstrip(".")) from None
    canonical_local = checked.local_part.lower()
    canonical_domain = checked.domain.lower()
    ascii_domain = checked.ascii_domain.lower()
    canonical = f"{canonical_local}@{canonical_domain}"
    if len(canonical) > MAX_LENGTH:
        raise AddressError(raw, f"longer than {MAX_LENGTH} characters")
    return EmailAddress(canonical, canonical_local, canonical_domain, ascii_domain)


_PLAIN_LOCAL = re.compile(r"[a-z0-9_+-]+(?:\.[a-z0-9_+-]+)*")
_PLAIN_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
_RESERVED_TLDS = frozenset(SPECIAL_USE_DOMAIN_NAMES)


def _plain_address(local: str, domain: str) -> EmailAddress | None:
    """The common case without the validator: an ASCII dot-atom of letters, digits and
    ``_+-`` at an ASCII host name with a letters-only top-level domain. Anything else
    (other atext, IDNA labels, reserved names, lengths near the limits) returns ``None``
    and goes to ``email_validator``. A broadcast parses every recipient's address once
    per send, and the validator was a twentieth of a send's CPU; a property test holds
    this path to the validator's answers."""
    domain = domain.lower()
    if (
        len(local) > 64
        or len(domain) > 253
        or "--" in domain
        or _PLAIN_LOCAL.fullmatch(local) is None
        or _PLAIN_DOMAIN.fullmatch(domain) is None
        or domain.rpartition(".")[2] in _RESERVED_TLDS
    ):
        return None
    canonical = f"{local}@{domain}"
    if len(canonical) > MAX_LENGTH:
        return None
    return EmailAddress(canonical, local, domain, domain)


def canonical_email(raw: str) -> str:
    """``parse_email(raw).canonical``."""
    return parse_email(raw).canonical


def sending_address(raw: str) -> str:
    """The envelope recipient for ``raw``: its canonical form, domain IDNA-encoded."""
    return parse_email(raw).sending


@dataclass(frozen=True)
class ProviderRule:
    """How a mailbox provider reads a local part.

    Attributes:
        separators: Characters that start a sub-address (a tag the provider ignores when
            choosing the mailbox).
        ignore_dots: Dots in the local part are ignored.
        source: Where the provider documents it.
    """

    separators: str = "+"
    ignore_dots: bool = False
    source: str = ""


_GMAIL = ProviderRule(
    "+", True, "Google, 'Dots don't matter in Gmail addresses' and 'Create task-specific addresses'"
)
_OUTLOOK = ProviderRule("+", False, "Microsoft, 'Plus addressing in Outlook.com'")
_ICLOUD = ProviderRule("+", False, "Apple, iCloud Mail user guide: plus addressing")
_FASTMAIL = ProviderRule("+", False, "Fastmail help, 'Plus addressing and subdomain addressing'")
_PROTON = ProviderRule("+", False, "Proton support, '+aliases'")

PROVIDER_RULES: Final[dict[str, ProviderRule]] = {
    "gmail.com": _GMAIL,
    "googlemail.com": _GMAIL,
    "outlook.com": _OUTLOOK,
    "hotmail.com": _OUTLOOK,
    "live.com": _OUTLOOK,
    "msn.com": _OUTLOOK,
    "icloud.com": _ICLOUD,
    "me.com": _ICLOUD,
    "mac.com": _ICLOUD,
    "fastmail.com": _FASTMAIL,
    "fastmail.fm": _FASTMAIL,
    "proton.me": _PROTON,
    "protonmail.com": _PROTON,
    "pm.me": _PROTON,
}
"""Providers whose sub-address (and, for Gmail, dot) rules are documented. Other domains
are compared by their canonical form only: a ``+`` means nothing in general (RFC 5321
leaves the local part to the receiving server), so a tag is not stripped for them.
Yahoo is left out on purpose: its ``basename-keyword`` disposable addresses use a base
name the owner picks, not their mailbox name, so dropping ``-keyword`` would name
somebody else's mailbox and refuse a real friend."""

_MAILBOX_ALIASES: Final = {"googlemail.com": "gmail.com"}
"""Domains that name the same mailboxes (Google: googlemail.com is gmail.com)."""


def comparison_key(raw: str) -> str:
    """The mailbox an address reaches, as far as its provider documents it: the canonical
    form, then the provider's sub-address tag removed and (Gmail) dots dropped.

    ``Some.One+promo@GoogleMail.com`` and ``someone@gmail.com`` have the same key.

    Raises:
        AddressError: As :func:`parse_email`.
    """
    address = parse_email(raw)
    rule = PROVIDER_RULES.get(address.domain)
    local = address.local
    domain = _MAILBOX_ALIASES.get(address.domain, address.domain)
    if rule is not None:
        for separator in rule.separators:
            head, sep, _ = local.partition(separator)
            if sep and head:
                local = head
        if rule.ignore_dots:
            local = local.replace(".", "") or local
    return f"{local}@{domain}"
