"""Prometheus metrics: every metric Stagecoach exports, in one registry.

The API serves them at ``GET /metrics``; ``stagecoach worker`` serves them on
``STAGECOACH_WORKER_METRICS_PORT``, and the Temporal SDK's own metrics on
``STAGECOACH_TEMPORAL_METRICS_PORT``. docs/ops.md lists them with a scrape
configuration and alert rules.

Counters are per process: each process counts what it did, and Prometheus sums over
instances. The outbox gauges are read from the database at scrape time, so every API
replica reports the same (global) figure: alert on ``max``, not ``sum``.

Call sites hand plain values to the ``count_*`` helpers, which keep label values
bounded (a blocked reason loses its free-text tail). This module imports no Temporal
and no database.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

log = logging.getLogger("stagecoach.metrics")

# One series per counter, not two: the ``_created`` timestamps double the series count
# and nothing here alerts on them.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry()
"""Stagecoach's metrics, plus the process, platform and GC collectors."""
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

# --- ingestion and the outbox (API process) ----------------------------------------------

EVENTS_ACCEPTED = Counter(
    "stagecoach_events_accepted",
    "Events committed to the event store, by source (duplicates included: they are "
    "acknowledged too).",
    ["source"],
    registry=REGISTRY,
)
EVENTS_STORED = Counter(
    "stagecoach_events_stored",
    "Accepted events that were new (not an already stored messageId), by source.",
    ["source"],
    registry=REGISTRY,
)
EVENTS_REFUSED = Counter(
    "stagecoach_events_refused",
    "Events handed to ingestion that were not stored, by reason (database: the "
    "transaction failed and the client was told to retry).",
    ["reason"],
    registry=REGISTRY,
)
OUTBOX_FORWARDED = Counter(
    "stagecoach_outbox_forwarded",
    "Outbox rows delivered to contact workflows (Temporal accepted the signal).",
    registry=REGISTRY,
)
OUTBOX_SIGNALS = Counter(
    "stagecoach_outbox_signals",
    "Signal-with-start calls made by the forwarder (one per contact and batch of up to "
    "100 rows; each is a billable Temporal action).",
    registry=REGISTRY,
)
OUTBOX_FAILURES = Counter(
    "stagecoach_outbox_failures",
    "Forwarder failures, by reason: unreachable (no connection to Temporal), signal "
    "(a contact's signal failed; its rows wait and are retried with backoff) or error "
    "(a pass failed, e.g. reading the outbox).",
    ["reason"],
    registry=REGISTRY,
)

OUTBOX_DUPLICATES = Counter(
    "stagecoach_outbox_duplicates",
    "Outbox rows this replica signalled whose delete fencing refused (its lease on their "
    "bucket had moved to another replica, which signals them again; the workflow drops "
    "the copy by message id). Near zero: it grows only when a replica stalls past its "
    "lease mid-send.",
    registry=REGISTRY,
)
OUTBOX_FENCED = Counter(
    "stagecoach_outbox_fenced",
    "Outbox rows this replica read but did not signal because its lease on their bucket "
    "lapsed first (a pause, a slow database): the bucket's new holder sends them.",
    registry=REGISTRY,
)
OUTBOX_BUCKETS = Gauge(
    "stagecoach_outbox_buckets",
    "Outbox buckets this replica's forwarder holds the lease of (of 64, shared by the "
    "live API replicas).",
    registry=REGISTRY,
)

INGEST_REFUSED = Counter(
    "stagecoach_ingest_refused",
    "Ingestion calls (/v1/batch, /v1/track...) answered 429 by admission control, "
    "before anything was read or stored, by reason: queue_full (the wait queue was "
    "full), expected_wait (the calls ahead would take longer than the maximum wait) or "
    "timeout (it waited the maximum without a slot).",
    ["reason"],
    registry=REGISTRY,
)

# --- the worker --------------------------------------------------------------------------

SENDS = Counter(
    "stagecoach_sends",
    "Deliveries by channel and outcome: sent, duplicate, deferred, failed (permanent), "
    "or blocked:<reason>. Rehearsal sends are not counted.",
    ["channel", "outcome"],
    registry=REGISTRY,
)
HANDOFFS = Counter(
    "stagecoach_handoffs",
    "Qualified leads handed to sales, by team, grade and outcome (sent, failed). "
    "Rehearsal hand-offs are not counted.",
    ["team", "grade", "outcome"],
    registry=REGISTRY,
)
SLA_BREACHES = Counter(
    "stagecoach_handoff_sla_breaches",
    "Hand-offs with no sales feedback in time, by kind (reminder, escalation) and team. "
    "Rehearsal hand-offs are not counted.",
    ["kind", "team"],
    registry=REGISTRY,
)
ACTIVITY_EXECUTIONS = Counter(
    "stagecoach_activity_executions",
    "Activity attempts run by this worker, by activity type (each retry is an attempt).",
    ["activity"],
    registry=REGISTRY,
)
JOURNEYS_REFUSED_OLDER = Counter(
    "stagecoach_journeys_refused_older",
    "Journey definitions a publish (the worker's at start, or 'journeys publish') did not "
    "make the latest because they are an older published version, by journey.",
    ["journey"],
    registry=REGISTRY,
)
ACTIVITY_FAILURES = Counter(
    "stagecoach_activity_failures",
    "Activity attempts that raised, by activity type and error (the ApplicationError "
    "type, else the exception class).",
    ["activity", "error"],
    registry=REGISTRY,
)

_NONE = "none"


def _label(value: str | None, *, limit: int = 64) -> str:
    return (value or "").strip()[:limit] or _NONE


def count_events(accepted: Iterable[tuple[str, bool]]) -> None:
    """Count committed events, given as ``(source, duplicate)`` pairs."""
    sources: Tally[str] = Tally()
    new: Tally[str] = Tally()
    for source, duplicate in accepted:
        sources[source] += 1
        if not duplicate:
            new[source] += 1
    for source, n in sources.items():
        EVENTS_ACCEPTED.labels(_label(source)).inc(n)
    for source, n in new.items():
        EVENTS_STORED.labels(_label(source)).inc(n)


def count_ingest_refused(reason: str) -> None:
    """One ingestion call was answered 429 by admission control because of ``reason``."""
    INGEST_REFUSED.labels(_label(reason)).inc()


def count_refused(reason: str, n: int = 1) -> None:
    """``n`` events were not stored because of ``reason`` (e.g. database)."""
    EVENTS_REFUSED.labels(_label(reason)).inc(n)


class Delivery(Protocol):
    """What :func:`count_send` reads from a delivery request."""

    @property
    def channel(self) -> str: ...

    @property
    def rehearsal(self) -> bool: ...


def send_outcome(outcome: str, reason: str = "") -> str:
    """The ``outcome`` label: ``blocked:<reason>`` keeps only the reason's code, the
    part before any ``:`` (``no_consent:email`` -> ``blocked:no_consent``)."""
    if outcome != "blocked":
        return outcome
    code = reason.split(":", 1)[0].strip().lower().replace(" ", "_")
    return f"blocked:{_label(code, limit=48)}"


def count_send(request: Delivery, outcome: str, reason: str = "") -> None:
    """One delivery ended with ``outcome`` (sent, duplicate, deferred, failed, blocked)."""
    if request.rehearsal:
        return  # rehearsals go to the sink: they are not sends
    SENDS.labels(_label(request.channel), send_outcome(outcome, reason)).inc()


def count_handoff(
    team: str | None, grade: str | None, outcome: str, *, rehearsal: bool = False
) -> None:
    """One hand-off to sales ended with ``outcome`` (sent or failed)."""
    if rehearsal:
        return  # a rehearsal's hand-off went to the sink: nobody in sales has it
    HANDOFFS.labels(_label(team), _label(grade), outcome).inc()


def count_sla_breach(kind: str, team: str | None, *, rehearsal: bool = False) -> None:
    """A hand-off's SLA lapsed: ``kind`` is reminder or escalation."""
    if rehearsal:
        return  # a rehearsal's SLA runs on its scaled clock, against nobody's inbox
    SLA_BREACHES.labels(_label(kind), _label(team)).inc()


def count_activity(activity: str, error: str | None = None) -> None:
    """One attempt of ``activity`` ended; ``error`` names its failure, if it failed."""
    ACTIVITY_EXECUTIONS.labels(activity).inc()
    if error is not None:
        ACTIVITY_FAILURES.labels(activity, _label(error)).inc()


# --- exporting ---------------------------------------------------------------------------


class OutboxCollector:
    """The outbox gauges, read at scrape time through ``read`` (``stagecoach.engine.services.ingest.
    _forwarder.backlog``). A failed read leaves them out of that scrape and logs why:
    the rest of the page still answers, and an ``absent()`` rule can catch it."""

    def __init__(self, read: Callable[[], Mapping[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        try:
            outbox = self._read()
        except Exception as exc:
            log.warning("outbox gauges skipped: %s", exc)
            return
        yield GaugeMetricFamily(
            "stagecoach_outbox_backlog",
            "Outbox rows waiting to be signalled to contact workflows.",
            value=outbox["outbox_backlog"],
        )
        yield GaugeMetricFamily(
            "stagecoach_outbox_oldest_seconds",
            "Age of the oldest waiting outbox row (0 when the outbox is empty).",
            value=outbox["outbox_oldest_seconds"] or 0,
        )


class AdmissionCollector:
    """The admission gate's gauges (``stagecoach.engine.api._admission.AdmissionGate.snapshot``),
    read at scrape time: calls being handled, calls waiting, the slots there are, and
    the average seconds a call holds one."""

    def __init__(self, read: Callable[[], Mapping[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        gate = self._read()
        for name, text in (
            ("in_flight", "Ingestion calls being handled now."),
            ("waiting", "Ingestion calls waiting for a slot now."),
            ("concurrency", "Ingestion calls handled at once, at most."),
            ("hold_seconds", "Moving average of the seconds an ingestion call holds its slot."),
        ):
            yield GaugeMetricFamily(f"stagecoach_ingest_{name}", text, value=gate[name])


def registry_with(*collectors: Collector) -> CollectorRegistry:
    """A registry for one exporter: the process's metrics and ``collectors``."""
    combined = CollectorRegistry()
    combined.register(REGISTRY)
    for collector in collectors:
        combined.register(collector)
    return combined


def render(registry: Collector, accept: str = "") -> tuple[bytes, str]:
    """The exposition of ``registry`` in the format ``accept`` asks for (Prometheus text
    by default, OpenMetrics on request) and its content type."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def serve(host: str, port: int) -> WSGIServer:
    """Serve :data:`REGISTRY` at ``http://host:port/metrics`` from a daemon thread, until
    the process ends or ``shutdown()`` is called on the server returned."""
    server, _ = start_http_server(port, addr=host, registry=REGISTRY)
    return server
