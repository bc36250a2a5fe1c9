"""Email as it leaves Stagecoach, whichever way it goes: the contract check on the rendered
message, the envelope recipient, and the MIME message with its ``Message-ID`` and
idempotency header. The SMTP connector (:mod:`stagecoach.connectors.smtp`) sends the bytes built
here; the HTTP providers (:mod:`stagecoach.connectors.email.http`) send the same checks' results as
JSON.

Every message carries the same ``Message-ID`` on every attempt (derived from the
delivery's idempotency key when the content library set none) and an
``X-Stagecoach-Idempotency-Key`` header, so receivers and our test peers can recognise
and count copies a retry may deliver. The header carries
:func:`stagecoach.engine.domain.bounces.key_digest` of the key, not the key itself: the key names
the contact and the journey step, which recipients have no business reading.
"""

from __future__ import annotations

import base64
import email.policy
import functools
import re
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage
from email.utils import formataddr, parseaddr

from stagecoach.engine.domain.addresses import AddressError, sending_address
from stagecoach.engine.domain.bounces import key_digest
from stagecoach.engine.domain.content import ContentError, RenderedMessage
from stagecoach.engine.protocol.connector import OutgoingMessage, PermanentDeliveryError

IDEMPOTENCY_HEADER = "X-Stagecoach-Idempotency-Key"
"""Carries :func:`stagecoach.engine.domain.bounces.key_digest` of the delivery's idempotency key."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Bytes on the wire: CRLF, 7-bit clean (8-bit text parts re-encoded), so any server,
# 8BITMIME or not, takes the message as is.
_WIRE = email.policy.SMTP.clone(cte_type="7bit")
_WIRE_UTF8 = email.policy.SMTPUTF8.clone(cte_type="7bit")


def rendered_email(message: OutgoingMessage) -> RenderedMessage:
    """The rendered email in ``message``, checked; the one contract check for email connectors.

    Raises:
        PermanentDeliveryError: (code ``"contract"``) The message is for another channel,
            ``rendered`` lacks a field or is not an email, or it has no subject or no body.
    """
    if message.channel != "email":
        raise PermanentDeliveryError(
            f"OutgoingMessage.channel is {message.channel!r}; an email connector sends only "
            "'email'",
            code="contract",
        )
    try:
        rendered = RenderedMessage.from_dict(message.rendered)
    except KeyError as exc:
        raise PermanentDeliveryError(
            f"OutgoingMessage.rendered lacks {exc.args[0]!r}: it must be a "
            "RenderedMessage.to_dict()",
            code="contract",
        ) from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise PermanentDeliveryError(
            f"OutgoingMessage.rendered is not a RenderedMessage.to_dict(): {exc}",
            code="contract",
        ) from None
    if rendered.channel != "email":
        raise PermanentDeliveryError(
            f"OutgoingMessage.rendered['channel'] is {rendered.channel!r}: "
            f"{rendered.content_id} was rendered for {rendered.channel}, not email",
            code="contract",
        )
    if not rendered.subject.strip():
        raise PermanentDeliveryError(
            f"OutgoingMessage.rendered['subject'] is empty ({rendered.content_id})",
            code="contract",
        )
    if not rendered.text.strip() and not rendered.html.strip():
        raise PermanentDeliveryError(
            f"OutgoingMessage.rendered['text'] and ['html'] are both empty ({rendered.content_id})",
            code="contract",
        )
    return rendered


def recipient_address(message: OutgoingMessage) -> str:
    """``message.to`` as the envelope recipient: its canonical form (the one suppression
    and consent were checked against, ``stagecoach.engine.domain.addresses``) with the domain
    IDNA-encoded.

    Raises:
        PermanentDeliveryError: (code ``"invalid_address"``) Empty, with a display name,
            with control, invisible or other unsafe characters, or not ``local@domain``.
            Such an address is refused, never repaired into a different one: a zero-width
            space dropped here would mail an address nobody checked.
    """
    raw = message.to
    if not raw or not raw.strip():
        raise PermanentDeliveryError("OutgoingMessage.to is empty", code="invalid_address")
    if _CONTROL.search(raw) or " " in raw.strip() or "<" in raw:
        raise PermanentDeliveryError(
            f"OutgoingMessage.to {raw!r} is not a bare address (no names, spaces or "
            "control characters)",
            code="invalid_address",
        )
    try:
        return sending_address(raw)
    except AddressError as exc:
        raise PermanentDeliveryError(
            f"OutgoingMessage.to {raw!r} is not local@domain ({exc.reason})",
            code="invalid_address",
        ) from None


def build_mime(rendered: RenderedMessage, *, from_addr: str, to: str, key: str) -> EmailMessage:
    """The MIME message for ``rendered`` with the idempotency header and a Message-ID.

    A rendered message without a Message-ID gets one derived from the key, so retries
    still share it.

    Raises:
        PermanentDeliveryError: (code ``"contract"``) A header value cannot be written.
    """
    try:
        mime = rendered.to_mime(from_addr, to)
        if mime["Message-ID"] is None:
            domain = parseaddr(from_addr)[1].rpartition("@")[2] or "stagecoach.invalid"
            mime["Message-ID"] = f"<{key_digest(key)}@{domain}>"
        mime[IDEMPOTENCY_HEADER] = key_digest(key)
    except ContentError as exc:
        raise PermanentDeliveryError(exc.message, code="contract") from exc
    except (ValueError, TypeError) as exc:
        raise PermanentDeliveryError(
            f"OutgoingMessage.rendered['headers'] cannot be written: {exc}", code="contract"
        ) from exc
    return mime


@functools.lru_cache(maxsize=16)
def _from_header(from_addr: str) -> tuple[str, str] | None:
    """``(From header value, address)``, or None for a non-ASCII address; a connector
    sends every message from the same sender, so this is parsed once, not per message."""
    name, address = parseaddr(from_addr)
    if not address or not address.isascii():
        return None
    return formataddr((name, address), charset="utf-8"), address


def _wire_bytes(
    rendered: RenderedMessage, *, from_addr: str, to: str, key: str
) -> tuple[bytes, str] | None:
    """The same multipart/alternative message as :func:`build_mime` writes, built
    directly: the stdlib's generator costs ~1.3 ms a message, most of a pooled send's
    CPU. Bodies go base64 (7-bit clean, 76-character lines), a non-ASCII subject or
    sender name as RFC 2047 encoded words. ``None`` sends anything unusual (a header
    that is not plain ASCII, a line over 998 characters) down the stdlib path.
    """
    sender = _from_header(from_addr)
    if sender is None:
        return None
    from_header, address = sender
    subject = rendered.subject
    if any(c in subject for c in "\r\n"):
        return None
    headers: list[tuple[str, str]] = [
        ("From", from_header),
        ("To", to),
        ("Subject", subject if subject.isascii() else Header(subject, "utf-8").encode()),
    ]
    for field_name, value in rendered.headers.items():
        if not (field_name.isascii() and value.isascii()) or "\r" in value or "\n" in value:
            return None
        if not field_name or field_name.startswith("."):
            return None  # not a header name; and no line of ours may open with a dot
        headers.append((field_name, value))
    names = {n.lower() for n, _ in headers}
    digest = key_digest(key)
    if "message-id" not in names:
        domain = address.rpartition("@")[2] or "stagecoach.invalid"
        headers.append(("Message-ID", f"<{digest}@{domain}>"))
    headers.append((IDEMPOTENCY_HEADER, digest))
    boundary = f"=_stagecoach_{digest}"
    headers += [
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
    ]
    lines = [f"{n}: {v}" for n, v in headers]
    if any(len(line) > 998 for line in lines):
        return None
    head = "\r\n".join(lines).replace("\n ", "\r\n ").replace("\r\r\n", "\r\n")

    def part(subtype: str, body: str) -> str:
        if not body.endswith("\n"):
            body += "\n"  # as the stdlib's set_content does
        # What base64.encodebytes writes (76-character lines), in one C call, not one
        # per 57 bytes.
        encoded = base64.b64encode(body.encode("utf-8")).decode("ascii")
        lines = [encoded[i : i + 76] + "\r\n" for i in range(0, len(encoded), 76)]
        return (
            f"--{boundary}\r\n"
            f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n" + "".join(lines)
        )

    payload = (
        head
        + "\r\n\r\n"
        + part("plain", rendered.text)
        + part("html", rendered.html)
        + f"--{boundary}--\r\n"
    )
    message_id = next(v for n, v in headers if n.lower() == "message-id")
    return payload.encode("ascii"), message_id


@dataclass(frozen=True)
class PreparedEmail:
    """One email as it goes on the wire.

    Attributes:
        recipient: The envelope recipient (``RCPT TO``), IDNA-encoded domain.
        payload: The message bytes: CRLF line ends, 7-bit clean bodies.
        message_id: The ``Message-ID`` header (the provider message id we report).
        utf8: The recipient needs SMTPUTF8.
        framed: The payload is known to have CRLF line ends only and no line opening
            with a dot (the direct builder's output), so DATA sends it without a scan.
    """

    recipient: str
    payload: bytes
    message_id: str
    utf8: bool
    framed: bool = False


def prepare_email(message: OutgoingMessage, *, from_addr: str) -> PreparedEmail:
    """Check ``message`` and build its wire bytes (the CPU-bound half of a send).

    Raises:
        PermanentDeliveryError: Bad input (see :func:`rendered_email`,
            :func:`recipient_address` and :func:`build_mime`).
    """
    rendered = rendered_email(message)
    recipient = recipient_address(message)
    if recipient.isascii():
        fast = _wire_bytes(rendered, from_addr=from_addr, to=recipient, key=message.idempotency_key)
        if fast is not None:
            payload, message_id = fast
            # Header lines open with a name or a space, body lines with a base64
            # character or the boundary's "--": no line opens with a dot.
            return PreparedEmail(recipient, payload, message_id, utf8=False, framed=True)
    mime = build_mime(rendered, from_addr=from_addr, to=recipient, key=message.idempotency_key)
    utf8 = not recipient.isascii()
    return PreparedEmail(
        recipient=recipient,
        payload=mime.as_bytes(policy=_WIRE_UTF8 if utf8 else _WIRE),
        message_id=str(mime["Message-ID"]),
        utf8=utf8,
    )
