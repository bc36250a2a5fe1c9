from datetime import UTC, datetime, time, timedelta

import pytest

from stagecoach.engine.domain.policy import SendPolicy

SHANGHAI = "Asia/Shanghai"
POLICY = SendPolicy(quiet_start=time(21), quiet_end=time(8), frequency_cap=2)


def test_daytime_send_goes_now() -> None:
    assert POLICY.quiet_until(datetime(2026, 11, 22, 2, 0, tzinfo=UTC), SHANGHAI) is None  # 10:00


def test_late_evening_waits_until_eight_the_next_morning_local() -> None:
    evening = datetime(2026, 11, 22, 14, 30, tzinfo=UTC)  # 22:30 in Shanghai
    assert POLICY.quiet_until(evening, SHANGHAI) == datetime(2026, 11, 23, 0, 0, tzinfo=UTC)


def test_early_morning_waits_until_eight_the_same_day_local() -> None:
    night = datetime(2026, 11, 22, 19, 0, tzinfo=UTC)  # 03:00 on the 23rd in Shanghai
    assert POLICY.quiet_until(night, SHANGHAI) == datetime(2026, 11, 23, 0, 0, tzinfo=UTC)


def test_quiet_hours_follow_the_contacts_zone_not_the_servers() -> None:
    two_pm_utc = datetime(2026, 11, 22, 14, 0, tzinfo=UTC)
    assert POLICY.quiet_until(two_pm_utc, "Europe/London") is None  # 14:00 there
    assert POLICY.quiet_until(two_pm_utc, SHANGHAI) is not None  # 22:00 there
    assert POLICY.quiet_until(two_pm_utc - timedelta(hours=2), SHANGHAI) is None  # 20:00


def test_unknown_zone_falls_back_to_utc() -> None:
    at = datetime(2026, 11, 22, 23, 0, tzinfo=UTC)
    assert POLICY.quiet_until(at, "Mars/Olympus") == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def test_daytime_quiet_window_within_one_day() -> None:
    lunch = SendPolicy(quiet_start=time(12), quiet_end=time(14))
    assert lunch.quiet_until(datetime(2026, 11, 22, 12, 30, tzinfo=UTC), "UTC") == datetime(
        2026, 11, 22, 14, 0, tzinfo=UTC
    )
    assert lunch.quiet_until(datetime(2026, 11, 22, 15, 0, tzinfo=UTC), "UTC") is None


def test_equal_start_and_end_disable_quiet_hours() -> None:
    off = SendPolicy(quiet_start=time(0), quiet_end=time(0))
    assert off.quiet_until(datetime(2026, 11, 22, 3, 0, tzinfo=UTC), "UTC") is None


def test_quiet_end_inside_a_dst_gap_moves_forward() -> None:
    # New York springs forward at 02:00 on 2026-03-08: 02:30 does not exist that day.
    odd = SendPolicy(quiet_start=time(1), quiet_end=time(2, 30))
    at = datetime(2026, 3, 8, 6, 30, tzinfo=UTC)  # 01:30 EST
    end = odd.quiet_until(at, "America/New_York")
    assert end is not None
    assert end > at
    assert end - at <= timedelta(hours=2)


def test_frequency_cap_defers_until_the_oldest_send_ages_out() -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    sends = [now - timedelta(hours=20), now - timedelta(hours=2)]
    assert POLICY.cap_until(sends, now) == now + timedelta(hours=4)
    assert POLICY.cap_until(sends[1:], now) is None
    assert POLICY.cap_until([now - timedelta(days=2), *sends[1:]], now) is None


@pytest.mark.parametrize("cap", [0])
def test_zero_cap_disables_the_cap(cap: int) -> None:
    now = datetime(2026, 11, 22, tzinfo=UTC)
    assert SendPolicy(frequency_cap=cap).cap_until([now] * 10, now) is None


def test_policy_round_trips_through_json() -> None:
    assert SendPolicy.from_dict(POLICY.to_dict()) == POLICY
