"""Why a contact did or did not get a journey step's message, read from its workflow history.

``stagecoach contact why <contact> <journey>/<step>`` prints the decision chain the
history proves, one ``Link`` per decision, oldest first::

    entry          enrolled (which enrolment, version, when, and what shows it) or never
    branch, split  the decisions the enrolment's trail passed on its way to the step,
    wait_for_event or the one that led elsewhere
    reached        the step itself
    channel        a send the contact had no usable channel for: how long it waited for
                   one (a ``channel:`` timer), or that it was skipped or the journey left
    quiet_hours    a send held by the workflow before any delivery activity (a defer timer)
    consent        the delivery activity's consent and suppression check
    frequency_cap  a send the activity deferred (``not_before``), and the defer timer
    delivery       what the activity returned (sent, duplicate, blocked) or how it failed
    finish         where an enrolment that never reached the step ended
    waiting        where an enrolment still in flight stands (the ``state`` query)
    ignored        an event that arrived while the enrolment was elsewhere (a send held
                   for quiet hours, another wait) and that a later ``wait_for`` waits
                   for in vain (``stagecoach.engine.temporal.ignored``)

The evidence, all of it in the history across continue-as-new runs: the start input
(``ContactInput.enrol``, ``definitions``, the carried ``journeys``), ``enrol`` updates and
their results, every ``contact.deliver`` input (``DeliverRequest``: consent, the
enrolment's ``trail`` and ``enrolment_started_at``) and outcome, activity attempts and
failures, the ``contact.record_enrolment`` input of a finished enrolment, and timer
summaries (``<journey>/<timer id>``). An automatic enrolment leaves no record of its own:
its first send, its finish record or its timers show it. Where the history stops (an
enrolment still waiting), the live state answers, by query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from temporalio.client import Client, WorkflowExecutionStatus

from stagecoach.engine.domain import serial
from stagecoach.engine.domain.contact import CONSENT_EVENTS
from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.domain.journeys import (
    CHANNEL_READY,
    CHANNELS,
    EXITED_NO_CHANNEL,
    NO_CHANNEL_WITHIN,
    SKIPPED_NO_CHANNEL,
    WAITING_FOR_CHANNEL,
    BranchStep,
    JourneyError,
    JourneySpec,
    SplitStep,
    StageEntered,
    WaitForEventStep,
)
from stagecoach.engine.domain.journeys._steps import EXIT_PREFIX
from stagecoach.engine.protocol import (
    CHANNEL_TIMER_PREFIX,
    DELIVER_ACTIVITY,
    LOAD_DEFINITIONS_ACTIVITY,
    OPEN_ACTIVITY,
    RECORD_ENROLMENT_ACTIVITY,
    RECORD_TRANSITION_ACTIVITY,
    contact_workflow_id,
    defer_timer,
)
from stagecoach.engine.protocol.messages import ContactView
from stagecoach.engine.temporal.codec import decode_in_place
from stagecoach.engine.temporal.gateway import contact_view, missing_contact
from stagecoach.engine.temporal.history import (
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    ActivityStarted,
    Record,
    Signalled,
    Started,
    TimerCanceled,
    TimerFired,
    TimerStarted,
    UpdateAccepted,
    UpdateCompleted,
    contact_history,
    failure_text,
)
from stagecoach.engine.temporal.ignored import IgnoredEvent, ignored_events

SENT = "sent"
NOT_SENT = "not_sent"
PENDING = "pending"
"""Not sent yet: held by quiet hours or the frequency cap, in flight, or not reached yet."""
NEVER_ENROLLED = "never_enrolled"
REACHED = "reached"
"""A step that sends nothing (a wait, a branch) was reached."""

JOURNEY_STEP_FORM = "<journey>/<step_id>"

_DECISIONS = ("branch", "split", "wait_for_event")
_BLOCKED_REASONS = {
    "content_exhausted": "no content left that the contact has not received",
    "service_recovery_open": "a promotional item while a service-recovery case is open",
}


class InvalidJourneyStep(StagecoachError):
    """The JOURNEY_STEP argument is not ``journey/step_id`` (or ``journey:step_id``)."""


class UnknownJourneyStep(StagecoachError):
    """The journey, the step or the enrolment asked about is not in the contact's specs."""


@dataclass(frozen=True)
class Link:
    """One link of the decision chain.

    Attributes:
        at: When it happened (server time); ``None`` when only the live state shows it.
        kind: ``entry``, ``branch``, ``split``, ``wait_for_event``, ``reached``,
            ``channel``, ``quiet_hours``, ``consent``, ``frequency_cap``, ``delivery``, ``finish``,
            ``waiting``, ``ignored``, ``workflow`` or ``live``.
        verdict: The link's outcome in a word or two (``enrolled``, ``else``, ``held``,
            ``blocked``, ``sent``...).
        detail: The evidence, for a person.
    """

    at: datetime | None
    kind: str
    verdict: str
    detail: str

    def line(self) -> str:
        """The link as one line of ``stagecoach contact why``."""
        when = self.at.isoformat(timespec="seconds") if self.at else "-"
        return f"{when:<25}  {self.kind:<14} {self.verdict:<10} {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``at`` as ISO 8601 or ``None``)."""
        return serial.encode(self)


@dataclass(frozen=True)
class Why:
    """Why the contact did or did not get the step's message.

    Attributes:
        contact_id: The contact.
        journey: The journey asked about.
        step_id: The step asked about.
        status: ``sent``, ``not_sent``, ``pending``, ``never_enrolled`` or ``reached``.
        answer: The chain in one sentence.
        links: The decision chain, oldest first.
        enrolment: The enrolment explained (the newest, unless one was asked for).
        version: The journey version that enrolment pinned.
    """

    contact_id: str
    journey: str
    step_id: str
    status: str
    answer: str
    links: list[Link]
    enrolment: int | None = None
    version: str = ""

    def lines(self) -> list[str]:
        """The answer, then one line per link."""
        head = f"{self.contact_id} {self.journey}/{self.step_id}: {self.answer}"
        return [head, *(link.line() for link in self.links)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, as ``stagecoach contact why --format json`` prints it."""
        return {
            "contact_id": self.contact_id,
            "journey": self.journey,
            "step": self.step_id,
            "enrolment": self.enrolment,
            "version": self.version,
            "status": self.status,
            "answer": self.answer,
            "links": [link.to_dict() for link in self.links],
        }


def parse_journey_step(text: str) -> tuple[str, str]:
    """Split ``journey/step_id`` (or ``journey:step_id``) into its two parts.

    Raises:
        InvalidJourneyStep: The text is not of that form.
    """
    separator = "/" if "/" in text else ":"
    journey, found, step_id = text.partition(separator)
    journey, step_id = journey.strip(), step_id.strip()
    if not found or not journey or not step_id or separator in step_id:
        raise InvalidJourneyStep(
            f"JOURNEY_STEP {text!r} is not {JOURNEY_STEP_FORM}",
            fix="name the journey and the step, e.g. b2b_nurture/awareness-whitepaper"
            " (journey:step_id works too); 'stagecoach journeys show <journey>' lists the"
            " step ids",
        )
    return journey, step_id


# --- what the history holds ------------------------------------------------------------


@dataclass
class _Activity:
    kind: str
    activity_id: str
    run_id: str
    scheduled_at: datetime
    request: dict[str, Any]
    attempt: int = 0
    last_failure: str = ""
    ended_at: datetime | None = None
    result: dict[str, Any] | None = None
    failure: str = ""
    pending: str = ""
    """Attempt and last failure of an activity still running or retrying (describe)."""


@dataclass
class _Timer:
    journey: str
    timer_id: str
    run_id: str
    started_at: datetime
    fire_at: datetime
    fired_at: datetime | None = None
    cancelled_at: datetime | None = None


@dataclass
class _EnrolRequest:
    """An explicit enrolment request: the start input's or an ``enrol`` update's."""

    at: datetime
    journey: str
    via: str
    time_scale: float
    result: dict[str, Any] | None = None


@dataclass
class _History:
    runs: int = 0
    specs: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    published: dict[str, dict[str, Any]] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    activities: list[_Activity] = field(default_factory=list)
    timers: list[_Timer] = field(default_factory=list)
    enrol_requests: list[_EnrolRequest] = field(default_factory=list)
    carried: list[tuple[datetime, dict[str, Any]]] = field(default_factory=list)
    stages: list[tuple[datetime, str]] = field(default_factory=list)
    consent: list[tuple[datetime, str, bool, str]] = field(default_factory=list)
    zones: list[tuple[datetime, str]] = field(default_factory=list)
    addresses: list[tuple[datetime, str, str]] = field(default_factory=list)

    def add_definitions(self, definitions: dict[str, Any], at: datetime) -> None:
        journeys = definitions.get("journeys") or {}
        for name, raw in journeys.items():
            self.specs.setdefault(name, {})[str(raw.get("version", ""))] = raw
        self.published = dict(journeys)
        self.policy = dict(definitions.get("policy") or {})
        if not self.stages:
            stages = (definitions.get("pipeline") or {}).get("stages") or [{}]
            if stages[0].get("name"):
                self.stages.append((at, str(stages[0]["name"])))

    def observe(self, at: datetime, message: dict[str, Any]) -> None:
        """An event the contact sent: consent and time-zone changes."""
        kind = str(message.get("type", ""))
        traits = message.get("traits") or {}
        consent = traits.get("consent")
        if isinstance(consent, dict):
            for channel, allowed in consent.items():
                cause = f"{kind} with traits.consent.{channel}={allowed}"
                self.consent.append((at, str(channel), bool(allowed), cause))
        if kind in CONSENT_EVENTS:
            channel, allowed = CONSENT_EVENTS[kind]
            self.consent.append((at, channel, allowed, kind))
        if traits.get("timezone"):
            self.zones.append((at, str(traits["timezone"])))
        for channel, key in (("email", "email"), ("wechat", "wechat_openid")):
            if traits.get(key):
                self.addresses.append((at, channel, str(traits[key])))


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _read(records: Iterable[Record], runs: int) -> _History:
    """Everything ``why`` needs from the history's records, oldest first."""
    history = _History(runs=runs)
    activities: dict[ActivityScheduled | None, _Activity] = {}
    timers: dict[TimerStarted | None, _Timer] = {}
    asks: dict[UpdateAccepted | None, _EnrolRequest] = {}
    for rec in records:
        at = rec.at
        if isinstance(rec, Started):
            inp = rec.input
            if inp.get("definitions"):
                history.add_definitions(inp["definitions"], at)
            for carried in inp.get("journeys") or []:
                spec = carried.get("spec") or {}
                name = str(spec.get("name") or carried.get("cursor", {}).get("journey", ""))
                history.specs.setdefault(name, {})[str(spec.get("version", ""))] = spec
                history.carried.append((at, carried))
            enrol = inp.get("enrol")
            if enrol and not rec.continued_from:
                via = "the start input (ContactInput.enrol)"
                history.enrol_requests.append(
                    _EnrolRequest(at, str(enrol.get("journey")), via, enrol.get("time_scale", 1.0))
                )
                if enrol.get("event"):
                    history.observe(at, enrol["event"])
        elif isinstance(rec, Signalled):
            for each in rec.events():
                history.observe(at, each)
        elif isinstance(rec, UpdateAccepted):
            request = rec.request
            if request.get("event"):
                history.observe(at, request["event"])
            ask = _EnrolRequest(
                at, str(request.get("journey")), "the enrol update", request.get("time_scale", 1.0)
            )
            asks[rec] = ask
            history.enrol_requests.append(ask)
        elif isinstance(rec, UpdateCompleted):
            found = asks.get(rec.update)
            if found is not None:
                failed = rec.failure is not None
                found.result = {"accepted": False, "reason": rec.failure} if failed else rec.result
        elif isinstance(rec, ActivityScheduled):
            act = _Activity(rec.name, rec.activity_id, rec.run_id, at, rec.input)
            activities[rec] = act
            history.activities.append(act)
            if rec.name == RECORD_TRANSITION_ACTIVITY:
                to_stage = (rec.input.get("transition") or {}).get("to_stage")
                if to_stage:
                    history.stages.append((at, str(to_stage)))
        elif isinstance(rec, ActivityStarted):
            act_started = activities.get(rec.activity)
            if act_started is not None:
                act_started.attempt = rec.attempt
                if rec.last_failure:
                    act_started.last_failure = rec.last_failure
        elif isinstance(rec, ActivityCompleted):
            act_done = activities.get(rec.activity)
            if act_done is not None:
                act_done.ended_at, act_done.result = at, rec.result
                if act_done.kind in (OPEN_ACTIVITY, LOAD_DEFINITIONS_ACTIVITY):
                    history.add_definitions(act_done.result, at)
        elif isinstance(rec, ActivityFailed):
            act_failed = activities.get(rec.activity)
            if act_failed is not None:
                act_failed.ended_at, act_failed.failure = at, rec.text
        elif isinstance(rec, TimerStarted):
            timer_id = rec.name or rec.timer_id
            armed = _Timer(rec.namespace, timer_id, rec.run_id, at, rec.fire_at)
            timers[rec] = armed
            history.timers.append(armed)
        elif isinstance(rec, TimerFired):
            fired = timers.get(rec.timer)
            if fired is not None:
                fired.fired_at = at
        elif isinstance(rec, TimerCanceled):
            cancelled = timers.get(rec.timer)
            if cancelled is not None:
                cancelled.cancelled_at = at
    return history


# --- one enrolment's evidence ------------------------------------------------------------


@dataclass
class _Enrolment:
    number: int
    version: str = ""
    started_at: datetime | None = None
    first_seen: datetime | None = None
    time_scale: float = 1.0
    via: str = ""
    evidence: list[str] = field(default_factory=list)
    trail: list[dict[str, Any]] = field(default_factory=list)
    finished: dict[str, Any] | None = None
    live: dict[str, Any] | None = None
    ended_at: datetime | None = None
    """Ended by the live state, before its finish record reached the history."""

    def saw(self, at: datetime | None, evidence: str) -> None:
        if at is not None and (self.first_seen is None or at < self.first_seen):
            self.first_seen = at
        if evidence not in self.evidence:
            self.evidence.append(evidence)

    def longer_trail(self, trail: Iterable[dict[str, Any]] | None) -> None:
        # The trail only grows: the longest one seen is the most recent.
        candidate = list(trail or [])
        if len(candidate) > len(self.trail):
            self.trail = candidate

    @property
    def since(self) -> datetime | None:
        return self.started_at or self.first_seen


def _enrolments(history: _History, journey: str, view: ContactView | None) -> list[_Enrolment]:
    found: dict[int, _Enrolment] = {}

    def get(number: int) -> _Enrolment:
        return found.setdefault(number, _Enrolment(number))

    for ask in history.enrol_requests:
        if ask.journey != journey:
            continue
        result = ask.result
        if ask.via.startswith("the start input"):
            # A new contact's workflow starts with it: its first enrolment.
            result = {"accepted": True, "enrolment": 1}
        if result and result.get("accepted"):
            e = get(int(result.get("enrolment") or 1))
            e.via, e.time_scale = ask.via, float(ask.time_scale)
            e.version = e.version or str(result.get("version") or "")
            e.saw(ask.at, ask.via)
    for act in history.activities:
        req = act.request
        if act.kind not in (DELIVER_ACTIVITY, RECORD_ENROLMENT_ACTIVITY):
            continue
        if req.get("journey") != journey:
            continue
        e = get(int(req.get("enrolment") or 1))
        e.longer_trail(req.get("trail"))
        if act.kind == DELIVER_ACTIVITY:
            e.version = e.version or str(req.get("journey_version") or "")
            e.started_at = e.started_at or _when(req.get("enrolment_started_at"))
            e.time_scale = float(req.get("time_scale") or e.time_scale)
            e.saw(act.scheduled_at, "the first contact.deliver input (enrolment_started_at)")
        else:
            e.version = e.version or str(req.get("version") or "")
            e.started_at = e.started_at or _when(req.get("started_at"))
            e.finished = {**req, "recorded_at": act.scheduled_at}
            e.saw(act.scheduled_at, "the contact.record_enrolment input (started_at)")
    for at, carried in history.carried:
        cursor = carried.get("cursor") or {}
        if cursor.get("journey") != journey:
            continue
        e = get(int(cursor.get("enrolment") or 1))
        e.version = e.version or str(cursor.get("version") or "")
        e.started_at = e.started_at or _when(carried.get("origin"))
        e.time_scale = float(carried.get("time_scale") or e.time_scale)
        e.longer_trail(carried.get("trail"))
        e.saw(at, "the enrolment carried into a continued run (ContactInput.journeys)")
    if view is not None:
        for live in view.journeys:
            if live.get("journey") == journey:
                e = get(int(live.get("enrolment") or 1))
                e.version = e.version or str(live.get("version") or "")
                e.time_scale = float(live.get("time_scale") or e.time_scale)
                e.live = live
                e.longer_trail(live.get("trail"))
                e.saw(None, "the live state (state query)")
        record = (view.state.get("journeys") or {}).get(journey) or {}
        last = found.get(int(record.get("enrolments") or 0))
        if last is not None and not record.get("active") and last.finished is None:
            last.ended_at = _when(record.get("last_ended_at"))
    timers = [t for t in history.timers if t.journey == journey]
    if timers and not found:
        # Only timers show it: an enrolment whose number the history does not hold.
        get(0)
    for timer in timers:
        owner = _owner(found.values(), timer.started_at)
        if owner is not None:
            owner.saw(timer.started_at, f"a {journey} timer ({timer.timer_id})")
    return [found[n] for n in sorted(found)]


def _owner(enrolments: Iterable[_Enrolment], at: datetime) -> _Enrolment | None:
    """The enrolment in flight at ``at``: the newest one begun by then."""
    ordered = sorted(enrolments, key=lambda e: e.number)
    owner = ordered[0] if ordered else None
    for e in ordered:
        if e.since is not None and e.since <= at:
            owner = e
    return owner


# --- the spec ----------------------------------------------------------------------------


def _spec_for(history: _History, journey: str, step_id: str, version: str | None) -> dict[str, Any]:
    """The raw spec to read ``step_id`` in; errors name what is known instead."""
    if not history.specs:
        raise UnknownJourneyStep(
            "the contact's history holds no journey definitions yet",
            fix="ask again once its workflow has opened the contact (contact.open)",
        )
    versions = history.specs.get(journey)
    if not versions:
        known = sorted(set(history.specs) | set(history.published))
        raise UnknownJourneyStep(
            f"no journey {journey!r} in this contact's definitions",
            fix=f"use one of: {', '.join(known) or '(none recorded)'}",
        )
    raw = versions.get(version or "") or history.published.get(journey)
    raw = raw or next(reversed(versions.values()))
    if all(step_id not in _step_ids(r) for r in versions.values()):
        raise UnknownJourneyStep(
            f"journey {journey!r} has no step {step_id!r}",
            fix=f"use one of its step ids: {', '.join(_step_ids(raw))}",
        )
    return raw


def _step_ids(raw: dict[str, Any]) -> list[str]:
    return [str(s.get("id")) for s in raw.get("steps") or []]


def _step(raw: dict[str, Any], step_id: str) -> dict[str, Any] | None:
    return next((s for s in raw.get("steps") or [] if s.get("id") == step_id), None)


def _compiled(raw: dict[str, Any]) -> JourneySpec | None:
    try:
        return JourneySpec.from_dict(raw)
    except (JourneyError, KeyError, TypeError, ValueError):
        return None  # a spec this code cannot rebuild: no reachability, the trail still reads


def _reach(spec: JourneySpec, start: str) -> set[str]:
    """Step ids reachable from ``start``, itself included."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        current = todo.pop()
        if current in seen or current.startswith("$"):
            continue
        seen.add(current)
        try:
            todo.extend(target for _, target in spec.step(current).edges())
        except KeyError:
            continue
    return seen


def _chosen(spec: JourneySpec, passage: dict[str, Any]) -> tuple[str | None, list[str]]:
    """The target a decision passage took, and the targets it did not."""
    try:
        step = spec.step(str(passage.get("step")))
    except KeyError:
        return None, []
    outcome = str(passage.get("outcome") or "")
    targets = [target for _, target in step.edges()]
    chosen: str | None = None
    if isinstance(step, BranchStep) and "-> " in outcome:
        chosen = outcome.split("-> ", 1)[1]
    elif isinstance(step, SplitStep):
        chosen = outcome if outcome.startswith("$") or outcome in targets else None
        if chosen is None and outcome:
            chosen = EXIT_PREFIX + outcome  # an exiting arm is named by its reason
    elif isinstance(step, WaitForEventStep) and outcome:
        chosen = step.on_timeout if outcome == "timed out" else step.next
    return chosen, [t for t in targets if t != chosen]


def _target_text(target: str) -> str:
    if target.startswith(EXIT_PREFIX):
        return f"exit ({target.removeprefix(EXIT_PREFIX)})"
    return "the end" if target.startswith("$") else target


def _entry_text(spec: JourneySpec | None) -> str:
    if spec is None or not spec.entry:
        return "only by explicit enrolment"
    return " or ".join(
        f"stage {t.stage}" if isinstance(t, StageEntered) else f"event {t.matcher.type}"
        for t in spec.entry
    )


# --- small words -----------------------------------------------------------------------


def _iso(at: datetime | None) -> str:
    return at.isoformat(timespec="seconds") if at else "?"


def _short(version: str) -> str:
    return version[:12] if version else "?"


def _span(delta: timedelta) -> str:
    seconds = max(int(delta.total_seconds()), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours else []
    parts += [f"{minutes}m"] if minutes and not days else []
    parts += [f"{secs}s"] if secs and not days and not hours else []
    return "".join(parts) or "0s"


def _zone_at(history: _History, at: datetime) -> str:
    zone = "UTC"
    for when, name in history.zones:
        if when <= at:
            zone = name
    return zone


def _local(at: datetime, zone: str) -> str:
    try:
        tz: ZoneInfo = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo("UTC")
    return at.astimezone(tz).strftime("%H:%M")


def _consent_cause(history: _History, channel: str, before: datetime) -> str:
    cause = ""
    for at, ch, allowed, what in history.consent:
        if ch == channel and at <= before:
            word = "given" if allowed else "withdrawn"
            cause = f"{channel} consent {word} by {what} at {_iso(at)}"
    return cause


# --- the chain ---------------------------------------------------------------------------


@dataclass
class _Chain:
    links: list[Link] = field(default_factory=list)
    status: str = ""
    answer: str = ""
    pending: str = ""
    """What an unfinished send waits for, for the answer when the workflow is gone."""

    def add(self, at: datetime | None, kind: str, verdict: str, detail: str) -> None:
        self.links.append(Link(at, kind, verdict, detail))

    def settle(self, status: str, answer: str) -> None:
        self.status, self.answer = status, answer


async def contact_why(
    client: Client,
    contact_id: str,
    journey: str,
    step_id: str,
    *,
    enrolment: int | None = None,
    query_timeout: float = 10.0,
) -> Why:
    """Why the contact did or did not get ``journey``/``step_id``, from its history.

    Args:
        client: A client of the contacts' namespace; its data converter decodes payloads.
        contact_id: The contact.
        journey: Journey name.
        step_id: Step id in that journey.
        enrolment: Explain this enrolment (default: the newest).
        query_timeout: Seconds to wait for the live state, asked only while an
            enrolment is unfinished or missing from the history.

    Raises:
        ContactNotFound: No workflow for this contact.
        UnknownJourneyStep: The journey, the step or the enrolment is unknown.
    """
    handle = client.get_workflow_handle(contact_workflow_id(contact_id))
    with missing_contact(contact_id):
        description = await handle.describe()
        read = await contact_history(client, contact_id, newest_run_id=description.run_id)
    history = _read(read.records(), len(read.runs))
    newest = read.newest_run_id
    await decode_in_place(description.raw_description, client.data_converter)
    _pending_attempts(history, description.raw_description.pending_activities, newest)
    _spec_for(history, journey, step_id, None)  # unknown journey or step: say so first
    running = description.status == WorkflowExecutionStatus.RUNNING

    view: ContactView | None = None
    queried = False
    enrolments = _enrolments(history, journey, None)
    chosen = _choose(enrolments, enrolment, journey)
    if running and (chosen is None or chosen.finished is None):
        queried = True
        view = await _live(client, contact_id, query_timeout)
        enrolments = _enrolments(history, journey, view)
        chosen = _choose(enrolments, enrolment, journey)

    chain = _Chain()
    if chosen is None:
        _never(chain, history, journey, view, queried)
        return Why(contact_id, journey, step_id, chain.status, chain.answer, chain.links)
    raw = _spec_for(history, journey, step_id, chosen.version)
    _explain(chain, history, journey, step_id, raw, chosen, enrolments)
    _ignored(
        chain, ignored_events(read.records(), view, closed=not running, journey=journey), chosen
    )
    if queried and view is None:
        chain.add(None, "live", "unavailable", "no worker answered the state query in time")
    if chain.status == PENDING and not running:
        closed = description.close_time
        state = description.status.name.lower() if description.status else "closed"
        chain.add(closed, "workflow", state, "the contact's workflow ended: nothing more happens")
        chain.settle(NOT_SENT, f"not sent: the contact's workflow {state} while {chain.pending}")
    return Why(
        contact_id,
        journey,
        step_id,
        chain.status,
        chain.answer,
        chain.links,
        enrolment=chosen.number or None,
        version=chosen.version,
    )


def _ignored(chain: _Chain, ignored: list[IgnoredEvent], e: _Enrolment) -> None:
    """An ``ignored`` link per event the enrolment ignored, where it arrived in the chain:
    why a later wait never saw an event the contact did send."""
    for item in ignored:
        if e.number and item.enrolment and item.enrolment != e.number:
            continue
        link = Link(item.at, "ignored", "ignored", item.text())
        where = next(
            (n for n, old in enumerate(chain.links) if old.at is None or old.at > item.at),
            len(chain.links),
        )
        chain.links.insert(where, link)


def _pending_attempts(history: _History, pending: Sequence[Any], run_id: str) -> None:
    """Attempts of activities still running or backing off, from ``describe``."""
    by_id = {p.activity_id: p for p in pending}
    for act in history.activities:
        info = by_id.get(act.activity_id)
        if act.run_id == run_id and act.ended_at is None and info is not None:
            last = (
                f", last failure {failure_text(info.last_failure)}"
                if info.HasField("last_failure")
                else ""
            )
            act.pending = f"attempt {info.attempt}{last}"


def _choose(enrolments: list[_Enrolment], number: int | None, journey: str) -> _Enrolment | None:
    if number is None:
        return enrolments[-1] if enrolments else None
    for e in enrolments:
        if e.number == number:
            return e
    known = ", ".join(f"#{e.number}" for e in enrolments) or "none"
    raise UnknownJourneyStep(
        f"no enrolment #{number} in {journey!r} for this contact",
        fix=f"ask about one it has ({known}), or leave --enrolment out for the newest",
    )


async def _live(client: Client, contact_id: str, seconds: float) -> ContactView | None:
    try:
        async with asyncio.timeout(seconds):
            return await contact_view(client, contact_id)
    except Exception:  # no worker, a query that failed: the history alone still answers
        return None


def _stage(history: _History, view: ContactView | None) -> tuple[str, datetime | None]:
    if view is not None:
        since = _when(view.state.get("stage_entered_at"))
        return view.stage, since
    if history.stages:
        at, stage = history.stages[-1]
        return stage, at
    return "?", None


def _never(
    chain: _Chain, history: _History, journey: str, view: ContactView | None, queried: bool
) -> None:
    for ask in history.enrol_requests:
        if ask.journey == journey and ask.result and not ask.result.get("accepted"):
            reason = ask.result.get("reason") or "refused"
            chain.add(ask.at, "entry", "refused", f"{ask.via} for {journey} refused: {reason}")
    raw = history.published.get(journey) or next(reversed(history.specs[journey].values()))
    stage, since = _stage(history, view)
    where = f"{history.runs} run(s) of history" + (" and the live state" if view else "")
    chain.add(
        None,
        "entry",
        "never",
        f"no enrolment in {journey} in {where}; {journey} is entered on"
        f" {_entry_text(_compiled(raw))}; the contact is at stage {stage}"
        + (f" (since {_iso(since)})" if since else ""),
    )
    if queried and view is None:
        chain.add(None, "live", "unavailable", "no worker answered the state query in time")
    chain.settle(
        NEVER_ENROLLED, f"not sent: never enrolled in {journey} (the contact is at stage {stage})"
    )


def _explain(
    chain: _Chain,
    history: _History,
    journey: str,
    step_id: str,
    raw: dict[str, Any],
    e: _Enrolment,
    enrolments: list[_Enrolment],
) -> None:
    spec = _compiled(raw)
    label = f"#{e.number}" if e.number else "(number not in history)"
    scale = f", rehearsal at time scale {e.time_scale:g}" if e.time_scale != 1.0 else ""
    if e.via:
        how = f"via {e.via}"
    else:
        how = f"automatically ({journey} is entered on {_entry_text(spec)})"
    # The best evidence first; the live state alone is backed by the journey's timers.
    evidence = e.evidence[0] if e.evidence else "none"
    if evidence.startswith("the live state") and len(e.evidence) > 1:
        evidence += f" and {e.evidence[1]}"
    chain.add(
        e.since,
        "entry",
        "enrolled",
        f"enrolment {label} of {journey} v{_short(e.version)} {how}{scale}; evidence: {evidence}",
    )
    step = _step(raw, step_id)
    if step is None:
        chain.add(None, "reached", "no", f"version {_short(e.version)} has no step {step_id}")
        chain.settle(
            NOT_SENT,
            f"not sent: enrolment {label} runs {journey} v{_short(e.version)}, which has no"
            f" step {step_id}",
        )
        return
    kind = str(step.get("kind"))
    trail = e.trail
    entries = [
        i
        for i, p in enumerate(trail)
        if p.get("step") == step_id
        and (not p.get("outcome") or p.get("kind") not in ("send", "handoff", "wait_for_event"))
    ]
    upto = entries[-1] if entries else len(trail)
    next_enrolment = next((x for x in enrolments if x.number > e.number), None)
    until = next_enrolment.since if next_enrolment else None
    delivers = [
        a
        for a in history.activities
        if a.kind == DELIVER_ACTIVITY
        and a.request.get("journey") == journey
        and a.request.get("step_id") == step_id
        and int(a.request.get("enrolment") or 1) == (e.number or 1)
    ]
    if delivers:
        # A step visited again (a loop) sends under a new key: explain the newest visit.
        newest_key = delivers[-1].request.get("idempotency_key")
        delivers = [a for a in delivers if a.request.get("idempotency_key") == newest_key]
    visit_at = _when(trail[upto].get("at")) if entries else None
    defers = [
        t
        for t in history.timers
        if t.journey == journey
        and t.timer_id == defer_timer(step_id)
        and (e.since is None or t.started_at >= e.since)
        and (until is None or t.started_at < until)
        and (visit_at is None or t.started_at >= visit_at)
    ]
    waits = [
        t
        for t in history.timers
        if t.journey == journey
        and t.timer_id.startswith(f"{step_id}:")
        and (e.since is None or t.started_at >= e.since)
        and (until is None or t.started_at < until)
    ]
    channel_waits = [
        t
        for t in history.timers
        if t.journey == journey
        and t.timer_id.startswith(f"{CHANNEL_TIMER_PREFIX}{step_id}:")
        and (e.since is None or t.started_at >= e.since)
        and (until is None or t.started_at < until)
        and (visit_at is None or t.started_at >= visit_at)
    ]
    live = e.live or {}
    at_step = live.get("step") == step_id
    reached = bool(entries or delivers or defers or waits or channel_waits or at_step)

    deciding: tuple[dict[str, Any], str] | None = None
    for passage in trail[:upto]:
        if passage.get("kind") not in _DECISIONS or not passage.get("outcome"):
            continue
        detail = f"{passage.get('step')}: {passage.get('outcome')}"
        if not reached and deciding is None and spec is not None:
            target, others = _chosen(spec, passage)
            if (
                target is not None
                and step_id not in _reach(spec, target)
                and any(step_id in _reach(spec, o) for o in others)
            ):
                deciding = (passage, target)
                detail += f"; {step_id} cannot be reached from {_target_text(target)}"
        chain.add(_when(passage.get("at")), str(passage.get("kind")), _verdict(passage), detail)

    if not reached:
        _not_reached(chain, journey, step_id, e, label, deciding)
        return

    first_at = visit_at or min(
        [a.scheduled_at for a in delivers] + [t.started_at for t in defers + waits[-1:]],
        default=None,
    )
    chain.add(first_at, "reached", "reached", f"{kind} step {step_id}{_what(step)}")
    if kind != "send":
        outcome = next(
            (
                p.get("outcome")
                for p in trail[upto:]
                if p.get("step") == step_id and p.get("outcome")
            ),
            "",
        )
        if not outcome and at_step and live.get("waiting"):
            outcome = _waiting_text(live["waiting"])
        chain.settle(
            REACHED,
            f"reached: {kind} step {step_id} at {_iso(first_at)}"
            + (f" ({outcome})" if outcome else ""),
        )
        return
    later = trail[upto:]
    waited = _channel_wait(chain, history, step, later, channel_waits, e)
    _delivery(chain, history, step_id, later, delivers, defers, e, label, waited)


def _verdict(passage: dict[str, Any]) -> str:
    outcome = str(passage.get("outcome") or "")
    kind = passage.get("kind")
    if kind == "branch":
        return outcome.split(" ", 1)[0]
    if kind == "split":
        return "chose"
    return "matched" if outcome.startswith("matched") else outcome


def _what(step: dict[str, Any]) -> str:
    if step.get("kind") != "send":
        return ""
    content = step.get("content")
    what = content if isinstance(content, str) else "the next best item"
    channel = step.get("channel") or "preferred"
    return f": {what} via " + ("the preferred channel" if channel == "preferred" else channel)


def _waiting_text(waiting: dict[str, Any]) -> str:
    kind = waiting.get("kind")
    what = {
        "event": "waiting for an event",
        "timer": "waiting for a timer",
        "delivery": "waiting for its delivery",
        "handoff": "waiting for the hand-off",
    }.get(str(kind), f"waiting ({kind})")
    deadline = _when(waiting.get("deadline"))
    return what + (f" until {_iso(deadline)}" if deadline else "")


def _not_reached(
    chain: _Chain,
    journey: str,
    step_id: str,
    e: _Enrolment,
    label: str,
    deciding: tuple[dict[str, Any], str] | None,
) -> None:
    if deciding is not None:
        passage, target = deciding
        step, kind = passage.get("step"), passage.get("kind")
        if kind == "branch":
            because = f"the branch {step} went {passage.get('outcome')}"
        elif kind == "split":
            because = f"the split {step} chose {_target_text(target)}"
        else:
            because = f"the wait {step} {passage.get('outcome')} -> {_target_text(target)}"
        chain.settle(NOT_SENT, f"not sent: {because}")
    finished = e.finished
    live = e.live
    if finished is not None:
        at = _when(finished.get("finished_at")) or finished.get("recorded_at")
        status, reason = finished.get("status"), finished.get("reason")
        chain.add(at, "finish", str(status), f"enrolment {label} {status}: {reason}")
        if deciding is None:
            chain.settle(
                NOT_SENT,
                f"not sent: enrolment {label} {status} ({reason}) at {_iso(at)} before"
                f" reaching {step_id}",
            )
    elif e.ended_at is not None:
        detail = f"enrolment {label} ended (the live state; its finish record is on its way)"
        chain.add(e.ended_at, "finish", "ended", detail)
        if deciding is None:
            chain.settle(
                NOT_SENT,
                f"not sent: enrolment {label} ended at {_iso(e.ended_at)} before reaching"
                f" {step_id}",
            )
    elif live is not None:
        waiting = live.get("waiting") or {}
        where = live.get("step")
        how = _waiting_text(waiting) if waiting else "running"
        verdict = str(waiting.get("kind", "running"))
        chain.add(None, "waiting", verdict, f"enrolment {label} is at {where}, {how}")
        if deciding is None:
            chain.pending = f"enrolment {label} was at {where}, {how}"
            chain.settle(PENDING, f"not sent yet: enrolment {label} is at {where}, {how}")
    elif deciding is None:
        chain.pending = f"the enrolment had not reached {step_id}"
        chain.settle(
            PENDING, f"not sent yet: {step_id} not reached; the history shows no further step"
        )


def _delivery(
    chain: _Chain,
    history: _History,
    step_id: str,
    later: list[dict[str, Any]],
    delivers: list[_Activity],
    defers: list[_Timer],
    e: _Enrolment,
    label: str,
    waited: str | None = None,
) -> None:
    """Quiet hours, consent, the frequency cap and the result, in the order they happened.
    ``waited``: how a wait for a channel ended, when the send had one (``_channel_wait``)."""
    events: list[tuple[datetime, int, _Activity | _Timer]] = [
        (a.scheduled_at, 0, a) for a in delivers
    ] + [(t.started_at, 1, t) for t in defers]
    events.sort(key=lambda item: (item[0], item[1]))
    consented: bool | None = None
    reason_of: dict[int, str] = {}
    last: _Activity | _Timer | None = None
    for n, (_, _, item) in enumerate(events):
        last = item
        if isinstance(item, _Timer):
            reason_of[n] = _defer_reason(events[:n], reason_of)
            _defer_link(chain, history, item, reason_of[n])
            continue
        req, outcome = item.request, item.result or {}
        channel = str(req.get("channel"))
        status = str(outcome.get("status") or "")
        reason = str(outcome.get("reason") or "")
        cause = _consent_cause(history, channel, item.scheduled_at)
        if reason.startswith(("no_consent:", "suppressed:")):
            consented = False
            detail = (
                f"no consent for {channel} ({reason}); {cause or 'never given'}"
                if reason.startswith("no_consent:")
                else f"{req.get('address')} is suppressed for {channel} ({reason})"
            )
            chain.add(item.ended_at, "consent", "blocked", detail)
            continue
        if consented is not bool(req.get("consented", True)):
            consented = bool(req.get("consented", True))
            word = "consented" if consented else "no consent"
            chain.add(
                item.scheduled_at,
                "consent",
                "ok" if consented else "blocked",
                f"{word} to {channel}" + (f" ({cause})" if cause else ""),
            )
        tries = _tries(item)
        if status == "deferred":
            policy = history.policy
            cap = policy.get("frequency_cap")
            window = timedelta(seconds=float(policy.get("frequency_window_seconds") or 0))
            rule = f"; the cap is {cap} per {_span(window)}" if cap else ""
            chain.add(
                item.ended_at,
                "frequency_cap",
                "deferred",
                f"contact.deliver answered deferred ({reason or 'frequency_cap'}): not before"
                f" {_iso(_when(outcome.get('not_before')))}{rule}",
            )
        elif status in ("sent", "duplicate"):
            version = str(outcome.get("content_version") or "")[:12]
            what = f"{outcome.get('content_id')}" + (f" v{version}" if version else "")
            provider = outcome.get("provider_message_id")
            chain.add(
                item.ended_at,
                "delivery",
                status,
                f"{what} via {channel} to {req.get('address')}"
                + (f", provider message {provider}" if provider else "")
                + (
                    " (already sent under this key: not sent twice)"
                    if status == "duplicate"
                    else ""
                )
                + tries,
            )
        elif status == "blocked":
            explained = _BLOCKED_REASONS.get(reason, reason)
            chain.add(item.ended_at, "delivery", "blocked", f"{reason}: {explained}{tries}")
        elif item.failure:
            chain.add(item.ended_at, "delivery", "failed", f"{item.failure}{tries}")
        elif item.ended_at is None:
            chain.add(
                item.scheduled_at, "delivery", "in flight", item.pending or "attempt 1 running"
            )
    reason = reason_of.get(len(events) - 1, "")
    if last is None and waited is not None and waited != "ready":
        chain.settle(NOT_SENT if waited != "waiting" else PENDING, chain.answer)
        return
    _settle_delivery(chain, history, step_id, later, last, reason, e, label)


def _channel_wait(
    chain: _Chain,
    history: _History,
    step: dict[str, Any],
    later: list[dict[str, Any]],
    timers: list[_Timer],
    e: _Enrolment,
) -> str | None:
    """The link for a send the contact had no usable channel for, and how that ended:
    ``waiting``, ``ready`` (then sent), ``gave_up`` (the limit passed), ``skipped`` or
    ``exited``; None when the send never lacked one. Sets the answer for all but
    ``ready``, which the delivery's links go on to explain."""
    step_id = str(step.get("id"))
    outcomes = [
        (p, str(p.get("outcome") or ""))
        for p in later
        if p.get("step") == step_id and p.get("kind") == "send"
    ]
    lacking = (WAITING_FOR_CHANNEL, SKIPPED_NO_CHANNEL, EXITED_NO_CHANNEL)
    found = next(((p, o) for p, o in outcomes if o.startswith(lacking)), None)
    timer = timers[-1] if timers else None
    if found is None and timer is None:
        return None
    wanted = str(step.get("channel") or "preferred")
    error = f"no_address:{wanted}"
    at = timer.started_at if timer else None
    outcome = WAITING_FOR_CHANNEL
    if found is not None:
        passage, outcome = found
        at = _when(passage.get("at")) or at
        prefix = next(p for p in lacking if outcome.startswith(p))
        error = outcome.removeprefix(prefix).removeprefix(": ") or error
    reasons, _ = _no_channel(history, error.split(":", 1)[-1], at)
    detail = f"no channel the contact may be sent on ({error}): {reasons}"
    if outcome.startswith(SKIPPED_NO_CHANNEL):
        chain.add(at, "channel", "skipped", f"{detail}; the journey skips the send without one")
        chain.answer = f"not sent: skipped, {detail}"
        return "skipped"
    if outcome.startswith(EXITED_NO_CHANNEL):
        reason = (e.finished or {}).get("reason") or "exit"
        chain.add(at, "channel", "exited", f"{detail}; the journey exits without one ({reason})")
        chain.answer = f"not sent: {detail}; the journey exited ({reason}) at {_iso(at)}"
        return "exited"
    ready = next((p for p, o in outcomes if o == CHANNEL_READY), None)
    gave_up = next((o for _, o in outcomes if o.startswith(NO_CHANNEL_WITHIN)), "")
    if ready is not None or (timer is not None and timer.cancelled_at is not None):
        came = _when(ready.get("at")) if ready else None
        came = came or (timer.cancelled_at if timer else None)
        chain.add(at, "channel", "waited", f"{detail}; waited until one came at {_iso(came)}")
        return "ready"
    deadline = (
        timer.fire_at if timer else _when(((e.live or {}).get("waiting") or {}).get("deadline"))
    )
    if gave_up or (timer is not None and timer.fired_at is not None):
        ended = timer.fired_at if timer else None
        limit = gave_up or f"{NO_CHANNEL_WITHIN} {_span(deadline - at) if deadline and at else '?'}"
        chain.add(ended, "channel", "gave up", f"{detail}; {limit}: the journey exits (no_channel)")
        chain.answer = f"not sent: {limit} ({reasons}); the enrolment exited at {_iso(ended)}"
        return "gave_up"
    chain.add(at, "channel", "waiting", f"{detail}; waiting for one until {_iso(deadline)}")
    chain.pending = f"waiting for a channel until {_iso(deadline)}"
    chain.answer = f"not sent yet: waiting for a channel until {_iso(deadline)}: {reasons}"
    return "waiting"


def _no_channel(history: _History, wanted: str, at: datetime | None) -> tuple[str, bool]:
    """Why the workflow found no address it may use on ``wanted`` (or on any channel, for
    ``preferred``), and whether withdrawn consent is the reason."""
    until = at or datetime.max.replace(tzinfo=UTC)
    reasons: list[str] = []
    by_consent = False
    for channel in CHANNELS if wanted == "preferred" else (wanted,):
        address = any(ch == channel and when <= until for when, ch, _ in history.addresses)
        cause = _consent_cause(history, channel, until)
        if not address:
            reasons.append(f"no {channel} address")
        elif "withdrawn" in cause:
            reasons.append(cause)
            by_consent = True
        elif channel != "email" and not cause:
            reasons.append(f"no {channel} consent (a follow)")
    return "; ".join(reasons) or "no usable address", by_consent


def _tries(act: _Activity) -> str:
    if act.attempt <= 1:
        return ""
    last = f"; last failure before it: {act.last_failure}" if act.last_failure else ""
    return f"; attempt {act.attempt} ({act.attempt - 1} retried){last}"


def _defer_reason(
    before: list[tuple[datetime, int, _Activity | _Timer]], known: dict[int, str]
) -> str:
    """Frequency cap when the latest thing before this timer was a deferred delivery;
    the same reason as an unfired timer it re-arms (a continued run); else quiet hours,
    which the workflow checks before it calls the activity."""
    for n in range(len(before) - 1, -1, -1):
        item = before[n][2]
        if isinstance(item, _Activity):
            deferred = (item.result or {}).get("status") == "deferred"
            return "frequency_cap" if deferred else "quiet_hours"
        if item.fired_at is None and item.cancelled_at is None:
            return known.get(n, "quiet_hours")
        return "quiet_hours"
    return "quiet_hours"


def _defer_link(chain: _Chain, history: _History, timer: _Timer, reason: str) -> None:
    span = _span(timer.fire_at - timer.started_at)
    if timer.fired_at is not None:
        after = f"; fired at {_iso(timer.fired_at)}"
    elif timer.cancelled_at is not None:
        after = f"; cancelled at {_iso(timer.cancelled_at)}"
    else:
        after = ""
    if reason == "quiet_hours":
        zone = _zone_at(history, timer.started_at)
        start, end = history.policy.get("quiet_start", "?"), history.policy.get("quiet_end", "?")
        chain.add(
            timer.started_at,
            "quiet_hours",
            "held",
            f"quiet hours {str(start)[:5]}-{str(end)[:5]} in {zone}: the workflow armed"
            f" {timer.timer_id} for {span}, until {_iso(timer.fire_at)}"
            f" ({_local(timer.fire_at, zone)} local){after}",
        )
    else:
        chain.add(
            timer.started_at,
            "frequency_cap",
            "held",
            f"the workflow armed {timer.timer_id} for {span}, until {_iso(timer.fire_at)}{after}",
        )


def _settle_delivery(
    chain: _Chain,
    history: _History,
    step_id: str,
    later: list[dict[str, Any]],
    last: _Activity | _Timer | None,
    defer_reason: str,
    e: _Enrolment,
    label: str,
) -> None:
    if isinstance(last, _Timer):
        if last.fired_at is None and last.cancelled_at is None:
            if defer_reason == "quiet_hours":
                chain.pending = f"waiting for quiet hours to end at {_iso(last.fire_at)}"
            else:
                chain.pending = f"held by the frequency cap until {_iso(last.fire_at)}"
            chain.settle(PENDING, f"not sent yet: {chain.pending}")
            return
        chain.pending = "its defer timer had fired"
        chain.settle(PENDING, f"not sent yet: the defer timer fired at {_iso(last.fired_at)}")
        return
    if isinstance(last, _Activity):
        outcome = last.result or {}
        status, reason = str(outcome.get("status") or ""), str(outcome.get("reason") or "")
        channel = last.request.get("channel")
        if status in ("sent", "duplicate"):
            version = str(outcome.get("content_version") or "")[:12]
            chain.settle(
                SENT,
                f"sent: {step_id} {outcome.get('content_id')}"
                + (f" v{version}" if version else "")
                + f" via {channel} at {_iso(last.ended_at)}",
            )
        elif status == "blocked":
            if reason.startswith("no_consent:"):
                why = f"no consent for {channel} ({reason})"
            elif reason.startswith("suppressed:"):
                why = f"the {channel} address is suppressed ({reason})"
            else:
                why = f"blocked ({reason})"
            chain.settle(NOT_SENT, f"not sent: {why} at {_iso(last.ended_at)}")
        elif last.failure:
            tries = f" after {last.attempt} attempts" if last.attempt > 1 else ""
            chain.settle(
                NOT_SENT,
                f"not sent: delivery failed ({last.failure}){tries} at {_iso(last.ended_at)}",
            )
        elif last.ended_at is None:
            chain.pending = "its delivery was in flight"
            chain.settle(
                PENDING, f"not sent yet: delivery in flight ({last.pending or 'attempt 1'})"
            )
        else:
            chain.settle(PENDING, f"not sent yet: the delivery answered {status or 'nothing'}")
        return
    # Reached, but no activity and no timer: the workflow settled it without either.
    failed = next(
        (
            p
            for p in later
            if p.get("step") == step_id and str(p.get("outcome", "")).startswith("failed")
        ),
        None,
    )
    if failed is not None:
        error = str(failed.get("outcome")).removeprefix("failed: ")
        at = _when(failed.get("at"))
        if error.startswith("no_address:"):
            reasons, by_consent = _no_channel(history, error.removeprefix("no_address:"), at)
            detail = f"no channel the contact may be sent on ({error}): {reasons}"
            chain.add(at, "consent" if by_consent else "delivery", "blocked", detail)
            chain.settle(NOT_SENT, f"not sent: {detail}")
        else:
            chain.add(at, "delivery", "failed", f"{error} (no delivery activity ran)")
            chain.settle(NOT_SENT, f"not sent: {error} at {_iso(at)}")
        return
    where = (e.live or {}).get("waiting") or {}
    chain.pending = "the send was about to start"
    chain.settle(
        PENDING,
        f"not sent yet: enrolment {label} is at {step_id}"
        + (f" ({where.get('kind')})" if where else ""),
    )
