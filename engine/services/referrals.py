"""Referral fission: share codes, attributed sign-ups, and rewards on conversion.

A promoter gets one live code (:func:`issue_code`) and share links for WeChat and email
(:func:`share_links`). Whoever signs up through a link is screened
(:func:`screen_signup`: the code is known, live and not used up; the new contact is not
the referrer under another name; no loop) and attributed to the referrer
(:func:`attribute`): a ``Referral`` row, one per referee, first referrer wins. A referee
can later get a code of their own, so referrals form a tree of any depth
(:func:`referral_tree`, :func:`ancestors`).

Signing up earns nothing. When a referee becomes a customer for the first time
(:func:`record_conversion`, called from the contact workflow's activity), the referrer
earns a coupon, held through the return window and then released
(:func:`release_due_rewards`), or cancelled by a return within it (:func:`cancel_reward`);
a released coupon is redeemed once (:func:`redeem_coupon`). Conversions, releases and
cancellations are recorded as events on the referrer through the Ingestor, with message
ids derived from the row they describe, so every function here can be retried.

Rendering: :func:`referral_variables` (``referral_code``, ``referral_url``) for the
``referral-offer`` item, :func:`coupon_variables` (``coupon_code``) for the reward's coupon.

Pure parts, no I/O: :class:`ReferralPolicy`, :func:`new_code`, :func:`normalise_code`,
:func:`share_url`, :func:`code_refusal`, :func:`decide_reward` and the event builders.

Contacts merged by ingestion keep their referral rows under the old id; every read here
follows merges (``survivors`` forwards, the ``merges`` table backwards), so a merged
referrer keeps their codes, referrals and rewards.

Errors::

    StagecoachError
     └── ReferralError
          ├── UnknownReferrer      issue_code for an id no contact has
          ├── ReferralRefused      a sign-up the guards refuse; .reason says which
          └── RedemptionRefused    a coupon that cannot be redeemed; .reason says why
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

import structlog
from sqlalchemy import Connection, Engine, String, cast, func, literal, tuple_, update
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from stagecoach.engine.domain.addresses import AddressError, canonical_email, comparison_key
from stagecoach.engine.domain.errors import DatabaseError, StagecoachError
from stagecoach.engine.protocol.messages import RewardDecision
from stagecoach.engine.services.ingest import Incoming, Ingestor
from stagecoach.engine.services.ingest._store import survivors
from stagecoach.engine.services.storage.db import driver_reason
from stagecoach.engine.services.storage.models import (
    Contact,
    Event,
    Identity,
    Merge,
    Referral,
    ReferralCode,
    Reward,
    StageTransition,
)

if TYPE_CHECKING:
    from stagecoach.engine.domain.content import ContentLibrary

_log = structlog.get_logger("stagecoach.referrals")

# --- policy (pure) ------------------------------------------------------------------------

CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
"""Crockford's base32: no I, L, O or U, so a code read aloud or copied by hand survives."""
CODE_LENGTH = 10
"""50 random bits: guessing one of a million live codes takes ~10^9 tries on average."""
SHARE_CHANNELS = ("wechat", "email")
SOURCE = "referral"


@dataclass(frozen=True)
class ReferralPolicy:
    """The programme's rules. Build it once at the composition root
    (:meth:`from_settings`) and pass it down; the defaults are the documented ones.

    Attributes:
        code_ttl: How long a share code works after it is issued.
        max_uses: Sign-ups one code may bring; the next is refused (409).
        reward_cap: Rewards one referrer may earn per ``reward_period``; conversions past
            it still count (``referral.converted``) but earn nothing.
        reward_period: The cap's sliding window.
        return_window: How long a reward is held before release; a return within it
            cancels the reward.
        reward_content_id: The coupon content item a reward is.
        customer_stages: Stages that mean "has bought": a referee in one of them before
            being referred is not a first-time customer.
        coupon_prefix: Printed before a reward's coupon code.
    """

    code_ttl: timedelta = timedelta(days=180)
    max_uses: int = 50
    reward_cap: int = 10
    reward_period: timedelta = timedelta(days=30)
    return_window: timedelta = timedelta(days=14)
    reward_content_id: str = "coupon-annual-plan"
    customer_stages: tuple[str, ...] = ("customer", "fan", "advocate")
    coupon_prefix: str = "REF"

    def __post_init__(self) -> None:
        if self.code_ttl <= timedelta(0) or self.return_window < timedelta(0):
            raise ValueError("ReferralPolicy: code_ttl must be positive, return_window >= 0")
        if self.max_uses < 1 or self.reward_cap < 0 or self.reward_period <= timedelta(0):
            raise ValueError(
                "ReferralPolicy: max_uses must be >= 1, reward_cap >= 0, reward_period > 0"
            )

    @classmethod
    def from_settings(cls, settings: object) -> ReferralPolicy:
        """The policy from ``STAGECOACH_REFERRAL_*`` settings, defaults where unset."""
        d = cls()

        def days(name: str, default: timedelta) -> timedelta:
            value = getattr(settings, name, None)
            return default if value is None else timedelta(days=float(value))

        def number(name: str, default: int) -> int:
            value = getattr(settings, name, None)
            return default if value is None else int(value)

        content = getattr(settings, "referral_reward_content", None)
        return cls(
            code_ttl=days("referral_code_ttl_days", d.code_ttl),
            max_uses=number("referral_max_uses", d.max_uses),
            reward_cap=number("referral_reward_cap", d.reward_cap),
            reward_period=days("referral_reward_period_days", d.reward_period),
            return_window=days("referral_return_window_days", d.return_window),
            reward_content_id=str(content) if content else d.reward_content_id,
        )


DEFAULT_POLICY = ReferralPolicy()


def new_code(length: int = CODE_LENGTH) -> str:
    """A fresh random code from :data:`CODE_ALPHABET` (``secrets``, not ``random``)."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(length))


_READ_AS = str.maketrans({"O": "0", "I": "1", "L": "1"})


def normalise_code(raw: str) -> str | None:
    """A code as typed or pasted, in canonical form; None if it cannot be one.

    Case, spaces and hyphens do not matter, and the letters Crockford's alphabet leaves
    out read as the digits they look like (O as 0, I and L as 1)."""
    text = raw.strip().upper().replace("-", "").replace(" ", "").translate(_READ_AS)
    if len(text) != CODE_LENGTH or any(c not in CODE_ALPHABET for c in text):
        return None
    return text


def share_url(base_url: str, code: str, channel: str) -> str:
    """The landing page link for ``code``, tagged with the channel it is shared on."""
    if channel not in SHARE_CHANNELS:
        raise ValueError(f"channel {channel!r}: share on one of {', '.join(SHARE_CHANNELS)}")
    return f"{base_url.rstrip('/')}/r/{code}?ch={channel}"


def share_links(base_url: str, code: str) -> dict[str, str]:
    """``{"wechat": ".../r/CODE?ch=wechat", "email": ".../r/CODE?ch=email"}``."""
    return {channel: share_url(base_url, code, channel) for channel in SHARE_CHANNELS}


RefusalReason = Literal[
    "unknown_code", "expired_code", "used_up", "self_referral", "already_referred", "referral_loop"
]

_REFUSALS: Mapping[str, tuple[str, str]] = {
    "unknown_code": (
        "no referral code {code!r} exists",
        "check the link or code with whoever shared it",
    ),
    "expired_code": (
        "referral code {code!r} has expired",
        "ask whoever shared it for a fresh link",
    ),
    "used_up": (
        "referral code {code!r} has been used as often as it may be",
        "ask whoever shared it for a fresh link",
    ),
    "self_referral": (
        "a referral code cannot be used by the person it belongs to",
        "share the link with someone else",
    ),
    "already_referred": (
        "this contact has already signed up through another referral",
        "nothing more is needed: you are signed up",
    ),
    "referral_loop": (
        "this contact is already part of the referrer's own referral chain",
        "nothing more is needed: you are signed up",
    ),
}


class ReferralError(StagecoachError):
    """A referral operation that cannot be done; the message says why, ``fix`` what to do."""


class UnknownReferrer(ReferralError):
    """``issue_code`` was given an id no contact has (never stored, or erased)."""


class ReferralRefused(ReferralError):
    """A sign-up refused by a guard; ``reason`` is one of :data:`RefusalReason`."""

    def __init__(self, reason: RefusalReason, *, code: str = "") -> None:
        message, fix = _REFUSALS[reason]
        super().__init__(message.format(code=code), fix=fix)
        self.reason: RefusalReason = reason
        self.code = code


RedemptionReason = Literal["unknown_coupon", "held", "cancelled"]


class RedemptionRefused(ReferralError):
    """A coupon that cannot be redeemed; ``reason`` is one of :data:`RedemptionReason`."""

    def __init__(self, reason: RedemptionReason, message: str, *, fix: str) -> None:
        super().__init__(message, fix=fix)
        self.reason: RedemptionReason = reason


def code_refusal(
    *, expires_at: datetime, uses: int, max_uses: int, now: datetime
) -> RefusalReason | None:
    """Why a stored code cannot take another sign-up at ``now``, or None if it can."""
    if _aware(expires_at) <= now:
        return "expired_code"
    if uses >= max_uses:
        return "used_up"
    return None


RewardReason = Literal[
    "not_referred", "rewarded", "not_first_purchase", "cap_reached", "reward_unavailable"
]


def decide_reward(
    *,
    customer_before_referral: bool,
    rewards_in_period: int,
    reward_available: bool,
    policy: ReferralPolicy = DEFAULT_POLICY,
) -> RewardReason:
    """What a referee's first conversion earns the referrer (the rules, without I/O).

    Only a first-time customer counts; past the referrer's cap, or with the coupon
    content withdrawn, the conversion counts but earns nothing."""
    if customer_before_referral:
        return "not_first_purchase"
    if rewards_in_period >= policy.reward_cap:
        return "cap_reached"
    if not reward_available:
        return "reward_unavailable"
    return "rewarded"


# --- Temporal boundary types --------------------------------------------------------------


# --- events (pure builders) ---------------------------------------------------------------


def signed_up_event(referral: Referral, *, referrer_id: str) -> Incoming:
    """``referral.signed_up`` on the referrer, one per referral."""
    return Incoming(
        kind="track",
        message_id=f"referral:{referral.id}:signed_up",
        type="referral.signed_up",
        occurred_at=_aware(referral.created_at),
        properties={
            "referred_contact_id": referral.referee_id,
            "referral_code": referral.code,
            **({"channel": referral.channel} if referral.channel else {}),
        },
        source=SOURCE,
        channel=referral.channel,
        contact_id=referrer_id,
    )


def converted_event(referral: Referral, *, referrer_id: str, decision: RewardDecision) -> Incoming:
    """``referral.converted`` on the referrer: the pipeline counts these for advocacy."""
    return Incoming(
        kind="track",
        message_id=f"referral:{referral.id}:converted",
        type="referral.converted",
        occurred_at=_aware(referral.converted_at or referral.created_at),
        properties={
            "referred_contact_id": referral.referee_id,
            "referral_code": referral.code,
            "rewarded": decision.rewarded,
            "reason": decision.reason,
        },
        source=SOURCE,
        contact_id=referrer_id,
    )


def reward_event(reward: Reward, *, what: Literal["released", "cancelled"]) -> Incoming:
    """``referral.reward_released`` or ``referral.reward_cancelled`` on the referrer."""
    at = reward.released_at if what == "released" else reward.cancelled_at
    properties: dict[str, Any] = {
        "reward_id": reward.id,
        "referral_id": reward.referral_id,
        "content_id": reward.content_id,
        "coupon_code": reward.coupon_code,
    }
    if what == "cancelled" and reward.cancel_reason:
        properties["reason"] = reward.cancel_reason
    return Incoming(
        kind="track",
        message_id=f"reward:{reward.id}:{what}",
        type=f"referral.reward_{what}",
        occurred_at=_aware(at or reward.created_at),
        properties=properties,
        source=SOURCE,
        contact_id=reward.referrer_id,
    )


def redeemed_event(reward: Reward) -> Incoming:
    """``coupon.redeemed`` on the reward's referrer: a touchpoint like any other."""
    return Incoming(
        kind="track",
        message_id=f"coupon:{reward.coupon_code}:redeemed",
        type="coupon.redeemed",
        occurred_at=_aware(reward.redeemed_at or datetime.now(UTC)),
        properties={
            "code": reward.coupon_code,
            "reward_id": reward.id,
            "referral_id": reward.referral_id,
            "content_id": reward.content_id,
        },
        source=SOURCE,
        contact_id=reward.referrer_id,
    )


# --- plumbing -----------------------------------------------------------------------------

_P = ParamSpec("_P")
_T = TypeVar("_T")
_CHUNK = 500


def _aware(at: datetime) -> datetime:
    """UTC, aware: SQLite hands stored times back naive (they were stored as UTC)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _translated(fn: Callable[_P, _T]) -> Callable[_P, _T]:
    """Driver errors leave this module as ``DatabaseError`` (retry), never raw."""

    @functools.wraps(fn)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return fn(*args, **kwargs)
        except (OperationalError, SADatabaseError) as exc:
            raise DatabaseError(
                f"referral storage failed in {fn.__name__}: {driver_reason(exc)}",
                fix="retry; every referral operation is idempotent",
            ) from exc

    return run


def _apply(session: Session, statement: Any) -> int:
    """Run an UPDATE in ``session``; the rows it changed. Loaded objects are left as
    they are (the callers read what they need again)."""
    result = session.execute(statement, execution_options={"synchronize_session": False})
    return int(getattr(result, "rowcount", 0) or 0)


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    return (values[n : n + _CHUNK] for n in range(0, len(values), _CHUNK))


def _current(conn: Connection, contact_id: str) -> str | None:
    """The contact ``contact_id`` is now (following merges); None if none is stored."""
    return survivors(conn, [contact_id]).get(contact_id)


def _aliases(conn: Connection, contact_ids: Iterable[str]) -> dict[str, str]:
    """Every id that is, or was merged into, one of ``contact_ids`` -> that one."""
    owner = {cid: cid for cid in contact_ids}
    frontier = list(owner)
    while frontier:
        found: list[str] = []
        for chunk in _chunks(frontier):
            rows = conn.execute(
                select(col(Merge.merged_id), col(Merge.into_id)).where(
                    col(Merge.into_id).in_(chunk)
                )
            ).all()
            for merged, into in rows:
                if merged not in owner:
                    owner[merged] = owner[into]
                    found.append(merged)
        frontier = found
    return owner


def _store_events(db: Engine, ingestor: Ingestor | None, events: Sequence[Incoming]) -> None:
    if events:
        (ingestor or Ingestor(db)).store([events])


def _referral_of(session: Session, contact_id: str) -> Referral | None:
    """The referral that brought ``contact_id`` (under any id it had)."""
    conn = session.connection()
    ids = list(_aliases(conn, [_current(conn, contact_id) or contact_id]))
    return session.exec(
        select(Referral).where(col(Referral.referee_id).in_(ids)).order_by(col(Referral.id))
    ).first()


def _ancestors(conn: Connection, contact_id: str) -> list[str]:
    seen = {contact_id}
    out: list[str] = []
    current = contact_id
    while True:
        ids = list(_aliases(conn, [current]))
        row = conn.execute(
            select(col(Referral.referrer_id))
            .where(col(Referral.referee_id).in_(ids))
            .order_by(col(Referral.id))
            .limit(1)
        ).first()
        if row is None:
            return out
        parent = _current(conn, row[0]) or row[0]
        if parent in seen:  # cannot happen (screened); must not hang
            return out
        out.append(parent)
        seen.add(parent)
        current = parent


# --- codes --------------------------------------------------------------------------------


@_translated
def issue_code(
    db: Engine,
    contact_id: str,
    *,
    now: datetime,
    ttl: timedelta | None = None,
    policy: ReferralPolicy = DEFAULT_POLICY,
) -> ReferralCode:
    """The contact's live referral code, issued now if they have none.

    Idempotent: a contact keeps one live code (not expired, not used up) and gets it
    back on every call; a new one is issued only once the last has run out.

    Args:
        contact_id: The promoter (merged ids are followed to the contact they are now).
        now: Issue time (aware).
        ttl: How long a new code works; ``policy.code_ttl`` by default.

    Raises:
        UnknownReferrer: No contact has this id.
        DatabaseError: The database failed; retry.
    """
    now = _aware(now)
    ttl = policy.code_ttl if ttl is None else ttl
    for _ in range(5):
        with Session(db, expire_on_commit=False) as session:
            conn = session.connection()
            current = _current(conn, contact_id)
            if current is None:
                raise UnknownReferrer(
                    f"no contact {contact_id!r} to issue a referral code for",
                    fix="issue codes to stored contacts (the contact workflow's id)",
                )
            ids = list(_aliases(conn, [current]))
            codes = session.exec(
                select(ReferralCode)
                .where(col(ReferralCode.referrer_id).in_(ids))
                .order_by(col(ReferralCode.generation).desc())
            ).all()
            for code in codes:
                refusal = code_refusal(
                    expires_at=code.expires_at, uses=code.uses, max_uses=code.max_uses, now=now
                )
                if refusal is None:
                    code.expires_at, code.created_at = (
                        _aware(code.expires_at),
                        _aware(code.created_at),
                    )
                    return code
            generation = 1 + max(
                (c.generation for c in codes if c.referrer_id == current), default=0
            )
            code = ReferralCode(
                code=new_code(),
                referrer_id=current,
                generation=generation,
                max_uses=policy.max_uses,
                created_at=now,
                expires_at=now + ttl,
            )
            session.add(code)
            try:
                session.commit()
            except IntegrityError:
                # A concurrent call issued this generation (or, rarely, the code exists):
                # read again and return the winner's.
                session.rollback()
                continue
            _log.info("referral.code_issued", contact_id=current, generation=generation)
            return code
    raise DatabaseError(
        f"could not issue a referral code for {contact_id!r}: concurrent issuers kept winning",
        fix="retry",
    )


@_translated
def find_code(db: Engine, raw_code: str, *, now: datetime, check_uses: bool = True) -> ReferralCode:
    """The stored code ``raw_code`` names, if it can take a sign-up at ``now``.

    Raises:
        ReferralRefused: ``unknown_code`` (also when its referrer no longer exists),
            ``expired_code`` or (with ``check_uses``) ``used_up``.
    """
    code = normalise_code(raw_code)
    if code is None:
        raise ReferralRefused("unknown_code", code=raw_code[:32])
    with Session(db, expire_on_commit=False) as session:
        row = session.get(ReferralCode, code)
        if row is None or _current(session.connection(), row.referrer_id) is None:
            raise ReferralRefused("unknown_code", code=code)
    row.expires_at, row.created_at = _aware(row.expires_at), _aware(row.created_at)
    refusal = code_refusal(
        expires_at=row.expires_at,
        uses=row.uses if check_uses else 0,
        max_uses=row.max_uses,
        now=_aware(now),
    )
    if refusal is not None:
        raise ReferralRefused(refusal, code=code)
    return row


# --- sign-up ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """What a sign-up says about the new contact: normalised identities, and the
    unverified ones (device id, WeChat openid) that are only ever used to refuse."""

    email: str | None = None
    phone: str | None = None
    wechat_openid: str | None = None
    device_id: str | None = None

    def identities(self) -> list[tuple[str, str]]:
        pairs = [
            ("email", self.email),
            ("phone", self.phone),
            ("wechat_openid", self.wechat_openid),
        ]
        return [(kind, value) for kind, value in pairs if value]


@dataclass(frozen=True)
class Screened:
    """A sign-up the guards let through: the code, its referrer as they are now, and
    the earlier referral when this person already signed up with this very code."""

    code: str
    referrer_id: str
    earlier: Referral | None = None


def _mailbox_key(address: object) -> str | None:
    """:func:`stagecoach.engine.domain.addresses.comparison_key`, or None for what is not an
    address."""
    if not isinstance(address, str):
        return None
    try:
        return comparison_key(address)
    except AddressError:
        return None


def _referrer_mailboxes(conn: Connection, referrer_ids: Sequence[str]) -> set[str]:
    """The comparison keys of every email address the referrer is known by: their email
    identities and the ``email`` trait recorded on their contact row. The second matters
    for a contact with no identities, such as one a ``journeys rehearse`` created: its
    address lives only in its workflow's attributes, recorded when its code is issued
    (:func:`referral_variables`)."""
    identities = conn.execute(
        select(col(Identity.value)).where(
            col(Identity.contact_id).in_(referrer_ids), col(Identity.kind) == "email"
        )
    ).all()
    traits = conn.execute(select(col(Contact.traits)).where(col(Contact.id).in_(referrer_ids)))
    addresses = [r[0] for r in identities] + [
        t.get("email") for (t,) in traits.all() if isinstance(t, dict)
    ]
    return {key for key in map(_mailbox_key, addresses) if key is not None}


def _referrer_devices(conn: Connection, referrer_ids: Sequence[str]) -> set[str]:
    """Device ids the referrer is known by: the anonymous ids of their identities and
    the device they signed up on when they were referred themselves."""
    rows = conn.execute(
        select(col(Identity.value)).where(
            col(Identity.contact_id).in_(referrer_ids), col(Identity.kind) == "anonymous_id"
        )
    ).all()
    devices = {r[0] for r in rows}
    signed_up_on = conn.execute(
        select(col(Referral.device_id)).where(
            col(Referral.referee_id).in_(referrer_ids), col(Referral.device_id).is_not(None)
        )
    ).all()
    return devices | {r[0] for r in signed_up_on if r[0]}


@_translated
def screen_signup(db: Engine, raw_code: str, claimed: Claimed, *, now: datetime) -> Screened:
    """Check a sign-up before anything of it is recorded.

    Raises:
        ReferralRefused: ``unknown_code``, ``expired_code``, ``used_up`` (unless this
            person already signed up with this code: then ``Screened.earlier`` is set),
            ``self_referral`` (an email, phone, openid or device id of the referrer, or
            an email reaching the same mailbox as one of theirs),
            ``referral_loop`` (the person is the referrer's own referrer, or theirs...),
            ``already_referred`` (through another code).
    """
    row = find_code(db, raw_code, now=now, check_uses=False)
    with Session(db, expire_on_commit=False) as session:
        conn = session.connection()
        referrer = _current(conn, row.referrer_id)
        if referrer is None:
            raise ReferralRefused("unknown_code", code=row.code)
        referrer_ids = list(_aliases(conn, [referrer]))
        pairs = claimed.identities()
        owners: set[str] = set()
        if pairs:
            found = conn.execute(
                select(col(Identity.contact_id)).where(
                    tuple_(col(Identity.kind), col(Identity.value)).in_(pairs)
                )
            ).all()
            owners = set(survivors(conn, [r[0] for r in found]).values())
        same_device = bool(claimed.device_id) and claimed.device_id in _referrer_devices(
            conn, referrer_ids
        )
        # The same mailbox under another spelling: a +tag, Gmail's dots, a case or
        # Unicode variant (see stagecoach.engine.domain.addresses.comparison_key).
        claimed_mailbox = _mailbox_key(claimed.email)
        same_mailbox = claimed_mailbox is not None and claimed_mailbox in _referrer_mailboxes(
            conn, referrer_ids
        )
        if referrer in owners or same_device or same_mailbox:
            _log.info(
                "referral.refused",
                reason="self_referral",
                referrer_id=referrer,
                by=sorted(
                    ({"identity"} if referrer in owners else set())
                    | ({"mailbox"} if same_mailbox else set())
                    | ({"device"} if same_device else set())
                ),
            )
            raise ReferralRefused("self_referral", code=row.code)
        earlier: Referral | None = None
        if owners:
            referee_ids = list(_aliases(conn, owners))
            earlier = session.exec(
                select(Referral)
                .where(col(Referral.referee_id).in_(referee_ids))
                .order_by(col(Referral.id))
            ).first()
        if earlier is not None and not _same_referrer(conn, earlier, row.code, referrer):
            raise ReferralRefused("already_referred", code=row.code)
        if earlier is None:
            if owners & set(_ancestors(conn, referrer)):
                raise ReferralRefused("referral_loop", code=row.code)
            if row.uses >= row.max_uses:
                raise ReferralRefused("used_up", code=row.code)
        return Screened(row.code, referrer, earlier)


def _same_referrer(conn: Connection, earlier: Referral, code: str, referrer: str) -> bool:
    """An earlier referral through this code, or another code of the same referrer: the
    same sign-up again, not a second referral."""
    return earlier.code == code or (_current(conn, earlier.referrer_id) or "") == referrer


@dataclass(frozen=True)
class Attribution:
    """The referral a sign-up made (or had made before: ``duplicate``)."""

    referral: Referral
    referrer_id: str
    duplicate: bool


@_translated
def attribute(
    db: Engine,
    code: str,
    referee_id: str,
    *,
    now: datetime,
    channel: str | None = None,
    device_id: str | None = None,
) -> Attribution:
    """Attribute ``referee_id`` to the referrer of ``code``: a ``Referral`` row, and one
    use of the code, in one transaction. Repeating it returns the same referral.

    Raises:
        ReferralRefused: As :func:`screen_signup`, checked again here because another
            sign-up may have used the code up, or attributed this contact, meanwhile.
    """
    now = _aware(now)
    for _ in range(3):
        with Session(db, expire_on_commit=False) as session:
            conn = session.connection()
            row = session.get(ReferralCode, code)
            referrer = _current(conn, row.referrer_id) if row is not None else None
            if row is None or referrer is None:
                raise ReferralRefused("unknown_code", code=code)
            referee = _current(conn, referee_id) or referee_id
            if referee == referrer:
                raise ReferralRefused("self_referral", code=code)
            earlier = _referral_of(session, referee)
            if earlier is not None:
                if not _same_referrer(conn, earlier, code, referrer):
                    raise ReferralRefused("already_referred", code=code)
                return Attribution(earlier, referrer, duplicate=True)
            if referee in _ancestors(conn, referrer):
                raise ReferralRefused("referral_loop", code=code)
            taken = _apply(
                session,
                update(ReferralCode)
                .where(
                    col(ReferralCode.code) == code,
                    col(ReferralCode.uses) < col(ReferralCode.max_uses),
                    col(ReferralCode.expires_at) > now,
                )
                .values(uses=col(ReferralCode.uses) + 1),
            )
            if taken != 1:
                expired = _aware(row.expires_at) <= now
                session.rollback()
                raise ReferralRefused("expired_code" if expired else "used_up", code=code)
            referral = Referral(
                code=code,
                referrer_id=referrer,
                referee_id=referee,
                channel=channel,
                device_id=device_id,
                created_at=now,
            )
            session.add(referral)
            try:
                session.commit()
            except IntegrityError:  # attributed concurrently: read it again
                session.rollback()
                continue
            _log.info(
                "referral.signed_up",
                contact_id=referee,
                referrer_id=referrer,
                referral_id=referral.id,
                channel=channel,
            )
            return Attribution(referral, referrer, duplicate=False)
    raise DatabaseError(f"could not attribute {referee_id!r}: concurrent sign-ups", fix="retry")


# --- the tree -----------------------------------------------------------------------------


@_translated
def ancestors(db: Engine, contact_id: str) -> list[str]:
    """Who referred ``contact_id``, who referred them, and so on: nearest first."""
    with db.connect() as conn:
        return _ancestors(conn, _current(conn, contact_id) or contact_id)


@_translated
def referral_tree(db: Engine, root_id: str) -> dict[str, Any]:
    """Everyone ``root_id`` brought in, and everyone they brought in, to any depth::

        {"contact_id": "c_a", "children": [
            {"contact_id": "c_b", "referral_id": 1, "code": "...", "channel": "wechat",
             "status": "converted", "created_at": "2026-...", "children": [...]}]}

    Children are in sign-up order; merged contacts appear once, under the id they have now.
    """
    with Session(db) as session:
        conn = session.connection()
        root = _current(conn, root_id) or root_id
        nodes: dict[str, dict[str, Any]] = {root: {"contact_id": root, "children": []}}
        frontier = [root]
        while frontier:
            owner = _aliases(conn, frontier)
            rows: list[Referral] = []
            for chunk in _chunks(list(owner)):
                rows += session.exec(
                    select(Referral).where(col(Referral.referrer_id).in_(chunk))
                ).all()
            rows.sort(key=lambda r: (_aware(r.created_at), r.id or 0))
            now_ids = survivors(conn, [r.referee_id for r in rows])
            frontier = []
            for r in rows:
                child = now_ids.get(r.referee_id, r.referee_id)
                if child in nodes:
                    continue
                node: dict[str, Any] = {
                    "contact_id": child,
                    "referral_id": r.id,
                    "code": r.code,
                    "channel": r.channel,
                    "status": r.status,
                    "created_at": _aware(r.created_at).isoformat(),
                    "children": [],
                }
                nodes[owner[r.referrer_id]]["children"].append(node)
                nodes[child] = node
                frontier.append(child)
        return nodes[root]


# --- conversion and rewards ---------------------------------------------------------------


def _decision(
    session: Session, referral: Referral, referrer: str, *, duplicate: bool
) -> RewardDecision:
    reward = session.exec(select(Reward).where(col(Reward.referral_id) == referral.id)).first()
    return RewardDecision(
        referred=True,
        rewarded=reward is not None,
        reason=referral.outcome or "rewarded",
        duplicate=duplicate,
        referral_id=referral.id,
        referrer_id=referrer,
        reward_id=reward.id if reward else None,
        content_id=reward.content_id if reward else None,
        coupon_code=reward.coupon_code if reward else None,
        hold_until=_aware(reward.hold_until) if reward else None,
        reward_status=reward.status if reward else None,
    )


def _reward_available(library: ContentLibrary | None, content_id: str, at: datetime) -> bool:
    if library is None:
        return True
    try:
        item = library.item(content_id)
    except LookupError:
        return False
    return item.kind == "coupon" and item.is_live(at)


@_translated
def record_conversion(
    db: Engine,
    referee_id: str,
    *,
    at: datetime,
    library: ContentLibrary | None = None,
    policy: ReferralPolicy = DEFAULT_POLICY,
    ingestor: Ingestor | None = None,
) -> RewardDecision:
    """``referee_id`` became a customer at ``at``: reward their referrer if that earns one.

    Call it on every conversion (a contact nobody referred answers ``referred=False``
    after one query). Rewards go to first-time customers only, up to
    ``policy.reward_cap`` per referrer per ``policy.reward_period``, held until
    ``at + policy.return_window``. ``referral.converted`` is recorded on the referrer
    for every first-time conversion, rewarded or not (the pipeline counts them).

    Idempotent: the referral is decided once; a retry, or a later purchase, gets the
    first decision back with ``duplicate=True`` (and its event stored again if it was
    lost).

    Args:
        library: When given, the reward's content item must exist, be a coupon and be
            live at ``at``; otherwise the conversion earns ``reward_unavailable``.
        ingestor: Stores the events; one on ``db`` signalling everything by default.

    Raises:
        DatabaseError: Nothing of this call is lost; retry.
    """
    at = _aware(at)
    for _ in range(3):
        with Session(db, expire_on_commit=False) as session:
            conn = session.connection()
            referral = _referral_of(session, referee_id)
            if referral is None:
                return RewardDecision(referred=False)
            referrer = _current(conn, referral.referrer_id) or referral.referrer_id
            if referral.status != "signed_up":
                decision = _decision(session, referral, referrer, duplicate=True)
                if referral.status != "ineligible":
                    event = converted_event(referral, referrer_id=referrer, decision=decision)
                    _store_events(db, ingestor, [event])
                return decision
            referee_ids = list(_aliases(conn, [_current(conn, referee_id) or referee_id]))
            bought_before = session.exec(
                select(StageTransition.id)
                .where(
                    col(StageTransition.contact_id).in_(referee_ids),
                    col(StageTransition.to_stage).in_(policy.customer_stages),
                    col(StageTransition.at) < _aware(referral.created_at),
                )
                .limit(1)
            ).first()
            referrer_ids = list(_aliases(conn, [referrer]))
            earned = session.exec(
                select(func.count())
                .select_from(Reward)
                .where(
                    col(Reward.referrer_id).in_(referrer_ids),
                    col(Reward.status) != "cancelled",
                    col(Reward.created_at) > at - policy.reward_period,
                    col(Reward.created_at) <= at,
                )
            ).one()
            reason = decide_reward(
                customer_before_referral=bought_before is not None,
                rewards_in_period=int(earned),
                reward_available=_reward_available(library, policy.reward_content_id, at),
                policy=policy,
            )
            status = "ineligible" if reason == "not_first_purchase" else "converted"
            moved = _apply(
                session,
                update(Referral)
                .where(col(Referral.id) == referral.id, col(Referral.status) == "signed_up")
                .values(status=status, outcome=reason, converted_at=at),
            )
            if moved != 1:
                session.rollback()  # decided concurrently: read that decision
                continue
            if reason == "rewarded":
                session.add(
                    Reward(
                        referral_id=referral.id or 0,
                        referrer_id=referrer,
                        content_id=policy.reward_content_id,
                        coupon_code=f"{policy.coupon_prefix}-{new_code()}",
                        hold_until=at + policy.return_window,
                        created_at=at,
                    )
                )
            try:
                session.commit()
            except IntegrityError:  # a coupon code clash, or a concurrent decision
                session.rollback()
                continue
            session.refresh(referral)
            decision = _decision(session, referral, referrer, duplicate=False)
        _log.info(
            "referral.converted",
            contact_id=referral.referee_id,
            referrer_id=referrer,
            referral_id=referral.id,
            reason=reason,
        )
        if status == "converted":
            event = converted_event(referral, referrer_id=referrer, decision=decision)
            _store_events(db, ingestor, [event])
        return decision
    raise DatabaseError(f"could not decide the conversion of {referee_id!r}", fix="retry")


_RELEASE_CATCH_UP = timedelta(days=7)
"""How far back ``release_due_rewards`` re-stores release events a failed call lost."""


@_translated
def release_due_rewards(
    db: Engine, now: datetime, *, limit: int = 500, ingestor: Ingestor | None = None
) -> list[Reward]:
    """Release held rewards whose return window has passed; the rewards released.

    Each release records ``referral.reward_released`` on the referrer (properties
    ``reward_id``, ``referral_id``, ``content_id``, ``coupon_code``): what a journey
    waits on to send the coupon. A release whose event a failed call did not store is
    stored by the next call. Safe to run from several places at once: a reward is
    released by exactly one of them.
    """
    now = _aware(now)
    released: list[Reward] = []
    with Session(db, expire_on_commit=False) as session:
        due = session.exec(
            select(Reward)
            .where(col(Reward.status) == "held", col(Reward.hold_until) <= now)
            .order_by(col(Reward.hold_until), col(Reward.id))
            .limit(limit)
        ).all()
        for reward in due:
            done = _apply(
                session,
                update(Reward)
                .where(col(Reward.id) == reward.id, col(Reward.status) == "held")
                .values(status="released", released_at=now),
            )
            if done == 1:
                reward.status, reward.released_at = "released", now
                released.append(reward)
        session.commit()
        message_id = literal("reward:") + cast(Reward.id, String) + literal(":released")
        lost = session.exec(
            select(Reward).where(
                col(Reward.status) == "released",
                col(Reward.released_at) >= now - _RELEASE_CATCH_UP,
                col(Reward.id).not_in([r.id for r in released]),
                ~select(Event.id).where(col(Event.message_id) == message_id).exists(),
            )
        ).all()
    for reward in released:
        _log.info("referral.reward_released", contact_id=reward.referrer_id, reward_id=reward.id)
    events = [reward_event(r, what="released") for r in (*released, *lost)]
    _store_events(db, ingestor, events)
    return released


@_translated
def cancel_reward(
    db: Engine,
    referee_id: str,
    reason: str,
    *,
    at: datetime | None = None,
    ingestor: Ingestor | None = None,
) -> Reward | None:
    """The referee returned their purchase at ``at`` (now by default): cancel the reward
    it earned if still held and within its window, and mark the referral ``returned``.

    Returns the reward as it is now (``cancelled``; or ``released``/``held`` when the
    return came after the window, which changes nothing), or None when the referee's
    conversion earned no reward. Records ``referral.reward_cancelled`` on the referrer.
    """
    at = _aware(at or datetime.now(UTC))
    with Session(db, expire_on_commit=False) as session:
        referral = _referral_of(session, referee_id)
        if referral is None:
            return None
        reward = session.exec(select(Reward).where(col(Reward.referral_id) == referral.id)).first()
        if reward is None:
            return None
        if reward.status == "held" and at <= _aware(reward.hold_until):
            done = _apply(
                session,
                update(Reward)
                .where(col(Reward.id) == reward.id, col(Reward.status) == "held")
                .values(status="cancelled", cancelled_at=at, cancel_reason=reason[:256]),
            )
            if done == 1:
                _apply(
                    session,
                    update(Referral)
                    .where(col(Referral.id) == referral.id)
                    .values(status="returned"),
                )
            session.commit()
            session.refresh(reward)
            if done == 1:
                _log.info(
                    "referral.reward_cancelled",
                    contact_id=reward.referrer_id,
                    reward_id=reward.id,
                    reason=reason,
                )
    if reward.status == "cancelled":  # now or before: its event may have been lost
        _store_events(db, ingestor, [reward_event(reward, what="cancelled")])
    return reward


@dataclass(frozen=True)
class Redemption:
    """A redeemed coupon's reward; ``duplicate`` when it was redeemed before."""

    reward: Reward
    duplicate: bool
    referrer_id: str


@_translated
def redeem_coupon(db: Engine, coupon_code: str, *, at: datetime) -> Redemption:
    """Mark a released reward's coupon redeemed at ``at`` (once; a repeat is a duplicate).

    The caller records :func:`redeemed_event` for it (the API does, through its Ingestor).

    Raises:
        RedemptionRefused: ``unknown_coupon``; ``held`` (still in its return window);
            ``cancelled`` (the referee's purchase was returned).
    """
    at = _aware(at)
    code = coupon_code.strip().upper()
    with Session(db, expire_on_commit=False) as session:
        reward = session.exec(select(Reward).where(col(Reward.coupon_code) == code)).first()
        if reward is None:
            raise RedemptionRefused(
                "unknown_coupon",
                f"no referral reward has coupon code {coupon_code[:40]!r}",
                fix="check the code; referral coupons look like REF-XXXXXXXXXX",
            )
        if reward.status == "held":
            raise RedemptionRefused(
                "held",
                f"coupon {code} is held until {_aware(reward.hold_until).isoformat()} "
                "(the referred purchase's return window)",
                fix="redeem it after the hold; it is released automatically",
            )
        if reward.status == "cancelled":
            raise RedemptionRefused(
                "cancelled",
                f"coupon {code} was cancelled: "
                f"{reward.cancel_reason or 'the purchase was returned'}",
                fix="it cannot be redeemed",
            )
        done = _apply(
            session,
            update(Reward)
            .where(col(Reward.id) == reward.id, col(Reward.redeemed_at).is_(None))
            .values(redeemed_at=at),
        )
        session.commit()
        session.refresh(reward)
        referrer = _current(session.connection(), reward.referrer_id) or reward.referrer_id
    return Redemption(reward, duplicate=done != 1, referrer_id=referrer)


def identify_message_id(code: str, claimed: Claimed, *, name: str, locale: str) -> str:
    """The referee's identify: the same for a re-submitted identical form."""
    body = "|".join([code, claimed.email or "", claimed.phone or "", name, locale])
    return f"referral:{code}:{hashlib.sha256(body.encode()).hexdigest()[:32]}"


# --- render variables ---------------------------------------------------------------------


@_translated
def referral_variables(
    db: Engine,
    contact_id: str,
    *,
    channel: str,
    base_url: str,
    now: datetime,
    policy: ReferralPolicy = DEFAULT_POLICY,
    email: str | None = None,
) -> dict[str, str]:
    """``referral_code`` and ``referral_url`` for rendering a referral offer to a promoter
    on ``channel`` (their live code, issued if they have none).

    ``email`` is the promoter's address as their workflow knows it. It is recorded on
    their contact row when the row has none, so the self-referral check knows it even
    for a contact with no email identity (a rehearsal contact)."""
    code = issue_code(db, contact_id, now=now, policy=policy).code
    if email:
        _remember_email(db, contact_id, email)
    url_channel = channel if channel in SHARE_CHANNELS else "email"
    return {"referral_code": code, "referral_url": share_url(base_url, code, url_channel)}


def _remember_email(db: Engine, contact_id: str, email: str) -> None:
    try:
        address = canonical_email(email)
    except AddressError:
        return
    with Session(db) as session:
        contact = session.get(Contact, contact_id)
        if contact is None or isinstance((contact.traits or {}).get("email"), str):
            return
        contact.traits = {**(contact.traits or {}), "email": address}
        session.add(contact)
        session.commit()


@_translated
def coupon_variables(db: Engine, contact_id: str) -> dict[str, str]:
    """``coupon_code`` of the contact's oldest released, unredeemed reward; empty when
    they have none (the content's default code then applies)."""
    with Session(db) as session:
        conn = session.connection()
        ids = list(_aliases(conn, [_current(conn, contact_id) or contact_id]))
        reward = session.exec(
            select(Reward)
            .where(
                col(Reward.referrer_id).in_(ids),
                col(Reward.status) == "released",
                col(Reward.redeemed_at).is_(None),
            )
            .order_by(col(Reward.released_at), col(Reward.id))
        ).first()
        return {"coupon_code": reward.coupon_code} if reward else {}
