"""Typed SDK keys for the contact workflow's search attributes (names from engine)."""

from __future__ import annotations

from typing import Any

from temporalio.common import SearchAttributeKey

from engine.search_attributes import SEARCH_ATTRIBUTES

STAGE = SearchAttributeKey.for_keyword("Stage")
SCORE = SearchAttributeKey.for_float("Score")
GRADE = SearchAttributeKey.for_keyword("Grade")
JOURNEYS = SearchAttributeKey.for_keyword_list("Journeys")
LOCALE = SearchAttributeKey.for_keyword("Locale")

ALL_KEYS: tuple[SearchAttributeKey[Any], ...] = (STAGE, SCORE, GRADE, JOURNEYS, LOCALE)

assert {k.name for k in ALL_KEYS} == set(SEARCH_ATTRIBUTES), "keep keys and engine in step"
