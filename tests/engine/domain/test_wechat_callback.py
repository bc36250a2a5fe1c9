"""The WeChat callback's pure parts: signatures, the message cipher, XML and events."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from stagecoach.engine.domain.wechat_callback import (
    MAX_BODY_BYTES,
    AppIdMismatch,
    BodyTooLarge,
    MalformedMessage,
    NonceMemory,
    SignatureMismatch,
    StaleRequest,
    UndecryptableMessage,
    UnsafeXml,
    WeChatMessage,
    aes_key_from,
    check_fresh,
    decrypt,
    encrypt,
    event_from,
    message_id_for,
    parse_apps,
    parse_message,
    parse_xml,
    sign,
    verify,
)

ENCODING_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APPID = "wx5823bf96d3bd56c7"
OPENID = "oAbC1234567890defGHIjklMNOpq"


def xml(**fields: str) -> bytes:
    inner = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items())
    return f"<xml>{inner}</xml>".encode()


def fields(**more: str) -> dict[str, str]:
    return {
        "ToUserName": "gh_0123456789ab",
        "FromUserName": OPENID,
        "CreateTime": "1763802000",
        **more,
    }


# --- signatures ------------------------------------------------------------------------


def test_signature_is_sha1_of_the_sorted_values_joined() -> None:
    # sha1("1320562325" "1763802000" "stagecoach"): the three values sorted as strings
    expected = "0667e97cb8c4f9b583ce502008f269956163b20c"
    assert sign("stagecoach", "1763802000", "1320562325") == expected
    assert sign("stagecoach", "1320562325", "1763802000") == expected


def test_msg_signature_includes_the_ciphertext() -> None:
    plain = sign("t", "1", "2")
    assert sign("t", "1", "2", "Zm9v") != plain
    verify(sign("t", "1", "2", "Zm9v"), "t", "1", "2", "Zm9v")


def test_verify_accepts_the_match_in_any_case_and_refuses_the_rest() -> None:
    good = sign("token", "1763802000", "42")
    verify(good, "token", "1763802000", "42")
    verify(good.upper(), "token", "1763802000", "42")
    for signature, timestamp, nonce in [
        (None, "1763802000", "42"),
        ("", "1763802000", "42"),
        (good, None, "42"),
        (good, "1763802000", None),
        (good, "1763802001", "42"),
        ("0" * 40, "1763802000", "42"),
    ]:
        with pytest.raises(SignatureMismatch):
            verify(signature, "token", timestamp, nonce)


# --- the cipher ------------------------------------------------------------------------


def test_the_aes_key_is_the_encoding_key_plus_equals_base64_decoded() -> None:
    key = aes_key_from(ENCODING_AES_KEY)
    assert len(key) == 32
    assert key == base64.b64decode(ENCODING_AES_KEY + "=")
    with pytest.raises(ValueError, match="43"):
        aes_key_from(ENCODING_AES_KEY[:-1])
    with pytest.raises(ValueError, match="base64"):
        aes_key_from("!" * 43)


def test_encrypt_follows_wechats_layout() -> None:
    key = aes_key_from(ENCODING_AES_KEY)
    message = xml(Content="你好")
    encrypted = encrypt(message, key=key, appid=APPID, random=b"r" * 16)
    raw = base64.b64decode(encrypted)
    assert len(raw) % 32 == 0
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = decryptor.update(raw) + decryptor.finalize()
    pad = plain[-1]
    assert 1 <= pad <= 32
    assert plain[-pad:] == bytes([pad]) * pad
    body = plain[:-pad]
    assert body[:16] == b"r" * 16
    assert int.from_bytes(body[16:20], "big") == len(message)
    assert body[20 : 20 + len(message)] == message
    assert body[20 + len(message) :] == APPID.encode()


@pytest.mark.parametrize("size", [0, 1, 11, 12, 13, 44, 1000])
def test_encrypt_then_decrypt_is_the_message(size: int) -> None:
    key = aes_key_from(ENCODING_AES_KEY)
    message = b"x" * size
    assert decrypt(encrypt(message, key=key, appid=APPID), key=key, appid=APPID) == message


def test_a_message_for_another_appid_is_refused() -> None:
    key = aes_key_from(ENCODING_AES_KEY)
    encrypted = encrypt(b"<xml/>", key=key, appid="wx_other")
    with pytest.raises(AppIdMismatch):
        decrypt(encrypted, key=key, appid=APPID)


@pytest.mark.parametrize(
    "encrypted",
    ["not base64!", "", base64.b64encode(b"x" * 15).decode(), base64.b64encode(b"x" * 32).decode()],
)
def test_broken_ciphertext_is_undecryptable(encrypted: str) -> None:
    with pytest.raises(UndecryptableMessage):
        decrypt(encrypted, key=aes_key_from(ENCODING_AES_KEY), appid=APPID)


def test_the_wrong_key_is_undecryptable() -> None:
    encrypted = encrypt(b"<xml/>", key=aes_key_from(ENCODING_AES_KEY), appid=APPID)
    other = aes_key_from("Z" * 43)
    with pytest.raises((UndecryptableMessage, AppIdMismatch)):
        decrypt(encrypted, key=other, appid=APPID)


# --- XML -------------------------------------------------------------------------------

BOMB = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
    b"<xml><Content>&lol3;</Content></xml>"
)
EXTERNAL = (
    b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b"<xml><Content>&x;</Content></xml>"
)


def test_parse_xml_reads_the_flat_fields() -> None:
    body = xml(**fields(MsgType="text", Content=" 白皮书 <b> "))
    parsed = parse_xml(body)
    assert parsed["FromUserName"] == OPENID
    assert parsed["Content"] == " 白皮书 <b> "  # CDATA kept as sent
    assert parse_xml(b"<xml><CreateTime>1</CreateTime><Nested><A>x</A></Nested></xml>") == {
        "CreateTime": "1",
        "Nested": "",
    }


@pytest.mark.parametrize(
    "body",
    [
        BOMB,
        EXTERNAL,
        b'<!DOCTYPE xml SYSTEM "http://example.com/x.dtd"><xml/>',
        b"<xml><unclosed></xml>",
        b"",
        b"<notxml/>",
        b'<?xml version="1.0" encoding="bogus"?><xml/>',
    ],
)
def test_unsafe_or_broken_xml_is_refused(body: bytes) -> None:
    with pytest.raises(UnsafeXml):
        parse_xml(body)


def test_an_oversized_body_is_refused_unparsed() -> None:
    with pytest.raises(BodyTooLarge):
        parse_xml(b"<xml>" + b" " * MAX_BODY_BYTES + b"</xml>")


# --- messages and events ---------------------------------------------------------------


def test_parse_message_needs_sender_time_and_type() -> None:
    message = parse_message(fields(MsgType="event", Event="SCAN", EventKey=" 42 "))
    assert (message.openid, message.create_time, message.event, message.event_key) == (
        OPENID,
        1763802000,
        "scan",
        "42",
    )
    assert message.occurred_at.isoformat() == "2025-11-22T09:00:00+00:00"
    for broken in (
        fields(MsgType="event", FromUserName=""),
        fields(MsgType="event", FromUserName="a b"),
        fields(MsgType="event", CreateTime="yesterday"),
        fields(MsgType="event", CreateTime="12"),
        fields(MsgType=""),
    ):
        with pytest.raises(MalformedMessage):
            parse_message(broken)


def event(**more: str) -> tuple[str, dict[str, object], dict[str, object]] | None:
    found = event_from("main", parse_message(fields(**more)))
    return None if found is None else (found.type, found.properties, found.context)


def test_a_follow_through_a_qr_code_is_attributed_to_the_scene() -> None:
    found = event(MsgType="event", Event="subscribe", EventKey="qrscene_expo2026", Ticket="T")
    assert found is not None
    type_, properties, context = found
    assert type_ == "wechat.subscribed"
    assert properties == {"scene": "expo2026", "ticket": "T"}
    assert context["campaign"] == {"source": "qrscene", "medium": "wechat", "name": "expo2026"}
    assert context["wechat"] == {
        "app": "main",
        "to_user": "gh_0123456789ab",
        "msg_type": "event",
        "event": "subscribe",
    }


def test_a_plain_follow_has_no_attribution() -> None:
    found = event(MsgType="event", Event="subscribe")
    assert found is not None
    assert found[1] == {}
    assert "campaign" not in found[2]


@pytest.mark.parametrize(
    ("more", "type_", "properties"),
    [
        ({"Event": "unsubscribe"}, "wechat.unsubscribed", {}),
        ({"Event": "SCAN", "EventKey": "42"}, "wechat.scanned", {"scene": "42"}),
        (
            {"Event": "CLICK", "EventKey": "MENU_DOCS"},
            "wechat.menu_clicked",
            {"action": "click", "key": "MENU_DOCS"},
        ),
        (
            {"Event": "VIEW", "EventKey": "https://x.cn"},
            "wechat.menu_clicked",
            {"action": "view", "key": "https://x.cn"},
        ),
    ],
)
def test_events_map_to_stagecoach_event_types(
    more: dict[str, str], type_: str, properties: dict[str, str]
) -> None:
    found = event(MsgType="event", **more)
    assert found is not None
    assert found[:2] == (type_, properties)


def test_inbound_messages_are_message_received() -> None:
    text = event(MsgType="text", Content="还能下载吗?", MsgId="24600000000000001")
    assert text is not None
    assert text[:2] == (
        "wechat.message_received",
        {"msg_type": "text", "msg_id": "24600000000000001", "content": "还能下载吗?"},
    )
    image = event(MsgType="image", MsgId="2", PicUrl="http://x")
    assert image is not None
    assert image[:2] == ("wechat.message_received", {"msg_type": "image", "msg_id": "2"})


def test_kinds_we_do_not_record_give_no_event() -> None:
    assert event(MsgType="event", Event="LOCATION") is None
    assert event(MsgType="event", Event="TEMPLATESENDJOBFINISH") is None
    assert event(MsgType="device_text") is None


def test_message_ids_dedupe_by_sender_time_and_msgid_or_event() -> None:
    text = parse_message(fields(MsgType="text", MsgId="99", Content="hi"))
    follow = parse_message(fields(MsgType="event", Event="subscribe"))
    assert message_id_for("main", text) == f"wechat:main:{OPENID}:1763802000:99"
    assert message_id_for("main", follow) == f"wechat:main:{OPENID}:1763802000:subscribe"
    long = WeChatMessage(openid="o" * 64, create_time=1763802000, msg_type="text", msg_id="9" * 64)
    assert len(message_id_for("a" * 32, long)) <= 128
    assert message_id_for("a" * 32, long) == message_id_for("a" * 32, long)


# --- configuration ---------------------------------------------------------------------


def test_apps_parse_from_json_or_a_mapping_and_hide_secrets() -> None:
    raw = {"main": {"token": "s3cr3t-tok", "aes_key": ENCODING_AES_KEY, "appid": APPID}}
    apps = parse_apps(json.dumps(raw))
    assert apps == parse_apps(raw)
    assert apps["main"].key() == aes_key_from(ENCODING_AES_KEY)
    assert "s3cr3t-tok" not in repr(apps)
    assert ENCODING_AES_KEY not in repr(apps)
    plain = parse_apps({"plain": {"token": "tok", "appid": APPID}})
    assert plain["plain"].key() is None
    assert parse_apps(None) == {}
    assert parse_apps(apps) == apps  # a typed settings field hands over the models


@pytest.mark.parametrize(
    "raw",
    [
        {"bad name": {"token": "t", "appid": "wx"}},
        {"main": {"token": "s3cr3t", "appid": "wx", "aes_key": "short"}},
        {"main": {"token": "", "appid": "wx"}},
        {"main": {"appid": "wx"}},
        {"main": {"token": "t", "appid": "wx", "secret": "?"}},
        "{not json",
    ],
)
def test_bad_app_settings_are_refused_with_a_reason(raw: object) -> None:
    with pytest.raises(ValueError, match=r"wechat_apps|WeChat app name") as caught:
        parse_apps(raw)
    assert "s3cr3t" not in str(caught.value)


def test_a_bad_key_is_named_without_showing_the_token() -> None:
    raw = {"main": {"token": "s3cr3t-tok", "appid": "wx", "aes_key": "s3cr3t-short"}}
    with pytest.raises(ValueError, match=r"main\.aes_key: .*43") as caught:
        parse_apps(raw)
    assert "s3cr3t" not in str(caught.value)


# --- replays -------------------------------------------------------------------------------

NOW = 1_800_000_000.0


@pytest.mark.parametrize("offset", [0, -300, 300, -299.5])
def test_a_timestamp_within_the_window_is_fresh(offset: float) -> None:
    stamp = str(int(NOW + offset))
    assert check_fresh(stamp, now=NOW, window=300) == int(stamp)


@pytest.mark.parametrize(
    ("timestamp", "said"),
    [
        (str(int(NOW) - 301), "301 s behind"),
        (str(int(NOW) + 301), "301 s ahead of"),
        ("1763802000", "behind"),
        (None, "missing"),
        ("", "missing"),
        (" ", "missing"),
        ("-5", "not Unix seconds"),
        ("1.5e9", "not Unix seconds"),
        ("１８００００００００", "not Unix seconds"),  # full-width digits pass str.isdigit
        ("9" * 13, "not Unix seconds"),
    ],
)
def test_a_stale_or_unreadable_timestamp_is_refused(timestamp: str | None, said: str) -> None:
    with pytest.raises(StaleRequest, match=said):
        check_fresh(timestamp, now=NOW, window=300)


def test_the_nonce_memory_accepts_each_call_once_within_the_window() -> None:
    memory = NonceMemory(window=300)
    stamp = int(NOW)
    assert memory.first_time("main", "n1", "sig", stamp=stamp, now=NOW)
    assert not memory.first_time("main", "n1", "sig", stamp=stamp, now=NOW + 10)
    assert memory.first_time("other-app", "n1", "sig", stamp=stamp, now=NOW + 10)
    assert memory.first_time("main", "n2", "sig", stamp=stamp, now=NOW + 10)
    # Once the timestamp has left the window the entry goes: check_fresh refuses it then.
    assert memory.first_time("main", "n3", "sig", stamp=stamp + 400, now=NOW + 400)
    assert len(memory) == 1


def test_the_nonce_memory_is_bounded() -> None:
    memory = NonceMemory(window=300, size=3)
    for n in range(10):
        assert memory.first_time(str(n), stamp=int(NOW), now=NOW)
    assert len(memory) == 3
    assert not memory.first_time("9", stamp=int(NOW), now=NOW)


def test_the_module_imports_no_io_framework() -> None:
    probe = (
        "import json, sys, stagecoach.engine.domain.wechat_callback; "
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    )
    loaded = set(
        json.loads(
            subprocess.run(
                [sys.executable, "-c", probe], capture_output=True, text=True, check=True
            ).stdout
        )
    )
    assert not loaded & {"fastapi", "sqlalchemy", "sqlmodel", "httpx", "temporalio", "psycopg"}
