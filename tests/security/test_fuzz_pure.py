"""Promise: the pure cores never fail in an undocumented way, whatever they are fed.

Fuzzed with hypothesis (``derandomize=True``: the same cases on every run, so CI is
stable; ``STAGECOACH_FUZZ_EXAMPLES`` raises the number of examples, default 150):

- **Journey compiler**: random DSL structures (steps of every kind with random ids,
  dangling, reserved and missing targets, zero and negative durations, unknown channels,
  content, stages, event types and journeys, odd split weights, arbitrary attribute
  values, nested conditions, any entry and re-entry) compile to a spec or raise
  ``JourneyValidationError``, never anything else; a compiled spec survives its JSON
  round trip with the same version.
- **Interpreter**: random input sequences (starts, timers right and stale, events, delivery
  and hand-off results for the waiting step or another, cancels, facts of any shape, time
  going forward or back) against the compiled bundled journeys and against randomly
  generated ones that compile: ``step`` returns or raises the documented
  ``JourneyRuntimeError`` for misuse (a naive time, a second Start, no cursor); the cursor
  stays JSON-serialisable and round-trips; a finished cursor never moves again.
- **Identity merge**: random sequences of identify, alias and track messages (shared and
  reused ids, emails in traits, replayed message ids) through the ``Ingestor`` on SQLite,
  in random group-commit batches: every identity belongs to exactly one live contact,
  merges form no cycle and end at a live contact, no event is lost or stored twice, and
  contacts are exactly the connected components of the identities messages tied together.
- **WeChat XML parser**: random bytes, random element trees and malformed XML are parsed
  or refused with the module's ``CallbackError``; XML bombs (billion laughs, quadratic
  blowup, external entities reading ``file:///etc/passwd``, external DTD retrieval,
  parameter entities, other encodings) are refused with ``UnsafeXml`` in well under a
  second, never expanded; each case runs under a hard time limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import string
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlmodel import Session, select

from stagecoach.engine.domain.conditions import (
    GRADES,
    Always,
    AnyOf,
    Condition,
    EventRecord,
    Facts,
    Not,
    PropertyFilter,
    attribute,
    event,
    grade_at_least,
    has_tag,
    score_at_least,
    stage_in,
)
from stagecoach.engine.domain.journeys import (
    END,
    Cancel,
    Cursor,
    DeliveryResult,
    EventReceived,
    HandoffResult,
    InMemoryContentIndex,
    Journey,
    JourneyRuntimeError,
    JourneySpec,
    JourneyValidationError,
    ReEntry,
    Start,
    TimerFired,
    ValidationContext,
    add_tag,
    branch,
    change_stage,
    compile_journey,
    enrol,
    exit_journey,
    exit_to,
    goal,
    hand_off,
    holdout,
    next_best,
    on_event,
    send,
    set_attribute,
    split,
    stage_entered,
    step,
    wait,
    wait_for,
    wait_until,
)
from stagecoach.engine.domain.journeys._steps import (
    Channel,
    SplitBranch,
    SplitStep,
    WaitForEventStep,
)
from stagecoach.engine.domain.wechat_callback import (
    MAX_BODY_BYTES,
    CallbackError,
    MalformedMessage,
    UnsafeXml,
    parse_xml,
    sign,
)
from stagecoach.engine.domain.wechat_callback import parse_message as parse_wechat_message
from stagecoach.engine.services.ingest import Incoming, Ingestor, Outcome, parse_message
from stagecoach.engine.services.publishing import validate_definitions
from stagecoach.engine.services.storage.models import Contact, Event, Identity, Merge
from stagecoach.engine.settings import Settings
from tests.helpers import migrated_engine
from tests.security._support import WECHAT_APP, WECHAT_TOKEN

EXAMPLES = int(os.environ.get("STAGECOACH_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail (``TimeoutError``) if the block runs longer than ``seconds``: a hard bound, so
    a parser that expands a bomb fails the test instead of hanging CI."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def peak_memory() -> Iterator[Callable[[], int]]:
    """The most memory Python allocated inside the block, in bytes (``tracemalloc``)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    peak = 0
    try:
        yield lambda: peak
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


# --- journeys: strategies -------------------------------------------------------------------

EVENT_TYPES = ("page.viewed", "email.opened", "content.downloaded", "order.paid", "demo.requested")
STAGES = ("suspect", "prospect", "lead", "opportunity", "customer")
CONTENT = ("wp", "video", "nudge")
CTX = ValidationContext(
    known_event_types=frozenset(EVENT_TYPES),
    stages=frozenset(STAGES),
    content=InMemoryContentIndex.full(CONTENT),
    known_journeys=frozenset({"onboarding", "fuzz"}),
)

names = st.sampled_from(["a", "b", "c", "nudge", "welcome", "goal", "", "$bad", "wait", "x y"])
targets = st.one_of(
    st.none(),
    names,
    st.just(END),
    st.sampled_from(["done", "", "unsubscribed"]).map(exit_to),
    st.text(max_size=4),
)
event_types = st.sampled_from([*EVENT_TYPES, "unknown.event", "x"])
stages = st.sampled_from([*STAGES, "nowhere", "$stage"])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
# What a marketer may pass by mistake: values with no JSON form.
odd_values = st.one_of(
    st.datetimes(timezones=st.just(UTC)),
    st.frozensets(st.integers(), max_size=2),
    st.binary(max_size=3),
)
ops = st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "contains", "exists"])
paths = st.sampled_from(["plan", "plan.tier", "score", "content_id", "x"])
filters = st.one_of(
    st.builds(PropertyFilter, path=paths, op=ops, value=scalars),
    st.builds(
        PropertyFilter,
        path=paths,
        op=st.sampled_from(["in", "not_in"]),
        value=st.lists(scalars, max_size=3),
    ),
)
# Mostly plausible spans, sometimes absurd ones (up to timedelta.max): a typo'd journey
# must be refused when it compiles, not crash every enrolment when a timer is computed.
huge = st.timedeltas(min_value=timedelta(days=36_500), max_value=timedelta.max)
positive = st.one_of(
    st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=400)), huge
)
durations = st.one_of(
    st.just(timedelta(0)),
    st.timedeltas(min_value=timedelta(days=-30), max_value=timedelta(days=400)),
    huge,
)


def _conditions(
    types: st.SearchStrategy[str], stage_names: st.SearchStrategy[str]
) -> st.SearchStrategy[Condition]:
    leaves: st.SearchStrategy[Condition] = st.one_of(
        st.builds(
            lambda t, where, within, count: event(t, where=where, within=within, count=count),
            types,
            st.none() | st.lists(filters, max_size=2),
            st.none() | positive,
            st.integers(1, 3),
        ),
        st.builds(score_at_least, st.floats(allow_nan=False, allow_infinity=False)),
        st.builds(grade_at_least, st.sampled_from(GRADES)),
        st.builds(lambda s: stage_in(*s), st.lists(stage_names, min_size=1, max_size=3)),
        st.builds(lambda f: attribute(f.path, f.op, f.value), filters),
        st.builds(has_tag, st.text(max_size=6)),
        st.just(Always()),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.builds(lambda a, b: a & b, inner, inner),
            st.builds(lambda parts: AnyOf(tuple(parts)), st.lists(inner, max_size=3)),
            st.builds(Not, inner),
        ),
        max_leaves=6,
    )


conditions = _conditions(event_types, stages)
matchers = st.builds(
    lambda t, where: on_event(t, where=where).matcher,
    event_types,
    st.none() | st.lists(filters, max_size=2),
)
content = st.one_of(
    st.sampled_from([*CONTENT, "missing-item"]),
    st.builds(
        next_best,
        stage=st.none() | stages,
        kinds=st.lists(st.sampled_from(["whitepaper", "demo"]), max_size=2),
        tags=st.lists(st.text(max_size=4), max_size=2),
        exclude_consumed=st.booleans(),
    ),
)
weights = st.one_of(st.floats(-10, 100), st.just(0.0), st.just(float("nan")), st.just(float("inf")))

steps = st.one_of(
    st.builds(
        send,
        content,
        channel=st.sampled_from(["email", "wechat", "preferred", "fax"]),
        id=names,
        next=targets,
        on_failure=targets,
    ),
    st.builds(wait, durations, id=names, next=targets),
    st.builds(wait_until, st.times(), id=names, next=targets),
    st.builds(
        lambda events, timeout, on_timeout, id, next: WaitForEventStep(
            id=id,
            matchers=tuple(events),
            timeout=timeout,
            next=next,
            on_timeout=on_timeout,
        ),
        st.lists(matchers, max_size=3),
        st.none() | durations,
        targets,
        names,
        targets,
    ),
    st.builds(
        lambda events, timeout, id: wait_for(*events, timeout=timeout, id=id),
        st.lists(event_types, min_size=1, max_size=2),
        durations,
        names,
    ),
    st.builds(branch, conditions, then=targets, else_=targets, id=names),
    st.builds(split, st.dictionaries(targets, weights, max_size=3), id=names),
    st.builds(
        lambda arms, id: SplitStep(id=id, branches=tuple(arms)),
        st.lists(st.builds(SplitBranch, weights, targets, st.text(max_size=3)), max_size=3),
        names,
    ),
    st.builds(holdout, st.floats(-10, 110), id=names),
    st.builds(set_attribute, st.text(max_size=6), json_values | odd_values, id=names, next=targets),
    st.builds(add_tag, st.text(max_size=6), id=names, next=targets),
    st.builds(change_stage, stages, reason=st.text(max_size=6), id=names, next=targets),
    st.builds(hand_off, reason=st.text(max_size=6), id=names, next=targets, on_failure=targets),
    st.builds(enrol, st.sampled_from(["onboarding", "fuzz", "nowhere"]), id=names, next=targets),
    st.builds(goal, id=names),
    st.builds(exit_journey, st.text(max_size=6), id=names),
)
entries = st.one_of(st.builds(stage_entered, stages), st.builds(on_event, event_types))
reentries = st.one_of(
    st.just(ReEntry.never()), st.just(ReEntry.always()), st.builds(ReEntry.after, durations)
)
journeys = st.builds(
    Journey,
    name=st.sampled_from(["fuzz", "", "$fuzz", "journey with spaces"]),
    entry=st.lists(entries, max_size=3),
    steps=st.lists(steps, max_size=8),
    reentry=reentries,
    exit_when=st.none() | conditions,
    goal=st.none() | conditions,
    locales=st.lists(st.sampled_from(["en", "zh-CN", "fr"]), max_size=3),
)


SOUND_TYPES = st.sampled_from(EVENT_TYPES)
SOUND_STAGES = st.sampled_from(STAGES)
sound_conditions = _conditions(SOUND_TYPES, SOUND_STAGES)


@st.composite
def sound_journeys(draw: st.DrawFn) -> Journey:
    """Journeys built to validate (known names, unique ids, targets that exist), so the
    compiler's success path and the interpreter see many; some still fail (a loop with no
    wait, an unreachable step), which is fine."""
    count = draw(st.integers(1, 7))
    ids = [f"s{n}" for n in range(count)]
    target = st.sampled_from([None, None, None, END, exit_to("done"), *ids])
    wait_span = st.one_of(
        st.timedeltas(min_value=timedelta(minutes=1), max_value=timedelta(days=90)), huge
    )
    built: list[Any] = []
    for sid in ids:
        kind = draw(
            st.sampled_from(
                [
                    "send",
                    "wait",
                    "wait_until",
                    "wait_for",
                    "branch",
                    "split",
                    "set",
                    "tag",
                    "stage",
                    "hand_off",
                    "enrol",
                    "goal",
                    "exit",
                ]
            )
        )
        nxt = draw(target)
        if kind == "send":
            what = draw(
                st.one_of(
                    st.sampled_from(CONTENT), st.builds(next_best, stage=st.none() | SOUND_STAGES)
                )
            )
            channel = cast(Channel, draw(st.sampled_from(["email", "wechat", "preferred"])))
            built.append(send(what, channel=channel, id=sid, next=nxt, on_failure=draw(target)))
        elif kind == "wait":
            built.append(wait(draw(wait_span), id=sid, next=nxt))
        elif kind == "wait_until":
            built.append(wait_until(draw(st.times()), id=sid, next=nxt))
        elif kind == "wait_for":
            types = draw(st.lists(SOUND_TYPES, min_size=1, max_size=2))
            timeout = draw(wait_span)
            built.append(
                wait_for(*types, timeout=timeout, on_timeout=draw(target), id=sid, next=nxt)
            )
        elif kind == "branch":
            built.append(branch(draw(sound_conditions), then=nxt, else_=draw(target), id=sid))
        elif kind == "split":
            arms = draw(st.dictionaries(target, st.floats(1, 100), min_size=1, max_size=3))
            built.append(split(arms, id=sid))
        elif kind == "set":
            built.append(set_attribute("plan", draw(json_values), id=sid, next=nxt))
        elif kind == "tag":
            built.append(add_tag("vip", id=sid, next=nxt))
        elif kind == "stage":
            built.append(change_stage(draw(SOUND_STAGES), reason="fuzz", id=sid, next=nxt))
        elif kind == "hand_off":
            built.append(hand_off(reason="mql", id=sid, next=nxt, on_failure=draw(target)))
        elif kind == "enrol":
            built.append(enrol("onboarding", id=sid, next=nxt))
        elif kind == "goal":
            built.append(goal(id=sid))
        else:
            built.append(exit_journey("fuzz", id=sid))
    cooldown = st.one_of(
        st.timedeltas(min_value=timedelta(hours=1), max_value=timedelta(days=90)), huge
    )
    return Journey(
        "fuzz",
        entry=draw(
            st.lists(
                st.one_of(st.builds(stage_entered, SOUND_STAGES), st.builds(on_event, SOUND_TYPES)),
                min_size=1,
                max_size=2,
            )
        ),
        steps=built,
        reentry=draw(
            st.one_of(
                st.just(ReEntry.never()),
                st.just(ReEntry.always()),
                st.builds(ReEntry.after, cooldown),
            )
        ),
        exit_when=draw(st.none() | sound_conditions),
        goal=draw(st.none() | sound_conditions),
        locales=("zh-CN", "en"),
    )


def _compile(journey: Journey) -> JourneySpec | None:
    """The compiled spec, or None after a JourneyValidationError; anything else fails."""
    try:
        spec = compile_journey(journey, CTX)
    except JourneyValidationError as exc:
        problems = exc.problems
        assert problems, "a validation error lists its problems"
        assert all(p.message and p.fix for p in problems)
        return None
    again = JourneySpec.from_json(spec.to_json())
    assert again.version == spec.version
    return spec


@FUZZ
@given(journey=st.one_of(journeys, sound_journeys()))
def test_the_compiler_returns_a_spec_or_a_validation_error(journey: Journey) -> None:
    _compile(journey)


# --- journeys: the interpreter -------------------------------------------------------------


def _bundled_specs() -> list[JourneySpec]:
    return list(validate_definitions(Settings()).values())


BUNDLED = _bundled_specs()

records = st.builds(
    EventRecord,
    type=st.sampled_from(
        sorted({t for s in BUNDLED for t in s.event_types()} | set(EVENT_TYPES) | {"noise"})
    ),
    at=st.datetimes(
        min_value=datetime(2025, 1, 1), max_value=datetime(2028, 1, 1), timezones=st.just(UTC)
    ),
    properties=st.dictionaries(
        st.sampled_from(["score", "plan", "content_id"]), scalars, max_size=2
    ),
)
facts_parts = st.fixed_dictionaries(
    {
        "stage": stages | st.just(""),
        "score": st.floats(-100, 1000),
        "grade": st.none() | st.sampled_from([*GRADES, "Z"]),
        "attributes": st.dictionaries(
            st.sampled_from(["timezone", "plan", "service_recovery", "nps_score"]),
            st.one_of(st.sampled_from(["Asia/Shanghai", "Not/AZone", "open"]), scalars),
            max_size=3,
        ),
        "tags": st.frozensets(st.text(max_size=4), max_size=2),
        "events": st.lists(records, max_size=4),
    }
)


def _facts(parts: dict[str, Any], now: datetime) -> Facts:
    return Facts(now=now, **parts)


def _jsonable(cursor: Cursor) -> None:
    text = json.dumps(cursor.to_dict(), allow_nan=False)
    assert Cursor.from_dict(json.loads(text)) == cursor


def _drive(data: st.DataObject, spec: JourneySpec, *, moves: int = 12) -> None:
    """Feed ``spec`` a random input sequence, aimed at what the cursor waits for half the
    time; only JourneyRuntimeError (misuse) may come out besides a new cursor."""
    cursor: Cursor | None = None
    now = T0
    step_ids = [s.id for s in spec.steps] + ["no-such-step"]
    for _ in range(moves):
        now = now + data.draw(
            st.timedeltas(min_value=timedelta(hours=-2), max_value=timedelta(days=40))
        )
        at = (
            now.replace(tzinfo=None) if data.draw(st.integers(0, 30)) == 0 else now
        )  # naive: misuse
        facts = _facts(data.draw(facts_parts), now)
        waiting = cursor.waiting if cursor is not None else None
        aimed = data.draw(st.booleans())
        kind = data.draw(
            st.sampled_from(["start", "timer", "event", "delivery", "handoff", "cancel"])
        )
        if cursor is None and data.draw(st.integers(0, 4)) != 0:
            kind = "start"
        inputs: Any
        if kind == "start":
            inputs = Start(
                now=at, facts=facts, contact_id="c_fuzz", enrolment=data.draw(st.integers(1, 3))
            )
        elif kind == "timer":
            timer = (
                waiting.timer_id
                if aimed and waiting and waiting.timer_id
                else data.draw(st.text(max_size=6))
            )
            inputs = TimerFired(now=at, facts=facts, timer_id=timer)
        elif kind == "event":
            inputs = EventReceived(now=at, facts=facts, event=data.draw(records))
        elif kind == "delivery":
            target = waiting.step_id if aimed and waiting else data.draw(st.sampled_from(step_ids))
            inputs = DeliveryResult(
                now=at,
                facts=facts,
                step_id=target,
                ok=data.draw(st.booleans()),
                permanent_error=data.draw(st.none() | st.text(max_size=6)),
                content_id=data.draw(st.none() | st.sampled_from(CONTENT)),
            )
        elif kind == "handoff":
            target = waiting.step_id if aimed and waiting else data.draw(st.sampled_from(step_ids))
            inputs = HandoffResult(now=at, facts=facts, step_id=target, ok=data.draw(st.booleans()))
        else:
            inputs = Cancel(now=at, facts=facts, reason=data.draw(st.text(max_size=6)))
        try:
            new, commands = step(spec, cursor, inputs)
        except JourneyRuntimeError:
            misuse = (
                at.tzinfo is None
                or (kind == "start" and cursor is not None)
                or (kind != "start" and cursor is None)
            )
            assert misuse, f"JourneyRuntimeError for a well-formed {kind} input"
            continue
        _jsonable(new)
        for command in commands:
            json.dumps(command.to_dict())  # what the workflow records
        if cursor is not None and not cursor.active:
            assert new == cursor, "a finished enrolment moved"
            assert commands == ()
        if new.active:
            assert new.waiting is not None, "an active cursor waits for something"
            assert spec.step(new.waiting.step_id) is not None
        cursor = new


@FUZZ
@given(data=st.data())
def test_the_interpreter_survives_any_input_sequence_on_the_bundled_journeys(
    data: st.DataObject,
) -> None:
    spec = data.draw(st.sampled_from(BUNDLED))
    _drive(data, spec)


@FUZZ
@given(data=st.data(), journey=sound_journeys())
def test_the_interpreter_survives_any_input_sequence_on_any_compiled_journey(
    data: st.DataObject, journey: Journey
) -> None:
    spec = _compile(journey)
    if spec is None:
        return
    _drive(data, spec, moves=8)


def test_a_value_with_no_json_form_is_a_validation_error_naming_its_step() -> None:
    """Found by the compiler fuzz: ``set_attribute("x", datetime)`` raised a bare
    ``TypeError`` from the spec's content hash, naming neither journey nor step."""
    journey = Journey(
        "fuzz",
        entry=stage_entered("lead"),
        steps=[wait(days=1), set_attribute("converted_at", T0, id="stamp")],
    )
    with pytest.raises(JourneyValidationError) as caught:
        compile_journey(journey, CTX)
    [problem] = caught.value.problems
    assert problem.step == "step 'stamp'"
    assert "JSON" in problem.message


@pytest.mark.parametrize(
    "absurd",
    [
        wait(days=3_000_000, id="nap"),
        wait_for("order.paid", timeout=timedelta(days=3_000_000), id="nap"),
        branch(event("order.paid", within=timedelta(days=900_000)), id="nap"),
    ],
    ids=["wait", "timeout", "window"],
)
def test_an_absurdly_long_span_is_refused_when_the_journey_compiles(absurd: Any) -> None:
    """Found by the interpreter fuzz: such a journey compiled, then every enrolment
    raised OverflowError computing its timer (a workflow task failing forever)."""
    journey = Journey("fuzz", entry=stage_entered("lead"), steps=[absurd, goal()])
    with pytest.raises(JourneyValidationError) as caught:
        compile_journey(journey, CTX)
    assert any(p.step == "step 'nap'" and "longer than" in p.message for p in caught.value.problems)


def test_the_bundled_journeys_compile() -> None:
    assert {s.name for s in BUNDLED} >= {"b2b_nurture", "onboarding", "nps_survey"}


# --- identity merge -------------------------------------------------------------------------

USERS = ("u1", "u2", "u3")
ANONYMOUS = ("a1", "a2", "a3")
EMAILS = ("li@example.cn", "wang@example.cn")

messages = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("identify")},
        optional={
            "userId": st.sampled_from(USERS),
            "anonymousId": st.sampled_from(ANONYMOUS),
            "traits": st.fixed_dictionaries({}, optional={"email": st.sampled_from(EMAILS)}),
        },
    ),
    st.fixed_dictionaries(
        {"type": st.just("track"), "event": st.sampled_from(EVENT_TYPES)},
        optional={"userId": st.sampled_from(USERS), "anonymousId": st.sampled_from(ANONYMOUS)},
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("alias"),
            "previousId": st.sampled_from(USERS + ANONYMOUS + ("ghost",)),
            "userId": st.sampled_from(USERS),
        },
        optional={"anonymousId": st.sampled_from(ANONYMOUS)},
    ),
)


class _Components:
    """Union-find over identities: what the messages said belongs together."""

    def __init__(self) -> None:
        self.parent: dict[tuple[str, str], tuple[str, str]] = {}

    def add(self, node: tuple[str, str]) -> None:
        self.parent.setdefault(node, node)

    def find(self, node: tuple[str, str]) -> tuple[str, str]:
        while self.parent[node] != node:
            node = self.parent[node]
        return node

    def union(self, nodes: Sequence[tuple[str, str]]) -> None:
        for node in nodes:
            self.add(node)
        for node in nodes[1:]:
            self.parent[self.find(node)] = self.find(nodes[0])


def _expected(accepted: Sequence[Incoming]) -> _Components:
    """The model: each new message ties its identities together; an alias also ties the
    user to whatever identity its previous id already was (user or anonymous id), or
    makes the previous id an anonymous id of the user's."""
    model = _Components()
    seen: set[str] = set()
    for m in accepted:
        if m.message_id in seen:
            continue  # a duplicate: nothing of it is applied
        seen.add(m.message_id)
        nodes = [(k, v) for k, v in m.identities.items() if v]
        for node in nodes:  # stored before the previous id is looked up
            model.add(node)
        if m.kind == "alias" and m.previous_id:
            previous = (("user_id", m.previous_id), ("anonymous_id", m.previous_id))
            known = [n for n in previous if n in model.parent]
            nodes += known or [("anonymous_id", m.previous_id)]
        if nodes:
            model.union(nodes)
    return model


@FUZZ
@given(
    batch=st.lists(st.tuples(messages, st.integers(0, 5)), min_size=1, max_size=14),
    cuts=st.lists(st.integers(1, 4), min_size=1, max_size=6),
)
def test_identity_merges_keep_one_live_contact_per_identity_and_lose_no_event(
    batch: list[tuple[dict[str, Any], int]], cuts: list[int]
) -> None:
    received = datetime.now(UTC)
    accepted: list[Incoming] = []
    for n, (raw, reuse) in enumerate(batch):
        # Some messages reuse an earlier message id (a client retry, or a collision).
        message_id = f"m{reuse}" if reuse < 2 and n > 0 else f"m-{n}"
        parsed = parse_message(
            {**raw, "messageId": message_id}, received_at=received, source="fuzz"
        )
        if isinstance(parsed, Incoming):  # one naming nobody is refused at the API
            accepted.append(parsed)
    if not accepted:
        return
    # Group commits of random sizes: the bulk path and the row-by-row path interleave.
    requests: list[list[Incoming]] = []
    at = 0
    for size in cuts * len(accepted):
        if at >= len(accepted):
            break
        requests.append(accepted[at : at + size])
        at += size
    engine = migrated_engine("sqlite://")
    try:
        ingestor = Ingestor(engine)
        outcomes: list[Outcome] = []
        for first in range(0, len(requests), 2):  # two requests per transaction
            for request_outcomes in ingestor.store(requests[first : first + 2]):
                outcomes.extend(request_outcomes)
        _check_store(engine, accepted, outcomes, _expected(accepted))
    finally:
        engine.dispose()


def _check_store(
    engine: Engine, accepted: list[Incoming], outcomes: list[Outcome], model: _Components
) -> None:
    with Session(engine) as session:
        contacts = {c.id: c for c in session.exec(select(Contact)).all()}
        merges = {m.merged_id: m.into_id for m in session.exec(select(Merge)).all()}
        identities = {(i.kind, i.value): i.contact_id for i in session.exec(select(Identity)).all()}
        events = list(session.exec(select(Event)).all())
    live = {cid for cid, c in contacts.items() if cid not in merges}
    # Merged contacts are marked, live ones are not.
    assert all(contacts[m].stage == "merged" for m in merges if m in contacts)
    assert all(contacts[c].stage != "merged" for c in live)
    # Every identity belongs to exactly one live contact (the key is unique by the schema).
    assert set(identities.values()) <= live
    # Merges form no cycle and every chain ends at a live contact.
    for start in merges:
        seen, current = set(), start
        while current in merges:
            assert current not in seen, f"merge cycle through {current}"
            seen.add(current)
            current = merges[current]
        assert current in live
    # No event lost or stored twice; each on a live contact.
    wanted = {m.message_id for m in accepted}
    assert sorted(e.message_id for e in events) == sorted(wanted)
    assert {e.contact_id for e in events} <= live
    # Each outcome names a contact that is, or was merged into, a live one.
    for outcome in outcomes:
        current = outcome.contact_id
        while current in merges:
            current = merges[current]
        assert current in live
    # Contacts are exactly the connected components of what messages tied together.
    assert set(identities) == set(model.parent)
    for a in identities:
        for b in identities:
            together = identities[a] == identities[b]
            assert together == (model.find(a) == model.find(b)), (a, b)
    # A live contact without identities is one that only lost them to a merge: none here.
    assert live == set(identities.values())


# --- the WeChat XML parser -----------------------------------------------------------------


def _refused_or_parsed(body: bytes) -> dict[str, str] | None:
    with time_limit(2.0):
        try:
            fields = parse_xml(body)
        except CallbackError:
            return None
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    with contextlib.suppress(MalformedMessage):
        parse_wechat_message(fields)
    return fields


@FUZZ
@given(body=st.binary(max_size=2048))
def test_random_bytes_are_parsed_or_refused(body: bytes) -> None:
    _refused_or_parsed(body)


_XML_ALPHABET = string.ascii_letters + string.digits + "<>/!?[]-=\"' &;#:%\n\t" + "中ё\x00\x01"
xml_ish = st.text(alphabet=_XML_ALPHABET, max_size=300)
tags = st.sampled_from(
    ["xml", "ToUserName", "FromUserName", "CreateTime", "MsgType", "Content", "Event", "a"]
)


def _element(tag: str, text: str, children: list[str]) -> str:
    return f"<{tag}>{text}{''.join(children)}</{tag}>"


trees = st.recursive(
    st.builds(
        lambda t, x: _element(t, x, []),
        tags,
        st.text(alphabet=string.printable, max_size=20).map(
            lambda s: s.replace("<", "&lt;").replace("&", "&amp;")
        ),
    ),
    lambda inner: st.builds(
        lambda t, kids: _element(t, "", kids), tags, st.lists(inner, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(
    prefix=st.sampled_from(
        ["", '<?xml version="1.0" encoding="utf-8"?>', "\ufeff", " ", "<!-- c -->"]
    ),
    tree=trees,
    noise=xml_ish,
    where=st.integers(0, 3),
)
def test_random_and_malformed_xml_is_parsed_or_refused(
    prefix: str, tree: str, noise: str, where: int
) -> None:
    document = prefix + [tree, tree + noise, noise + tree, tree[: len(tree) // 2] + noise][where]
    _refused_or_parsed(document.encode("utf-8", "surrogatepass"))


@FUZZ
@given(fields=st.dictionaries(tags, st.text(max_size=40), max_size=8))
def test_any_message_fields_are_a_message_or_malformed(fields: dict[str, str]) -> None:
    try:
        message = parse_wechat_message(fields)
    except MalformedMessage:
        return
    assert message.openid
    assert message.create_time >= 946_684_800


def _billion_laughs() -> str:
    lines = ['<!ENTITY lol0 "lol">']
    lines += [f'<!ENTITY lol{n} "{("&lol" + str(n - 1) + ";") * 10}">' for n in range(1, 10)]
    dtd = "".join(lines)
    return f'<?xml version="1.0"?><!DOCTYPE xml [{dtd}]><xml><Content>&lol9;</Content></xml>'


BOMBS: dict[str, str] = {
    "billion laughs": _billion_laughs(),
    "quadratic blowup": (
        '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "'
        + "a" * 20_000
        + '">]><xml><Content>'
        + "&a;" * 10_000
        + "</Content></xml>"
    )[: MAX_BODY_BYTES - 1],
    "external entity": (
        '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        "<xml><FromUserName>oUser</FromUserName><Content>&xxe;</Content></xml>"
    ),
    "external entity over http": (
        '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "http://127.0.0.1:9/x">]>'
        "<xml><Content>&xxe;</Content></xml>"
    ),
    "external dtd": (
        '<?xml version="1.0"?><!DOCTYPE xml SYSTEM "http://127.0.0.1:9/evil.dtd">'
        "<xml><Content>x</Content></xml>"
    ),
    "public dtd": (
        '<?xml version="1.0"?><!DOCTYPE xml PUBLIC "-//EVIL//DTD" "file:///etc/passwd">'
        "<xml><Content>x</Content></xml>"
    ),
    "parameter entities": (
        '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY % p SYSTEM "file:///etc/passwd">%p;]>'
        "<xml><Content>x</Content></xml>"
    ),
    "empty internal dtd": '<?xml version="1.0"?><!DOCTYPE xml []><xml><Content>x</Content></xml>',
    "entity in attribute": (
        '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaa">]><xml x="&a;&a;"><Content/></xml>'
    ),
}


@pytest.mark.parametrize("bomb", list(BOMBS), ids=list(BOMBS))
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_xml_bombs_are_refused_quickly_and_never_expanded(bomb: str, encoding: str) -> None:
    document = BOMBS[bomb]
    if encoding != "utf-8":
        document = document.replace(
            '<?xml version="1.0"?>', f'<?xml version="1.0" encoding="{encoding}"?>'
        )
    body = document.encode(encoding)
    with time_limit(30.0), peak_memory() as peak, pytest.raises(CallbackError) as caught:
        parse_xml(body)
    # Refused before any expansion: an expanded billion laughs is gigabytes, a quadratic
    # blow-up hundreds of megabytes. (A memory bound, not a time one: the suite's load
    # varies, the allocations do not.)
    assert peak() < 2 * 1024 * 1024, peak()
    assert isinstance(caught.value, UnsafeXml) or len(body) > MAX_BODY_BYTES
    assert "root:" not in str(caught.value)  # nothing of /etc/passwd was read


def test_a_body_over_the_limit_is_refused_unread() -> None:
    body = b"<xml><Content>" + b"x" * MAX_BODY_BYTES + b"</Content></xml>"
    with time_limit(1.0), pytest.raises(CallbackError, match="limit"):
        parse_xml(body)


def test_bombs_sent_to_the_callback_route_with_a_valid_signature_are_refused(
    api: TestClient, engine: Engine
) -> None:
    """End to end: even an authenticated (signed) callback carrying a bomb is a quick 400."""
    timestamp, nonce = str(int(datetime.now(UTC).timestamp())), "12345"
    signature = sign(WECHAT_TOKEN, timestamp, nonce)
    for name, document in BOMBS.items():
        with time_limit(30.0), peak_memory() as peak:
            response = api.post(
                f"/wechat/{WECHAT_APP}",
                params={"signature": signature, "timestamp": timestamp, "nonce": nonce},
                content=document.encode(),
                headers={"Content-Type": "application/xml"},
            )
        assert response.status_code in (400, 413), (name, response.status_code)
        assert peak() < 8 * 1024 * 1024, (name, peak())
    with Session(engine) as session:
        assert list(session.exec(select(Event)).all()) == []
