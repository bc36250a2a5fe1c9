"""Journeys' email on the real Temporal server through the SMTP connector to a real
aiosmtpd server that refuses on chosen attempts: one copy per contact, and a hard
bounce suppresses the address."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session
from temporalio.testing import WorkflowEnvironment

from stagecoach.connectors.smtp import SmtpConfig, SmtpConnector
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.services.storage.models import Suppression
from stagecoach.engine.temporal.gateway import contact_view
from tests.peers.smtp import SmtpPeer
from tests.workflows.conftest import eventually, open_runtime

WHITEPAPER = {"content_id": "wp-digital-transformation", "kind": "whitepaper"}


def _person(n: int) -> dict[str, object]:
    return {"email": f"buyer{n}@example.com", "locale": "en", "timezone": "UTC"}


@pytest.mark.time_skipping  # the connector asks for minutes between retries after a 421
async def test_421_then_success_delivers_one_copy_to_each_contact(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    with SmtpPeer() as peer:
        connector = SmtpConnector(
            SmtpConfig(
                host=peer.host, port=peer.port, from_addr="news@example.com", security="none"
            )
        )
        peer.fail_next(2, "421 4.7.0 Try again later")  # the first two sends are refused
        try:
            async with open_runtime(
                env, task_queue, tmp_path, content_library, connectors={"email": connector}
            ) as runtime:
                for n in range(5):
                    await runtime.event(
                        f"c-mail-{n}",
                        "content.downloaded",
                        properties=WHITEPAPER,
                        traits=_person(n),
                    )

                for _ in range(30):
                    if len(peer.accepted) >= 5:
                        break
                    await env.sleep(timedelta(minutes=1))  # the retry backoff, skipped
                    await asyncio.sleep(0.2)
                view = await contact_view(runtime.client, "c-mail-0")
                assert view.journeys
        finally:
            await connector.aclose()
        per_recipient: dict[str, int] = {}
        for mail in peer.accepted:
            for rcpt in mail.rcpt_tos:
                per_recipient[rcpt] = per_recipient.get(rcpt, 0) + 1
        assert per_recipient == {f"buyer{n}@example.com": 1 for n in range(5)}


async def test_a_hard_bounce_in_the_smtp_conversation_suppresses_the_address(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    with SmtpPeer() as peer:
        connector = SmtpConnector(
            SmtpConfig(
                host=peer.host, port=peer.port, from_addr="news@example.com", security="none"
            )
        )
        peer.fail_address("Gone@Example.com".lower(), "550 5.1.1 No such user")
        try:
            async with open_runtime(
                env, task_queue, tmp_path, content_library, connectors={"email": connector}
            ) as runtime:
                await runtime.event(
                    "c-gone",
                    "content.downloaded",
                    properties=WHITEPAPER,
                    traits={"email": "Gone@Example.com", "locale": "en", "timezone": "UTC"},
                )

                async def suppressed() -> bool:
                    with Session(runtime.engine) as session:
                        return session.get(Suppression, ("email", "gone@example.com")) is not None

                await eventually(suppressed, within=30)
        finally:
            await connector.aclose()
        assert peer.accepted == []
