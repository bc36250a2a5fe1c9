"""The real cluster for tests marked ``cluster``: PostgreSQL, the Temporal server built
from the Go module proxy (``scripts/temporal-server.sh``) on it, configured by
``docker/temporal/stagecoach.yaml``; the same ``LocalCluster`` that ``stagecoach cluster
up`` runs (``stagecoach.engine.cli.local_cluster``).

``cluster``: started once per module (about 4 s) on free ports, stopped after it; a
module's faults (the server or PostgreSQL killed) stay in that module.

``topology``: the production topology on it, once per module: two workers and two API
replicas (``tests.cluster._topology``) on a database of their own on the cluster's
PostgreSQL, sending email to a local HTTP provider; the broadcast rate is
``BROADCAST_RATE``, the replicas' lease ``LEASE`` seconds and ``ADMIN`` is the admin
token. Each test drives contacts of its own through it and checks the books for those.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stagecoach.engine.cli.local_cluster import LocalCluster, find_postgres
from tests.cluster._topology import Topology, api_replica, cluster_stack
from tests.helpers import free_port
from tests.peers.http_email import HttpEmailPeer

ROOT = Path(__file__).resolve().parents[2]
BROADCAST_RATE = 20.0
BROADCAST_BATCH = 10
EMAIL_RATE = 50.0
"""``STAGECOACH_EMAIL_RATE``: journeys' emails run on the email send queue, which each
worker process polls under this queue-wide rate (high enough not to pace the scenarios)."""
ADMIN = "cluster-admin-token-for-the-rate-test"
LEASE = 2.0
"""``STAGECOACH_LEASE_SECONDS`` of the topology's API replicas (10 s by default): a
replica paused or killed loses its outbox buckets within seconds, so the scenarios that
wait a lease out stay short."""


def _script_output(script: str) -> Path:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / script)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/{script} failed: {result.stderr.strip()}")
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def temporal_server_bin() -> Path:
    """The directory of ``temporal-server`` and ``temporal-sql-tool`` (built once, cached;
    ``TEMPORAL_SERVER_PATH`` overrides)."""
    return _script_output("temporal-server.sh")


@pytest.fixture(scope="session")
def postgres_bin() -> Path:
    _script_output("postgres.sh")  # installs Debian's package if it is missing
    return find_postgres()


@pytest.fixture(scope="module")
async def cluster(temporal_server_bin: Path, postgres_bin: Path) -> AsyncIterator[LocalCluster]:
    # Not under pytest's tmp_path: PostgreSQL runs as the user postgres (when the
    # suite runs as root), which cannot enter pytest's private folders.
    root = Path(tempfile.mkdtemp(prefix="stagecoach-cluster-"))
    os.chmod(root, 0o711)  # noqa: S103  (enter only: the postgres user needs its subfolder)
    local = LocalCluster(
        root,
        server_bin=temporal_server_bin,
        postgres_bin=postgres_bin,
        pick_port=free_port,
        durable=False,
    )
    try:
        await local.start_backends()
        yield local
    finally:
        local.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
async def topology(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Topology]:
    with HttpEmailPeer() as peer:
        stack = cluster_stack(
            cluster,
            tmp_path_factory.mktemp("topology"),
            email_connector="http",
            email_http_url=peer.generic_url,
            email_http_token=peer.generic_token,
            broadcast_rate=str(BROADCAST_RATE),
            broadcast_batch_size=str(BROADCAST_BATCH),
            email_rate=str(EMAIL_RATE),
            admin_token=ADMIN,
            lease_seconds=str(LEASE),
        )
        try:
            stack.worker("worker-1")
            stack.worker("worker-2")
            (_, first), (_, second) = await asyncio.gather(
                api_replica(stack, "api", stack.settings.api_port), api_replica(stack, "api-2")
            )
            yield Topology(cluster, stack, peer, [first, second])
        finally:
            await stack.close([])
