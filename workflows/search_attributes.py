"""Typed SDK keys for the contact workflow's search attributes (names from engine)."""

from __future__ import annotations

from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

from engine.search_attributes import SEARCH_ATTRIBUTES

STAGE = SearchAttributeKey.for_keyword("Stage")
SCORE = SearchAttributeKey.for_float("Score")
GRADE = SearchAttributeKey.for_keyword("Grade")
JOURNEYS = SearchAttributeKey.for_keyword_list("Journeys")
LOCALE = SearchAttributeKey.for_keyword("Locale")

ALL_KEYS: tuple[SearchAttributeKey[Any], ...] = (STAGE, SCORE, GRADE, JOURNEYS, LOCALE)

assert {k.name for k in ALL_KEYS} == set(SEARCH_ATTRIBUTES), "keep keys and engine in step"


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
