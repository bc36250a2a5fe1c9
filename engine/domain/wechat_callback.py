"""WeChat Official Account callbacks: signatures, message crypto, XML and events (pure).

WeChat calls the server URL configured for an Official Account in two ways:

- ``GET`` once, when the URL is set up: ``signature`` is the SHA-1 (hex) of ``token``,
  ``timestamp`` and ``nonce`` sorted as strings and joined; the server proves it holds
  the token by echoing ``echostr``.
- ``POST`` for each message or event, as XML. In plaintext mode the body is the message
  and ``signature`` authenticates the request. In safe mode (``encrypt_type=aes``) the
  body carries ``<Encrypt>``: ``msg_signature`` is the SHA-1 of token, timestamp, nonce
  and the ciphertext, sorted and joined.

The cipher (WeChat's published scheme): the 43-character ``EncodingAESKey`` plus ``=``,
base64-decoded, is a 32-byte AES-256 key; CBC mode with the key's first 16 bytes as IV;
PKCS#7 padding to 32-byte blocks. The plaintext is 16 random bytes, the message length
as 4 bytes big-endian, the message XML, then the appid of the account. The signature is
checked before decrypting, so a forged ciphertext never reaches the padding check.

XML is parsed with ``defusedxml`` and any DTD is refused: no entity expansion (billion
laughs), no external entities. Bodies over ``MAX_BODY_BYTES`` are refused unread.

Replays. In plaintext mode the signature covers the token, timestamp and nonce, not the
body: a signed URL seen once (a proxy log, a browser history) would authenticate any body
for ever. So a callback's ``timestamp`` must be within ``window`` seconds of our clock
(``check_fresh``), and each (timestamp, nonce, signature) is accepted once within that
window (``NonceMemory``). Outside the window a request is refused however it is signed;
inside it the memory remembers it, so between them a signed URL is usable once.

Errors, each mapped once to an HTTP status by the route:

    CallbackError (ValueError)
     +-- SignatureMismatch     the signature does not match the token       (403)
     +-- StaleRequest          the timestamp is outside the replay window    (403)
     +-- AppIdMismatch         decrypted, but for another account           (403)
     +-- UndecryptableMessage  the ciphertext or its framing is broken      (400)
     +-- UnsafeXml             a DTD, an entity, or XML that does not parse (400)
     +-- MalformedMessage      the XML lacks what a WeChat message has      (400)
     +-- BodyTooLarge          over ``MAX_BODY_BYTES``                       (413)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.etree.ElementTree import ParseError

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)

__all__ = [
    "INTERACTION_EVENTS",
    "MASS_SEND_FINISHED",
    "MAX_BODY_BYTES",
    "REPLAY_WINDOW_SECONDS",
    "AppIdMismatch",
    "BodyTooLarge",
    "CallbackError",
    "CallbackEvent",
    "MalformedMessage",
    "MassSendFinished",
    "NonceMemory",
    "SignatureMismatch",
    "StaleRequest",
    "UndecryptableMessage",
    "UnsafeXml",
    "WeChatApp",
    "WeChatMessage",
    "aes_key_from",
    "check_fresh",
    "decrypt",
    "encrypt",
    "event_from",
    "mass_send_finished",
    "message_id_for",
    "parse_apps",
    "parse_message",
    "parse_xml",
    "sign",
    "verify",
]

MAX_BODY_BYTES = 64 * 1024
"""WeChat's messages are a few KB; a text message holds at most 2048 bytes of content."""

BLOCK = 32
"""WeChat pads to 32-byte blocks (PKCS#7 with K = 32), not AES's 16."""

APP_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")

INTERACTION_EVENTS = (
    "wechat.message_received",
    "wechat.subscribed",
    "wechat.scanned",
    "wechat.menu_clicked",
)
"""Event types that open (or reopen) the 48-hour customer-service window."""

_INBOUND = frozenset({"text", "image", "voice", "video", "shortvideo", "location", "link"})
_OPENID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MESSAGE_ID_MAX = 128
_CREATE_TIME_MIN = 946_684_800  # 2000-01-01: older is not a WeChat message
_CREATE_TIME_MAX = 2**32


class CallbackError(ValueError):
    """A callback refused; ``message`` says why, for the log and the response."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SignatureMismatch(CallbackError):
    """The signature is missing or does not match the account's token."""


class StaleRequest(CallbackError):
    """The timestamp is missing, unreadable, or too far from now: a replay or a bad clock."""


class AppIdMismatch(CallbackError):
    """The ciphertext decrypts, but names another account's appid."""


class UndecryptableMessage(CallbackError):
    """The ciphertext is not base64, not whole blocks, or its framing is broken."""


class UnsafeXml(CallbackError):
    """The body is not XML we parse: a DTD, an entity, or a syntax error."""


class MalformedMessage(CallbackError):
    """The XML parses but is not a WeChat message (no sender, no CreateTime, ...)."""


class BodyTooLarge(CallbackError):
    """The body is over ``MAX_BODY_BYTES``."""


# --- configuration -----------------------------------------------------------------------


class WeChatApp(BaseModel):
    """One Official Account's callback settings, as entered on the WeChat platform.

    Attributes:
        token: The server configuration's Token.
        aes_key: The 43-character EncodingAESKey; ``None`` accepts plaintext mode only.
        appid: The account's AppID; a decrypted message must name it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    token: SecretStr = Field(min_length=1, max_length=64)
    aes_key: SecretStr | None = None
    appid: str = Field(min_length=1, max_length=64)

    @field_validator("aes_key")
    @classmethod
    def _key_decodes(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            aes_key_from(value.get_secret_value())
        return value

    def key(self) -> bytes | None:
        """The 32-byte AES key, or ``None`` in plaintext mode."""
        return None if self.aes_key is None else aes_key_from(self.aes_key.get_secret_value())


_APPS: TypeAdapter[dict[str, WeChatApp]] = TypeAdapter(dict[str, WeChatApp])


def parse_apps(raw: object) -> dict[str, WeChatApp]:
    """Per-app settings from JSON text or a mapping: ``{"name": {"token", "aes_key",
    "appid"}}``. The name is the URL's ``/wechat/{name}``: letters, digits, ``_``, ``-``.

    Raises:
        ValueError: a name or a setting is wrong; the message says which, never
            showing a token or key.
    """
    if raw is None:
        return {}
    try:
        apps = (
            _APPS.validate_json(raw) if isinstance(raw, str | bytes) else _APPS.validate_python(raw)
        )
    except ValidationError as exc:
        # Said without the input: it holds tokens and keys.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'wechat_apps'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise ValueError(f"wechat_apps settings are invalid: {problems}") from None
    for name in apps:
        if not APP_NAME.match(name):
            raise ValueError(
                f"WeChat app name {name!r} is not usable in a URL: use 1-32 letters, "
                "digits, '_' or '-'"
            )
    return apps


def aes_key_from(encoding_aes_key: str) -> bytes:
    """The 32-byte AES key from an EncodingAESKey (43 base64 characters, no ``=``).

    Raises:
        ValueError: the key is not 43 base64 characters.
    """
    if len(encoding_aes_key) != 43:
        raise ValueError(
            f"EncodingAESKey has {len(encoding_aes_key)} characters; WeChat's has 43: copy "
            "it again from the Official Account's server settings"
        )
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except binascii.Error as exc:
        raise ValueError("EncodingAESKey is not base64: copy it again") from exc
    if len(key) != 32:  # pragma: no cover - 43 valid characters always decode to 32
        raise ValueError("EncodingAESKey does not decode to 32 bytes: copy it again")
    return key


# --- signatures --------------------------------------------------------------------------


def sign(token: str, timestamp: str, nonce: str, *more: str) -> str:
    """WeChat's signature: SHA-1 (hex) of the values sorted as strings and joined.

    ``more`` is the ciphertext for ``msg_signature`` in safe mode.
    """
    joined = "".join(sorted((token, timestamp, nonce, *more)))
    return hashlib.sha1(joined.encode(), usedforsecurity=False).hexdigest()


def verify(
    signature: str | None, token: str, timestamp: str | None, nonce: str | None, *more: str
) -> None:
    """Check a signature in constant time.

    Raises:
        SignatureMismatch: a part is missing, or the signature does not match.
    """
    if not signature or timestamp is None or nonce is None:
        raise SignatureMismatch("signature, timestamp or nonce is missing")
    expected = sign(token, timestamp, nonce, *more)
    if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
        raise SignatureMismatch("signature does not match the token: check the app's token")


REPLAY_WINDOW_SECONDS = 300
"""How far a callback's ``timestamp`` may be from our clock, either way. WeChat stamps a
call when it sends it and gives up after three tries 5 seconds apart, so a genuine call
is seconds old; five minutes leaves room for clocks that drift."""


def check_fresh(timestamp: str | None, *, now: float, window: float) -> int:
    """The callback's ``timestamp`` (Unix seconds), if within ``window`` of ``now``.

    Raises:
        StaleRequest: missing, not whole seconds, or more than ``window`` away.
    """
    text = (timestamp or "").strip()
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise StaleRequest("timestamp is missing or not Unix seconds")
    stamp = int(text)
    off = stamp - now
    if abs(off) > window:
        raise StaleRequest(
            f"timestamp is {abs(off):.0f} s {'ahead of' if off > 0 else 'behind'} this "
            f"server's clock; the window is {window:.0f} s: a replay, or check the clock (NTP)"
        )
    return stamp


class NonceMemory:
    """The (timestamp, nonce, signature) triples accepted within the replay window.

    Each entry is kept until its timestamp leaves the window: after that ``check_fresh``
    refuses the triple anyway. At most ``size`` entries; when full, the oldest go first
    (a burst of more than ``size`` callbacks within the window could then replay its
    oldest ones; WeChat sends far fewer, and the size is a setting).

    Per process: each API replica has its own, so a URL replayed to each of N replicas
    could be accepted N times within the window. See the README's "What we promise".
    """

    def __init__(self, *, window: float, size: int = 100_000) -> None:
        self._window = window
        self._size = size
        self._seen: dict[tuple[str, ...], int] = {}

    def first_time(self, *key: str, stamp: int, now: float) -> bool:
        """Record ``key`` (seen at Unix time ``stamp``); whether it is new."""
        self._expire(now)
        if key in self._seen:
            return False
        self._seen[key] = stamp
        while len(self._seen) > self._size:
            del self._seen[next(iter(self._seen))]
        return True

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now: float) -> None:
        # Insertion order is nearly timestamp order: drop from the front while stale.
        horizon = now - self._window
        while self._seen:
            oldest = next(iter(self._seen))
            if self._seen[oldest] >= horizon:
                break
            del self._seen[oldest]


# --- message encryption ------------------------------------------------------------------


def _cipher(key: bytes) -> Cipher[modes.CBC]:
    return Cipher(algorithms.AES(key), modes.CBC(key[:16]))


def encrypt(message: bytes, *, key: bytes, appid: str, random: bytes | None = None) -> str:
    """Encrypt ``message`` as WeChat does; the base64 text of ``<Encrypt>``.

    Args:
        message: The message XML.
        key: The 32-byte key (``aes_key_from``).
        appid: The account's AppID, appended to the plaintext.
        random: The 16 leading bytes; fresh random ones by default (tests pin them).
    """
    lead = secrets.token_bytes(16) if random is None else random
    if len(lead) != 16:
        raise ValueError("random must be 16 bytes")
    plain = lead + len(message).to_bytes(4, "big") + message + appid.encode()
    pad = BLOCK - len(plain) % BLOCK
    plain += bytes([pad]) * pad
    encryptor = _cipher(key).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def decrypt(encrypted: str, *, key: bytes, appid: str) -> bytes:
    """The message XML inside a safe-mode ``<Encrypt>``; verify ``msg_signature`` first.

    Raises:
        UndecryptableMessage: not base64, not whole blocks, bad padding or framing.
        AppIdMismatch: the message is for another account.
    """
    try:
        raw = base64.b64decode(encrypted.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UndecryptableMessage("Encrypt is not base64") from exc
    if not raw or len(raw) % 16:
        raise UndecryptableMessage("Encrypt is not a whole number of AES blocks")
    decryptor = _cipher(key).decryptor()
    plain = decryptor.update(raw) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= BLOCK or plain[-pad:] != bytes([pad]) * pad:
        raise UndecryptableMessage("bad padding: is the EncodingAESKey the account's?")
    body = plain[:-pad]
    if len(body) < 20:
        raise UndecryptableMessage("decrypted text is too short for WeChat's framing")
    length = int.from_bytes(body[16:20], "big")
    if 20 + length > len(body):
        raise UndecryptableMessage("message length runs past the decrypted text")
    message, sender = body[20 : 20 + length], body[20 + length :]
    if not hmac.compare_digest(sender, appid.encode()):
        raise AppIdMismatch("the message is for another appid: check the app's appid")
    return message


# --- XML -----------------------------------------------------------------------------------


def parse_xml(body: bytes) -> dict[str, str]:
    """The ``<xml>`` element's children as ``{tag: text}`` (the first of each tag).

    Nested elements (``ScanCodeInfo``, ...) are kept as their text only: empty.

    Raises:
        BodyTooLarge: over ``MAX_BODY_BYTES``.
        UnsafeXml: a DTD or entity declaration, or XML that does not parse.
    """
    if len(body) > MAX_BODY_BYTES:
        raise BodyTooLarge(f"body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        root = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise UnsafeXml(f"XML with a DTD or entities is refused ({type(exc).__name__})") from exc
    except (ParseError, ValueError, LookupError) as exc:
        raise UnsafeXml(f"body is not XML: {exc}") from exc
    if root.tag != "xml":
        raise UnsafeXml(f"root element is <{root.tag}>; WeChat sends <xml>")
    fields: dict[str, str] = {}
    for child in root:
        if isinstance(child.tag, str):
            fields.setdefault(child.tag, child.text or "")
    return fields


# --- messages and events -------------------------------------------------------------------


@dataclass(frozen=True)
class WeChatMessage:
    """One callback message, checked: who sent it, when, and what it is."""

    openid: str
    """``FromUserName``: the sender's openid for this account."""
    create_time: int
    msg_type: str
    to_user: str = ""
    event: str | None = None
    event_key: str | None = None
    msg_id: str | None = None
    content: str | None = None
    ticket: str | None = None

    @property
    def occurred_at(self) -> datetime:
        return datetime.fromtimestamp(self.create_time, UTC)


def parse_message(fields: Mapping[str, str]) -> WeChatMessage:
    """A ``WeChatMessage`` from ``parse_xml``'s fields.

    Raises:
        MalformedMessage: the sender, time or type is missing or unreadable.
    """
    openid = fields.get("FromUserName", "").strip()
    if not _OPENID.match(openid):
        raise MalformedMessage("FromUserName is missing or not an openid")
    raw_time = fields.get("CreateTime", "").strip()
    if not raw_time.isdigit() or not _CREATE_TIME_MIN <= int(raw_time) < _CREATE_TIME_MAX:
        raise MalformedMessage("CreateTime is missing or not a Unix time in seconds")
    msg_type = fields.get("MsgType", "").strip().lower()
    if not msg_type:
        raise MalformedMessage("MsgType is missing")

    def opt(tag: str) -> str | None:
        value = (fields.get(tag) or "").strip()
        return value or None

    event = opt("Event")
    return WeChatMessage(
        openid=openid,
        create_time=int(raw_time),
        msg_type=msg_type,
        to_user=fields.get("ToUserName", "").strip(),
        event=event.lower() if event else None,
        event_key=opt("EventKey"),
        msg_id=opt("MsgId"),
        content=fields.get("Content"),
        ticket=opt("Ticket"),
    )


@dataclass(frozen=True)
class CallbackEvent:
    """What a callback means to Stagecoach: an event for the openid's contact."""

    type: str
    message_id: str
    app: str
    openid: str
    occurred_at: datetime
    properties: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


def message_id_for(app: str, message: WeChatMessage) -> str:
    """The dedupe key: sender, CreateTime and MsgId (messages) or event name (events).

    WeChat retries a callback with the same fields, so every retry gets the same id.
    Two events of one kind from one sender within one second count as one.
    """
    what = message.msg_id or message.event or message.msg_type
    key = f"wechat:{app}:{message.openid}:{message.create_time}:{what}"
    if len(key) <= _MESSAGE_ID_MAX:
        return key
    return "wechat:" + hashlib.sha256(key.encode()).hexdigest()


def _scene_attribution(scene: str) -> dict[str, Any]:
    return {"campaign": {"source": "qrscene", "medium": "wechat", "name": scene}}


def event_from(app: str, message: WeChatMessage) -> CallbackEvent | None:
    """The event a callback message records, or ``None`` for kinds we do not record.

    - ``subscribe`` -> ``wechat.subscribed``; with ``EventKey`` ``qrscene_<scene>`` (a
      follow through a parametric QR code) ``properties.scene`` and
      ``context.campaign`` (source ``qrscene``, name the scene) attribute it.
    - ``SCAN`` (a follower scans a QR code) -> ``wechat.scanned``, same attribution.
    - ``unsubscribe`` -> ``wechat.unsubscribed``.
    - ``CLICK`` / ``VIEW`` (custom menu) -> ``wechat.menu_clicked`` with ``key``.
    - a message from the user -> ``wechat.message_received`` with ``msg_type`` (and
      ``content`` for text): it opens the customer-service window.
    """
    properties: dict[str, Any] = {}
    context: dict[str, Any] = {}
    if message.msg_type == "event":
        match message.event:
            case "subscribe":
                type_ = "wechat.subscribed"
                key = message.event_key or ""
                if key.startswith("qrscene_") and len(key) > len("qrscene_"):
                    scene = key.removeprefix("qrscene_")
                    properties["scene"] = scene
                    context |= _scene_attribution(scene)
            case "scan":
                type_ = "wechat.scanned"
                if message.event_key:
                    properties["scene"] = message.event_key
                    context |= _scene_attribution(message.event_key)
            case "unsubscribe":
                type_ = "wechat.unsubscribed"
            case "click" | "view":
                type_ = "wechat.menu_clicked"
                properties["action"] = message.event
                if message.event_key:
                    properties["key"] = message.event_key
            case _:
                return None
        if message.ticket:
            properties["ticket"] = message.ticket
    elif message.msg_type in _INBOUND:
        type_ = "wechat.message_received"
        properties["msg_type"] = message.msg_type
        if message.msg_id:
            properties["msg_id"] = message.msg_id
        if message.msg_type == "text":
            properties["content"] = message.content or ""
    else:
        return None
    context["wechat"] = {
        "app": app,
        "to_user": message.to_user,
        "msg_type": message.msg_type,
        **({"event": message.event} if message.event else {}),
    }
    return CallbackEvent(
        type=type_,
        message_id=message_id_for(app, message),
        app=app,
        openid=message.openid,
        occurred_at=message.occurred_at,
        properties=properties,
        context=context,
    )


# --- mass-send jobs ------------------------------------------------------------------------

MASS_SEND_FINISHED = "masssendjobfinish"
"""``Event`` of the callback that reports a mass-send job done (lower-cased)."""
_COUNT_MAX = 10**9
_REJECTED = re.compile(r"^err\((\d{1,9})\)$")


@dataclass(frozen=True)
class MassSendFinished:
    """A ``MASSSENDJOBFINISH`` callback: how WeChat's mass-send job ``msg_id`` ended.

    ``status`` is WeChat's: ``send success`` (a few followers may still have failed:
    ``errors``), ``send fail``, or ``err(<n>)`` when the content review refused the job
    (10001 advertising, 20001 politics, 20013 copyright, ...). The counts are WeChat's:
    ``total`` followers targeted, ``filter_count`` of them left after WeChat's filters
    (refused the account's messages, over their four a month), ``sent`` and ``errors``
    of those.
    """

    msg_id: str
    status: str
    total: int
    filter_count: int
    sent: int
    errors: int

    @property
    def filtered_out(self) -> int:
        """Followers WeChat's filters took out of the job."""
        return max(self.total - self.filter_count, 0)

    @property
    def outcome(self) -> str:
        """``finished``, ``failed``, or ``rejected_<n>`` for a refused review ``err(<n>)``."""
        status = self.status.strip().lower()
        if status == "send success":
            return "finished"
        rejected = _REJECTED.match(status)
        if rejected:
            return f"rejected_{rejected.group(1)}"
        return "failed"


def mass_send_finished(fields: Mapping[str, str]) -> MassSendFinished:
    """The ``MassSendFinished`` in a ``MASSSENDJOBFINISH`` callback's ``parse_xml`` fields.

    The job id is ``MsgID`` (WeChat's documentation; some senders write ``MsgId``).

    Raises:
        MalformedMessage: the job id, the status or a count is missing or not a number;
            the message names the field.
    """
    msg_id = (fields.get("MsgID") or fields.get("MsgId") or "").strip()
    if not msg_id.isascii() or not msg_id.isdigit() or len(msg_id) > 20:
        raise MalformedMessage("MASSSENDJOBFINISH without a numeric MsgID")
    status = (fields.get("Status") or "").strip()
    if not status or len(status) > 64:
        raise MalformedMessage("MASSSENDJOBFINISH without a Status")

    def count(tag: str) -> int:
        raw = (fields.get(tag) or "").strip()
        if not raw.isascii() or not raw.isdigit() or int(raw) > _COUNT_MAX:
            raise MalformedMessage(
                f"MASSSENDJOBFINISH {tag} is {raw[:20]!r}, not a count of followers"
            )
        return int(raw)

    return MassSendFinished(
        msg_id=msg_id,
        status=status,
        total=count("TotalCount"),
        filter_count=count("FilterCount"),
        sent=count("SentCount"),
        errors=count("ErrorCount"),
    )
