"""The contact search attributes (``stagecoach.engine.protocol.search_attributes``) in the
Temporal SDK's terms: one set of typed keys, used by the workflow (upserts), the gateway and the
outbox forwarder (initial values at start), and the call that registers them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from stagecoach.engine.protocol.search_attributes import SEARCH_ATTRIBUTES

_KINDS: dict[str, tuple[Callable[[str], SearchAttributeKey[Any]], IndexedValueType.ValueType]] = {
    "Keyword": (SearchAttributeKey.for_keyword, IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD),
    "KeywordList": (
        SearchAttributeKey.for_keyword_list,
        IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
    ),
    "Double": (SearchAttributeKey.for_float, IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE),
}

KEYS: dict[str, SearchAttributeKey[Any]] = {
    name: _KINDS[kind][0](name) for name, kind in SEARCH_ATTRIBUTES.items()
}
"""Name -> typed key: ``KEYS[STAGE]``."""
ALL_KEYS: tuple[SearchAttributeKey[Any], ...] = tuple(KEYS.values())


def typed(values: Mapping[str, Any]) -> TypedSearchAttributes:
    """``{"Stage": "suspect", ...}`` as the SDK's typed collection (unknown names refused)."""
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise KeyError(f"not a contact search attribute: {', '.join(unknown)}")
    return TypedSearchAttributes([SearchAttributePair(KEYS[k], v) for k, v in values.items()])


async def register_search_attributes(client: Client, namespace: str) -> None:
    """Register the contact search attributes on a server that lacks them.

    The dev server takes them as flags at start; the Java time-skipping server and a
    fresh self-hosted cluster need this call (or ``temporal operator search-attribute
    create``).
    """
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=namespace,
            search_attributes={name: _KINDS[kind][1] for name, kind in SEARCH_ATTRIBUTES.items()},
        )
    )
