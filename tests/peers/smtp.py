"""A real SMTP server for tests: aiosmtpd on its own thread and event loop, with faults.

It records every message it receives (acknowledged or not), counts SMTP sessions and
commands, and can be told to misbehave::

    with SmtpPeer() as peer:                        # or SmtpPeer(tls="starttls", auth=(u, p))
        peer.fail_next(2, "421 4.3.2 shutting down")             # next 2 MAILs: 421, close
        peer.fail_address("x@example.com", "451 4.3.0 try later")     # at RCPT, every time
        peer.fail_address("y@example.com", "550 5.1.1 unknown")
        peer.fail_address("z@example.com", "550 5.7.1 spam", at="DATA")
        peer.drop_after_data(1)          # the next DATA: take the message, drop the connection
        peer.drop_sessions()             # cut every new connection at once, until (False)
        ...
        peer.accepted                    # messages acknowledged with 250
        peer.copies(digest)              # copies received of X-Stagecoach-Idempotency-Key
        peer.sessions                    # SMTP connections accepted

Running on its own thread means the server competes with the code under test only for
CPU, not for the test's event loop (``python -m tests.peers.smtp`` runs it in a process
of its own; see :func:`serve`). ``latency`` delays every reply, like a distant relay;
``idle_timeout`` makes the server close idle sessions the way real relays do. TLS
(``starttls`` or ``implicit``) uses a throwaway self-signed certificate made with the
``openssl`` command; ``cafile`` is what a client must trust. ``issuer_ca`` has the
certificate issued by a throwaway CA instead, as a production relay's is, so a client
verifies a chain (``key`` picks ECDSA P-256 or RSA 2048 for both).

``latency`` is a crude delay: it holds back every reply line, so a multi-line EHLO reply
costs one delay per line and TLS handshakes cost none. ``rtt`` models a network round
trip instead: every byte the server writes (TLS records included) reaches the client one
``rtt`` later, in order, so a pipelined group of replies costs one round trip, a TLS 1.3
handshake one, and the greeting two (the TCP handshake, then the greeting itself).
The server advertises PIPELINING (RFC 2920) as production relays do; aiosmtpd reads a
pipelined group one command at a time, which is all PIPELINING asks of a server.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.helpers import free_port

Stage = Literal["MAIL", "RCPT", "DATA"]
TlsMode = Literal["none", "starttls", "implicit"]

_KEY_HEADER = re.compile(
    rb"^X-Stagecoach-Idempotency-Key:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE
)


@dataclass(frozen=True)
class ReceivedMail:
    """One message the peer took in.

    ``acknowledged`` is False for a message taken in and then cut off before the 250
    reply (``drop_after_data``): the client cannot know whether it went through.
    """

    session: int
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    acknowledged: bool
    mail_options: tuple[str, ...] = ()

    @cached_property
    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=default_policy).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def key_digest(self) -> str | None:
        found = _KEY_HEADER.search(self.data.split(b"\r\n\r\n", 1)[0])
        return found.group(1).decode() if found else None


@dataclass
class _Fault:
    reply: str
    at: Stage
    remaining: int | None  # None: every time


@dataclass
class _State:
    received: list[ReceivedMail] = field(default_factory=list)
    sessions: int = 0
    open_sessions: int = 0
    max_open_sessions: int = 0
    commands: Counter[str] = field(default_factory=Counter)
    auth_failures: int = 0
    next_faults: list[_Fault] = field(default_factory=list)
    address_faults: dict[str, _Fault] = field(default_factory=dict)
    drop_countdown: list[int] = field(default_factory=list)
    data_delay: float = 0.0
    dropping: bool = False
    mail_groups: list[tuple[str, ...]] = field(default_factory=list)


class _PeerSMTP(SMTP):
    """aiosmtpd's server, counting sessions (a STARTTLS upgrade is not a new session)."""

    def __init__(
        self, handler: _Handler, *, latency: float = 0.0, rtt: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self._peer_handler = handler
        self._latency = latency
        self._rtt = rtt
        self.session_number = 0

    async def push(self, status: Any) -> None:
        # Every reply, greeting included, waits: a round trip to a relay that far away.
        if self._latency:
            await asyncio.sleep(self._latency)
        await super().push(status)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        if first and self._rtt and isinstance(transport, asyncio.Transport):
            _delay_writes(transport, self._rtt)
        super().connection_made(transport)
        if first:
            self.session_number = self._peer_handler.session_opened()
            if self._peer_handler.dropping() and isinstance(transport, asyncio.Transport):
                transport.abort()  # an outage: the connection dies before the greeting

    def connection_lost(self, error: Exception | None) -> None:
        self._peer_handler.session_closed()
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        # Plain text here, STARTTLS or not (TLS is undone below this protocol).
        if data[:10].upper() == b"MAIL FROM:":
            verbs = tuple(line[:4].upper().decode("ascii", "replace") for line in data.splitlines())
            self._peer_handler.mail_group(verbs)
        super().data_received(data)


def _delay_writes(transport: asyncio.Transport, rtt: float) -> None:
    """Deliver what the server writes on ``transport`` one ``rtt`` later, in order.

    Wrapped on the raw TCP transport, so STARTTLS's TLS records are delayed too (aiosmtpd
    writes them through it). The first write waits a second round trip: the TCP handshake
    the client made before the greeting could come. ``close`` waits for pending writes.
    """
    loop = asyncio.get_running_loop()
    write, close = transport.write, transport.close
    last = loop.time() + rtt  # the TCP handshake

    def delayed_write(data: bytes | bytearray | memoryview) -> None:
        nonlocal last
        last = max(loop.time() + rtt, last)
        loop.call_at(last, write_now, bytes(data))

    def write_now(data: bytes) -> None:
        if not transport.is_closing():
            write(data)

    def delayed_close() -> None:
        loop.call_at(max(loop.time(), last), close)

    transport.write = delayed_write  # type: ignore[method-assign]
    transport.close = delayed_close  # type: ignore[method-assign]


class _Handler:
    def __init__(self, state: _State, lock: threading.Lock, *, pipelining: bool = True) -> None:
        self._state = state
        self._lock = lock
        self._pipelining = pipelining

    def session_opened(self) -> int:
        with self._lock:
            self._state.sessions += 1
            self._state.open_sessions += 1
            self._state.max_open_sessions = max(
                self._state.max_open_sessions, self._state.open_sessions
            )
            return self._state.sessions

    def session_closed(self) -> None:
        with self._lock:
            self._state.open_sessions -= 1

    def mail_group(self, verbs: tuple[str, ...]) -> None:
        with self._lock:
            self._state.mail_groups.append(verbs)

    def dropping(self) -> bool:
        with self._lock:
            return self._state.dropping

    def _count(self, command: str) -> None:
        with self._lock:
            self._state.commands[command] += 1

    def _fault(self, stage: Stage, addresses: list[str]) -> str | None:
        with self._lock:
            for fault in self._state.next_faults:
                if fault.at == stage:
                    self._state.next_faults.remove(fault)
                    return fault.reply
            for address in addresses:
                by_address = self._state.address_faults.get(address.lower())
                if by_address is None or by_address.at != stage:
                    continue
                if by_address.remaining is not None:
                    by_address.remaining -= 1
                    if by_address.remaining <= 0:
                        del self._state.address_faults[address.lower()]
                return by_address.reply
        return None

    @staticmethod
    def _reply(server: SMTP, reply: str) -> str:
        if reply.startswith("421"):
            # 421 means the server closes the session; do it once the reply is written.
            transport = server.transport
            assert transport is not None
            server.loop.call_soon(transport.close)
        return reply

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self._count("EHLO")
        session.host_name = hostname
        if self._pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        self._count("NOOP")
        return "250 OK"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._count("RSET")
        return "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._count("QUIT")
        return "221 Bye"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self._count("MAIL")
        reply = self._fault("MAIL", [])
        if reply is not None:
            return self._reply(server, reply)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self._count("RCPT")
        reply = self._fault("RCPT", [address])
        if reply is not None:
            return self._reply(server, reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._count("DATA")
        with self._lock:
            delay = self._state.data_delay
        if delay:
            await asyncio.sleep(delay)
        reply = self._fault("DATA", list(envelope.rcpt_tos))
        if reply is not None:
            return self._reply(server, reply)
        drop = False
        with self._lock:
            countdown = self._state.drop_countdown
            if countdown:
                countdown[0] -= 1
                if countdown[0] == 0:
                    countdown.pop(0)
                    drop = True
            content = envelope.original_content or b""
            self._state.received.append(
                ReceivedMail(
                    session=getattr(server, "session_number", 0),
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    data=content,
                    acknowledged=not drop,
                    mail_options=tuple(envelope.mail_options),
                )
            )
        if drop:
            # Taken in, never acknowledged: the client sees the connection die after its dot.
            transport = server.transport
            assert isinstance(transport, asyncio.Transport)
            transport.abort()
        return "250 2.0.0 OK queued"


class _PeerController(Controller):
    def __init__(
        self, handler: _Handler, *, latency: float, rtt: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self._peer_handler = handler
        self._latency = latency
        self._rtt = rtt

    def factory(self) -> _PeerSMTP:
        return _PeerSMTP(
            self._peer_handler, latency=self._latency, rtt=self._rtt, **self.SMTP_kwargs
        )


class SmtpPeer:
    """An SMTP server on 127.0.0.1 for one test module or test.

    Args:
        tls: ``"none"``, ``"starttls"`` (offered; required when ``auth`` is set) or
            ``"implicit"`` (TLS from the first byte).
        auth: ``(user, password)`` to require AUTH before MAIL; ``None`` accepts anyone.
        idle_timeout: Seconds after which the server closes an idle session.
        smtputf8: Offer the SMTPUTF8 extension.
        latency: Seconds every reply line waits before it is sent, greeting included
            (TLS handshakes are not slowed; see ``rtt`` for a network round trip).
        rtt: Seconds of network round trip: everything the server writes, TLS records
            included, reaches the client this much later; the greeting one more.
        pipelining: Advertise PIPELINING (RFC 2920) in the EHLO reply.
        issuer_ca: Issue the TLS certificate from a throwaway CA (``cafile`` is then the
            CA's), instead of a self-signed one.
        key: ``"ec"`` (P-256) or ``"rsa"`` (2048 bits), for the certificate and its CA.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        tls: TlsMode = "none",
        auth: tuple[str, str] | None = None,
        idle_timeout: float = 300.0,
        smtputf8: bool = True,
        latency: float = 0.0,
        rtt: float = 0.0,
        pipelining: bool = True,
        issuer_ca: bool = False,
        key: Literal["ec", "rsa"] = "ec",
    ) -> None:
        self.tls = tls
        self._issuer_ca = issuer_ca
        self._key = key
        self.auth = auth
        self.port = free_port()
        self._lock = threading.Lock()
        self._state = _State()
        self._handler = _Handler(self._state, self._lock, pipelining=pipelining)
        self._certdir: Path | None = None
        self.cafile: str | None = None
        kwargs: dict[str, Any] = {
            "hostname": self.host,
            "port": self.port,
            "server_hostname": "peer.stagecoach.test",
            "ident": "Stagecoach test peer",
            "timeout": idle_timeout,
            "enable_SMTPUTF8": smtputf8,
        }
        if tls != "none":
            context = self._make_tls_context()
            if tls == "starttls":
                kwargs["tls_context"] = context
            else:
                kwargs["ssl_context"] = context
        if auth is not None:
            kwargs["authenticator"] = self._authenticate
            kwargs["auth_required"] = True
            kwargs["auth_require_tls"] = tls != "none"
        self._controller = _PeerController(self._handler, latency=latency, rtt=rtt, **kwargs)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> SmtpPeer:
        self._controller.start()
        self.reset()  # the controller's own readiness probe is not a session of the test's
        return self

    def stop(self) -> None:
        self._controller.stop()
        if self._certdir is not None:
            shutil.rmtree(self._certdir, ignore_errors=True)

    def __enter__(self) -> SmtpPeer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget received messages, counters and faults (open sessions stay open)."""
        with self._lock:
            # The handler holds this object: refill it rather than replace it.
            open_now = self._state.open_sessions
            vars(self._state).update(vars(_State()))
            self._state.open_sessions = open_now

    # --- what happened ------------------------------------------------------------------------

    @property
    def received(self) -> list[ReceivedMail]:
        """Every message taken in, acknowledged or not, in arrival order."""
        with self._lock:
            return list(self._state.received)

    @property
    def accepted(self) -> list[ReceivedMail]:
        """Messages acknowledged with a 250."""
        return [m for m in self.received if m.acknowledged]

    @property
    def sessions(self) -> int:
        """SMTP connections accepted since the last reset."""
        with self._lock:
            return self._state.sessions

    @property
    def open_sessions(self) -> int:
        with self._lock:
            return self._state.open_sessions

    @property
    def max_open_sessions(self) -> int:
        with self._lock:
            return self._state.max_open_sessions

    @property
    def commands(self) -> Counter[str]:
        with self._lock:
            return Counter(self._state.commands)

    @property
    def mail_groups(self) -> list[tuple[str, ...]]:
        """The commands of each read that opened with MAIL: ``("MAIL", "RCPT", "DATA")``
        when a client pipelined its transaction, ``("MAIL",)`` when it did not."""
        with self._lock:
            return list(self._state.mail_groups)

    @property
    def auth_failures(self) -> int:
        with self._lock:
            return self._state.auth_failures

    def copies(self, key_digest: str) -> int:
        """How many copies with this X-Stagecoach-Idempotency-Key arrived (acknowledged or not)."""
        return sum(1 for m in self.received if m.key_digest == key_digest)

    def copies_by_key(self) -> Counter[str | None]:
        return Counter(m.key_digest for m in self.received)

    # --- faults -------------------------------------------------------------------------------

    def fail_next(self, count: int, reply: str, *, at: Stage = "MAIL") -> None:
        """Answer the next ``count`` commands at ``at`` with ``reply`` (421 also closes)."""
        with self._lock:
            self._state.next_faults.extend(_Fault(reply, at, 1) for _ in range(count))

    def fail_address(
        self, address: str, reply: str, *, at: Stage = "RCPT", times: int | None = None
    ) -> None:
        """Answer ``reply`` for ``address`` at ``at`` (RCPT or DATA), ``times`` times or always."""
        with self._lock:
            self._state.address_faults[address.lower()] = _Fault(reply, at, times)

    def drop_after_data(self, nth: int = 1) -> None:
        """The ``nth`` DATA from now: take the message, then cut the connection, no reply."""
        with self._lock:
            self._state.drop_countdown.append(nth)

    def delay_data(self, seconds: float) -> None:
        """Wait ``seconds`` before answering each end of DATA (0 to stop)."""
        with self._lock:
            self._state.data_delay = seconds

    def drop_sessions(self, on: bool = True) -> None:
        """While on, cut every new connection before the greeting (a relay going down)."""
        with self._lock:
            self._state.dropping = on

    def clear_faults(self) -> None:
        with self._lock:
            self._state.dropping = False
            self._state.next_faults.clear()
            self._state.address_faults.clear()
            self._state.drop_countdown.clear()
            self._state.data_delay = 0.0

    def wait_until_closed(self, timeout: float = 5.0) -> None:
        """Wait until no session is open (after a client's close())."""
        deadline = time.monotonic() + timeout
        while self.open_sessions > 0:
            assert time.monotonic() < deadline, f"{self.open_sessions} SMTP sessions still open"
            time.sleep(0.01)

    # --- internals ----------------------------------------------------------------------------

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self.auth is not None
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.auth[0]
            and auth_data.password.decode() == self.auth[1]
        )
        if not ok:
            with self._lock:
                self._state.auth_failures += 1
        # handled=False: aiosmtpd itself answers 535 to a failure.
        return AuthResult(success=ok, handled=False)

    def _issue_from_ca(self, openssl: str, cert: Path, key: Path) -> str:
        """Make a CA, and a server certificate for localhost/127.0.0.1 issued by it."""
        assert self._certdir is not None
        folder = self._certdir
        new_key = (
            ["-newkey", "rsa:2048"]
            if self._key == "rsa"
            else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        )
        ca_cert, ca_key = folder / "ca.pem", folder / "ca-key.pem"
        request, extensions = folder / "server.csr", folder / "server.ext"
        extensions.write_text(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        )
        commands = [
            [openssl, "req", "-x509", *new_key, "-nodes", "-keyout", str(ca_key), "-out",
             str(ca_cert), "-days", "1", "-subj", "/CN=Stagecoach test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            [openssl, "req", *new_key, "-nodes", "-keyout", str(key), "-out", str(request),
             "-subj", "/CN=localhost"],
            [openssl, "x509", "-req", "-in", str(request), "-CA", str(ca_cert), "-CAkey",
             str(ca_key), "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile",
             str(extensions)],
        ]  # fmt: skip
        for command in commands:
            subprocess.run(command, check=True, capture_output=True)
        return str(ca_cert)

    def _make_tls_context(self) -> Any:
        import ssl

        openssl = shutil.which("openssl")
        if openssl is None:
            import pytest

            pytest.skip("the openssl command is needed to make the test peer's certificate")
        self._certdir = Path(tempfile.mkdtemp(prefix="stagecoach-smtp-peer-"))
        cert, key = self._certdir / "cert.pem", self._certdir / "key.pem"
        if self._issuer_ca:
            self.cafile = self._issue_from_ca(openssl, cert, key)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            return context
        subprocess.run(
            [
                openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                str(cert), "-days", "1", "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        self.cafile = str(cert)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        return context


def serve(argv: list[str] | None = None) -> None:
    """Run a peer in this process for a parent talking over stdin/stdout.

    The benchmark runs the peer this way (``python -m tests.peers.smtp``) so the server
    has its own interpreter and does not share the client's CPU time slice or GIL. It
    prints ``{"port", "cafile"}`` once started, then answers one JSON line per command:
    ``stats`` (counts and copies per idempotency-key digest), ``reset``, ``quit``.
    """
    import argparse
    import json
    import logging
    import sys

    parser = argparse.ArgumentParser(prog="python -m tests.peers.smtp")
    parser.add_argument("--tls", choices=["none", "starttls", "implicit"], default="none")
    parser.add_argument("--auth", help="user:password to require")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay of every reply")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="network round trip")
    parser.add_argument("--no-pipelining", action="store_true", help="do not offer PIPELINING")
    parser.add_argument("--ca", action="store_true", help="certificate issued by a test CA")
    parser.add_argument("--key", choices=["ec", "rsa"], default="ec")
    args = parser.parse_args(argv)
    # aiosmtpd warns about its own use of a deprecated attribute on every AUTH.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    auth = None
    if args.auth:
        user, _, password = args.auth.partition(":")
        auth = (user, password)
    with SmtpPeer(
        tls=args.tls,
        auth=auth,
        latency=args.latency_ms / 1000,
        rtt=args.rtt_ms / 1000,
        pipelining=not args.no_pipelining,
        issuer_ca=args.ca,
        key=args.key,
    ) as peer:
        print(json.dumps({"port": peer.port, "cafile": peer.cafile}), flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "stats":
                stats = {
                    "received": len(peer.received),
                    "accepted": len(peer.accepted),
                    "sessions": peer.sessions,
                    "max_open_sessions": peer.max_open_sessions,
                    "commands": dict(peer.commands),
                    "copies": dict(peer.copies_by_key()),
                }
                print(json.dumps(stats), flush=True)
            elif command == "reset":
                peer.reset()
                print("{}", flush=True)
            elif command == "quit":
                break


if __name__ == "__main__":
    serve()
