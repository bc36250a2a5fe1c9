"""The file sink: a connector that writes each message to a directory instead of sending it.

Used until the real connectors land, by rehearsals, and by tests that read what was
"sent". It behaves like a provider that honours idempotency keys: one file per key,
written atomically, and a second send with the same key reports a duplicate and writes
nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from stagecoach.engine.protocol.connector import OutgoingMessage, SendResult


class FileSinkConnector:
    """Writes ``<directory>/<contact_id>/<key-hash>.json`` per message."""

    def __init__(self, directory: Path, *, channel: str) -> None:
        self.directory = directory
        self.channel = channel

    def path_for(self, message: OutgoingMessage) -> Path:
        digest = hashlib.sha256(message.idempotency_key.encode()).hexdigest()[:32]
        safe_contact = "".join(c if c.isalnum() or c in "-_." else "_" for c in message.contact_id)
        return self.directory / safe_contact / f"{digest}.json"

    async def send(self, message: OutgoingMessage) -> SendResult:
        path = self.path_for(message)
        provider_id = f"sink-{path.stem}"
        if path.exists():
            return SendResult(provider_message_id=provider_id, duplicate=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "channel": message.channel,
            "to": message.to,
            "contact_id": message.contact_id,
            "idempotency_key": message.idempotency_key,
            "message": dict(message.rendered),
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(body, handle, ensure_ascii=False, indent=2, default=str)
        # link() fails if another attempt won the race: exactly one file per key.
        try:
            os.link(tmp, path)
        except FileExistsError:
            return SendResult(provider_message_id=provider_id, duplicate=True)
        finally:
            os.unlink(tmp)
        return SendResult(provider_message_id=provider_id, status="accepted")
