"""The post-purchase NPS loop on the time-skipping server: the survey after a purchase,
promoters thanked with the referral offer and moved to fan, detractors handed to
customer service with an apology and no offers until their case is resolved."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from stagecoach.connectors.crm import WebhookConnector
from stagecoach.connectors.filesink import FileSinkConnector
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.protocol.messages import DeliverRequest
from stagecoach.engine.services.referrals import issue_code
from stagecoach.engine.temporal.gateway import contact_view
from tests.peers.crm import WebhookReceiver
from tests.workflows.conftest import Runtime, eventually, open_runtime

SECRET = "whsec-nps"
CUSTOMER = {"email": "sun.hui@example.cn", "locale": "en", "timezone": "UTC"}


def _sent(tmp_path: Path, contact_id: str) -> list[dict[str, Any]]:
    """The emails the file sink took for the contact, oldest first."""
    folder = tmp_path / "sink" / "email" / contact_id
    files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    return [json.loads(p.read_text())["message"] for p in files]


def _sent_ids(tmp_path: Path, contact_id: str) -> list[str]:
    return [m["content_id"] for m in _sent(tmp_path, contact_id)]


async def _surveyed(
    env: WorkflowEnvironment, runtime: Runtime, tmp_path: Path, contact_id: str
) -> None:
    await runtime.event(contact_id, "order.paid", properties={"amount": 9800}, traits=CUSTOMER)
    await env.sleep(timedelta(days=3, hours=1))

    async def asked() -> bool:
        return "survey-nps" in _sent_ids(tmp_path, contact_id)

    await eventually(asked, within=30)


@pytest.mark.time_skipping
async def test_promoter_is_thanked_with_the_referral_offer_and_becomes_a_fan(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    sinks = {
        ch: FileSinkConnector(tmp_path / "sink" / ch, channel=ch)
        for ch in ("email", "wechat", "crm")
    }
    async with open_runtime(
        env, task_queue, tmp_path, content_library, connectors=sinks
    ) as runtime:
        await _surveyed(env, runtime, tmp_path, "c-promoter")
        await runtime.event(
            "c-promoter", "nps.answered", properties={"score": 10, "touchpoint": "order"}
        )

        async def thanked() -> bool:
            view = await contact_view(runtime.client, "c-promoter")
            return "referral-offer" in _sent_ids(tmp_path, "c-promoter") and view.stage == "fan"

        await eventually(thanked, within=30)
        # The thank-you carries the promoter's own code and share link.
        [offer] = [m for m in _sent(tmp_path, "c-promoter") if m["content_id"] == "referral-offer"]
        code = issue_code(runtime.engine, "c-promoter", now=datetime.now(UTC)).code
        assert f"/r/{code}?ch=email" in offer["text"]
        assert code in offer["text"]


@pytest.mark.time_skipping
async def test_detractor_gets_a_service_recovery_hand_off_and_no_offers_until_resolved(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    with WebhookReceiver(SECRET) as receiver:
        crm = WebhookConnector(receiver.endpoint, SECRET)
        sinks: dict[str, Any] = {
            ch: FileSinkConnector(tmp_path / "sink" / ch, channel=ch) for ch in ("email", "wechat")
        }
        try:
            async with open_runtime(
                env, task_queue, tmp_path, content_library, connectors={**sinks, "crm": crm}
            ) as runtime:
                await _surveyed(env, runtime, tmp_path, "c-detractor")
                await runtime.event(
                    "c-detractor",
                    "nps.answered",
                    properties={"score": 3, "comment": "gateway keeps dropping"},
                )

                async def recovering() -> bool:
                    return "service-apology" in _sent_ids(tmp_path, "c-detractor")

                await eventually(recovering, within=30)
                [handoff] = [d.payload["data"] for d in receiver.deliveries]
                assert handoff["reason"] == "service_recovery"
                assert handoff["routing"]["team"] == "customer-care"
                view = await contact_view(runtime.client, "c-detractor")
                assert view.state["attributes"]["service_recovery"] == "open"
                assert view.stage == "customer"  # never fan

                await runtime.event("c-detractor", "ticket.closed", properties={"ticket_id": "T-1"})

                async def resolved() -> bool:
                    view = await contact_view(runtime.client, "c-detractor")
                    return bool(view.state["attributes"].get("service_recovery") == "resolved")

                await eventually(resolved, within=30)
        finally:
            await crm.aclose()


async def test_offers_are_refused_while_service_recovery_is_open(tmp_path: Path) -> None:
    """The delivery activity itself refuses promotional kinds; service messages go."""
    from temporalio.testing import ActivityEnvironment

    from stagecoach.engine.cli.compose import build_activities
    from tests.helpers import migrated_engine, runtime_settings

    settings = runtime_settings(tmp_path, "unused")
    engine = migrated_engine(settings.resolved_database_url)
    activities = build_activities(engine, settings)

    def request(content_id: str, recovery: str) -> DeliverRequest:
        return DeliverRequest(
            contact_id="c-probe",
            idempotency_key=f"c-probe:{content_id}:{recovery}",
            journey="probe",
            journey_version="v",
            step_id=content_id,
            enrolment=1,
            channel="email",
            address=CUSTOMER["email"],
            locale="en",
            content_id=content_id,
            attributes={"service_recovery": recovery},
            consented=True,
            now=datetime.now(UTC),
        )

    run = ActivityEnvironment().run
    blocked = await run(activities.deliver, request("coupon-annual-plan", "open"))
    assert (blocked.status, blocked.reason) == ("blocked", "service_recovery_open")
    apology = await run(activities.deliver, request("service-apology", "open"))
    assert apology.status == "sent"
    after = await run(activities.deliver, request("coupon-annual-plan", "resolved"))
    assert after.status == "sent"
    engine.dispose()
