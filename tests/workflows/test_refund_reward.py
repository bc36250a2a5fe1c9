"""A referred customer's refund, end to end on the real server: the order.refunded event
through the API reaches the workflow, which cancels the referrer's held reward."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import Session, col, select
from temporalio.client import Client

from stagecoach.engine.services.referrals import issue_code
from stagecoach.engine.services.storage.models import Event, Referral, Reward
from tests.workflows.conftest import Runtime, eventually


async def test_a_refund_cancels_the_referrers_held_reward(runtime: Runtime) -> None:
    async def temporal() -> Client:
        return runtime.client

    key = runtime.write_key("shop")
    with TestClient(runtime.app(temporal)) as api:

        def track(user: str, message_id: str, event: str, **fields: Any) -> None:
            body = {"userId": user, "messageId": message_id, "event": event, **fields}
            response = api.post("/v1/track", auth=(key, ""), json=body)
            assert response.status_code == 200, response.text

        track("promoter", "rp-seen", "page.viewed", context={"traits": {"email": "p@example.cn"}})
        with Session(runtime.engine) as session:
            promoter = session.exec(
                select(Event.contact_id).where(col(Event.message_id) == "rp-seen")
            ).one()
        code = issue_code(runtime.engine, promoter, now=datetime.now(UTC)).code
        signup = api.post(
            f"/r/{code}", json={"name": "Friend", "email": "friend@example.cn", "consent": True}
        )
        assert signup.status_code == 200, signup.text
        with Session(runtime.engine) as session:
            referral = session.exec(select(Referral)).one()
        runtime.touched.update({promoter, referral.referee_id})
        paid = {"order_id": "SO-9", "currency": "CNY", "items": [{"product": "x", "amount": 980}]}
        friend = {"traits": {"email": "friend@example.cn"}}
        track("friend", "rf-paid", "order.paid", properties=paid, context=friend)

        def reward() -> Reward | None:
            with Session(runtime.engine) as session:
                return session.exec(select(Reward)).first()

        async def held() -> bool:
            found = reward()
            return found is not None and found.status == "held"

        await eventually(held, within=30)
        track(
            "friend", "rf-refund", "order.refunded", properties={"order_id": "SO-9"}, context=friend
        )

        async def cancelled() -> bool:
            found = reward()
            return found is not None and found.status == "cancelled"

        await eventually(cancelled, within=30)
    found = reward()
    assert found is not None
    assert found.cancel_reason == "order SO-9 refunded"
    with Session(runtime.engine) as session:
        names = session.exec(select(Event.name).where(col(Event.contact_id) == promoter)).all()
    assert "referral.reward_cancelled" in names
