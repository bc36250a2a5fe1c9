"""What an SMTP reply means for a delivery: one table, one function
(:func:`classify_reply`), used by :class:`stagecoach.connectors.smtp.SmtpConnector` for every reply.

    stage            reply                                   raises
    ---------------  --------------------------------------  -------------------------------
    connect: TCP,    refused, timeout, TLS failure, 4xx/5xx   RetryableDeliveryError: these
    greeting, EHLO,  greeting, AUTH refused, STARTTLS         concern every message alike and
    STARTTLS, AUTH   missing                                  an operator fixes them (delay
                                                              5 min, 30 s for network errors)
    MAIL/RCPT/DATA   4xx (421, 450, 451, 452...)              RetryableDeliveryError (421:
                                                              2 min; greylisting: 5 min;
                                                              other 4xx: 1 min)
    MAIL/RCPT/DATA   5xx with enhanced status 5.7.x, or a     PermanentDeliveryError
                     text naming spam, policy, a block list,  code="policy_rejected"
                     DMARC/SPF/DKIM                           (the receiver refused *us*)
    RCPT or DATA     5.2.2, or a bare 552 at RCPT (full)      code="mailbox_full"
    RCPT             any other 5xx (550/551/553, 5.1.x...)    code="hard_bounce"
    DATA             5.1.x or 5.2.1 (recipient after DATA)    code="hard_bounce"
    DATA             any other 5xx (size, content)            code="message_rejected"
    MAIL             any other 5xx (sender refused)           code="sender_rejected"
    MAIL/RCPT/DATA   connection dropped or timed out          RetryableDeliveryError (30 s)

(DATA covers both the reply to the DATA command and the reply after the final dot.)
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from stagecoach.engine.protocol.connector import (
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)

Stage = Literal["CONNECT", "MAIL", "RCPT", "DATA"]

NETWORK_DELAY = timedelta(seconds=30)
CONFIG_DELAY = timedelta(minutes=5)
TEMPFAIL_DELAY = timedelta(minutes=1)
CLOSING_DELAY = timedelta(minutes=2)
GREYLIST_DELAY = timedelta(minutes=5)

# RFC 3463 enhanced status code at the start of the reply text: "5.1.1 <x>: unknown".
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_POLICY_WORDS = re.compile(
    r"spam|policy|block ?list|black ?list|blocked|reputation|dmarc|\bspf\b|\bdkim\b|\brbl\b"
    r"|spamhaus|abuse",
    re.IGNORECASE,
)
_GREYLIST_WORDS = re.compile(r"grey ?list|gray ?list|try again later", re.IGNORECASE)


def enhanced_status(text: str) -> tuple[int, int, int] | None:
    """The RFC 3463 enhanced status code opening an SMTP reply text, if any."""
    found = _ENHANCED.match(text)
    if found is None:
        return None
    return int(found.group(1)), int(found.group(2)), int(found.group(3))


def classify_reply(code: int, text: str, *, stage: Stage) -> DeliveryError:
    """The delivery error an SMTP reply means (see the table in the module docstring).

    Args:
        code: The basic reply code (``550``).
        text: The reply text, perhaps opening with an enhanced code (``5.1.1 unknown``).
        stage: Where it came: ``CONNECT`` (greeting, EHLO, STARTTLS, AUTH), ``MAIL``,
            ``RCPT`` or ``DATA``.
    """
    reply = f"{code} {text}".strip()
    where = {"CONNECT": "connecting", "MAIL": "MAIL FROM", "RCPT": "RCPT TO", "DATA": "DATA"}[stage]
    if stage == "CONNECT":
        delay = NETWORK_DELAY if 400 <= code < 500 else CONFIG_DELAY
        return RetryableDeliveryError(
            f"the SMTP server refused the session ({where}): {reply}", retry_after=delay
        )
    enhanced = enhanced_status(text)
    if 400 <= code < 500 or (enhanced is not None and enhanced[0] == 4 and code < 400):
        if code == 421:
            delay = CLOSING_DELAY
        elif _GREYLIST_WORDS.search(text) or (enhanced is not None and enhanced[1] == 7):
            delay = GREYLIST_DELAY
        else:
            delay = TEMPFAIL_DELAY
        return RetryableDeliveryError(
            f"temporary SMTP failure at {where}: {reply}", retry_after=delay
        )
    if not 500 <= code < 600:
        # Not a failure reply at all (a protocol surprise): treat as transient.
        return RetryableDeliveryError(
            f"unexpected SMTP reply at {where}: {reply}", retry_after=TEMPFAIL_DELAY
        )
    subject, detail = (enhanced[1], enhanced[2]) if enhanced else (None, None)
    if subject == 7 or (enhanced is None and _POLICY_WORDS.search(text)):
        return PermanentDeliveryError(
            f"the receiving server refused the message by policy at {where}: {reply}",
            code="policy_rejected",
        )
    # A bare 552 means "mailbox full" at RCPT; after DATA it usually means "too big".
    full = (subject, detail) == (2, 2) or (code == 552 and enhanced is None and stage == "RCPT")
    if full and stage in ("RCPT", "DATA"):
        return PermanentDeliveryError(
            f"the recipient's mailbox is full ({where}): {reply}", code="mailbox_full"
        )
    if stage == "RCPT" or (stage == "DATA" and (subject == 1 or (subject, detail) == (2, 1))):
        return PermanentDeliveryError(
            f"the recipient does not exist or accepts no mail ({where}): {reply}",
            code="hard_bounce",
        )
    if stage == "MAIL":
        return PermanentDeliveryError(
            f"the SMTP server refused the sender ({where}): {reply}", code="sender_rejected"
        )
    return PermanentDeliveryError(
        f"the SMTP server rejected the message ({where}): {reply}", code="message_rejected"
    )
