"""Exactly once with the worker SIGKILLed mid-send: the production worker (`stagecoach
worker`, its own process) sends through the HTTP email connector to a local provider
that takes each message in and then stalls before answering. The worker is killed
while sends hang, restarted, and every contact still gets exactly one message: the
retry carries the same idempotency key and the provider recognises it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import Session, col, select
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.protocol.messages import EventMessage, contact_workflow_id
from stagecoach.engine.services.storage.models import Delivery
from stagecoach.engine.temporal.gateway import send_event
from tests.helpers import migrated_engine, runtime_settings
from tests.peers.http_email import GENERIC, HttpEmailPeer
from tests.workflows.conftest import eventually

ROOT = Path(__file__).resolve().parents[2]
CONTACTS = 6
WHITEPAPER = {"content_id": "wp-digital-transformation", "kind": "whitepaper"}
RETRIED_WITHIN = 40.0
"""Seconds from the restart until every lost send was retried and recorded: the
delivery's heartbeat timeout (10 s) plus the retry's back-off and the worker's start,
short of the 60 s start-to-close that bounded it before the activity heartbeated."""


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "stagecoach.engine.cli", "worker"],
        env=env,
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _sent(engine: object, ids: list[str]) -> int:
    with Session(engine) as session:  # type: ignore[arg-type]
        rows = session.exec(
            select(Delivery).where(col(Delivery.contact_id).in_(ids), Delivery.status == "sent")
        ).all()
    return len(rows)


@pytest.mark.timeout(240)
async def test_a_worker_killed_mid_send_and_restarted_sends_each_message_once(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    settings = runtime_settings(tmp_path, task_queue)
    engine = migrated_engine(settings.resolved_database_url)
    ids = [f"kill-{n}" for n in range(CONTACTS)]
    with HttpEmailPeer() as peer:
        peer.stall_next(8.0, count=CONTACTS)  # each is taken in, then the answer hangs
        child_env = dict(os.environ)
        child_env.update(
            STAGECOACH_DATA_DIR=str(settings.data_dir),
            STAGECOACH_DATABASE_URL=settings.resolved_database_url,
            STAGECOACH_TEMPORAL_ADDRESS=env.client.service_client.config.target_host,
            STAGECOACH_TEMPORAL_TASK_QUEUE=task_queue,
            STAGECOACH_CONTENT_DIR=str(ROOT / "content"),
            STAGECOACH_QUIET_HOURS_START="00:00",
            STAGECOACH_QUIET_HOURS_END="00:00",
            STAGECOACH_FREQUENCY_CAP="0",
            STAGECOACH_EMAIL_CONNECTOR="http",
            STAGECOACH_EMAIL_HTTP_URL=peer.generic_url,
            STAGECOACH_EMAIL_HTTP_TOKEN=peer.generic_token,
            STAGECOACH_LOG_FORMAT="json",
            STAGECOACH_WORKER_METRICS_PORT="off",
            STAGECOACH_TEMPORAL_METRICS_PORT="off",
        )
        log = tmp_path / "worker.log"
        worker = _worker(child_env, log)
        try:
            for n, contact_id in enumerate(ids):
                await send_event(
                    env.client,
                    settings,
                    contact_id,
                    EventMessage(
                        message_id=f"{contact_id}-dl",
                        type="content.downloaded",
                        occurred_at=datetime.now(UTC),
                        properties=WHITEPAPER,
                        traits={"email": f"kill{n}@example.com", "locale": "en", "timezone": "UTC"},
                        source="test",
                    ),
                )

            async def all_taken_in() -> bool:
                return len(peer.received(GENERIC)) == CONTACTS

            await eventually(all_taken_in, within=60)
            # Every message is at the provider; no answer has come back. Kill now.
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            assert _sent(engine, ids) == 0  # the ledger never learned the sends succeeded
            worker = _worker(child_env, log)

            # The lost attempts stop heartbeating: they time out on the heartbeat timeout
            # (seconds), not the 60 s start-to-close, and are retried with the same keys:
            # the provider answers "already accepted". Well inside the 60 s, even with the
            # new worker's start-up on a loaded machine.
            async def all_recorded_sent() -> bool:
                return _sent(engine, ids) == CONTACTS

            await eventually(all_recorded_sent, within=RETRIED_WITHIN)
        finally:
            worker.kill()
            worker.wait(timeout=10)
            for contact_id in ids:
                handle = env.client.get_workflow_handle(contact_workflow_id(contact_id))
                with contextlib.suppress(RPCError):  # already gone is fine
                    await handle.terminate(reason="test finished")
        per_recipient = Counter(str(r.body["to"]) for r in peer.received(GENERIC))
        assert per_recipient == Counter({f"kill{n}@example.com": 1 for n in range(CONTACTS)})
        assert peer.requests["POST /v1/send"] >= 2 * CONTACTS  # each was really resent
    engine.dispose()
