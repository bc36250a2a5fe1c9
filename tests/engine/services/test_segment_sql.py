"""A segment condition compiled to DuckDB SQL answers exactly as ``Condition.evaluate``
does over the facts assembled from the same stored rows, for random contacts, events,
traits, consent, enrolments and deliveries, and for random conditions of every kind that
compiles; the kinds that do not compile say so by name."""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from stagecoach.engine.domain.conditions import (
    Always,
    Condition,
    PropertyFilter,
    all_of,
    any_of,
    attribute,
    consented,
    event,
    grade_in,
    has_tag,
    in_journey,
    in_segment,
    last_performed,
    never_performed,
    performed,
    random_bucket,
    received,
    score_at_least,
    score_between,
    stage_at_least,
    stage_in,
    trait_date,
    trait_newer_than,
    trait_older_than,
)
from stagecoach.engine.domain.segments import MEMBERSHIP
from stagecoach.engine.services.analytics.store import AnalyticsStore, insert_rows
from stagecoach.engine.services.segments import _sql
from stagecoach.engine.services.segments.backfill import row_members, stored_facts
from stagecoach.workflows.pipeline import DEFAULT

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
STAGES = DEFAULT.stage_names
TYPES = [
    "page.viewed",
    "email.opened",
    "pricing.viewed",
    "email.unsubscribed",
    "wechat.subscribed",
    "identify",
    MEMBERSHIP,
]
SCALARS: list[Any] = ["manufacturing", "energy", "", "b", 0, 1, 2.5, 10, -3, True, False, None]


def _value(rng: random.Random) -> Any:
    pick = rng.random()
    if pick < 0.7:
        return rng.choice(SCALARS)
    if pick < 0.85:
        return [rng.choice(SCALARS) for _ in range(rng.randint(0, 3))]
    return {"tier": rng.choice(SCALARS)}


def _when(rng: random.Random) -> Any:
    moment = NOW + timedelta(days=rng.uniform(-90, 30))
    return rng.choice(
        [
            moment.isoformat(),
            moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
            moment.date().isoformat(),
            moment.replace(tzinfo=None).isoformat(),
            moment.astimezone().isoformat(),
            "not a date",
            "2026-13-45",
            12345,
            None,
        ]
    )


def _traits(rng: random.Random) -> dict[str, Any]:
    traits: dict[str, Any] = {}
    for key in ("industry", "employees", "plan", "tags"):
        if rng.random() < 0.7:
            traits[key] = _value(rng)
    if rng.random() < 0.6:
        traits["signed_up_at"] = _when(rng)
    if rng.random() < 0.5:
        traits["email"] = rng.choice(["a@example.cn", "", None, 0])
    if rng.random() < 0.1:
        traits["merged_into"] = "c_other"
    return traits


def _store(seed: int, contacts: int = 80) -> AnalyticsStore:
    rng = random.Random(seed)
    store = AnalyticsStore()
    people: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    enrolments: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    next_id = rng.randint(1, 1000)
    for n in range(contacts):
        cid = f"c_{n:04d}"
        updated = NOW - timedelta(days=rng.uniform(0, 60))
        people.append(
            {
                "id": cid,
                "stage": rng.choice([*STAGES, None, "disqualified"]),
                "traits": _traits(rng) if rng.random() < 0.8 else {},
                "created_at": updated - timedelta(days=10),
                "updated_at": updated,
            }
        )
        count = rng.choice([0, 1, 3, 8, 20, 30]) if n % 25 else rng.randint(300, 420)
        for _ in range(count):
            next_id += rng.randint(1, 3)
            name = rng.choice(TYPES)
            context: dict[str, Any] = {}
            if rng.random() < 0.25:
                given = _traits(rng)
                if rng.random() < 0.5:
                    given["consent"] = {
                        ch: rng.choice([True, False, 0, 1, "", "yes", None])
                        for ch in rng.sample(["email", "wechat", "sms"], rng.randint(1, 2))
                    }
                context["traits"] = given
            occurred = NOW + timedelta(days=rng.uniform(-60, 5))
            events.append(
                {
                    "id": next_id,
                    "contact_id": cid,
                    "kind": "track",
                    "name": name,
                    "properties": {"plan": _value(rng), "n": rng.randint(0, 3)}
                    if rng.random() < 0.8
                    else {},
                    "context": context,
                    "source": "api",
                    "occurred_at": occurred,
                    "received_at": NOW - timedelta(days=rng.uniform(-5, 60)),
                }
            )
        for journey in ("welcome", "nurture"):
            if rng.random() < 0.3:
                enrolments.append(
                    {
                        "id": len(enrolments) + 1,
                        "contact_id": cid,
                        "journey": journey,
                        "version": "v1",
                        "enrolment": 1,
                        "status": rng.choice(["active", "completed", "exited"]),
                        "started_at": NOW - timedelta(days=3),
                    }
                )
        for content in ("wp-a", "wp-b"):
            if rng.random() < 0.3:
                deliveries.append(
                    {
                        "id": len(deliveries) + 1,
                        "contact_id": cid,
                        "journey": "welcome",
                        "journey_version": "v1",
                        "step_id": "s",
                        "enrolment": 1,
                        "channel": "email",
                        "content_id": content,
                        "status": rng.choice(["sent", "failed", "sending"]),
                        "created_at": NOW - timedelta(days=2),
                    }
                )
    with store.read() as con:
        insert_rows(con, "contacts", people)
        insert_rows(con, "events", events)
        insert_rows(con, "journey_enrolments", enrolments)
        insert_rows(con, "deliveries", deliveries)
    return store


def _filter(rng: random.Random, paths: list[str]) -> PropertyFilter:
    op = rng.choice(["eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "contains", "exists"])
    path = rng.choice(paths)
    if op in ("in", "not_in"):
        value: Any = [rng.choice(SCALARS) for _ in range(rng.randint(0, 3))]
    elif op == "exists":
        value = rng.choice([True, False])
    else:
        value = rng.choice(SCALARS)
    return PropertyFilter(path, op, value)  # type: ignore[arg-type]


def _window(rng: random.Random) -> timedelta | None:
    return rng.choice([None, timedelta(days=7), timedelta(days=30), timedelta(hours=5)])


def _leaf(rng: random.Random) -> Condition:
    kind = rng.randrange(13)
    typ = rng.choice(TYPES)
    where = [_filter(rng, ["plan", "n", "plan.tier"])] if rng.random() < 0.3 else None
    if kind == 0:
        f = _filter(
            rng,
            [
                "industry",
                "employees",
                "plan",
                "plan.tier",
                "tags",
                "email",
                "merged_into",
                "missing",
            ],
        )
        return attribute(f.path, f.op, f.value)
    if kind == 1:
        offset = timedelta(days=rng.uniform(-60, 20))
        return rng.choice(
            [
                trait_date("signed_up_at", before=offset),
                trait_date("signed_up_at", after=offset),
                trait_older_than("signed_up_at", timedelta(days=30)),
                trait_newer_than("signed_up_at", timedelta(days=7)),
            ]
        )
    if kind == 2:
        return stage_in(*rng.sample([*STAGES, "disqualified", ""], 2))
    if kind == 3:
        return stage_at_least(rng.choice([*STAGES, "nowhere"]))
    if kind == 4:
        return event(typ, where=where, within=_window(rng), count=rng.randint(1, 3))
    if kind == 5:
        n = rng.randint(0, 4)
        op = rng.choice(["at_least", "at_most", "exactly", "more_than", "fewer_than"])
        if op == "fewer_than":
            n = max(n, 1)
        return performed(typ, where=where, within=_window(rng), **{op: n})
    if kind == 6:
        age = timedelta(days=rng.choice([1, 7, 30]))
        return rng.choice(
            [
                last_performed(typ, before=age, where=where),
                last_performed(typ, after=age, where=where),
                never_performed(typ, where=where),
            ]
        )
    if kind == 7:
        return consented(rng.choice(["email", "wechat", "sms"]))
    if kind == 8:
        return in_journey(rng.choice(["welcome", "nurture", "other"]))
    if kind == 9:
        return received(rng.choice(["wp-a", "wp-b", "wp-c"]))
    if kind == 10:
        return in_segment(rng.choice(["vips", "unknown"]))
    if kind == 11:
        start = rng.uniform(0, 90)
        return random_bucket(start, rng.uniform(start + 0.01, 100), salt=rng.choice(["", "x"]))
    return Always()


def _condition(rng: random.Random, depth: int = 0) -> Condition:
    pick = rng.random()
    if depth >= 2 or pick < 0.5:
        return _leaf(rng)
    parts = [_condition(rng, depth + 1) for _ in range(rng.randint(1, 3))]
    if pick < 0.7:
        return all_of(*parts)
    if pick < 0.9:
        return any_of(*parts)
    return ~parts[0]


def _conditions(seed: int, n: int) -> Iterator[Condition]:
    rng = random.Random(seed)
    for _ in range(n):
        yield _condition(rng)


class RowByRow:
    """``row_members`` over one store, with the contacts' facts read once: each of many
    conditions is then evaluated on the same facts, as ``row_members`` evaluates it,
    instead of reading every contact's history again per condition."""

    def __init__(self, con: Any, segments: dict[str, Any]) -> None:
        ids = [row[0] for row in con.execute("SELECT id FROM contacts ORDER BY id").fetchall()]
        self.facts = stored_facts(con, ids, now=NOW, pipeline=DEFAULT, segments=segments)

    def members(self, cond: Condition) -> list[str]:
        return sorted(cid for cid, facts in self.facts.items() if cond.evaluate(facts))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sql_members_equal_row_by_row_evaluation(seed: int) -> None:
    store = _store(seed)
    vips = {f"c_{n:04d}" for n in range(0, 80, 3)}
    with store.read() as con:
        rows = RowByRow(con, {"vips": vips})
        for n, cond in enumerate(_conditions(seed, 120)):
            got = _sql.members(con, cond, now=NOW, stages=STAGES, segments={"vips": vips})
            want = rows.members(cond)
            if n < 3:  # the shortcut is row_members itself
                assert want == row_members(
                    con, cond, now=NOW, pipeline=DEFAULT, segments={"vips": vips}
                )
            assert got == want, cond.to_dict()


def test_every_compilable_leaf_kind_is_covered_and_some_match() -> None:
    """Guard against a generator that only produces empty answers."""
    store = _store(7)
    rng = random.Random(7)
    seen: dict[str, int] = {}
    with store.read() as con:
        for _ in range(300):
            cond = _leaf(rng)
            got = _sql.members(con, cond, now=NOW, stages=STAGES, segments={"vips": {"c_0003"}})
            seen[cond.kind] = seen.get(cond.kind, 0) + len(got)
    expected = {
        "attribute",
        "attribute_date",
        "stage_in",
        "stage_at_least",
        "event",
        "performed",
        "last_performed",
        "consented",
        "in_journey",
        "received",
        "in_segment",
        "bucket",
        "always",
    }
    assert expected <= set(seen)
    assert all(seen[k] > 0 for k in expected), seen


@pytest.mark.parametrize(
    ("cond", "kind"),
    [
        (score_at_least(10), "score_at_least"),
        (score_between(1, 5), "score_between"),
        (grade_in("A"), "grade_in"),
        (stage_in("lead") & has_tag("vip"), "has_tag"),
        (~score_at_least(3), "score_at_least"),
    ],
)
def test_kinds_history_cannot_answer_are_named(cond: Condition, kind: str) -> None:
    with pytest.raises(_sql.NotCompilable, match=kind) as caught:
        _sql.compile_members(cond, now=NOW, stages=STAGES)
    assert caught.value.kind == kind


def test_an_object_valued_trait_test_does_not_compile_but_is_evaluated_row_by_row() -> None:
    cond = attribute("plan", "eq", {"tier": "a"})
    with pytest.raises(_sql.NotCompilable, match="attribute"):
        _sql.compile_members(cond, now=NOW)
    store = AnalyticsStore()
    with store.read() as con:
        insert_rows(
            con,
            "contacts",
            [
                {
                    "id": "c1",
                    "traits": {"plan": {"tier": "a"}},
                    "created_at": NOW,
                    "updated_at": NOW,
                },
                {
                    "id": "c2",
                    "traits": {"plan": {"tier": "b"}},
                    "created_at": NOW,
                    "updated_at": NOW,
                },
            ],
        )
        assert row_members(con, cond, now=NOW) == ["c1"]


def test_rules_see_the_latest_200_events_and_lifetime_counts_see_all() -> None:
    """The window is the contact's latest 200 events by id; ``counts`` and ``last_seen``
    cover its whole life (as the workflow keeps them)."""
    store = AnalyticsStore()
    rows = [
        {
            "id": n,
            "contact_id": "c1",
            "kind": "track",
            "name": "pricing.viewed" if n <= 50 else "page.viewed",
            "properties": {"plan": "pro"},
            "occurred_at": NOW - timedelta(days=1),
            "received_at": NOW - timedelta(days=1),
        }
        for n in range(1, 251)
    ]
    with store.read() as con:
        insert_rows(
            con, "contacts", [{"id": "c1", "traits": {}, "created_at": NOW, "updated_at": NOW}]
        )
        insert_rows(con, "events", rows)
        cases = {
            performed("pricing.viewed", within=timedelta(days=30)): [],
            performed("pricing.viewed", where={"plan": "pro"}): [],
            performed("pricing.viewed", exactly=50): ["c1"],
            performed("page.viewed", within=timedelta(days=30), exactly=200): ["c1"],
            event("pricing.viewed"): [],
            last_performed("pricing.viewed", after=timedelta(days=2)): ["c1"],
            last_performed("pricing.viewed", after=timedelta(days=2), where={"plan": "pro"}): [],
            never_performed("pricing.viewed", where={"plan": "pro"}): ["c1"],
        }
        for cond, want in cases.items():
            assert _sql.members(con, cond, now=NOW) == want, cond.to_dict()
            assert row_members(con, cond, now=NOW) == want, cond.to_dict()


# --- the same equivalence, with conditions drawn (and shrunk) by Hypothesis ---------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(SCALARS),
    st.integers(-5, 20),
    st.floats(-5, 20, allow_nan=False, allow_infinity=False),
    st.text(alphabet="abemnu", max_size=3),
)


def _filters(paths: list[str]) -> st.SearchStrategy[PropertyFilter]:
    path = st.sampled_from(paths)
    compared = st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "contains"])
    return st.one_of(
        st.builds(PropertyFilter, path, compared, _scalars),
        st.builds(
            PropertyFilter,
            path,
            st.sampled_from(["in", "not_in"]),
            st.lists(_scalars, max_size=3),
        ),
        st.builds(PropertyFilter, path, st.just("exists"), st.booleans()),
    )


_types = st.sampled_from(TYPES)
_where = st.one_of(st.none(), st.lists(_filters(["plan", "n", "plan.tier"]), max_size=2))
_within = st.one_of(st.none(), st.integers(1, 24 * 90).map(lambda h: timedelta(hours=h)))
_ages = st.integers(1, 24 * 60).map(lambda h: timedelta(hours=h))
_trait_paths = ["industry", "employees", "plan", "plan.tier", "tags", "email", "missing"]

_leaves: st.SearchStrategy[Condition] = st.one_of(
    _filters(_trait_paths).map(lambda f: attribute(f.path, f.op, f.value)),
    st.builds(
        lambda before, days: (
            trait_date("signed_up_at", before=timedelta(days=days))
            if before
            else trait_date("signed_up_at", after=timedelta(days=days))
        ),
        st.booleans(),
        st.integers(-90, 30),
    ),
    st.lists(st.sampled_from([*STAGES, "disqualified", ""]), min_size=1, max_size=3).map(
        lambda s: stage_in(*s)
    ),
    st.sampled_from([*STAGES, "nowhere"]).map(stage_at_least),
    st.builds(
        lambda t, w, within, n: event(t, where=w, within=within, count=n),
        _types,
        _where,
        _within,
        st.integers(1, 4),
    ),
    st.builds(
        lambda t, w, within, op, n: performed(
            t, where=w, within=within, **{op: max(n, 1) if op == "fewer_than" else n}
        ),
        _types,
        _where,
        _within,
        st.sampled_from(["at_least", "at_most", "exactly", "more_than", "fewer_than"]),
        st.integers(0, 5),
    ),
    st.builds(lambda t, w, age: last_performed(t, before=age, where=w), _types, _where, _ages),
    st.builds(lambda t, w, age: last_performed(t, after=age, where=w), _types, _where, _ages),
    st.builds(lambda t, w: never_performed(t, where=w), _types, _where),
    st.sampled_from(["email", "wechat", "sms"]).map(consented),
    st.sampled_from(["welcome", "nurture", "other"]).map(in_journey),
    st.sampled_from(["wp-a", "wp-b", "wp-c"]).map(received),
    st.sampled_from(["vips", "unknown"]).map(in_segment),
    st.builds(
        lambda start, width, salt: random_bucket(start, min(start + width, 100), salt=salt),
        st.integers(0, 98),
        st.integers(1, 60),
        st.sampled_from(["", "x", "holdout-2026"]),
    ),
)
_conditions_drawn = st.recursive(
    _leaves,
    lambda kids: st.one_of(
        st.lists(kids, min_size=1, max_size=3).map(lambda c: all_of(*c)),
        st.lists(kids, min_size=1, max_size=3).map(lambda c: any_of(*c)),
        kids.map(lambda c: ~c),
    ),
    max_leaves=5,
)


@functools.cache
def _shared_store() -> AnalyticsStore:
    return _store(11)


@functools.cache
def _shared_rows() -> RowByRow:
    with _shared_store().read() as con:
        return RowByRow(con, {"vips": VIPS})


VIPS = frozenset(f"c_{n:04d}" for n in range(1, 80, 4))


@hypothesis.settings(
    max_examples=150, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow]
)
@hypothesis.given(cond=_conditions_drawn)
def test_drawn_conditions_answer_as_row_by_row(cond: Condition) -> None:
    with _shared_store().read() as con:
        got = _sql.members(con, cond, now=NOW, stages=STAGES, segments={"vips": VIPS})
    assert got == _shared_rows().members(cond), cond.to_dict()
