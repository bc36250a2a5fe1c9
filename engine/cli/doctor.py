"""``stagecoach doctor``: each part of a running Stagecoach, checked, with the fix."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import timedelta

from temporalio.api.enums.v1 import IndexedValueType, TaskQueueKind, TaskQueueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.service import RPCError

from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.protocol import SYSTEM_CHECK_WORKFLOW
from stagecoach.engine.protocol.messages import SystemCheckInput, SystemCheckResult
from stagecoach.engine.protocol.search_attributes import (
    SEARCH_ATTRIBUTES,
    registration_commands,
)
from stagecoach.engine.services.storage import (
    check_connection,
    current_revision,
    head_revision,
    make_engine,
)
from stagecoach.engine.services.storage.db import redact
from stagecoach.engine.settings import Settings


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def _type_name(value: int) -> str:
    # INDEXED_VALUE_TYPE_KEYWORD_LIST -> KeywordList, as the temporal CLI spells types.
    raw = IndexedValueType.Name(value).removeprefix("INDEXED_VALUE_TYPE_")  # type: ignore[arg-type]
    return "".join(part.capitalize() for part in raw.split("_"))


OUTBOX_STALE_SECONDS = 60
"""An event waiting longer than this means forwarding has stopped."""


def check_database(settings: Settings) -> list[Check]:
    """Connectivity, then the schema revision against the newest migration."""
    shown = redact(settings.resolved_database_url)
    try:
        db = make_engine(settings.resolved_database_url)
        check_connection(db)
    except StagecoachError as exc:
        return [Check("database", False, exc.message, exc.fix)]
    checks = [Check("database", True, shown)]
    try:
        current, head = current_revision(db), head_revision()
        outbox = None
        if current == head:
            from stagecoach.engine.services.ingest._forwarder import backlog

            outbox = backlog(db)
    finally:
        db.dispose()
    if current == head:
        checks.append(Check("migrations", True, f"at head ({head})"))
        assert outbox is not None
        waiting, age = outbox["outbox_backlog"], outbox["outbox_oldest_seconds"]
        stale = age is not None and age > OUTBOX_STALE_SECONDS
        checks.append(
            Check(
                "outbox",
                not stale,
                f"{waiting} events waiting for their workflows"
                + (f", oldest {age:.0f} s" if age is not None else ""),
                "start the API (its forwarder drains the outbox) and check Temporal is reachable"
                if stale
                else "",
            )
        )
    else:
        checks.append(
            Check(
                "migrations",
                False,
                f"database is at {current or 'no revision'}, code expects {head}",
                "run 'stagecoach db upgrade'",
            )
        )
    return checks


async def check_temporal(settings: Settings) -> tuple[Check, Client | None]:
    from stagecoach.workflows.client import connect

    try:
        client = await connect(settings)
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=settings.temporal_namespace)
        )
    except StagecoachError as exc:
        return Check("temporal", False, exc.message, exc.fix), None
    except RPCError as exc:
        return (
            Check(
                "temporal",
                False,
                f"Temporal at {settings.temporal_address} refused us: {exc.message}",
                "check the namespace, TLS and API key settings",
            ),
            None,
        )
    detail = f"{settings.temporal_address}, namespace {settings.temporal_namespace}"
    return Check("temporal", True, detail), client


async def check_search_attributes(client: Client, settings: Settings) -> Check:
    try:
        resp = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=settings.temporal_namespace)
        )
    except RPCError as exc:
        return Check(
            "search attributes",
            False,
            f"cannot list search attributes: {exc.message}",
            "register them with: " + "; ".join(registration_commands(settings.temporal_namespace)),
        )
    have = {name: _type_name(kind) for name, kind in resp.custom_attributes.items()}
    wrong = [
        f"{name} (want {kind}, have {have.get(name, 'none')})"
        for name, kind in SEARCH_ATTRIBUTES.items()
        if have.get(name) != kind
    ]
    if not wrong:
        return Check("search attributes", True, ", ".join(SEARCH_ATTRIBUTES))
    return Check(
        "search attributes",
        False,
        "missing or mistyped: " + ", ".join(wrong),
        "on the dev server restart 'stagecoach up' (it registers them); elsewhere run: "
        + "; ".join(registration_commands(settings.temporal_namespace)),
    )


async def check_worker(client: Client, settings: Settings) -> Check:
    resp = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=settings.temporal_namespace,
            task_queue=TaskQueue(
                name=settings.temporal_task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL
            ),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    if resp.pollers:
        return Check(
            "worker",
            True,
            f"{len(resp.pollers)} poller(s) on task queue {settings.temporal_task_queue}",
        )
    return Check(
        "worker",
        False,
        f"no worker polls task queue {settings.temporal_task_queue!r}",
        "start one with 'stagecoach worker' ('stagecoach up' starts one for you)",
    )


async def check_round_trip(client: Client, settings: Settings) -> Check:
    """Run the SystemCheck workflow: a worker takes it and its activity reaches the DB."""
    try:
        result: SystemCheckResult = await client.execute_workflow(
            SYSTEM_CHECK_WORKFLOW,
            SystemCheckInput(requested_by="doctor"),
            id=f"stagecoach-doctor-{uuid.uuid4().hex[:12]}",
            task_queue=settings.temporal_task_queue,
            result_type=SystemCheckResult,
            execution_timeout=timedelta(seconds=20),
        )
    except Exception as exc:  # any failure here is the finding, reported not raised
        return Check(
            "round trip",
            False,
            f"SystemCheck workflow did not complete: {exc}",
            "check the worker's log for errors",
        )
    if not result.database_ok:
        return Check("round trip", False, result.database_detail, "fix the worker's database")
    return Check("round trip", True, f"worker ran SystemCheck ({result.database_detail})")


async def run_checks(settings: Settings, *, deep: bool = False) -> list[Check]:
    checks = check_database(settings)
    temporal, client = await check_temporal(settings)
    checks.append(temporal)
    if client is not None:
        checks.append(await check_search_attributes(client, settings))
        worker = await check_worker(client, settings)
        checks.append(worker)
        if deep and worker.ok:
            checks.append(await check_round_trip(client, settings))
    return checks


def as_json(checks: list[Check]) -> dict[str, object]:
    return {"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}
