"""Structured logging, configured once per entry point, with personal data masked.

Console rendering on a TTY, JSON lines elsewhere. The standard library's loggers
(uvicorn, temporalio, alembic) go through the same processors, so every line a process
writes has the same shape and the same masking.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from stagecoach.engine.settings import LogFormat

PERSONAL_KEYS: frozenset[str] = frozenset(
    {"email", "phone", "mobile", "openid", "unionid", "to", "recipient", "address", "name"}
)
_EMAIL = re.compile(r"(?<![\w.+-])([\w.+-])[\w.+-]*@([\w-]+(?:\.[\w-]+)+)")
_PHONE = re.compile(r"(?<![\w+])\+?\d[\d \-]{7,}\d(?!\w)")
# In free text only unmistakable numbers: international (+...) and mainland mobiles.
# Plain digit runs stay, so ids such as contact-12345678901 survive in log lines.
_PHONE_IN_TEXT = re.compile(r"(?<![\w+-])(?:\+\d[\d \-]{7,}\d|1[3-9]\d{9})(?![\w-])")


def _mask_phone(match: re.Match[str] | str) -> str:
    # The country code's length is unknowable without a separator: keep three leading
    # characters (+86, 138) and the last four digits, the usual Chinese masking.
    raw = match if isinstance(match, str) else match.group(0)
    digits = raw.replace(" ", "").replace("-", "")
    return f"{digits[:3]}****{digits[-4:]}"


def mask_value(value: str) -> str:
    """Mask a personal value but keep enough to recognise it in an incident.

    Emails keep their first character and domain, phone numbers their first three and
    last four characters, anything else (an openid, a name) its first two characters.
    """
    if "@" in value and _EMAIL.search(value):
        return _EMAIL.sub(r"\1***@\2", value)
    if _PHONE.fullmatch(value.strip()):
        return _mask_phone(value.strip())
    return value[:2] + "***" if len(value) > 2 else "***"


def mask_text(text: str) -> str:
    """Mask emails and phone numbers wherever they appear in free text."""
    return _PHONE_IN_TEXT.sub(_mask_phone, _EMAIL.sub(r"\1***@\2", text))


def _mask(value: Any, *, personal: bool) -> Any:
    if isinstance(value, str):
        return mask_value(value) if personal else mask_text(value)
    if isinstance(value, Mapping):
        return {k: _mask(v, personal=personal or k in PERSONAL_KEYS) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v, personal=personal) for v in value]
    return value


def mask_personal_data(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask personal fields by name, and emails/phones anywhere."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _mask(value, personal=key in PERSONAL_KEYS)
    return event_dict


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        mask_personal_data,
    ]


def configure_logging(
    *, level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None
) -> None:
    """Configure structlog and the standard library's logging for this process."""
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    shared = _shared_processors()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-request and per-migration chatter drowns the lines ops need; keep warnings.
    for noisy in ("uvicorn.access", "alembic", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
