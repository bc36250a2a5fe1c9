"""Stagecoach's processes on the cluster, built with the fault harness
(``tests.faults._harness``): a ``Stack`` whose database is a fresh one on the cluster's
PostgreSQL and whose Temporal address is the cluster's server, plus API replicas beside
the harness's own API, each on a port of its own; and the harness's books for one
scenario's contacts on a stack that other scenarios share."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from stagecoach.engine.cli.local_cluster import LocalCluster
from stagecoach.engine.services.publishing import latest_versions
from tests.faults._harness import Books, Child, Person, Stack, Workload, drive, until
from tests.helpers import free_port, fresh_postgres_database
from tests.peers.http_email import GENERIC, HttpEmailPeer


@dataclass
class Topology:
    """The production topology on the cluster: two workers (``worker-1``, ``worker-2``)
    and two API replicas (``apis``) of one stack, sending email to ``peer``."""

    cluster: LocalCluster
    stack: Stack
    peer: HttpEmailPeer
    apis: list[str]

    def books(self, persons: list[Person], workload: Workload) -> Books:
        """The harness's books for ``persons``: what the provider received for them
        (other scenarios on the same stack have other recipients)."""
        ours = {p.email for p in persons}
        received = [r for r in self.peer.received(GENERIC) if str(r.body["to"]).lower() in ours]
        return Books(
            self.stack,
            persons,
            workload,
            received=Counter(str(r.body["to"]).lower() for r in received),
            keys=Counter(r.key_digest for r in received),
        )


def cluster_stack(cluster: LocalCluster, tmp: Path, **connector: str) -> Stack:
    """A stack on ``cluster`` with a task queue and a database of its own."""
    assert cluster.client is not None, "the cluster's backends are not started"
    return Stack.create(
        tmp,
        cluster.client,
        f"cluster-{uuid.uuid4().hex[:12]}",
        database_url=fresh_postgres_database(cluster.postgres.base_url, prefix="c"),
        **connector,
    )


STARTUP = 120.0
"""Seconds a process may take to come up: the harness's 30 s is not enough when the
cluster's tests share two loaded cores with the rest of the suite."""


async def api_replica(stack: Stack, name: str, port: int | None = None) -> tuple[Child, str]:
    """Start an API process of ``stack`` (same database, queue and settings) called
    ``name`` on ``port`` (default: a free one), once a worker published the bundled
    journeys (as the harness's ``Stack.api`` waits for), and return it once it answers
    ``/healthz``. ``name="api"`` on the stack's own port is the harness's API."""
    await until(
        lambda: asyncio.to_thread(lambda: "b2b_nurture" in latest_versions(stack.engine)),
        within=STARTUP,
        what="a worker published the bundled journeys",
        every=0.2,
    )
    port = port or free_port()
    env = {**stack.env, "STAGECOACH_API_PORT": str(port)}
    argv = [sys.executable, "-m", "stagecoach.engine.cli", "api"]
    child = Child(name, argv, env, stack.tmp / f"{name}.log")
    stack.children[name] = child
    child.start()
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as http:
        deadline = time.monotonic() + STARTUP
        while True:
            assert child.alive, f"the API {name} exited: see {child.log}"
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"{url}/healthz")).status_code == 200:
                    return child, url
            assert time.monotonic() < deadline, f"the API {name} is not up: see {child.log}"
            await asyncio.sleep(0.1)


async def drive_both(
    stack: Stack, urls: list[str], persons: list[Person], *, rate: float = 60.0
) -> Workload:
    """The harness's workload, the persons dealt out across ``urls`` in turn (each
    person's events all go to one API, as a client library pinned to one host sends
    them); one ``Workload`` of everything accepted."""
    parts = await asyncio.gather(
        *(
            drive(url, stack.key, persons[n :: len(urls)], rate=rate / len(urls))
            for n, url in enumerate(urls)
        )
    )
    total = Workload()
    for part in parts:
        total.accepted |= part.accepted
        total.calls += part.calls
        total.retries += part.retries
        total.answers.update(part.answers)
        total.duplicates_reported += part.duplicates_reported
        total.seconds = max(total.seconds, part.seconds)
    return total


class Balancer:
    """A TCP balancer in front of the API replicas in failover order: each new connection
    goes to the first replica that accepts it, so a client whose replica died reaches the
    next one on its next attempt (its resend)."""

    def __init__(self, urls: list[str]) -> None:
        self._backends = [tuple(u.removeprefix("http://").rsplit(":", 1)) for u in urls]
        self._server: asyncio.Server | None = None
        self.connections: Counter[str] = Counter()

    async def start(self) -> str:
        port = free_port()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for host, port in self._backends:
            try:
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
            except OSError:
                continue  # that replica is down: the next one
            self.connections[f"{host}:{port}"] += 1
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            return
        writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(Exception):
            sink.close()
