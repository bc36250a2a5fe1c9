"""Worker metrics on the real dev server: a contact's send moves ``stagecoach_sends_total``
and the activity counters, failing attempts move the failure counter, and the worker
command's wiring exports the Temporal SDK's own metrics on their port.

Counters are process-wide and other tests' workers run in this process too: every
assertion is on a delta, taken around a contact of this test alone."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from stagecoach.connectors.filesink import FileSinkConnector
from stagecoach.engine import metrics
from stagecoach.engine.cli.compose import build_activities
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.protocol.connector import PermanentDeliveryError, RetryableDeliveryError
from stagecoach.engine.protocol.messages import EventMessage, contact_workflow_id
from stagecoach.engine.temporal.gateway import send_event
from stagecoach.workflows.client import connect
from stagecoach.workflows.worker import build_worker
from tests.helpers import free_port, migrated_engine, runtime_settings
from tests.workflows.conftest import eventually, open_runtime
from tests.workflows.test_delivery import Faulty

OPS = Path(__file__).resolve().parents[2] / "docs" / "ops.md"
PERSON = {"email": "li.na@example.cn", "locale": "zh-CN", "timezone": "Asia/Shanghai"}
BLOG = {"category": "blog"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def worker_metrics() -> AsyncIterator[str]:
    """The worker's metrics server (``stagecoach.engine.metrics.serve``) on a free port: its URL."""
    port = free_port()
    server = metrics.serve("127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url)
    response.raise_for_status()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def failures(samples: Samples, activity: str) -> dict[str, float]:
    """``stagecoach_activity_failures_total`` for ``activity``, by error."""
    out: dict[str, float] = {}
    for (name, labels), v in samples.items():
        found = dict(labels)
        if name == "stagecoach_activity_failures_total" and found["activity"] == activity:
            out[found["error"]] = v
    return out


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


DELIVER = "contact.deliver"


async def test_a_send_moves_the_send_and_activity_counters(
    env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    content_library: ContentLibrary,
    worker_metrics: str,
) -> None:
    contact = f"c-metrics-{uuid.uuid4().hex[:8]}"
    async with open_runtime(env, task_queue, tmp_path, content_library) as runtime:
        before = await scrape(worker_metrics)
        await runtime.event(contact, "page.viewed", properties=BLOG, traits=PERSON)

        async def delivered() -> bool:
            after = await scrape(worker_metrics)
            runs = value(after, "stagecoach_activity_executions_total", activity=DELIVER)
            return runs > value(before, "stagecoach_activity_executions_total", activity=DELIVER)

        await eventually(delivered, within=30)
        after = await scrape(worker_metrics)
        sent = runtime.sent(contact)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert len(sent) == 1
    assert delta("stagecoach_sends_total", channel="email", outcome="sent") == 1
    assert delta("stagecoach_activity_executions_total", activity=DELIVER) == 1
    assert moved(failures(before, DELIVER), failures(after, DELIVER)) == {}
    # The contact's other side effects are counted by the same interceptor.
    assert delta("stagecoach_activity_executions_total", activity="contact.open") == 1


async def test_failed_attempts_are_counted_by_activity_and_error(
    env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    content_library: ContentLibrary,
    worker_metrics: str,
) -> None:
    sink = FileSinkConnector(tmp_path / "sink-email", channel="email")
    flaky = Faulty(sink, RetryableDeliveryError("421 try later"), times=2)
    contact = f"c-metrics-{uuid.uuid4().hex[:8]}"
    async with open_runtime(
        env, task_queue, tmp_path, content_library, connectors={"email": flaky}
    ) as runtime:
        before = await scrape(worker_metrics)
        await runtime.event(contact, "page.viewed", properties=BLOG, traits=PERSON)

        async def sent() -> bool:
            after = await scrape(worker_metrics)
            outcome = {"channel": "email", "outcome": "sent"}
            return value(after, "stagecoach_sends_total", **outcome) > value(
                before, "stagecoach_sends_total", **outcome
            )

        await eventually(sent, within=30)
        await eventually(lambda: _executions_reach(worker_metrics, before, 3), within=10)
        after = await scrape(worker_metrics)

    assert flaky.calls == 3
    assert moved(failures(before, DELIVER), failures(after, DELIVER)) == {
        "RetryableDeliveryError": 2
    }
    runs = value(after, "stagecoach_activity_executions_total", activity=DELIVER) - value(
        before, "stagecoach_activity_executions_total", activity=DELIVER
    )
    assert runs == 3  # the error rate is failures / executions: 2 of 3 attempts


async def _executions_reach(url: str, before: Samples, n: int) -> bool:
    after = await scrape(url)
    runs = value(after, "stagecoach_activity_executions_total", activity=DELIVER)
    return runs - value(before, "stagecoach_activity_executions_total", activity=DELIVER) >= n


async def test_a_permanent_failure_is_a_failed_send(
    env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    content_library: ContentLibrary,
    worker_metrics: str,
) -> None:
    sink = FileSinkConnector(tmp_path / "sink-email", channel="email")
    bounce = Faulty(sink, PermanentDeliveryError("550 no such user", code="bounce"), times=99)
    contact = f"c-metrics-{uuid.uuid4().hex[:8]}"
    async with open_runtime(
        env, task_queue, tmp_path, content_library, connectors={"email": bounce}
    ) as runtime:
        before = await scrape(worker_metrics)
        await runtime.event(contact, "page.viewed", properties=BLOG, traits=PERSON)
        await eventually(lambda: _executions_reach(worker_metrics, before, 1), within=30)
        after = await scrape(worker_metrics)

    failed = {"channel": "email", "outcome": "failed"}
    assert (
        value(after, "stagecoach_sends_total", **failed)
        - value(before, "stagecoach_sends_total", **failed)
        == 1
    )
    assert moved(failures(before, DELIVER), failures(after, DELIVER)) == {
        "PermanentDeliveryError": 1
    }


async def test_the_worker_command_exports_temporal_sdk_metrics(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    """``stagecoach worker``'s wiring: ``_worker_metrics`` starts our server and returns a
    runtime with the SDK's Prometheus exporter; ``connect`` takes it; the worker built
    on that client reports task and activity metrics there."""
    from stagecoach.engine.cli.compose import worker_metrics as _worker_metrics

    ours, sdk = free_port(), free_port()
    settings = runtime_settings(
        tmp_path,
        task_queue,
        temporal_address=env.client.service_client.config.target_host,
        temporal_namespace=env.client.namespace,
        worker_metrics_port=ours,
        temporal_metrics_port=sdk,
    )
    runtime = _worker_metrics(settings)
    assert runtime is not None
    client: Client = await connect(settings, runtime=runtime)
    engine = migrated_engine(settings.resolved_database_url)
    sink = FileSinkConnector(tmp_path / "sink-email", channel="email")
    flaky = Faulty(sink, RetryableDeliveryError("421 try later"), times=1)
    activities = build_activities(
        engine, settings, content=content_library, connectors={"email": flaky}
    )
    contact = f"c-metrics-{uuid.uuid4().hex[:8]}"
    worker = build_worker(client, task_queue=task_queue, activities=activities.all())
    try:
        async with worker:
            message = EventMessage(
                message_id=f"{contact}-view",
                type="page.viewed",
                occurred_at=datetime.now(UTC),
                properties=BLOG,
                traits=PERSON,
                source="test",
            )
            await send_event(client, settings, contact, message)

            async def sent() -> bool:
                return flaky.calls == 2 and any((tmp_path / "sink-email" / contact).glob("*.json"))

            await eventually(sent, within=30)

            async def exported() -> bool:
                text = await _text(f"http://127.0.0.1:{sdk}/metrics")
                return f'activity_type="{DELIVER}"' in text

            await eventually(exported, within=30)
            sdk_text = await _text(f"http://127.0.0.1:{sdk}/metrics")
            ours_text = await _text(f"http://127.0.0.1:{ours}/metrics")
    finally:
        handle = client.get_workflow_handle(contact_workflow_id(contact))
        with contextlib.suppress(RPCError):
            await handle.terminate(reason="test finished")
        engine.dispose()

    families = {family.name for family in text_string_to_metric_families(sdk_text)}
    assert {
        "temporal_activity_execution_failed",  # the one failed attempt
        "temporal_activity_execution_latency",
        "temporal_workflow_task_schedule_to_start_latency",
    } <= families
    # Every SDK metric docs/ops.md names (its tables and alert rules) is exported.
    documented = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for name in re.findall(r"\btemporal_[a-z_]+", OPS.read_text(encoding="utf-8"))
    }
    assert documented - families == set()
    assert f'task_queue="{task_queue}"' in sdk_text
    assert "stagecoach_activity_executions_total" in ours_text


async def _text(url: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        return (await http.get(url)).text


BUYER = {
    "email": "zhao.min@example.cn",
    "locale": "zh-CN",
    "timezone": "Asia/Shanghai",
    "company_size": 500,
    "role": "cto",  # with the company size: grade B, routed to the inside-sales pool
}


@pytest.mark.time_skipping
async def test_a_hand_off_and_its_lapsed_sla_are_counted(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    contact = f"c-metrics-{uuid.uuid4().hex[:8]}"
    handoffs = {"team": "inside-sales", "grade": "B", "outcome": "sent"}
    reminders = {"kind": "reminder", "team": "inside-sales"}
    escalations = {"kind": "escalation", "team": "inside-sales"}
    async with open_runtime(env, task_queue, tmp_path, content_library) as runtime:
        before = _registry()
        for kind in ("webinar.attended", "demo.requested", "consultation.booked"):
            await runtime.event(contact, kind, traits=BUYER)  # an MQL: handed to sales

        async def handed_off() -> bool:
            return value(_registry(), "stagecoach_handoffs_total", **handoffs) > value(
                before, "stagecoach_handoffs_total", **handoffs
            )

        await eventually(handed_off, within=30)
        # No feedback for four days: past both deadlines (business hours, any weekday).
        await env.sleep(timedelta(days=4))

        async def escalated() -> bool:
            breaches = "stagecoach_handoff_sla_breaches_total"
            return value(_registry(), breaches, **escalations) > value(
                before, breaches, **escalations
            )

        await eventually(escalated, within=30)
        after = _registry()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("stagecoach_handoffs_total", **handoffs) == 1
    assert delta("stagecoach_handoff_sla_breaches_total", **reminders) == 1
    assert delta("stagecoach_handoff_sla_breaches_total", **escalations) == 1


def _registry() -> Samples:
    """The worker's registry, read in process (the HTTP server is tested above)."""
    body, _ = metrics.render(metrics.REGISTRY)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
