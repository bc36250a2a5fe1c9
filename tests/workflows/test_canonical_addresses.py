"""One canonical email address for identity, suppression, referrals and sending, on the
real Temporal server with the production worker, the ingestion API and a real aiosmtpd
server (issue 17; issue 16 item 3)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi.testclient import TestClient
from sqlmodel import Session, col, select
from temporalio.testing import WorkflowEnvironment

from stagecoach.connectors.smtp import SmtpConfig, SmtpConnector
from stagecoach.engine.api.routes.events import create_write_key
from stagecoach.engine.cli.journeys import REHEARSAL_CONTACT
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.protocol.messages import EnrolRequest, EventMessage
from stagecoach.engine.services.storage.models import Delivery, Referral, ReferralCode
from stagecoach.engine.temporal.gateway import enrol, send_event
from stagecoach.workflows.runtime import ContactOpener
from tests.peers.smtp import SmtpPeer
from tests.workflows.conftest import Runtime, eventually, open_runtime

WHITEPAPER = {"content_id": "wp-digital-transformation", "kind": "whitepaper"}
PERSON = {"locale": "en", "timezone": "UTC"}


def _deliveries(runtime: Runtime, contact_id: str) -> list[Delivery]:
    with Session(runtime.engine) as session:
        return list(
            session.exec(
                select(Delivery)
                .where(col(Delivery.contact_id) == contact_id)
                .order_by(col(Delivery.id))
            ).all()
        )


def _api(runtime: Runtime) -> TestClient:
    return TestClient(runtime.app())


async def test_no_mail_reaches_an_address_that_normalises_to_an_unsubscribed_one(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    with SmtpPeer() as peer:
        connector = SmtpConnector(
            SmtpConfig(
                host=peer.host, port=peer.port, from_addr="news@example.com", security="none"
            )
        )
        try:
            async with open_runtime(
                env, task_queue, tmp_path, content_library, connectors={"email": connector}
            ) as runtime:
                key = create_write_key(runtime.engine, "web", source="web")
                with _api(runtime) as api:

                    def track(user: str, message_id: str, email: str) -> Any:
                        return api.post(
                            "/v1/track",
                            auth=(key, ""),
                            json={
                                "userId": user,
                                "messageId": message_id,
                                "event": "content.downloaded",
                                "properties": WHITEPAPER,
                                "context": {"traits": {"email": email, **PERSON}},
                            },
                        )

                    # someone@example.com gets the whitepaper, then unsubscribes from it.
                    assert track("someone", "m-1", "someone@example.com").status_code == 200

                    async def mailed() -> bool:
                        return len(peer.accepted) == 1

                    await eventually(mailed, within=60)
                    [mail] = peer.accepted
                    assert mail.rcpt_tos == ("someone@example.com",)
                    runtime.touched.update(d.contact_id for d in _all_deliveries(runtime))
                    link = re.findall(r"<(https?://[^>]+)>", mail.message["List-Unsubscribe"])[0]
                    parts = urlsplit(link)
                    unsubscribed = api.post(
                        parts.path + (f"?{parts.query}" if parts.query else ""),
                        data={"List-Unsubscribe": "One-Click"},
                    )
                    assert unsubscribed.status_code == 200, unsubscribed.text

                    # The ingestion API refuses the invisible-character variant...
                    refused = track("someone-else", "m-2", "someone@exa\u200bmple.com")
                    assert refused.status_code == 400, refused.text
                    assert refused.json()["errors"][0]["field"] == "traits.email"

                # ...and the delivery activity checks what a workflow already holds (an
                # address stored before canonical forms, or sent by another path).
                await runtime.event(
                    "c-fullwidth",
                    "content.downloaded",
                    properties=WHITEPAPER,
                    traits={"email": "SomeOne@ｅｘａｍｐｌｅ．com.", **PERSON},
                )
                await runtime.event(
                    "c-zero-width",
                    "content.downloaded",
                    properties=WHITEPAPER,
                    traits={"email": "someone@exa\u200bmple.com", **PERSON},
                )

                async def both_blocked() -> bool:
                    rows = _deliveries(runtime, "c-fullwidth") + _deliveries(
                        runtime, "c-zero-width"
                    )
                    return len(rows) == 2 and all(r.status == "blocked" for r in rows)

                await eventually(both_blocked, within=60)
                [fullwidth] = _deliveries(runtime, "c-fullwidth")
                [zero_width] = _deliveries(runtime, "c-zero-width")
                assert fullwidth.error == "suppressed:email"
                assert zero_width.error == "invalid_address:email"
        finally:
            await connector.aclose()
        assert len(peer.accepted) == 1  # nothing after the unsubscribe
        assert peer.received == peer.accepted


def _all_deliveries(runtime: Runtime) -> list[Delivery]:
    with Session(runtime.engine) as session:
        return list(session.exec(select(Delivery)).all())


async def test_a_rehearsal_referrers_code_refuses_the_rehearsal_contacts_own_email(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    """What ``stagecoach journeys rehearse nps_survey`` does, through the same Python API:
    the rehearsal contact has no identities, only its workflow's attributes."""
    async with open_runtime(env, task_queue, tmp_path, content_library) as runtime:
        contact = f"rehearsal-nps_survey-{uuid.uuid4().hex[:8]}"
        identify = EventMessage(
            message_id=uuid.uuid4().hex,
            type="identify",
            occurred_at=datetime.now(UTC),
            traits=dict(REHEARSAL_CONTACT),
            source="rehearsal",
        )
        opening = await ContactOpener(runtime.engine, runtime.settings).open(
            contact, event=identify, journey="nps_survey"
        )
        runtime.touched.add(contact)
        # Three days' settling in about five seconds; a week to answer in about twelve.
        result = await enrol(
            runtime.client,
            runtime.settings,
            contact,
            EnrolRequest("nps_survey", time_scale=2e-5, event=identify),
            rehearsal=True,
            opening=opening,
        )
        assert result.accepted, result.reason

        async def surveyed() -> bool:
            return any(d.status == "sent" for d in _deliveries(runtime, contact))

        await eventually(surveyed, within=60)
        await send_event(
            runtime.client,
            runtime.settings,
            contact,
            EventMessage(
                message_id=uuid.uuid4().hex,
                type="nps.answered",
                occurred_at=datetime.now(UTC),
                properties={"score": 10},
                source="rehearsal",
            ),
        )

        async def issued() -> bool:
            return _code_of(runtime, contact) is not None

        await eventually(issued, within=60)
        code = _code_of(runtime, contact)
        with _api(runtime) as api:
            for own in ("rehearsal@example.com", "Rehearsal@ＥＸＡＭＰＬＥ.com."):
                response = api.post(
                    f"/r/{code}", json={"name": "Rehearsal", "email": own, "consent": True}
                )
                assert response.status_code == 403, (own, response.text)
                assert response.json()["reason"] == "self_referral"
            friend = api.post(
                f"/r/{code}",
                json={"name": "Friend", "email": "friend@example.com", "consent": True},
            )
            assert friend.status_code == 200, friend.text
        with Session(runtime.engine) as session:
            runtime.touched.update(r.referee_id for r in session.exec(select(Referral)).all())


def _code_of(runtime: Runtime, contact_id: str) -> str | None:
    with Session(runtime.engine) as session:
        row = session.exec(
            select(ReferralCode).where(col(ReferralCode.referrer_id) == contact_id)
        ).first()
        return row.code if row is not None else None
