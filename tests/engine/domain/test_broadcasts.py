"""The broadcast spec, its validation, send times, A/B arms and the winner's test."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from stagecoach.engine.domain.broadcasts import (
    ABTest,
    ArmResult,
    Broadcast,
    BroadcastError,
    Catalogues,
    Variant,
    arm_of,
    broadcast_problems,
    choose_winner,
    send_time,
)

AB = ABTest(variants=(Variant("a"), Variant("b", subject="Other")), default="a", sample=0.1)
CATALOGUES = Catalogues(
    segments=frozenset({"readers"}),
    content={"news": frozenset({("en", "email"), ("zh-CN", "email"), ("en", "wechat")})},
    events=frozenset({"order.paid"}),
)
NOW = datetime(2027, 1, 4, 12, tzinfo=UTC)


def test_the_spec_round_trips_and_its_version_is_its_content() -> None:
    b = Broadcast(
        name="jan-news",
        segment="readers",
        content="news",
        send_at=datetime(2027, 1, 5, 9, tzinfo=ZoneInfo("Asia/Shanghai")),
        ab=AB,
        conversion="order.paid",
    )
    again = Broadcast.from_dict(b.to_dict())
    assert again == b
    assert again.version == b.version
    assert Broadcast(name="jan-news", segment="readers", content="other").version != b.version


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Jan News"}, "is not valid: use lowercase"),
        ({"channel": "fax"}, "channel 'fax' is not one of"),
        ({"send_at": datetime(2027, 1, 5, 9)}, "has no time zone"),
        ({"ab": ABTest(variants=(Variant("a"),), default="a")}, "two or more arms"),
        ({"ab": ABTest(variants=AB.variants, default="c")}, "ab.default 'c' is not an arm"),
        ({"ab": ABTest(variants=AB.variants, default="a", sample=0.5)}, "must leave some"),
        ({"ab": ABTest(variants=AB.variants, default="a", metric="likes")}, "is not opened"),
        ({"ab": AB, "local_time": time(9)}, "needs one send time"),
        (
            {
                "ab": ABTest(variants=AB.variants, default="a", metric="event:order.paid"),
                "channel": "wechat_mass",
            },
            "mass send goes to the whole audience",
        ),
    ],
)
def test_a_malformed_broadcast_names_the_field_and_the_fix(
    kwargs: dict[str, Any], message: str
) -> None:
    fields = {"name": "jan-news", "segment": "readers", "content": "news", **kwargs}
    with pytest.raises(BroadcastError, match=message):
        Broadcast(**fields)


def test_launch_problems_name_the_segment_the_content_the_locale_and_the_time() -> None:
    assert (
        broadcast_problems(
            Broadcast(name="ok", segment="readers", content="news"), CATALOGUES, locales=["en"]
        )
        == []
    )
    problems = broadcast_problems(
        Broadcast(
            name="bad",
            segment="nobody",
            content="news",
            channel="wechat",
            send_at=NOW - timedelta(minutes=1),
        ),
        CATALOGUES,
        locales=["en", "zh-CN"],
        now=NOW,
    )
    assert len(problems) == 3
    assert "segment 'nobody' is unknown; use one of: readers" in problems[0]
    assert "no wechat variant for zh-CN" in problems[1]
    assert "is in the past" in problems[2]
    unknown = broadcast_problems(
        Broadcast(name="x", segment="readers", content="gone", conversion="signed.up"),
        CATALOGUES,
    )
    assert any("content 'gone' is not in the content library" in p for p in unknown)
    assert any("conversion event 'signed.up' is not in the event catalog" in p for p in unknown)


def test_local_time_is_each_zones_wall_clock_on_the_written_day() -> None:
    b = Broadcast(
        name="morning",
        segment="readers",
        content="news",
        send_at=datetime(2027, 1, 5, 0, 30, tzinfo=UTC),
        local_time=time(9),
    )
    launched = datetime(2027, 1, 5, 0, 30, tzinfo=UTC)
    assert send_time(b, zone="Europe/London", launched=launched) == datetime(
        2027, 1, 5, 9, tzinfo=UTC
    )
    assert send_time(b, zone="America/Los_Angeles", launched=launched) == datetime(
        2027, 1, 5, 17, tzinfo=UTC
    )
    # 09:00 in Shanghai was 01:00 UTC: not yet passed at 00:30.
    assert send_time(b, zone="Asia/Shanghai", launched=launched) == datetime(
        2027, 1, 5, 1, tzinfo=UTC
    )
    # 09:00 in Tokyo was 00:00 UTC: passed, so sent at launch, or skipped if declared.
    assert send_time(b, zone="Asia/Tokyo", launched=launched) == launched
    skip = Broadcast.from_dict({**b.to_dict(), "when_passed": "skip"})
    assert send_time(skip, zone="Asia/Tokyo", launched=launched) is None
    # An unknown zone is UTC, as for quiet hours.
    assert send_time(b, zone="Mars/Olympus", launched=launched) == datetime(
        2027, 1, 5, 9, tzinfo=UTC
    )
    now = Broadcast(name="now", segment="readers", content="news")
    assert send_time(now, zone="Asia/Tokyo", launched=launched) == launched


def test_arms_are_stable_and_take_their_sample() -> None:
    b = Broadcast(name="split", segment="readers", content="news", ab=AB)
    arms = [arm_of(b, f"c{i}") for i in range(10_000)]
    assert arms == [arm_of(b, f"c{i}") for i in range(10_000)]
    assert 900 < arms.count("a") < 1100
    assert 900 < arms.count("b") < 1100
    assert arms.count(None) == 10_000 - arms.count("a") - arms.count("b")
    assert arm_of(Broadcast(name="plain", segment="readers", content="news"), "c1") is None


def test_the_winner_needs_a_significant_difference_else_the_default_goes() -> None:
    clear = choose_winner(AB, [ArmResult("a", 1000, 50), ArmResult("b", 1000, 120)])
    assert clear.significant
    assert clear.winner == "b"
    assert clear.p_value is not None
    assert clear.p_value < 0.001
    close = choose_winner(AB, [ArmResult("a", 100, 10), ArmResult("b", 100, 12)])
    assert not close.significant
    assert close.winner == "a"
    assert close.p_value is not None
    assert close.p_value > 0.05
    assert "default sent" in close.reason
    nothing = choose_winner(AB, [ArmResult("a", 100, 0), ArmResult("b", 100, 0)])
    assert nothing.p_value is None
    assert nothing.winner == "a"
    empty = choose_winner(AB, [ArmResult("a", 0, 0), ArmResult("b", 10, 5)])
    assert empty.winner == "a"
    assert empty.p_value is None


def test_the_two_arm_test_is_the_two_proportion_z_test() -> None:
    # 60/500 vs 85/500: pooled p = 0.145, z = 0.05 / sqrt(0.145 * 0.855 * 2/500) = 2.2453,
    # two-sided p = 2 * (1 - Phi(2.2453)) = 0.02475 (by hand from the normal table).
    decision = choose_winner(AB, [ArmResult("a", 500, 60), ArmResult("b", 500, 85)])
    assert decision.p_value == pytest.approx(0.02475, abs=5e-5)


def test_a_projects_version_changes_with_its_broadcasts_and_not_without_them() -> None:
    from stagecoach.engine.domain.definitions import Definitions, project_version
    from stagecoach.engine.domain.segments import Segment
    from stagecoach.workflows.events import CATALOG as events
    from stagecoach.workflows.pipeline import DEFAULT

    readers = Segment("readers", manual=True)
    plain = Definitions(pipeline=DEFAULT, events=events, segments=[readers])
    one = Definitions(
        pipeline=DEFAULT,
        events=events,
        segments=[readers],
        broadcasts=[Broadcast(name="jan", segment="readers", content="news")],
    )
    other = Definitions(
        pipeline=DEFAULT,
        events=events,
        segments=[readers],
        broadcasts=[Broadcast(name="jan", segment="readers", content="other")],
    )
    versions = {project_version(d, {}) for d in (plain, one, other)}
    assert len(versions) == 3
    assert one.problems() == []
    unknown = Definitions(
        pipeline=DEFAULT,
        events=events,
        broadcasts=[Broadcast(name="feb", segment="nobody", content="news")],
    )
    [problem] = unknown.problems()
    assert (problem.journey, problem.step) == ("(broadcasts)", "feb")
    assert "segment 'nobody' is unknown" in problem.message
