"""Send policy: quiet hours in the contact's time zone and a frequency cap across journeys.

Pure. The contact workflow asks ``quiet_until`` before every send and waits (a timer)
when the answer is a time: quiet hours delay a message, they never drop it. The delivery
activity asks ``cap_until`` with the contact's recent sends from the database, so the cap
holds across every journey and every workflow run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from stagecoach.engine.domain import serial


def contact_zone(name: str | None) -> ZoneInfo:
    """The contact's zone; an unknown or missing name falls back to UTC rather than failing."""
    if not name:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


@serial.fields(rename={"frequency_window": "frequency_window_seconds"})
@dataclass(frozen=True)
class SendPolicy(serial.Record):
    """When marketing messages may go out.

    Attributes:
        quiet_start: Local time quiet hours begin (inclusive).
        quiet_end: Local time quiet hours end (exclusive). ``quiet_start == quiet_end``
            disables quiet hours.
        frequency_cap: Most messages one contact receives in ``frequency_window``, across
            all journeys. ``0`` disables the cap.
        frequency_window: The sliding window the cap counts over.
    """

    quiet_start: time = time(21, 0)
    quiet_end: time = time(8, 0)
    frequency_cap: int = 3
    frequency_window: timedelta = timedelta(days=1)

    def quiet_until(self, now: datetime, zone_name: str | None) -> datetime | None:
        """``None`` if a message may go now, else the instant quiet hours end (aware, UTC)."""
        if self.quiet_start == self.quiet_end:
            return None
        zone = contact_zone(zone_name)
        local = now.astimezone(zone)
        t = local.time()
        if self.quiet_start < self.quiet_end:  # quiet inside one day, e.g. 12:00-14:00
            quiet = self.quiet_start <= t < self.quiet_end
        else:  # quiet across midnight, e.g. 21:00-08:00
            quiet = t >= self.quiet_start or t < self.quiet_end
        if not quiet:
            return None
        end_day = local.date()
        if self.quiet_start > self.quiet_end and t >= self.quiet_start:
            end_day += timedelta(days=1)
        # Build the local wall time, then normalise through UTC so a DST gap moves forward.
        end_local = datetime.combine(end_day, self.quiet_end, tzinfo=zone)
        return end_local.astimezone(UTC)

    def cap_until(self, sent_at: Iterable[datetime], now: datetime) -> datetime | None:
        """``None`` if under the cap, else when the oldest send in the window ages out."""
        if self.frequency_cap <= 0:
            return None
        since = now - self.frequency_window
        recent = sorted(t for t in sent_at if since < t <= now)
        if len(recent) < self.frequency_cap:
            return None
        return recent[-self.frequency_cap] + self.frequency_window
