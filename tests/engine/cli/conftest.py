"""Fixtures for CLI tests against the real servers: the content library for a production
worker (``tests.workflows.conftest.open_runtime``), and ``shell``, which runs
``stagecoach`` in a subprocess with the environment a user's shell would have for that
worker's deployment, without blocking the event loop the worker runs on."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
STAGECOACH = [sys.executable, "-m", "stagecoach.engine.cli"]


@pytest.fixture(scope="session")
def content_library() -> ContentLibrary:
    return ContentLibrary.load(ROOT / "content")


@dataclass(frozen=True)
class Shell:
    """``stagecoach`` as a user runs it against one deployment."""

    environ: dict[str, str]
    cwd: Path

    async def run(self, *args: str) -> tuple[int, str, str]:
        """Exit code, stdout and stderr of ``stagecoach *args``."""
        proc = await asyncio.create_subprocess_exec(
            *STAGECOACH,
            *args,
            env=self.environ,
            cwd=self.cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=240)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def shell(env: WorkflowEnvironment, tmp_path: Path) -> Callable[[Settings], Shell]:
    """A ``Shell`` for the deployment ``settings`` describe, on this test's Temporal."""

    def make(settings: Settings) -> Shell:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("STAGECOACH_")}
        environ.update(
            STAGECOACH_DATA_DIR=str(settings.data_dir),
            STAGECOACH_DATABASE_URL=settings.resolved_database_url,
            STAGECOACH_TEMPORAL_ADDRESS=env.client.service_client.config.target_host,
            STAGECOACH_TEMPORAL_TASK_QUEUE=settings.temporal_task_queue,
            STAGECOACH_CONTENT_DIR=str(settings.resolved_content_dir),
            STAGECOACH_LOG_LEVEL="warning",
        )
        return Shell(environ, tmp_path)

    return make
