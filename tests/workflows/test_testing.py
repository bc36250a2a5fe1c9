"""``stagecoach.testing`` on the Java time-skipping server: what a team's test sees.

Each test passes its own ``Definitions`` (the bundled pipeline and events, journeys of
its own) and the session's time-skipping server, and checks the offsets, channels,
stage changes, hand-offs and ends the helper reports against what the journey says.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import time, timedelta
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from stagecoach import (
    Definitions,
    Journey,
    event,
    goal,
    hand_off,
    send,
    stage_entered,
    wait,
)
from stagecoach.engine.domain.journeys import JourneyValidationError
from stagecoach.engine.services.project import ProjectError, load_project
from stagecoach.engine.settings import Settings
from stagecoach.testing import JourneyTest, JourneyTestError
from stagecoach.workflows.definitions import BUNDLED

pytestmark = pytest.mark.time_skipping

ROOT = Path(__file__).resolve().parents[2]
CONTENT = ROOT / "content"
OPENID = "o-test-openid-0001"
A_GRADE_CTO = {
    "locale": "en",
    "wechat_openid": OPENID,
    "industry": "manufacturing",
    "company_size": 500,
    "role": "cto",
    "region": "east_china",
}

TOUR = Journey(
    "test_tour",
    entry=stage_entered("lead"),
    steps=[
        send("wp-digital-transformation", channel="email", id="whitepaper"),
        wait(timedelta(days=2), id="pause"),
        send("video-product-tour", channel="wechat", id="tour"),
        wait(timedelta(days=1, hours=6), id="pause-2"),
        hand_off(reason="sales_followup", id="to-sales"),
    ],
)

TRIAL = Journey(
    "test_trial",
    entry=stage_entered("lead"),
    goal=event("trial.started"),
    steps=[
        send("wp-digital-transformation", id="whitepaper"),
        wait(timedelta(days=3), id="pause-before-case-study"),
        send("case-study-manufacturing", id="case-study"),
        wait(timedelta(days=4), id="pause-before-trial"),
        send("trial-invitation", id="trial-invitation"),
        goal(id="trial-started"),
    ],
)

TWO_AT_ONCE = Journey(
    "test_two_at_once",
    entry=stage_entered("lead"),
    steps=[
        send("wp-digital-transformation", id="first"),
        wait(timedelta(hours=1), id="pause"),
        send("case-study-manufacturing", id="second"),
    ],
)


def _defs(*journeys: Journey) -> Definitions:
    return replace(BUNDLED["default"], journeys=list(journeys), content=str(CONTENT))


async def test_sends_land_at_their_offsets_on_their_channels_with_stages_and_hand_offs(
    env: WorkflowEnvironment,
) -> None:
    async with JourneyTest(_defs(TOUR), env=env) as t:
        run = await t.start("test_tour", contact={"stage": "suspect", **A_GRADE_CTO})
        assert run.deliveries == [
            (timedelta(0), "wp-digital-transformation", "email", "whitepaper")
        ]
        # Following the Official Account on day 1 gives WeChat consent, and the bundled
        # pipeline's rule makes a suspect who does it a prospect.
        await run.event("wechat.subscribed", at=timedelta(days=1))
        await run.until(timedelta(days=10))

    assert run.deliveries == [
        (timedelta(0), "wp-digital-transformation", "email", "whitepaper"),
        (timedelta(days=2), "video-product-tour", "wechat", "tour"),
    ], run.story()
    assert run.stage_changes == [(timedelta(days=1), "suspect", "prospect")]
    # Graded A by the bundled grading: routed to the key-accounts team.
    [handoff] = run.handoffs
    assert handoff[:3] == (timedelta(days=3, hours=6), "sales_followup", "to-sales")
    assert handoff.owner == "key-accounts"
    assert [(e.at, e.journey, e.status) for e in run.ended] == [
        (timedelta(days=3, hours=6), "test_tour", "completed")
    ]
    email, wechat = run.messages
    assert (email.journey, email.to) == ("test_tour", f"{run.contact_id}@example.com")
    assert email.rendered["subject"]  # what the file sink received, rendered in English
    assert (wechat.to, wechat.channel) == (OPENID, "wechat")
    assert run.stage == "prospect"
    story = run.story()
    assert "day 1 00:00  event    wechat.subscribed" in story
    assert "day 3 06:00  handoff  to sales (sales_followup) [test_tour/to-sales]" in story


async def test_a_goal_event_on_day_one_ends_the_journey_and_a_script_sends_events_in_order(
    env: WorkflowEnvironment,
) -> None:
    async with JourneyTest(_defs(TRIAL), env=env) as t:
        full = await t.start("test_trial", contact={"stage": "lead"})
        await full.until(timedelta(days=30))
        converted = await t.start("test_trial", contact={"stage": "lead", "id": "keen"})
        await converted.events(
            [
                (timedelta(hours=2), "page.viewed", {"category": "pricing"}),
                (timedelta(days=1), "trial.started", {"plan": "pro"}),
            ]
        )
        await converted.until(timedelta(days=30))

    assert full.deliveries == [
        (timedelta(0), "wp-digital-transformation", "email", "whitepaper"),
        (timedelta(days=3), "case-study-manufacturing", "email", "case-study"),
        (timedelta(days=7), "trial-invitation", "email", "trial-invitation"),
    ]
    assert [(e.at, e.reason) for e in full.ended] == [(timedelta(days=7), "goal")]
    assert converted.contact_id == "keen"
    assert converted.deliveries == [
        (timedelta(0), "wp-digital-transformation", "email", "whitepaper")
    ]
    assert [(e.at, e.journey, e.reason) for e in converted.ended] == [
        (timedelta(days=1), "test_trial", "goal")
    ]


async def test_quiet_hours_and_the_frequency_cap_are_off_unless_asked_for(
    env: WorkflowEnvironment,
) -> None:
    shanghai = {"stage": "lead", "timezone": "Asia/Shanghai", "locale": "zh-CN"}
    async with JourneyTest(_defs(TWO_AT_ONCE), env=env) as t:
        late = await t.start("test_two_at_once", contact=shanghai, time_of_day=time(22, 0))
        await late.until(timedelta(days=2))
    assert [d.at for d in late.deliveries] == [timedelta(0), timedelta(hours=1)]

    async with JourneyTest(_defs(TWO_AT_ONCE), env=env, quiet_hours=(time(21), time(8))) as t:
        late = await t.start("test_two_at_once", contact=shanghai, time_of_day=time(22, 0))
        await late.until(timedelta(days=2))
    # 22:00 in Shanghai is quiet until 08:00: the first waits for the morning, and the
    # second goes an hour after it.
    assert [d.at for d in late.deliveries] == [timedelta(hours=10), timedelta(hours=11)]

    async with JourneyTest(_defs(TWO_AT_ONCE), env=env, frequency_cap=1) as t:
        capped = await t.start("test_two_at_once", contact={"stage": "lead"})
        await capped.until(timedelta(days=3))
    # One message a day: the second waits for the first's day to pass.
    assert [d.at for d in capped.deliveries] == [timedelta(0), timedelta(days=1)]


async def test_each_kind_of_bad_input_is_refused_with_what_to_write_instead(
    env: WorkflowEnvironment,
) -> None:
    defs = _defs(TRIAL)
    with pytest.raises(JourneyTestError, match="pass the project's Definitions object"):
        JourneyTest(BUNDLED, env=env)  # type: ignore[arg-type]
    with pytest.raises(JourneyTestError, match="frequency_cap=0"):
        JourneyTest(defs, env=env, frequency_cap=0)
    with pytest.raises(JourneyTestError, match=r"quiet_hours=\.\.\.\) is \(start, end\)"):
        JourneyTest(defs, env=env, quiet_hours=("21:00", "08:00"))  # type: ignore[arg-type]
    broken = Journey("broken", entry=stage_entered("lead"), steps=[send("no-such-item")])
    with pytest.raises(JourneyValidationError, match="content 'no-such-item' does not exist"):
        async with JourneyTest(_defs(TRIAL, broken), env=env):
            pass  # validated and published as a worker would: refused before any run
    outside = JourneyTest(defs, env=env)
    with pytest.raises(JourneyTestError, match="inside 'async with JourneyTest"):
        await outside.start("test_trial")

    async with JourneyTest(defs, env=env) as t:
        with pytest.raises(JourneyTestError, match=r"no journey 'welcome'.*test_trial"):
            await t.start("welcome")
        with pytest.raises(
            JourneyTestError,
            match="stage 'Lead' is not in pipeline 'default'; use one of suspect, ",
        ):
            await t.start("test_trial", contact={"stage": "Lead"})
        with pytest.raises(JourneyTestError, match="'Asia/Shangai' is not a time zone"):
            await t.start("test_trial", contact={"timezone": "Asia/Shangai"})
        run = await t.start("test_trial", contact={"stage": "lead", "id": "twice"})
        with pytest.raises(JourneyTestError, match="already started in this test"):
            await t.start("test_trial", contact={"id": "twice"})
        with pytest.raises(JourneyTestError, match=r"did you mean 'trial\.started'"):
            await run.event("trail.started")
        await run.until(timedelta(days=2))
        with pytest.raises(JourneyTestError, match=r"already at day 2 .*cannot go back to day 1"):
            await run.event("trial.started", at=timedelta(days=1))
        with pytest.raises(JourneyTestError, match=r"properties=\.\.\.\): 'plan' is a object"):
            await run.event("trial.started", properties={"plan": object()})
        ref = t._require_settings().definitions
    # The definitions were the test's alone: gone with it.
    with pytest.raises(ProjectError, match="no longer registered"):
        load_project(Settings(definitions=ref))


async def test_a_contact_with_no_address_waits_until_an_event_brings_one(
    env: WorkflowEnvironment,
) -> None:
    async with JourneyTest(_defs(TRIAL), env=env) as t:
        run = await t.start("test_trial", contact={"stage": "lead", "email": None})
        await run.until(timedelta(days=1))
        assert run.deliveries == []
        assert "waiting for a channel [test_trial/whitepaper], at most for 30d" in run.story()
        await run.event(
            "form.submitted", at=timedelta(days=2), traits={"email": "late@example.com"}
        )
    assert run.deliveries == [
        (timedelta(days=2), "wp-digital-transformation", "email", "whitepaper")
    ]
    assert run.messages[0].to == "late@example.com"


async def test_a_test_server_path_that_is_not_one_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STAGECOACH_TEST_SERVER_PATH", str(tmp_path / "no-such-server"))
    with pytest.raises(JourneyTestError, match=r"STAGECOACH_TEST_SERVER_PATH=.* is not an exec"):
        async with JourneyTest(_defs(TRIAL)):
            pass
