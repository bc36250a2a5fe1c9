"""WeChat mass send against the local WeChat API (tests/peers/wechat.py), over real HTTP.

Effects are asserted at the peer: the jobs it accepted, with their recipients, and the
calls it saw. Bad jobs are refused before any call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from stagecoach.connectors.wechat import WeChatConfig
from stagecoach.connectors.wechat.masssend import (
    MAX_OPENIDS,
    QUOTA_EXHAUSTED,
    MassSendJob,
    MassSendJobError,
    MassSendQuotaExhausted,
    MassSendResult,
    WeChatMassSender,
    clientmsgid_for,
    jobs_for,
)
from stagecoach.engine.protocol.connector import PermanentDeliveryError, RetryableDeliveryError
from tests.peers.wechat import WeChatPeer

MEDIA_ID = "VmuCOhkqjAeYPpIxLYSjwq4BlENjq7Idqb9xrBL1bPQ"


def openids(n: int, prefix: str = "o") -> list[str]:
    return [f"{prefix}{i:027d}" for i in range(n)]


@pytest.fixture
def start_peer() -> Iterator[Callable[..., WeChatPeer]]:
    peers: list[WeChatPeer] = []

    def start(**options: Any) -> WeChatPeer:
        peer = WeChatPeer(**options).start()
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.stop()


@pytest.fixture
async def sender_for() -> AsyncIterator[Callable[[WeChatPeer], WeChatMassSender]]:
    built: list[WeChatMassSender] = []

    def make(peer: WeChatPeer) -> WeChatMassSender:
        sender = WeChatMassSender(
            WeChatConfig(appid=peer.appid, secret=peer.secret, api_base=peer.url, timeout=5),
            now=lambda: datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
        )
        built.append(sender)
        return sender

    yield make
    for sender in built:
        await sender.aclose()


def article(broadcast: str, part: int | str = 0, **target: Any) -> MassSendJob:
    return MassSendJob(
        broadcast_id=broadcast,
        clientmsgid=clientmsgid_for(broadcast, part),
        msgtype="mpnews",
        media_id=MEDIA_ID,
        **target,
    )


# --- by tag and by openid list ---------------------------------------------------------


async def test_a_tag_job_reaches_the_tags_followers(
    start_peer: Callable[..., WeChatPeer], sender_for: Callable[[WeChatPeer], WeChatMassSender]
) -> None:
    peer = start_peer()
    peer.tag_users(101, ["oFan1", "oFan2", "oFan3"])
    peer.tag_users(102, ["oOther"])
    job = replace(article("bc-newsletter-03", "tag:101", tag_id=101), send_ignore_reprint=True)

    result = await sender_for(peer).send(job)

    [accepted] = peer.mass_jobs
    assert accepted.kind == "tag"
    assert accepted.tag_id == 101
    assert accepted.recipients == ("oFan1", "oFan2", "oFan3")
    assert accepted.body["filter"] == {"is_to_all": False, "tag_id": 101}
    assert accepted.body["mpnews"] == {"media_id": MEDIA_ID}
    assert accepted.body["send_ignore_reprint"] == 1
    assert accepted.clientmsgid == job.clientmsgid
    assert result == MassSendResult(
        job.clientmsgid, str(accepted.msg_id), str(accepted.msg_data_id), already_sent=False
    )
    assert job.target == "tag:101"
    assert await sender_for(peer).status(str(accepted.msg_id)) == "SENDING"


async def test_a_long_openid_list_is_sent_in_chunks_each_with_its_own_clientmsgid(
    start_peer: Callable[..., WeChatPeer], sender_for: Callable[[WeChatPeer], WeChatMassSender]
) -> None:
    peer = start_peer(account_type="service")
    audience = openids(MAX_OPENIDS + 1)
    jobs = jobs_for("bc-webinar", audience + audience[:5], msgtype="text", content="Join us at 3pm")

    # 10,001 distinct openids: two chunks of 5,001 and 5,000, never 10,000 and a lone one.
    assert [len(job.openids or ()) for job in jobs] == [5001, 5000]
    assert [job.clientmsgid for job in jobs] == [
        clientmsgid_for("bc-webinar", 0),
        clientmsgid_for("bc-webinar", 1),
    ]
    # Deterministic: the same broadcast and list give the same jobs; a label keeps
    # another batch of the same broadcast apart.
    assert jobs_for("bc-webinar", audience, msgtype="text", content="Join us at 3pm") == jobs
    other = jobs_for("bc-webinar", audience[:4], msgtype="text", content="x", label="batch-2")
    assert other[0].clientmsgid not in {job.clientmsgid for job in jobs}

    sender = sender_for(peer)
    results = [await sender.send(job) for job in jobs]

    accepted = peer.mass_jobs
    assert [job.kind for job in accepted] == ["openids", "openids"]
    assert [r for job in accepted for r in job.recipients] == audience
    assert accepted[0].body["text"] == {"content": "Join us at 3pm"}
    assert [r.msg_id for r in results] == [str(job.msg_id) for job in accepted]
    assert [r.msg_data_id for r in results] == [None, None]  # only articles have one
    assert peer.mass_calls("mass_send") == 2


async def test_a_repeated_clientmsgid_is_answered_already_sent_and_not_sent_twice(
    start_peer: Callable[..., WeChatPeer], sender_for: Callable[[WeChatPeer], WeChatMassSender]
) -> None:
    peer = start_peer(account_type="service")
    sender = sender_for(peer)
    [job] = jobs_for("bc-repeat", openids(3), msgtype="mpnews", media_id=MEDIA_ID)

    first = await sender.send(job)
    again = await sender.send(job)  # a retry after a lost answer, a restarted worker

    assert first.already_sent is False
    assert again == MassSendResult(job.clientmsgid, first.msg_id, None, already_sent=True)
    assert len(peer.mass_jobs) == 1
    assert peer.mass_calls("mass_send") == 2
    assert peer.refused(45065) == 1


# --- quota, tokens and provider trouble ------------------------------------------------


async def test_a_subscription_accounts_second_mass_send_of_the_day_is_quota_exhausted(
    start_peer: Callable[..., WeChatPeer], sender_for: Callable[[WeChatPeer], WeChatMassSender]
) -> None:
    peer = start_peer(account_type="subscription")
    peer.tag_users(7, ["oA", "oB"])
    sender = sender_for(peer)
    await sender.send(article("bc-morning", tag_id=7))

    with pytest.raises(MassSendQuotaExhausted) as refused:
        await sender.send(article("bc-evening", tag_id=7))

    assert isinstance(refused.value, PermanentDeliveryError)  # the broadcast pauses
    assert refused.value.code == QUOTA_EXHAUSTED
    assert refused.value.errcode == 45028
    assert "no mass send left" in refused.value.message
    assert "quota resets" in refused.value.fix
    assert len(peer.mass_jobs) == 1
    assert peer.refused(45028) == 1
    # The first job's retry is still recognised as sent, not refused for the quota.
    assert (await sender.send(article("bc-morning", tag_id=7))).already_sent


async def test_a_service_account_has_four_mass_sends_a_month(
    start_peer: Callable[..., WeChatPeer], sender_for: Callable[[WeChatPeer], WeChatMassSender]
) -> None:
    peer = start_peer(account_type="service")
    sender = sender_for(peer)
    for n in range(4):
        await sender.send(article(f"bc-{n}", openids=tuple(openids(2))))
    with pytest.raises(MassSendQuotaExhausted):
        await sender.send(article("bc-5", openids=tuple(openids(2))))
    assert len(peer.mass_jobs) == 4


async def test_the_daily_api_quota_is_quota_exhausted_too(
    start_peer: Callable[..., WeChatPeer], sender_for: Callable[[WeChatPeer], WeChatMassSender]
) -> None:
    peer = start_peer()
    peer.fail_next(45009, endpoint="mass_send")
    with pytest.raises(MassSendQuotaExhausted) as refused:
        await sender_for(peer).send(article("bc-daily", openids=tuple(openids(2))))
    assert refused.value.code == QUOTA_EXHAUSTED
    assert "2026-03-02 16:01 UTC" in refused.value.fix  # midnight Beijing, and a minute
    assert peer.mass_jobs == []


async def test_an_expired_token_is_renewed_and_the_job_sent_once(
    start_peer: Callable[..., WeChatPeer], sender_for: Callable[[WeChatPeer], WeChatMassSender]
) -> None:
    peer = start_peer()
    peer.tag_users(5, ["oA", "oB"])
    sender = sender_for(peer)
    await sender.tokens.verify()
    peer.expire_tokens()  # mid-send: the cached token is now refused with 42001

    result = await sender.send(article("bc-token", tag_id=5))

    [accepted] = peer.mass_jobs
    assert result.msg_id == str(accepted.msg_id)
    assert peer.refused(42001) == 1
    assert peer.tokens_issued == 2
    assert peer.mass_calls("sendall") == 2


@pytest.mark.parametrize("errcode", [-1, 45011, 45066])
async def test_busy_and_rate_limits_are_retryable_and_a_retry_sends_once(
    errcode: int,
    start_peer: Callable[..., WeChatPeer],
    sender_for: Callable[[WeChatPeer], WeChatMassSender],
) -> None:
    peer = start_peer()
    peer.fail_next(errcode, endpoint="mass_send")
    sender = sender_for(peer)
    job = article("bc-busy", openids=tuple(openids(2)))

    with pytest.raises(RetryableDeliveryError) as busy:
        await sender.send(job)
    assert busy.value.retry_after is not None
    assert peer.mass_jobs == []
    assert not (await sender.send(job)).already_sent
    assert len(peer.mass_jobs) == 1


async def test_http_trouble_is_retryable(
    start_peer: Callable[..., WeChatPeer], sender_for: Callable[[WeChatPeer], WeChatMassSender]
) -> None:
    peer = start_peer()
    peer.http_error_next(502, endpoint="mass_send")
    with pytest.raises(RetryableDeliveryError, match="HTTP 502"):
        await sender_for(peer).send(article("bc-http", openids=tuple(openids(2))))
    assert peer.mass_jobs == []


async def test_a_timeout_is_retryable_and_the_retry_of_a_job_accepted_meanwhile_sends_nothing(
    start_peer: Callable[..., WeChatPeer], sender_for: Callable[[WeChatPeer], WeChatMassSender]
) -> None:
    peer = start_peer()
    sender = sender_for(peer)
    await sender.tokens.verify()
    quick = WeChatMassSender(
        WeChatConfig(appid=peer.appid, secret=peer.secret, api_base=peer.url, timeout=0.3),
        tokens=sender.tokens,
    )
    job = article("bc-timeout", openids=tuple(openids(2)))
    peer.slow_next(0.6, endpoint="mass_send")
    try:
        with pytest.raises(RetryableDeliveryError, match="could not reach WeChat"):
            await quick.send(job)
    finally:
        await quick.aclose()
    # WeChat went on with the job after we stopped waiting for its answer.
    for _ in range(100):
        if peer.mass_jobs:
            break
        await asyncio.sleep(0.02)
    [accepted] = peer.mass_jobs

    retried = await sender.send(job)

    assert retried.already_sent
    assert retried.msg_id == str(accepted.msg_id)
    assert len(peer.mass_jobs) == 1


@pytest.mark.parametrize(("errcode", "code"), [(40003, "wechat_40003"), (40007, "wechat_40007")])
async def test_other_refusals_are_permanent_with_the_errcode(
    errcode: int,
    code: str,
    start_peer: Callable[..., WeChatPeer],
    sender_for: Callable[[WeChatPeer], WeChatMassSender],
) -> None:
    peer = start_peer()
    peer.fail_next(errcode, endpoint="mass_send")
    with pytest.raises(PermanentDeliveryError) as refused:
        await sender_for(peer).send(article("bc-bad", openids=tuple(openids(2))))
    assert not isinstance(refused.value, MassSendQuotaExhausted)
    assert refused.value.code == code
    assert f"errcode {errcode}" in refused.value.message


async def test_the_peer_refuses_openid_lists_outside_wechats_bounds(
    start_peer: Callable[..., WeChatPeer], sender_for: Callable[[WeChatPeer], WeChatMassSender]
) -> None:
    """What WeChat answers a client that skips the checks below (the peer's contract)."""
    peer = start_peer()
    sender = sender_for(peer)
    token = await sender.tokens.token()
    for touser in (["oA"], openids(MAX_OPENIDS + 1)):
        body = {"touser": touser, "msgtype": "text", "text": {"content": "hi"}}
        answer = await sender._client.post(
            f"{peer.url}/cgi-bin/message/mass/send", params={"access_token": token}, json=body
        )
        assert answer.json()["errcode"] == 40130
    assert peer.mass_jobs == []


# --- bad jobs: refused before any call ----------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field", "fix"),
    [
        (lambda: jobs_for("bc", [], msgtype="text", content="hi"), "openids", "audience"),
        (lambda: jobs_for("bc", ["oA"], msgtype="text", content="hi"), "openids", "template"),
        (lambda: jobs_for("bc", ["oA", "oA"], msgtype="text", content="hi"), "openids", "template"),
        (
            lambda: article("bc", openids=tuple(openids(MAX_OPENIDS + 1))),
            "openids",
            "jobs_for",
        ),
        (
            lambda: jobs_for("bc", openids(2), msgtype="video", media_id=MEDIA_ID),
            "msgtype",
            "mpnews",
        ),
        (lambda: jobs_for("bc", openids(2), msgtype="mpnews"), "media_id", "upload"),
        (lambda: jobs_for("bc", openids(2), msgtype="text", content=" "), "content", "text"),
        (lambda: article("bc"), "tag_id/openids", "one per job"),
        (lambda: article("bc", tag_id=1, openids=("oA", "oB")), "tag_id/openids", "one per job"),
        (
            lambda: MassSendJob(
                broadcast_id="bc", clientmsgid="x" * 65, msgtype="text", content="hi", tag_id=1
            ),
            "clientmsgid",
            "clientmsgid_for",
        ),
    ],
)
def test_a_bad_job_names_the_field_and_the_fix(
    make: Callable[[], object], field: str, fix: str
) -> None:
    with pytest.raises(MassSendJobError) as bad:
        make()
    assert bad.value.field == field
    assert bad.value.code == "wechat_bad_message"
    assert f"mass send {field} " in bad.value.message
    assert fix in bad.value.fix
    assert fix in str(bad.value)
