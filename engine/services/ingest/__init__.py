"""Ingestion: Segment-compatible messages in, tied to one contact, stored durably with
their outbox rows, and forwarded to contact workflows."""

from stagecoach.engine.services.ingest._identity import (
    KINDS,
    IdentityError,
    identities_from,
    normalise_email,
    normalise_phone,
)
from stagecoach.engine.services.ingest._relevance import CONSENT_EVENTS, relevant_event_types
from stagecoach.engine.services.ingest._segment import (
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    Incoming,
    Problem,
    parse_batch,
    parse_message,
)
from stagecoach.engine.services.ingest._store import (
    ALWAYS_SIGNALLED,
    Ingestor,
    Outcome,
    verify_consent_chain,
)

__all__ = [
    "ALWAYS_SIGNALLED",
    "CONSENT_EVENTS",
    "KINDS",
    "MAX_BATCH_BYTES",
    "MAX_MESSAGE_BYTES",
    "IdentityError",
    "Incoming",
    "Ingestor",
    "Outcome",
    "Problem",
    "identities_from",
    "normalise_email",
    "normalise_phone",
    "parse_batch",
    "parse_message",
    "relevant_event_types",
    "verify_consent_chain",
]
