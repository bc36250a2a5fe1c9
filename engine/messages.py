"""Message types that cross the Temporal boundary: workflow, signal, update and activity
inputs and results.

They live in ``engine`` so the API and the CLI can talk to workflows without importing
workflow code. One dataclass in, one out. Fields are only ever added, with defaults, so
histories recorded by older code still decode.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SystemCheckInput:
    """Ask a worker to prove it runs workflows and activities and reaches the database."""

    requested_by: str = "doctor"


@dataclass
class SystemCheckResult:
    database_ok: bool
    database_detail: str = ""
    task_queue: str = ""
