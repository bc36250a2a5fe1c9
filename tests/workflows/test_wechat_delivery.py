"""A journey's WeChat sends on the real Temporal server through the real connector and
the local WeChat peer: faults mid-run, tokens expiring, exactly one message each."""

from __future__ import annotations

from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from stagecoach.connectors.wechat import WeChatConfig, WeChatConnector
from stagecoach.engine.domain.content import ContentLibrary
from stagecoach.engine.temporal.gateway import contact_view
from tests.peers.wechat import WeChatPeer
from tests.workflows.conftest import eventually, open_runtime

FOLLOWER = {
    "wechat_openid": "o-follower-1",
    "locale": "zh-CN",
    "timezone": "UTC",
    "consent": {"wechat": True},
}


async def test_busy_answers_and_an_expired_token_still_deliver_exactly_once(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, content_library: ContentLibrary
) -> None:
    with WeChatPeer() as peer:
        connector = WeChatConnector(
            WeChatConfig(appid=peer.appid, secret=peer.secret, api_base=peer.url)
        )
        peer.fail_next(-1, times=1)  # system busy: retried by the activity after 3 s
        peer.expire_tokens()  # and the token dies unannounced: refreshed once, resent
        try:
            async with open_runtime(
                env, task_queue, tmp_path, content_library, connectors={"wechat": connector}
            ) as runtime:
                await runtime.event(
                    "c-wx",
                    "content.downloaded",
                    properties={"content_id": "wp-digital-transformation", "kind": "whitepaper"},
                    traits=FOLLOWER,
                )

                async def delivered() -> bool:
                    return len(peer.accepted) >= 1

                await eventually(delivered, within=30)
                view = await contact_view(runtime.client, "c-wx")
                assert view.journeys  # still in the nurture, waiting for its next step
        finally:
            await connector.aclose()
        sent = [m for m in peer.accepted if m.openid == "o-follower-1"]
        assert len(sent) == 1, sent
        assert peer.refused(-1) == 1


def test_a_wechat_revocation_lasts_until_the_next_interaction(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlmodel import Session

    from stagecoach.engine.cli.compose import build_activities
    from stagecoach.engine.services.storage.models import Contact, Event, Suppression
    from tests.helpers import migrated_engine, runtime_settings

    settings = runtime_settings(tmp_path, "unused")
    engine = migrated_engine(settings.resolved_database_url)
    activities = build_activities(engine, settings)
    revoked_at = datetime.now(UTC) - timedelta(hours=1)
    with Session(engine) as session:
        session.add(Contact(id="c-r", traits={}))
        session.add(
            Suppression(
                channel="wechat",
                address="o-r",
                reason="consent_revoked",
                contact_id="c-r",
                created_at=revoked_at,
            )
        )
        session.add(Suppression(channel="email", address="r@example.com", reason="consent_revoked"))
        session.commit()
    assert activities._suppressed("wechat", "o-r")  # no interaction since: still closed
    with Session(engine) as session:
        session.add(
            Event(
                message_id="wx-in-1",
                contact_id="c-r",
                name="wechat.message_received",
                source="wechat",
                occurred_at=revoked_at + timedelta(minutes=30),
            )
        )
        session.commit()
    assert not activities._suppressed("wechat", "o-r")  # they wrote to us: open again
    assert activities._suppressed("email", "r@example.com")  # email unsubscribes stay
    engine.dispose()
