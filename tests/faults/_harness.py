"""The fault scenarios' harness: real processes on loopback, faults, and the books.

- ``Stack``: one scenario's Stagecoach: a migrated SQLite file, a write key, the API
  (``python -m stagecoach.engine.cli api``, its own outbox forwarder) and any number of workers
  (``python -m stagecoach.engine.cli worker``), each a child process that can be SIGKILLed and
  started again on the same database and task queue.
- ``drive``: the workload, as a Segment client library sends it: ``/v1/batch`` calls
  paced at a rate, several in flight, each retried with the same message ids until a 2xx
  answer. Per contact: an ``identify`` with an email (a new contact at ``suspect``,
  which enters ``b2b_nurture`` and is sent the whitepaper), then page views and the
  whitepaper download (interest: ``prospect``, then the journey waits three days).
  A contact's later events go only after its identify was accepted, so they are
  forwarded after it.
- ``Books``: the end-of-run check, from the peers' own records and the database:
  messages per recipient and per idempotency key at the peer, events accepted against
  stored, the outbox drained, and each contact's live ``state`` (stage, journey step,
  events applied) against what the peer received and what the deliveries table says.
- ``Figures``: printed as a table and appended to ``.stagecoach/faults/results.jsonl``.

Time scaling: ``b2b_nurture`` is entered at ``time_scale`` 1 when a contact is created
(only explicit enrolments can be scaled, and scaled rehearsal contacts send to the
rehearsal sink, never to a connector). So the workload runs the journey's first phase
in real time: one send per contact (``awareness-whitepaper``), then the interest branch
and the three-day ``evaluation-pause`` timer, where the journey is found at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError

from stagecoach.engine.api.routes.events import create_write_key
from stagecoach.engine.protocol.messages import ContactView, contact_workflow_id
from stagecoach.engine.services.publishing import latest_versions
from stagecoach.engine.services.storage import make_engine, upgrade
from stagecoach.engine.services.storage.models import Delivery, Event, Outbox
from stagecoach.engine.settings import Settings
from stagecoach.engine.temporal.gateway import ContactNotFound, contact_view
from stagecoach.workflows.client import with_settings
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / ".stagecoach" / "faults" / "results.jsonl"
WHITEPAPER = {"content_id": "wp-digital-transformation", "kind": "whitepaper"}
FIRST_SEND = "awareness-whitepaper"
WAITING_STEP = "evaluation-pause"
PAGE_VIEWS = 3
EVENTS_PER_CONTACT = 1 + PAGE_VIEWS + 1


def contacts_from_env(default: int = 60) -> int:
    return int(os.environ.get("STAGECOACH_FAULT_CONTACTS", str(default)))


FULL = contacts_from_env() >= 500
"""The full form (``STAGECOACH_FAULT_CONTACTS=500``): today's lengths for every timing."""


def fault_seconds(name: str, *, short: float, full: float | None) -> float | None:
    """``STAGECOACH_FAULT_<NAME>_SECONDS`` if set, else the short or the full form's value.

    The short form (CI) keeps every fault and every check but shortens what the run
    would otherwise sit out; the full form keeps the product's real lengths. ``None``
    (full form only): leave the product's own value alone."""
    raw = os.environ.get(f"STAGECOACH_FAULT_{name}_SECONDS", "").strip()
    if raw:
        return float(raw)
    return full if FULL else short


def seconds(name: str, *, short: float, full: float) -> float:
    """:func:`fault_seconds` for a timing both forms have."""
    value = fault_seconds(name, short=short, full=full)
    assert value is not None
    return value


RETRY_HINT_MAX = fault_seconds("RETRY_HINT", short=3.0, full=None)
"""``STAGECOACH_RETRY_HINT_MAX_SECONDS`` of the stack: the longest a retried send waits on
its connector's hint (SMTP 421: 120 s, a dropped connection: 30 s, WeChat's minute quota:
60 s). Short form: 3 s, so each deferral costs seconds; full form: the hints as given."""
OPENER_TTL = seconds("OPENER_TTL", short=5.0, full=60.0)
"""``STAGECOACH_OPENER_TTL_SECONDS`` of the stack: the API's definitions cache, which a
publish reaches new contacts within (scenario 8 waits it out)."""


# --- processes --------------------------------------------------------------------------


class Child:
    """One ``python -m stagecoach.engine.cli <command>`` process, restartable, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Child:
        assert not self.alive, f"{self.name} is already running"
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts + 1} at {datetime.now(UTC)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        self.starts += 1
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals, *, wait: float = 30.0) -> None:
        """Send ``sig`` and wait for the process to end (SIGKILL after ``wait``)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def stop(self) -> None:
        self.signal(signal.SIGTERM, wait=20.0)


@dataclass
class Stack:
    """One scenario's Stagecoach processes around one database and task queue."""

    tmp: Path
    settings: Settings
    client: Client
    engine: Engine
    env: dict[str, str]
    key: str
    api_url: str
    children: dict[str, Child] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        tmp: Path,
        client: Client,
        task_queue: str,
        *,
        database_url: str | None = None,
        **connector: str,
    ) -> Stack:
        """``connector``: ``STAGECOACH_*`` settings for the email connector, lower-case.
        ``database_url``: an empty database to use (default: a SQLite file in ``tmp``)."""
        api_port = free_port()
        settings = Settings(
            data_dir=tmp / ".stagecoach",
            database_url=database_url or f"sqlite:///{tmp / 'stagecoach.db'}",
            temporal_address=client.service_client.config.target_host,
            temporal_task_queue=task_queue,
            content_dir=ROOT / "content",
            quiet_hours_start="00:00",
            quiet_hours_end="00:00",
            frequency_cap=0,
            api_port=api_port,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECOACH_")}
        env.update(
            STAGECOACH_DATA_DIR=str(settings.data_dir),
            STAGECOACH_DATABASE_URL=settings.resolved_database_url,
            STAGECOACH_TEMPORAL_ADDRESS=settings.temporal_address,
            STAGECOACH_TEMPORAL_TASK_QUEUE=task_queue,
            STAGECOACH_CONTENT_DIR=str(settings.content_dir),
            STAGECOACH_QUIET_HOURS_START="00:00",
            STAGECOACH_QUIET_HOURS_END="00:00",
            STAGECOACH_FREQUENCY_CAP="0",
            STAGECOACH_API_PORT=str(api_port),
            STAGECOACH_LOG_FORMAT="json",
            STAGECOACH_LOG_LEVEL="info",
            STAGECOACH_WORKER_METRICS_PORT="off",
            STAGECOACH_TEMPORAL_METRICS_PORT="off",
            STAGECOACH_OPENER_TTL_SECONDS=str(OPENER_TTL),
        )
        if RETRY_HINT_MAX is not None:
            env["STAGECOACH_RETRY_HINT_MAX_SECONDS"] = str(RETRY_HINT_MAX)
        env.update({f"STAGECOACH_{k.upper()}": v for k, v in connector.items()})
        engine = make_engine(settings.resolved_database_url)
        upgrade(engine)
        key = create_write_key(engine, "faults", source="faults")
        return cls(
            tmp=tmp,
            settings=settings,
            client=with_settings(client, settings),  # the same payload keys as the children
            engine=engine,
            env=env,
            key=key,
            api_url=f"http://127.0.0.1:{api_port}",
        )

    def child(self, name: str, command: str) -> Child:
        if name not in self.children:
            argv = [sys.executable, "-m", "stagecoach.engine.cli", command]
            self.children[name] = Child(name, argv, self.env, self.tmp / f"{name}.log")
        return self.children[name]

    def worker(self, name: str = "worker") -> Child:
        """Start (or start again) the worker called ``name``."""
        return self.child(name, "worker").start()

    async def api(self) -> Child:
        """Start (or start again) the API, once it answers ``/healthz``.

        Not before a worker published the bundled journeys: the API's opener hands new
        contacts the definitions it loaded (cached a minute), and a contact opened with
        none published never enters ``b2b_nurture``."""
        await until(
            lambda: asyncio.to_thread(lambda: "b2b_nurture" in latest_versions(self.engine)),
            within=60,
            what="a worker published the bundled journeys",
            every=0.2,
        )
        api = self.child("api", "api").start()
        async with httpx.AsyncClient() as http:
            # Seconds, not the 2 it takes idle: the suite's other workers share the cores.
            deadline = time.monotonic() + 120
            while True:
                assert api.alive, f"the API exited: see {api.log}"
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{self.api_url}/healthz")).status_code == 200:
                        return api
                assert time.monotonic() < deadline, f"the API is not up: see {api.log}"
                await asyncio.sleep(0.1)

    async def close(self, contact_ids: Iterable[str]) -> None:
        for child in self.children.values():
            child.kill()

        async def end(contact_id: str) -> None:
            handle = self.client.get_workflow_handle(contact_workflow_id(contact_id))
            with contextlib.suppress(RPCError):  # already gone is fine
                await handle.terminate(reason="fault scenario finished")

        await asyncio.gather(*(end(c) for c in contact_ids))
        self.engine.dispose()


# --- the workload -----------------------------------------------------------------------


@dataclass
class Person:
    user_id: str
    email: str


def people(run: str, count: int) -> list[Person]:
    return [Person(f"{run}-c{n}", f"{run}-c{n}@example.com") for n in range(count)]


def _messages(person: Person) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    uid = person.user_id
    identify = {
        "type": "identify",
        "userId": uid,
        "messageId": f"{uid}-identify",
        "traits": {"email": person.email, "locale": "en", "timezone": "UTC"},
    }
    later: list[dict[str, Any]] = [
        {
            "type": "page",
            "userId": uid,
            "messageId": f"{uid}-page{n}",
            "name": "Blog",
            "properties": {"category": "blog", "url": f"https://example.com/blog/{n}"},
        }
        for n in range(PAGE_VIEWS)
    ]
    later.append(
        {
            "type": "track",
            "userId": uid,
            "messageId": f"{uid}-download",
            "event": "content.downloaded",
            "properties": dict(WHITEPAPER),
        }
    )
    return identify, later


@dataclass
class Workload:
    """What the client saw: messages acknowledged (2xx), calls and retries."""

    accepted: set[str] = field(default_factory=set)
    calls: int = 0
    retries: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    duplicates_reported: int = 0
    in_flight: int = 0
    """Calls sent and not yet answered, right now (a fault can wait for one)."""
    accepted_at: dict[str, float] = field(default_factory=dict)
    """Message id -> when (``time.time()``) the call that carried it was answered 2xx."""

    @property
    def rate(self) -> float:
        return len(self.accepted) / self.seconds if self.seconds else 0.0


async def drive(
    url: str,
    key: str,
    persons: list[Person],
    *,
    result: Workload | None = None,
    rate: float = 60.0,
    batch: int = 10,
    give_up_after: float = 120.0,
    messages_of: Callable[[Person], tuple[dict[str, Any], list[dict[str, Any]]]] | None = None,
) -> Workload:
    """Send every person's messages in ``/v1/batch`` calls paced at ``rate`` messages a
    second; an unanswered or non-2xx call is sent again, same message ids, until accepted.
    A person's later messages are queued once their identify was accepted.
    ``messages_of``: a person's identify and later messages (default: the standard five)."""
    result = result if result is not None else Workload()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    later_of: dict[str, list[dict[str, Any]]] = {}
    for person in persons:
        identify, later = (messages_of or _messages)(person)
        later_of[identify["messageId"]] = later
        queue.put_nowait(identify)
    expected = len(persons) + sum(len(later) for later in later_of.values())
    started = time.monotonic()
    tasks: set[asyncio.Task[None]] = set()

    async with httpx.AsyncClient(
        base_url=url, auth=(key, ""), timeout=httpx.Timeout(10.0, connect=2.0)
    ) as http:

        async def post(messages: list[dict[str, Any]]) -> None:
            deadline = time.monotonic() + give_up_after
            attempt = 0
            while True:
                attempt += 1
                result.calls += 1
                if attempt > 1:
                    result.retries += 1
                result.in_flight += 1
                try:
                    response = await http.post("/v1/batch", json={"batch": messages})
                except httpx.TransportError as exc:
                    result.in_flight -= 1
                    result.answers[type(exc).__name__] += 1
                else:
                    result.in_flight -= 1
                    result.answers[str(response.status_code)] += 1
                    if response.is_success:
                        body = response.json()
                        assert body["accepted"] == len(messages), body
                        result.duplicates_reported += int(body.get("duplicates", 0))
                        answered = time.time()
                        for m in messages:
                            result.accepted.add(m["messageId"])
                            result.accepted_at.setdefault(m["messageId"], answered)
                            for follow in later_of.pop(m["messageId"], []):
                                queue.put_nowait(follow)
                        return
                assert time.monotonic() < deadline, f"a batch was never accepted: {result.answers}"
                await asyncio.sleep(min(0.25 * attempt, 2.0))

        next_at = time.monotonic()
        while len(result.accepted) < expected:
            messages: list[dict[str, Any]] = []
            while len(messages) < batch and not queue.empty():
                messages.append(queue.get_nowait())
            if messages:
                tasks.add(asyncio.create_task(post(messages)))
                next_at += len(messages) / rate
            else:
                next_at = time.monotonic() + 0.05
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            for task in [t for t in tasks if t.done()]:
                tasks.discard(task)
                task.result()  # a batch that gave up fails the run here
        await asyncio.gather(*tasks)
    result.seconds = time.monotonic() - started
    return result


# --- waiting ----------------------------------------------------------------------------


async def until(
    check: Callable[[], Awaitable[bool]], *, within: float, what: str, every: float = 0.5
) -> float:
    """Poll ``check`` until it holds; seconds it took. Fails naming ``what``."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(WorkflowQueryFailedError, ContactNotFound, RPCError):
            if await check():
                return time.monotonic() - started
        assert time.monotonic() - started < within, f"not reached in {within:.0f} s: {what}"
        await asyncio.sleep(every)


# --- the books --------------------------------------------------------------------------


def contact_ids(engine: Engine, persons: list[Person]) -> dict[str, str]:
    """user id -> contact id, from the stored identifies."""
    wanted = {f"{p.user_id}-identify": p.user_id for p in persons}
    with Session(engine) as session:
        rows = session.exec(
            select(col(Event.message_id), col(Event.contact_id)).where(
                col(Event.message_id).in_(list(wanted))
            )
        ).all()
    return {wanted[m]: c for m, c in rows}


def stored_ids(engine: Engine, persons: list[Person]) -> Counter[str]:
    users = {p.user_id for p in persons}
    prefix = persons[0].user_id.rsplit("-", 1)[0] + "-"
    with Session(engine) as session:
        rows = session.exec(
            select(col(Event.message_id)).where(
                col(Event.message_id).startswith(prefix, autoescape=True)
            )
        ).all()
    return Counter(m for m in rows if m.rpartition("-")[0] in users)


def outbox_rows(engine: Engine, contacts: Iterable[str]) -> int:
    with Session(engine) as session:
        return int(
            session.exec(
                select(func.count())
                .select_from(Outbox)
                .where(col(Outbox.contact_id).in_(list(contacts)))
            ).one()
        )


def deliveries(engine: Engine, contacts: Iterable[str]) -> list[Delivery]:
    with Session(engine) as session:
        return list(
            session.exec(select(Delivery).where(col(Delivery.contact_id).in_(list(contacts))))
        )


@dataclass
class Figures:
    """One scenario run, as printed and as appended to the results file."""

    scenario: str
    contacts: int
    events_per_second: float
    faults: list[str]
    messages_expected: int = 0
    messages_received: int = 0
    messages_duplicated: int = 0
    events_accepted: int = 0
    events_stored: int = 0
    events_lost: int = 0
    events_applied: int = 0
    batch_calls: int = 0
    batch_retries: int = 0
    seconds: float = 0.0
    settle_seconds: float = 0.0
    notes: str = ""
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def publish(self) -> None:
        rows = [
            ("scenario", self.scenario),
            ("load", f"{self.contacts} contacts, {self.events_per_second:.0f} events/s"),
            ("faults", "; ".join(self.faults)),
            (
                "messages",
                f"expected {self.messages_expected}, received {self.messages_received}, "
                f"duplicated {self.messages_duplicated}",
            ),
            (
                "events",
                f"accepted {self.events_accepted}, stored {self.events_stored}, "
                f"lost {self.events_lost}, applied {self.events_applied}",
            ),
            ("batch calls", f"{self.batch_calls} ({self.batch_retries} retries)"),
            ("run time", f"{self.seconds:.1f} s (settled {self.settle_seconds:.1f} s after load)"),
        ]
        if self.notes:
            rows.append(("notes", self.notes))
        width = max(len(k) for k, _ in rows)
        print("\n" + "\n".join(f"  {k.ljust(width)} | {v}" for k, v in rows))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a", encoding="utf-8") as out:
            out.write(json.dumps(asdict(self)) + "\n")


@dataclass
class Books:
    """The end-of-run reconciliation of one scenario."""

    stack: Stack
    persons: list[Person]
    workload: Workload
    received: Counter[str]
    """Messages the peer took in, per recipient address."""
    keys: Counter[str | None]
    """Messages the peer took in, per idempotency-key digest."""
    refused: frozenset[str] = frozenset()
    """Addresses the peer refuses for good: nothing is received, the delivery fails."""
    recipient: Callable[[Person], str] = lambda person: person.email
    """A person's address at the peer (``received``'s keys): the email by default."""
    events_per_contact: int = EVENTS_PER_CONTACT
    stage: str = "prospect"
    """The stage every contact (but a refused one) ends at."""

    async def check(self, figures: Figures) -> None:
        engine = self.stack.engine
        ids = contact_ids(engine, self.persons)
        stored = stored_ids(engine, self.persons)
        accepted = self.workload.accepted
        figures.events_accepted = len(accepted)
        figures.events_stored = sum(stored.values())
        figures.events_lost = len(accepted - set(stored))
        figures.batch_calls, figures.batch_retries = self.workload.calls, self.workload.retries
        ours = {self.recipient(p) for p in self.persons}
        figures.messages_expected = len(ours - self.refused)
        figures.messages_received = sum(n for a, n in self.received.items() if a in ours)
        figures.messages_duplicated = sum(n - 1 for n in self.received.values() if n > 1)

        assert len(ids) == len(self.persons), "an identify was not stored"
        assert figures.events_lost == 0, sorted(accepted - set(stored))[:10]
        assert set(stored) == accepted, "stored events nobody was told were accepted"
        assert max(stored.values()) == 1
        assert outbox_rows(engine, ids.values()) == 0, "the outbox was not drained"
        # Exactly once at the peer: per recipient and per idempotency key.
        assert self.received == Counter({a: 1 for a in ours - self.refused}), self.received
        assert all(n == 1 for n in self.keys.values()), self.keys.most_common(3)
        rows = deliveries(engine, ids.values())
        by_contact = {r.contact_id: r for r in rows}
        assert len(rows) == len(self.persons), "one delivery row per contact"
        applied = 0
        stuck: list[tuple[str, str]] = []
        for person in self.persons:
            contact_id = ids[person.user_id]
            row = by_contact[contact_id]
            view = await patient_view(self.stack.client, contact_id)
            applied += view.run_events
            assert view.run_events == self.events_per_contact, (contact_id, view.run_events)
            assert row.step_id == FIRST_SEND, (contact_id, row.step_id)
            assert row.journey == "b2b_nurture"
            journeys = {j["journey"]: j for j in view.journeys}
            if self.recipient(person) in self.refused:
                assert row.status == "failed", (contact_id, row.status, row.error)
                continue
            assert row.status == "sent", (contact_id, row.status, row.error)
            assert view.stage == self.stage, (contact_id, view.stage)
            journey = journeys["b2b_nurture"]
            assert journey["version"] == row.journey_version
            if journey["step"] != WAITING_STEP:
                stuck.append((contact_id, str(journey["step"])))
                history = await self.stack.client.get_workflow_handle(
                    contact_workflow_id(contact_id)
                ).fetch_history()
                (self.stack.tmp / f"history-{contact_id}.json").write_text(history.to_json())
        figures.events_applied = applied
        if stuck:
            figures.notes += f"; journeys not at {WAITING_STEP}: {stuck}"
        # A download applied to the contact (it is a prospect) must have moved its journey.
        assert not stuck, f"journeys that missed the download: {stuck} (see {self.stack.tmp})"


# --- channels (scenarios 5 and 6) -------------------------------------------------------


async def patient_view(client: Client, contact_id: str, *, attempts: int = 5) -> ContactView:
    """``contact_view``, asked again when the query fails: on a starved machine the
    worker's deadlock detector fails a query whose replay took over two seconds
    (TMPRL1101), which says nothing about the books."""
    for attempt in range(1, attempts + 1):
        try:
            return await contact_view(client, contact_id)
        except (WorkflowQueryFailedError, RPCError):
            if attempt == attempts:
                raise
            await asyncio.sleep(attempt)
    raise AssertionError("unreachable")
