"""Definitions parsed once per process (``stagecoach.engine.domain.build_cache``)."""

from __future__ import annotations

from typing import Any

import pytest

from stagecoach.engine.domain.build_cache import Parsed
from stagecoach.engine.domain.pipeline import Pipeline, parsed_pipeline
from stagecoach.workflows.pipeline import PIPELINES


class Counted:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, data: Any) -> dict[str, Any]:
        self.calls += 1
        if data.get("bad"):
            raise ValueError("bad definition")
        return {"built": dict(data)}


def test_equal_data_is_built_once_and_shared() -> None:
    parse = Counted()
    parsed = Parsed(parse)
    first = parsed({"name": "a", "stages": [1, 2]})
    # Equal content, another object, another key order: the same build.
    assert parsed({"stages": [1, 2], "name": "a"}) is first
    assert parse.calls == 1
    assert parsed({"name": "a", "stages": [1, 3]}) is not first
    assert parse.calls == 2


def test_a_failing_parse_is_not_remembered() -> None:
    parse = Counted()
    parsed = Parsed(parse)
    for _ in range(2):
        with pytest.raises(ValueError, match="bad definition"):
            parsed({"bad": True})
    assert parse.calls == 2


def test_data_json_cannot_hold_is_parsed_every_time() -> None:
    parse = Counted()
    parsed = Parsed(parse)
    parsed({"at": {1, 2}})
    parsed({"at": {1, 2}})
    assert parse.calls == 2


def test_only_the_most_recent_are_kept() -> None:
    parse = Counted()
    parsed = Parsed(parse, size=2)
    for name in ("a", "b", "c", "a"):
        parsed({"name": name})
    assert parse.calls == 4  # "a" was dropped when "c" came


def test_bundled_pipelines_build_as_from_dict_does() -> None:
    for pipeline in PIPELINES.values():
        data = pipeline.to_dict()
        assert parsed_pipeline(data) == Pipeline.from_dict(data)
        assert parsed_pipeline(data) is parsed_pipeline(pipeline.to_dict())
