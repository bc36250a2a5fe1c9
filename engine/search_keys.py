"""Typed Temporal SDK keys for the contact search attributes named in
``engine.search_attributes``: one set, used by the workflow (upserts) and by the gateway
(initial values at start)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from engine.search_attributes import SEARCH_ATTRIBUTES

_FACTORIES: dict[str, Callable[[str], SearchAttributeKey[Any]]] = {
    "Keyword": SearchAttributeKey.for_keyword,
    "KeywordList": SearchAttributeKey.for_keyword_list,
    "Double": SearchAttributeKey.for_float,
}

KEYS: dict[str, SearchAttributeKey[Any]] = {
    name: _FACTORIES[kind](name) for name, kind in SEARCH_ATTRIBUTES.items()
}


def typed(values: Mapping[str, Any]) -> TypedSearchAttributes:
    """``{"Stage": "suspect", ...}`` as the SDK's typed collection (unknown names refused)."""
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise KeyError(f"not a contact search attribute: {', '.join(unknown)}")
    return TypedSearchAttributes([SearchAttributePair(KEYS[k], v) for k, v in values.items()])
