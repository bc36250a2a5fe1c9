"""Content hashes: the version of any JSON-able definition (pipelines, journeys, content).

One canonical form serves every definition, so two equal definitions always share a
version, whatever module built them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def _canonical(value: Any) -> Any:
    # 60 and 60.0 are the same threshold; a JSON round trip (or float() in a from_dict)
    # must not change the version, so integral floats are written as integers.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def canonical_json(data: Mapping[str, Any]) -> str:
    """Canonical JSON: sorted keys, no spaces, UTF-8 text, integral floats as integers."""
    return json.dumps(_canonical(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(data: Mapping[str, Any]) -> str:
    """sha256 (hex) of :func:`canonical_json`; the version of any JSON-able definition."""
    return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()
