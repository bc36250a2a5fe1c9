"""The SMTP connector against a real SMTP server (tests/peers/smtp.py), faults included."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stagecoach.connectors.email import IDEMPOTENCY_HEADER
from stagecoach.connectors.ratelimit import RateLimiter
from stagecoach.connectors.smtp import (
    SmtpConfig,
    SmtpConnector,
    classify_reply,
    enhanced_status,
)
from stagecoach.engine.domain.addresses import sending_address
from stagecoach.engine.domain.bounces import key_digest
from stagecoach.engine.domain.content import (
    BUNDLED_CONTENT_DIR,
    ContentLibrary,
    LinkSigner,
    RenderContact,
)
from stagecoach.engine.protocol.connector import (
    OutgoingMessage,
    PermanentDeliveryError,
    RetryableDeliveryError,
    SendResult,
)
from stagecoach.engine.services.ingest import normalise_email
from tests.helpers import free_port
from tests.peers.smtp import SmtpPeer

FROM = "Northwind IoT <news@northwind.example>"
NOW = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
CONTENT = "case-study-manufacturing"
LIBRARY = ContentLibrary.load(BUNDLED_CONTENT_DIR)
SIGNER = LinkSigner(b"k" * 32, "https://mkt.example.com", timedelta(days=30))


def outgoing(
    n: int, *, to: str | None = None, locale: str = "en", key: str | None = None
) -> OutgoingMessage:
    key = key or f"c-{n}:b2b_nurture:v1:case_study:1"
    rendered = LIBRARY.render(
        CONTENT,
        channel="email",
        locale=locale,
        contact=RenderContact(f"c-{n}", {"first_name": f"Name{n}", "company": "Plant & Co"}),
        now=NOW,
        signer=SIGNER,
        idempotency_key=key,
    )
    return OutgoingMessage(
        channel="email",
        to=to or f"person{n}@example.com",
        idempotency_key=key,
        contact_id=f"c-{n}",
        rendered=rendered.to_dict(),
    )


def _lines(text: str) -> str:
    """Text as sent, whatever the wire's line endings (CRLF on the wire)."""
    return text.replace("\r\n", "\n").rstrip("\n")


def config(peer: SmtpPeer, **overrides: Any) -> SmtpConfig:
    values: dict[str, Any] = {
        "host": peer.host,
        "port": peer.port,
        "security": "none",
        "from_addr": FROM,
        "local_hostname": "worker.stagecoach.test",
        "pool_size": 4,
        "timeout": 5.0,
    }
    values.update(overrides)
    return SmtpConfig(**values)


@pytest.fixture(scope="module")
def server() -> Iterator[SmtpPeer]:
    with SmtpPeer() as peer:
        yield peer


@pytest.fixture
def peer(server: SmtpPeer) -> SmtpPeer:
    server.clear_faults()
    server.reset()
    return server


@pytest.fixture
async def connector(peer: SmtpPeer) -> AsyncIterator[SmtpConnector]:
    smtp = SmtpConnector(config(peer))
    yield smtp
    await smtp.close()


# --- what arrives --------------------------------------------------------------------------


async def test_email_arrives_as_multipart_alternative_with_every_header(
    peer: SmtpPeer, connector: SmtpConnector
) -> None:
    message = outgoing(1, locale="zh-CN", to="li.lei@example.cn")
    rendered = message.rendered

    result = await connector.send(message)

    [mail] = peer.accepted
    assert mail.mail_from == "news@northwind.example"
    assert mail.rcpt_tos == ("li.lei@example.cn",)
    received = mail.message
    assert received.get_content_type() == "multipart/alternative"
    text, html = received.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    assert _lines(text.get_content()) == _lines(rendered["text"])
    assert _lines(html.get_content()) == _lines(rendered["html"])
    # A Chinese subject travels as RFC 2047 encoded words and decodes back unchanged.
    head = mail.data.split(b"\r\n\r\n", 1)[0]
    assert b"Subject: =?utf-8?" in head
    assert str(received["Subject"]) == rendered["subject"]
    assert any(ord(c) > 127 for c in str(received["Subject"]))
    assert received["From"] == FROM
    assert received["To"] == "li.lei@example.cn"
    assert received["Message-ID"] == rendered["headers"]["Message-ID"]
    assert received["List-Unsubscribe"] == rendered["headers"]["List-Unsubscribe"]
    assert received["List-Unsubscribe"].startswith("<https://mkt.example.com/")
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert received[IDEMPOTENCY_HEADER] == key_digest(message.idempotency_key)
    assert message.idempotency_key not in mail.data.decode("ascii")  # its digest, not the key
    assert mail.data.isascii()  # 7-bit clean: any relay takes it
    assert result == SendResult(
        provider_message_id=rendered["headers"]["Message-ID"],
        status="accepted",
        response=result.response,
    )
    assert result.response["reply"].startswith("250")


async def test_burst_of_500_arrives_exactly_once_each_over_few_sessions(
    peer: SmtpPeer,
) -> None:
    messages = [outgoing(n) for n in range(500)]
    async with SmtpConnector(config(peer, pool_size=8)) as smtp:
        results = await asyncio.gather(*(smtp.send(m) for m in messages))
        stats = smtp.stats

    assert all(r.status == "accepted" and not r.duplicate for r in results)
    copies = peer.copies_by_key()
    assert len(peer.accepted) == 500
    assert set(copies) == {key_digest(m.idempotency_key) for m in messages}
    assert set(copies.values()) == {1}
    # Pooled: a handful of sessions carried 500 messages, never more than the pool at once.
    assert peer.sessions <= 8
    assert peer.max_open_sessions <= 8
    assert stats.opened == peer.sessions
    assert stats.reused == 500 - stats.opened
    assert peer.commands["EHLO"] == peer.sessions
    peer.wait_until_closed()
    assert peer.commands["QUIT"] == peer.sessions


# --- classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "at", "code"),
    [
        (
            "550 5.1.1 <x@example.com>: Recipient address rejected: User unknown",
            "RCPT",
            "hard_bounce",
        ),
        ("553 5.1.3 Bad recipient address syntax", "RCPT", "hard_bounce"),
        ("551 User not local; please try <forward@example.org>", "RCPT", "hard_bounce"),
        ("552 5.2.2 Mailbox full", "RCPT", "mailbox_full"),
        ("554 5.7.1 <x@example.com>: Relay access denied", "RCPT", "policy_rejected"),
        ("550 5.7.1 Message rejected as spam by content filter", "DATA", "policy_rejected"),
        ("554 Transaction failed: listed at a block list", "DATA", "policy_rejected"),
        ("550 5.1.1 The email account does not exist", "DATA", "hard_bounce"),
        ("554 5.6.0 Message content rejected", "DATA", "message_rejected"),
    ],
)
async def test_5xx_replies_are_permanent_and_classified(
    peer: SmtpPeer, connector: SmtpConnector, reply: str, at: Any, code: str
) -> None:
    peer.fail_address("x@example.com", reply, at=at)

    with pytest.raises(PermanentDeliveryError) as caught:
        await connector.send(outgoing(1, to="x@example.com"))

    assert caught.value.code == code
    assert reply in caught.value.message
    assert peer.accepted == []
    # The session survives a refused transaction (reset with RSET) and carries the next.
    await connector.send(outgoing(2))
    assert len(peer.accepted) == 1
    assert peer.sessions == 1
    assert peer.commands["RSET"] == 1


async def test_sender_refused_is_permanent_sender_rejected(
    peer: SmtpPeer, connector: SmtpConnector
) -> None:
    peer.fail_next(1, "553 5.1.8 Sender address rejected: Domain not found", at="MAIL")
    with pytest.raises(PermanentDeliveryError) as caught:
        await connector.send(outgoing(1))
    assert caught.value.code == "sender_rejected"
    assert peer.accepted == []


@pytest.mark.parametrize(
    ("reply", "delay"),
    [
        ("451 4.3.0 Temporary local problem, please try again", timedelta(minutes=1)),
        ("450 4.2.1 Greylisted, please try again later", timedelta(minutes=5)),
        ("452 4.5.3 Too many recipients this hour", timedelta(minutes=1)),
    ],
)
async def test_4xx_replies_are_retryable_with_a_suggested_delay(
    peer: SmtpPeer, connector: SmtpConnector, reply: str, delay: timedelta
) -> None:
    peer.fail_address("x@example.com", reply, times=1)

    with pytest.raises(RetryableDeliveryError) as caught:
        await connector.send(outgoing(1, to="x@example.com"))
    assert caught.value.retry_after == delay
    assert peer.accepted == []

    # The retry the activity makes later goes through.
    await connector.send(outgoing(1, to="x@example.com"))
    assert len(peer.accepted) == 1


async def test_421_on_a_fresh_session_is_retryable_and_the_next_send_reconnects(
    peer: SmtpPeer, connector: SmtpConnector
) -> None:
    peer.fail_next(1, "421 4.3.2 Service shutting down, closing channel")

    with pytest.raises(RetryableDeliveryError) as caught:
        await connector.send(outgoing(1))
    assert caught.value.retry_after == timedelta(minutes=2)
    assert peer.accepted == []

    await connector.send(outgoing(1))
    assert len(peer.accepted) == 1
    assert peer.sessions == 2  # the 421 closed the first session


async def test_421_on_a_reused_session_is_retried_at_once_on_a_fresh_one(
    peer: SmtpPeer, connector: SmtpConnector
) -> None:
    await connector.send(outgoing(1))
    # What a relay that timed out our idle session says to the next command.
    peer.fail_next(1, "421 4.4.2 Timeout exceeded, closing connection")

    result = await connector.send(outgoing(2))

    assert result.response["attempts"] == 2
    assert peer.sessions == 2
    assert peer.copies(key_digest(outgoing(2).idempotency_key)) == 1
    assert len(peer.accepted) == 2


async def test_connection_dropped_after_data_is_retryable_and_the_copy_is_recognisable(
    peer: SmtpPeer, connector: SmtpConnector
) -> None:
    message = outgoing(1)
    digest = key_digest(message.idempotency_key)
    peer.drop_after_data(1)

    with pytest.raises(RetryableDeliveryError) as caught:
        await connector.send(message)
    assert "may have accepted" in caught.value.message
    assert caught.value.retry_after == timedelta(seconds=30)
    # The server took the message in but never said so: the one window SMTP cannot close.
    [unacknowledged] = peer.received
    assert not unacknowledged.acknowledged

    await connector.send(message)  # the activity's retry, on a new session

    assert peer.copies(digest) == 2
    first, second = peer.received
    assert first.message["Message-ID"] == second.message["Message-ID"]
    assert peer.sessions == 2


async def test_the_commit_hook_runs_after_354_and_before_the_content_with_the_message_id(
    peer: SmtpPeer, connector: SmtpConnector
) -> None:
    seen: list[tuple[str, int]] = []

    async def commit(message_id: str) -> None:
        # The server said 354 to DATA and holds nothing yet: the point of no return.
        seen.append((message_id, len(peer.received)))

    result = await connector.send(outgoing(1), commit=commit)

    assert seen == [(result.provider_message_id, 0)]
    [arrived] = peer.received
    assert arrived.message["Message-ID"] == result.provider_message_id


async def test_a_commit_hook_that_fails_leaves_the_server_nothing_and_the_session_closed(
    peer: SmtpPeer, connector: SmtpConnector
) -> None:
    class RecordFailed(Exception):
        pass

    async def commit(message_id: str) -> None:
        raise RecordFailed(message_id)

    with pytest.raises(RecordFailed):
        await connector.send(outgoing(1), commit=commit)
    await connector.send(outgoing(2))  # the retry of some later send

    # The server never got the first message's final dot, so it delivered nothing of it;
    # the session it was on is not reused (it is mid-DATA).
    assert [m.key_digest for m in peer.received] == [key_digest(outgoing(2).idempotency_key)]
    assert connector.stats.opened == 2


async def test_a_refused_final_dot_after_the_commit_is_still_a_refusal(
    peer: SmtpPeer, connector: SmtpConnector
) -> None:
    committed: list[str] = []

    async def commit(message_id: str) -> None:
        committed.append(message_id)

    peer.fail_next(1, "452 4.3.1 Insufficient system storage", at="DATA")
    with pytest.raises(RetryableDeliveryError):
        await connector.send(outgoing(1), commit=commit)
    # The caller recorded the send at the commit and corrects its record on the error.
    assert len(committed) == 1


async def test_a_session_the_server_closed_while_idle_is_replaced() -> None:
    with SmtpPeer(idle_timeout=0.2) as peer:
        async with SmtpConnector(config(peer)) as smtp:
            await smtp.send(outgoing(1))
            for _ in range(100):  # the server's idle timeout closes the session
                if not peer.open_sessions:
                    break
                await asyncio.sleep(0.05)

            result = await smtp.send(outgoing(2))

            # Noticed before use (the transport saw the EOF) or on the first command
            # (a loaded machine had not yet read it): either way one retry at most, on a
            # fresh session, and the message goes once.
            assert result.response["attempts"] in (1, 2)
            assert smtp.stats.dropped == 1
        assert peer.sessions == 2
        assert len(peer.accepted) == 2


async def test_timeout_waiting_for_the_reply_is_retryable(peer: SmtpPeer) -> None:
    peer.delay_data(1.0)
    async with SmtpConnector(config(peer, timeout=0.3)) as smtp:
        with pytest.raises(RetryableDeliveryError) as caught:
            await smtp.send(outgoing(1))
    assert "during DATA" in caught.value.message


async def test_cancelled_send_closes_its_session(peer: SmtpPeer, connector: SmtpConnector) -> None:
    peer.delay_data(0.5)
    sending = asyncio.create_task(connector.send(outgoing(1)))
    await asyncio.sleep(0.2)
    sending.cancel()  # what an activity's timeout does
    with pytest.raises(asyncio.CancelledError):
        await sending
    peer.delay_data(0)

    await connector.send(outgoing(2))

    assert connector.stats.dropped == 1
    assert connector.stats.opened == 2  # the half-used session was not reused
    assert peer.sessions == 2


async def test_unreachable_server_is_retryable() -> None:
    smtp = SmtpConnector(
        SmtpConfig(
            host="127.0.0.1",
            port=free_port(),
            security="none",
            from_addr=FROM,
            local_hostname="w.test",
            timeout=2,
        )
    )
    with pytest.raises(RetryableDeliveryError) as caught:
        await smtp.send(outgoing(1))
    assert "cannot reach the SMTP server" in caught.value.message
    assert caught.value.retry_after == timedelta(seconds=30)
    await smtp.close()


# --- the pool ---------------------------------------------------------------------------------


async def test_idle_session_is_probed_with_noop_before_reuse(peer: SmtpPeer) -> None:
    now = [0.0]
    async with SmtpConnector(config(peer, idle_probe_after=10), clock=lambda: now[0]) as smtp:
        await smtp.send(outgoing(1))
        await smtp.send(outgoing(2))
        assert peer.commands["NOOP"] == 0
        now[0] += 11
        await smtp.send(outgoing(3))
        assert peer.commands["NOOP"] == 1
    assert peer.sessions == 1


async def test_sessions_are_retired_after_max_messages_and_max_age(peer: SmtpPeer) -> None:
    now = [0.0]
    settings = config(peer, pool_size=1, max_messages_per_session=3, max_session_age=60)
    async with SmtpConnector(settings, clock=lambda: now[0]) as smtp:
        for n in range(7):
            await smtp.send(outgoing(n))
        assert peer.sessions == 3  # 3 + 3 + 1
        now[0] += 61
        await smtp.send(outgoing(8))
        assert peer.sessions == 4
    peer.wait_until_closed()
    assert peer.commands["QUIT"] == 4


async def test_close_quits_idle_sessions_and_later_sends_are_retried(peer: SmtpPeer) -> None:
    smtp = SmtpConnector(config(peer))
    await asyncio.gather(*(smtp.send(outgoing(n)) for n in range(8)))
    await smtp.close()
    peer.wait_until_closed()
    assert peer.commands["QUIT"] == peer.sessions
    with pytest.raises(RetryableDeliveryError, match="closed"):
        await smtp.send(outgoing(9))


async def test_rate_limiter_is_respected(peer: SmtpPeer) -> None:
    messages = [outgoing(n) for n in range(40)]
    async with SmtpConnector(config(peer)) as smtp:
        started = time.perf_counter()
        await asyncio.gather(*(smtp.send(m) for m in messages))
        unlimited = time.perf_counter() - started

    async with SmtpConnector(config(peer), limiter=RateLimiter(20, burst=1)) as smtp:
        started = time.perf_counter()
        await asyncio.gather(*(smtp.send(m) for m in messages))
        limited = time.perf_counter() - started

    # 40 at 20/s with no saved-up tokens: 39 waits of 50 ms.
    assert limited >= 1.85
    assert limited > unlimited
    assert len(peer.accepted) == 80


async def test_rate_from_settings_builds_a_limiter(peer: SmtpPeer) -> None:
    async with SmtpConnector(config(peer, rate_per_second=50)) as smtp:
        started = time.perf_counter()
        await asyncio.gather(*(smtp.send(outgoing(n)) for n in range(60)))
        assert time.perf_counter() - started >= 0.15  # 50 saved up, then 10 at 50/s


# --- TLS and AUTH -----------------------------------------------------------------------------


async def test_starttls_and_auth() -> None:
    with SmtpPeer(tls="starttls", auth=("mailer", "s3cret")) as peer:
        assert peer.cafile is not None
        settings = config(
            peer, security="starttls", ca_file=peer.cafile, username="mailer", password="s3cret"
        )
        async with SmtpConnector(settings) as smtp:
            await smtp.send(outgoing(1))
            await smtp.send(outgoing(2))
        assert len(peer.accepted) == 2
        assert peer.sessions == 1
        assert peer.commands["EHLO"] == 2  # before and after STARTTLS
        assert peer.auth_failures == 0
        assert "password" not in repr(settings)
        assert "s3cret" not in repr(settings)


async def test_wrong_password_is_retryable_with_a_fix() -> None:
    with SmtpPeer(tls="starttls", auth=("mailer", "s3cret")) as peer:
        assert peer.cafile is not None
        settings = config(
            peer, security="starttls", ca_file=peer.cafile, username="mailer", password="nope"
        )
        async with SmtpConnector(settings) as smtp:
            with pytest.raises(RetryableDeliveryError) as caught:
                await smtp.send(outgoing(1))
        assert "refused the login of 'mailer'" in caught.value.message
        assert "check the SMTP username and password" in caught.value.message
        assert caught.value.retry_after == timedelta(minutes=5)
        assert peer.auth_failures >= 1  # aiosmtplib tries each offered mechanism
        assert peer.accepted == []


async def test_untrusted_certificate_is_a_retryable_tls_failure() -> None:
    with SmtpPeer(tls="starttls") as peer:
        async with SmtpConnector(config(peer, security="starttls")) as smtp:
            with pytest.raises(RetryableDeliveryError, match="TLS with the SMTP server"):
                await smtp.send(outgoing(1))
        assert peer.accepted == []


async def test_implicit_tls() -> None:
    with SmtpPeer(tls="implicit") as peer:
        assert peer.cafile is not None
        async with SmtpConnector(config(peer, security="tls", ca_file=peer.cafile)) as smtp:
            await smtp.send(outgoing(1))
        assert len(peer.accepted) == 1


# --- addresses --------------------------------------------------------------------------------


async def test_idn_domain_goes_out_in_ascii_form(peer: SmtpPeer, connector: SmtpConnector) -> None:
    await connector.send(outgoing(1, to="ana@bücher.example"))
    [mail] = peer.accepted
    assert mail.rcpt_tos == ("ana@xn--bcher-kva.example",)
    assert "SMTPUTF8" not in mail.mail_options


async def test_non_ascii_mailbox_uses_smtputf8(peer: SmtpPeer, connector: SmtpConnector) -> None:
    await connector.send(outgoing(1, to="李雷@example.cn"))
    [mail] = peer.accepted
    assert mail.rcpt_tos == ("李雷@example.cn",)
    assert "SMTPUTF8" in mail.mail_options


@pytest.mark.parametrize(
    ("to", "rcpt"),
    [
        ("Ana@Example.COM", "ana@example.com"),
        ("ana@ｅｘａｍｐｌｅ．ｃｏｍ", "ana@example.com"),  # full-width letters and dot
        ("ａｎａ@ＢÜＣＨＥＲ.example.", "ana@xn--bcher-kva.example"),
    ],
)
async def test_the_recipient_is_the_canonical_address_the_suppression_check_used(
    peer: SmtpPeer, connector: SmtpConnector, to: str, rcpt: str
) -> None:
    await connector.send(outgoing(1, to=to))
    [mail] = peer.accepted
    assert mail.rcpt_tos == (rcpt,)
    assert rcpt == sending_address(normalise_email(to))


async def test_non_ascii_mailbox_without_smtputf8_is_permanent() -> None:
    with SmtpPeer(smtputf8=False) as peer:
        async with SmtpConnector(config(peer)) as smtp:
            with pytest.raises(PermanentDeliveryError, match="needs SMTPUTF8") as caught:
                await smtp.send(outgoing(1, to="李雷@example.cn"))
        assert caught.value.code == "invalid_address"
        assert peer.accepted == []


# --- bad input: refused before any connection -----------------------------------------------


def _wechat_rendered() -> dict[str, Any]:
    return LIBRARY.render(
        CONTENT,
        channel="wechat",
        locale="en",
        contact=RenderContact("c-1"),
        now=NOW,
        signer=None,
        idempotency_key="k",
    ).to_dict()


def _without(key: str) -> dict[str, Any]:
    data = dict(outgoing(1).rendered)
    del data[key]
    return data


def _with(**fields: Any) -> dict[str, Any]:
    return {**outgoing(1).rendered, **fields}


@pytest.mark.parametrize(
    ("change", "code", "names"),
    [
        ({"channel": "wechat"}, "contract", "OutgoingMessage.channel is 'wechat'"),
        ({"rendered": _wechat_rendered()}, "contract", "rendered['channel'] is 'wechat'"),
        ({"rendered": _without("content_id")}, "contract", "rendered lacks 'content_id'"),
        ({"rendered": _with(subject=" ")}, "contract", "rendered['subject'] is empty"),
        ({"rendered": _with(text="", html="")}, "contract", "['text'] and ['html'] are both"),
        (
            {"rendered": _with(headers={"X-Evil": "a\r\nBcc: victim@example.com"})},
            "contract",
            "rendered['headers'] cannot be written",
        ),
        ({"to": ""}, "invalid_address", "OutgoingMessage.to is empty"),
        ({"to": "Ana <ana@example.com>"}, "invalid_address", "not a bare address"),
        ({"to": "ana@example.com\r\nBcc: x@y.z"}, "invalid_address", "not a bare address"),
        ({"to": "ana.example.com"}, "invalid_address", "is not local@domain"),
        ({"to": "ana@localhost"}, "invalid_address", "is not local@domain"),
        # IDNA would drop these and mail ana@example.com, an address nobody checked.
        ({"to": "ana@exa\u200bmple.com"}, "invalid_address", "ZERO WIDTH SPACE"),
        ({"to": "ana@exa\u00admple.com"}, "invalid_address", "SOFT HYPHEN"),
        ({"to": "a\u200dna@example.com"}, "invalid_address", "ZERO WIDTH JOINER"),
    ],
)
async def test_bad_input_is_permanent_and_names_the_field(
    peer: SmtpPeer, connector: SmtpConnector, change: dict[str, Any], code: str, names: str
) -> None:
    message = replace(outgoing(1), **change)

    with pytest.raises(PermanentDeliveryError) as caught:
        await connector.send(message)

    assert caught.value.code == code
    assert names in caught.value.message
    assert peer.sessions == 0  # refused before connecting
    assert peer.received == []


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="pool_size"):
        SmtpConfig(host="h", from_addr=FROM, pool_size=0)
    with pytest.raises(ValueError, match="security"):
        SmtpConfig(host="h", from_addr=FROM, security="ssl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="holds no address"):
        SmtpConfig(host="h", from_addr="Northwind")
    assert SmtpConfig(host="h", from_addr=FROM).resolved_port == 587
    assert SmtpConfig(host="h", from_addr=FROM, security="tls").resolved_port == 465
    assert SmtpConfig(host="h", from_addr=FROM).resolved_envelope_from == "news@northwind.example"


# --- the classification table, for stages a peer cannot easily reach -------------------------


@pytest.mark.parametrize(
    ("code", "text", "stage", "expected"),
    [
        (421, "4.7.0 Too many connections", "CONNECT", ("retry", timedelta(seconds=30))),
        (
            554,
            "5.7.1 Client host blocked using Spamhaus",
            "CONNECT",
            ("retry", timedelta(minutes=5)),
        ),
        (
            535,
            "5.7.8 Authentication credentials invalid",
            "CONNECT",
            ("retry", timedelta(minutes=5)),
        ),
        (450, "4.7.1 Client host rejected: greylisted", "RCPT", ("retry", timedelta(minutes=5))),
        (552, "Requested mail action aborted: exceeded storage", "RCPT", ("perm", "mailbox_full")),
        (552, "Message size exceeds fixed limit", "DATA", ("perm", "message_rejected")),
        (550, "5.4.1 Recipient address rejected: Access denied", "RCPT", ("perm", "hard_bounce")),
        (550, "Rejected due to DMARC policy", "DATA", ("perm", "policy_rejected")),
        (550, "5.7.26 Unauthenticated email is not accepted", "DATA", ("perm", "policy_rejected")),
        (250, "OK", "DATA", ("retry", timedelta(minutes=1))),
    ],
)
def test_classify_reply(code: int, text: str, stage: Any, expected: tuple[str, Any]) -> None:
    error = classify_reply(code, text, stage=stage)
    kind, detail = expected
    if kind == "retry":
        assert isinstance(error, RetryableDeliveryError)
        assert error.retry_after == detail
    else:
        assert isinstance(error, PermanentDeliveryError)
        assert error.code == detail
    assert f"{code} {text}" in error.message


def test_enhanced_status() -> None:
    assert enhanced_status("5.1.1 <a@b.c>: unknown") == (5, 1, 1)
    assert enhanced_status(" 4.7.26 later") == (4, 7, 26)
    assert enhanced_status("User unknown 5.1.1") is None


def test_the_fast_wire_writer_says_what_the_stdlib_says() -> None:
    """Every bundled email, in both locales, parses to the same headers and bodies
    whether written directly or by the stdlib's generator."""
    import email
    from datetime import UTC, datetime

    from stagecoach.connectors.email.mime import _wire_bytes, build_mime
    from stagecoach.engine.domain.content import (
        BUNDLED_CONTENT_DIR,
        ContentError,
        ContentLibrary,
        RenderContact,
    )

    library = ContentLibrary.load(BUNDLED_CONTENT_DIR)
    sender = "营销团队 <news@example.com>"
    compared = 0
    for item in library.items:
        for locale in ("en", "zh-CN"):
            try:
                rendered = library.render(
                    item.id,
                    channel="email",
                    locale=locale,
                    contact=RenderContact("c-1", {"first_name": "李"}, email="li@example.cn"),
                    now=datetime(2026, 11, 2, 9, tzinfo=UTC),
                    signer=None,
                    idempotency_key=f"k-{item.id}-{locale}",
                )
            except ContentError:
                continue  # no email variant in this locale
            fast = _wire_bytes(rendered, from_addr=sender, to="li@example.cn", key="k")
            assert fast is not None
            slow = build_mime(rendered, from_addr=sender, to="li@example.cn", key="k")
            a = email.message_from_bytes(fast[0], policy=email.policy.default)
            b = email.message_from_bytes(slow.as_bytes(), policy=email.policy.default)
            for name in ("From", "To", "Subject", "Message-ID", "List-Unsubscribe", "Date"):
                assert str(a[name]) == str(b[name]), (item.id, locale, name)
            assert a.get_content_type() == "multipart/alternative"
            for kind in ("plain", "html"):
                part_a = a.get_body(preferencelist=(kind,))
                part_b = b.get_body(preferencelist=(kind,))
                assert part_a is not None
                assert part_b is not None
                assert part_a.get_content() == part_b.get_content(), (item.id, locale, kind)
            assert all(len(line) <= 998 for line in fast[0].split(b"\r\n"))
            compared += 1
    assert compared >= 10
