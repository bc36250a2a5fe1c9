"""The SMTP connector's own wire: pipelined transactions (RFC 2920), replies in order,
DATA framing, and STARTTLS against a certificate issued by a CA, on a real aiosmtpd peer."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Literal

import pytest

from stagecoach.connectors.email import prepare_email
from stagecoach.connectors.smtp import SmtpConfig, SmtpConnector
from stagecoach.connectors.smtp.connector import _data_bytes, _Session, _Wire
from stagecoach.engine.domain.bounces import key_digest
from stagecoach.engine.domain.content import RenderContact
from stagecoach.engine.protocol.connector import (
    OutgoingMessage,
    PermanentDeliveryError,
    RetryableDeliveryError,
    SendResult,
)
from tests.connectors.test_smtp import FROM, outgoing
from tests.peers.smtp import SmtpPeer


def config(peer: SmtpPeer, **overrides: Any) -> SmtpConfig:
    values: dict[str, Any] = {
        "host": peer.host,
        "port": peer.port,
        "security": "none",
        "from_addr": FROM,
        "local_hostname": "worker.stagecoach.test",
        "timeout": 5.0,
        **overrides,
    }
    return SmtpConfig(**values)


@pytest.fixture
def peer() -> Iterator[SmtpPeer]:
    with SmtpPeer() as running:
        yield running


@pytest.fixture
def plain_peer() -> Iterator[SmtpPeer]:
    with SmtpPeer(pipelining=False) as running:
        yield running


# --- pipelining -------------------------------------------------------------------------------


async def test_transaction_goes_out_in_one_write_when_the_server_offers_pipelining(
    peer: SmtpPeer,
) -> None:
    async with SmtpConnector(config(peer, pool_size=1)) as smtp:
        for n in range(3):
            await smtp.send(outgoing(n))

    assert peer.mail_groups == [("MAIL", "RCPT", "DATA")] * 3
    assert len(peer.accepted) == 3
    assert peer.sessions == 1


async def test_one_command_at_a_time_when_the_server_does_not_offer_pipelining(
    plain_peer: SmtpPeer,
) -> None:
    async with SmtpConnector(config(plain_peer, pool_size=1)) as smtp:
        for n in range(3):
            await smtp.send(outgoing(n))

    assert plain_peer.mail_groups == [("MAIL",)] * 3
    assert len(plain_peer.accepted) == 3


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
@pytest.mark.parametrize(
    ("reply", "at", "code"),
    [
        ("553 5.1.8 Sender address rejected", "MAIL", "sender_rejected"),
        ("550 5.1.1 User unknown", "RCPT", "hard_bounce"),
        ("554 5.6.0 Message content rejected", "DATA", "message_rejected"),
    ],
)
async def test_a_refused_transaction_leaves_the_session_in_step_for_the_next(
    pipelining: bool, reply: str, at: Literal["MAIL", "RCPT", "DATA"], code: str
) -> None:
    with SmtpPeer(pipelining=pipelining) as peer:
        async with SmtpConnector(config(peer, pool_size=1)) as smtp:
            await smtp.send(outgoing(0))
            peer.fail_next(1, reply, at=at)
            with pytest.raises(PermanentDeliveryError) as caught:
                await smtp.send(outgoing(1))
            # The replies that followed the refusal were read, not left for the next send.
            for n in range(2, 6):
                result = await smtp.send(outgoing(n))
                assert result.response["reply"].startswith("250")
                assert result.response["attempts"] == 1

        assert caught.value.code == code
        assert reply in caught.value.message
        digests = {m.key_digest for m in peer.accepted}
        assert digests == {key_digest(outgoing(n).idempotency_key) for n in (0, 2, 3, 4, 5)}
        assert peer.sessions == 1
        assert peer.commands["RSET"] == 1


async def test_421_inside_a_pipelined_group_moves_the_message_to_a_fresh_session(
    peer: SmtpPeer,
) -> None:
    async with SmtpConnector(config(peer, pool_size=1)) as smtp:
        await smtp.send(outgoing(0))
        peer.fail_next(1, "421 4.3.2 Service shutting down", at="RCPT")
        result = await smtp.send(outgoing(1))

    assert result.response["attempts"] == 2
    assert peer.sessions == 2
    assert peer.copies(key_digest(outgoing(1).idempotency_key)) == 1


async def test_421_on_a_fresh_session_is_retryable(peer: SmtpPeer) -> None:
    peer.fail_next(1, "421 4.3.2 Service shutting down", at="RCPT")
    async with SmtpConnector(config(peer)) as smtp:
        with pytest.raises(RetryableDeliveryError, match="421"):
            await smtp.send(outgoing(1))
    assert peer.accepted == []


async def test_burst_over_pipelined_sessions_arrives_exactly_once(peer: SmtpPeer) -> None:
    messages = [outgoing(n) for n in range(300)]
    async with SmtpConnector(config(peer, pool_size=6, max_messages_per_session=40)) as smtp:
        await asyncio.gather(*(smtp.send(m) for m in messages))

    copies = peer.copies_by_key()
    assert set(copies) == {key_digest(m.idempotency_key) for m in messages}
    assert set(copies.values()) == {1}
    assert peer.commands["MAIL"] == 300
    peer.wait_until_closed()
    assert peer.commands["QUIT"] == peer.sessions


# --- back to back on a busy session (RFC 2920 section 3.1) -----------------------------------


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every write the connector's wire makes, in order."""
    written: list[bytes] = []
    send = _Wire.send

    def recording(wire: _Wire, data: bytes) -> None:
        written.append(data)
        send(wire, data)

    monkeypatch.setattr(_Wire, "send", recording)
    return written


def digest(n: int) -> str:
    return key_digest(outgoing(n).idempotency_key)


async def test_the_next_envelope_goes_out_in_the_same_write_as_the_previous_content(
    peer: SmtpPeer, writes: list[bytes]
) -> None:
    messages = [outgoing(n) for n in range(4)]
    async with SmtpConnector(config(peer, pool_size=1)) as smtp:
        results = await asyncio.gather(*(smtp.send(m) for m in messages))
        assert smtp.stats.pipelined == 3

    # Each send got its own result.
    for message, result in zip(messages, results, strict=True):
        assert result.provider_message_id == prepare_email(message, from_addr=FROM).message_id
        assert result.response == {"reply": "250 2.0.0 OK queued", "session": 1, "attempts": 1}
    # Content and dot of message n, then MAIL, RCPT and DATA of message n + 1, in one write.
    chained = [w for w in writes if b"\r\n.\r\nMAIL FROM:" in w]
    assert len(chained) == 3
    for n, write in enumerate(chained):
        assert digest(n).encode() in write
        assert write.endswith(b"RCPT TO:<person%d@example.com>\r\nDATA\r\n" % (n + 1))
    assert peer.mail_groups == [("MAIL", "RCPT", "DATA")]  # only the first opens a write
    assert [m.key_digest for m in peer.accepted] == [digest(n) for n in range(4)]
    assert peer.sessions == 1


async def test_a_busy_session_costs_one_round_trip_a_message_and_a_lone_send_two() -> None:
    rtt = 0.2
    with SmtpPeer(rtt=rtt) as peer:
        async with SmtpConnector(config(peer, pool_size=1)) as smtp:
            await smtp.send(outgoing(0))  # the session: connect, greeting, EHLO

            started = time.perf_counter()
            await smtp.send(outgoing(1))
            lone = (time.perf_counter() - started) / rtt

            started = time.perf_counter()
            await asyncio.gather(*(smtp.send(outgoing(n)) for n in range(2, 12)))
            busy = (time.perf_counter() - started) / rtt
            assert smtp.stats.pipelined == 9

    # Alone: the envelope group, then the content; nothing waits for a partner.
    assert 2 <= lone < 2.9, lone
    # Ten queued: 2 for the first, then 1 each (2 each, 20, without cross-message pipelining).
    assert 11 <= busy < 15, busy
    assert len(peer.accepted) == 12
    assert peer.sessions == 1


@pytest.mark.parametrize(
    ("reply", "error", "code", "delay"),
    [
        ("550 5.1.1 User unknown", PermanentDeliveryError, "hard_bounce", None),
        ("451 4.3.0 Temporary local problem", RetryableDeliveryError, None, timedelta(minutes=1)),
    ],
    ids=["550", "451"],
)
async def test_a_follower_refused_at_rcpt_leaves_the_message_before_it_delivered(
    peer: SmtpPeer,
    reply: str,
    error: type[PermanentDeliveryError | RetryableDeliveryError],
    code: str | None,
    delay: timedelta | None,
) -> None:
    peer.fail_address("x@example.com", reply, at="RCPT")
    messages = [outgoing(0), outgoing(1, to="x@example.com"), outgoing(2)]
    async with SmtpConnector(config(peer, pool_size=1)) as smtp:
        first, refused, last = await asyncio.gather(
            *(smtp.send(m) for m in messages), return_exceptions=True
        )
        assert smtp.stats.pipelined == 1  # message 1 rode behind message 0

    assert isinstance(first, SendResult)
    assert first.response["session"] == 1
    assert isinstance(refused, error)
    assert reply in refused.message
    if isinstance(refused, PermanentDeliveryError):
        assert refused.code == code
    else:
        assert refused.retry_after == delay
    assert isinstance(last, SendResult)
    assert last.response["session"] == 1
    assert [m.key_digest for m in peer.accepted] == [digest(0), digest(2)]
    assert peer.commands["RSET"] == 1
    assert peer.sessions == 1


async def test_a_refused_message_is_not_reset_into_its_followers_data(peer: SmtpPeer) -> None:
    peer.fail_address("x@example.com", "554 5.6.0 Message content rejected", at="DATA")
    async with SmtpConnector(config(peer, pool_size=1)) as smtp:
        refused, follower = await asyncio.gather(
            smtp.send(outgoing(0, to="x@example.com")), smtp.send(outgoing(1)),
            return_exceptions=True,
        )  # fmt: skip
        assert smtp.stats.pipelined == 1
        after = await smtp.send(outgoing(2))

    assert isinstance(refused, PermanentDeliveryError)
    assert refused.code == "message_rejected"
    assert isinstance(follower, SendResult)
    assert follower.response["attempts"] == 1
    assert after.response["session"] == 1
    assert [m.key_digest for m in peer.accepted] == [digest(1), digest(2)]
    assert peer.commands["RSET"] == 0
    assert peer.sessions == 1


async def test_a_drop_after_the_dot_leaves_that_message_in_doubt_and_its_follower_goes_once(
    peer: SmtpPeer,
) -> None:
    peer.drop_after_data(1)
    async with SmtpConnector(config(peer, pool_size=1)) as smtp:
        doubtful, follower = await asyncio.gather(
            smtp.send(outgoing(0)), smtp.send(outgoing(1)), return_exceptions=True
        )
        assert smtp.stats.pipelined == 1
        # As without a follower: retryable, and the retry may make a second copy.
        assert isinstance(doubtful, RetryableDeliveryError)
        assert "may have accepted" in doubtful.message
        assert doubtful.retry_after == timedelta(seconds=30)
        # The follower's content never left: it went once, on a new session.
        assert isinstance(follower, SendResult)
        assert follower.response["session"] == 2
        assert follower.response["attempts"] == 1  # not tried on the dead session
        await smtp.send(outgoing(0))  # the activity's retry

    assert peer.copies(digest(1)) == 1
    assert peer.copies(digest(0)) == 2
    assert [(m.key_digest, m.acknowledged) for m in peer.received] == [
        (digest(0), False),
        (digest(1), True),
        (digest(0), True),
    ]
    assert peer.sessions == 2


async def test_421_to_the_dot_is_retryable_and_the_follower_goes_on_a_new_session(
    peer: SmtpPeer,
) -> None:
    peer.fail_next(1, "421 4.3.2 Service shutting down", at="DATA")
    async with SmtpConnector(config(peer, pool_size=1)) as smtp:
        closed, follower = await asyncio.gather(
            smtp.send(outgoing(0)), smtp.send(outgoing(1)), return_exceptions=True
        )
        assert smtp.stats.pipelined == 1

    assert isinstance(closed, RetryableDeliveryError)
    assert "421" in closed.message
    assert closed.retry_after == timedelta(minutes=2)
    assert isinstance(follower, SendResult)
    assert follower.response["session"] == 2
    assert follower.response["attempts"] == 1  # not tried on the closed session
    assert [m.key_digest for m in peer.accepted] == [digest(1)]
    assert peer.sessions == 2


async def test_a_busy_session_still_retires_after_max_messages(peer: SmtpPeer) -> None:
    async with SmtpConnector(config(peer, pool_size=1, max_messages_per_session=3)) as smtp:
        await asyncio.gather(*(smtp.send(outgoing(n)) for n in range(7)))
        # Two followers on each full session; none after a session's last message.
        assert smtp.stats.pipelined == 4
        assert smtp.stats.retired == 2

    assert Counter(m.session for m in peer.accepted) == {1: 3, 2: 3, 3: 1}
    assert len({m.key_digest for m in peer.accepted}) == 7
    peer.wait_until_closed()
    assert peer.commands["QUIT"] == 3


async def test_cancelled_followers_and_queued_sends_never_strand_the_pool(
    peer: SmtpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    chained = asyncio.Event()
    send = _Wire.send

    def watching(wire: _Wire, data: bytes) -> None:
        send(wire, data)
        if b"\r\n.\r\nMAIL FROM:" in data:
            chained.set()

    monkeypatch.setattr(_Wire, "send", watching)
    peer.delay_data(0.3)  # message 0 waits for its 250 with message 1's envelope sent
    async with SmtpConnector(config(peer, pool_size=1)) as smtp:
        first, follower, queued = (asyncio.create_task(smtp.send(outgoing(n))) for n in range(3))
        async with asyncio.timeout(2):
            await chained.wait()
        follower.cancel()  # its envelope is on the wire
        queued.cancel()  # still waiting for the pool
        result = await first
        for cancelled in (follower, queued):
            with pytest.raises(asyncio.CancelledError):
                await cancelled
        peer.delay_data(0)
        async with asyncio.timeout(5):  # a place in the pool lost would hang here
            after = await smtp.send(outgoing(3))

        # The session holding the cancelled follower's open transaction was closed.
        assert smtp.stats.dropped == 1

    assert result.response["session"] == 1
    assert after.response["session"] == 2
    assert [m.key_digest for m in peer.accepted] == [digest(0), digest(3)]


async def test_a_send_cancelled_while_queued_is_never_sent(peer: SmtpPeer) -> None:
    async with SmtpConnector(config(peer, pool_size=1)) as smtp:
        first, cancelled, last = (asyncio.create_task(smtp.send(outgoing(n))) for n in range(3))
        await asyncio.sleep(0)  # all three started: the first connects, two queue
        cancelled.cancel()
        await asyncio.gather(first, last)
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert smtp.stats.pipelined == 1  # the last rode behind the first
        assert smtp.stats.dropped == 0

    assert [m.key_digest for m in peer.accepted] == [digest(0), digest(2)]
    assert peer.commands["MAIL"] == 2
    assert peer.sessions == 1


async def test_a_send_cancelled_as_it_is_handed_the_session_closes_it_and_frees_its_place(
    peer: SmtpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks: list[asyncio.Task[SendResult]] = []
    checkin = SmtpConnector._checkin

    async def checkin_then_cancel(smtp: SmtpConnector, session: _Session) -> bool:
        passed = await checkin(smtp, session)
        if passed:
            tasks[1].cancel()  # handed the session, not yet running: an activity timeout
        return passed

    monkeypatch.setattr(SmtpConnector, "_checkin", checkin_then_cancel)
    async with SmtpConnector(config(peer, pool_size=1)) as smtp:
        tasks += (asyncio.create_task(smtp.send(outgoing(n))) for n in range(2))
        first = await tasks[0]
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
        assert smtp.stats.pipelined == 1
        # Its transaction was left open on the server: that session is closed, and the
        # place in the pool it was given is free again.
        assert smtp.stats.dropped == 1
        async with asyncio.timeout(5):
            after = await smtp.send(outgoing(2))

    assert first.response["session"] == 1
    assert after.response["session"] == 2
    assert [m.key_digest for m in peer.accepted] == [digest(0), digest(2)]


async def test_no_follower_when_the_server_does_not_offer_pipelining(
    plain_peer: SmtpPeer,
) -> None:
    async with SmtpConnector(config(plain_peer, pool_size=1)) as smtp:
        await asyncio.gather(*(smtp.send(outgoing(n)) for n in range(4)))
        assert smtp.stats.pipelined == 0

    assert plain_peer.mail_groups == [("MAIL",)] * 4
    assert len(plain_peer.accepted) == 4


async def test_no_follower_when_pipelining_across_messages_is_turned_off(peer: SmtpPeer) -> None:
    # STAGECOACH_SMTP_PIPELINE_MESSAGES=false: each message's own group, one at a time.
    async with SmtpConnector(config(peer, pool_size=1, pipeline_messages=False)) as smtp:
        await asyncio.gather(*(smtp.send(outgoing(n)) for n in range(4)))
        assert smtp.stats.pipelined == 0

    assert len(peer.accepted) == 4
    assert peer.sessions == 1


# --- the wire ---------------------------------------------------------------------------------


class _FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_replies_split_across_reads_and_multiline_replies_come_out_whole() -> None:
    transport = _FakeTransport()
    wire = _Wire(transport)
    assert transport.protocol is wire

    wire.data_received(b"250-first\r\n250-sec")
    waiting = asyncio.create_task(wire.reply(1.0))
    await asyncio.sleep(0)
    assert not waiting.done()
    wire.data_received(b"ond\r\n250 third\r\n354 go ahead\r\n25")
    assert await waiting == (250, "first\nsecond\nthird")
    assert await wire.reply(1.0) == (354, "go ahead")
    wire.data_received(b"0 2.0.0 queued\r\n")
    assert await wire.reply(1.0) == (250, "2.0.0 queued")


async def test_a_malformed_reply_or_silence_ends_the_connection() -> None:
    transport = _FakeTransport()
    wire = _Wire(transport)
    wire.data_received(b"hello there\r\n")
    with pytest.raises(ConnectionError, match="malformed SMTP reply"):
        await wire.reply(1.0)
    assert transport.closed

    silent = _FakeTransport()
    wire = _Wire(silent)
    with pytest.raises(TimeoutError, match="no SMTP reply within"):
        await wire.reply(0.05)
    assert silent.closed


async def test_a_reply_already_received_is_read_before_the_close_that_followed_it() -> None:
    wire = _Wire(_FakeTransport())
    wire.data_received(b"421 4.3.2 closing\r\n")
    wire.connection_lost(None)
    assert await wire.reply(1.0) == (421, "4.3.2 closing")
    with pytest.raises(ConnectionError, match="closed the connection"):
        await wire.reply(1.0)


def test_data_is_framed_with_crlf_dots_doubled_and_the_final_dot() -> None:
    assert _data_bytes(b"a\r\nb\r\n") == b"a\r\nb\r\n.\r\n"
    assert _data_bytes(b".top\r\nmid\r\n.\r\n..two\r\nend") == (
        b"..top\r\nmid\r\n..\r\n...two\r\nend\r\n.\r\n"
    )
    assert _data_bytes(b"bare\nlf\rcr\r\n.x\n") == b"bare\r\nlf\r\ncr\r\n..x\r\n.\r\n"


async def test_lines_opening_with_a_dot_arrive_intact(peer: SmtpPeer) -> None:
    message = outgoing(1, to="josé@example.com")  # the stdlib path: quoted-printable text
    rendered = dict(message.rendered)
    rendered["text"] = "Hello\n.\n.hidden line\n..two dots\nend\n"
    message = message.__class__(**{**vars(message), "rendered": rendered})
    wire = prepare_email(message, from_addr=FROM).payload
    # The case under test: lines that are a lone dot, or open with one.
    assert b"\r\n.\r\n" in wire
    assert b"\r\n.hidden" in wire

    async with SmtpConnector(config(peer)) as smtp:
        await smtp.send(message)

    (received,) = peer.accepted
    text = received.message.get_body(("plain",))
    assert text is not None
    assert text.get_content().replace("\r\n", "\n") == rendered["text"]


# --- TLS against a CA ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["ec", "rsa"])
async def test_starttls_verifies_a_certificate_issued_by_a_ca(key: Literal["ec", "rsa"]) -> None:
    auth = ("mailer", "s3cret")
    with (
        SmtpPeer(tls="starttls", auth=auth, issuer_ca=True, key=key) as peer,
        SmtpPeer(tls="starttls", auth=auth, issuer_ca=True, key=key) as stranger,
    ):
        settings = config(
            peer, security="starttls", ca_file=peer.cafile, username="mailer", password="s3cret"
        )
        async with SmtpConnector(settings) as smtp:
            for n in range(3):
                await smtp.send(outgoing(n))
        assert len(peer.accepted) == 3
        assert peer.mail_groups == [("MAIL", "RCPT", "DATA")] * 3

        # Another CA's certificate for the same names is refused: the chain is checked.
        wrong = config(
            stranger, security="starttls", ca_file=peer.cafile, username="mailer", password="s3cret"
        )
        async with SmtpConnector(wrong) as smtp:
            with pytest.raises(RetryableDeliveryError, match="TLS with the SMTP server"):
                await smtp.send(outgoing(9))
        assert stranger.accepted == []


def test_every_bundled_email_marked_framed_needs_no_dot_stuffing() -> None:
    """``framed`` lets DATA skip the scan; it must only be set when the scan is a no-op."""
    from stagecoach.engine.domain.content import ContentError
    from tests.connectors.test_smtp import LIBRARY, NOW, SIGNER

    checked = 0
    for item in LIBRARY.items:
        for locale in ("en", "zh-CN"):
            try:
                rendered = LIBRARY.render(
                    item.id,
                    channel="email",
                    locale=locale,
                    contact=RenderContact("c-1", {"first_name": "李"}, email="li@example.cn"),
                    now=NOW,
                    signer=SIGNER,
                    idempotency_key=f"k-{item.id}-{locale}",
                )
            except ContentError:
                continue  # no email variant in this locale
            message = OutgoingMessage(
                channel="email",
                to="li@example.cn",
                idempotency_key=f"k-{item.id}-{locale}",
                contact_id="c-1",
                rendered=rendered.to_dict(),
            )
            prepared = prepare_email(message, from_addr="营销团队 <news@example.com>")
            assert prepared.framed, (item.id, locale)
            assert _data_bytes(prepared.payload) == prepared.payload + b".\r\n"
            checked += 1
    assert checked >= 10
