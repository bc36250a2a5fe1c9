"""The sales hand-off on the time-skipping server with a real webhook receiver: one
hand-off when the lead reaches MQL, a reminder after the SLA in business hours, an
escalation after the second period, and a rejection that recycles the lead, which
qualifies again only after the cool-down."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select
from temporalio.testing import WorkflowEnvironment

from connectors.filesink import FileSinkConnector
from connectors.webhook import WebhookConnector
from engine.content import ContentLibrary
from engine.gateway import contact_view
from engine.storage.models import Handoff
from tests.peers.crm import WebhookReceiver
from tests.workflows.conftest import Runtime, eventually, open_runtime

SECRET = "whsec-sales"
BUYER = {
    "email": "zhao.min@example.cn",
    "locale": "zh-CN",
    "timezone": "Asia/Shanghai",
    "company_size": 500,  # large company: 30 fit points
    "role": "cto",  # decision maker: 25, so grade B (50+)
}


def _sent(receiver: WebhookReceiver, kind: str) -> list[dict[str, Any]]:
    return [d.payload["data"] for d in receiver.deliveries if d.payload["data"].get("type") == kind]


def _handoffs(runtime: Runtime, contact_id: str) -> list[Handoff]:
    with Session(runtime.engine) as session:
        return list(session.exec(select(Handoff).where(Handoff.contact_id == contact_id)).all())


async def _qualify(runtime: Runtime, contact_id: str) -> None:
    for kind in ("webinar.attended", "demo.requested", "consultation.booked"):
        await runtime.event(contact_id, kind, traits=BUYER)


async def _skip_to(env: WorkflowEnvironment, when: datetime) -> None:
    now = await env.get_current_time()
    if when > now:
        await env.sleep(when - now)


@pytest.mark.time_skipping
async def test_mql_hand_off_reminder_escalation_and_recycling(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    with WebhookReceiver(SECRET) as receiver:
        connector = WebhookConnector(receiver.endpoint, SECRET)
        sinks = {
            ch: FileSinkConnector(tmp_path / "sink" / ch, channel=ch) for ch in ("email", "wechat")
        }
        try:
            async with open_runtime(
                env,
                task_queue,
                tmp_path,
                content_library,
                connectors={**sinks, "crm": connector},
            ) as runtime:
                await _qualify(runtime, "c-sql")

                async def handed_off() -> bool:
                    return len(_sent(receiver, "handoff")) == 1

                await eventually(handed_off, within=30)
                [handoff] = _sent(receiver, "handoff")
                # Everything sales needs, routed by grade: B goes round robin in the pool.
                assert handoff["grade"]["grade"] == "B"
                assert handoff["routing"]["team"] == "inside-sales"
                assert {"demo.requested", "consultation.booked"} <= {
                    e["event_type"] for e in handoff["score"]["top_events"]
                }
                assert {r["rule"] for r in handoff["grade"]["rules"]} >= {"large_company"}
                assert len(handoff["recent_events"]) == 3
                assert handoff["timeline_url"].endswith("/v1/contacts/c-sql")
                [row] = _handoffs(runtime, "c-sql")
                assert row.id == handoff["handoff_id"]
                respond_by = datetime.fromisoformat(row.payload["respond_by"])
                escalate_at = datetime.fromisoformat(row.payload["escalate_at"])
                assert escalate_at > respond_by

                # No feedback by the deadline: the owner is reminded, nobody escalated yet.
                await _skip_to(env, respond_by + timedelta(minutes=1))

                async def reminded() -> bool:
                    return len(_sent(receiver, "handoff.reminder")) == 1

                await eventually(reminded, within=30)
                assert _sent(receiver, "handoff.escalation") == []
                assert _sent(receiver, "handoff.reminder")[0]["to"] == row.owner

                # Another period: the team lead hears of it.
                await _skip_to(env, escalate_at + timedelta(minutes=1))

                async def escalated() -> bool:
                    return len(_sent(receiver, "handoff.escalation")) == 1

                await eventually(escalated, within=30)
                assert _sent(receiver, "handoff.escalation")[0]["to"] == "sun.li"

                # Sales reject it: recycled to nurture, and more interest does not hand it
                # off again within the cool-down.
                await runtime.event(
                    "c-sql",
                    "sales.rejected",
                    properties={"reason": "no_budget", "handoff_id": row.id},
                )

                async def recycled() -> bool:
                    view = await contact_view(runtime.client, "c-sql")
                    return view.stage == "prospect"

                await eventually(recycled)
                await _qualify(runtime, "c-sql")
                await env.sleep(timedelta(hours=1))
                assert len(_sent(receiver, "handoff")) == 1

                # After the cool-down, renewed interest qualifies it again: one more.
                await env.sleep(timedelta(days=31))
                await _qualify(runtime, "c-sql")

                async def handed_off_again() -> bool:
                    return len(_sent(receiver, "handoff")) == 2

                await eventually(handed_off_again, within=30)
                assert len(_handoffs(runtime, "c-sql")) == 2
        finally:
            await connector.aclose()
