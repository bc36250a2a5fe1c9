"""Finding a contact by what the integrator knows: one function for the admin API, the
``stagecoach contact`` commands and the dashboard.

People who send events know their own ids (``userId``, ``anonymousId``), the email
address, the phone number and the WeChat openid or unionid, not our ``c_...`` id. A
search names its kind (``by``), or leaves it to the shape of the value (``auto``):

==============  =====================================================================
by              what is searched
==============  =====================================================================
id              the contact id (``c_...``, ``demo-...``), or an id merged into one
user_id         the Segment ``userId``
anonymous_id    the Segment ``anonymousId`` (also a device id a referral form sent)
email           the address, normalised as ingestion does (``normalise_email``)
phone           the number as E.164 (``phonenumbers``): ``+86 138-0013-8000``,
                ``008613800138000`` or, without a country code, ``13800138000`` read in
                the default region (the deployment's ``referral_phone_country``)
openid          the WeChat openid; ``unionid`` the WeChat unionid
crm_id          the id the CRM gave
auto            by shape: a value with ``@`` is an email address only; a value that
                starts with ``+``, or is digits with spaces, dashes, dots or brackets,
                is a phone number and also an id of every kind below as typed (a
                ``userId`` may be digits); anything else is tried as a contact id,
                ``user_id``, ``anonymous_id``, openid, unionid and ``crm_id``
==============  =====================================================================

Every match leads to its survivor: an id (or an identity) of a merged contact finds the
contact it was merged into. Matches of one value under several kinds that lead to one
person are one match. Several people (an ``auto`` search only: an identity belongs to one
contact) raise :class:`AmbiguousContact`, which lists them so the caller can choose.

No match raises :class:`ContactNotMatched` naming what was searched (and saying when the
person was erased, if they were); a value that cannot be the kind asked for raises
:class:`MalformedLookup` naming the field.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from sqlmodel import Session, col, select

from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.services.storage.models import Contact, Identity, Merge

LookupKind = Literal[
    "auto", "id", "user_id", "anonymous_id", "email", "phone", "openid", "unionid", "crm_id"
]
LOOKUP_KINDS: tuple[str, ...] = get_args(LookupKind)

ERASED_PREFIX = "erased-"
MAX_MERGE_HOPS = 16
_MAX_VALUE = 320
"""The longest identity the database holds (an email address)."""

_IDENTITY_KIND = {
    "user_id": "user_id",
    "anonymous_id": "anonymous_id",
    "email": "email",
    "phone": "phone",
    "openid": "wechat_openid",
    "unionid": "wechat_unionid",
    "crm_id": "crm_id",
}
"""``by`` -> the ``identities.kind`` it searches (``id`` searches contacts)."""
_LABEL = {v: k for k, v in _IDENTITY_KIND.items()} | {"id": "id"}
_AS_TYPED = ("id", "user_id", "anonymous_id", "wechat_openid", "wechat_unionid", "crm_id")
_PHONE_SHAPE = re.compile(r"^\+?[\d\s\-.()]+$")
_HINT = (
    "search by a contact id (c_...), userId, anonymousId, email, phone, WeChat openid or "
    "unionid, or CRM id; name the kind with by (?by=email, --by email)"
)


def pseudonym(contact_id: str) -> str:
    """The id an erased contact's anonymous rows live on under: ``erased-<sha256[:16]>``.

    Deterministic, so a repeated DELETE (or GET) can say the id was erased, and a
    second pass finds the row the first one wrote."""
    return ERASED_PREFIX + hashlib.sha256(contact_id.encode()).hexdigest()[:16]


class ContactNotMatched(StagecoachError):
    """No contact has the value searched for."""


class MalformedLookup(StagecoachError):
    """The value cannot be the kind searched for; ``field`` names the kind."""

    def __init__(self, field: str, message: str, *, fix: str) -> None:
        super().__init__(message, fix=fix)
        self.field = field


@dataclass(frozen=True)
class Person:
    """The contact an id leads to: the survivor of its merges, and every id merged in."""

    requested: str
    survivor: Contact
    ids: tuple[str, ...]
    """The survivor's id first, then every id merged into it (directly or not)."""
    matched: tuple[str, ...] = ()
    """How the search found it: ``"email li.lei@example.cn"``, ``"id c_..."``."""

    @property
    def merged_into(self) -> str | None:
        """The survivor's id when the id asked for was merged into it."""
        return self.survivor.id if self.requested != self.survivor.id else None


class AmbiguousContact(StagecoachError):
    """The value leads to several people; ``people`` lists them."""

    def __init__(self, message: str, *, fix: str, people: Sequence[Person]) -> None:
        super().__init__(message, fix=fix)
        self.people = tuple(people)


def _probes(value: str, by: str, region: str | None) -> tuple[list[tuple[str, str]], str]:
    """The (kind, value) pairs to look up, and how to name the search in an error."""
    from stagecoach.engine.services.ingest import (
        IdentityError,
        normalise_email,
        normalise_phone,
    )

    if by not in LOOKUP_KINDS:
        raise MalformedLookup(
            "by", f"by={by!r} is not a kind of id", fix=f"use one of {', '.join(LOOKUP_KINDS)}"
        )
    if not value:
        raise MalformedLookup("id", "the value to search for is empty", fix=_HINT)
    if len(value) > _MAX_VALUE:
        raise MalformedLookup(
            by if by != "auto" else "id",
            f"the value is {len(value)} characters; no id is longer than {_MAX_VALUE}",
            fix=_HINT,
        )
    if by == "email" or (by == "auto" and "@" in value):
        try:
            email = normalise_email(value)
        except IdentityError as exc:
            raise MalformedLookup("email", exc.message, fix="send name@domain") from exc
        shown = f"email {email}" + ("" if email == value else f" (from {value!r})")
        return [("email", email)], shown
    if by == "phone" or (by == "auto" and _phone_shaped(value)):
        try:
            phone: str | None = normalise_phone(value, region)
        except IdentityError as exc:
            if by == "phone" or value.lstrip().startswith("+"):
                national = f"a national number of {region}" if region else "a country code"
                raise MalformedLookup(
                    "phone",
                    f"{value!r} is not a phone number",
                    fix=f"send E.164 (+8613800138000), or {national}",
                ) from exc
            phone = None  # digits that are no phone number may still be a userId
        pairs = [("phone", phone)] if phone else []
        if by == "phone":
            assert phone is not None
            return pairs, f"phone {phone}" + ("" if phone == value else f" (from {value!r})")
        pairs += [(kind, value) for kind in _AS_TYPED]
        shown = f"phone {phone} or " if phone else ""
        return pairs, f"{shown}id, user_id, anonymous_id, openid, unionid or crm_id {value!r}"
    if by == "auto":
        pairs = [(kind, value) for kind in _AS_TYPED]
        return pairs, f"id, user_id, anonymous_id, openid, unionid or crm_id {value!r}"
    kind = _IDENTITY_KIND.get(by, "id")
    return [(kind, value)], f"{by} {value!r}"


def _phone_shaped(value: str) -> bool:
    """``+`` and phone characters, or five digits or more with phone punctuation."""
    if not _PHONE_SHAPE.match(value):
        return False
    return value.startswith("+") or sum(c.isdigit() for c in value) >= 5


def _survivor_of(session: Session, contact_id: str) -> str:
    current, hops = contact_id, 0
    while hops < MAX_MERGE_HOPS:
        merge = session.get(Merge, current)
        if merge is None:
            break
        current, hops = merge.into_id, hops + 1
    return current


def _person(session: Session, requested: str, survivor: Contact, matched: list[str]) -> Person:
    ids = [survivor.id]
    frontier = [survivor.id]
    while frontier:
        merged = session.exec(select(Merge.merged_id).where(col(Merge.into_id).in_(frontier))).all()
        frontier = [m for m in merged if m not in ids]
        ids += frontier
    return Person(requested=requested, survivor=survivor, ids=tuple(ids), matched=tuple(matched))


def find_contacts(
    session: Session, value: str, by: str = "auto", *, region: str | None = None
) -> list[Person]:
    """Every person ``value`` leads to, searched as ``by`` (the module docstring), the
    survivor of each; merged ids' matches count for their survivor.

    ``region`` (ISO 3166, e.g. ``CN``) reads a phone number written without a country
    code. The list is empty when nothing matches.

    Raises:
        MalformedLookup: ``value`` cannot be the kind asked for (``field`` names it).
    """
    value = value.strip()
    pairs, _ = _probes(value, by, region)
    found: dict[str, list[str]] = {}
    requested: dict[str, str] = {}
    for kind, probe in pairs:
        if kind == "id":
            if probe.startswith(ERASED_PREFIX):
                continue
            owner: str | None = probe
        else:
            row = session.get(Identity, (kind, probe))
            owner = row.contact_id if row is not None else None
        if owner is None:
            continue
        survivor = _survivor_of(session, owner)
        if session.get(Contact, survivor) is None:
            continue
        found.setdefault(survivor, []).append(f"{_LABEL[kind]} {probe}")
        requested.setdefault(survivor, owner if kind == "id" else survivor)
    people: list[Person] = []
    for survivor_id, matched in found.items():
        contact = session.get(Contact, survivor_id)
        assert contact is not None
        people.append(_person(session, requested[survivor_id], contact, matched))
    return people


def find_person(
    session: Session, value: str, by: str = "auto", *, region: str | None = None
) -> Person:
    """The one person ``value`` leads to (see :func:`find_contacts`).

    Raises:
        MalformedLookup: ``value`` cannot be the kind asked for (``field`` names it).
        ContactNotMatched: nothing matches; the message names what was searched, and
            says when the contact was erased if the value is an erased contact id.
        AmbiguousContact: an ``auto`` search led to several people.
    """
    value = value.strip()
    if by in ("auto", "id") and value.startswith(ERASED_PREFIX):
        raise ContactNotMatched(
            f"{value!r} is the anonymous record of an erased contact, not a contact: "
            "nothing personal is stored under it",
            fix="nothing to look up",
        )
    people = find_contacts(session, value, by, region=region)
    if len(people) == 1:
        return people[0]
    _, shown = _probes(value, by, region)
    if people:
        listed = "; ".join(f"{p.survivor.id} ({', '.join(p.matched)})" for p in people)
        raise AmbiguousContact(
            f"{value!r} matches {len(people)} contacts: {listed}",
            fix="name the kind of id: by=" + "|".join(k for k in LOOKUP_KINDS if k != "auto"),
            people=people,
        )
    if by in ("auto", "id"):
        tombstone = session.get(Contact, pseudonym(value))
        if tombstone is not None:
            when = tombstone.traits.get("erased_at", "an unrecorded time")
            raise ContactNotMatched(
                f"contact {value!r} was erased at {when} (right to erasure): nothing "
                "personal is left, only anonymous counts",
                fix="nothing to look up: the person asked to be forgotten",
            )
    raise ContactNotMatched(f"no contact with {shown}", fix=_HINT)
