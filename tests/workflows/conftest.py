"""A contact runtime for workflow tests: the production worker on a fresh task queue,
with a migrated SQLite file, the real content library and a file sink per test."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import Engine
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.api.routes.events import create_write_key
from stagecoach.engine.app import create_app
from stagecoach.engine.cli.compose import build_activities, build_broadcast_activities
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.protocol.connector import Connector
from stagecoach.engine.protocol.messages import EventMessage, contact_workflow_id
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.gateway import send_event
from stagecoach.workflows.client import with_settings
from stagecoach.workflows.runtime import ContactOpener
from stagecoach.workflows.system import SystemActivities
from stagecoach.workflows.worker import build_broadcast_worker, build_send_workers, build_worker
from tests.helpers import migrated_engine, runtime_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def content_library() -> ContentLibrary:
    return ContentLibrary.load(ROOT / "content")


@dataclass
class Runtime:
    client: Client
    settings: Settings
    engine: Engine
    env: WorkflowEnvironment
    touched: set[str] = field(default_factory=set)

    @property
    def sink(self) -> Path:
        return self.settings.resolved_sink_dir

    def app(self, temporal: Callable[[], Awaitable[Client]] | None = None) -> FastAPI:
        """The production API on this runtime's database, its outbox forwarder and
        contact opener signalling this runtime's Temporal (or ``temporal``'s answer)."""

        async def ours() -> Client:
            return self.client

        return create_app(
            self.settings,
            db=self.engine,
            temporal=temporal or ours,
            opener=ContactOpener(self.engine, self.settings),
        )

    def write_key(self, source: str) -> str:
        """A new write key for the event API, scoped to ``source``."""
        return create_write_key(self.engine, source, source=source)

    def write_auth(self, source: str) -> dict[str, str]:
        """Basic-auth headers carrying a new write key scoped to ``source``."""
        token = base64.b64encode(f"{self.write_key(source)}:".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def sent(self, contact_id: str, channel: str = "email") -> list[dict[str, Any]]:
        """Messages the file sink received for a contact, oldest first."""
        folder = self.sink / channel / contact_id
        files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        return [json.loads(p.read_text(encoding="utf-8")) for p in files]

    async def event(
        self,
        contact_id: str,
        type: str,
        *,
        message_id: str | None = None,
        properties: dict[str, Any] | None = None,
        traits: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> EventMessage:
        when = at or await self.now()
        message = EventMessage(
            message_id=message_id or f"{contact_id}-{type}-{when.timestamp()}",
            type=type,
            occurred_at=when,
            properties=properties or {},
            traits=traits or {},
            source="test",
        )
        await send_event(self.client, self.settings, contact_id, message)
        self.touched.add(contact_id)
        if self.env.supports_time_skipping:
            # The Java test server can leave time skipping locked for good when a query
            # reaches a workflow whose task for this signal is still in flight; the
            # next test's sleep then hangs. Let the task finish first.
            await asyncio.sleep(0.5)
        return message

    async def now(self) -> datetime:
        """The server's clock: skipped time included on the time-skipping server."""
        if self.env.supports_time_skipping:
            return await self.env.get_current_time()
        return datetime.now(UTC)


HISTORIES = Path(__file__).with_name("histories")


async def record_history(runtime: Runtime, contact_id: str, name: str) -> None:
    """With STAGECOACH_RECORD_HISTORIES=1, save the contact's newest run history for the
    replay tests; a recorded file is only ever added, never rewritten by a normal run."""
    await record_workflow_history(runtime.client, contact_workflow_id(contact_id), name)


async def record_workflow_history(
    client: Client, workflow_id: str, name: str, run_id: str | None = None
) -> None:
    """``record_history`` for any workflow (a Schedule's run, say) by its id."""
    target = HISTORIES / f"{name}.json"
    if os.environ.get("STAGECOACH_RECORD_HISTORIES") != "1" or target.exists():
        return  # recorded histories are evidence of old code: never rewritten
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    target.write_text(history.to_json(), encoding="utf-8")


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    """Poll ``check`` until it holds; real servers apply signals asynchronously."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            if await check():
                return
        except WorkflowQueryFailedError:
            pass  # queried before the first workflow task built the state: not yet
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


@pytest.fixture
def runtime_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The test's ``@pytest.mark.settings(...)`` keywords; override in a test module to
    change the runtime's settings for all its tests."""
    marker = request.node.get_closest_marker("settings")
    return dict(marker.kwargs) if marker else {}


@contextlib.asynccontextmanager
async def open_runtime(
    env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    content: ContentLibrary,
    *,
    connectors: Mapping[str, Connector] | None = None,
    **overrides: Any,
) -> AsyncIterator[Runtime]:
    """The production worker on ``task_queue``; ``connectors`` replaces the file sink."""
    settings = runtime_settings(tmp_path, task_queue, **overrides)
    engine = migrated_engine(settings.resolved_database_url)
    contact = build_activities(engine, settings, content=content, connectors=connectors)
    broadcasts = build_broadcast_activities(
        engine, settings, content=content, connectors=connectors
    )
    client = with_settings(env.client, settings)  # the payload codec, as connect() gives it
    worker = build_worker(
        client,
        task_queue=task_queue,
        activities=[*SystemActivities(engine).all(), *contact.all(), *broadcasts.all()],
    )
    # The broadcast queue's worker, as `stagecoach worker` runs it beside its own.
    batches = build_broadcast_worker(
        client,
        task_queue=settings.broadcast_task_queue,
        activities=broadcasts.batches(),
        batch_size=settings.broadcast_batch_size,
        rate=settings.broadcast_rate,
    )
    # And the rate-limited channels' send queues, as `stagecoach worker` runs them.
    sends = build_send_workers(
        client, settings.send_queues(), deliver=contact.deliver, hand_off=contact.hand_off
    )
    runtime = Runtime(client=client, settings=settings, engine=engine, env=env)
    async with contextlib.AsyncExitStack() as running:
        for each in (worker, batches, *sends):
            await running.enter_async_context(each)
        yield runtime
        # Contact workflows live forever; left running on a shared server with no worker
        # for their queue, their timers would hold up later tests' time skipping.
        for contact_id in runtime.touched:
            handle = env.client.get_workflow_handle(contact_workflow_id(contact_id))
            with contextlib.suppress(RPCError):
                await handle.terminate(reason="test finished")
    engine.dispose()


@pytest.fixture
async def runtime(
    env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    content_library: ContentLibrary,
    runtime_overrides: dict[str, Any],
) -> AsyncIterator[Runtime]:
    async with open_runtime(
        env, task_queue, tmp_path, content_library, **runtime_overrides
    ) as runtime:
        yield runtime
