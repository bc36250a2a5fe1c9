"""``stagecoach journeys rehearse`` against the real servers: a rehearsal's every side
effect goes to the rehearsal sink, and its contact is marked as a rehearsal's.

The worker is the production one (``open_runtime``) on the Temporal dev server, wired
from settings to a real signed-webhook CRM peer (``tests.peers.crm``); the command runs
as a user runs it, in a subprocess."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session
from temporalio.testing import WorkflowEnvironment

from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.metrics import HANDOFFS, SLA_BREACHES
from stagecoach.engine.services.storage.models import Contact, Handoff
from stagecoach.engine.settings import Settings
from tests.engine.cli.conftest import Shell
from tests.peers.crm import WebhookReceiver
from tests.workflows.conftest import open_runtime

SECRET = "whsec-rehearsal"


def counted(counter: Any) -> float:
    """Everything a labelled counter counted so far, over all its label values."""
    samples = [s.value for m in counter.collect() for s in m.samples]
    return float(sum(samples))


def sink_files(settings: Settings, contact_id: str) -> list[dict[str, Any]]:
    folder = settings.resolved_sink_dir / "rehearsal" / contact_id
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


async def test_a_rehearsed_detractor_hand_off_goes_to_the_sink_not_the_crm(
    env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    content_library: ContentLibrary,
    shell: Callable[[Settings], Shell],
) -> None:
    with WebhookReceiver(SECRET) as crm:
        async with open_runtime(
            env,
            task_queue,
            tmp_path,
            content_library,
            crm_connector="webhook",
            webhook_url=crm.endpoint,
            webhook_secret=SECRET,
        ) as runtime:
            handoffs, breaches = counted(HANDOFFS), counted(SLA_BREACHES)
            code, out, err = await shell(runtime.settings).run(
                "journeys",
                "rehearse",
                "nps_survey",
                "--time-scale",
                "0.0001",
                "--event",
                "3d12h:nps.answered:score=3,comment=late delivery",
                "--event",
                "4d6h:ticket.closed:ticket_id=T-1",
                "--timeout",
                "150",
            )
            assert code == 0, err
            contact_id = out.split(" as ", 1)[1].split()[0]
            runtime.touched.add(contact_id)
            assert "still running" not in out, out
            # The story says where the hand-off went.
            assert (
                "handoff   to customer care (service_recovery) [nps_survey/recovery-handoff]"
                in (out)
            )

            # Nothing reached the CRM: no request at all, signed or not.
            assert crm.deliveries == []
            assert crm.rejections == []
            # The sink has the survey, the hand-off to customer care and the apology.
            sunk = sink_files(runtime.settings, contact_id)
            [handoff] = [f for f in sunk if f["channel"] == "crm"]
            assert handoff["message"]["type"] == "handoff"
            assert handoff["message"]["reason"] == "service_recovery"
            assert handoff["message"]["routing"]["team"] == "customer-care"
            sent = {f["message"].get("content_id") for f in sunk if f["channel"] == "email"}
            assert {"survey-nps", "service-apology"} <= sent
            # The hand-off is not counted as a production one.
            assert counted(HANDOFFS) == handoffs
            assert counted(SLA_BREACHES) == breaches

            with Session(runtime.engine) as session:
                row = session.get(Contact, contact_id)
                assert row is not None
                assert row.rehearsal
                stored = session.get(Handoff, handoff["message"]["handoff_id"])
                assert stored is not None
                # Its SLA is on the rehearsal's clock (x10,000): seconds, not a day.
                created = stored.created_at.replace(tzinfo=UTC)  # SQLite keeps UTC, naive
                lapse = datetime.fromisoformat(stored.payload["respond_by"]) - created
                assert timedelta(0) < lapse < timedelta(minutes=1)


async def test_a_rehearsal_hand_off_and_its_sla_never_reach_hubspot(tmp_path: Path) -> None:
    """The worker wired from settings for HubSpot: a rehearsal contact's hand-off, its
    reminder and its escalation land in the rehearsal sink, and HubSpot hears nothing;
    a real contact's hand-off does reach it."""
    from temporalio.testing import ActivityEnvironment

    from stagecoach.engine.cli.compose import build_activities
    from stagecoach.engine.protocol.messages import HandOffRequest, SlaRequest
    from tests.helpers import migrated_engine, runtime_settings
    from tests.peers.crm import TEST_TOKEN, HubSpotPeer

    with HubSpotPeer() as hubspot:
        settings = runtime_settings(
            tmp_path,
            "unused",
            crm_connector="hubspot",
            hubspot_token=TEST_TOKEN,
            hubspot_base_url=hubspot.url,
        )
        engine = migrated_engine(settings.resolved_database_url)
        activities = build_activities(engine, settings)
        run = ActivityEnvironment().run
        now = datetime.now(UTC)

        def request(contact_id: str, rehearsal: bool) -> HandOffRequest:
            return HandOffRequest(
                contact_id=contact_id,
                idempotency_key=f"{contact_id}:mql:{now.isoformat()}",
                journey="b2b_nurture",
                step_id="evaluation-hand-off",
                reason="mql",
                payload={"email": f"{contact_id}@example.com"},
                now=now,
                rehearsal=rehearsal,
                time_scale=0.0001 if rehearsal else 1.0,
            )

        rehearsed = await run(activities.hand_off, request("rehearsal-b2b-1", rehearsal=True))
        assert rehearsed.ok
        for kind in ("reminder", "escalation"):
            await run(
                activities.handoff_sla,
                SlaRequest("rehearsal-b2b-1", rehearsed.handoff_id, kind, rehearsal=True),
            )
        assert hubspot.seen == []
        sunk = sorted(f["message"]["type"] for f in sink_files(settings, "rehearsal-b2b-1"))
        assert sunk == ["handoff", "handoff.escalation", "handoff.reminder"]

        real = await run(activities.hand_off, request("c-real-1", rehearsal=False))
        assert real.ok, real.error
        assert hubspot.seen  # the same worker does talk to HubSpot for a real contact
        assert sink_files(settings, "c-real-1") == []
        engine.dispose()
