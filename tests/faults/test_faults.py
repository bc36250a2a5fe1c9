"""Fault scenarios of the reliability suite: real processes, real servers, loopback only.

Each scenario runs the workload of ``_harness`` (contacts created through the real API,
their events streaming in, the B2B nurture's first send through a real connector to a
local peer), injects its faults, and then reconciles the books: every message received
exactly once at the peer, every accepted event stored once and applied once, every
contact's journey where its history says. Figures go to the terminal (``-s``) and to
``.stagecoach/faults/results.jsonl``.

    pytest tests/faults -m faults -s                            # short form (60 contacts)
    STAGECOACH_FAULT_CONTACTS=500 pytest tests/faults -m faults -s   # full form

Scenarios (numbered as in the issue): 1 worker SIGKILLed 5 times; 2 the Temporal dev
server SIGKILLed and restarted on its SQLite file; 3 the API SIGKILLed with batches in
flight; 4 an SMTP relay that drops connections, answers 421, and refuses one address
with 550; 8 a journey version published mid-run; 9 one of two workers SIGKILLed.

What bounds the time is the product's own waiting, not the load: a SIGKILL that
catches a send in flight costs it the delivery's heartbeat timeout (10 s); a 421 defers
an SMTP send two minutes and a dropped connection 30 s; a publish reaches new contacts
once the API's definitions cache (a minute) turns over. The short form keeps every fault
and every check and shortens that waiting through settings (``_harness.fault_seconds``):
the stack's ``STAGECOACH_RETRY_HINT_MAX_SECONDS`` caps connector hints at 3 s, its
``STAGECOACH_OPENER_TTL_SECONDS`` is 5, the 421 period 5 s. The full form keeps the
product's lengths (no cap, a minute's cache, 120 s of 421). Each length can be set with
``STAGECOACH_FAULT_<NAME>_SECONDS``: ``RETRY_HINT``, ``OPENER_TTL``, ``SMTP_DROP``,
``SMTP_421``, ``LOCK``, ``OUTAGE``, ``CRM_DOWN``, ``TOKEN``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.protocol.search_keys import register_search_attributes
from stagecoach.engine.services.publishing import latest, publish
from stagecoach.engine.temporal.gateway import contact_view
from tests.faults._harness import (
    EVENTS_PER_CONTACT,
    OPENER_TTL,
    WAITING_STEP,
    Books,
    Child,
    Figures,
    Person,
    Stack,
    Workload,
    contact_ids,
    contacts_from_env,
    deliveries,
    drive,
    people,
    seconds,
    until,
)
from tests.helpers import free_port
from tests.peers.http_email import GENERIC, HttpEmailPeer
from tests.peers.smtp import SmtpPeer

pytestmark = pytest.mark.faults

CONTACTS = contacts_from_env()
FULL = CONTACTS >= 500
RATE = 60.0 if not FULL else 150.0
SETTLE = 200.0 if not FULL else 600.0
DROPS = seconds("SMTP_DROP", short=5.0, full=5.0)
"""Scenario 4: how long the relay drops every connection."""
SMTP_421 = seconds("SMTP_421", short=5.0, full=120.0)
"""Scenario 4: how long (at least) the relay answers 421 afterwards."""


def _http_stack(
    tmp_path: Path, env: WorkflowEnvironment, task_queue: str, peer: HttpEmailPeer
) -> Stack:
    return Stack.create(
        tmp_path,
        env.client,
        task_queue,
        email_connector="http",
        email_http_url=peer.generic_url,
        email_http_token=peer.generic_token,
    )


async def _settled(stack: Stack, persons_count: int, ids: dict[str, str], sent: int) -> bool:
    rows = deliveries(stack.engine, ids.values())
    return len(ids) == persons_count and sum(r.status in ("sent", "failed") for r in rows) == sent


async def _settle(
    stack: Stack, persons: list[Person], expected_rows: int, refused: str = ""
) -> float:
    """Wait until every send settled and every contact's workflow finished applying its
    events: counted in ``run_events`` as soon as one is taken up, an event may still be
    on its way to the journey (behind a ``record_transition`` activity that a killed
    worker held, which waits out its 30 s timeout), so the journey step is waited for."""

    async def done() -> bool:
        ids = contact_ids(stack.engine, persons)
        if not await _settled(stack, len(persons), ids, expected_rows):
            return False
        for person in persons:
            view = await contact_view(stack.client, ids[person.user_id])
            if view.run_events < EVENTS_PER_CONTACT:
                return False
            steps = [j["step"] for j in view.journeys if j["journey"] == "b2b_nurture"]
            if person.email != refused and steps != [WAITING_STEP]:
                return False
        return True

    return await until(
        done, within=SETTLE, what="every send settled and every event applied", every=1.0
    )


def _http_books(
    stack: Stack, persons: list[Person], workload: Workload, peer: HttpEmailPeer
) -> Books:
    received = peer.received(GENERIC)
    return Books(
        stack,
        persons,
        workload,
        received=Counter(str(r.body["to"]).lower() for r in received),
        keys=Counter(r.key_digest for r in received),
    )


@pytest.mark.timeout(420 if not FULL else 1800)
async def test_worker_sigkilled_five_times_sends_each_message_once(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    """1. The worker is SIGKILLed at seeded random points, 5 times, restarted each time."""
    seed = 20261122
    chance = random.Random(seed)
    persons = people(f"k{uuid.uuid4().hex[:6]}", CONTACTS)
    started = time.monotonic()
    with HttpEmailPeer() as peer:
        stack = _http_stack(tmp_path, env, task_queue, peer)
        try:
            worker = stack.worker()
            await stack.api()
            faults: list[str] = []

            async def killer() -> None:
                for n in range(5):
                    await asyncio.sleep(chance.uniform(1.0, 4.0))
                    worker.kill()
                    faults.append(f"SIGKILL worker #{n + 1} at {time.monotonic() - started:.1f} s")
                    await asyncio.sleep(chance.uniform(0.0, 1.0))
                    worker.start()

            workload, _ = await asyncio.gather(
                drive(stack.api_url, stack.key, persons, rate=RATE), killer()
            )
            settle = await _settle(stack, persons, CONTACTS)
            figures = Figures(
                f"1 worker SIGKILL x5 (seed {seed})", CONTACTS, workload.rate, faults,
                seconds=time.monotonic() - started, settle_seconds=settle,
            )  # fmt: skip
            await _http_books(stack, persons, workload, peer).check(figures)
            figures.notes = f"peer POSTs {peer.requests['POST /v1/send']}"
            figures.publish()
        finally:
            await stack.close(contact_ids(stack.engine, persons).values())


@pytest.mark.timeout(300 if not FULL else 1800)
async def test_api_sigkilled_with_batches_in_flight_loses_and_doubles_nothing(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    """3. The API is SIGKILLed while batches are in flight; the client resends unanswered
    batches with the same message ids until they are accepted."""
    persons = people(f"a{uuid.uuid4().hex[:6]}", CONTACTS)
    started = time.monotonic()
    with HttpEmailPeer() as peer:
        stack = _http_stack(tmp_path, env, task_queue, peer)
        try:
            stack.worker()
            api = await stack.api()
            faults: list[str] = []

            workload = Workload()

            async def killer() -> None:
                for n in range(3):
                    await asyncio.sleep(1.0)
                    # Kill while a call is in the API's hands: sent, not yet answered.
                    deadline = time.monotonic() + 2.0
                    # A counter another task bumps: polled, the workload knows no event.
                    while workload.in_flight == 0 and time.monotonic() < deadline:  # noqa: ASYNC110
                        await asyncio.sleep(0.002)
                    caught = workload.in_flight
                    api.kill()
                    at = time.monotonic() - started
                    faults.append(f"SIGKILL API #{n + 1} at {at:.1f} s, {caught} calls in flight")
                    await asyncio.sleep(0.5)  # unanswered calls pile up, then are resent
                    await stack.api()

            # Half the rate: the stream outlasts the three kills.
            await asyncio.gather(
                drive(stack.api_url, stack.key, persons, rate=RATE / 2, result=workload),
                killer(),
            )
            settle = await _settle(stack, persons, CONTACTS)
            figures = Figures(
                "3 API SIGKILL x3, batches in flight", CONTACTS, workload.rate, faults,
                seconds=time.monotonic() - started, settle_seconds=settle,
                notes=f"answers {dict(workload.answers)}, "
                f"duplicates the API reported on resends {workload.duplicates_reported}",
            )  # fmt: skip
            await _http_books(stack, persons, workload, peer).check(figures)
            figures.publish()
            assert workload.retries > 0, "no batch caught in flight"
        finally:
            await stack.close(contact_ids(stack.engine, persons).values())


@pytest.mark.timeout(420 if not FULL else 1800)
async def test_smtp_outage_then_a_refused_address_sends_everyone_else_once(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    """4. The SMTP relay drops connections for a while, then answers 421 for a period,
    and refuses one address with 550 throughout: that contact's send fails for good
    (nothing received, its delivery failed); everyone else gets one message."""
    outage = SMTP_421
    persons = people(f"s{uuid.uuid4().hex[:6]}", CONTACTS)
    refused = persons[CONTACTS // 2].email
    started = time.monotonic()
    with SmtpPeer() as peer:
        stack = Stack.create(
            tmp_path, env.client, task_queue,
            email_connector="smtp", smtp_host=peer.host, smtp_port=str(peer.port),
            smtp_security="none",
        )  # fmt: skip
        try:
            stack.worker()
            await stack.api()
            peer.fail_address(refused, "550 5.1.1 mailbox unavailable")
            peer.drop_sessions()
            faults: list[str] = []

            async def relay() -> None:
                # Drops first (the connector retries 30 s later), then 421 for at least
                # ``outage`` and until the retries met it (a 421 defers two minutes; the
                # short form caps both hints at ``RETRY_HINT_MAX``).
                dropped = time.monotonic()
                await asyncio.sleep(DROPS)
                peer.drop_sessions(False)
                faults.append(f"connections cut {DROPS:.0f} s ({peer.sessions} sessions)")
                refusals = max(1, min(10, CONTACTS // 4))
                mails, since = peer.commands["MAIL"], time.monotonic()
                peer.fail_next(refusals, "421 4.3.2 service shutting down, try later")
                # The peer counts on its own thread: polled.
                while time.monotonic() - since < outage or (  # noqa: ASYNC110
                    peer.commands["MAIL"] - mails < refusals and time.monotonic() - since < 90
                ):
                    await asyncio.sleep(0.2)
                peer.clear_faults()
                peer.fail_address(refused, "550 5.1.1 mailbox unavailable")
                given = min(refusals, peer.commands["MAIL"] - mails)
                span = time.monotonic() - since
                faults.append(f"421 for {span:.0f} s ({given} MAILs refused)")
                faults.append("550 at RCPT for one address, throughout")
                assert given > 0, f"the 421 period met no send; {time.monotonic() - dropped:.0f}"

            workload, _ = await asyncio.gather(
                drive(stack.api_url, stack.key, persons, rate=RATE), relay()
            )
            settle = await _settle(stack, persons, CONTACTS, refused)
            accepted = peer.accepted
            figures = Figures(
                "4 SMTP drops, 421 period, 550 one address", CONTACTS, workload.rate, faults,
                seconds=time.monotonic() - started, settle_seconds=settle,
                notes=f"SMTP sessions {peer.sessions}, commands {dict(peer.commands)}",
            )  # fmt: skip
            books = Books(
                stack,
                persons,
                workload,
                received=Counter(a.lower() for m in accepted for a in m.rcpt_tos),
                keys=Counter(m.key_digest for m in accepted),
                refused=frozenset({refused}),
            )
            await books.check(figures)
            figures.publish()
            assert all(m.acknowledged for m in peer.received)
        finally:
            await stack.close(contact_ids(stack.engine, persons).values())


@pytest.mark.timeout(300 if not FULL else 1800)
async def test_one_of_two_workers_stopped_mid_run_the_other_finishes(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    """9. Two workers side by side; one is SIGKILLed mid-run, the other finishes the work."""
    persons = people(f"w{uuid.uuid4().hex[:6]}", CONTACTS)
    started = time.monotonic()
    with HttpEmailPeer() as peer:
        stack = _http_stack(tmp_path, env, task_queue, peer)
        try:
            first, second = stack.worker("worker-a"), stack.worker("worker-b")
            await stack.api()
            faults: list[str] = []

            async def stop_one() -> None:
                await asyncio.sleep(3.0)
                first.signal(signal.SIGKILL)
                faults.append(f"SIGKILL worker-a at {time.monotonic() - started:.1f} s")

            workload, _ = await asyncio.gather(
                drive(stack.api_url, stack.key, persons, rate=RATE), stop_one()
            )
            settle = await _settle(stack, persons, CONTACTS)
            assert not first.alive
            assert second.alive
            assert second.starts == 1
            figures = Figures(
                "9 two workers, one SIGKILLed", CONTACTS, workload.rate, faults,
                seconds=time.monotonic() - started, settle_seconds=settle,
            )  # fmt: skip
            await _http_books(stack, persons, workload, peer).check(figures)
            figures.publish()
        finally:
            await stack.close(contact_ids(stack.engine, persons).values())


class DevServer:
    """A Temporal dev server of this test's own, on a SQLite file that outlives it."""

    def __init__(self, cli: str, tmp: Path) -> None:
        self.port = free_port()
        self.db = tmp / "temporal.db"
        argv = [
            cli, "server", "start-dev", "--db-filename", str(self.db),
            "--ip", "127.0.0.1", "--port", str(self.port), "--headless",
            "--http-port", str(free_port()), "--metrics-port", str(free_port()),
            "--log-level", "error",
        ]  # fmt: skip
        self.child = Child("temporal", argv, dict(os.environ), tmp / "temporal.log")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> Client:
        self.child.start()
        deadline = time.monotonic() + 60
        while True:
            assert self.child.alive, f"the dev server exited: see {self.child.log}"
            try:
                return await Client.connect(self.address)
            except RuntimeError:
                assert time.monotonic() < deadline, f"the dev server is not up: {self.child.log}"
                await asyncio.sleep(0.2)


@pytest.mark.timeout(420 if not FULL else 1800)
async def test_temporal_sigkilled_and_restarted_on_its_database_loses_nothing(
    temporal_cli_path: str, task_queue: str, tmp_path: Path
) -> None:
    """2. The Temporal dev server is SIGKILLed twice mid-run and restarted on the same
    SQLite file and port; the worker and the API's forwarder reconnect by themselves."""
    persons = people(f"t{uuid.uuid4().hex[:6]}", CONTACTS)
    started = time.monotonic()
    server = DevServer(temporal_cli_path, tmp_path)
    client = await server.start()
    await register_search_attributes(client, "default")
    with HttpEmailPeer() as peer:
        stack = Stack.create(
            tmp_path,
            client,
            task_queue,
            email_connector="http",
            email_http_url=peer.generic_url,
            email_http_token=peer.generic_token,
        )
        try:
            stack.worker()
            await stack.api()
            faults: list[str] = []

            async def killer() -> None:
                for n in range(2):
                    await asyncio.sleep(1.0 + n)
                    server.child.kill()
                    at = time.monotonic() - started
                    await asyncio.sleep(2.0)  # down: the forwarder and the worker retry
                    await server.start()
                    faults.append(
                        f"SIGKILL Temporal #{n + 1} at {at:.1f} s, "
                        f"back after {time.monotonic() - started - at:.1f} s"
                    )

            # Half the rate: the stream outlasts both outages.
            workload, _ = await asyncio.gather(
                drive(stack.api_url, stack.key, persons, rate=RATE / 2), killer()
            )
            settle = await _settle(stack, persons, CONTACTS)
            figures = Figures(
                "2 Temporal dev server SIGKILL x2, same db", CONTACTS, workload.rate, faults,
                seconds=time.monotonic() - started, settle_seconds=settle,
                notes=f"peer POSTs {peer.requests['POST /v1/send']}",
            )  # fmt: skip
            await _http_books(stack, persons, workload, peer).check(figures)
            figures.publish()
        finally:
            await stack.close(contact_ids(stack.engine, persons).values())
            server.child.kill()


@pytest.mark.timeout(420 if not FULL else 1800)
async def test_a_journey_published_mid_run_pins_the_in_flight_and_serves_new_entrants(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    """8. A new version of ``b2b_nurture`` is published while the first half of the
    contacts are mid-journey: they stay on their version; the second half, created after
    the API's definitions cache turned over, enter on the new one."""
    everyone = people(f"v{uuid.uuid4().hex[:6]}", CONTACTS)
    early, late = everyone[: CONTACTS // 2], everyone[CONTACTS // 2 :]
    started = time.monotonic()
    with HttpEmailPeer() as peer:
        stack = _http_stack(tmp_path, env, task_queue, peer)
        try:
            stack.worker()
            await stack.api()
            first = await drive(stack.api_url, stack.key, early, rate=RATE)
            await _settle(stack, early, len(early))
            old = latest(stack.engine, "b2b_nurture")
            new = replace(old, description=f"{old.description} (revised)", version="")
            assert publish(stack.engine, new, source="faults").created
            await asyncio.sleep(OPENER_TTL + 1)
            second = await drive(stack.api_url, stack.key, late, rate=RATE)
            settle = await _settle(stack, everyone, CONTACTS)
            workload = Workload(
                accepted=first.accepted | second.accepted,
                calls=first.calls + second.calls,
                retries=first.retries + second.retries,
                seconds=first.seconds + second.seconds,
            )
            ids = contact_ids(stack.engine, everyone)
            pinned = Counter(
                (row.journey_version, row.contact_id in {ids[p.user_id] for p in early})
                for row in deliveries(stack.engine, ids.values())
            )
            figures = Figures(
                "8 journey version published mid-run", CONTACTS, workload.rate,
                [f"published {new.version[:12]} over {old.version[:12]} "
                 f"with {len(early)} contacts mid-journey"],
                seconds=time.monotonic() - started, settle_seconds=settle,
                notes=f"deliveries by (version, in flight at publish): "
                f"{ {(v[:12], f): n for (v, f), n in pinned.items()} }",
            )  # fmt: skip
            await _http_books(stack, everyone, workload, peer).check(figures)
            figures.publish()
            assert pinned == Counter(
                {(old.version, True): len(early), (new.version, False): len(late)}
            )
            for person in everyone:
                view = await contact_view(stack.client, ids[person.user_id])
                (journey,) = view.journeys
                expected = old.version if person in early else new.version
                assert journey["version"] == expected, (person, journey)
        finally:
            await stack.close(contact_ids(stack.engine, everyone).values())
