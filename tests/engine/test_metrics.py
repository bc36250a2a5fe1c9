"""Prometheus metrics: ``GET /metrics`` through the real app, who may read it, and the
counters the API process moves (ingestion, the outbox). Counters are process-wide, so
every assertion is on a delta, and each test uses its own source label."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from stagecoach.engine import metrics
from stagecoach.engine.api.routes.events import create_write_key
from stagecoach.engine.app import create_app
from stagecoach.engine.domain.errors import ConfigurationError, DatabaseError, PortInUse
from stagecoach.engine.services.ingest import Incoming, Ingestor, parse_message
from stagecoach.engine.services.ingest._forwarder import Forwarder
from stagecoach.engine.services.storage import make_engine
from stagecoach.engine.services.storage.models import Outbox
from stagecoach.engine.settings import Settings
from tests.helpers import free_port, migrated_engine

TOKEN = "metrics-test-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = migrated_engine(f"sqlite:///{tmp_path}/metrics.db")
    yield db
    db.dispose()


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "database_url": f"sqlite:///{tmp_path}/metrics.db",
        "admin_token": SecretStr(TOKEN),
    }
    values.update(overrides)
    return Settings(**values)


def _basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def _track(message_id: str, user: str = "u-1") -> dict[str, Any]:
    return {
        "userId": user,
        "messageId": message_id,
        "event": "content.downloaded",
        "properties": {"content_id": "wp-digital-transformation", "kind": "whitepaper"},
    }


def _outbox(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(Outbox)).one())


# --- what /metrics counts ----------------------------------------------------------------


def test_accepted_events_move_the_counter_by_exactly_that_many(
    tmp_path: Path, engine: Engine
) -> None:
    source = f"web-{uuid.uuid4().hex[:8]}"
    key = create_write_key(engine, "website", source=source)
    with TestClient(create_app(_settings(tmp_path), db=engine)) as http:
        before = parse(http.get("/metrics", headers=ADMIN).text)
        for n in range(3):
            assert http.post("/v1/track", json=_track(f"m-{n}"), headers=_basic(key)).is_success
        batch = {"batch": [_track("m-3") | {"type": "track"}, _track("m-4") | {"type": "track"}]}
        assert http.post("/v1/batch", json=batch, headers=_basic(key)).json()["accepted"] == 2
        again = http.post("/v1/track", json=_track("m-0"), headers=_basic(key))
        assert again.json()["duplicates"] == 1
        refused = http.post("/v1/track", json={"messageId": "m-bad"}, headers=_basic(key))
        assert refused.status_code == 400
        response = http.get("/metrics", headers=ADMIN)
    after = parse(response.text)
    assert response.headers["content-type"].startswith("text/plain")

    def delta(name: str) -> float:
        return value(after, name, source=source) - value(before, name, source=source)

    assert delta("stagecoach_events_accepted_total") == 6  # the duplicate is acknowledged
    assert delta("stagecoach_events_stored_total") == 5  # but stored once
    # Without definitions every event is worth a signal, and no forwarder runs here.
    assert value(after, "stagecoach_outbox_backlog") == _outbox(engine) == 5
    assert value(after, "stagecoach_outbox_oldest_seconds") >= 0
    assert value(after, "process_resident_memory_bytes") > 0


async def test_a_failed_transaction_counts_its_events_as_refused(tmp_path: Path) -> None:
    down = make_engine("postgresql://u@127.0.0.1:1/none")
    ingestor = Ingestor(down)
    messages = [_incoming("m-1"), _incoming("m-2")]
    before = value(parse(_scrape()), "stagecoach_events_refused_total", reason="database")
    try:
        with pytest.raises(DatabaseError):
            await ingestor.accept(messages)
    finally:
        await ingestor.close()
        down.dispose()
    after = value(parse(_scrape()), "stagecoach_events_refused_total", reason="database")
    assert after - before == 2


def _incoming(message_id: str) -> Incoming:
    parsed = parse_message(_track(message_id) | {"type": "track"}, received_at=datetime.now(UTC))
    assert isinstance(parsed, Incoming)
    return parsed


def _scrape() -> str:
    body, _ = metrics.render(metrics.REGISTRY)
    return body.decode()


def test_the_page_answers_when_the_outbox_cannot_be_read() -> None:
    def broken() -> dict[str, Any]:
        raise DatabaseError("the database did not answer", fix="start it")

    body, _ = metrics.render(metrics.registry_with(metrics.OutboxCollector(broken)))
    samples = parse(body.decode())
    assert ("stagecoach_outbox_backlog", frozenset()) not in samples
    assert ("stagecoach_outbox_forwarded_total", frozenset()) in samples  # the rest answers


def test_openmetrics_is_served_when_prometheus_asks_for_it(tmp_path: Path, engine: Engine) -> None:
    with TestClient(create_app(_settings(tmp_path), db=engine)) as http:
        response = http.get(
            "/metrics", headers={**ADMIN, "Accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


# --- who may read it ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 401), (ADMIN, 200)],
    ids=["no token", "wrong token", "admin token"],
)
def test_metrics_need_the_admin_token_by_default(
    tmp_path: Path, engine: Engine, headers: dict[str, str], status: int
) -> None:
    with TestClient(create_app(_settings(tmp_path), db=engine)) as http:
        response = http.get("/metrics", headers=headers)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "stagecoach_" not in response.text


def test_metrics_are_off_without_an_admin_token_and_say_how_to_turn_them_on(
    tmp_path: Path, engine: Engine
) -> None:
    with TestClient(create_app(_settings(tmp_path, admin_token=None), db=engine)) as http:
        response = http.get("/metrics")
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert "STAGECOACH_ADMIN_TOKEN" in detail
    assert "STAGECOACH_METRICS_PUBLIC" in detail


def test_metrics_public_serves_them_without_a_token(tmp_path: Path, engine: Engine) -> None:
    settings = _settings(tmp_path, admin_token=None, metrics_public=True)
    with TestClient(create_app(settings, db=engine)) as http:
        response = http.get("/metrics")
    assert response.status_code == 200
    assert "stagecoach_outbox_backlog 0.0" in response.text


def test_metrics_public_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGECOACH_METRICS_PUBLIC", "true")
    monkeypatch.setenv("STAGECOACH_WORKER_METRICS_PORT", "off")
    monkeypatch.setenv("STAGECOACH_TEMPORAL_METRICS_PORT", "9100")
    settings = Settings(_env_file=None)
    assert settings.metrics_public is True
    assert (settings.worker_metrics_port, settings.temporal_metrics_port) == (None, 9100)
    assert settings.worker_metrics_host == "127.0.0.1"


def test_the_openapi_document_says_metrics_need_the_admin_token(
    tmp_path: Path, engine: Engine
) -> None:
    with TestClient(create_app(_settings(tmp_path), db=engine)) as http:
        operation = http.get("/openapi.json").json()["paths"]["/metrics"]["get"]
    assert "STAGECOACH_METRICS_PUBLIC" in operation["description"]
    assert {"401", "503"} <= set(operation["responses"])


# --- the forwarder's counters ------------------------------------------------------------


async def test_an_unreachable_temporal_counts_forwarder_failures(
    tmp_path: Path, engine: Engine
) -> None:
    async def unreachable() -> Any:
        raise RuntimeError("connection refused")

    forwarder = Forwarder(engine, _settings(tmp_path), unreachable)
    before = value(parse(_scrape()), "stagecoach_outbox_failures_total", reason="unreachable")
    task = asyncio.create_task(forwarder.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if forwarder.stats.failures:
                break
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    after = value(parse(_scrape()), "stagecoach_outbox_failures_total", reason="unreachable")
    assert after - before == forwarder.stats.failures >= 1


# --- label hygiene and the module's purity -----------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "reason", "label"),
    [
        ("sent", "", "sent"),
        ("blocked", "no_consent:email", "blocked:no_consent"),
        ("blocked", "content_unavailable: stage 'x' has no mapping", "blocked:content_unavailable"),
        ("blocked", "", "blocked:none"),
    ],
)
def test_send_outcomes_keep_only_the_reason_code(outcome: str, reason: str, label: str) -> None:
    assert metrics.send_outcome(outcome, reason) == label


def test_rehearsal_sends_are_not_counted() -> None:
    class Rehearsal:
        channel = f"ch-{uuid.uuid4().hex[:6]}"
        rehearsal = True

    metrics.count_send(Rehearsal(), "sent")
    assert value(parse(_scrape()), "stagecoach_sends_total", channel=Rehearsal.channel) == 0


def test_engine_metrics_imports_no_temporal() -> None:
    probe = "import json, sys, stagecoach.engine.metrics; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout
    )
    assert [m for m in loaded if m.split(".")[0] == "temporalio"] == []


# --- the worker command's metrics ports --------------------------------------------------


def test_the_worker_refuses_one_port_for_both_exporters(tmp_path: Path) -> None:
    from stagecoach.engine.cli.compose import worker_metrics as _worker_metrics

    port = free_port()
    settings = _settings(tmp_path, worker_metrics_port=port, temporal_metrics_port=port)
    with pytest.raises(ConfigurationError, match="STAGECOACH_TEMPORAL_METRICS_PORT"):
        _worker_metrics(settings)


def test_a_taken_metrics_port_names_its_setting(tmp_path: Path) -> None:
    import socket

    from stagecoach.engine.cli.compose import worker_metrics as _worker_metrics

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = _settings(tmp_path, worker_metrics_port=port, temporal_metrics_port=None)
        with pytest.raises(PortInUse) as raised:
            _worker_metrics(settings)
    assert "STAGECOACH_WORKER_METRICS_PORT" in raised.value.fix


def test_the_worker_serves_its_registry_when_the_sdk_port_is_off(tmp_path: Path) -> None:
    from stagecoach.engine.cli.compose import worker_metrics as _worker_metrics

    port = free_port()
    settings = _settings(tmp_path, worker_metrics_port=port, temporal_metrics_port=None)
    assert _worker_metrics(settings) is None  # the default runtime: no SDK exporter
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "stagecoach_sends_total" in text
