"""Testing a marketing team's journeys from its own repository.

A test starts a journey for a test contact, sends it events at offsets (day 1, day 2...),
and asserts what it was sent, on which channel and when, how its stage moved and whom it
was handed to. The journey runs as in production, the contact workflow and its activities
with the team's ``Definitions`` and content, on the Temporal test server, whose clock jumps
over waits: a 30-day journey runs in seconds. Nothing leaves the machine: every channel
goes to a file sink, and the database is a throwaway SQLite file::

    from datetime import timedelta

    from stagecoach.testing import JourneyTest

    from acme_marketing.definitions import defs


    async def test_a_trial_on_day_one_ends_the_welcome() -> None:
        async with JourneyTest(defs) as t:
            run = await t.start("welcome", contact={"stage": "prospect", "locale": "en"})
            await run.event("trial.started", at=timedelta(days=1))
            await run.until(timedelta(days=30))
        assert run.deliveries == [
            (timedelta(0), "wp-digital-transformation", "email", "whitepaper")
        ], run.story()
        assert run.stage_changes == [(timedelta(days=1), "prospect", "lead")]

The test server is ``$STAGECOACH_TEST_SERVER_PATH`` when set; otherwise the Temporal SDK
downloads it (once, into the temporary folder). ``docs/authoring/projects.md`` ("Testing
your journeys") has the whole story.
"""

from __future__ import annotations

from stagecoach.workflows.testing import (
    TEST_SERVER_ENV,
    Delivery,
    HandOff,
    JourneyEnd,
    JourneyRun,
    JourneyTest,
    JourneyTestError,
    Message,
    StageChange,
)

__all__ = [
    "TEST_SERVER_ENV",
    "Delivery",
    "HandOff",
    "JourneyEnd",
    "JourneyRun",
    "JourneyTest",
    "JourneyTestError",
    "Message",
    "StageChange",
]
