"""``stagecoach contact show`` gives the contact's propensity with its model version and
"as of", next to the rule score; a contact no model has scored says so."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import Session
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.services.storage.models import PropensityModelVersion, PropensityScore
from tests.engine.cli.test_contact_cli import _running, _stagecoach
from tests.workflows.conftest import Runtime, eventually, open_runtime

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
async def runtime(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> AsyncIterator[Runtime]:
    async with open_runtime(env, task_queue, tmp_path, ContentLibrary.load(ROOT / "content")) as rt:
        yield rt


async def test_contact_show_gives_propensity_with_version_and_as_of(
    runtime: Runtime, tmp_path: Path
) -> None:
    contact = f"prop-{tmp_path.name}"
    await runtime.event(contact, "page.viewed")

    async def started() -> bool:
        return await _running(runtime, contact)

    await eventually(started, within=30)
    unscored = await asyncio.to_thread(_stagecoach, runtime, tmp_path, "contact", "show", contact)
    assert unscored.returncode == 0, unscored.stderr
    assert "propensity - (not scored" in unscored.stdout

    at = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    with Session(runtime.engine) as session:
        session.add(
            PropensityModelVersion(
                version=3,
                trained_at=at,
                window_start=at,
                window_end=at,
                target_stage="customer",
                horizon_days=30,
                rows=1,
                customers=1,
                artifact_sha256="0" * 64,
            )
        )
        session.add(
            PropensityScore(
                contact_id=contact,
                model_version=3,
                probability=0.4213,
                scored_at=at,
                top=[{"feature": "events_30d", "value": 12.0, "effect": 0.84}],
            )
        )
        session.commit()
    shown = await asyncio.to_thread(_stagecoach, runtime, tmp_path, "contact", "show", contact)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    score = next(i for i, line in enumerate(lines) if line.startswith("score "))
    assert lines[score + 1] == (
        "propensity 42.1% to reach customer within 30 days (model v3, as of "
        "2026-12-01T06:00:00+00:00); events_30d 12.0 (+0.84)"
    )
    as_json = await asyncio.to_thread(
        _stagecoach, runtime, tmp_path, "contact", "show", contact, "--json"
    )
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert body["propensity"]["model_version"] == 3
    assert body["propensity"]["as_of"] == "2026-12-01T06:00:00+00:00"
    assert body["score"] is not None
