import io
import json
import logging

import structlog

from stagecoach.engine.logging import configure_logging, mask_text, mask_value


def test_email_keeps_first_letter_and_domain() -> None:
    assert mask_value("alice@example.com") == "a***@example.com"


def test_phone_keeps_country_code_and_last_four() -> None:
    assert mask_value("+8613800138000") == "+86****8000"


def test_openid_keeps_two_characters() -> None:
    assert mask_value("oAbCdEfGhIjK123") == "oA***"


def test_free_text_masks_embedded_emails() -> None:
    assert mask_text("bounce from bob.smith@corp.cn today") == "bounce from b***@corp.cn today"


def test_json_log_lines_mask_personal_data_by_key_and_by_shape() -> None:
    stream = io.StringIO()  # not a TTY: JSON lines
    configure_logging(level="info", fmt="auto", stream=stream)
    structlog.get_logger("t").info(
        "delivered", contact_id="c-1", email="alice@example.com", openid="oXyZ1234567"
    )
    logging.getLogger("foreign").warning("retry for carol@example.org")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["email"] == "a***@example.com"
    assert lines[0]["openid"] == "oX***"
    assert lines[0]["contact_id"] == "c-1"
    assert lines[1]["event"] == "retry for c***@example.org"
    assert "alice@example.com" not in stream.getvalue()


def test_mainland_mobile_in_text_is_masked() -> None:
    assert mask_text("call 13800138000 now") == "call 138****8000 now"


def test_numeric_identifiers_in_text_are_not_mistaken_for_phones() -> None:
    assert mask_text("workflow contact-12345678901 run 20261122093000") == (
        "workflow contact-12345678901 run 20261122093000"
    )
