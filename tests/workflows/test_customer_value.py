"""Customer value end to end on the real server: orders through the event API, a value
refresh, and the value traits on the contact's workflow."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner, Result

from stagecoach import Catalog, Product, ValueModel
from stagecoach.engine.cli import app as cli
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.services.value import refresh_values
from stagecoach.engine.temporal.gateway import ContactNotFound, contact_view
from stagecoach.examples.lifecycle.lifecycle.definitions import defs
from tests.workflows.conftest import Runtime, eventually, open_runtime

CATALOG = Catalog((Product("tea", "drinks", "Green tea"), Product("cup", "kitchen", "Tea cup")))
DEFS = replace(defs, value=ValueModel(min_customers=10), catalog=CATALOG)


def _stagecoach(runtime: Runtime, *args: str) -> Result:
    """The CLI in this process (a subprocess would spend seconds importing it again)."""
    env = {
        "STAGECOACH_TEMPORAL_ADDRESS": runtime.client.service_client.config.target_host,
        "STAGECOACH_TEMPORAL_NAMESPACE": runtime.client.namespace,
        "STAGECOACH_DATA_DIR": str(runtime.settings.data_dir),
        "STAGECOACH_DATABASE_URL": runtime.settings.resolved_database_url,
    }
    return CliRunner().invoke(cli, list(args), env=env)


def orders(customers: int, now: datetime, seed: int = 3) -> list[dict[str, Any]]:
    """A year of tea orders from ``customers`` customers, each buying every few weeks."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(customers):
        at = now - timedelta(days=rng.randint(200, 360))
        for n in range(rng.randint(1, 6)):
            items = [{"product": "tea", "quantity": 1, "amount": rng.randint(40, 120)}]
            if n == 0 and i % 2:
                items.append({"product": "cup", "quantity": 1, "amount": 30})
            out.append(
                {
                    "type": "track",
                    "userId": f"cv-{i}",
                    "messageId": f"cv-{i}-{n}",
                    "event": "order.paid",
                    "timestamp": at.isoformat(),
                    "properties": {"order_id": f"o-{i}-{n}", "currency": "CNY", "items": items},
                    "context": {"traits": {"email": f"cv{i}@example.cn"}},
                }
            )
            at += timedelta(days=rng.randint(14, 50))
            if at >= now:
                break
    return out


async def test_a_customers_orders_give_them_a_value_tier_and_clv(runtime: Runtime) -> None:
    async def temporal() -> Client:
        return runtime.client

    now = datetime.now(UTC)
    with TestClient(runtime.app(temporal), headers=runtime.write_auth("shop")) as api:
        answer = api.post("/v1/batch", json={"batch": orders(24, now)})
        assert answer.status_code == 200, answer.text
        result = refresh_values(runtime.engine, DEFS)
        assert result.run.status == "fitted"
        contact_id = sorted(result.values)[0]
        runtime.touched.update(result.values)
        expected = result.values[contact_id]

        async def valued() -> bool:
            try:
                view = await contact_view(runtime.client, contact_id)
            except ContactNotFound:
                return False
            return bool(view.state["attributes"].get("value_model") == result.version)

        await eventually(valued, within=30)
    attributes = (await contact_view(runtime.client, contact_id)).state["attributes"]
    assert attributes["value_tier"] == expected["value_tier"] in ("A", "B", "C")
    assert attributes["clv"] == expected["clv"] > 0
    assert 0 < attributes["p_alive"] <= 1
    assert attributes["value_as_of"] == result.run.as_of.isoformat()
    # `stagecoach contact show` gives the tier, CLV, p_alive and churn risk with their as-of
    # and model.
    shown = await asyncio.to_thread(_stagecoach, runtime, "contact", "show", contact_id)
    assert shown.exit_code == 0, shown.output
    [line] = [li for li in shown.stdout.splitlines() if li.startswith("value ")]
    assert f"tier {expected['value_tier']} " in line
    assert f"CLV {expected['clv']:,.2f}, p_alive {expected['p_alive']:.2f}" in line
    risk = f"churn risk {expected['churn_risk']:.2f} ({expected['churn_risk_level']})"
    assert risk in line
    assert f"(as of {result.run.as_of.isoformat()}, model {result.version})" in line


def _order(user: str, n: int, at: datetime, *products: str) -> dict[str, Any]:
    items = [{"product": p, "quantity": 1, "amount": 50} for p in products]
    return {
        "type": "track",
        "userId": user,
        "messageId": f"{user}-{n}",
        "event": "order.paid",
        "timestamp": at.isoformat(),
        "properties": {"order_id": f"{user}-{n}", "currency": "CNY", "items": items},
        "context": {"traits": {"email": f"{user}@example.cn", "locale": "en"}},
    }


def _contact_of(runtime: Runtime, message_id: str) -> str:
    from sqlmodel import Session, col, select

    from stagecoach.engine.services.storage.models import Event

    with Session(runtime.engine) as session:
        found = session.exec(
            select(Event.contact_id).where(col(Event.message_id) == message_id)
        ).one()
    runtime.touched.add(found)
    return found


async def test_a_quiet_customer_becomes_dormant_and_enters_the_win_back_journey(
    runtime: Runtime,
) -> None:
    async def temporal() -> Client:
        return runtime.client

    now = datetime.now(UTC)
    # Bought every week for ten weeks, then nothing for 100 days: still inside the
    # 180-day rule, but the model no longer believes in them.
    quiet = [_order("quiet", n, now - timedelta(days=170 - 7 * n), "tea") for n in range(10)]
    with TestClient(runtime.app(temporal), headers=runtime.write_auth("shop")) as api:
        answer = api.post("/v1/batch", json={"batch": [*orders(24, now), *quiet]})
        assert answer.status_code == 200, answer.text
        contact_id = _contact_of(runtime, "quiet-9")

        async def customer() -> bool:
            try:
                return (await contact_view(runtime.client, contact_id)).stage == "customer"
            except ContactNotFound:
                return False

        await eventually(customer, within=30)
        result = refresh_values(runtime.engine, DEFS)
        runtime.touched.update(result.values)
        assert result.values[contact_id]["churn_risk"] >= 0.7
        assert result.values[contact_id]["churn_risk_level"] == "high"

        async def won_back_offered() -> bool:
            view = await contact_view(runtime.client, contact_id)
            sent = [m["message"]["content_id"] for m in runtime.sent(contact_id)]
            return view.stage == "dormant" and "winback-offer" in sent

        await eventually(won_back_offered, within=30)
    from sqlmodel import Session, col, select

    from stagecoach.engine.services.storage.models import StageTransition

    with Session(runtime.engine) as session:
        moved = session.exec(
            select(StageTransition).where(
                col(StageTransition.contact_id) == contact_id,
                col(StageTransition.to_stage) == "dormant",
            )
        ).one()
    assert moved.reason.startswith("dormant: churn_risk gte 0.7 (was ")
    assert "and no order.paid in 30 days and value_as_of set (20" in moved.reason


@pytest.mark.time_skipping
async def test_a_buyer_of_tea_gets_the_cross_sell_for_the_cup(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    async with open_runtime(env, task_queue, tmp_path, content_library) as runtime:
        now = await runtime.now()
        # Three bought tea and a cup, three a teapot; "solo" bought tea only.
        baskets = {**{f"pair{i}": ("tea", "cup") for i in range(3)}, "solo": ("tea",)}
        baskets |= {f"pot{i}": ("pot",) for i in range(3)}
        batch = [
            _order(user, 0, now - timedelta(days=20), *products)
            for user, products in baskets.items()
        ]
        with TestClient(runtime.app(), headers=runtime.write_auth("shop")) as api:
            answer = api.post("/v1/batch", json={"batch": batch})
            assert answer.status_code == 200, answer.text
            solo = _contact_of(runtime, "solo-0")

            async def customer() -> bool:
                try:
                    return (await contact_view(runtime.client, solo)).stage == "customer"
                except ContactNotFound:
                    return False

            await eventually(customer, within=30)
            catalog = Catalog((*CATALOG.products, Product("pot", "kitchen", "Teapot")))
            result = refresh_values(runtime.engine, replace(DEFS, catalog=catalog), as_of=now)
            runtime.touched.update(result.values)
            assert result.values[solo]["cross_sell"] == "cup"

            async def enrolled() -> bool:
                view = await contact_view(runtime.client, solo)
                return "cross_sell" in {j["journey"] for j in view.journeys}

            await eventually(enrolled, within=30)
            await env.sleep(timedelta(days=11))

            async def offered() -> bool:
                return any(
                    m["message"]["content_id"] == "cross-sell-offer" for m in runtime.sent(solo)
                )

            await eventually(offered, within=30)
    [offer] = [
        m["message"] for m in runtime.sent(solo) if m["message"]["content_id"] == "cross-sell-offer"
    ]
    assert "Customers like you also use Tea cup" in offer["text"]
    # Those who have the cup already get no offer for it.
    paired = _contact_of(runtime, "pair0-0")
    assert all(m["message"]["content_id"] != "cross-sell-offer" for m in runtime.sent(paired))


async def test_a_repeat_buyer_past_their_own_interval_gets_the_restocking_reminder(
    runtime: Runtime,
) -> None:
    async def temporal() -> Client:
        return runtime.client

    now = datetime.now(UTC)
    # Tea every 30 days, the last 40 days ago: ten days past due. "fresh" bought tea
    # twice too, the last 5 days ago: not due yet.
    regular = [_order("regular", n, now - timedelta(days=100 - 30 * n), "tea") for n in range(3)]
    fresh = [_order("fresh", n, now - timedelta(days=65 - 30 * n), "tea") for n in range(3)]
    with TestClient(runtime.app(temporal), headers=runtime.write_auth("shop")) as api:
        answer = api.post("/v1/batch", json={"batch": [*regular, *fresh]})
        assert answer.status_code == 200, answer.text
        due, not_due = _contact_of(runtime, "regular-2"), _contact_of(runtime, "fresh-2")

        async def customers() -> bool:
            try:
                views = [await contact_view(runtime.client, c) for c in (due, not_due)]
            except ContactNotFound:
                return False
            return all(v.stage == "customer" for v in views)

        await eventually(customers, within=30)
        result = refresh_values(runtime.engine, DEFS)
        runtime.touched.update(result.values)
        assert result.values[due]["replenishment_due"] is True
        assert result.values[due]["repurchase_interval_days"] == 30
        assert result.values[not_due]["replenishment_due"] is False

        async def reminded() -> bool:
            return any(
                m["message"]["content_id"] == "replenishment-reminder" for m in runtime.sent(due)
            )

        await eventually(reminded, within=30)
    [reminder] = [
        m["message"]
        for m in runtime.sent(due)
        if m["message"]["content_id"] == "replenishment-reminder"
    ]
    assert "your usual interval of about 30 days, your Green tea is probably" in reminder["text"]
    assert all(
        m["message"]["content_id"] != "replenishment-reminder" for m in runtime.sent(not_due)
    )
