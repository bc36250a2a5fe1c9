from __future__ import annotations

from datetime import UTC, datetime, time

from stagecoach.engine.domain.journeys import next_time_of_day


def test_later_today_in_the_contact_zone():
    now = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)  # 08:00 in Shanghai
    assert next_time_of_day(now, time(9), "Asia/Shanghai") == datetime(2026, 1, 5, 1, tzinfo=UTC)


def test_already_past_today_means_tomorrow():
    now = datetime(2026, 1, 5, 1, 0, tzinfo=UTC)  # exactly 09:00 in Shanghai
    assert next_time_of_day(now, time(9), "Asia/Shanghai") == datetime(2026, 1, 6, 1, tzinfo=UTC)


def test_across_spring_forward_keeps_the_local_wall_time():
    # New York moves from EST (-5) to EDT (-4) on 2026-03-08.
    now = datetime(2026, 3, 7, 15, 0, tzinfo=UTC)  # 10:00 EST on the 7th
    assert next_time_of_day(now, time(9), "America/New_York") == datetime(
        2026, 3, 8, 13, 0, tzinfo=UTC
    )


def test_time_inside_the_spring_forward_gap_moves_forward():
    now = datetime(2026, 3, 8, 5, 0, tzinfo=UTC)  # 00:00 EST on the 8th
    # 02:30 does not exist that night; it becomes 03:30 EDT = 07:30 UTC.
    assert next_time_of_day(now, time(2, 30), "America/New_York") == datetime(
        2026, 3, 8, 7, 30, tzinfo=UTC
    )


def test_ambiguous_fall_back_time_takes_the_first_occurrence():
    now = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # 00:00 EDT on 1 November
    # 01:30 happens twice; the first is EDT (-4) = 05:30 UTC.
    assert next_time_of_day(now, time(1, 30), "America/New_York") == datetime(
        2026, 11, 1, 5, 30, tzinfo=UTC
    )


def test_across_fall_back_keeps_the_local_wall_time():
    now = datetime(2026, 10, 31, 14, 0, tzinfo=UTC)  # 10:00 EDT on the 31st
    assert next_time_of_day(now, time(9), "America/New_York") == datetime(
        2026, 11, 1, 14, 0, tzinfo=UTC
    )


def test_unknown_zone_falls_back_to_utc():
    now = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    assert next_time_of_day(now, time(9), "Mars/Olympus") == datetime(2026, 1, 5, 9, tzinfo=UTC)
