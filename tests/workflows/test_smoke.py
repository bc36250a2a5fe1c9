"""Smoke tests on real Temporal servers: the dev server and the time-skipping server."""

import asyncio
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from stagecoach.engine.cli.doctor import check_search_attributes, check_worker
from stagecoach.engine.protocol.messages import SystemCheckInput, SystemCheckResult
from stagecoach.engine.settings import Settings
from stagecoach.workflows.system import SystemActivities
from stagecoach.workflows.worker import build_worker


async def test_system_check_runs_on_the_dev_server_through_the_worker_assembly(
    client: Client, task_queue: str, db_engine: Engine
) -> None:
    worker = build_worker(
        client, task_queue=task_queue, activities=SystemActivities(db_engine).all()
    )
    async with worker:
        result = await client.execute_workflow(
            "SystemCheck",
            SystemCheckInput(requested_by="test"),
            id=f"system-check-{uuid.uuid4()}",
            task_queue=task_queue,
            result_type=SystemCheckResult,
        )
    assert result.database_ok
    assert result.task_queue == task_queue


async def test_dev_server_has_the_contact_search_attributes(
    client: Client, settings: Settings
) -> None:
    check = await check_search_attributes(client, settings)
    assert check.ok, check.detail


async def test_doctor_sees_a_polling_worker_and_its_absence(
    client: Client, task_queue: str, db_engine: Engine
) -> None:
    settings = Settings(temporal_task_queue=task_queue)
    assert not (await check_worker(client, settings)).ok
    async with build_worker(
        client, task_queue=task_queue, activities=SystemActivities(db_engine).all()
    ):
        # Pollers register on their first long poll; give the worker a moment to make one.
        for _ in range(50):
            if (await check_worker(client, settings)).ok:
                break
            await asyncio.sleep(0.1)
        assert (await check_worker(client, settings)).ok


@workflow.defn(sandboxed=False)
class SleepThirtyDays:
    @workflow.run
    async def run(self) -> str:
        start = workflow.now()
        await workflow.sleep(timedelta(days=30))
        return (workflow.now() - start).total_seconds().__repr__()


@pytest.mark.time_skipping
async def test_thirty_day_sleep_finishes_in_seconds_on_the_time_skipping_server(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    started = time.monotonic()
    async with Worker(env.client, task_queue=task_queue, workflows=[SleepThirtyDays]):
        elapsed = await env.client.execute_workflow(
            SleepThirtyDays.run, id=f"sleep-{uuid.uuid4()}", task_queue=task_queue
        )
    assert float(elapsed) >= timedelta(days=30).total_seconds()
    # Thirty days went by in far less than a day: skipped, not slept (a generous bound,
    # as the machine may be loaded).
    assert time.monotonic() - started < 120
