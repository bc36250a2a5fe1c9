"""The analytics store's tables (DuckDB): a columnar copy of the database's read model.

The operational database (SQLite or PostgreSQL) answers one contact at a time; these
tables answer the whole pipeline at once. They mirror the operational tables of the same
name, with these differences made at sync time:

- every ``contact_id`` (and ``referrer_id``/``referee_id``) is already resolved through
  ``merges``, so a merged contact's history counts once, under the surviving contact;
- times are UTC ``TIMESTAMP`` (naive): DuckDB's time-zone functions need an extension;
- ``contacts`` carries its acquisition: the source, channel and UTM campaign source of
  the contact's first stored event, and ``events`` carries the delivery digest that
  tracking events quote (``delivery``), so opens and clicks join their delivery;
- ``contacts``, ``events`` and ``stage_transitions`` carry ``contact_key``, a dense
  integer standing for the (resolved) contact id: grouping and joining by it is two to
  three times faster than by the id text, which is what per-contact analyses on tens of
  millions of events spend their time on. The store keeps the id -> key map;
- ``contacts.rehearsal`` marks a journey rehearsal's contact: reports leave every row of
  such a contact out unless asked to include rehearsals
  (``stagecoach.engine.services.analytics._rehearsals``).
"""

from __future__ import annotations

TABLES: dict[str, str] = {
    "contacts": """
        CREATE TABLE IF NOT EXISTS contacts (
            id VARCHAR PRIMARY KEY,
            stage VARCHAR,
            locale VARCHAR,
            timezone VARCHAR,
            traits JSON,
            created_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL,
            acquired_source VARCHAR,
            acquired_channel VARCHAR,
            acquired_campaign VARCHAR,
            contact_key INTEGER,
            rehearsal BOOLEAN NOT NULL DEFAULT false
        )""",
    "events": """
        CREATE TABLE IF NOT EXISTS events (
            id BIGINT PRIMARY KEY,
            contact_id VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            properties JSON,
            context JSON,
            source VARCHAR,
            channel VARCHAR,
            delivery VARCHAR,
            occurred_at TIMESTAMP NOT NULL,
            received_at TIMESTAMP NOT NULL,
            contact_key INTEGER
        )""",
    "stage_transitions": """
        CREATE TABLE IF NOT EXISTS stage_transitions (
            id BIGINT PRIMARY KEY,
            contact_id VARCHAR NOT NULL,
            from_stage VARCHAR,
            to_stage VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,
            reason VARCHAR,
            source VARCHAR,
            trigger_event_type VARCHAR,
            "at" TIMESTAMP NOT NULL,
            contact_key INTEGER
        )""",
    "deliveries": """
        CREATE TABLE IF NOT EXISTS deliveries (
            id BIGINT PRIMARY KEY,
            digest VARCHAR,
            contact_id VARCHAR NOT NULL,
            journey VARCHAR NOT NULL,
            journey_version VARCHAR NOT NULL,
            step_id VARCHAR NOT NULL,
            enrolment INTEGER NOT NULL,
            channel VARCHAR NOT NULL,
            content_id VARCHAR,
            status VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            sent_at TIMESTAMP
        )""",
    "journey_enrolments": """
        CREATE TABLE IF NOT EXISTS journey_enrolments (
            id BIGINT PRIMARY KEY,
            contact_id VARCHAR NOT NULL,
            journey VARCHAR NOT NULL,
            version VARCHAR NOT NULL,
            enrolment INTEGER NOT NULL,
            status VARCHAR NOT NULL,
            reason VARCHAR,
            arms JSON,
            trail JSON,
            started_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP
        )""",
    "handoffs": """
        CREATE TABLE IF NOT EXISTS handoffs (
            id VARCHAR PRIMARY KEY,
            contact_id VARCHAR NOT NULL,
            grade VARCHAR,
            team VARCHAR,
            owner VARCHAR,
            status VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            reminded_at TIMESTAMP,
            escalated_at TIMESTAMP,
            feedback_at TIMESTAMP
        )""",
    "referrals": """
        CREATE TABLE IF NOT EXISTS referrals (
            id BIGINT PRIMARY KEY,
            code VARCHAR NOT NULL,
            referrer_id VARCHAR NOT NULL,
            referee_id VARCHAR NOT NULL,
            channel VARCHAR,
            status VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            converted_at TIMESTAMP
        )""",
    "sync_state": """
        CREATE TABLE IF NOT EXISTS sync_state (
            name VARCHAR PRIMARY KEY,
            watermark BIGINT NOT NULL,
            synced_at TIMESTAMP NOT NULL
        )""",
}
"""DDL per table, in creation order."""

INDEXES: tuple[str, ...] = ()
"""DuckDB's zone maps serve range scans; the sync adds ART indexes only where measured."""
