"""The customer-value refresh on a Temporal Schedule: real dev server, the production
worker with the value activity, the API's outbox forwarder carrying ``value.scored`` to
the contact's workflow, and ``stagecoach value refresh --schedule-now`` triggering it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select
from temporalio.client import Client, ScheduleActionExecutionStartWorkflow, ScheduleHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.cli.compose import build_activities, build_value_activities
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.protocol.messages import contact_workflow_id
from stagecoach.engine.services.storage.models import ContactValue, Event
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.gateway import ContactNotFound, contact_view
from stagecoach.workflows.client import with_settings
from stagecoach.workflows.prediction.schedule import schedule_id as retrain_schedule_id
from stagecoach.workflows.value.schedule import ensure_value_schedule, schedule_id
from stagecoach.workflows.worker import build_worker
from tests.helpers import migrated_engine, runtime_settings
from tests.workflows.conftest import Runtime, eventually, record_workflow_history


def _cli(
    env: WorkflowEnvironment, settings: Settings, *args: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    values = {
        **os.environ,
        "STAGECOACH_TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "STAGECOACH_TEMPORAL_NAMESPACE": env.client.namespace,
        "STAGECOACH_TEMPORAL_TASK_QUEUE": settings.temporal_task_queue,
        "STAGECOACH_DATA_DIR": str(settings.data_dir),
        "STAGECOACH_DATABASE_URL": settings.resolved_database_url,
        **extra,
    }
    return subprocess.run(
        [sys.executable, "-m", "stagecoach.engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=values,
    )


def _order(user: str, n: int, at: datetime, amount: int) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": user,
        "messageId": f"{user}-order-{n}",
        "event": "order.paid",
        "timestamp": at.isoformat(),
        "properties": {
            "order_id": f"{user}-{n}",
            "currency": "CNY",
            "items": [{"product": "sensor-pack", "quantity": 1, "amount": amount}],
        },
        "context": {"traits": {"email": f"{user}@example.cn"}},
    }


async def _schedules(client: Client, sid: str) -> int:
    return len([s async for s in await client.list_schedules() if s.id == sid])


async def test_the_scheduled_refresh_values_a_customer_and_tells_their_workflow(
    env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    content_library: ContentLibrary,
) -> None:
    settings = runtime_settings(tmp_path, task_queue)
    engine = migrated_engine(settings.resolved_database_url)
    client = with_settings(env.client, settings)
    contact = build_activities(engine, settings, content=content_library)
    value = build_value_activities(engine, settings)
    worker = build_worker(client, task_queue=task_queue, activities=[*contact.all(), *value.all()])
    runtime = Runtime(client=client, settings=settings, engine=engine, env=env)
    user = f"buyer-{task_queue}"

    # The worker creates the Schedule at start (run_worker); a second worker starting, or
    # a changed STAGECOACH_VALUE_REFRESH_HOURS, updates it: one Schedule, the new interval.
    handle = await ensure_value_schedule(client, task_queue=task_queue, every=timedelta(days=1))
    again = await ensure_value_schedule(client, task_queue=task_queue, every=timedelta(hours=6))
    assert again.id == handle.id == schedule_id(task_queue)
    [interval] = (await handle.describe()).schedule.spec.intervals
    assert interval.every == timedelta(hours=6)

    async def listed_once() -> bool:  # the schedule list is eventually consistent
        return await _schedules(client, handle.id) == 1

    await eventually(listed_once, within=30)
    try:
        async with worker:

            async def ours() -> Client:
                return client

            with TestClient(runtime.app(ours), headers=runtime.write_auth("shop")) as api:
                now = datetime.now(UTC)
                batch = [
                    _order(user, n, now - timedelta(days=90 - 30 * n), 60 + 10 * n)
                    for n in range(3)
                ]
                answer = api.post("/v1/batch", json={"batch": batch})
                assert answer.status_code == 200, answer.text
                with Session(engine) as session:
                    contact_id = session.exec(
                        select(Event.contact_id).where(col(Event.message_id) == f"{user}-order-0")
                    ).one()
                runtime.touched.add(contact_id)

                # As an operator runs it: the worker picks up the Schedule's run.
                ran = await asyncio.to_thread(
                    _cli, env, settings, "value", "refresh", "--schedule-now", "--timeout", "90"
                )
                assert ran.returncode == 0, ran.stderr
                first_line, body = ran.stdout.split("\n", 1)
                assert first_line == f"triggered schedule {handle.id}"
                result = json.loads(body)
                assert result["version"].startswith("value-")
                assert result["scored"] == 1
                assert result["sent"] == 1
                assert result["orders_left_out"] == 0
                # One customer with a repeat purchase is too few for BG/NBD; the run says so.
                assert result["status"] == "not_enough_data"
                assert any("not enough data" in n for n in result["notes"])
                with Session(engine) as session:
                    stored = session.get(ContactValue, contact_id)
                    assert stored is not None
                    assert stored.model_version == result["version"]

                async def valued() -> bool:
                    try:
                        view = await contact_view(client, contact_id)
                    except ContactNotFound:
                        return False
                    return bool(view.state["attributes"].get("value_model") == result["version"])

                await eventually(valued, within=30)
            attributes = (await contact_view(client, contact_id)).state["attributes"]
            assert attributes["value_tier"] == stored.tier
            assert attributes["value_tier"] in ("A", "B", "C")
            assert attributes["frequency"] == 3
            assert attributes["monetary"] == 60 + 70 + 80

        # The run is the Schedule's: it shows among its recent actions.
        described = await handle.describe()
        assert described.info.recent_actions
        assert await _schedules(client, handle.id) == 1
        started = described.info.recent_actions[-1].action
        assert isinstance(started, ScheduleActionExecutionStartWorkflow)
        await record_workflow_history(
            client, started.workflow_id, "value_refresh_scheduled", started.first_execution_run_id
        )
    finally:
        await handle.delete()
        for contact_id in runtime.touched:
            await env.client.get_workflow_handle(contact_workflow_id(contact_id)).terminate()
        engine.dispose()


async def _exists(handle: ScheduleHandle) -> bool:
    try:
        await handle.describe()
    except RPCError:
        return False
    return True


@pytest.mark.parametrize("hours", ["2", "0"])
async def test_the_worker_creates_the_schedule_at_start_unless_the_setting_is_0(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, hours: str
) -> None:
    settings = runtime_settings(tmp_path, task_queue)
    migrated_engine(settings.resolved_database_url).dispose()
    values = {
        **os.environ,
        "STAGECOACH_TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "STAGECOACH_TEMPORAL_NAMESPACE": env.client.namespace,
        "STAGECOACH_TEMPORAL_TASK_QUEUE": task_queue,
        "STAGECOACH_DATA_DIR": str(settings.data_dir),
        "STAGECOACH_DATABASE_URL": settings.resolved_database_url,
        "STAGECOACH_CONTENT_DIR": str(settings.content_dir),
        "STAGECOACH_WORKER_METRICS_PORT": "off",
        "STAGECOACH_TEMPORAL_METRICS_PORT": "off",
        "STAGECOACH_PROPENSITY_RETRAIN_HOURS": "24",
        "STAGECOACH_VALUE_REFRESH_HOURS": hours,
    }
    ours = env.client.get_schedule_handle(schedule_id(task_queue))
    retrain = env.client.get_schedule_handle(retrain_schedule_id(task_queue))
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stagecoach.engine.cli",
        "worker",
        env=values,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # The worker ensures the value Schedule before the retrain one: once the retrain
        # Schedule exists, the value one exists too, or never will.
        async def retrain_created() -> bool:
            if worker.returncode is not None:
                assert worker.stderr is not None
                raise AssertionError((await worker.stderr.read()).decode())
            return await _exists(retrain)

        await eventually(retrain_created, within=60)
        if hours == "0":
            assert not await _exists(ours)
        else:
            [interval] = (await ours.describe()).schedule.spec.intervals
            assert interval.every == timedelta(hours=2)
    finally:
        if worker.returncode is None:
            worker.terminate()
        await asyncio.wait_for(worker.wait(), timeout=30)
        for handle in (ours, retrain):
            if await _exists(handle):
                await handle.delete()


@pytest.mark.parametrize("hours", ["-1", "soon", "inf", "9000"])
def test_a_bad_refresh_interval_is_refused_naming_the_setting(tmp_path: Path, hours: str) -> None:
    settings = runtime_settings(tmp_path, "unused")
    env = {
        **os.environ,
        "STAGECOACH_DATA_DIR": str(settings.data_dir),
        "STAGECOACH_DATABASE_URL": settings.resolved_database_url,
        # Nothing listens here: the setting must be refused before any connection.
        "STAGECOACH_TEMPORAL_ADDRESS": "127.0.0.1:9",
        "STAGECOACH_VALUE_REFRESH_HOURS": hours,
    }
    for args in (["value", "refresh", "--schedule-now"], ["worker"]):
        ran = subprocess.run(
            [sys.executable, "-m", "stagecoach.engine.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
        assert ran.returncode == 2, (args, ran.stdout, ran.stderr)
        assert "STAGECOACH_VALUE_REFRESH_HOURS is invalid" in ran.stderr, ran.stderr
        assert "correct or unset STAGECOACH_VALUE_REFRESH_HOURS" in ran.stderr, ran.stderr


@pytest.mark.parametrize(
    "extra", [["--dry-run"], ["--as-of", "2026-12-01"], ["--catalog", "x.csv"]]
)
def test_schedule_now_refuses_the_options_of_a_refresh_run_here(
    tmp_path: Path, extra: list[str]
) -> None:
    settings = runtime_settings(tmp_path, "unused")
    ran = _cli_offline(settings, "value", "refresh", "--schedule-now", *extra)
    assert ran.returncode == 2, (ran.stdout, ran.stderr)
    assert "--schedule-now runs the Schedule's refresh" in ran.stderr
    assert "drop those options, or drop --schedule-now" in ran.stderr
    assert "triggered" not in ran.stdout


async def test_schedule_now_with_no_worker_gives_up_after_the_timeout(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    settings = runtime_settings(tmp_path, task_queue)
    try:
        ran = await asyncio.to_thread(
            _cli, env, settings, "value", "refresh", "--schedule-now", "--timeout", "2"
        )
        assert ran.returncode == 2, (ran.stdout, ran.stderr)
        assert ran.stdout.startswith(f"triggered schedule {schedule_id(task_queue)}")
        assert "the value refresh did not finish within 2 s" in ran.stderr
        assert "check that a worker runs on the task queue" in ran.stderr
    finally:
        handle = env.client.get_schedule_handle(schedule_id(task_queue))
        if await _exists(handle):
            await handle.delete()
        # The run the trigger started waits for a worker that never comes.
        async for run in env.client.list_workflows(f"TaskQueue = '{task_queue}'"):
            await env.client.get_workflow_handle(run.id).terminate()


def _cli_offline(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with nothing listening at the Temporal address."""
    values = {
        **os.environ,
        "STAGECOACH_DATA_DIR": str(settings.data_dir),
        "STAGECOACH_DATABASE_URL": settings.resolved_database_url,
        "STAGECOACH_TEMPORAL_ADDRESS": "127.0.0.1:9",
    }
    return subprocess.run(
        [sys.executable, "-m", "stagecoach.engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=values,
    )
