"""``stagecoach cluster up``: the production topology on this host, without Docker
(``stagecoach.engine.cli.local_cluster`` starts it; docs/operations/cluster.md).

Registered by the CLI's composition root (``app.add_typer(cluster_app, name="cluster")``).
The Temporal SDK is imported only when the command runs, so ``stagecoach --help`` stays
quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stagecoach.engine.domain.errors import ProcessFailed
from stagecoach.engine.settings import Settings

if TYPE_CHECKING:
    from stagecoach.engine.cli.local_cluster import LocalCluster


cluster_app = typer.Typer(
    help="Stagecoach's production topology on this host: PostgreSQL, the real Temporal "
    "server, several workers and API replicas (docs/operations/cluster.md).",
    no_args_is_help=True,
)


@cluster_app.command("up")
def up(
    workers: Annotated[int, typer.Option(min=1, max=16, help="Worker processes.")] = 2,
    apis: Annotated[
        int,
        typer.Option(
            min=1, max=16, help="API replicas, on STAGECOACH_API_PORT and the ports after it."
        ),
    ] = 2,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Where PostgreSQL's data and the logs are kept (default: <data_dir>/cluster).",
        ),
    ] = None,
) -> None:
    """Start PostgreSQL, the Temporal server on it, the workers and the API replicas;
    Ctrl-C stops them all. A second run keeps the data."""
    from stagecoach.engine.cli import _settings
    from stagecoach.engine.services.storage.db import private_umask

    private_umask()
    settings = _settings()
    raise typer.Exit(
        asyncio.run(
            run_cluster(settings, workers=workers, apis=apis, directory=directory, out=typer.echo)
        )
    )


async def run_cluster(
    settings: Settings,
    *,
    workers: int,
    apis: int,
    directory: Path | None,
    out: Callable[[str], None] = print,
) -> int:
    """``stagecoach cluster up``: start, print where everything is, supervise until
    SIGINT or SIGTERM, stop in order. Returns the exit code."""
    from stagecoach.engine.cli.local_cluster import (
        LocalCluster,
        find_postgres,
        find_temporal_server,
    )
    from stagecoach.engine.cli.programs import ensure_port_free
    from stagecoach.engine.cli.supervisor import check_definitions
    from stagecoach.engine.settings import check_api_credentials, ensure_link_secret_file
    from stagecoach.engine.temporal.codec import ensure_key_file

    host, frontend = settings.temporal_host_port
    api_ports = [settings.api_port + n for n in range(apis)]
    ensure_port_free(
        host, frontend, what="Temporal frontend", setting="STAGECOACH_TEMPORAL_ADDRESS"
    )
    for port in api_ports:
        ensure_port_free(settings.api_host, port, what="HTTP API", setting="STAGECOACH_API_PORT")
    # The binaries before the project: each check is quicker than loading definitions.
    server_bin, postgres_bin = find_temporal_server(settings.cache_dir), find_postgres()
    project = check_definitions(settings)
    cluster = LocalCluster(
        (directory or settings.data_dir / "cluster").resolve(),
        server_bin=server_bin,
        postgres_bin=postgres_bin,
        namespace=settings.temporal_namespace,
        frontend_port=frontend,
    )
    ensure_key_file(settings)
    secret = ensure_link_secret_file(settings)
    check_api_credentials(settings.model_copy(update={"link_secret": secret}))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        out("starting PostgreSQL and the Temporal server ...")
        await cluster.start_backends()
        out(f"starting {workers} workers and {apis} API replicas ...")
        env = cluster.stagecoach_env()
        env["STAGECOACH_DATA_DIR"] = str(settings.data_dir.resolve())
        cluster.start_stagecoach(
            env, workers=workers, api_ports=api_ports, logs=cluster.root / "logs"
        )
        await _wait_healthy(cluster, settings.api_host, api_ports)
        out(_banner(cluster, settings, api_ports, project))
        while not stop.is_set():
            for child in cluster.children():
                code = child.exited()
                if code is not None:
                    raise ProcessFailed(
                        f"the {child.name} exited with code {code}: {child.log_tail()}",
                        fix=f"read {child.log_path}, fix the cause and run "
                        "'stagecoach cluster up' again",
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        out("stopping ...")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not orphan children
        cluster.stop()
    out("stopped.")
    return 0


async def _wait_healthy(cluster: LocalCluster, host: str, ports: list[int]) -> None:
    import httpx

    from stagecoach.engine.cli.local_cluster import STARTUP_TIMEOUT

    deadline = time.monotonic() + STARTUP_TIMEOUT
    pending = set(ports)
    async with httpx.AsyncClient(timeout=2.0) as http:
        while pending:
            for child in cluster.children():
                if child.exited() is not None:
                    raise ProcessFailed(
                        f"the {child.name} exited with code {child.exited()} while starting: "
                        f"{child.log_tail() or 'no output'}",
                        fix=f"read {child.log_path}",
                    )
            for port in list(pending):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"http://{host}:{port}/healthz")).status_code == 200:
                        pending.discard(port)
            if time.monotonic() > deadline:
                raise ProcessFailed(
                    f"API replicas on ports {sorted(pending)} did not answer /healthz within "
                    f"{STARTUP_TIMEOUT:.0f} s",
                    fix=f"read the logs under {cluster.root / 'logs'}",
                )
            await asyncio.sleep(0.3)


def _banner(cluster: LocalCluster, settings: Settings, api_ports: list[int], project: str) -> str:
    from stagecoach.engine.cli.local_cluster import (
        APP_DATABASE,
        CONFIG_DIR,
        TEMPORAL_DATABASES,
        TEMPORAL_SERVER_VERSION,
    )

    apis = ", ".join(f"http://{settings.api_host}:{p}" for p in api_ports)
    return "\n".join(
        [
            "The Stagecoach cluster is up.",
            f"  PostgreSQL         {cluster.postgres.base_url}  (databases "
            f"{', '.join(TEMPORAL_DATABASES)}, {APP_DATABASE})",
            f"  Temporal server    {cluster.temporal.address}  (namespace {cluster.namespace}, "
            f"{TEMPORAL_SERVER_VERSION} on PostgreSQL, config {CONFIG_DIR / 'stagecoach.yaml'})",
            f"  Workers            {len(cluster.workers)}",
            f"  API replicas       {apis}",
            f"  Definitions        {project}",
            f"  Logs               {cluster.root / 'logs'}, {cluster.temporal.root}, "
            f"{cluster.postgres.root}",
            "  Other commands     export STAGECOACH_DATABASE_URL="
            f"{cluster.database_url} STAGECOACH_TEMPORAL_ADDRESS={cluster.temporal.address}",
            "Press Ctrl-C to stop.",
        ]
    )
