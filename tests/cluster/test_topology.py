"""The production topology on the real cluster (``topology``: two API replicas, two
workers, the Temporal server and Stagecoach's database on one PostgreSQL), and the fault
harness's short forms on it.

The workload and the books are the fault harness's (``tests.faults._harness``): contacts
identified, their page views and whitepaper download streamed in as Segment batches
(each contact's events to one of the two APIs), the B2B nurture's first send through the
HTTP email connector to a local provider. The books: each message received once, each
accepted event stored once and applied once, the outbox drained, each journey waiting
at its three-day pause. The faults a multi-process deployment meets:

- a worker SIGKILLed (twice), its twin carrying on and the killed one restarted;
- the Temporal server SIGKILLed with events and sends in flight, then started again on
  the same PostgreSQL databases;
- PostgreSQL restarted (a fast shutdown) under the server and Stagecoach at once;
- one API replica paused (SIGSTOP) with its forwarder's signals in flight until it lost
  its outbox leases, then resumed (SIGCONT): its stale write is fenced;
- an API replica SIGKILLed with batches in flight, the clients (behind a load balancer)
  failing over to the other replica by resending.

The scenarios share the module's topology (starting it costs more than any of them),
each with contacts of its own; a fault is over, and the topology whole again, when its
test ends. The full forms, as for ``tests/faults``: ``STAGECOACH_FAULT_CONTACTS=500``
(contacts per scenario; 16 by default) at 150 events a second, not part of ``make test``::

    STAGECOACH_FAULT_CONTACTS=500 pytest tests/cluster/test_topology.py -m cluster -s
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Awaitable, Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func
from sqlmodel import Session, col, select

from stagecoach.engine.protocol import DELIVER_ACTIVITY
from stagecoach.engine.protocol.messages import contact_workflow_id
from stagecoach.engine.services.ingest._forwarder import BUCKET_LEASE
from stagecoach.engine.services.storage.models import (
    OUTBOX_BUCKETS,
    BroadcastRecipient,
    Lease,
    Outbox,
)
from tests.cluster._topology import Balancer, Topology, drive_both
from tests.cluster.conftest import ADMIN, BROADCAST_RATE, LEASE
from tests.faults._harness import (
    FULL,
    Figures,
    Workload,
    contact_ids,
    contacts_from_env,
    drive,
    people,
    until,
)
from tests.faults.test_faults import _settle
from tests.workflows.test_broadcasts import AUDIENCE as AUDIENCE_SEGMENT
from tests.workflows.test_broadcasts import CONTENT, seed_audience

pytestmark = pytest.mark.cluster

CONTACTS = contacts_from_env(16)
RATE = 30.0 if not FULL else 150.0
"""Events a second in the fault scenarios: the 80 events stream for about 3 s (the full
form's 2,500 for about 17 s), so each fault lands mid-stream."""
TIMEOUT = 240 if not FULL else 1800


def _worker_pids(topology: Topology) -> set[str]:
    return {
        str(child.proc.pid)
        for name, child in topology.stack.children.items()
        if name.startswith("worker") and child.proc is not None and child.alive
    }


async def _scenario(
    topology: Topology,
    name: str,
    fault: Callable[[float], Awaitable[list[str]]] | None = None,
    rate: float = 60.0,
) -> list[str]:
    """Drive ``CONTACTS`` new contacts through both APIs while ``fault`` runs, settle,
    check the books; returns the contacts' ids."""
    stack = topology.stack
    persons = people(f"c{uuid.uuid4().hex[:6]}", CONTACTS)
    started = time.monotonic()

    async def no_fault(_: float) -> list[str]:
        return []

    workload, faults = await asyncio.gather(
        drive_both(stack, topology.apis, persons, rate=rate), (fault or no_fault)(started)
    )
    settle = await _settle(stack, persons, CONTACTS)
    figures = Figures(
        f"cluster: {name}", CONTACTS, workload.rate, faults,
        seconds=time.monotonic() - started, settle_seconds=settle,
        notes=f"answers {dict(workload.answers)}",
    )  # fmt: skip
    await topology.books(persons, workload).check(figures)
    figures.publish()
    return list(contact_ids(stack.engine, persons).values())


@pytest.mark.timeout(TIMEOUT)
async def test_a_journey_runs_through_two_api_replicas_and_two_workers(
    topology: Topology,
) -> None:
    contacts = await _scenario(topology, "2 APIs, 2 workers")
    # Both workers ran the contacts' workflows: the identities (pid@host) that completed
    # their workflow tasks and started their activities.
    identities: set[str] = set()
    send_queues: set[str] = set()
    for contact_id in contacts:
        handle = topology.stack.client.get_workflow_handle(contact_workflow_id(contact_id))
        async for event in handle.fetch_history_events():
            if event.HasField("workflow_task_completed_event_attributes"):
                identities.add(event.workflow_task_completed_event_attributes.identity)
            if event.HasField("activity_task_started_event_attributes"):
                identities.add(event.activity_task_started_event_attributes.identity)
            scheduled = event.activity_task_scheduled_event_attributes
            if event.HasField("activity_task_scheduled_event_attributes") and (
                scheduled.activity_type.name == DELIVER_ACTIVITY
            ):
                send_queues.add(scheduled.task_queue.name)
    # With STAGECOACH_EMAIL_RATE set, every email went through the email send queue,
    # which the worker processes poll under its queue-wide rate.
    queue = topology.stack.settings.temporal_task_queue
    assert send_queues == {f"{queue}-send-email"}, send_queues
    pids = {i.split("@", 1)[0] for i in identities}
    assert len(pids & _worker_pids(topology)) == 2, identities


AUDIENCE = 160


@pytest.mark.timeout(TIMEOUT)
async def test_the_broadcast_rate_holds_across_two_worker_processes(topology: Topology) -> None:
    """``STAGECOACH_BROADCAST_RATE`` is the broadcast task queue's activity rate, which
    the server enforces across every worker polling it: two worker processes on the
    cluster together send no faster than the rate (160 recipients at 20 a second: at
    least 8 s less one second's burst; at 1,000 a second the two workers sent them in
    0.7 s). Only the lower bound is asserted: a loaded machine makes a run slower,
    never faster."""
    stack = topology.stack
    seed_audience(stack.engine, [{"id": f"r{n:03}"} for n in range(AUDIENCE)])
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=topology.apis[1], headers=auth) as http:
        made = await http.post(
            "/v1/broadcasts",
            json={"name": "paced", "segment": AUDIENCE_SEGMENT.name, "content": CONTENT},
        )
        assert made.status_code == 201, made.text
        launched = await http.post("/v1/broadcasts/paced/schedule")
        assert launched.status_code == 202, launched.text

        async def completed() -> bool:
            return bool((await http.get("/v1/broadcasts/paced")).json()["status"] == "completed")

        await until(completed, within=120, what="the broadcast completed")
    with Session(stack.engine) as session:
        sent = session.exec(
            select(col(BroadcastRecipient.sent_at)).where(
                col(BroadcastRecipient.broadcast_id) == "paced",
                col(BroadcastRecipient.status) == "sent",
            )
        ).all()
    at = sorted(t for t in sent if t is not None)
    assert len(at) == AUDIENCE
    ours = [r for r in topology.peer.received() if str(r.body["to"]).startswith("r")]
    assert len(ours) == AUDIENCE == len({r.body["to"] for r in ours}), len(ours)
    elapsed = (at[-1] - at[0]).total_seconds()
    print(f"\n  {AUDIENCE} sends at {BROADCAST_RATE:.0f}/s on 2 workers: {elapsed:.1f} s")
    assert elapsed >= AUDIENCE / BROADCAST_RATE - 1.0, elapsed

    # Both worker processes took batches.
    handle = stack.client.get_workflow_handle("broadcast-paced")
    identities = {
        event.activity_task_started_event_attributes.identity.split("@", 1)[0]
        async for event in handle.fetch_history_events()
        if event.HasField("activity_task_started_event_attributes")
    }
    assert len(identities & _worker_pids(topology)) == 2, identities


@pytest.mark.timeout(TIMEOUT)
async def test_a_worker_sigkilled_twice_beside_its_twin_sends_each_message_once(
    topology: Topology,
) -> None:
    async def kill_worker(started: float) -> list[str]:
        faults = []
        for n in range(2):
            await asyncio.sleep(1.0)
            topology.stack.children["worker-1"].kill()
            faults.append(f"SIGKILL worker-1 #{n + 1} at {time.monotonic() - started:.1f} s")
            await asyncio.sleep(0.3)
            topology.stack.worker("worker-1")
        return faults

    await _scenario(topology, "worker SIGKILL x2", kill_worker, rate=RATE)


@pytest.mark.timeout(TIMEOUT)
async def test_the_temporal_server_sigkilled_and_restarted_loses_and_doubles_nothing(
    topology: Topology,
) -> None:
    server = topology.cluster.temporal

    async def kill_server(started: float) -> list[str]:
        await asyncio.sleep(1.2)
        server.kill()
        at = time.monotonic() - started
        await asyncio.sleep(1.0)
        server.start()
        await server.ready()
        back = time.monotonic() - started
        return [f"SIGKILL Temporal server at {at:.1f} s, serving again at {back:.1f} s"]

    await _scenario(topology, "Temporal server SIGKILL", kill_server, rate=RATE)


@pytest.mark.timeout(TIMEOUT)
async def test_postgresql_restarted_under_the_server_and_stagecoach_loses_nothing(
    topology: Topology,
) -> None:
    postgres = topology.cluster.postgres

    async def restart_postgres(started: float) -> list[str]:
        await asyncio.sleep(1.2)
        postgres.stop()
        at = time.monotonic() - started
        await asyncio.sleep(1.0)
        postgres.start()
        await postgres.ready()
        back = time.monotonic() - started
        return [f"PostgreSQL stopped (fast) at {at:.1f} s, accepting again at {back:.1f} s"]

    await _scenario(topology, "PostgreSQL restart", restart_postgres, rate=RATE)


async def _outbox_metrics(url: str) -> dict[str, float]:
    """The replica's ``stagecoach_outbox_*`` samples from its ``/metrics``."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        text = (await http.get(f"{url}/metrics", timeout=5)).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("stagecoach_outbox")
    }


async def _metric(url: str, name: str) -> float:
    try:
        return (await _outbox_metrics(url)).get(name, 0.0)
    except httpx.HTTPError:
        return -1.0


def _waiting_in_buckets_of(topology: Topology, pid: int) -> bool:
    """Whether outbox rows wait in the buckets whose lease the process ``pid`` holds (a
    holder is named ``host:pid:random``)."""
    with Session(topology.stack.engine) as session:
        leases = session.exec(
            select(col(Lease.name), col(Lease.holder)).where(
                col(Lease.name).startswith(BUCKET_LEASE)
            )
        ).all()
        buckets = [
            int(name.removeprefix(BUCKET_LEASE))
            for name, holder in leases
            if holder.split(":")[1:2] == [str(pid)]
        ]
        waiting = session.exec(
            select(func.count()).select_from(Outbox).where(col(Outbox.bucket).in_(buckets))
        ).one()
        return int(waiting) > 0


@pytest.mark.timeout(TIMEOUT)
async def test_an_api_replica_paused_past_its_lease_is_fenced_when_it_resumes(
    topology: Topology,
) -> None:
    """The API replica ``api`` is frozen (SIGSTOP, as a long GC pause or a frozen VM
    would) while its forwarder has signals in flight, for longer than its outbox leases
    (``LEASE``); ``api-2`` takes every bucket and forwards them; then ``api`` resumes.

    To be sure the pause lands mid-send, the Temporal server is frozen first, for under
    a second: the forwarders' signals wait unanswered, ``api`` is frozen with rows of its
    buckets read and their signals sent, and the server resumes (answering them into a
    process that cannot read the answer yet). Resumed, ``api`` gets Temporal's
    acceptance and tries to delete those rows: fencing refuses the delete (its token on
    the bucket moved to ``api-2``), which ``api`` counts in
    ``stagecoach_outbox_duplicates_total`` (or, for rows it had not signalled yet, in
    ``stagecoach_outbox_fenced_total``). ``api-2`` has signalled them again, and the
    workflows dropped the copies by message id: the books hold."""
    stack = topology.stack
    ours, other = topology.apis
    replica = stack.children["api"]
    assert replica.proc is not None
    assert topology.cluster.temporal.child is not None
    server = topology.cluster.temporal.child.proc
    assert server is not None
    stale = ("stagecoach_outbox_duplicates_total", "stagecoach_outbox_fenced_total")
    before = await _outbox_metrics(ours)

    async def refused() -> bool:
        now = await _outbox_metrics(ours)
        return sum(now.get(n, 0.0) - before.get(n, 0.0) for n in stale) > 0

    async def holds_all(url: str) -> bool:
        return await _metric(url, "stagecoach_outbox_buckets") == OUTBOX_BUCKETS

    async def split() -> bool:
        half = OUTBOX_BUCKETS // 2
        return (
            await _metric(ours, "stagecoach_outbox_buckets")
            == half
            == await _metric(other, "stagecoach_outbox_buckets")
        )

    async def pause(started: float) -> list[str]:
        assert replica.proc is not None
        pid = replica.proc.pid
        await asyncio.sleep(1.0)
        server.send_signal(signal.SIGSTOP)
        try:
            await until(
                lambda: asyncio.to_thread(_waiting_in_buckets_of, topology, pid),
                within=10,
                what="an event waiting in the buckets of api",
                every=0.05,
            )
            # api's forwarder looks every 0.1 s: by now it has read the rows and its
            # signals are on the wire, unanswered.
            await asyncio.sleep(0.3)
            replica.proc.send_signal(signal.SIGSTOP)
        finally:
            server.send_signal(signal.SIGCONT)
        frozen = time.monotonic()
        try:
            took = await until(
                lambda: holds_all(other), within=10 * LEASE, what="api-2 holds every bucket",
                every=0.1,
            )  # fmt: skip
            await asyncio.sleep(LEASE / 2)  # api-2 forwards the rows api had in hand
        finally:
            replica.proc.send_signal(signal.SIGCONT)
        paused = time.monotonic() - frozen
        await until(refused, within=10 * LEASE, what="api's stale write refused", every=0.1)
        await until(split, within=10 * LEASE, what="the buckets shared again", every=0.1)
        counted = await _outbox_metrics(ours)
        delta = {n: counted.get(n, 0.0) - before.get(n, 0.0) for n in stale}
        assert paused > LEASE, paused
        fenced = ", ".join(f"{n.split('_')[2]} +{v:.0f}" for n, v in delta.items())
        return [
            f"SIGSTOP api at {frozen - started:.1f} s, signals in flight; api-2 held every "
            f"bucket {took:.1f} s later; SIGCONT api after {paused:.1f} s (lease {LEASE:.0f} s)",
            f"api's stale rows refused: {fenced}",
        ]

    await _scenario(topology, "API replica paused past its lease", pause, rate=RATE)


@pytest.mark.timeout(TIMEOUT)
async def test_an_api_replica_sigkilled_with_batches_in_flight_fails_over_and_loses_nothing(
    topology: Topology,
) -> None:
    """Clients reach the replicas through a balancer that sends them to api-2 while it is
    up, else to the first; api-2 is SIGKILLed while calls are in its hands. Unanswered
    calls are resent with the same message ids and land on the other replica. (Last in
    the module: the killed replica stays down.)"""
    stack = topology.stack
    balancer = Balancer(list(reversed(topology.apis)))
    url = await balancer.start()
    persons = people(f"c{uuid.uuid4().hex[:6]}", CONTACTS)
    workload = Workload()
    started = time.monotonic()
    victim = stack.children["api-2"]

    async def kill_replica() -> list[str]:
        await asyncio.sleep(1.0)
        # Kill with a call in its hands: freeze api-2 first, so that a call sent after the
        # freeze cannot be answered (its answer can no longer be on the wire when the kill
        # lands, which a bare in-flight count cannot promise), then SIGKILL it.
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGSTOP)
        calls_at_freeze = workload.calls
        deadline = time.monotonic() + 3.0
        while (  # noqa: ASYNC110
            workload.calls == calls_at_freeze or workload.in_flight == 0
        ) and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        caught = workload.in_flight
        victim.kill()
        return [f"SIGKILL api-2 at {time.monotonic() - started:.1f} s, {caught} calls in flight"]

    try:
        _, faults = await asyncio.gather(
            drive(url, stack.key, persons, rate=RATE, result=workload), kill_replica()
        )
        settle = await _settle(stack, persons, CONTACTS)
    finally:
        await balancer.stop()
    figures = Figures(
        "cluster: API replica SIGKILL, failover", CONTACTS, workload.rate, faults,
        seconds=time.monotonic() - started, settle_seconds=settle,
        notes=f"answers {dict(workload.answers)}, connections {dict(balancer.connections)}, "
        f"duplicates the API reported on resends {workload.duplicates_reported}",
    )  # fmt: skip
    await topology.books(persons, workload).check(figures)
    figures.publish()
    assert len(balancer.connections) == 2, "both replicas took calls"
    assert workload.retries > 0, "no call was caught by the kill"
