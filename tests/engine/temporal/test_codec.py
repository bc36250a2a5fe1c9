"""The payload codec on its own: AES-256-GCM round trips, key rotation, refusals of
altered payloads and unknown keys, the key settings and file, and the decoding of raw
history events."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr
from temporalio.api.common.v1 import Memo, Payload, Payloads, SearchAttributes
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError

from stagecoach.engine.domain.errors import ConfigurationError
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.codec import (
    ENCODING,
    KEY_ID,
    EncryptionCodec,
    PayloadDecryptionError,
    PayloadKeys,
    data_converter,
    decode_in_place,
    ensure_key_file,
    key_file,
    load_keys,
    new_key_entry,
)

EMAIL = "lin.yue@example.cn"
OLD = "k2024:" + base64.b64encode(b"o" * 32).decode()
NEW = "k2025:" + base64.b64encode(b"n" * 32).decode()


def _codec(raw: str) -> EncryptionCodec:
    return EncryptionCodec(PayloadKeys.parse(raw))


def _json(value: object) -> Payload:
    return DataConverter.default.payload_converter.to_payloads([value])[0]


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path / ".stagecoach", **overrides)  # type: ignore[arg-type]


async def test_a_payload_round_trips_and_is_ciphertext_in_between() -> None:
    codec = _codec(NEW)
    original = _json({"email": EMAIL})
    [sealed] = await codec.encode([original])
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID] == b"k2025"
    assert EMAIL.encode() not in sealed.SerializeToString()
    assert b"json/plain" not in sealed.SerializeToString()  # the original metadata too
    [again] = await codec.encode([original])
    assert again.data[:12] != sealed.data[:12]  # a fresh nonce every time
    assert await codec.decode([sealed]) == [original]


async def test_payloads_written_before_encryption_was_on_decode_unchanged() -> None:
    plain = _json({"email": EMAIL})
    assert await _codec(NEW).decode([plain]) == [plain]


async def test_after_rotation_old_payloads_decrypt_and_new_ones_use_the_new_key() -> None:
    before = _codec(OLD)
    after = _codec(f"{NEW},{OLD}")
    [old_sealed] = await before.encode([_json("old")])
    assert await after.decode([old_sealed]) == [_json("old")]
    [new_sealed] = await after.encode([_json("new")])
    assert new_sealed.metadata[KEY_ID] == b"k2025"
    # A process not yet given the new key names it and says what to do.
    with pytest.raises(PayloadDecryptionError) as caught:
        await before.decode([new_sealed])
    assert caught.value.key_id == "k2025"
    text = str(caught.value)
    assert "'k2025'" in text
    assert "not among the payload keys configured here (k2024)" in text
    assert "Fix: add the entry 'k2025:<its base64 key>'" in text
    assert "STAGECOACH_PAYLOAD_KEYS" in text


@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag", "truncated"])
async def test_an_altered_payload_is_refused_naming_its_key(where: str) -> None:
    codec = _codec(NEW)
    [sealed] = await codec.encode([_json({"email": EMAIL})])
    data = bytearray(sealed.data)
    if where == "truncated":
        data = data[:20]
    else:
        data[{"nonce": 0, "ciphertext": 14, "tag": -1}[where]] ^= 0x01
    sealed.data = bytes(data)
    with pytest.raises(PayloadDecryptionError, match="key 'k2025' does not decrypt: it was"):
        await codec.decode([sealed])


async def test_a_key_id_rewritten_to_another_configured_key_does_not_decrypt() -> None:
    # Same key bytes under two ids: only the associated data (the id) tells them apart.
    same = base64.b64encode(b"s" * 32).decode()
    codec = _codec(f"a:{same},b:{same}")
    [sealed] = await codec.encode([_json("x")])
    sealed.metadata[KEY_ID] = b"b"
    with pytest.raises(PayloadDecryptionError, match="key 'b' does not decrypt"):
        await codec.decode([sealed])


async def test_the_error_reads_well_where_temporal_records_it() -> None:
    """A worker that cannot decode fails the task with this exception: Temporal keeps
    its type and text, which must name the key and the fix, and it stays retryable so
    deploying the key is enough."""
    [sealed] = await _codec(NEW).encode([_json("x")])
    with pytest.raises(PayloadDecryptionError) as caught:
        await _codec(OLD).decode([sealed])
    failure = Failure()
    DataConverter.default.failure_converter.to_failure(
        caught.value, DataConverter.default.payload_converter, failure
    )
    assert failure.application_failure_info.type == "PayloadDecryptionError"
    assert not failure.application_failure_info.non_retryable
    assert "'k2025'" in failure.message
    assert "Fix:" in failure.message


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("", "holds no key"),
        (" , ", "holds no key"),
        ("nokey", "entry 1 is not '<key id>:<base64 key>'"),
        (f"{NEW},bad id:{OLD.split(':')[1]}", "entry 2 is not"),
        (f"{NEW},{NEW}", "key id 'k2025' appears twice"),
        ("short:" + base64.b64encode(b"x" * 16).decode(), "'short' is not base64 of exactly 32"),
        ("junk:!!!notbase64!!!", "'junk' is not base64 of exactly 32"),
    ],
)
def test_malformed_keys_are_refused_without_echoing_them(raw: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        PayloadKeys.parse(raw)
    assert says in caught.value.message
    assert "STAGECOACH_PAYLOAD_KEYS" in caught.value.message
    for secret in (OLD.split(":")[1], NEW.split(":")[1]):
        assert secret not in caught.value.one_line()


def test_keys_parse_in_order_with_urlsafe_base64_newlines_and_comments() -> None:
    urlsafe = "u:" + base64.urlsafe_b64encode(b"\xfb" * 32).decode().rstrip("=")
    keys = PayloadKeys.parse(f"# rotated 2025-06\n{NEW}\n{urlsafe}, {OLD}\n")
    assert keys.ids == ("k2025", "u", "k2024")
    assert keys.current == "k2025"
    assert keys.get("u") == b"\xfb" * 32
    assert "nnnn" not in repr(keys)


def test_new_key_entries_parse_and_differ() -> None:
    first, second = new_key_entry("a"), new_key_entry("b")
    assert PayloadKeys.parse(f"{first},{second}").ids == ("a", "b")
    assert first.split(":")[1] != second.split(":")[1]
    assert new_key_entry().startswith("k20")


def test_no_setting_and_no_file_means_no_encryption(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert load_keys(settings) is None
    assert data_converter(settings) is DataConverter.default


def test_the_setting_wins_over_the_key_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path, payload_keys=SecretStr(NEW))
    ensure_key_file(_settings(tmp_path))  # a file exists too
    keys = load_keys(settings)
    assert keys is not None
    assert keys.ids == ("k2025",)
    assert ensure_key_file(settings) is None  # and up writes none when it is set


def test_up_writes_one_private_key_file_and_keeps_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    path = ensure_key_file(settings)
    assert path == key_file(settings) == tmp_path / ".stagecoach" / "payload-keys"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert ensure_key_file(settings) == path
    assert path.read_text() == first  # never overwritten: it holds the histories' keys
    keys = load_keys(settings)
    assert keys is not None
    assert len(keys.ids) == 1
    converter = data_converter(settings)
    assert isinstance(converter.payload_codec, EncryptionCodec)


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    path = ensure_key_file(settings)
    assert path is not None
    os.chmod(path, 0o644)
    with pytest.raises(ConfigurationError, match="can be read by other users") as caught:
        load_keys(settings)
    assert caught.value.fix == f"chmod 600 {path}"


async def test_failure_messages_are_encrypted_and_decode_back_for_history_readers(
    tmp_path: Path,
) -> None:
    converter = data_converter(_settings(tmp_path, payload_keys=SecretStr(NEW)))
    failure = Failure()
    await converter.encode_failure(
        ApplicationError(f"550 {EMAIL} no such user", type="PermanentDeliveryError"), failure
    )
    assert failure.message == "Encoded failure"
    assert EMAIL.encode() not in failure.SerializeToString()
    assert failure.application_failure_info.type == "PermanentDeliveryError"  # plaintext

    event = HistoryEvent(event_id=7, event_type=EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED)
    event.activity_task_failed_event_attributes.failure.CopyFrom(failure)
    await decode_in_place([event], converter)
    assert event.activity_task_failed_event_attributes.failure.message == (
        f"550 {EMAIL} no such user"
    )


async def test_decoding_raw_history_reaches_every_payload_but_search_attributes(
    tmp_path: Path,
) -> None:
    converter = data_converter(_settings(tmp_path, payload_keys=SecretStr(NEW)))
    codec = converter.payload_codec
    assert codec is not None
    [sealed_input, sealed_memo, sealed_summary] = await codec.encode(
        [_json({"email": EMAIL}), _json("memo"), _json("summary")]
    )
    stage = _json("lead")
    event = HistoryEvent(event_id=1, event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)
    started = event.workflow_execution_started_event_attributes
    started.input.CopyFrom(Payloads(payloads=[sealed_input]))
    started.memo.CopyFrom(Memo(fields={"note": sealed_memo}))
    started.search_attributes.CopyFrom(SearchAttributes(indexed_fields={"Stage": stage}))
    event.user_metadata.summary.CopyFrom(sealed_summary)

    await decode_in_place(event, converter)

    assert started.input.payloads[0] == _json({"email": EMAIL})
    assert started.memo.fields["note"] == _json("memo")
    assert event.user_metadata.summary == _json("summary")
    assert started.search_attributes.indexed_fields["Stage"] == stage


async def test_without_a_codec_raw_history_is_left_alone() -> None:
    event = HistoryEvent(event_id=1)
    event.workflow_execution_started_event_attributes.input.payloads.add().CopyFrom(_json("x"))
    before = event.SerializeToString()
    await decode_in_place([event], DataConverter.default)
    assert event.SerializeToString() == before
