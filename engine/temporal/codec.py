"""Personal data encrypted in Temporal histories: an AES-256-GCM payload codec.

Every payload a Stagecoach client or worker sends to Temporal (workflow and activity
inputs and results, signals, updates, queries, memos, user-metadata summaries, and the
messages and stack traces of failures) is encrypted before it leaves the process, so
the Temporal server, its database and anyone reading the Web UI without the keys see
ciphertext. Search attributes (Stage, Score, Grade, Journeys, Locale), workflow ids
(``contact-<contact id>``), signal and activity names stay plaintext: Temporal needs
them to index and route. See docs/codec.md.

An encrypted payload::

    metadata  encoding          = binary/encrypted
              encryption-key-id = <key id>
    data      12-byte random nonce || AES-256-GCM(serialized original Payload)

The associated data binds the key id (and the format version), so a payload whose key
id was rewritten does not decrypt under another key.

Keys come from ``STAGECOACH_PAYLOAD_KEYS``: ``<key id>:<base64 of 32 bytes>`` entries
separated by commas (or newlines). The first encrypts; every one decrypts. Unset, the
file ``<data_dir>/payload-keys`` (same format, mode 0600) is used when it exists:
``stagecoach up`` writes one on first start, so the embedded default encrypts too.
With neither, payloads are not encrypted. Payloads that are not encrypted always
decode, so turning encryption on needs no migration of older histories.

This module imports Temporal's SDK (it implements its ``PayloadCodec``); it is not one
of engine's pure modules. It lives in ``engine`` because both the workflows' client
(``stagecoach.workflows.client.connect``) and the API's codec server
(``stagecoach.engine.api.routes.codec``)
use it, and engine must not import workflows.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError, Message
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from stagecoach.engine.domain.errors import ConfigurationError, StagecoachError
from stagecoach.engine.settings import Settings

ENCODING = b"binary/encrypted"
"""``metadata["encoding"]`` of an encrypted payload (the value other SDKs' samples use)."""
KEY_ID = "encryption-key-id"
"""The metadata key naming the key that encrypted the payload."""
ENV = "STAGECOACH_PAYLOAD_KEYS"
KEY_FILE = "payload-keys"
"""The embedded default's key file, under ``data_dir``."""

NONCE_SIZE = 12
KEY_SIZE = 32
_TAG_SIZE = 16
_AAD = b"stagecoach payload v1\x00"
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENTRY_FORMAT = '<key id>:<base64 of 32 bytes>, e.g. "k2025-06:$(openssl rand -base64 32)"'


class PayloadDecryptionError(StagecoachError):
    """An encrypted payload cannot be decrypted: its key is not configured here, or the
    ciphertext was altered.

    Raised from the codec, so it surfaces wherever Temporal decodes: in a client call,
    or in a worker, where it fails the workflow task or the activity attempt. It is
    deliberately retryable there: once the missing key is deployed the retries succeed.
    Its text carries the key id and the fix, because that is what Temporal records.
    """

    def __init__(self, message: str, *, fix: str, key_id: str) -> None:
        super().__init__(message, fix=fix)
        self.key_id = key_id

    def __str__(self) -> str:
        return self.one_line()


@dataclass(frozen=True)
class PayloadKeys:
    """The key ring: ids in configured order (the first encrypts) and their key bytes."""

    ids: tuple[str, ...]
    _material: Mapping[str, bytes] = field(repr=False)

    @property
    def current(self) -> str:
        """The id of the key that encrypts."""
        return self.ids[0]

    def get(self, key_id: str) -> bytes | None:
        return self._material.get(key_id)

    @classmethod
    def parse(cls, raw: str, *, source: str = ENV) -> PayloadKeys:
        """Parse ``<key id>:<base64 key>`` entries separated by commas or newlines;
        blank entries and ``#`` comment lines are skipped.

        Raises:
            ConfigurationError: An entry is malformed, a key is not 32 bytes, an id
                repeats, or there is no entry at all. The message names ``source`` and
                the entry's position, never the key itself.
        """
        ids: list[str] = []
        material: dict[str, bytes] = {}
        entries = [
            e.strip()
            for line in raw.splitlines()
            if not line.strip().startswith("#")
            for e in line.split(",")
        ]
        for n, entry in enumerate((e for e in entries if e), start=1):
            key_id, sep, encoded = entry.partition(":")
            key_id, encoded = key_id.strip(), encoded.strip()
            if not sep or not _KEY_ID_RE.match(key_id):
                raise ConfigurationError(
                    f"{source}: entry {n} is not '<key id>:<base64 key>' (a key id is 1-64 "
                    "letters, digits, '.', '_' or '-')",
                    fix=f"write each entry as {_ENTRY_FORMAT}",
                )
            if key_id in material:
                raise ConfigurationError(
                    f"{source}: key id {key_id!r} appears twice",
                    fix="give every key its own id; a new key gets a new id",
                )
            key = _b64(encoded)
            if key is None or len(key) != KEY_SIZE:
                raise ConfigurationError(
                    f"{source}: the key {key_id!r} is not base64 of exactly {KEY_SIZE} bytes",
                    fix="generate one with 'openssl rand -base64 32'",
                )
            ids.append(key_id)
            material[key_id] = key
        if not ids:
            raise ConfigurationError(
                f"{source} holds no key", fix=f"set it to {_ENTRY_FORMAT}, or unset it"
            )
        return cls(tuple(ids), material)


def _b64(text: str) -> bytes | None:
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def new_key_entry(key_id: str | None = None) -> str:
    """A fresh ``<key id>:<base64 key>`` entry; the id defaults to ``k<UTC timestamp>``."""
    key_id = key_id or f"k{datetime.now(UTC):%Y%m%dT%H%M%S}"
    if not _KEY_ID_RE.match(key_id):
        raise ValueError(f"{key_id!r} is not a valid key id")
    return f"{key_id}:{base64.b64encode(os.urandom(KEY_SIZE)).decode('ascii')}"


def key_file(settings: Settings) -> Path:
    """Where the embedded default keeps its keys."""
    return settings.data_dir / KEY_FILE


def _read_key_file(path: Path) -> PayloadKeys:
    try:
        if os.name == "posix" and stat.S_IMODE(path.stat().st_mode) & 0o077:
            raise ConfigurationError(
                f"{path} (the payload keys) can be read by other users",
                fix=f"chmod 600 {path}",
            )
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"{path} (the payload keys) cannot be read ({exc.strerror})",
            fix=f"make it readable by this user only, or set {ENV}",
        ) from exc
    return PayloadKeys.parse(text, source=str(path))


def load_keys(settings: Settings) -> PayloadKeys | None:
    """The configured keys: ``STAGECOACH_PAYLOAD_KEYS``, else ``<data_dir>/payload-keys``
    when it exists, else None (payloads are not encrypted).

    Raises:
        ConfigurationError: The setting or the file is unusable.
    """
    configured = settings.payload_keys.get_secret_value() if settings.payload_keys else ""
    if configured.strip():
        return PayloadKeys.parse(configured)
    path = key_file(settings)
    if path.is_file():
        return _read_key_file(path)
    return None


def ensure_key_file(settings: Settings) -> Path | None:
    """For ``stagecoach up``: make sure the embedded default encrypts.

    Returns None when ``STAGECOACH_PAYLOAD_KEYS`` is set (it wins); otherwise the key
    file, written with one fresh key (mode 0600, never overwritten) if it did not
    exist, and checked if it did.

    Raises:
        ConfigurationError: The existing file is unusable.
    """
    if settings.payload_keys is not None and settings.payload_keys.get_secret_value().strip():
        PayloadKeys.parse(settings.payload_keys.get_secret_value())
        return None
    path = key_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _read_key_file(path)
        return path
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(
            "# Stagecoach payload keys (docs/codec.md). The first line encrypts, every\n"
            "# line decrypts. Losing this file loses the contacts' workflow histories.\n"
            f"{new_key_entry()}\n"
        )
    return path


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over whole serialized payloads, with the key id in the clear.

    Args:
        keys: The key ring; ``keys.current`` encrypts.
    """

    def __init__(self, keys: PayloadKeys) -> None:
        self.keys = keys
        self._ciphers = {key_id: AESGCM(keys.get(key_id) or b"") for key_id in keys.ids}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        """``payload`` encrypted with the current key."""
        key_id = self.keys.current
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._ciphers[key_id].encrypt(
            nonce, payload.SerializeToString(deterministic=True), _aad(key_id)
        )
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID: key_id.encode("ascii")},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        """The original of an encrypted payload; any other payload unchanged.

        Raises:
            PayloadDecryptionError: Its key is not configured, or it was altered.
        """
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # written before encryption was on, or by nobody we know
        key_id = payload.metadata.get(KEY_ID, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            held = ", ".join(self.keys.ids)
            raise PayloadDecryptionError(
                f"a payload is encrypted with key {key_id!r}, which is not among the payload "
                f"keys configured here ({held})",
                fix=f"add the entry '{key_id}:<its base64 key>' after the current key in "
                f"{ENV} (or {KEY_FILE} under the data directory) of every worker, API and "
                "CLI; a key may be dropped only once no history needs it (docs/codec.md)",
                key_id=key_id,
            )
        data = payload.data
        try:
            if len(data) < NONCE_SIZE + _TAG_SIZE:
                raise InvalidTag
            plain = cipher.decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], _aad(key_id))
            original = Payload()
            original.ParseFromString(plain)
        except (InvalidTag, DecodeError):
            raise PayloadDecryptionError(
                f"a payload encrypted with key {key_id!r} does not decrypt: it was altered, or "
                f"the key configured as {key_id!r} here is not the one that encrypted it",
                fix=f"give every worker, API and CLI the same {ENV}; a key id must never be "
                "reused for new key material",
                key_id=key_id,
            ) from None
        return original


def _aad(key_id: str) -> bytes:
    return _AAD + key_id.encode("ascii")


def payload_codec(settings: Settings) -> EncryptionCodec | None:
    """The codec ``settings`` ask for, or None when no key is configured."""
    keys = load_keys(settings)
    return EncryptionCodec(keys) if keys is not None else None


def data_converter(settings: Settings) -> DataConverter:
    """The data converter of every Stagecoach client: Temporal's default, plus, when keys
    are configured, the encryption codec and failure messages moved into encrypted
    attributes (a connector's error can name an address)."""
    codec = payload_codec(settings)
    if codec is None:
        return DataConverter.default
    return dataclasses.replace(
        DataConverter.default,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


# --- reading raw histories ---------------------------------------------------------------

_PAYLOAD = Payload.DESCRIPTOR.full_name
_SKIPPED = {"temporal.api.common.v1.SearchAttributes"}  # never encoded: the server indexes them
_FAILURE = "temporal.api.failure.v1.Failure"


async def decode_in_place(messages: Message | Sequence[Message], converter: DataConverter) -> None:
    """Decode every payload inside ``messages`` (history events, a ``describe`` answer)
    with ``converter``'s codec, in place, and put encoded failure messages back where
    readers look for them. Without a codec it does nothing.

    The SDK decodes what it hands to workflows and callers, but raw history events
    (``fetch_history_events``) and ``describe``'s pending activities arrive as stored:
    the timeline and ``contact why`` read those.
    """
    codec = converter.payload_codec
    if codec is None:
        return
    roots = [messages] if isinstance(messages, Message) else list(messages)
    found: list[Payload] = []
    failures: list[Any] = []
    for root in roots:
        _collect(root, found, failures)
    if not found:
        return
    decoded = await codec.decode(found)
    if len(decoded) != len(found):  # pragma: no cover - our codec is one to one
        raise RuntimeError("the payload codec changed the number of payloads")
    for payload, plain in zip(found, decoded, strict=True):
        if plain is not payload:
            payload.CopyFrom(plain)
    for failure in failures:  # innermost last: a cause is collected after its parent
        _restore_failure(failure, converter)


def _collect(message: Message, found: list[Payload], failures: list[Any]) -> None:
    name = message.DESCRIPTOR.full_name
    if name == _PAYLOAD:
        found.append(message)  # type: ignore[arg-type]
        return
    if name in _SKIPPED:
        return
    if name == _FAILURE and message.HasField("encoded_attributes"):
        failures.append(message)
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        for child in _children(descriptor, value):
            _collect(child, found, failures)


def _children(descriptor: Any, value: Any) -> Iterator[Message]:
    if descriptor.message_type.GetOptions().map_entry:
        if descriptor.message_type.fields_by_name["value"].message_type is not None:
            yield from value.values()
    elif descriptor.is_repeated:
        yield from value
    else:
        yield value


def _restore_failure(failure: Any, converter: DataConverter) -> None:
    try:
        attrs = converter.payload_converter.from_payloads([failure.encoded_attributes])[0]
    except Exception:  # not the SDK's shape: leave the failure as recorded
        return
    if isinstance(attrs, dict):
        if isinstance(attrs.get("message"), str):
            failure.message = attrs["message"]
        if isinstance(attrs.get("stack_trace"), str):
            failure.stack_trace = attrs["stack_trace"]
