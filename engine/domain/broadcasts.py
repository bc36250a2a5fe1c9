"""Broadcasts: one-off campaigns to a segment, as a marketer writes them and as they run.

A :class:`Broadcast` names a segment, a content item and a channel, and says when it
sends: at launch, at a date and time, or at a local time in each recipient's own zone.
It may carry an :class:`ABTest`: variants go to a sample first, a winner is chosen on a
declared metric with a significance test after a window, and the rest get the winner.

Pure. Everything here is a function of its arguments: the spec and its validation
(:func:`broadcast_problems`, errors that name the field and the fix), each recipient's
send time (:func:`send_time`), the A/B arm a contact falls in (:func:`arm_of`), the
decision after the window (:func:`choose_winner`) and the outcome counts a report adds
up. The services store broadcasts and their audience snapshots; the broadcast workflow
sends them in batches (``stagecoach.workflows.broadcasts``).

Why SciPy for the test: the winner is decided by Pearson's chi-squared test of
independence on the arms' successes and failures (``scipy.stats.chi2_contingency``), the
standard test for comparing two or more proportions, which SciPy maintains and documents;
hand-writing the distribution's tail would be infrastructure of our own. With two arms
and no continuity correction it is the two-proportion z-test marketers know.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from stagecoach.engine.domain import serial
from stagecoach.engine.domain.hashing import content_hash
from stagecoach.engine.domain.policy import contact_zone

CHANNELS = ("email", "wechat", "sms", "wechat_mass")
"""Channels a broadcast sends on: per recipient over email, WeChat template messages or
SMS, or one WeChat mass-send job for the whole audience (``wechat_mass``)."""

STATUSES = ("draft", "scheduled", "running", "paused", "completed", "cancelled")
FINISHED = ("completed", "cancelled")

METRICS = ("opened", "clicked")
"""A/B metrics read from tracking (``email.opened``, ``email.clicked``); any other
metric is ``event:<type>``, a conversion event the recipient performs."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class BroadcastError(ValueError):
    """A broadcast that cannot be: the message names the field and the fix."""


@dataclass(frozen=True)
class Variant(serial.Record):
    """One arm of an A/B test: its own content item, or its own subject line, or both.

    Attributes:
        name: The arm's name (``a``, ``b``, ``short-subject``...).
        content: A content item id; ``None`` sends the broadcast's own content.
        subject: An email subject replacing the content's; ``None`` keeps it.
    """

    name: str
    content: str | None = None
    subject: str | None = None


@dataclass(frozen=True)
class ABTest(serial.Record):
    """Variants to a sample first, then the winner to everyone else.

    Attributes:
        variants: Two or more arms.
        sample: The fraction of the audience each arm gets (``0.1``: 2 arms x 10%).
        window: How long after the sample's sends the metric is read.
        metric: ``opened``, ``clicked`` or ``event:<type>`` (a conversion event).
        default: The arm the rest get when no arm wins significantly.
        alpha: The significance level of the test.
    """

    variants: tuple[Variant, ...]
    default: str
    sample: float = 0.1
    window: timedelta = timedelta(hours=4)
    metric: str = "clicked"
    alpha: float = 0.05

    def arm(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)


@serial.fields(omit_if_default=("ab", "seeds", "conversion", "description"))
@dataclass(frozen=True)
class Broadcast(serial.Record):
    """A one-off campaign to a segment.

    Attributes:
        name: Unique, lowercase letters, digits, ``-`` and ``_``: the broadcast's id.
        segment: The audience: a segment's name. Its members when sending starts are
            the audience; later joiners are not sent (the report counts them).
        content: The content item sent (each recipient's locale and the channel pick
            its variant).
        channel: ``email``, ``wechat`` (template messages to openids), ``sms`` or
            ``wechat_mass`` (one WeChat mass-send job per 10,000 openids).
        description: For people reading the list.
        send_at: When sending starts (aware). ``None``: at launch.
        local_time: Send at this wall time in each recipient's own zone, on
            ``send_at``'s date as written (or launch day's in UTC, without ``send_at``).
        when_passed: For a local-time send, what to do with a recipient whose local
            time has already passed at launch: ``send`` now or ``skip``.
        override_caps: Transactional notices only: sent despite the frequency cap
            (consent, suppression and quiet hours still hold).
        ab: An A/B test, or ``None``.
        seeds: Addresses a test send goes to before launch.
        conversion: An event type counted as a conversion in the report.
        attribution: How long after its send a recipient's conversion counts.
    """

    name: str
    segment: str
    content: str
    channel: str = "email"
    description: str = ""
    send_at: datetime | None = None
    local_time: time | None = None
    when_passed: Literal["send", "skip"] = "send"
    override_caps: bool = False
    ab: ABTest | None = None
    seeds: tuple[str, ...] = ()
    conversion: str | None = None
    attribution: timedelta = timedelta(days=7)

    def __post_init__(self) -> None:
        for problem in _shape_problems(self):
            raise BroadcastError(problem)

    @property
    def version(self) -> str:
        """The spec's content hash: what a second launch compares against."""
        return content_hash(self.to_dict())

    def contents(self) -> tuple[str, ...]:
        """Every content item this broadcast may send."""
        items = [self.content]
        if self.ab is not None:
            items += [v.content for v in self.ab.variants if v.content]
        return tuple(dict.fromkeys(items))


def _shape_problems(b: Broadcast) -> list[str]:
    """What is wrong with the spec on its own (the catalogues are checked later)."""
    problems: list[str] = []
    if not isinstance(b.name, str) or not _NAME.match(b.name):
        problems.append(
            f"broadcast name {b.name!r} is not valid: use lowercase letters, digits, '-' and"
            " '_', starting with a letter or digit, at most 64 characters"
        )
    if not b.segment:
        problems.append(f"broadcast {b.name!r}: segment is empty; name the audience's segment")
    if not b.content:
        problems.append(f"broadcast {b.name!r}: content is empty; name a content item")
    if b.channel not in CHANNELS:
        problems.append(
            f"broadcast {b.name!r}: channel {b.channel!r} is not one of {', '.join(CHANNELS)}"
        )
    if b.send_at is not None and b.send_at.tzinfo is None:
        problems.append(
            f"broadcast {b.name!r}: send_at {b.send_at.isoformat()} has no time zone; write"
            " it aware, e.g. datetime(2027, 1, 5, 9, tzinfo=ZoneInfo('Asia/Shanghai'))"
        )
    if b.when_passed not in ("send", "skip"):
        problems.append(f"broadcast {b.name!r}: when_passed must be 'send' or 'skip'")
    if b.attribution <= timedelta(0):
        problems.append(f"broadcast {b.name!r}: attribution must be positive, e.g. 7 days")
    if b.ab is not None:
        problems += _ab_problems(b.name, b.ab, b.channel)
        if b.local_time is not None:
            problems.append(
                f"broadcast {b.name!r}: an A/B test needs one send time for its sample;"
                " drop local_time= or ab="
            )
    return problems


def _ab_problems(name: str, ab: ABTest, channel: str) -> list[str]:
    problems: list[str] = []
    names = [v.name for v in ab.variants]
    if len(names) < 2:
        problems.append(f"broadcast {name!r}: ab.variants needs two or more arms")
    if len(set(names)) != len(names):
        problems.append(f"broadcast {name!r}: ab.variants has a repeated name")
    if ab.default not in names:
        problems.append(
            f"broadcast {name!r}: ab.default {ab.default!r} is not an arm; use one of"
            f" {', '.join(names) or '(none)'}"
        )
    if not 0 < ab.sample * max(len(names), 1) < 1:
        problems.append(
            f"broadcast {name!r}: ab.sample {ab.sample} x {len(names)} arms must leave some"
            " of the audience for the winner (e.g. 0.1 for 2 x 10%)"
        )
    if ab.window <= timedelta(0):
        problems.append(f"broadcast {name!r}: ab.window must be positive, e.g. 4 hours")
    if not 0 < ab.alpha < 1:
        problems.append(f"broadcast {name!r}: ab.alpha must be between 0 and 1, e.g. 0.05")
    if ab.metric not in METRICS and not (
        ab.metric.startswith("event:") and len(ab.metric) > len("event:")
    ):
        problems.append(
            f"broadcast {name!r}: ab.metric {ab.metric!r} is not opened, clicked or event:<type>"
        )
    if ab.metric in METRICS and channel != "email":
        problems.append(
            f"broadcast {name!r}: ab.metric {ab.metric!r} is tracked for email only; use"
            " event:<type> on other channels"
        )
    if channel == "wechat_mass":
        problems.append(
            f"broadcast {name!r}: a WeChat mass send goes to the whole audience at once;"
            " an A/B test needs channel email, wechat or sms"
        )
    return problems


@dataclass(frozen=True)
class Catalogues:
    """What a broadcast is checked against: known segments, content items with the
    locales and channels each has a variant for, and event types."""

    segments: frozenset[str]
    content: Mapping[str, frozenset[tuple[str, str]]]
    events: frozenset[str] | None = None


def broadcast_problems(
    b: Broadcast,
    catalogues: Catalogues,
    *,
    locales: Iterable[str] = (),
    now: datetime | None = None,
) -> list[str]:
    """Everything that stops ``b`` from launching, each naming the field and the fix:
    an unknown segment or content item, a content item without a variant for a locale
    in the audience (``locales``), a send time in the past (``now``)."""
    problems: list[str] = []
    if b.segment not in catalogues.segments:
        known = ", ".join(sorted(catalogues.segments)) or "(none published)"
        problems.append(
            f"broadcast {b.name!r}: segment {b.segment!r} is unknown; use one of: {known}"
        )
    channel = "wechat" if b.channel == "wechat_mass" else b.channel
    for item in b.contents():
        variants = catalogues.content.get(item)
        if variants is None:
            problems.append(
                f"broadcast {b.name!r}: content {item!r} is not in the content library;"
                " add it under content/ or name another item"
            )
            continue
        missing = sorted({loc for loc in locales if (loc, channel) not in variants})
        if missing:
            problems.append(
                f"broadcast {b.name!r}: content {item!r} has no {channel} variant for"
                f" {', '.join(missing)}, which part of the audience reads; add"
                f" content/{item}/{channel}.<locale>... for each, or narrow the segment"
            )
    if now is not None and b.send_at is not None and b.local_time is None and b.send_at < now:
        problems.append(
            f"broadcast {b.name!r}: send_at {b.send_at.isoformat()} is in the past; give a"
            " later time, or leave it out to send at launch"
        )
    if b.ab is not None and b.ab.metric.startswith("event:") and catalogues.events is not None:
        event = b.ab.metric.removeprefix("event:")
        if event not in catalogues.events:
            problems.append(
                f"broadcast {b.name!r}: ab.metric names event {event!r}, which the event"
                " catalog does not have; declare it or pick another"
            )
    if (
        b.conversion is not None
        and catalogues.events is not None
        and b.conversion not in catalogues.events
    ):
        problems.append(
            f"broadcast {b.name!r}: conversion event {b.conversion!r} is not in the event"
            " catalog; declare it or pick another"
        )
    return problems


# --- when each recipient is sent --------------------------------------------------------


def send_time(b: Broadcast, *, zone: str | None, launched: datetime) -> datetime | None:
    """When this recipient is sent (aware, UTC), or ``None`` to skip them.

    Without ``local_time`` everyone goes at ``send_at`` (or launch). With it, the wall
    time in the recipient's zone on ``send_at``'s date as written (or launch day's);
    a time already passed at launch is sent at launch or skipped (``when_passed``). A
    zone that does not exist falls back to UTC, as quiet hours do."""
    start = max(b.send_at or launched, launched)
    if b.local_time is None:
        return start.astimezone(UTC)
    tz = contact_zone(zone)
    # The day as the marketer wrote it (send_at's own zone), or launch day in UTC: "9:00
    # on 5 January" means 5 January in every zone, not the day send_at falls on there.
    day: date = (b.send_at or launched.astimezone(UTC)).date()
    target = datetime.combine(day, b.local_time, tzinfo=tz).astimezone(UTC)
    if target >= launched:
        return target
    return launched.astimezone(UTC) if b.when_passed == "send" else None


def arm_of(b: Broadcast, contact_id: str) -> str | None:
    """The A/B arm a contact is in (stable for the broadcast), or ``None`` for the rest.

    Each arm takes ``sample`` of a uniform hash of (broadcast, contact), so a re-run of
    the snapshot puts everyone in the same arm."""
    if b.ab is None:
        return None
    digest = hashlib.sha256(f"{b.name}:{contact_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    for index, variant in enumerate(b.ab.variants):
        if point < b.ab.sample * (index + 1):
            return variant.name
    return None


# --- the A/B decision -------------------------------------------------------------------


@serial.fields(omit_if_default=("note",))
@dataclass(frozen=True)
class ArmResult(serial.Record):
    """One arm's sends and successes (opens, clicks or conversions)."""

    name: str
    sent: int
    successes: int
    note: str = ""

    @property
    def rate(self) -> float:
        return self.successes / self.sent if self.sent else 0.0


@dataclass(frozen=True)
class ABDecision(serial.Record):
    """The winner and why: the arms' counts, the test's p-value, whether it was
    significant at ``alpha``, and the arm the rest get."""

    arms: tuple[ArmResult, ...]
    metric: str
    p_value: float | None
    alpha: float
    significant: bool
    winner: str
    reason: str


def choose_winner(ab: ABTest, arms: Iterable[ArmResult]) -> ABDecision:
    """The arm with the best rate if the arms differ significantly, else the default.

    The test is Pearson's chi-squared on the arms' (successes, failures) without
    continuity correction. It is not run (``p_value`` is ``None``) when an arm sent
    nothing or when no arm, or every recipient, succeeded: the rates cannot differ."""
    from scipy.stats import chi2_contingency

    results = tuple(arms)
    total = sum(a.successes for a in results)
    sent = sum(a.sent for a in results)

    def decided(p_value: float | None, winner: str | None, reason: str) -> ABDecision:
        return ABDecision(
            arms=results,
            metric=ab.metric,
            p_value=p_value,
            alpha=ab.alpha,
            significant=winner is not None,
            winner=winner or ab.default,
            reason=reason,
        )

    if any(a.sent == 0 for a in results) or total == 0 or total == sent:
        return decided(
            None, None, "no test: an arm sent nothing, or the rates cannot differ; default sent"
        )
    table = [[a.successes, a.sent - a.successes] for a in results]
    p_value = float(chi2_contingency(table, correction=False).pvalue)
    if p_value < ab.alpha:
        best = max(results, key=lambda a: (a.rate, a.name == ab.default))
        return decided(p_value, best.name, f"{best.name} won: p = {p_value:.4g} < {ab.alpha}")
    return decided(
        p_value, None, f"no significant winner (p = {p_value:.4g} >= {ab.alpha}); default sent"
    )
