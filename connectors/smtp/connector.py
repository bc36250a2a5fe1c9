"""The SMTP connector: rendered emails over a bounded pool of reused SMTP sessions.

One connector per worker holds at most ``pool_size`` SMTP sessions (STARTTLS, implicit
TLS or plain; AUTH when a username is set) and reuses each for up to
``max_messages_per_session`` messages: a send borrows an idle session, runs one
MAIL/RCPT/DATA transaction on it and gives it back. A session idle longer than
``idle_probe_after`` is checked with NOOP before use; one that failed a transaction is
reset with RSET; one the server dropped is replaced. A reused session that turns out dead
before DATA (the server timed it out while idle) is replaced and the message sent on a
fresh one at once, which is safe because nothing was transferred. ``close()`` ends every
session with QUIT.

aiosmtplib opens each session (TCP or implicit TLS, greeting, EHLO, STARTTLS with
certificate verification, AUTH); the transactions then run on the connector's own small
reply reader, because aiosmtplib reads one reply per command written. When the server
offers PIPELINING (RFC 2920; production relays do), MAIL, RCPT and DATA go out in one
write and their replies come back together: a pooled message costs two round trips
(that group, then the message and its final reply) instead of four. After a refusal
inside a group, the replies still due are read before RSET, so the session stays in step.

When sends are queued for the pool (every session busy), a pipelining session also
carries them back to back (RFC 2920 section 3.1): the first queued message's MAIL, RCPT
and DATA go out in the same write as the current message's content and final dot, so a
busy session costs one round trip per message. The queued send is then handed the
session, with its place in the pool, once the message before it has its final reply; it
reads its own three replies and classifies them itself, like any send, so every send
still gets its own result and a refusal of one never touches the other. The follower is
picked when the content is written, from the queue that bounds the pool anyway: no
reader task, no per-session queue, and no send ever waits for a partner (with one message
in flight nothing changes). If the session dies, times out or says 421 before the
follower's replies, the follower's content never left, so it starts over on another
session. A follower cancelled while its envelope is on the wire leaves the server waiting
for content, so that session is closed. A refused final dot is not followed by RSET while
a follower's envelope is on the wire: the reply to the dot ends the transaction anyway
(RFC 5321 section 4.1.1.4), and an RSET sent then would land inside the follower's DATA.

Replies are classified in one place, :mod:`stagecoach.connectors.smtp.replies`; the message bytes
are built by :mod:`stagecoach.connectors.email.mime`, shared with the HTTP email providers.

Exactly once: SMTP has no idempotency key. The delivery activity records the key before
it calls ``send`` and never sends a key again once it is recorded as sent, so a key is
delivered at most once per successful send. A caller that passes ``commit`` closes the
window between the server taking the message and the caller's record of it: the hook runs
after DATA's 354 and before the content and its final dot are written, and a server
delivers nothing whose final dot it never received, so a caller killed on either side of
its record neither loses the message nor sends it twice (broadcasts do this). The one
window SMTP cannot close is a connection lost after the message's final dot and before
the server's reply: the server may have queued it, we cannot know, and the retry may
deliver a second copy. For that
case every message carries the same ``Message-ID`` on every attempt (derived from the
key by the content library) and an ``X-Stagecoach-Idempotency-Key`` header, so receivers
and our test peer can recognise and count copies. The header carries
:func:`stagecoach.engine.domain.bounces.key_digest` of the key, not the key itself: the key names
the contact and the journey step, which recipients have no business reading.

``SendResult.provider_message_id`` is the ``Message-ID`` header.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import Literal, Self

import aiosmtplib
import structlog

from stagecoach.connectors.email.mime import PreparedEmail, prepare_email
from stagecoach.connectors.ratelimit import RateLimiter
from stagecoach.connectors.smtp.replies import (
    CONFIG_DELAY,
    NETWORK_DELAY,
    Stage,
    classify_reply,
)
from stagecoach.engine.protocol.connector import (
    DeliveryError,
    OutgoingMessage,
    PermanentDeliveryError,
    PointOfNoReturn,
    RetryableDeliveryError,
    SendResult,
)

Security = Literal["starttls", "tls", "none"]

_log = structlog.get_logger("stagecoach.connectors.smtp")

# Network-level failures of an established session (TimeoutError: no reply in time).
_DROPPED = (OSError,)  # ConnectionError and TimeoutError among them
_MAX_REPLY = 64 * 1024
_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


@dataclass(frozen=True, kw_only=True)
class SmtpConfig:
    """How to reach the SMTP relay, and how hard to use it.

    Attributes:
        host: Relay host name.
        port: Relay port; ``None`` picks 587 for ``starttls``, 465 for ``tls``, 25 for
            ``none``.
        security: ``"starttls"`` (upgrade, required), ``"tls"`` (implicit TLS from the
            first byte) or ``"none"`` (plain; a local relay or a test server).
        username: AUTH user; ``None`` skips AUTH.
        password: AUTH password.
        from_addr: The ``From`` header, e.g. ``"Northwind IoT <news@example.com>"``.
        envelope_from: ``MAIL FROM`` (where bounces go); default: the From address.
        pool_size: Most SMTP sessions open at once; also the most concurrent sends.
        max_messages_per_session: QUIT and reconnect after this many messages (many
            relays cap messages per connection).
        max_session_age: Seconds after which a session is retired instead of reused.
        idle_probe_after: Seconds idle after which a session is NOOP-probed before use.
        timeout: Seconds for connecting and for each SMTP reply.
        ca_file: PEM bundle trusted instead of the system's CAs (a private CA).
        validate_certs: Verify the relay's certificate and host name (keep on).
        local_hostname: Name sent with EHLO; default: this host's FQDN (looked up once).
        rate_per_second: Sends per second for this connector (``None``: no limit); a
            ``limiter`` passed to the connector takes precedence.
        pipeline_messages: Let a busy session send the next queued message's envelope
            right behind a message's content (RFC 2920 section 3.1). Turn off for a
            relay that advertises PIPELINING but mishandles that.
    """

    host: str
    port: int | None = None
    security: Security = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    from_addr: str
    envelope_from: str | None = None
    pool_size: int = 8
    max_messages_per_session: int = 100
    max_session_age: float = 300.0
    idle_probe_after: float = 15.0
    timeout: float = 30.0
    ca_file: str | None = None
    validate_certs: bool = True
    local_hostname: str | None = None
    rate_per_second: float | None = None
    pipeline_messages: bool = True

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {self.pool_size}")
        if self.max_messages_per_session < 1:
            raise ValueError(
                f"max_messages_per_session must be at least 1, not {self.max_messages_per_session}"
            )
        if self.security not in ("starttls", "tls", "none"):
            raise ValueError(f"security must be starttls, tls or none, not {self.security!r}")
        if "@" not in parseaddr(self.from_addr)[1]:
            raise ValueError(f"from_addr {self.from_addr!r} holds no address")

    @property
    def resolved_port(self) -> int:
        if self.port is not None:
            return self.port
        return {"starttls": 587, "tls": 465, "none": 25}[self.security]

    @property
    def resolved_envelope_from(self) -> str:
        return self.envelope_from or parseaddr(self.from_addr)[1]


@dataclass
class PoolStats:
    """Counters for tests, benchmarks and the log: how the pool has been used."""

    opened: int = 0
    reused: int = 0
    retired: int = 0
    dropped: int = 0
    probes: int = 0
    resets: int = 0
    sent: int = 0
    pipelined: int = 0
    """Messages whose MAIL/RCPT/DATA went out with the previous message's content."""


# --- the connector --------------------------------------------------------------------------


class _Wire(asyncio.Protocol):
    """An open session's connection: commands out, replies parsed in the order they come.

    aiosmtplib opens the session (TCP or TLS, greeting, EHLO, STARTTLS, AUTH); then this
    protocol takes over its transport for the transactions, because aiosmtplib reads
    exactly one reply per command written and so cannot pipeline (RFC 2920): with
    PIPELINING, MAIL, RCPT and DATA go out in one write and their three replies come
    back in one round trip, which halves the round trips of a pooled message.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._buffer = bytearray()
        self._replies: deque[aiosmtplib.SMTPResponse] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self._writable: asyncio.Future[None] | None = None
        transport.set_protocol(self)

    @property
    def is_connected(self) -> bool:
        return self._error is None and not self._transport.is_closing()

    def send(self, data: bytes) -> None:
        if not self.is_connected:
            raise ConnectionError(str(self._error or "the SMTP connection is closed"))
        self._transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        if self._writable is not None:
            await self._writable

    async def reply(self, within: float) -> aiosmtplib.SMTPResponse:
        """The next reply; ``ConnectionError`` if the connection ends first, or
        ``TimeoutError`` (the connection is then closed: a late reply would be paired
        with the wrong command)."""
        while not self._replies:
            if self._error is not None:
                raise ConnectionError(str(self._error))
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(within):
                    await self._waiter
            except TimeoutError:
                self.close()
                raise TimeoutError(f"no SMTP reply within {within:g} s") from None
            finally:
                self._waiter = None
        return self._replies.popleft()

    async def command(self, line: bytes, within: float) -> aiosmtplib.SMTPResponse:
        self.send(line + b"\r\n")
        return await self.reply(within)

    def close(self) -> None:
        self._transport.close()

    # --- asyncio.Protocol -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while (reply := self._parse()) is not None:
                self._replies.append(reply)
        except ValueError as exc:
            self._error = ConnectionError(str(exc))
            self._transport.close()
        if len(self._buffer) > _MAX_REPLY:
            self._error = ConnectionError(f"an SMTP reply longer than {_MAX_REPLY} bytes")
            self._transport.close()
        if self._replies or self._error is not None:
            self._wake()

    def eof_received(self) -> bool:
        return False  # the server ended the session: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._error is None:
            error = ConnectionError(f"the SMTP server closed the connection ({exc or 'EOF'})")
            self._error = error
        self._wake()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            if not self._writable.done():
                self._writable.set_result(None)
            self._writable = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _parse(self) -> aiosmtplib.SMTPResponse | None:
        """One complete reply off the front of the buffer, or None until one is there."""
        buffer, offset, lines = self._buffer, 0, []
        while (end := buffer.find(b"\n", offset)) >= 0:
            line = bytes(buffer[offset:end]).rstrip(b"\r")
            offset = end + 1
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                raise ValueError(f"a malformed SMTP reply line: {line[:80]!r}")
            lines.append(line[4:].strip().decode("utf-8", "surrogateescape"))
            if line[3:4] != b"-":
                del buffer[:offset]
                return aiosmtplib.SMTPResponse(int(line[:3]), "\n".join(lines))
        return None


class _Session:
    __slots__ = (
        "borrowed",
        "last_used",
        "next",
        "number",
        "opened_at",
        "pipelining",
        "sent",
        "size",
        "smtp",
        "smtputf8",
        "wire",
    )

    def __init__(self, smtp: aiosmtplib.SMTP, number: int, now: float) -> None:
        self.smtp = smtp
        # What the server offered, read before the wire takes the transport over.
        self.pipelining = smtp.supports_extension("pipelining")
        self.size = smtp.supports_extension("size")
        self.smtputf8 = smtp.supports_extension("smtputf8")
        transport = smtp.transport
        assert isinstance(transport, asyncio.Transport), transport
        self.wire = _Wire(transport)
        self.number = number
        self.sent = 0
        self.borrowed = 0
        self.opened_at = now
        self.last_used = now
        # The queued send whose MAIL/RCPT/DATA follow the current message on the wire.
        self.next: _Turn | None = None

    @property
    def is_connected(self) -> bool:
        return self.wire.is_connected

    def close(self) -> None:
        self.wire.close()
        self.smtp.close()


@dataclass(eq=False)
class _Turn:
    """A send queued for the pool. ``granted`` gives it its place: ``None`` to check out a
    session itself, or a session on which its MAIL/RCPT/DATA have already been sent."""

    envelope: PreparedEmail
    granted: asyncio.Future[_Session | None]


class _Refused(Exception):
    """The server answered ``reply`` at ``stage``; ``pending`` replies of the group follow."""

    def __init__(self, stage: Stage, reply: aiosmtplib.SMTPResponse, pending: int) -> None:
        super().__init__(f"{reply.code} {reply.message}")
        self.stage: Stage = stage
        self.reply = reply
        self.pending = pending


def _data_bytes(payload: bytes) -> bytes:
    """The message as sent after DATA: CRLF line ends, leading dots doubled, the final dot.

    The regular expressions run only when needed: our payloads are already CRLF and
    rarely have a line opening with a dot, and the two substitutions would otherwise be
    the costliest step of a pooled send (~50 us for a 7 KB message).
    """
    crlf = payload.count(b"\r\n")
    if payload.count(b"\n") != crlf or payload.count(b"\r") != crlf:
        payload = _LINE_END.sub(b"\r\n", payload)
    if payload.startswith(b".") or b"\n." in payload:
        payload = _LEADING_DOT.sub(b"..", payload)
    if not payload.endswith(b"\r\n"):
        payload += b"\r\n"
    return payload + b".\r\n"


class _Failed(Exception):
    """A transaction failed with ``error``; ``stale`` when nothing reached the server."""

    def __init__(self, error: DeliveryError, *, stale: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.stale = stale


class SmtpConnector:
    """Sends email through an SMTP relay over a pool of reused sessions.

    Args:
        config: The relay and pool settings.
        limiter: A rate limit shared with other connectors of this worker; default: one
            built from ``config.rate_per_second`` (or none).
        clock: Monotonic seconds (tests pass a fake to age sessions).
    """

    channel = "email"

    def __init__(
        self,
        config: SmtpConfig,
        *,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.stats = PoolStats()
        self._limiter = limiter or (
            RateLimiter(config.rate_per_second) if config.rate_per_second else None
        )
        self._clock = clock
        self._busy = 0  # sends holding a place in the pool (at most pool_size)
        self._queue: deque[_Turn] = deque()  # sends waiting for a place, first come first
        self._idle: list[_Session] = []
        self._closed = False
        self._hostname = config.local_hostname
        self._tls_context: ssl.SSLContext | None = None
        self._envelope_from = config.resolved_envelope_from  # parsed once, not per message

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def idle_sessions(self) -> int:
        """Sessions open and waiting for the next message."""
        return len(self._idle)

    commits_before_end_of_data = True
    """``send`` takes a ``commit`` hook, awaited after DATA's 354 and before the
    message's content and final dot go out (:class:`CommittingConnector`)."""

    async def send(
        self, message: OutgoingMessage, *, commit: PointOfNoReturn | None = None
    ) -> SendResult:
        """Send one rendered email; see the module docstring for what each failure raises.

        ``commit``, when given, is awaited with the message's ``Message-ID`` once the
        server has said 354 to DATA and before the content and its final dot are written:
        the caller's record that the message is sent. If it raises, the session is closed
        without the dot, so the server discards the message."""
        envelope = prepare_email(message, from_addr=self.config.from_addr)
        if self._closed:
            raise RetryableDeliveryError(
                "the SMTP connector is closed (the worker is shutting down)",
                retry_after=NETWORK_DELAY,
            )
        if self._limiter is not None:
            await self._limiter.acquire()
        handed = await self._take_turn(envelope)
        passed = False  # our place in the pool went to the send that followed us
        try:
            for attempt in (1, 2):
                announced = handed is not None  # our MAIL/RCPT/DATA are already sent
                if handed is not None:
                    session, handed = handed, None
                    self.stats.reused += 1
                else:
                    session = await self._checkout(fresh=attempt > 1)
                session.borrowed += 1
                reused = session.borrowed > 1
                try:
                    reply = await self._transact(
                        session, envelope, announced=announced, commit=commit
                    )
                except _Failed as failed:
                    passed = await self._checkin(session)
                    if failed.stale and reused and attempt == 1:
                        # The server had dropped this idle session; nothing was sent, so
                        # the message goes out on a fresh session at once. (Never after
                        # a follower was taken on, which happens only once DATA got 354,
                        # so we still hold our place in the pool.)
                        _log.info(
                            "smtp_session_stale",
                            session=session.number,
                            error=failed.error.message,
                        )
                        continue
                    raise failed.error from failed.__cause__
                except BaseException:
                    # Cancelled (an activity timeout) or a bug, mid-transaction: the
                    # session's state is unknown, so it is closed, never reused.
                    session.close()
                    passed = await self._checkin(session)
                    raise
                session.sent += 1
                self.stats.sent += 1
                passed = await self._checkin(session)
                return SendResult(
                    provider_message_id=envelope.message_id,
                    status="accepted",
                    response={
                        "reply": f"{reply.code} {reply.message}",
                        "session": session.number,
                        "attempts": attempt,
                    },
                )
            raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
        finally:
            if not passed:
                self._pass_turn()

    async def close(self) -> None:
        """QUIT every idle session; sessions in use close when their send finishes."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._retire(s) for s in idle))

    aclose = close
    """The same as :meth:`close`, named like the other connectors' and httpx's."""

    # --- one transaction ----------------------------------------------------------------------

    async def _transact(
        self,
        session: _Session,
        envelope: PreparedEmail,
        *,
        announced: bool = False,
        commit: PointOfNoReturn | None = None,
    ) -> aiosmtplib.SMTPResponse:
        """One transaction; ``announced`` when its MAIL/RCPT/DATA went out with the
        previous message's content, so only their replies are still to read."""
        wire, timeout = session.wire, self.config.timeout
        if envelope.utf8 and not session.smtputf8:
            raise _Failed(
                PermanentDeliveryError(
                    f"the address {envelope.recipient!r} needs SMTPUTF8, which the SMTP "
                    "server does not offer",
                    code="invalid_address",
                ),
                stale=False,
            )
        group = self._envelope(session, envelope)
        stage: Stage = "MAIL"
        try:
            if session.pipelining and not announced:
                # RFC 2920: one write, three replies, one round trip.
                wire.send(b"".join(command for _, command, _ in group))
            for n, (stage, command, expected) in enumerate(group):
                if not session.pipelining:
                    wire.send(command)
                reply = await wire.reply(timeout)
                if reply.code not in expected:
                    pending = len(group) - n - 1 if session.pipelining else 0
                    raise _Refused(stage, reply, pending)
            if commit is not None:
                await commit(envelope.message_id)
            data = envelope.payload + b".\r\n" if envelope.framed else _data_bytes(envelope.payload)
            session.next = self._follower(session)
            if session.next is not None:
                # RFC 2920 section 3.1: the next message's envelope rides with our content.
                self.stats.pipelined += 1
                group = self._envelope(session, session.next.envelope)
                data += b"".join(command for _, command, _ in group)
            wire.send(data)
            await wire.drain()
            reply = await wire.reply(timeout)
            if reply.code != 250:
                raise _Refused("DATA", reply, 0)
            return reply
        except _Refused as refused:
            code, text = refused.reply
            error = classify_reply(code, text, stage=refused.stage)
            if code == 421:
                session.close()  # the server is closing this session
            elif session.is_connected and session.next is None:
                # (With a follower on the wire, the reply to our dot ended our transaction
                # and an RSET now would land inside the follower's DATA.)
                await self._reset(session, refused.pending)
            # 421 before DATA on a reused session is usually an idle timeout announced late.
            stale = code == 421 and refused.stage != "DATA"
            raise _Failed(error, stale=stale) from refused
        except _DROPPED as exc:
            session.close()
            if stage == "DATA":
                text = (
                    f"the SMTP connection was lost during DATA ({exc}); the server may have "
                    "accepted the message, so a retry may deliver a second copy with the same "
                    "Message-ID"
                )
            else:
                text = f"the SMTP connection was lost at {stage} ({exc})"
            raise _Failed(
                RetryableDeliveryError(text, retry_after=NETWORK_DELAY), stale=stage != "DATA"
            ) from exc

    def _envelope(
        self, session: _Session, envelope: PreparedEmail
    ) -> list[tuple[Stage, bytes, tuple[int, ...]]]:
        """MAIL, RCPT and DATA for ``envelope`` on ``session``, with the replies each expects."""
        mail_options = b" SMTPUTF8" if envelope.utf8 else b""
        if session.size:
            mail_options += b" SIZE=%d" % len(envelope.payload)
        encoding = "utf-8" if envelope.utf8 else "ascii"
        sender = self._envelope_from.encode(encoding)
        return [
            ("MAIL", b"MAIL FROM:<%s>%s\r\n" % (sender, mail_options), (250,)),
            ("RCPT", b"RCPT TO:<%s>\r\n" % envelope.recipient.encode(encoding), (250, 251)),
            ("DATA", b"DATA\r\n", (354,)),
        ]

    async def _reset(self, session: _Session, pending: int = 0) -> None:
        """Read the ``pending`` replies of a refused pipelined group, then RSET."""
        self.stats.resets += 1
        wire, timeout = session.wire, self.config.timeout
        try:
            for _ in range(pending):
                if (await wire.reply(timeout)).code == 354:
                    # DATA accepted although MAIL or RCPT was refused: send an empty message
                    # to end it; RSET then discards the transaction.
                    wire.send(b".\r\n")
                    await wire.reply(timeout)
            if (await wire.command(b"RSET", timeout)).code != 250:
                session.close()
        except _DROPPED:
            session.close()

    # --- the pool -----------------------------------------------------------------------------

    async def _take_turn(self, envelope: PreparedEmail) -> _Session | None:
        """Wait for a place in the pool; a session if our envelope was sent ahead on it."""
        if self._busy < self.config.pool_size and not self._queue:
            self._busy += 1
            return None
        turn = _Turn(envelope, asyncio.get_running_loop().create_future())
        self._queue.append(turn)
        try:
            return await turn.granted
        except asyncio.CancelledError:
            if turn.granted.cancelled():
                if turn in self._queue:  # else a session took it: see _checkin
                    self._queue.remove(turn)
            else:
                # Granted, then cancelled before we could run: give the place back, and
                # close a session that holds our unfinished transaction.
                session = turn.granted.result()
                if session is not None:
                    session.close()
                    self.stats.dropped += 1
                self._pass_turn()
            raise

    def _pass_turn(self) -> None:
        """Give a finished send's place in the pool to the first queued send, or free it."""
        while self._queue:
            turn = self._queue.popleft()
            if not turn.granted.done():
                turn.granted.set_result(None)
                return
        self._busy -= 1

    def _follower(self, session: _Session) -> _Turn | None:
        """The first queued send, taken off the queue, if it can follow on ``session``
        right behind the message being sent (never waited for)."""
        if not self._queue or not session.pipelining or self._closed:
            return None
        if not self.config.pipeline_messages:
            return None
        if session.sent + 1 >= self.config.max_messages_per_session:
            return None  # the message being sent is the session's last
        if self._clock() - session.opened_at > self.config.max_session_age:
            return None
        if self._queue[0].envelope.utf8 and not session.smtputf8:
            return None
        return self._queue.popleft()

    async def _checkout(self, *, fresh: bool = False) -> _Session:
        now = self._clock()
        while self._idle and not fresh:
            session = self._idle.pop()  # the most recently used: the likeliest alive
            if not session.is_connected:
                self.stats.dropped += 1
                continue
            if now - session.opened_at > self.config.max_session_age:
                await self._retire(session)
                continue
            if now - session.last_used > self.config.idle_probe_after:
                self.stats.probes += 1
                try:
                    alive = (await session.wire.command(b"NOOP", self.config.timeout)).code == 250
                except _DROPPED:
                    alive = False
                if not alive:
                    session.close()
                    self.stats.dropped += 1
                    continue
            self.stats.reused += 1
            return session
        return await self._open()

    async def _checkin(self, session: _Session) -> bool:
        """Hand ``session`` to its follower, or back to the pool; True when the follower
        took the returning send's place in the pool."""
        session.last_used = self._clock()
        follower, session.next = session.next, None
        if follower is not None and follower.granted.done():
            # Cancelled while its envelope was on the wire: the server now waits for
            # content that will never come.
            session.close()
            follower = None
        if not session.is_connected:
            self.stats.dropped += 1
            _log.info("smtp_session_dropped", session=session.number, sent=session.sent)
        elif follower is not None:
            follower.granted.set_result(session)
            return True
        elif self._closed or session.sent >= self.config.max_messages_per_session:
            await self._retire(session)
        else:
            self._idle.append(session)
        if follower is not None:
            # The session died with the follower's envelope on it, its content unsent:
            # the follower starts over on another session.
            follower.granted.set_result(None)
            return True
        return False

    async def _retire(self, session: _Session) -> None:
        self.stats.retired += 1
        try:
            if session.is_connected:
                await session.wire.command(b"QUIT", min(self.config.timeout, 5.0))
        except _DROPPED:
            pass
        finally:
            session.close()

    async def _open(self) -> _Session:
        config = self.config
        if self._hostname is None:
            # Once per connector: getfqdn may wait on DNS.
            self._hostname = await asyncio.to_thread(socket.getfqdn)
        if self._tls_context is None and config.security != "none":
            self._tls_context = await asyncio.to_thread(self._make_tls_context)
        smtp = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.resolved_port,
            use_tls=config.security == "tls",
            start_tls=config.security == "starttls",
            username=config.username,
            password=config.password,
            timeout=config.timeout,
            local_hostname=self._hostname,
            tls_context=self._tls_context,
        )
        where = f"{config.host}:{config.resolved_port}"
        try:
            await smtp.connect()
            if smtp.is_ehlo_or_helo_needed:
                # Learn the extensions (SIZE, SMTPUTF8) before the first transaction.
                await smtp.ehlo()
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise RetryableDeliveryError(
                f"the SMTP server at {where} refused the login of {config.username!r}: "
                f"{exc.code} {exc.message} (check the SMTP username and password settings)",
                retry_after=CONFIG_DELAY,
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise classify_reply(exc.code, exc.message, stage="CONNECT") from exc
        except aiosmtplib.SMTPNotSupported as exc:
            raise RetryableDeliveryError(
                f"the SMTP server at {where} lacks what the settings ask for ({exc}); "
                "check the SMTP security setting",
                retry_after=CONFIG_DELAY,
            ) from exc
        except ssl.SSLError as exc:
            raise RetryableDeliveryError(
                f"TLS with the SMTP server at {where} failed: {exc} (check the SMTP CA file "
                "and security settings)",
                retry_after=CONFIG_DELAY,
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise RetryableDeliveryError(
                f"cannot reach the SMTP server at {where}: {exc}", retry_after=NETWORK_DELAY
            ) from exc
        self.stats.opened += 1
        return _Session(smtp, self.stats.opened, self._clock())

    def _make_tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.config.ca_file)
        if not self.config.validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context
