"""Journey specs built once per process for the same data (``parsed_spec``)."""

from __future__ import annotations

import pytest

from stagecoach.engine.domain.journeys import (
    Journey,
    JourneySpec,
    SpecFormatError,
    ValidationContext,
    compile_journey,
    parsed_spec,
    send,
    stage_entered,
    wait,
)


def test_a_spec_is_built_as_from_dict_builds_it_and_shared(ctx: ValidationContext) -> None:
    journey = Journey("shared", entry=stage_entered("suspect"), steps=[send("wp"), wait(days=2)])
    raw = compile_journey(journey, ctx).to_dict()
    assert parsed_spec(raw) == JourneySpec.from_dict(raw)
    assert parsed_spec(dict(raw)) is parsed_spec(raw)


def test_a_tampered_spec_is_refused_every_time(ctx: ValidationContext) -> None:
    journey = Journey("tampered", entry=stage_entered("suspect"), steps=[send("wp")])
    raw = {**compile_journey(journey, ctx).to_dict(), "description": "changed after hashing"}
    for _ in range(2):
        with pytest.raises(SpecFormatError, match="does not match its content"):
            parsed_spec(raw)
