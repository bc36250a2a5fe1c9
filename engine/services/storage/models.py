"""SQLModel tables: the read model and the event store.

A family per entity, as SQLModel recommends: ``XBase`` holds the shared fields,
``X(table=True)`` the row, ``XPublic`` what the API returns. The first migration
creates contacts and events; later issues add identities, transitions, deliveries,
handoffs and the outbox, each in its own migration.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(*, index: bool = False, nullable: bool = False) -> Any:
    return Field(
        default_factory=utcnow,
        sa_column=Column(DateTime(timezone=True), nullable=nullable, index=index),
    )


class ContactBase(SQLModel):
    stage: str | None = Field(default=None, max_length=64, index=True)
    locale: str | None = Field(default=None, max_length=35)
    timezone: str | None = Field(default=None, max_length=64)
    traits: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Contact(ContactBase, table=True):
    __tablename__ = "contacts"

    id: str = Field(primary_key=True, max_length=64)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    rehearsal: bool = False
    """Created by a journey rehearsal: every report, metric and routing count leaves it
    out unless asked to include rehearsals."""


class ContactPublic(ContactBase):
    id: str
    created_at: datetime
    updated_at: datetime


class EventBase(SQLModel):
    message_id: str = Field(max_length=128, unique=True)
    contact_id: str = Field(foreign_key="contacts.id", max_length=64)
    kind: str = Field(default="track", max_length=16, description="identify, track, page, ...")
    name: str = Field(max_length=128, index=True, description="event type, e.g. page.viewed")
    properties: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    context: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    source: str = Field(default="api", max_length=64)
    channel: str | None = Field(default=None, max_length=32)


class Event(EventBase, table=True):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_contact_occurred", "contact_id", "occurred_at"),)

    id: int | None = Field(default=None, primary_key=True)
    occurred_at: datetime = _ts()
    received_at: datetime = _ts()


class EventPublic(EventBase):
    id: int
    occurred_at: datetime
    received_at: datetime


class JourneyVersion(SQLModel, table=True):
    """A published journey spec. ``version`` is its content hash; enrolments pin it."""

    __tablename__ = "journey_versions"

    version: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=128, index=True)
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    source: str = Field(default="bundled", max_length=32)
    published_at: datetime = _ts(index=True)


class StageTransition(SQLModel, table=True):
    """One stage change of one contact, with why and from where."""

    __tablename__ = "stage_transitions"
    __table_args__ = (Index("ix_stage_transitions_contact_at", "contact_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=160, unique=True, description="contact:seq; retries dedupe")
    contact_id: str = Field(foreign_key="contacts.id", max_length=64)
    from_stage: str | None = Field(default=None, max_length=64)
    to_stage: str = Field(max_length=64, index=True)
    kind: str = Field(default="rule", max_length=16, description="rule, detour or manual")
    reason: str = Field(max_length=512)
    source: str = Field(max_length=64)
    trigger_event_type: str | None = Field(default=None, max_length=128)
    trigger_message_id: str | None = Field(default=None, max_length=128)
    at: datetime = _ts()


class Delivery(SQLModel, table=True):
    """One message to one contact. The idempotency key is recorded before the send."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_contact_created", "contact_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(max_length=256, unique=True)
    contact_id: str = Field(foreign_key="contacts.id", max_length=64)
    journey: str = Field(max_length=128, index=True)
    journey_version: str = Field(max_length=64)
    step_id: str = Field(max_length=128)
    enrolment: int = 1
    channel: str = Field(max_length=32)
    content_id: str | None = Field(default=None, max_length=128)
    content_version: str | None = Field(default=None, max_length=64)
    status: str = Field(default="sending", max_length=16, index=True)
    provider_message_id: str | None = Field(default=None, max_length=256)
    error: str | None = Field(default=None, max_length=1024)
    created_at: datetime = _ts()
    sent_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class Suppression(SQLModel, table=True):
    """An address no message may go to on a channel (bounces, complaints, unsubscribes)."""

    __tablename__ = "suppressions"

    channel: str = Field(primary_key=True, max_length=32)
    address: str = Field(primary_key=True, max_length=320)
    reason: str = Field(max_length=64)
    contact_id: str | None = Field(default=None, max_length=64, index=True)
    created_at: datetime = _ts()


class Identity(SQLModel, table=True):
    """One way of recognising a contact: userId, anonymousId, email, phone, openid, ..."""

    __tablename__ = "identities"

    kind: str = Field(primary_key=True, max_length=32, description="user_id, email, ...")
    value: str = Field(primary_key=True, max_length=320)
    contact_id: str = Field(foreign_key="contacts.id", max_length=64, index=True)
    source: str = Field(default="api", max_length=64)
    created_at: datetime = _ts()


OUTBOX_BUCKETS = 64
"""The outbox is split by contact into this many buckets, each forwarded by the one API
replica holding its lease (``stagecoach.engine.services.ingest._forwarder``). Fixed, not a
setting: rows carry their bucket, and two replicas disagreeing on the count during a
rolling deploy would both forward a contact. 64 lets up to 64 replicas share the work."""


def outbox_bucket(contact_id: str) -> int:
    """The bucket of a contact's outbox rows: the same on every replica and Python run
    (not ``hash()``, which is salted per process) and in SQL (``OUTBOX_BUCKET_SQL``),
    for the ingestion's bulk path that inserts outbox rows from the events table."""
    return hashlib.md5(contact_id.encode(), usedforsecurity=False).digest()[15] % OUTBOX_BUCKETS


OUTBOX_BUCKET_SQL = {
    # mod(), not %: the bulk path's statements go to the driver with %s parameters.
    "postgresql": f"mod(get_byte(decode(md5(contact_id), 'hex'), 15), {OUTBOX_BUCKETS})",
    "sqlite": "outbox_bucket(contact_id)",
}
"""``outbox_bucket`` of a ``contact_id`` column in SQL; SQLite's is the Python function,
registered on each connection (``stagecoach.engine.services.storage.db``)."""


class Outbox(SQLModel, table=True):
    """An event waiting to be signalled to its contact's workflow.

    Written in the event's own transaction; the forwarder deletes the row once the signal
    is accepted, so the table's size is the backlog."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_contact_id", "contact_id", "id"),
        Index("ix_outbox_bucket", "bucket", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    contact_id: str = Field(max_length=64)
    bucket: int = Field(description="outbox_bucket(contact_id): which forwarder lease owns it")
    event_id: int | None = Field(default=None, foreign_key="events.id")
    merged_into: str | None = Field(
        default=None, max_length=64, description="a control row: this contact was merged"
    )
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=512)
    created_at: datetime = _ts()


class WriteKey(SQLModel, table=True):
    """A source's write key, stored as its SHA-256; ``source`` scopes what it may send."""

    __tablename__ = "write_keys"

    key_hash: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=128)
    source: str | None = Field(default=None, max_length=64)
    created_at: datetime = _ts()
    revoked_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class AdminSession(SQLModel, table=True):
    """A signed-in dashboard or codec session. The cookie names its ``id``; signing out
    deletes the row, which ends the session at once on every API replica."""

    __tablename__ = "admin_sessions"

    id: str = Field(primary_key=True, max_length=64)
    created_at: datetime = _ts()
    expires_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, index=True)
    )


class Merge(SQLModel, table=True):
    """Two contacts found to be one: ``merged_id`` now lives on as ``into_id``."""

    __tablename__ = "merges"

    merged_id: str = Field(primary_key=True, max_length=64)
    into_id: str = Field(max_length=64, index=True)
    reason: str = Field(max_length=256)
    message_id: str | None = Field(default=None, max_length=128)
    at: datetime = _ts()


class Consent(SQLModel, table=True):
    """A consent decision as given: channel, granted or withdrawn, source, wording, time.

    Rows are only added. ``proof`` is the SHA-256 of the previous proof and this row's
    fields, so an edited or deleted row breaks the chain from there on."""

    __tablename__ = "consents"
    __table_args__ = (Index("ix_consents_contact_at", "contact_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    contact_id: str = Field(foreign_key="contacts.id", max_length=64)
    channel: str = Field(max_length=32)
    granted: bool
    source: str = Field(max_length=64)
    wording: str = Field(max_length=2048)
    message_id: str | None = Field(default=None, max_length=128)
    at: datetime = _ts()
    proof: str = Field(max_length=64)


class Handoff(SQLModel, table=True):
    """A qualified lead handed to sales, and what sales answered.

    ``id`` is what the CRM or webhook receiver quotes back in feedback
    (``POST /v1/handoffs/{id}/feedback``)."""

    __tablename__ = "handoffs"
    __table_args__ = (Index("ix_handoffs_contact_created", "contact_id", "created_at"),)

    id: str = Field(primary_key=True, max_length=64)
    idempotency_key: str = Field(max_length=256, unique=True)
    contact_id: str = Field(foreign_key="contacts.id", max_length=64)
    reason: str = Field(default="", max_length=256)
    grade: str | None = Field(default=None, max_length=8)
    team: str | None = Field(default=None, max_length=64)
    owner: str | None = Field(default=None, max_length=128)
    owner_timezone: str | None = Field(default=None, max_length=64)
    status: str = Field(
        default="sent", max_length=16, index=True, description="sent, accepted, rejected, converted"
    )
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reminded_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    escalated_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    feedback_reason: str | None = Field(default=None, max_length=512)
    feedback_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    created_at: datetime = _ts()


class ReferralCode(SQLModel, table=True):
    """A promoter's share code: random, unguessable, expiring, with a use counter.

    ``generation`` numbers a referrer's codes (1, 2, ...); unique per referrer, so two
    concurrent issuers cannot both add a live code: the second insert fails and reads
    the first one's."""

    __tablename__ = "referral_codes"
    __table_args__ = (
        Index("ux_referral_codes_referrer_generation", "referrer_id", "generation", unique=True),
    )

    code: str = Field(primary_key=True, max_length=16)
    referrer_id: str = Field(foreign_key="contacts.id", max_length=64, index=True)
    generation: int = 1
    uses: int = 0
    max_uses: int = 50
    created_at: datetime = _ts()
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class Referral(SQLModel, table=True):
    """One contact brought in by another's code. A contact is referred once (first
    referrer wins), so ``referee_id`` is unique and referrals form a tree."""

    __tablename__ = "referrals"

    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(foreign_key="referral_codes.code", max_length=16, index=True)
    referrer_id: str = Field(foreign_key="contacts.id", max_length=64, index=True)
    referee_id: str = Field(foreign_key="contacts.id", max_length=64, unique=True)
    channel: str | None = Field(default=None, max_length=32, description="wechat, email, ...")
    device_id: str | None = Field(default=None, max_length=128, index=True)
    status: str = Field(
        default="signed_up", max_length=16, index=True, description="signed_up, converted, returned"
    )
    outcome: str | None = Field(
        default=None, max_length=32, description="what the conversion earned: rewarded, capped, ..."
    )
    created_at: datetime = _ts()
    converted_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class Reward(SQLModel, table=True):
    """What a referrer earns when a referee converts: a coupon, held through the return
    window, then released (or cancelled by a return within it)."""

    __tablename__ = "rewards"
    __table_args__ = (Index("ix_rewards_referrer_created", "referrer_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    referral_id: int = Field(foreign_key="referrals.id", unique=True)
    referrer_id: str = Field(foreign_key="contacts.id", max_length=64)
    content_id: str = Field(default="coupon-annual-plan", max_length=128)
    coupon_code: str = Field(max_length=32, unique=True)
    status: str = Field(
        default="held", max_length=16, index=True, description="held, released, cancelled"
    )
    hold_until: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    created_at: datetime = _ts()
    released_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    cancelled_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    cancel_reason: str | None = Field(default=None, max_length=256)
    redeemed_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class JourneyEnrolment(SQLModel, table=True):
    """One enrolment of one contact in one journey version, and where it went.

    Written by the delivery activity while the enrolment sends (status ``active``) and
    once more when it finishes (``completed`` or ``exited``, with the reason). ``arms``
    maps each split step passed to the target it chose (``holdout`` included); ``trail``
    lists the steps gone through, each ``{"step", "kind", "outcome", "at"}``."""

    __tablename__ = "journey_enrolments"
    __table_args__ = (
        Index("ux_journey_enrolments_contact", "contact_id", "journey", "enrolment", unique=True),
        Index("ix_journey_enrolments_journey_started", "journey", "started_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    contact_id: str = Field(foreign_key="contacts.id", max_length=64)
    journey: str = Field(max_length=128)
    version: str = Field(max_length=64)
    enrolment: int = 1
    status: str = Field(default="active", max_length=16, description="active, completed, exited")
    reason: str | None = Field(default=None, max_length=512)
    arms: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    trail: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    started_at: datetime = _ts()
    finished_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    updated_at: datetime = _ts()


class SegmentVersion(SQLModel, table=True):
    """One published version of a segment (its spec's content hash).

    ``status`` is ``backfilling`` while a backfill computes the version's members from
    stored history, ``ready`` once it is complete (readers use the newest ready version
    of each segment, so a half-done backfill is never what anyone sees), and
    ``retired`` when a newer version became ready or the segment was removed.
    ``cursor`` is the backfill's progress (the last contact id done), so it resumes."""

    __tablename__ = "segment_versions"
    __table_args__ = (Index("ix_segment_versions_name_status", "name", "status"),)

    version: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=64)
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    status: str = Field(default="backfilling", max_length=16)
    source: str = Field(default="bundled", max_length=32)
    cursor: str | None = Field(default=None, max_length=64)
    published_at: datetime = _ts()
    ready_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class SegmentMember(SQLModel, table=True):
    """A contact in a segment, under the version that decided it: since when and why.

    Current members of a segment are the rows of its ready version; a row is deleted
    when the contact leaves (the exit stays in ``segment_changes``)."""

    __tablename__ = "segment_members"
    __table_args__ = (Index("ix_segment_members_contact", "contact_id"),)

    segment: str = Field(primary_key=True, max_length=64)
    version: str = Field(primary_key=True, max_length=64)
    contact_id: str = Field(primary_key=True, max_length=64)
    since: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    reason: str = Field(default="", max_length=512)


class SegmentChange(SQLModel, table=True):
    """Every entry and exit, with its time, reason and who or what decided it.

    ``source``: ``workflow`` (the contact's workflow, on the deciding event or at a
    computed time), ``backfill`` (a new version computed from history) or ``list`` (a
    manual list change, ``actor`` naming who). ``key`` makes a retried write a no-op."""

    __tablename__ = "segment_changes"
    __table_args__ = (
        Index("ix_segment_changes_segment_at", "segment", "at"),
        Index("ix_segment_changes_contact_at", "contact_id", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=256, unique=True)
    segment: str = Field(max_length=64)
    version: str = Field(max_length=64)
    contact_id: str = Field(max_length=64)
    entered: bool
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    reason: str = Field(default="", max_length=512)
    source: str = Field(default="workflow", max_length=16)
    actor: str | None = Field(default=None, max_length=128)


class BroadcastRow(SQLModel, table=True):
    """One broadcast: its spec (``stagecoach.engine.domain.broadcasts``), where it is in
    its lifecycle and what its audience snapshot held.

    ``status`` is draft, scheduled, running, paused, completed or cancelled; ``reason``
    says why it paused or was cancelled (a provider's refusal, an operator). The snapshot
    fixes ``audience_version`` (the segment version read) and ``audience_size``. ``ab``
    holds an A/B test's counts, test and winner once the window has closed."""

    __tablename__ = "broadcasts"

    id: str = Field(primary_key=True, max_length=64)
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    version: str = Field(max_length=64)
    source: str = Field(default="project", max_length=32)
    status: str = Field(default="draft", max_length=16, index=True)
    reason: str | None = Field(default=None, max_length=512)
    actor: str | None = Field(default=None, max_length=128)
    audience_version: str | None = Field(default=None, max_length=64)
    audience_size: int = 0
    winner: str | None = Field(default=None, max_length=64)
    ab: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = _ts()
    scheduled_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    started_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    finished_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class BroadcastRecipient(SQLModel, table=True):
    """One contact in a broadcast's audience snapshot, and what became of them.

    ``seq`` numbers the snapshot so batches page by it; ``send_at`` is the recipient's
    slot (a local-time broadcast groups recipients by it); ``variant`` is the A/B arm
    (``None`` for the rest until the winner is known). ``status`` is pending, sent,
    held (with ``reason``: consent, suppression, cap, ...), failed or skipped (a local
    time already passed). The delivery row (``deliveries``, key ``broadcast:<id>:<contact>``)
    is the send's record; this row is the audience's."""

    __tablename__ = "broadcast_recipients"
    __table_args__ = (
        Index("ix_broadcast_recipients_batch", "broadcast_id", "status", "send_at", "seq"),
    )

    broadcast_id: str = Field(primary_key=True, max_length=64)
    contact_id: str = Field(primary_key=True, max_length=64)
    seq: int
    send_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    variant: str | None = Field(default=None, max_length=64)
    status: str = Field(default="pending", max_length=16)
    reason: str | None = Field(default=None, max_length=256)
    sent_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class BroadcastJob(SQLModel, table=True):
    """A WeChat mass-send job a broadcast started: the ``msg_id`` WeChat answered, our
    ``clientmsgid`` (WeChat refuses a repeat of it, so a retried job is never sent twice)
    and the counts its ``MASSSENDJOBFINISH`` callback reports."""

    __tablename__ = "broadcast_jobs"

    clientmsgid: str = Field(primary_key=True, max_length=64)
    broadcast_id: str = Field(max_length=64, index=True)
    appid: str = Field(default="", max_length=64)
    msg_id: str | None = Field(default=None, max_length=64, index=True)
    target: str = Field(default="", max_length=128, description="tag:<id> or openids:<n>")
    status: str = Field(default="sending", max_length=32)
    total: int | None = None
    filtered: int | None = None
    sent: int | None = None
    errors: int | None = None
    created_at: datetime = _ts()
    finished_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class Lease(SQLModel, table=True):
    """A named piece of shared background work and the replica that holds it, until
    ``expires_at`` (seconds since the epoch by the database's clock). ``token`` grows by
    one at each change of holder: the fencing token a holder's writes are checked
    against (``stagecoach.engine.services.leases``)."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=128)
    holder: str = Field(default="", max_length=128, description="empty: free")
    token: int = Field(default=0)
    expires_at: float = Field(default=0.0)


class ValueRun(SQLModel, table=True):
    """One customer-value refresh (``stagecoach value refresh``): the BG/NBD and
    Gamma-Gamma parameters it fitted (none when there was not enough data), the orders it
    left out and why, and the cross-sell pairs it found. ``version`` names the model."""

    __tablename__ = "value_runs"

    id: int | None = Field(default=None, primary_key=True)
    version: str = Field(max_length=64, index=True)
    as_of: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    status: str = Field(max_length=32, description="fitted, not_enough_data or failed")
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    summary: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts()


class ContactValue(SQLModel, table=True):
    """A contact's value as the latest refresh that scored them computed it."""

    __tablename__ = "contact_values"

    contact_id: str = Field(primary_key=True, max_length=64)
    run_id: int = Field(index=True)
    model_version: str = Field(max_length=64)
    as_of: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    tier: str = Field(max_length=16, index=True)
    score: float
    clv: float | None = None
    p_alive: float | None = None
    traits: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


# --- prediction (issue 23): propensity model versions and the scores they gave ----------


class PropensityModelVersion(SQLModel, table=True):
    """One trained and published conversion-propensity model.

    ``artifact`` is the fitted model as plain JSON numbers (scaler, coefficients,
    isotonic calibration points and the feature vocabularies), never a pickle: loading
    it runs no code (``stagecoach.engine.services.prediction.model``).
    ``artifact_sha256`` is the hash of its canonical JSON, checked when it is loaded."""

    __tablename__ = "propensity_models"

    version: int | None = Field(default=None, primary_key=True)
    trained_at: datetime = _ts(index=True)
    window_start: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    window_end: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    target_stage: str = Field(max_length=64)
    horizon_days: int
    rows: int = Field(description="training examples (contact x cut-off date)")
    customers: int = Field(description="contacts that became customers in the window")
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    features: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    artifact: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    artifact_sha256: str = Field(max_length=64)
    scored: int = Field(default=0, description="contacts scored when it was published")


class PropensityScore(SQLModel, table=True):
    """A contact's latest conversion propensity: replaced whole by each full refresh.
    ``top`` holds the features that moved it most as ``[feature, value, effect]``."""

    __tablename__ = "propensity_scores"

    contact_id: str = Field(primary_key=True, max_length=64)
    model_version: int = Field(index=True)
    probability: float
    scored_at: datetime = _ts()
    top: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
