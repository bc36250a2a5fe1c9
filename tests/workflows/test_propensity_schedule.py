"""Done when (issue 23): a retrain on the Temporal Schedule publishes a new model version
that the next hand-off carries. Real dev server, the production worker and activities,
a migrated SQLite database holding half a year of generated history, the analytics
store on disk, and the file sink standing in for the CRM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from sqlmodel import Session, select
from temporalio.client import Client, ScheduleActionExecutionStartWorkflow, ScheduleHandle
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.cli.compose import build_activities, build_prediction_activities
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.protocol.messages import EventMessage, contact_workflow_id
from stagecoach.engine.services.analytics.store import create_tables
from stagecoach.engine.services.analytics.synthetic import generate, to_database
from stagecoach.engine.services.prediction.model import PropensityModel
from stagecoach.engine.services.storage.models import (
    Contact,
    PropensityModelVersion,
    PropensityScore,
)
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.gateway import send_event
from stagecoach.workflows.client import with_settings
from stagecoach.workflows.prediction.schedule import ensure_retrain_schedule
from stagecoach.workflows.worker import build_worker
from tests.helpers import migrated_engine, runtime_settings
from tests.workflows.conftest import eventually, record_workflow_history

BUYER = {"company_size": 500, "role": "cto", "email": "buyer@example.com"}


def _seed(engine: Any, contacts: int = 2500) -> None:
    con = duckdb.connect()
    create_tables(con)
    now = datetime.now(UTC)
    start = (now - timedelta(days=300)).replace(tzinfo=None)
    generate(con, contacts, events_per_contact=8, start=start, days=300, fit_signal=0.5)
    to_database(con, engine, until=now)
    con.close()


async def _event(client: Client, settings: Settings, contact_id: str, type_: str) -> None:
    message = EventMessage(
        message_id=f"{contact_id}-{type_}",
        type=type_,
        occurred_at=datetime.now(UTC),
        properties={},
        traits=BUYER,
        source="test",
    )
    await send_event(client, settings, contact_id, message)


def _cli(
    env: WorkflowEnvironment, settings: Settings, *args: str
) -> subprocess.CompletedProcess[str]:
    values = {
        **os.environ,
        "STAGECOACH_TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "STAGECOACH_TEMPORAL_NAMESPACE": env.client.namespace,
        "STAGECOACH_TEMPORAL_TASK_QUEUE": settings.temporal_task_queue,
        "STAGECOACH_DATA_DIR": str(settings.data_dir),
        "STAGECOACH_DATABASE_URL": settings.resolved_database_url,
    }
    return subprocess.run(
        [sys.executable, "-m", "stagecoach.engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=values,
    )


def _handoff(sink: Path, contact_id: str) -> dict[str, Any] | None:
    for path in sorted((sink / "crm" / contact_id).glob("*.json")):
        body = json.loads(path.read_text(encoding="utf-8"))["message"]
        if body.get("type") == "handoff":
            return dict(body)
    return None


def _versions(engine: Any) -> list[PropensityModelVersion]:
    with Session(engine) as session:
        return list(session.exec(select(PropensityModelVersion)).all())


async def _retrain_on_schedule(handle: ScheduleHandle, engine: Any, before: int) -> int:
    """Trigger the Schedule now and wait for the version its run publishes."""
    await handle.trigger()

    async def published() -> bool:
        return len(_versions(engine)) > before

    await eventually(published, within=90)

    async def idle() -> bool:
        return not (await handle.describe()).info.running_actions

    await eventually(idle, within=30)
    return max(int(v.version or 0) for v in _versions(engine))


async def test_a_scheduled_retrain_publishes_a_version_the_next_handoff_carries(
    env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    content_library: ContentLibrary,
) -> None:
    settings = runtime_settings(tmp_path, task_queue)
    engine = migrated_engine(settings.resolved_database_url)
    _seed(engine)
    client = with_settings(env.client, settings)
    contact = build_activities(engine, settings, content=content_library)
    prediction = build_prediction_activities(engine, settings)
    worker = build_worker(
        client, task_queue=task_queue, activities=[*contact.all(), *prediction.all()]
    )
    sink = settings.resolved_sink_dir
    first, second = f"lead-a-{task_queue}", f"lead-b-{task_queue}"
    # The worker creates the Schedule at start (run_worker); here the test does, the same way.
    handle = await ensure_retrain_schedule(client, task_queue=task_queue, every=timedelta(days=7))
    # A second worker starting (or a changed setting) updates it rather than failing.
    again = await ensure_retrain_schedule(client, task_queue=task_queue, every=timedelta(days=1))
    assert again.id == handle.id
    [interval] = (await handle.describe()).schedule.spec.intervals
    assert interval.every == timedelta(days=1)
    try:
        async with worker:
            for contact_id in (first, second):
                await _event(client, settings, contact_id, "page.viewed")

            async def both_recorded() -> bool:
                with Session(engine) as session:
                    return all(session.get(Contact, c) is not None for c in (first, second))

            await eventually(both_recorded)

            v1 = await _retrain_on_schedule(handle, engine, before=0)
            started = (await handle.describe()).info.recent_actions[-1].action
            assert isinstance(started, ScheduleActionExecutionStartWorkflow)
            await record_workflow_history(
                client,
                started.workflow_id,
                "propensity_retrain_scheduled",
                started.first_execution_run_id,
            )
            row = next(v for v in _versions(engine) if v.version == v1)
            assert row.metrics["auc"] > 0.7
            assert 0 <= row.metrics["calibration_error"] < 0.1
            assert row.customers >= 50
            assert row.rows > row.customers
            assert row.window_start < row.window_end
            assert "days_in_stage" in row.features
            assert row.target_stage == "customer"
            # The artifact is JSON numbers, loaded back with its hash checked.
            model = PropensityModel.from_json(row.artifact, row.artifact_sha256)
            assert model.vocab.names() == row.features
            with Session(engine) as session:
                scored = session.get(PropensityScore, first)
                assert scored is not None
                assert scored.model_version == v1

            for kind in ("webinar.attended", "demo.requested", "consultation.booked"):
                await _event(client, settings, first, kind)

            async def first_handed_off() -> bool:
                return _handoff(sink, first) is not None

            await eventually(first_handed_off, within=30)
            payload = _handoff(sink, first)
            assert payload is not None
            assert payload["score"]["value"] >= 60  # the rule score, as before
            propensity = payload["propensity"]
            assert propensity["model_version"] == v1
            assert 0.0 <= propensity["probability"] <= 1.0
            assert propensity["as_of"]
            assert propensity["target_stage"] == "customer"
            assert propensity["top_features"]
            assert {"feature", "value", "effect"} <= set(propensity["top_features"][0])

            # The next one as an operator runs it: `stagecoach propensity retrain --wait`.
            ran = await asyncio.to_thread(
                _cli, env, settings, "propensity", "retrain", "--wait", "--timeout", "90"
            )
            assert ran.returncode == 0, ran.stderr
            first_line, answer = ran.stdout.split("\n", 1)
            assert first_line == f"triggered schedule {handle.id}"
            result = json.loads(answer)
            assert result["published"]
            v2 = result["version"]
            assert v2 > v1
            assert max(int(v.version or 0) for v in _versions(engine)) == v2
            assert result["metrics"]["auc"] > 0.7
            for kind in ("webinar.attended", "demo.requested", "consultation.booked"):
                await _event(client, settings, second, kind)

            async def second_handed_off() -> bool:
                return _handoff(sink, second) is not None

            await eventually(second_handed_off, within=30)
            later = _handoff(sink, second)
            assert later is not None
            assert later["propensity"]["model_version"] == v2
    finally:
        await handle.delete()
        for contact_id in (first, second):
            await env.client.get_workflow_handle(contact_workflow_id(contact_id)).terminate()
        engine.dispose()


@pytest.mark.parametrize("contacts", [0, 40])
async def test_too_little_history_publishes_nothing_and_says_how_much(
    tmp_path: Path, contacts: int
) -> None:
    from stagecoach.engine.services.analytics.store import AnalyticsStore
    from stagecoach.engine.services.prediction.propensity import TrainingConfig, retrain

    settings = runtime_settings(tmp_path, "unused")
    engine = migrated_engine(settings.resolved_database_url)
    if contacts:
        _seed(engine, contacts)
    with AnalyticsStore(tmp_path / "a.duckdb") as store:
        result = retrain(
            engine, store, ["suspect", "prospect", "lead", "customer"], TrainingConfig()
        )
    assert not result.published
    assert result.version is None
    found = re.match(r"not enough data: (\d+) customers, need 50", result.reason)
    assert found, result.reason
    assert int(found[1]) < 50
    assert contacts or int(found[1]) == 0
    assert _versions(engine) == []
    engine.dispose()


def test_a_pipeline_without_the_target_stage_publishes_nothing_and_names_the_setting(
    tmp_path: Path,
) -> None:
    from stagecoach.engine.services.analytics.store import AnalyticsStore
    from stagecoach.engine.services.prediction.propensity import TrainingConfig, retrain

    engine = migrated_engine(runtime_settings(tmp_path, "unused").resolved_database_url)
    funnel = ["verification", "development", "proposal", "closing"]
    with AnalyticsStore(tmp_path / "a.duckdb") as store:
        result = retrain(engine, store, funnel, TrainingConfig())
    assert not result.published
    assert "target stage 'customer' is not a stage of the pipeline" in result.reason
    assert "STAGECOACH_PROPENSITY_TARGET_STAGE" in result.reason
    assert _versions(engine) == []
    engine.dispose()
