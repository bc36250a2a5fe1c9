"""Ops search contacts with the real ``temporal`` CLI: ``workflow list --query`` over the
contact workflows' search attributes (Stage, Score, Grade, Journeys), on the dev server.

Contacts are made through the public API (``stagecoach.engine.temporal.gateway``: events, whose
workflows upsert their attributes, and an enrolment of a contact opened as the API opens one, whose
attributes are set at start). Each query is scoped to this test's fresh task queue:
the dev server is shared by the whole session and keeps other tests' contacts."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from datetime import UTC, datetime
from typing import Any

from stagecoach.engine.protocol.messages import EnrolRequest, EventMessage, contact_workflow_id
from stagecoach.engine.temporal.gateway import enrol
from stagecoach.workflows.runtime import ContactOpener
from tests.workflows.conftest import Runtime

FIT_A = {"industry": "software", "company_size": 500, "role": "cto", "locale": "en"}
"""30 + 30 + 25 fit points: grade A (``stagecoach.workflows.pipeline.GRADING``)."""

STUDENT = {"role": "student", "locale": "zh-CN"}
"""-30 fit points: grade D."""


async def temporal_list(runtime: Runtime, cli: str, query: str) -> set[str]:
    """Workflow ids ``temporal workflow list --query`` returns (JSON output), run off the
    event loop: the worker shares it."""
    config = runtime.client.service_client.config
    scoped = f'({query}) AND TaskQueue="{runtime.settings.temporal_task_queue}"'
    done = await asyncio.to_thread(
        subprocess.run,
        [
            cli,
            "workflow",
            "list",
            "--address",
            config.target_host,
            "--namespace",
            runtime.client.namespace,
            "--query",
            scoped,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, f"temporal workflow list --query {scoped!r}: {done.stderr}"
    rows: list[dict[str, Any]] = json.loads(done.stdout or "[]")  # one JSON array
    return {row["execution"]["workflowId"] for row in rows}


async def test_contacts_are_found_by_stage_journey_grade_and_score_from_the_cli(
    runtime: Runtime, temporal_cli_path: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    suspect, prospect, lead_a, lead_d, passive = (
        f"sa-{name}-{tag}" for name in ("suspect", "prospect", "lead-a", "lead-d", "passive")
    )
    await runtime.event(suspect, "page.viewed", properties={"category": "blog"})
    await runtime.event(
        prospect,
        "content.downloaded",
        properties={"content_id": "wp-digital-transformation", "kind": "whitepaper"},
    )
    await runtime.event(lead_a, "demo.requested", traits=FIT_A)
    await runtime.event(lead_d, "demo.requested", traits=STUDENT)
    # As the API opens a new contact: recorded first, search attributes set at start.
    identify = EventMessage(
        message_id=f"{passive}-identify",
        type="identify",
        occurred_at=datetime.now(UTC),
        traits={"email": f"{passive}@example.com", "locale": "en"},  # so its journey waits
        source="test",
    )
    opening = await ContactOpener(runtime.engine, runtime.settings).open(
        passive, event=identify, journey="value_nurture"
    )
    runtime.touched.add(passive)  # terminated with the others when the runtime closes
    result = await enrol(
        runtime.client,
        runtime.settings,
        passive,
        EnrolRequest("value_nurture", event=identify),
        opening=opening,
    )
    assert result.accepted, result.reason

    expected = {
        'Stage="lead"': {lead_a, lead_d},
        'Stage="prospect"': {prospect},
        'Journeys="value_nurture"': {passive},
        'Grade="A"': {lead_a},
        "Score >= 30": {lead_a, lead_d},
    }
    expected = {q: {contact_workflow_id(c) for c in ids} for q, ids in expected.items()}
    found: dict[str, set[str]] = {}
    deadline = asyncio.get_running_loop().time() + 30
    while True:  # visibility lags the workflows' upserts by a moment
        found = {q: await temporal_list(runtime, temporal_cli_path, q) for q in expected}
        if found == expected or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert found == expected


async def test_contacts_in_a_searchable_segment_are_found_from_the_cli(
    runtime: Runtime, temporal_cli_path: str
) -> None:
    """``Segment(searchable=True)``: ops list the segment's contact workflows with
    ``temporal workflow list --query "Segments='...'"``; a segment that is not
    searchable is not written to the attribute (no upsert spent on it)."""
    from stagecoach.engine.domain.conditions import performed
    from stagecoach.engine.domain.segments import Segment
    from stagecoach.engine.services.segments.catalog import publish_segments

    tag = uuid.uuid4().hex[:8]
    publish_segments(
        runtime.engine,
        [
            Segment(f"pricing-{tag}", when=performed("pricing.viewed"), searchable=True).spec(),
            Segment(f"quiet-{tag}", when=performed("pricing.viewed")).spec(),
        ],
    )
    inside, outside = f"sa-seg-in-{tag}", f"sa-seg-out-{tag}"
    await runtime.event(inside, "pricing.viewed")
    await runtime.event(outside, "page.viewed", properties={"category": "blog"})
    expected = {
        f'Segments="pricing-{tag}"': {contact_workflow_id(inside)},
        f'Segments="quiet-{tag}"': set(),
    }
    found: dict[str, set[str]] = {}
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        found = {q: await temporal_list(runtime, temporal_cli_path, q) for q in expected}
        if found == expected or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert found == expected
