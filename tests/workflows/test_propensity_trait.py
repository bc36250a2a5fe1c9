"""Propensity as a contact trait (issue 23), on the dev server with the production
worker, activities and outbox forwarder: a retrain run by the retrain workflow sends
``propensity.scored`` to each contact whose score moved enough, its workflow sets the
traits, and a segment written on ``propensity`` gains it. A second retrain with the same
scores sends nothing new, and neither the traits nor the event become features."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.cli.compose import build_prediction_activities
from stagecoach.engine.domain.conditions import trait
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.domain.propensity import PROPENSITY_SCORED, SignalRule
from stagecoach.engine.domain.segments import Segment
from stagecoach.engine.protocol import PROPENSITY_RETRAIN_WORKFLOW
from stagecoach.engine.services.analytics.store import create_tables
from stagecoach.engine.services.analytics.synthetic import generate, to_database
from stagecoach.engine.services.segments.catalog import publish_segments
from stagecoach.engine.services.storage.models import (
    Event,
    Outbox,
    PropensityModelVersion,
    PropensityScore,
)
from stagecoach.engine.temporal.gateway import contact_view
from stagecoach.workflows.worker import build_worker
from tests.workflows.conftest import Runtime, eventually, open_runtime
from tests.workflows.test_segments import members

LIKELY = Segment("likely-buyers", when=trait("propensity", "gte", 0.5))
UNLIKELY = Segment("unlikely-buyers", when=trait("propensity", "lt", 0.5))
WHO = "prop-trait-lead"


def _seed(runtime: Runtime, contacts: int) -> None:
    """Ten months of generated history: enough converters to train on."""
    con = duckdb.connect()
    create_tables(con)
    now = datetime.now(UTC)
    start = (now - timedelta(days=300)).replace(tzinfo=None)
    generate(con, contacts, events_per_contact=8, start=start, days=300, fit_signal=0.5)
    to_database(con, runtime.engine, until=now)
    con.close()


def _sent(runtime: Runtime) -> dict[str, list[dict[str, Any]]]:
    """Every contact's ``propensity.scored`` events' properties, oldest first."""
    out: dict[str, list[dict[str, Any]]] = {}
    with Session(runtime.engine) as session:
        for e in session.exec(
            select(Event).where(col(Event.name) == PROPENSITY_SCORED).order_by(col(Event.id))
        ).all():
            out.setdefault(e.contact_id, []).append(dict(e.properties))
    return out


def _scores(runtime: Runtime) -> dict[str, float]:
    with Session(runtime.engine) as session:
        return {s.contact_id: s.probability for s in session.exec(select(PropensityScore))}


async def _settled(runtime: Runtime) -> None:
    """Every stored event forwarded to its workflow, and the workflows done with them."""

    async def drained() -> bool:
        with Session(runtime.engine) as session:
            return session.exec(select(Outbox.id).limit(1)).first() is None

    await eventually(drained, within=90)
    await asyncio.sleep(3)


async def _retrain(runtime: Runtime, queue: str) -> dict[str, Any]:
    result: dict[str, Any] = await runtime.client.execute_workflow(
        PROPENSITY_RETRAIN_WORKFLOW,
        id=f"retrain-{queue}-{datetime.now(UTC).timestamp()}",
        task_queue=queue,
        execution_timeout=timedelta(minutes=3),
    )
    return result


async def test_a_retrain_puts_propensity_on_the_contact_and_a_segment_gains_it(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    async with open_runtime(
        env, task_queue, tmp_path, content_library, propensity_min_customers=20
    ) as runtime:

        async def temporal() -> Client:
            return runtime.client

        _seed(runtime, 350)
        # Published before the contact opens: its workflow loads them with its definitions.
        publish_segments(runtime.engine, [LIKELY.spec(), UNLIKELY.spec()], source="test")
        queue = f"{task_queue}-predict"
        prediction = build_prediction_activities(runtime.engine, runtime.settings)
        worker = build_worker(runtime.client, task_queue=queue, activities=prediction.all())
        with TestClient(runtime.app(temporal)):  # its outbox forwarder delivers the events
            async with worker:
                await runtime.event(
                    WHO,
                    "identify",
                    traits={"email": "lead@example.cn", "locale": "en", "company_size": 500},
                )
                await runtime.event(WHO, "page.viewed", properties={"path": "/pricing"})

                async def opened() -> bool:
                    return (await contact_view(runtime.client, WHO)).stage != ""

                await eventually(opened, within=30)
                assert members(runtime, LIKELY.name) | members(runtime, UNLIKELY.name) == set()

                first = await _retrain(runtime, queue)
                assert first["published"], first
                scores = _scores(runtime)
                assert WHO in scores
                sent = _sent(runtime)
                runtime.touched.update(sent)
                # Every scored contact is told once: none of them had a value yet.
                assert set(sent) == set(scores)
                assert first["signalled"] == len(scores)
                mine = round(scores[WHO], 2)
                assert sent[WHO] == [
                    {
                        "propensity": mine,
                        "previous": None,
                        "model_version": first["version"],
                        "band": SignalRule().band(mine),
                    }
                ]
                gains, not_ = (LIKELY, UNLIKELY) if mine >= 0.5 else (UNLIKELY, LIKELY)

                async def segmented() -> bool:
                    return WHO in members(runtime, gains.name)

                await eventually(segmented, within=60)
                assert WHO not in members(runtime, not_.name)
                # 350 workflows just woke on their signals: on a loaded machine a query can
                # time out in the queue behind them, so ask again.
                view = None
                for _ in range(5):
                    with contextlib.suppress(RPCError):
                        view = await contact_view(runtime.client, WHO)
                        break
                assert view is not None, "the contact's state query kept timing out"
                attributes = view.state["attributes"]
                assert attributes["propensity"] == mine
                assert attributes["propensity_version"] == first["version"]
                assert attributes["propensity_as_of"]

                # The generated contacts had no workflow until these events opened one, and
                # the opening rewrote their rows: the next retrain learns from that and may
                # move some scores. The one after it has nothing new to learn from.
                await _settled(runtime)
                second = await _retrain(runtime, queue)
                assert second["published"]
                await _settled(runtime)
                sent = _sent(runtime)
                runtime.touched.update(sent)
                third = await _retrain(runtime, queue)
                assert third["published"]
                assert third["version"] > second["version"] > first["version"]
                rule = SignalRule()
                last = {c: events[-1]["propensity"] for c, events in sent.items()}
                assert all(not rule.moved(last[c], p) for c, p in _scores(runtime).items())
                assert third["signalled"] == 0
                assert _sent(runtime) == sent
                # Neither the traits nor the event ever become features.
                with Session(runtime.engine) as session:
                    model = session.get(PropensityModelVersion, third["version"])
                assert model is not None
                assert [f for f in model.features if "propensity" in f] == []
