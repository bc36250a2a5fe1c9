"""A journey's WeChat sends on the real Temporal server through the real connector and
the local WeChat peer: faults mid-run, tokens expiring, exactly one message each."""

from __future__ import annotations

from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from connectors.wechat import WeChatConfig, WeChatConnector
from engine.content import ContentLibrary
from engine.gateway import contact_view
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
