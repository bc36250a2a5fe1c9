"""``stagecoach contact show|timeline|why`` found by the ids an integrator knows, as a
subprocess against a real Temporal server, with contacts made through the event API."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.services.storage.models import Event
from stagecoach.engine.temporal.gateway import ContactNotFound, contact_view
from tests.workflows.conftest import Runtime, eventually, open_runtime

ROOT = Path(__file__).resolve().parents[3]
OPENID = "oWx1f2G3h4J5k6L7m8N9p0QrStUv"


@pytest.fixture
async def runtime(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> AsyncIterator[Runtime]:
    content = ContentLibrary.load(ROOT / "content")
    async with open_runtime(env, task_queue, tmp_path, content) as runtime:
        yield runtime


@pytest.fixture
def api(runtime: Runtime) -> Iterator[TestClient]:
    """The ingestion API with its outbox forwarder, which starts the contact workflows."""

    with TestClient(runtime.app(), headers=runtime.write_auth("shop")) as client:
        yield client


def _stagecoach(runtime: Runtime, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "STAGECOACH_TEMPORAL_ADDRESS": runtime.client.service_client.config.target_host,
        "STAGECOACH_TEMPORAL_NAMESPACE": runtime.client.namespace,
        "STAGECOACH_DATA_DIR": str(tmp_path / ".stagecoach"),
        "STAGECOACH_DATABASE_URL": runtime.settings.resolved_database_url,
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "stagecoach.engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=tmp_path,
        env=env,
    )


async def _running(runtime: Runtime, contact_id: str) -> bool:
    try:
        await contact_view(runtime.client, contact_id)
    except ContactNotFound:
        return False
    return True


async def test_contact_commands_find_the_contact_by_the_ids_the_integrator_knows(
    runtime: Runtime, api: TestClient, tmp_path: Path
) -> None:
    def post(kind: str, body: dict[str, Any]) -> None:
        response = api.post(f"/v1/{kind}", json=body)
        assert response.status_code == 200, response.text

    post("page", {"anonymousId": "dev-cli-1", "messageId": "cli-page", "name": "Pricing"})
    post(
        "identify",
        {
            "userId": "u-cli-7",
            "messageId": "cli-identify",
            "traits": {
                "email": "Wang.Fang@Example.com",
                "phone": "+86 139 0013 9000",
                "wechat_openid": OPENID,
                "first_name": "Fang",
            },
        },
    )
    post("alias", {"previousId": "dev-cli-1", "userId": "u-cli-7", "messageId": "cli-alias"})
    with Session(runtime.engine) as session:
        contact = session.exec(
            select(Event.contact_id).where(col(Event.message_id) == "cli-identify")
        ).one()
    runtime.touched.add(contact)

    async def started() -> bool:
        if not await _running(runtime, contact):
            return False
        view = await contact_view(runtime.client, contact)
        return bool(view.state["attributes"].get("first_name") == "Fang")

    await eventually(started, within=30)

    calls: dict[str, tuple[str, ...]] = {
        "email": ("contact", "show", "wang.fang@EXAMPLE.com"),
        "phone": ("contact", "show", "139 0013 9000"),  # national, in the default region
        "phone by": ("contact", "show", "+8613900139000", "--by", "phone"),
        "user id": ("contact", "show", "u-cli-7", "--json"),
        "old anonymous id": ("contact", "show", "dev-cli-1"),
        "openid": ("contact", "timeline", OPENID, "--by", "openid"),
        "why": ("contact", "why", "wang.fang@example.com", "b2b_nurture/awareness-whitepaper"),
        "no email": ("contact", "show", "nobody@example.com"),
        "no id": ("contact", "show", "no-such-contact"),
        "bad phone": ("contact", "show", "call me", "--by", "phone"),
        "bad email": ("contact", "timeline", "li.lei@"),
        "bad kind": ("contact", "show", "u-cli-7", "--by", "passport"),
    }
    done = dict(
        zip(
            calls,
            await asyncio.gather(
                *(
                    asyncio.to_thread(_stagecoach, runtime, tmp_path, *args)
                    for args in calls.values()
                )
            ),
            strict=True,
        )
    )
    for name in ("email", "phone", "phone by", "old anonymous id"):
        result = done[name]
        assert result.returncode == 0, (name, result.stderr)
        assert f"contact   {contact}" in result.stdout, (name, result.stdout)
        assert "first_name: Fang" in result.stdout
    assert "found by  email wang.fang@example.com" in done["email"].stdout
    assert "found by  anonymous_id dev-cli-1" in done["old anonymous id"].stdout
    assert json.loads(done["user id"].stdout)["contact_id"] == contact
    assert done["openid"].returncode == 0, done["openid"].stderr
    assert f"created   contact {contact}" in done["openid"].stdout
    assert done["why"].returncode == 0, done["why"].stderr

    def refused(name: str) -> str:
        result = done[name]
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        return result.stderr

    assert "no contact with email nobody@example.com" in refused("no email")
    no_id = refused("no id")
    assert "no contact with id, user_id, anonymous_id, openid, unionid or crm_id" in no_id
    assert "no contact workflow contact-no-such-contact" in no_id
    assert "'call me' is not a phone number" in refused("bad phone")
    assert "is not an email address" in refused("bad email")
    assert "--by 'passport' is not a kind of id" in refused("bad kind")
