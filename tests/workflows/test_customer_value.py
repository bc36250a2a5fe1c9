"""Customer value end to end on the real server: orders through the event API, a value
refresh, and the value traits on the contact's workflow."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from temporalio.client import Client

from stagecoach import Catalog, Product, ValueModel
from stagecoach.engine.services.value import refresh_values
from stagecoach.engine.temporal.gateway import ContactNotFound, contact_view
from stagecoach.examples.lifecycle.lifecycle.definitions import defs
from tests.workflows.conftest import Runtime, eventually

CATALOG = Catalog((Product("tea", "drinks", "Green tea"), Product("cup", "kitchen", "Tea cup")))
DEFS = replace(defs, value=ValueModel(min_customers=10), catalog=CATALOG)


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
