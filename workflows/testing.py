"""Journey tests for a marketing team's own repository, on a real Temporal server.

``stagecoach.testing`` re-exports this module's public names; see its docstring and
``docs/authoring/projects.md`` ("Testing your journeys") for how a team uses them.

What runs is the production contact workflow and its activities
(:func:`stagecoach.workflows.runtime.contact_activities`, as the composition root wires
them), on the Temporal Java test server, whose clock jumps over timers: a 30-day
journey runs in seconds. Around it: a throwaway, migrated SQLite database, the file sink
for every channel (nothing leaves the machine), and the team's own ``Definitions``
(registered with :func:`stagecoach.engine.services.project.provide`). Quiet hours and the
frequency cap are off unless asked for, so a test's sends land exactly when its journey
says.

What a run saw is read back from the contact workflow's history (the same reader as
``stagecoach contact timeline``), where every send, stage change and hand-off is recorded
with the workflow's own clock; offsets are measured from the moment the test enrolled the
contact, in whole minutes (see ``_offset``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar

from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from stagecoach.connectors import FileSinkConnector
from stagecoach.engine.domain import contact as model
from stagecoach.engine.domain.definitions import Definitions
from stagecoach.engine.domain.policy import contact_zone
from stagecoach.engine.protocol import HAND_OFF_ACTIVITY, RECORD_ENROLMENT_ACTIVITY
from stagecoach.engine.protocol.messages import (
    CONTACT_WORKFLOW,
    ContactInput,
    EnrolRequest,
    EventMessage,
    OpenRequest,
    contact_workflow_id,
)
from stagecoach.engine.protocol.search_keys import register_search_attributes
from stagecoach.engine.services.project import provide, withdraw
from stagecoach.engine.services.storage import make_engine, upgrade
from stagecoach.engine.services.storage.contacts import open_contact
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.gateway import contact_view, enrol, send_event
from stagecoach.engine.temporal.history import (
    ActivityCompleted,
    ActivityScheduled,
    contact_history,
    open_work,
)
from stagecoach.engine.temporal.timeline import Entry, entries_from_records
from stagecoach.workflows.client import with_settings
from stagecoach.workflows.runtime import contact_activities, definitions_loader
from stagecoach.workflows.system import SystemActivities
from stagecoach.workflows.worker import build_send_workers, build_worker

TEST_SERVER_ENV = "STAGECOACH_TEST_SERVER_PATH"
"""The Temporal Java test server to run; unset, the Temporal SDK downloads one."""

CHANNELS = (*model.CHANNELS, "crm")
"""Every channel, and the CRM hand-offs go to, gets a file sink: whatever a journey
sends is observable, and nothing leaves the machine."""

_SETTLE = timedelta(milliseconds=1)
SETTLE_TIMEOUT = timedelta(seconds=60)
"""How long (real time) a contact may stay busy after a test's step before it fails."""
_T = TypeVar("_T")


class JourneyTestError(ValueError):
    """A journey test asked for something that cannot be done; the message says why
    and what to write instead."""


class Delivery(NamedTuple):
    """One message delivered: when (after enrolment), what, on which channel, by which
    step. Compares equal to the plain tuple ``(at, content_id, channel, step_id)``."""

    at: timedelta
    content_id: str
    channel: str
    step_id: str


class StageChange(NamedTuple):
    """One stage change: when (after enrolment), from which stage, to which."""

    at: timedelta
    from_stage: str
    to_stage: str


class HandOff(NamedTuple):
    """One hand-off that reached its owner (sales, customer care): when (after
    enrolment), why, the journey step that made it (``""`` for the pipeline's own MQL
    hand-off), and the owner it was routed to. One the routing refused is not here:
    ``story()`` shows it, and the step's ``on_failure`` path is what the journey does."""

    at: timedelta
    reason: str
    step_id: str
    owner: str


class JourneyEnd(NamedTuple):
    """One enrolment ending: when (after enrolment), which journey, how (``completed``,
    ``goal``, ``exited``...) and why, as the contact's timeline records it."""

    at: timedelta
    journey: str
    status: str
    reason: str


@dataclass(frozen=True)
class Message:
    """A delivered message in full: where it came from and what the sink received."""

    at: timedelta
    journey: str
    step_id: str
    channel: str
    content_id: str
    to: str
    rendered: Mapping[str, Any]
    """The rendered message as the connector got it (subject, body, locale...)."""


def _offset(when: datetime, origin: datetime) -> timedelta:
    """``when`` after ``origin``, in whole minutes (the seconds dropped).

    ``origin`` is the whole minute the test enrolled the contact on, and the
    workflow's clock only ever reads late against the journey's schedule: the
    enrolment runs a moment after that minute, and each wait starts when the worker has
    finished the step before it (a timer starts when its workflow task completes), so
    after a few sends and waits a step runs a second or two after its nominal time. A
    send held for quiet hours goes at the minute the rule names. Whole minutes are the
    schedule the journey wrote; what is below them is the machine's speed."""
    return timedelta(minutes=(when - origin).total_seconds() // 60)


def _parse(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value)
    return None


def day_label(offset: timedelta) -> str:
    """``day 3 09:30``: an offset as people read a journey's calendar."""
    sign = "-" if offset < timedelta(0) else ""
    offset = abs(offset)
    hours, rest = divmod(offset.seconds, 3600)
    return f"{sign}day {offset.days} {hours:02d}:{rest // 60:02d}"


@dataclass
class JourneyRun:
    """One test contact enrolled in one journey; made by :meth:`JourneyTest.start`.

    ``deliveries``, ``stage_changes``, ``handoffs``, ``messages`` and ``stage`` are what
    the run had done when the last awaited call on it (``start``, ``event``, ``until``)
    returned."""

    journey: str
    contact_id: str
    enrolment: int
    _test: JourneyTest = field(repr=False)
    _origin: datetime = field(repr=False)
    _entries: list[Entry] = field(default_factory=list, repr=False)
    _ends: list[tuple[datetime, dict[str, Any]]] = field(default_factory=list, repr=False)
    _rendered: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _handoffs: list[tuple[datetime, dict[str, Any], dict[str, Any]]] = field(
        default_factory=list, repr=False
    )
    _stage: str = field(default="", repr=False)

    # --- what happened -----------------------------------------------------------------

    @property
    def deliveries(self) -> list[Delivery]:
        """Every message delivered to the contact, by any journey, in order."""
        return [Delivery(m.at, m.content_id, m.channel, m.step_id) for m in self._messages()]

    @property
    def messages(self) -> list[Message]:
        """The deliveries in full: the journey, the address and the rendered message."""
        return self._messages()

    @property
    def stage_changes(self) -> list[StageChange]:
        """Every stage change since the contact was enrolled, in order."""
        out: list[StageChange] = []
        for entry in self._entries:
            if entry.kind == "stage" and entry.data.get("to_stage"):
                when = _parse(entry.data.get("at")) or entry.at
                out.append(
                    StageChange(
                        _offset(when, self._origin),
                        str(entry.data.get("from_stage") or ""),
                        str(entry.data["to_stage"]),
                    )
                )
        return out

    @property
    def handoffs(self) -> list[HandOff]:
        """Every hand-off the contact's journeys or its pipeline made, in order."""
        return [
            HandOff(
                _offset(_parse(request.get("now")) or at, self._origin),
                str(request.get("reason") or ""),
                str(request.get("step_id") or ""),
                str(result.get("owner") or ""),
            )
            for at, request, result in self._handoffs
            if result.get("ok") and result.get("routed", True)
        ]

    @property
    def ended(self) -> list[JourneyEnd]:
        """Every enrolment of the contact that has ended (this run's journey, and any
        other it entered), in order."""
        return [
            JourneyEnd(
                _offset(_parse(data.get("finished_at")) or at, self._origin),
                str(data.get("journey") or ""),
                str(data.get("status") or ""),
                str(data.get("reason") or ""),
            )
            for at, data in self._ends
        ]

    @property
    def stage(self) -> str:
        """The contact's stage now."""
        return self._stage

    def story(self) -> str:
        """What happened, one line each, by day: the contact's timeline since enrolment."""
        lines: list[tuple[datetime, str]] = []
        for entry in self._entries:
            if entry.kind not in ("created", "continued", "enrol"):
                lines.append((entry.at, f"{entry.kind:<8} {entry.summary}"))
        for at, data in self._ends:
            what = f"{data.get('journey')} {data.get('status')}: {data.get('reason')}"
            lines.append((_parse(data.get("finished_at")) or at, f"{'ended':<8} {what}"))
        lines.sort(key=lambda line: line[0])  # stable: history order within an instant
        head = f"{self.contact_id} enrolled in {self.journey} (enrolment {self.enrolment}):"
        body = [f"  {day_label(_offset(at, self._origin))}  {text}" for at, text in lines]
        return "\n".join([head, *body])

    def __str__(self) -> str:
        return self.story()

    def _messages(self) -> list[Message]:
        out: list[Message] = []
        seen: set[str] = set()
        for entry in self._entries:
            if entry.kind != "sent":
                continue
            data = entry.data
            key = str(data.get("idempotency_key") or "")
            if key in seen:
                continue  # a retried send the provider had already taken: delivered once
            seen.add(key)
            outcome = data.get("outcome") or {}
            content_id = str(outcome.get("content_id") or data.get("content_id") or "")
            channel = str(data.get("channel") or "")
            when = _parse(data.get("now")) or entry.at
            out.append(
                Message(
                    at=_offset(when, self._origin),
                    journey=str(data.get("journey") or ""),
                    step_id=str(data.get("step_id") or ""),
                    channel=channel,
                    content_id=content_id,
                    to=str(data.get("address") or ""),
                    rendered=self._rendered.get(key, {}),
                )
            )
        return out

    # --- driving it --------------------------------------------------------------------

    async def event(
        self,
        type: str,
        *,
        at: timedelta | None = None,
        properties: Mapping[str, Any] | None = None,
        traits: Mapping[str, Any] | None = None,
    ) -> None:
        """The contact does something: event ``type`` at ``at`` after enrolment (default:
        now), after everything due before it has run.

        Raises:
            JourneyTestError: ``type`` is not in the project's events, or ``at`` is
                earlier than an event or ``until`` already sent.
        """
        await self._test._event(self, type, at, dict(properties or {}), dict(traits or {}))

    async def events(
        self, script: Sequence[tuple[timedelta, str] | tuple[timedelta, str, Mapping[str, Any]]]
    ) -> None:
        """Several events in order: ``(at, type)`` or ``(at, type, properties)`` each."""
        for item in script:
            properties = item[2] if len(item) == 3 else None
            await self.event(item[1], at=item[0], properties=properties)

    async def until(self, at: timedelta) -> None:
        """Let the journey run until ``at`` after enrolment (``timedelta(days=30)``)."""
        await self._test._advance(self, at)
        await self._test._refresh(self)


_DEFAULT = object()


class JourneyTest:
    """A private Stagecoach for one test: the team's definitions on the Temporal test
    server, a throwaway database, and the file sink for every channel.

    Use it as an async context manager::

        async with JourneyTest(defs) as t:
            run = await t.start("welcome", contact={"stage": "prospect"})
            await run.until(timedelta(days=30))
            assert run.deliveries[0] == (timedelta(0), "wp-digital-transformation",
                                         "email", "whitepaper")

    Args:
        definitions: The project's ``Definitions`` (what ``[tool.stagecoach]
            definitions`` names).
        content: The content folder; default: the definitions' own ``content``,
            relative to ``root``.
        root: The project's folder, which ``content`` is relative to; default: the
            nearest folder from the working directory up with a ``pyproject.toml``.
        quiet_hours: ``(start, end)`` times of day in the contact's timezone when
            nothing is sent; default off, so sends land when the journey says.
        frequency_cap: At most this many messages per ``frequency_window``; default off.
        frequency_window: The frequency cap's window.
        env: A running time-skipping ``WorkflowEnvironment`` to use instead of starting
            the test server (tests that share one server across a session).
        test_server: The Temporal Java test server executable; default
            ``$STAGECOACH_TEST_SERVER_PATH``, else the Temporal SDK downloads one.
    """

    def __init__(
        self,
        definitions: Definitions,
        *,
        content: str | Path | None = None,
        root: str | Path | None = None,
        quiet_hours: tuple[time, time] | None = None,
        frequency_cap: int | None = None,
        frequency_window: timedelta = timedelta(hours=24),
        env: WorkflowEnvironment | None = None,
        test_server: str | Path | None = None,
    ) -> None:
        if not isinstance(definitions, Definitions):
            raise JourneyTestError(
                f"JourneyTest(definitions=...) got {type(definitions).__name__}: pass the "
                "project's Definitions object (from your_package.definitions import defs)"
            )
        if env is not None and not env.supports_time_skipping:
            raise JourneyTestError(
                "JourneyTest(env=...) needs a time-skipping environment: pass one from "
                "WorkflowEnvironment.start_time_skipping(), or leave env out"
            )
        if frequency_cap is not None and frequency_cap < 1:
            raise JourneyTestError(
                f"JourneyTest(frequency_cap={frequency_cap}): give a positive number of "
                "messages per window, or leave it out for no cap"
            )
        if quiet_hours is not None and not (
            len(quiet_hours) == 2 and all(isinstance(t, time) for t in quiet_hours)
        ):
            raise JourneyTestError(
                "JourneyTest(quiet_hours=...) is (start, end) as datetime.time values, "
                "e.g. (time(21, 0), time(8, 0))"
            )
        self.definitions = definitions
        self._content = Path(content) if content is not None else None
        self._root = Path(root) if root is not None else _project_root(Path.cwd())
        self._quiet_hours = quiet_hours
        self._frequency_cap = frequency_cap
        self._frequency_window = frequency_window
        self._given_env = env
        self._test_server = str(test_server) if test_server else os.environ.get(TEST_SERVER_ENV)
        self._stack: contextlib.AsyncExitStack | None = None
        self._env: WorkflowEnvironment | None = None
        self._client: Client | None = None
        self._settings: Settings | None = None
        self._db: Engine | None = None
        self._contacts: list[str] = []
        self._runs = 0

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            folder = Path(tempfile.mkdtemp(prefix="stagecoach-journey-test-"))
            stack.callback(shutil.rmtree, folder, ignore_errors=True)
            ref = provide(self.definitions, root=self._root)
            stack.callback(withdraw, ref)
            self._settings = self._settings_for(folder, ref)
            db = make_engine(self._settings.resolved_database_url)
            stack.callback(db.dispose)
            upgrade(db)
            self._db = db
            env = self._given_env
            if env is None:
                env = await _start_test_server(self._test_server)
                stack.push_async_callback(env.shutdown)
                await register_search_attributes(env.client, env.client.namespace)
            self._env = env
            self._client = with_settings(env.client, self._settings)
            sinks = self._sinks()
            activities = contact_activities(
                db,
                self._settings,
                connectors=sinks,
                rehearsal_sink=FileSinkConnector(
                    self._settings.resolved_sink_dir / "rehearsal", channel="any"
                ),
            )
            worker: Worker = build_worker(
                self._client,
                task_queue=self._settings.temporal_task_queue,
                activities=[*SystemActivities(db).all(), *activities.all()],
            )
            await stack.enter_async_context(worker)
            for sends in build_send_workers(
                self._client,
                self._settings.send_queues(),
                deliver=activities.deliver,
                hand_off=activities.hand_off,
            ):
                await stack.enter_async_context(sends)
            stack.push_async_callback(self._terminate_contacts)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def _settings_for(self, folder: Path, ref: str) -> Settings:
        quiet_start, quiet_end = self._quiet_hours or (time(0), time(0))
        values: dict[str, Any] = {
            "data_dir": folder / ".stagecoach",
            "database_url": f"sqlite:///{folder / 'stagecoach.db'}",
            "temporal_task_queue": f"journey-test-{uuid.uuid4().hex}",
            "definitions": ref,
            "quiet_hours_start": quiet_start.strftime("%H:%M"),
            "quiet_hours_end": quiet_end.strftime("%H:%M"),
            "frequency_cap": self._frequency_cap or 0,
            "frequency_window_hours": self._frequency_window.total_seconds() / 3600,
        }
        if self._content is not None:
            content = self._content
            values["content_dir"] = content if content.is_absolute() else self._root / content
        return Settings(**values)

    def _sinks(self) -> dict[str, FileSinkConnector]:
        root = self._require_settings().resolved_sink_dir
        return {ch: FileSinkConnector(root / ch, channel=ch) for ch in CHANNELS}

    async def _terminate_contacts(self) -> None:
        # Contact workflows live for ever; on a shared server, left running with no
        # worker, their timers would hold up the next test's time skipping.
        client = self._require_client()
        for contact_id in self._contacts:
            handle = client.get_workflow_handle(contact_workflow_id(contact_id))
            with contextlib.suppress(RPCError):
                await handle.terminate(reason="journey test finished")

    # --- starting a run ----------------------------------------------------------------

    async def start(
        self,
        journey: str,
        *,
        contact: Mapping[str, Any] | None = None,
        time_of_day: time | None = None,
    ) -> JourneyRun:
        """Enrol a new test contact in ``journey`` now, and run its first steps.

        Args:
            journey: A journey of the definitions, by name.
            contact: Who the contact is: ``stage`` (default: the pipeline's first
                stage), ``id`` (default: a fresh one), and its attributes (``email``,
                ``locale``, ``timezone``, ``wechat_openid``, ``industry``...). Without
                an ``email`` the contact gets ``<id>@example.com``; ``"email": None``
                gives it none. The contact starts at its stage as if it had been there:
                that stage's own journeys are not started, only ``journey`` is.
            time_of_day: Enrol at this time of day (hours and minutes) in the
                contact's ``timezone`` (UTC without one): the test server's clock is
                moved forward to the next such moment. Default: the next whole
                minute of the server's clock, which is only worth pinning down when
                quiet hours are on.

        Raises:
            JourneyTestError: the journey, the stage or the contact is not one the
                definitions know, or the journey refused the enrolment.
        """
        client, settings, env = (
            self._require_client(),
            self._require_settings(),
            self._require_env(),
        )
        defs = self.definitions
        if journey not in defs.journeys_by_name:
            known = ", ".join(sorted(defs.journeys_by_name)) or "none"
            raise JourneyTestError(f"no journey {journey!r} in the definitions; they have: {known}")
        if contact is not None and not isinstance(contact, Mapping):
            raise JourneyTestError(
                "start(contact=...) is a dict: {'stage': 'prospect', 'email': ..., ...}"
            )
        attributes = dict(contact or {})
        self._runs += 1
        contact_id = str(attributes.pop("id", "") or f"test-{uuid.uuid4().hex[:12]}")
        pipeline = defs.pipeline
        stage = str(attributes.pop("stage", "") or pipeline.first_stage)
        if stage not in (*pipeline.stage_names, *pipeline.states):
            raise JourneyTestError(
                f"start(contact=...): stage {stage!r} is not in pipeline "
                f"{pipeline.name!r}; use one of {', '.join(pipeline.stage_names)}"
            )
        zone_name = attributes.get("timezone")
        if zone_name is not None and contact_zone(str(zone_name)).key != zone_name:
            raise JourneyTestError(
                f"start(contact=...): timezone {zone_name!r} is not a time zone; use an "
                "IANA name such as 'Asia/Shanghai' or 'Europe/Berlin'"
            )
        _check_json("start(contact=...)", attributes)
        email = attributes.get("email", _DEFAULT)
        if email is _DEFAULT:
            attributes["email"] = f"{contact_id}@example.com"
        elif email is None:
            del attributes["email"]
        if contact_id in self._contacts:
            raise JourneyTestError(
                f"contact {contact_id!r} was already started in this test: give each run "
                "its own id, or leave id out"
            )

        now = await env.get_current_time()
        # Enrol on a whole minute of the server's clock (offsets are whole minutes), so
        # that what happens at a time of day (the end of quiet hours) lands on a whole
        # minute after enrolment too.
        aligned = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
        if time_of_day is not None:
            zone = contact_zone(str(attributes.get("timezone") or ""))
            local = now.astimezone(zone)
            at = time_of_day.replace(second=0, microsecond=0, tzinfo=None)
            aligned = datetime.combine(local.date(), at, zone)
            if aligned <= local:
                aligned = datetime.combine(local.date() + timedelta(days=1), at, zone)
        await env.sleep(aligned - now)
        now = aligned.astimezone(UTC)
        await self._open(contact_id, stage, now)
        self._contacts.append(contact_id)
        identify = EventMessage(
            message_id=f"{contact_id}-identify",
            type="identify",
            occurred_at=now,
            traits=attributes,
            source="test",
        )
        result = await enrol(
            client, settings, contact_id, EnrolRequest(journey=journey, event=identify)
        )
        if not result.accepted:
            raise JourneyTestError(
                f"journey {journey!r} refused the enrolment of {contact_id}: {result.reason}"
            )
        await self._settle(contact_id)
        enrolled = await self._enrolled_at(contact_id, journey, result.enrolment) or now
        # Offsets count from the whole minute the test asked for (``now``), unless the
        # enrolment ran later than that minute (a machine under very heavy load).
        late = enrolled - now >= timedelta(minutes=1)
        origin = enrolled.replace(second=0, microsecond=0) if late else now
        run = JourneyRun(journey, contact_id, result.enrolment, self, origin)
        await self._refresh(run)
        return run

    async def _open(self, contact_id: str, stage: str, now: datetime) -> None:
        """Record the contact at ``stage`` and start its workflow there, as a contact
        that has been at that stage since ``now`` (a continued workflow's input)."""
        settings, db = self._require_settings(), self._require_db()
        request = OpenRequest(contact_id=contact_id, at=now, trigger_event_type="test")
        await asyncio.to_thread(open_contact, db, request, stage)
        definitions = await asyncio.to_thread(definitions_loader(db, settings))
        state = model.ContactState(
            contact_id=contact_id, stage=stage, stage_entered_at=now, transitions=1
        )
        await self._require_client().start_workflow(
            CONTACT_WORKFLOW,
            ContactInput.current(
                contact_id,
                state=state.to_dict(),
                definitions=definitions,
                max_events_per_run=settings.max_events_per_run,
            ),
            id=contact_workflow_id(contact_id),
            task_queue=settings.temporal_task_queue,
            static_summary=f"test contact {contact_id}",
        )

    async def _enrolled_at(self, contact_id: str, journey: str, enrolment: int) -> datetime | None:
        """The workflow's clock when the enrolment began: from its live trail, or, if it
        already finished, from the record of its end."""
        view = await contact_view(self._require_client(), contact_id)
        for active in view.journeys:
            if active["journey"] == journey and active["enrolment"] == enrolment:
                for passage in active["trail"]:
                    at = _parse(passage.get("at"))
                    if at is not None:
                        return at
        history = await contact_history(self._require_client(), contact_id)
        for record in history.records():
            if (
                isinstance(record, ActivityScheduled)
                and record.name == RECORD_ENROLMENT_ACTIVITY
                and record.input.get("journey") == journey
                and record.input.get("enrolment") == enrolment
            ):
                return _parse(record.input.get("started_at"))
        return None

    # --- driving runs ------------------------------------------------------------------

    async def _settle(self, contact_id: str) -> None:
        """Wait until the contact's workflow has done everything due now: no workflow
        task and no activity open in its history.

        A moment of skipped time first lets the server fire what is due at this instant;
        the history then says when the worker has finished with it (the server's clock
        does not wait for a signal's workflow task)."""
        await self._require_env().sleep(_SETTLE)
        handle = self._require_client().get_workflow_handle(contact_workflow_id(contact_id))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT.total_seconds()
        while True:
            busy = open_work([event async for event in handle.fetch_history_events()])
            if not busy:
                return
            if loop.time() > deadline:
                raise JourneyTestError(
                    f"contact {contact_id} is still busy after "
                    f"{SETTLE_TIMEOUT.total_seconds():.0f} s ({busy}): a connector or "
                    "activity that never finishes? run.story() shows how far it got"
                )
            await asyncio.sleep(0.02)

    async def _now(self) -> datetime:
        return await self._require_env().get_current_time()

    async def _advance(self, run: JourneyRun, at: timedelta) -> None:
        target = run._origin + at
        now = await self._now()
        if target < now - timedelta(minutes=1):
            raise JourneyTestError(
                f"{run.contact_id} is already at {day_label(_offset(now, run._origin))}: "
                f"cannot go back to {day_label(at)}; send events and 'until' in time order"
            )
        if target > now:
            await self._require_env().sleep(target - now)
        await self._settle(run.contact_id)

    async def _event(
        self,
        run: JourneyRun,
        type_: str,
        at: timedelta | None,
        properties: dict[str, Any],
        traits: dict[str, Any],
    ) -> None:
        if type_ not in self.definitions.events:
            raise JourneyTestError(str(self.definitions.events.unknown(type_, where="run.event")))
        if at is not None:
            await self._advance(run, at)
        when = await self._now()
        self._runs += 1
        message = EventMessage(
            message_id=f"{run.contact_id}-{type_}-{self._runs}",
            type=type_,
            occurred_at=when,
            properties=properties,
            traits=traits,
            source="test",
        )
        _check_json(f"run.event({type_!r}, properties=...)", properties)
        _check_json(f"run.event({type_!r}, traits=...)", traits)
        problem = message.problem()
        if problem is not None:
            raise JourneyTestError(f"run.event({type_!r}): {problem}")
        await send_event(self._require_client(), self._require_settings(), run.contact_id, message)
        await self._settle(run.contact_id)
        await self._refresh(run)

    async def _refresh(self, run: JourneyRun) -> None:
        client = self._require_client()
        history = await contact_history(client, run.contact_id)
        run._entries = [e for r in history.runs for e in entries_from_records(r.records)]
        run._handoffs = [
            (record.at, record.activity.input, record.result)
            for record in history.records()
            if isinstance(record, ActivityCompleted)
            and record.activity is not None
            and record.activity.name == HAND_OFF_ACTIVITY
        ]
        run._ends = [
            (record.at, record.input)
            for record in history.records()
            if isinstance(record, ActivityScheduled) and record.name == RECORD_ENROLMENT_ACTIVITY
        ]
        run._stage = (await contact_view(client, run.contact_id)).stage
        run._rendered = await asyncio.to_thread(self._sunk, run.contact_id)

    def _sunk(self, contact_id: str) -> dict[str, dict[str, Any]]:
        """What the file sinks received for the contact, by idempotency key: read while
        the test's folder exists, for ``JourneyRun.messages`` after it is gone."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in contact_id)
        out: dict[str, dict[str, Any]] = {}
        for sink in self._sinks().values():
            for path in sorted((sink.directory / safe).glob("*.json")):
                body = json.loads(path.read_text(encoding="utf-8"))
                out[str(body.get("idempotency_key"))] = dict(body.get("message") or {})
        return out

    # --- plumbing ----------------------------------------------------------------------

    def _require_env(self) -> WorkflowEnvironment:
        return _entered(self._env)

    def _require_client(self) -> Client:
        return _entered(self._client)

    def _require_settings(self) -> Settings:
        return _entered(self._settings)

    def _require_db(self) -> Engine:
        return _entered(self._db)


def _entered(value: _T | None) -> _T:
    if value is None:
        raise JourneyTestError("use the JourneyTest inside 'async with JourneyTest(defs) as t:'")
    return value


async def _start_test_server(path: str | None) -> WorkflowEnvironment:
    """The Temporal Java test server at ``path``, or the one the SDK downloads."""
    if path and not os.access(path, os.X_OK):
        raise JourneyTestError(
            f"{TEST_SERVER_ENV}={path!r} is not an executable file: point it at the "
            "Temporal test server (temporal-test-server), or unset it to download one"
        )
    try:
        return await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=path,
            # The SDK waits 5 s for the JVM to start; a busy laptop or CI box takes longer.
            test_server_startup_timeout=timedelta(seconds=30),
        )
    except RuntimeError as exc:
        where = path or "a downloaded one (no network?)"
        raise JourneyTestError(
            f"could not start the Temporal test server, {where}: {exc}; set "
            f"{TEST_SERVER_ENV} to a temporal-test-server executable"
        ) from exc


def _check_json(where: str, values: Mapping[str, Any]) -> None:
    """Events and traits travel as JSON: say which value cannot, before sending."""
    for key, value in values.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise JourneyTestError(
                f"{where}: {key!r} is a {type(value).__name__}; give strings, numbers, "
                "booleans, None, lists or dicts of them"
            ) from None


def _project_root(start: Path) -> Path:
    """The nearest folder from ``start`` up holding a ``pyproject.toml``, else ``start``."""
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return start


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
    "day_label",
]
