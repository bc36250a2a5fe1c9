"""Referral fission end to end on the time-skipping server: a promoter's code, friends
signing up through the landing page (the API with its forwarder), their first purchases
rewarding the referrer after the return window, and the referrer becoming an advocate.
Self-referral is refused."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select
from temporalio.testing import WorkflowEnvironment

from stagecoach.connectors.filesink import FileSinkConnector
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.services.referrals import issue_code
from stagecoach.engine.services.storage.models import Event, Referral, Reward
from stagecoach.engine.temporal.gateway import ContactNotFound, contact_view
from tests.workflows.conftest import Runtime, eventually, open_runtime

PROMOTER = {"email": "qian.li@example.cn", "locale": "en", "timezone": "UTC"}


async def _stage(runtime: Runtime, contact_id: str) -> str | None:
    try:
        return (await contact_view(runtime.client, contact_id)).stage
    except ContactNotFound:
        return None


@pytest.mark.time_skipping
async def test_referees_purchases_reward_the_promoter_who_becomes_an_advocate(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    sinks: dict[str, Any] = {
        ch: FileSinkConnector(tmp_path / "sink" / ch, channel=ch)
        for ch in ("email", "wechat", "crm")
    }
    async with open_runtime(
        env, task_queue, tmp_path, content_library, connectors=sinks
    ) as runtime:
        key = runtime.write_key("shop")
        with TestClient(runtime.app()) as api:

            def track(user: str, message_id: str, event: str, **fields: Any) -> None:
                body = {"userId": user, "messageId": message_id, "event": event, **fields}
                response = api.post("/v1/track", auth=(key, ""), json=body)
                assert response.status_code == 200, response.text

            # A customer answers 10: a promoter, now a fan, with a referral code.
            track(
                "promoter",
                "p-paid",
                "order.paid",
                properties={"amount": 100},
                context={"traits": PROMOTER},
            )
            with Session(runtime.engine) as session:
                promoter = session.exec(
                    select(Event.contact_id).where(col(Event.message_id) == "p-paid")
                ).one()
            runtime.touched.add(promoter)

            async def customer() -> bool:
                return await _stage(runtime, promoter) == "customer"

            await eventually(customer, within=30)
            track("promoter", "p-nps", "nps.answered", properties={"score": 10})

            async def fan() -> bool:
                return await _stage(runtime, promoter) == "fan"

            await eventually(fan, within=30)
            code = issue_code(runtime.engine, promoter, now=datetime.now(UTC)).code

            # Self-referral: the promoter's own address is refused, nothing recorded.
            refused = api.post(
                f"/r/{code}", json={"name": "Me", "email": PROMOTER["email"], "consent": True}
            )
            assert refused.status_code == 403, refused.text

            friends = []
            for n in range(2):
                signup = api.post(
                    f"/r/{code}",
                    json={"name": f"Friend {n}", "email": f"friend{n}@example.cn", "consent": True},
                )
                assert signup.status_code == 200, signup.text
                with Session(runtime.engine) as session:
                    referral = session.exec(
                        select(Referral).order_by(col(Referral.id).desc())
                    ).first()
                assert referral is not None
                friends.append(referral.referee_id)
                runtime.touched.add(referral.referee_id)

            # Signing up earns nothing; the first purchase does.
            with Session(runtime.engine) as session:
                assert session.exec(select(Reward)).all() == []
            for n in range(len(friends)):
                track(
                    f"friend-{n}",
                    f"paid-{n}",
                    "order.paid",
                    properties={"amount": 980},
                    context={"traits": {"email": f"friend{n}@example.cn"}},
                )

            async def rewarded_and_held() -> bool:
                with Session(runtime.engine) as session:
                    rewards = session.exec(select(Reward)).all()
                return len(rewards) == 2 and all(r.status == "held" for r in rewards)

            await eventually(rewarded_and_held, within=60)

            async def advocate() -> bool:
                return await _stage(runtime, promoter) == "advocate"

            await eventually(advocate, within=60)

            # After the return window the rewards are released by the referees' timers.
            await env.sleep(timedelta(days=15))
            await asyncio.sleep(0.5)

            async def released() -> bool:
                with Session(runtime.engine) as session:
                    rewards = session.exec(select(Reward)).all()
                return len(rewards) == 2 and all(r.status == "released" for r in rewards)

            await eventually(released, within=60)
