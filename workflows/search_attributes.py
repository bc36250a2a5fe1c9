"""Typed SDK keys for the contact workflow's search attributes (names from engine)."""

from __future__ import annotations

from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

from engine.search_attributes import SEARCH_ATTRIBUTES
from engine.search_keys import KEYS

STAGE = KEYS["Stage"]
SCORE = KEYS["Score"]
GRADE = KEYS["Grade"]
JOURNEYS = KEYS["Journeys"]
LOCALE = KEYS["Locale"]

ALL_KEYS: tuple[SearchAttributeKey[Any], ...] = tuple(KEYS.values())
__all__ = ["ALL_KEYS", "GRADE", "JOURNEYS", "KEYS", "LOCALE", "SCORE", "STAGE"]


async def register_search_attributes(client: Client, namespace: str) -> None:
    """Register the contact search attributes on a server that lacks them.

    The dev server takes them as flags at start; the Java time-skipping server and a
    fresh self-hosted cluster need this call (or ``temporal operator search-attribute
    create``).
    """
    types = {
        "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
        "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
    }
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=namespace,
            search_attributes={name: types[kind] for name, kind in SEARCH_ATTRIBUTES.items()},
        )
    )
