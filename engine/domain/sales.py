"""Sales hand-off: who gets a qualified lead, by when they answer, and what they are sent.

Pure: no Temporal, no database, no network. The hand-off activity reads what only the
database knows (how many leads each pool owner already has, the contact's identities and
stage history) and passes it in; everything decided from it is decided here, in plain
pytest-tested functions.

Routing (declared in the pipeline, ``Pipeline.routing``)
    * Grade ``A`` goes to a named :class:`Team`: the team as a whole (no single owner),
      with its lead for escalations. Grade ``B`` goes to a :class:`Pool` of owners in turn.
      ``C`` and below stay in nurture: :meth:`Routing.route` returns ``None`` and a routing
      that declares a route for them is refused when built.
    * An owner already assigned (``assigned_owner``, else the ``sales_owner`` attribute)
      keeps the lead, whatever the rotation says.
    * A region attribute (``region``) may pick other routes: ``territories`` maps a region
      to a :class:`Territory` whose teams and pools replace the default ones for the grades
      it names.
    * Rotation is deterministic and fair across workflows: the caller passes how many
      leads each owner of each pool already has (``pool_counts``, read from the handoffs
      table), and the owner with the fewest gets the lead, ties going to the owner
      declared first. Started from zero that is plain round robin (N leads over K owners
      differ by at most one); a lead kept by its owner counts towards that owner's share,
      and rotation evens it out. Count over a window (say the last 90 days) if a new owner
      should not receive every lead until caught up.

Service level
    :class:`Sla` gives the owner ``first_response`` business time, then ``escalate_after``
    more before the lead is told. :func:`sla_deadline` adds business time in the owner's
    zone: nights, weekends and holidays do not count, a start outside hours begins at the
    next opening, and a deadline may fall exactly at a close. Business hours are wall-clock
    times in that zone; the arithmetic runs on UTC instants, so a DST change costs or gives
    no business time.

Errors::

    ValueError
    └── SalesError                    a bad argument: naive time, unknown zone, negative time
        └── RoutingDefinitionError    a routing, team, pool, SLA or business hours is malformed
                                      (raised when built)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Literal, Self, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from stagecoach.engine.domain import serial
from stagecoach.engine.domain.conditions import GRADES, EventRecord
from stagecoach.engine.domain.scoring import score_at, shown_score, top_contributions

if TYPE_CHECKING:
    from stagecoach.engine.domain.contact import ContactState
    from stagecoach.engine.domain.pipeline import Pipeline, Transition

ROUTED_GRADES: tuple[str, ...] = ("A", "B")
"""Grades that may be handed to sales; C and below stay in nurture."""

RECENT_EVENTS = 20
"""Events a hand-off payload lists, newest first."""

AssignmentKind = Literal["team", "round_robin", "kept"]

_GROUP_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class SalesError(ValueError):
    """A sales hand-off was asked something impossible; the message says the fix."""


class RoutingDefinitionError(SalesError):
    """A routing, team, pool, SLA or business hours is malformed; raised when built."""


def _zone(name: str, where: str, error: type[SalesError] = SalesError) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise error(
            f"{where}: time zone {name!r} is unknown; use an IANA name such as 'Asia/Shanghai'"
        ) from None


def _aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise SalesError(f"{what} {value.isoformat()} has no time zone; pass an aware datetime")


# Business hours and the SLA


@dataclass(frozen=True)
class BusinessHours(serial.Record):
    """When an owner works, in the owner's own time zone.

    Attributes:
        start: Local opening time (inclusive).
        end: Local closing time; later than ``start`` (no shifts across midnight).
        weekdays: Working days, Monday ``0`` to Sunday ``6``.
        holidays: Dates off even on a working weekday.
        extra_workdays: Dates worked even off a working weekday, e.g. the weekend days
            China's State Council moves around a public holiday (调休).
    """

    start: time = time(9)
    end: time = time(18)
    weekdays: tuple[int, ...] = (0, 1, 2, 3, 4)
    holidays: tuple[date, ...] = ()
    extra_workdays: tuple[date, ...] = ()

    def __post_init__(self) -> None:
        weekdays = tuple(sorted(set(self.weekdays)))
        object.__setattr__(self, "weekdays", weekdays)
        object.__setattr__(self, "holidays", tuple(sorted(set(self.holidays))))
        object.__setattr__(self, "extra_workdays", tuple(sorted(set(self.extra_workdays))))
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise RoutingDefinitionError(
                "business hours: start and end are wall-clock times in the owner's zone;"
                " drop their tzinfo"
            )
        if self.start >= self.end:
            raise RoutingDefinitionError(
                f"business hours: start {self.start.isoformat()} is not before end"
                f" {self.end.isoformat()}; give e.g. start=time(9), end=time(18)"
            )
        if not weekdays or any(not 0 <= d <= 6 for d in weekdays):
            raise RoutingDefinitionError(
                f"business hours: weekdays {list(self.weekdays)} must be a non-empty set of"
                " days from 0 (Monday) to 6 (Sunday)"
            )
        both = set(self.holidays) & set(self.extra_workdays)
        if both:
            raise RoutingDefinitionError(
                f"business hours: {sorted(d.isoformat() for d in both)} are both holidays"
                " and extra workdays; keep each date in one list"
            )

    def is_business_day(self, day: date) -> bool:
        """Whether ``day`` (a local date) has opening hours."""
        if day in self.extra_workdays:
            return True
        return day.weekday() in self.weekdays and day not in self.holidays

    def is_open(self, at: datetime, tz: str) -> bool:
        """Whether ``at`` falls within opening hours (closing time excluded) in ``tz``."""
        _aware(at, "at")
        local = at.astimezone(_zone(tz, "business hours"))
        return self.is_business_day(local.date()) and self.start <= local.time() < self.end


def sla_deadline(start: datetime, duration: timedelta, hours: BusinessHours, tz: str) -> datetime:
    """``start`` plus ``duration`` of business time in zone ``tz``.

    Nights, days off and holidays do not count; a start outside opening hours begins at
    the next opening. A deadline that uses up a day's hours exactly is that day's close.
    Business hours are wall-clock times in ``tz``; elapsed time is measured between UTC
    instants, so a DST change inside opening hours neither adds nor removes business time.

    Args:
        start: When the clock starts; timezone-aware.
        duration: Business time to add; zero or more.
        hours: The owner's business hours.
        tz: The owner's IANA time zone, e.g. ``Asia/Shanghai``.

    Returns:
        The deadline, in ``start``'s time zone.

    Raises:
        SalesError: ``start`` is naive, ``duration`` negative or ``tz`` unknown.
    """
    _aware(start, "SLA start")
    if duration < timedelta(0):
        raise SalesError(f"SLA duration {duration} is negative; pass zero or more")
    zone = _zone(tz, "SLA")
    now = start.astimezone(UTC)
    remaining = duration
    day = start.astimezone(zone).date()
    # Terminates: weekdays is non-empty and holidays finite, so business days keep coming.
    while True:
        if hours.is_business_day(day):
            # Local wall times normalised through UTC: a nonexistent time moves forward.
            opens = datetime.combine(day, hours.start, tzinfo=zone).astimezone(UTC)
            closes = datetime.combine(day, hours.end, tzinfo=zone).astimezone(UTC)
            begin = max(now, opens)
            if begin < closes:
                available = closes - begin
                if remaining <= available:
                    return (begin + remaining).astimezone(start.tzinfo)
                remaining -= available
        day += timedelta(days=1)


@dataclass(frozen=True)
class SlaDeadlines(serial.Record):
    """When an owner is reminded, and when the lead is told instead."""

    respond_by: datetime
    escalate_at: datetime


@serial.fields(
    rename={
        "first_response": "first_response_seconds",
        "escalate_after": "escalate_after_seconds",
    }
)
@dataclass(frozen=True)
class Sla(serial.Record):
    """How fast sales answers a hand-off, in business time.

    Attributes:
        first_response: Business time the owner has to accept or reject.
        escalate_after: Further business time, after ``first_response`` lapses, before
            the team or pool lead is told.
        business_hours: Applied in the owner's own time zone.
    """

    first_response: timedelta = timedelta(hours=4)
    escalate_after: timedelta = timedelta(hours=4)
    business_hours: BusinessHours = field(default_factory=BusinessHours)

    def __post_init__(self) -> None:
        for name in ("first_response", "escalate_after"):
            if getattr(self, name) <= timedelta(0):
                raise RoutingDefinitionError(
                    f"sla: {name} must be positive business time, e.g. timedelta(hours=4)"
                )

    def deadlines(self, start: datetime, tz: str) -> SlaDeadlines:
        """The reminder and escalation times of a hand-off made at ``start`` to an owner in
        ``tz``."""
        respond_by = sla_deadline(start, self.first_response, self.business_hours, tz)
        escalate_at = sla_deadline(respond_by, self.escalate_after, self.business_hours, tz)
        return SlaDeadlines(respond_by=respond_by, escalate_at=escalate_at)


# Teams, pools and routing


@dataclass(frozen=True)
class Owner(serial.Record):
    """A salesperson.

    Attributes:
        name: As the CRM knows them, e.g. ``wang.fang``.
        timezone: Their IANA zone for the SLA; empty takes the team's or pool's.
    """

    name: str
    timezone: str = ""


@dataclass(frozen=True)
class _Group(serial.Record):
    """Shared by teams and pools: named owners, a lead, a default zone."""

    name: str
    owners: tuple[Owner | str, ...]
    lead: str | None = None
    timezone: str = ""

    kind = "group"

    def __post_init__(self) -> None:
        where = f"{self.kind} {self.name!r}"
        if not _GROUP_NAME.match(self.name):
            raise RoutingDefinitionError(
                f"{self.kind} name {self.name!r} is not a lowercase name; use e.g. 'inside-sales'"
            )
        if self.timezone:
            _zone(self.timezone, where, RoutingDefinitionError)
        owners: list[Owner] = []
        for raw in self.owners:
            owner = Owner(raw) if isinstance(raw, str) else raw
            if not owner.name.strip() or owner.name != owner.name.strip():
                raise RoutingDefinitionError(
                    f"{where}: owner name {owner.name!r} is empty or padded; give the CRM name"
                )
            if any(o.name == owner.name for o in owners):
                raise RoutingDefinitionError(f"{where}: owner {owner.name!r} is listed twice")
            zone = owner.timezone or self.timezone
            if not zone:
                raise RoutingDefinitionError(
                    f"{where}: owner {owner.name!r} has no time zone; give the {self.kind}"
                    " timezone='Asia/Shanghai' or the owner Owner(name, timezone=...)"
                )
            _zone(zone, f"{where}, owner {owner.name!r}", RoutingDefinitionError)
            owners.append(Owner(owner.name, zone))
        if not owners:
            raise RoutingDefinitionError(f"{where} has no owners; list at least one")
        if self.lead is not None and not self.lead.strip():
            raise RoutingDefinitionError(f"{where}: lead is empty; name them or pass None")
        object.__setattr__(self, "owners", tuple(owners))

    @property
    def members(self) -> tuple[Owner, ...]:
        """The owners, each with its time zone resolved."""
        return cast(tuple[Owner, ...], self.owners)

    @property
    def zone(self) -> str:
        """The zone of the group as a whole: its own, else its first owner's."""
        return self.timezone or self.members[0].timezone

    def member(self, name: str) -> Owner | None:
        """The owner called ``name``, if they belong here."""
        return next((o for o in self.members if o.name == name), None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`to_dict` output (owners as objects, each with its zone)."""
        return cls(
            name=data["name"],
            owners=tuple(Owner.from_dict(o) for o in data.get("owners", ())),
            lead=data.get("lead"),
            timezone=data.get("timezone", ""),
        )


@dataclass(frozen=True)
class Team(_Group):
    """A named team that takes a lead as a whole; its ``lead`` hears of escalations.

    ``owners`` may be names (in the team's ``timezone``) or :class:`Owner` values.
    """

    kind = "team"


@dataclass(frozen=True)
class Pool(_Group):
    """Owners who take leads in turn (see the module docstring on fairness).

    ``owners`` may be names (in the pool's ``timezone``) or :class:`Owner` values with
    their own zones; ``lead`` hears of escalations.
    """

    kind = "pool"


Group = Team | Pool


def _check_routes(teams: Mapping[str, Team], pools: Mapping[str, Pool], where: str) -> None:
    for grades, kind in ((teams, "team"), (pools, "pool")):
        for grade in grades:
            if grade not in GRADES:
                raise RoutingDefinitionError(
                    f"{where}: {grade!r} is not a grade; route {' or '.join(ROUTED_GRADES)}"
                )
            if grade not in ROUTED_GRADES:
                raise RoutingDefinitionError(
                    f"{where}: grade {grade!r} cannot have a {kind}: C and below stay in"
                    f" nurture; route only {', '.join(ROUTED_GRADES)}"
                )
    both = sorted(set(teams) & set(pools))
    if both:
        raise RoutingDefinitionError(
            f"{where}: grade {both[0]!r} has both a team and a pool; keep one"
        )


@dataclass(frozen=True)
class Territory(serial.Record):
    """Routes for contacts of one region, replacing the default ones for the grades named."""

    teams: Mapping[str, Team] = field(default_factory=dict)
    pools: Mapping[str, Pool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "teams", dict(self.teams))
        object.__setattr__(self, "pools", dict(self.pools))


# Assignments recorded before these fields existed lack them.
@serial.fields(missing={"owner": None, "owner_timezone": "UTC", "lead": None, "reason": ""})
@dataclass(frozen=True)
class Assignment(serial.Record):
    """Who a lead goes to and why. Crosses the Temporal boundary as JSON.

    Attributes:
        team: The team or pool name (the handoffs table's ``team``).
        owner: The owner; ``None`` when a team takes the lead as a whole.
        owner_timezone: The zone the SLA runs in: the owner's, else the team's.
        lead: Who hears of an escalation, if anyone is declared.
        reason: One line for people, e.g. ``grade B: round robin in inside-sales``.
        kind: ``team``, ``round_robin`` or ``kept`` (an already assigned owner).
        territory: The region whose routes applied, if any.
    """

    team: str
    owner: str | None
    owner_timezone: str
    lead: str | None
    reason: str
    kind: AssignmentKind = "team"
    territory: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Assignment:
        """Rebuild from :meth:`to_dict` output; unknown keys are ignored (newer writers)."""
        kind = data.get("kind", "team")
        if kind not in ("team", "round_robin", "kept"):
            raise SalesError(f"assignment kind {kind!r} is unknown; use team, round_robin, kept")
        return serial.decode(cls, data)


# The service team and its SLA appear first and only when declared: a routing without
# them keeps the form (and its pipeline's version) it had before they existed.
@serial.fields(
    order=(
        "service", "service_sla", "teams", "pools", "territories", "sla",
        "territory_attribute", "owner_attribute",
    ),
    omit_if_default=("service", "service_sla"),
)  # fmt: skip
@dataclass(frozen=True)
class Routing(serial.Record):
    """Who gets qualified leads: declared in the pipeline, validated when built.

    Args:
        teams: Grade to team, e.g. ``{"A": Team("key-accounts", ...)}``.
        pools: Grade to pool, e.g. ``{"B": Pool("inside-sales", ...)}``.
        territories: Region to routes replacing the defaults for that region's contacts.
        sla: First response and escalation times, in business hours.
        territory_attribute: The contact attribute holding the region.
        owner_attribute: The contact attribute holding an owner already assigned (a CRM
            sync may set it); :meth:`route`'s ``assigned_owner`` wins over it.

    Raises:
        RoutingDefinitionError: naming the grade, team or pool and the fix.
    """

    teams: Mapping[str, Team] = field(default_factory=dict)
    pools: Mapping[str, Pool] = field(default_factory=dict)
    territories: Mapping[str, Territory] = field(default_factory=dict)
    sla: Sla = field(default_factory=Sla)
    territory_attribute: str = "region"
    owner_attribute: str = "sales_owner"
    service: Team | None = None
    """Who takes a service-recovery hand-off (a detractor), whatever the grade."""
    service_sla: Sla | None = None
    """The service team's SLA; default: ``sla``."""

    def __post_init__(self) -> None:
        for attr in ("teams", "pools", "territories"):
            object.__setattr__(self, attr, dict(getattr(self, attr)))
        _check_routes(self.teams, self.pools, "routing")
        if not self.teams and not self.pools:
            raise RoutingDefinitionError(
                "routing declares no team or pool; add teams={'A': Team(...)} or"
                " pools={'B': Pool(...)}"
            )
        for region, territory in self.territories.items():
            where = f"routing, territory {region!r}"
            if not region.strip():
                raise RoutingDefinitionError("routing: a territory has an empty region; name it")
            _check_routes(territory.teams, territory.pools, where)
            if not territory.teams and not territory.pools:
                raise RoutingDefinitionError(f"{where} routes nothing; add a team or pool")
        for attr in ("territory_attribute", "owner_attribute"):
            if not getattr(self, attr).strip():
                raise RoutingDefinitionError(f"routing: {attr} is empty; name an attribute")
        seen: dict[str, Group] = {}
        for group in self.groups():
            other = seen.setdefault(group.name, group)
            if other != group:
                raise RoutingDefinitionError(
                    f"routing: {group.name!r} names two different {other.kind}s; pool counts"
                    " are kept by name, so give each its own name (or reuse the same object)"
                )

    def groups(self) -> tuple[Group, ...]:
        """Every team and pool declared, defaults first, each once."""
        found: list[Group] = []
        routes: list[Mapping[str, Group]] = [self.teams, self.pools]
        for territory in self.territories.values():
            routes += [territory.teams, territory.pools]
        for route in routes:
            for group in route.values():
                if group not in found:
                    found.append(group)
        return tuple(found)

    def route(
        self,
        grade: str | None,
        attributes: Mapping[str, Any],
        *,
        assigned_owner: str | None,
        pool_counts: Mapping[str, Mapping[str, int]],
    ) -> Assignment | None:
        """Who a lead of ``grade`` goes to, or ``None`` when it stays in nurture.

        Args:
            grade: The contact's fit grade; below B (or none) is never routed.
            attributes: The contact's attributes: the region and an assigned owner are
                read from them.
            assigned_owner: An owner already assigned (e.g. of an earlier hand-off); kept.
                ``None`` falls back to the ``owner_attribute`` attribute.
            pool_counts: Pool name to owner name to the leads that owner already has from
                the pool (the handoffs table, grouped). Missing means zero.

        Returns:
            The assignment, or ``None`` for C, D or no grade.
        """
        if grade not in ROUTED_GRADES:
            return None
        region_raw = attributes.get(self.territory_attribute)
        region = str(region_raw) if region_raw not in (None, "") else None
        territory = self.territories.get(region) if region is not None else None
        group: Group | None = None
        if territory is not None:
            group = territory.teams.get(grade) or territory.pools.get(grade)
        if group is None:
            territory = None
            group = self.teams.get(grade) or self.pools.get(grade)
        if group is None:
            return None  # a routed grade with no route declared stays in nurture too
        applied = region if territory is not None else None
        where = f"region {applied}: " if applied else ""

        if assigned_owner is None:
            raw = attributes.get(self.owner_attribute)
            assigned_owner = str(raw) if raw not in (None, "") else None
        if assigned_owner is not None and assigned_owner.strip():
            home = group if group.member(assigned_owner) else None
            home = home or next((g for g in self.groups() if g.member(assigned_owner)), None)
            if home is not None:
                member = home.member(assigned_owner)
                zone = member.timezone if member is not None else home.zone
            else:
                home, zone = group, group.zone
            return Assignment(
                team=home.name,
                owner=assigned_owner,
                owner_timezone=zone,
                lead=home.lead,
                reason=f"{where}grade {grade}: kept assigned owner {assigned_owner}",
                kind="kept",
                territory=applied,
            )

        if isinstance(group, Team):
            return Assignment(
                team=group.name,
                owner=None,
                owner_timezone=group.zone,
                lead=group.lead,
                reason=f"{where}grade {grade}: team {group.name}",
                kind="team",
                territory=applied,
            )
        counts = pool_counts.get(group.name, {})
        order = {o.name: i for i, o in enumerate(group.members)}
        owner = min(group.members, key=lambda o: (counts.get(o.name, 0), order[o.name]))
        return Assignment(
            team=group.name,
            owner=owner.name,
            owner_timezone=owner.timezone,
            lead=group.lead,
            reason=f"{where}grade {grade}: round robin in {group.name}",
            kind="round_robin",
            territory=applied,
        )

    def route_service(self) -> Assignment | None:
        """The service team for a service-recovery hand-off; ``None`` if none declared."""
        team = self.service
        if team is None:
            return None
        return Assignment(
            team=team.name,
            owner=None,
            owner_timezone=team.zone,
            lead=team.lead,
            reason=f"service recovery: team {team.name}",
            kind="team",
            territory=None,
        )


# The payload sales receive


def _plain(value: Any) -> Any:
    """``value`` as JSON types: datetimes and dates as ISO strings, sequences as lists."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [_plain(v) for v in items]
    return str(value)


def _event(record: EventRecord) -> dict[str, Any]:
    return {
        "type": record.type,
        "at": record.at.isoformat(),
        "properties": _plain(record.properties),
    }


def content_consumed(events: Iterable[EventRecord]) -> list[dict[str, Any]]:
    """Content the contact engaged with (events carrying a ``content_id``), first use first.

    One entry per content id: when it was first used, how, and how many times.
    """
    found: dict[str, dict[str, Any]] = {}
    for record in sorted(events, key=lambda e: e.at):
        content_id = record.properties.get("content_id")
        if not content_id:
            continue
        entry = found.setdefault(
            str(content_id),
            {"content_id": str(content_id), "first_at": record.at.isoformat(), "events": []},
        )
        entry["events"].append(record.type)
    return [
        {**entry, "events": sorted(set(entry["events"])), "count": len(entry["events"])}
        for entry in found.values()
    ]


def handoff_payload(
    state: ContactState,
    pipeline: Pipeline,
    *,
    identities: Mapping[str, str],
    now: datetime,
    timeline_url: str,
    stage_history: Sequence[Transition] = (),
    assignment: Assignment | None = None,
    deadlines: SlaDeadlines | None = None,
) -> dict[str, Any]:
    """What sales receives with a qualified lead; JSON types only.

    Keys: ``contact_id``, ``pipeline``, ``at``, ``identities``, ``traits``, ``stage``,
    ``stage_history``, ``score`` (value decayed to ``now`` and rounded as shown everywhere,
    :func:`stagecoach.engine.domain.scoring.shown_score`, and ``top_events``), ``grade``
    (letter, fit points and the ``rules`` that produced it), ``content_consumed`` (see
    :func:`content_consumed`), ``content_received`` (what Stagecoach delivered),
    ``recent_events`` (the last :data:`RECENT_EVENTS`, newest first), ``timeline_url``,
    and ``routing`` when an assignment is given.

    Args:
        state: The contact as the workflow holds it.
        pipeline: The contact's (pinned) pipeline: scoring decay and grade rule points.
        identities: Identity kind to value, e.g. ``{"email": ..., "wechat_openid": ...}``.
        now: When the hand-off is made; timezone-aware.
        timeline_url: Link to the contact's timeline.
        stage_history: The contact's stage transitions, oldest first (the workflow state
            keeps only the current stage; the stage_transitions table has the rest).
        assignment: Who the lead goes to, when already routed.
        deadlines: The SLA times of that assignment.

    Raises:
        SalesError: ``now`` is naive.
    """
    _aware(now, "hand-off time")
    scoring = pipeline.scoring
    points = {r.name: r.points for r in pipeline.grading.rules}
    fit: list[dict[str, Any]] = [
        {"rule": name, "points": points.get(name)} for name in state.grade_rules
    ]
    stage_label = ""
    if state.stage in pipeline.stage_names:
        stage_label = pipeline.stage(state.stage).label
    payload: dict[str, Any] = {
        "contact_id": state.contact_id,
        "pipeline": pipeline.name,
        "at": now.isoformat(),
        "identities": {str(k): str(v) for k, v in identities.items()},
        "traits": _plain(state.attributes),
        "stage": {
            "name": state.stage,
            "label": stage_label,
            "entered_at": state.stage_entered_at.isoformat(),
        },
        "stage_history": [t.to_dict() for t in stage_history],
        "score": {
            "value": shown_score(score_at(scoring, state.score, now)),
            "top_events": [
                {**t.to_dict(), "current_points": round(t.current_points, 2)}
                for t in top_contributions(scoring, state.score, now)
            ],
        },
        "grade": {
            "grade": state.grade,
            "points": sum(p["points"] or 0.0 for p in fit),
            "rules": fit,
        },
        "content_consumed": content_consumed(state.events),
        "content_received": list(state.received_content),
        "recent_events": [_event(e) for e in reversed(state.events[-RECENT_EVENTS:])],
        "timeline_url": timeline_url,
    }
    if assignment is not None:
        payload["routing"] = {
            **assignment.to_dict(),
            **(deadlines.to_dict() if deadlines is not None else {}),
        }
    return payload


__all__ = [
    "RECENT_EVENTS",
    "ROUTED_GRADES",
    "Assignment",
    "AssignmentKind",
    "BusinessHours",
    "Group",
    "Owner",
    "Pool",
    "Routing",
    "RoutingDefinitionError",
    "SalesError",
    "Sla",
    "SlaDeadlines",
    "Team",
    "Territory",
    "content_consumed",
    "handoff_payload",
    "sla_deadline",
]
