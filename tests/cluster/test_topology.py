"""The production topology on the real cluster: a journey end to end through the public
API, with two API replicas taking the events and two workers running the workflows.

The workload is the fault harness's (``tests.faults._harness``): contacts identified,
their page views and whitepaper download streamed in as Segment batches, the B2B
nurture's first send through the HTTP email connector to a local provider, and the
same books: each message received once, each accepted event stored once and applied
once, the outbox drained, each journey waiting at its three-day pause.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from stagecoach.engine.cli.local_cluster import LocalCluster
from stagecoach.engine.protocol.messages import contact_workflow_id
from tests.cluster._topology import api_replica, cluster_stack, drive_both
from tests.faults._harness import Figures, contact_ids, people, until
from tests.faults.test_faults import _http_books, _settle
from tests.peers.http_email import HttpEmailPeer
from tests.workflows.test_broadcasts import AUDIENCE as AUDIENCE_SEGMENT
from tests.workflows.test_broadcasts import CONTENT, seed_audience

pytestmark = pytest.mark.cluster

CONTACTS = 16
ADMIN = "cluster-admin-token-for-the-rate-test"


@pytest.mark.timeout(240)
async def test_a_journey_runs_through_two_api_replicas_and_two_workers(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    persons = people(f"t{uuid.uuid4().hex[:6]}", CONTACTS)
    started = time.monotonic()
    with HttpEmailPeer() as peer:
        stack = cluster_stack(
            cluster,
            tmp_path,
            email_connector="http",
            email_http_url=peer.generic_url,
            email_http_token=peer.generic_token,
        )
        try:
            stack.worker("worker-1")
            stack.worker("worker-2")
            await stack.api()
            _, second = await api_replica(stack, "api-2")
            workload = await drive_both(stack, [stack.api_url, second], persons)
            settle = await _settle(stack, persons, CONTACTS)
            figures = Figures(
                "cluster: 2 APIs, 2 workers", CONTACTS, workload.rate, [],
                seconds=time.monotonic() - started, settle_seconds=settle,
            )  # fmt: skip
            await _http_books(stack, persons, workload, peer).check(figures)
            figures.publish()

            # Both workers ran the contacts' workflows: the identities that completed
            # their workflow tasks and started their activities.
            identities: set[str] = set()
            for contact_id in contact_ids(stack.engine, persons).values():
                handle = stack.client.get_workflow_handle(contact_workflow_id(contact_id))
                async for event in handle.fetch_history_events():
                    if event.HasField("workflow_task_completed_event_attributes"):
                        identities.add(event.workflow_task_completed_event_attributes.identity)
                    if event.HasField("activity_task_started_event_attributes"):
                        identities.add(event.activity_task_started_event_attributes.identity)
            pids = {str(c.proc.pid) for c in stack.children.values() if c.proc is not None}
            workers = {i for i in identities if i.split("@", 1)[0] in pids}
            assert len(workers) == 2, identities
        finally:
            await stack.close(contact_ids(stack.engine, persons).values())


BROADCAST_RATE = 20.0
BATCH = 10
AUDIENCE = 160


@pytest.mark.timeout(240)
async def test_the_broadcast_rate_holds_across_two_worker_processes(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """``STAGECOACH_BROADCAST_RATE`` is the broadcast task queue's activity rate, which
    the server enforces across every worker polling it: two worker processes on the
    cluster together send no faster than the rate (160 recipients at 20 a second: at
    least 8 s less one second's burst; at 1,000 a second the two workers sent them in 0.7 s).
    Only the lower bound is asserted: a loaded machine makes a run slower, never faster.
    """
    stack = cluster_stack(
        cluster,
        tmp_path,
        broadcast_rate=str(BROADCAST_RATE),
        broadcast_batch_size=str(BATCH),
        admin_token=ADMIN,
    )
    try:
        stack.worker("worker-1")
        stack.worker("worker-2")
        await stack.api()
        seed_audience(stack.engine, [{"id": f"r{n:03}"} for n in range(AUDIENCE)])
        auth = {"Authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=stack.api_url, headers=auth) as http:
            made = await http.post(
                "/v1/broadcasts",
                json={"name": "paced", "segment": AUDIENCE_SEGMENT.name, "content": CONTENT},
            )
            assert made.status_code == 201, made.text
            launched = await http.post("/v1/broadcasts/paced/schedule")
            assert launched.status_code == 202, launched.text

            async def completed() -> bool:
                body = (await http.get("/v1/broadcasts/paced")).json()
                return bool(body["status"] == "completed")

            await until(completed, within=120, what="the broadcast completed")
        sent = sorted(
            p.stat().st_mtime
            for p in (stack.settings.resolved_sink_dir / "email").rglob("*.json")
            if p.parent.name.startswith("r")
        )
        assert len(sent) == AUDIENCE
        elapsed = sent[-1] - sent[0]
        print(f"\n  {AUDIENCE} sends at {BROADCAST_RATE:.0f}/s on 2 workers: {elapsed:.1f} s")
        assert elapsed >= AUDIENCE / BROADCAST_RATE - 1.0, elapsed

        # Both worker processes took batches.
        handle = stack.client.get_workflow_handle("broadcast-paced")
        identities = {
            event.activity_task_started_event_attributes.identity.split("@", 1)[0]
            async for event in handle.fetch_history_events()
            if event.HasField("activity_task_started_event_attributes")
        }
        pids = {str(c.proc.pid) for c in stack.children.values() if c.proc is not None}
        assert len(identities & pids) == 2, (identities, pids)
    finally:
        await stack.close([])
