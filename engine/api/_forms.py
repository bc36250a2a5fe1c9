"""Reading HTML form bodies (the unsubscribe, preference and referral pages post them)."""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qs

FORM_LIMIT = 16 * 1024
"""The largest form body read; a page's form is a few hundred bytes."""


def parse_form(content_type: str, body: bytes) -> dict[str, list[str]] | None:
    """An HTML form body (urlencoded or multipart, as RFC 8058 allows); None if unreadable."""
    kind = content_type.partition(";")[0].strip().lower()
    try:
        if kind in ("", "application/x-www-form-urlencoded"):
            return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
        if kind == "multipart/form-data":
            header = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
            message = BytesParser(policy=HTTP).parsebytes(header + body)
            if not message.is_multipart():
                return None
            fields: dict[str, list[str]] = {}
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if not isinstance(name, str):
                    continue
                raw = part.get_payload(decode=True)
                value = raw.decode("utf-8") if isinstance(raw, bytes) else ""
                fields.setdefault(name, []).append(value)
            return fields
    except (UnicodeError, ValueError):
        return None
    return None
