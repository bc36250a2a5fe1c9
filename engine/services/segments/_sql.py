# ruff: noqa: S608
# The SQL is assembled from a condition's parts: every value a marketer wrote enters it
# through ``_text`` or ``_double`` (quoted literals), never as raw text.
"""A segment's condition as one SQL query over the analytics store (DuckDB).

A backfill asks, for every contact at once, the question each contact workflow asks of
itself: does the condition hold at ``now``? :func:`compile_members` turns a condition
(``stagecoach.engine.domain.conditions``) into one ``SELECT`` of contact ids over the
store's tables (``contacts``, ``events``, ``journey_enrolments``, ``deliveries``), and
:func:`members` runs it.

Why DuckDB: it is already the analytics store (a maintained, columnar copy of the
database that ``AnalyticsStore.sync`` keeps fresh), and a columnar engine counts twenty
million events by type and contact in well under a second, where the operational
database (SQLite or PostgreSQL) would read them row by row. Nothing new to run or keep.

The answer must be the one ``Condition.evaluate`` gives for facts assembled from the
stored rows (``stagecoach.engine.services.segments.backfill.stored_facts``, the
row-by-row reference): the tests compare both on random data. What "stored facts" are:

- ``stage``: the contact row's stage (``""`` before its workflow opened it);
- traits: the contact row's traits (the workflow's attributes at its last stage
  change), under the traits of events received after that and over those received
  before it, latest first (``stored_traits`` of the contacts API); ``consent`` is
  never read from events' traits, and ``merged_into`` is dropped;
- consent per channel: the latest (by event id) of an event's ``traits.consent`` entry
  for the channel and a consent event (``email.unsubscribed``...), the event type
  winning within one event; without either, email is allowed when the contact has an
  email trait, WeChat is not (``ContactState.consented``);
- events: every stored event except the segment system events; a rule's event window
  is the contact's latest 200 of them by id (``EVENT_WINDOW``), lifetime counts and
  last occurrences are over all of them (``counts``, ``last_seen``);
- journeys: enrolments with status ``active``; content received: deliveries ``sent``;
- ``in_segment``: the members of the referenced segment's read version (passed in);
- buckets: ``bucket_of``'s sha256, computed by DuckDB's ``sha256``.

Kinds that compile: ``event``, ``performed``, ``last_performed``, ``attribute`` (every
operator, for string, number, boolean and null values), ``attribute_date``,
``stage_in``, ``stage_at_least``, ``consented``, ``in_journey``, ``received``,
``in_segment``, ``bucket``, ``all``, ``any``, ``not``, ``always``.

Kinds that do not (:class:`NotCompilable`, naming the kind): ``score_at_least``,
``score_between`` (a decaying score is a replay of the scoring model over the
contact's events, not a column), ``grade_at_least``, ``grade_in`` (the grading
model's rules over the traits) and ``has_tag`` (tags are not stored). An attribute
test whose value is a list or an object (other than the list of ``in``), or a path
DuckDB cannot quote, does not compile either. The backfill then evaluates that
segment row by row in Python instead: never an approximation.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa

from stagecoach.engine.domain.conditions import (
    AllOf,
    Always,
    AnyOf,
    AttributeDate,
    AttributeMatches,
    Condition,
    Consented,
    EventMatcher,
    EventOccurred,
    InJourney,
    InSegment,
    LastPerformed,
    Not,
    Performed,
    PropertyFilter,
    RandomBucket,
    Received,
    StageAtLeast,
    StageIn,
)
from stagecoach.engine.domain.contact import CHANNELS, CONSENT_EVENTS, EVENT_WINDOW
from stagecoach.engine.domain.segments import SYSTEM_EVENTS

UNCOMPILABLE = frozenset(
    {"score_at_least", "score_between", "grade_at_least", "grade_in", "has_tag"}
)
"""Kinds stored history cannot answer in SQL (module docstring)."""

_NUMERIC = "('BIGINT', 'UBIGINT', 'DOUBLE', 'BOOLEAN')"
INSTANTS = "_instants"


class NotCompilable(Exception):
    """A condition (``kind``) has no exact SQL form; evaluate it row by row instead."""

    def __init__(self, kind: str, why: str) -> None:
        self.kind = kind
        super().__init__(f"condition kind {kind!r} does not compile to SQL: {why}")


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _double(value: float) -> str:
    return f"CAST({_text(repr(float(value)))} AS DOUBLE)"


def _moment(value: datetime) -> str:
    naive = value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    return f"TIMESTAMP {_text(naive.isoformat(' '))}"


def _json_path(parts: Sequence[str], kind: str) -> str:
    for part in parts:
        if '"' in part or "\\" in part:
            raise NotCompilable(kind, f"the path part {part!r} holds a quote or backslash")
    return "$" + "".join(f'."{p}"' for p in parts)


def _number(v: str) -> str:
    """A JSON number or boolean as DOUBLE (Python's ``True == 1``)."""
    return (
        f"(CASE WHEN json_type({v}) = 'BOOLEAN' THEN "
        f"(CASE WHEN json_extract_string({v}, '$') = 'true' THEN 1.0 ELSE 0.0 END) "
        f"ELSE TRY_CAST(json_extract_string({v}, '$') AS DOUBLE) END)"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, bool | int | float)


def _equals(v: str, expected: Any, kind: str) -> str:
    """``actual == expected`` as Python has it, ``v`` a non-NULL JSON expression."""
    if expected is None:
        return f"(json_type({v}) = 'NULL')"
    if isinstance(expected, str):
        return f"(json_type({v}) = 'VARCHAR' AND json_extract_string({v}, '$') = {_text(expected)})"
    if _is_number(expected):
        if isinstance(expected, float) and not math.isfinite(expected):
            raise NotCompilable(kind, f"the value {expected!r} is not a JSON number")
        return f"(json_type({v}) IN {_NUMERIC} AND {_number(v)} = {_double(expected)})"
    raise NotCompilable(kind, f"comparing with a {type(expected).__name__} value")


def _order(v: str, op: str, expected: Any, kind: str) -> str:
    sign = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
    if expected is None:
        return "FALSE"  # None has no order: a TypeError, a non-match
    if isinstance(expected, str):
        return (
            f"(json_type({v}) = 'VARCHAR' AND "
            f"json_extract_string({v}, '$') {sign} {_text(expected)})"
        )
    if _is_number(expected):
        if isinstance(expected, float) and not math.isfinite(expected):
            raise NotCompilable(kind, f"the value {expected!r} is not a JSON number")
        return f"(json_type({v}) IN {_NUMERIC} AND {_number(v)} {sign} {_double(expected)})"
    raise NotCompilable(kind, f"ordering against a {type(expected).__name__} value")


def _member_of(v: str, values: Sequence[Any], kind: str) -> str:
    if not values:
        return "FALSE"
    return "(" + " OR ".join(_equals(v, x, kind) for x in values) + ")"


def filter_sql(json: str, flt: PropertyFilter, kind: str) -> str:
    """``flt.matches(data)`` for the JSON object ``json`` (an SQL expression)."""
    v = f"json_extract({json}, {_text(_json_path(flt.path.split('.'), kind))})"
    return compare_sql(v, flt.op, flt.value, kind)


def compare_sql(v: str, op: str, expected: Any, kind: str) -> str:
    """``_compare(op, actual, expected)`` for the JSON value ``v`` (NULL: missing)."""
    if op == "exists":
        return f"(({v}) IS NOT NULL) = {'TRUE' if expected else 'FALSE'}"
    if op == "eq":
        body = _equals(v, expected, kind)
    elif op == "ne":
        body = f"NOT {_equals(v, expected, kind)}"
    elif op == "in":
        body = _member_of(v, expected, kind)
    elif op == "not_in":
        body = f"NOT {_member_of(v, expected, kind)}"
    elif op == "contains":
        inner = _equals("x", expected, kind)
        substring = (
            f"strpos(json_extract_string({v}, '$'), {_text(expected)}) > 0"
            if isinstance(expected, str)
            else "FALSE"  # 5 in "abc": a TypeError, a non-match
        )
        body = (
            f"(CASE json_type({v}) WHEN 'VARCHAR' THEN {substring} "
            f"WHEN 'ARRAY' THEN len(list_filter(json_extract({v}, '$[*]'), lambda x: {inner})) > 0"
            " ELSE FALSE END)"
        )
    else:
        body = _order(v, op, expected, kind)
    missing = "TRUE" if op in ("ne", "not_in") else "FALSE"
    return f"(CASE WHEN ({v}) IS NULL THEN {missing} ELSE coalesce({body}, FALSE) END)"


def truthy_sql(v: str) -> str:
    """Python's ``bool(value)`` of a JSON value (NULL: missing, false)."""
    return (
        f"coalesce(CASE json_type({v}) WHEN 'NULL' THEN FALSE "
        f"WHEN 'BOOLEAN' THEN json_extract_string({v}, '$') = 'true' "
        f"WHEN 'VARCHAR' THEN json_extract_string({v}, '$') <> '' "
        f"WHEN 'ARRAY' THEN json_array_length({v}) > 0 "
        f"WHEN 'OBJECT' THEN len(json_keys({v})) > 0 "
        f"ELSE TRY_CAST(json_extract_string({v}, '$') AS DOUBLE) <> 0 END, FALSE)"
    )


def as_instant(text: str | None) -> datetime | None:
    """``conditions._as_instant`` of a text trait, as naive UTC (DuckDB's TIMESTAMP)."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):
        return None
    return moment


@dataclass
class _Compiler:
    now: datetime
    stages: tuple[str, ...]
    segments: Mapping[str, str]
    """Referenced segment -> the registered relation of its members' ids."""
    ctes: dict[str, str] = field(default_factory=dict)
    joins: list[str] = field(default_factory=list)
    trait_keys: dict[str, str] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    dates: list[str] = field(default_factory=list)
    """Text expressions of date traits: ``members`` parses their values in Python."""
    _n: int = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    @property
    def system(self) -> str:
        return "(" + ", ".join(_text(t) for t in sorted(SYSTEM_EVENTS)) + ")"

    # --- events ----------------------------------------------------------------------

    def window(self) -> str:
        """Each contact's latest ``EVENT_WINDOW`` non-system events (rules' window)."""
        if "win" not in self.ctes:
            self.ctes["heavy"] = (
                f"SELECT contact_key FROM events WHERE name NOT IN {self.system} "
                f"GROUP BY contact_key HAVING count(*) > {EVENT_WINDOW}"
            )
            self.ctes["win"] = (
                f"SELECT contact_key, id, name, occurred_at, properties FROM events "
                f"WHERE name NOT IN {self.system} "
                f"AND contact_key NOT IN (SELECT contact_key FROM heavy) "
                f"UNION ALL SELECT contact_key, id, name, occurred_at, properties FROM events "
                f"WHERE name NOT IN {self.system} "
                f"AND contact_key IN (SELECT contact_key FROM heavy) "
                f"QUALIFY row_number() OVER (PARTITION BY contact_key ORDER BY id DESC) "
                f"<= {EVENT_WINDOW}"
            )
        return "win"

    def aggregate(self, source: str, where: str, select: str, *, inner: bool = False) -> str:
        """Join one per-contact aggregate (``select``) of ``source`` rows; the result
        names it for the predicate (or, ``inner``, for another column)."""
        alias = self.name("a")
        self.ctes[alias] = (
            f"SELECT contact_key, {select} AS v FROM {source} WHERE {where} GROUP BY contact_key"
        )
        self.joins.append(f"LEFT JOIN {alias} ON {alias}.contact_key = c.contact_key")
        if inner:
            return f"{alias}.v"
        self.columns.append(f"{alias}.v AS {alias}_v")
        return f"{alias}_v"

    def matched(self, matcher: EventMatcher, kind: str) -> str:
        parts = [f"name = {_text(matcher.type)}"]
        parts += [filter_sql("properties", f, kind) for f in matcher.where]
        return " AND ".join(parts)

    def tally(self, matcher: EventMatcher, within: timedelta | None, kind: str) -> str:
        where = [self.matched(matcher, kind), f"occurred_at <= {_moment(self.now)}"]
        if within is not None:
            where.append(f"occurred_at >= {_moment(self.now - within)}")
        value = self.aggregate(self.window(), " AND ".join(where), "count(*)")
        return f"coalesce({value}, 0)"

    def lifetime(self, matcher: EventMatcher, select: str) -> str:
        """An aggregate over all the contact's events of the matcher's type."""
        where = f"name = {_text(matcher.type)} AND name NOT IN {self.system}"
        return self.aggregate("events", where, select)

    # --- traits and consent ----------------------------------------------------------

    def trait(self, key: str) -> str:
        """The contact's top-level trait ``key`` as JSON (NULL: it has none)."""
        if key in self.trait_keys:
            return self.trait_keys[key]
        path = _text(_json_path([key], "attribute"))
        column = self.name("t")
        if key == "merged_into":
            value = "CAST(NULL AS JSON)"
        elif key == "consent":
            value = f"json_extract(c.traits, {path})"
        else:
            self.ctes.setdefault(
                "tr",
                "SELECT e.contact_key, e.id, e.received_at > c.updated_at AS late, "
                "json_extract(e.context, '$.traits') AS t FROM events e "
                "JOIN contacts c ON c.contact_key = e.contact_key "
                "WHERE json_type(json_extract(e.context, '$.traits')) = 'OBJECT'",
            )
            got = f"json_extract(t, {path})"
            late = self.aggregate(
                "tr", f"late AND {got} IS NOT NULL", f"arg_max({got}, id)", inner=True
            )
            early = self.aggregate(
                "tr", f"NOT late AND {got} IS NOT NULL", f"arg_max({got}, id)", inner=True
            )
            value = f"coalesce({late}, json_extract(c.traits, {path}), {early})"
        self.trait_keys[key] = column
        self.columns.append(f"{value} AS {column}")
        return column

    def consent(self, channel: str) -> str:
        if channel not in CHANNELS:
            return "FALSE"  # facts carry consent for the engine's channels only
        events = [name for name, (ch, _) in CONSENT_EVENTS.items() if ch == channel]
        path = _text(_json_path(["traits", "consent", channel], "consented"))
        named = " ".join(
            f"WHEN name = {_text(n)} THEN {'TRUE' if CONSENT_EVENTS[n][1] else 'FALSE'}"
            for n in events
        )
        given = f"json_extract(context, {path})"
        value = f"(CASE {named} ELSE {truthy_sql(given)} END)"
        listed = "(" + ", ".join(_text(n) for n in events) + ")"
        explicit = self.aggregate(
            "events", f"(name IN {listed} OR {given} IS NOT NULL)", f"arg_max({value}, id)"
        )
        fallback = truthy_sql(self.trait("email")) if channel == "email" else "FALSE"
        return f"coalesce({explicit}, {fallback})"

    # --- the algebra -----------------------------------------------------------------

    def compile(self, cond: Condition) -> str:
        kind = cond.kind
        if kind in UNCOMPILABLE:
            raise NotCompilable(
                kind,
                "the score decays and grades and tags are not columns of stored history;"
                " the backfill evaluates this segment row by row",
            )
        if isinstance(cond, AllOf):
            return (
                "(" + " AND ".join(self.compile(c) for c in cond.conditions) + ")"
                if (cond.conditions)
                else "TRUE"
            )
        if isinstance(cond, AnyOf):
            return (
                "(" + " OR ".join(self.compile(c) for c in cond.conditions) + ")"
                if (cond.conditions)
                else "FALSE"
            )
        if isinstance(cond, Not):
            return f"(NOT {self.compile(cond.condition)})"
        if isinstance(cond, Always):
            return "TRUE"
        if isinstance(cond, StageIn):
            listed = ", ".join(_text(s) for s in cond.stages)
            return f"(coalesce(c.stage, '') IN ({listed}))"
        if isinstance(cond, StageAtLeast):
            if cond.stage not in self.stages:
                return "FALSE"
            later = self.stages[self.stages.index(cond.stage) :]
            return f"(coalesce(c.stage, '') IN ({', '.join(_text(s) for s in later)}))"
        if isinstance(cond, AttributeMatches):
            head, *rest = cond.filter.path.split(".")
            trait = self.trait(head)
            v = f"json_extract({trait}, {_text(_json_path(rest, kind))})" if rest else trait
            return compare_sql(v, cond.filter.op, cond.filter.value, kind)
        if isinstance(cond, AttributeDate):
            head, *rest = cond.path.split(".")
            trait = self.trait(head)
            v = f"json_extract({trait}, {_text(_json_path(rest, kind))})" if rest else trait
            text = f"(CASE WHEN json_type({v}) = 'VARCHAR' THEN json_extract_string({v}, '$') END)"
            self.dates.append(text)
            moment = f"(SELECT i.at FROM {INSTANTS} i WHERE i.text = {text})"
            pivot = _moment(self.now + cond.offset)
            sign = "<" if cond.op == "before" else ">="
            return f"coalesce({moment} {sign} {pivot}, FALSE)"
        if isinstance(cond, EventOccurred):
            return f"({self.tally(cond.matcher, cond.within, kind)} >= {cond.count})"
        if isinstance(cond, Performed):
            compare = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
            if cond.within is None and not cond.matcher.where:
                count = f"coalesce({self.lifetime(cond.matcher, 'count(*)')}, 0)"
            else:
                count = self.tally(cond.matcher, cond.within, kind)
            return f"({count} {compare[cond.op]} {cond.count})"
        if isinstance(cond, LastPerformed):
            now = _moment(self.now)
            last = self.aggregate(
                self.window(),
                f"{self.matched(cond.matcher, kind)} AND occurred_at <= {now}",
                "max(occurred_at)",
            )
            if not cond.matcher.where:
                kept = self.lifetime(cond.matcher, "max(occurred_at)")
                kept = f"(CASE WHEN {kept} <= {now} THEN {kept} END)"
                last = f"greatest({last}, {kept})"  # greatest ignores NULLs
            if cond.op == "never":
                return f"({last} IS NULL)"
            assert cond.age is not None
            sign = "<" if cond.op == "before" else ">="
            return f"coalesce({last} {sign} {_moment(self.now - cond.age)}, FALSE)"
        if isinstance(cond, Consented):
            return self.consent(cond.channel)
        if isinstance(cond, InJourney):
            return (
                "(c.id IN (SELECT contact_id FROM journey_enrolments WHERE status = 'active'"
                f" AND journey = {_text(cond.journey)}))"
            )
        if isinstance(cond, Received):
            return (
                "(c.id IN (SELECT contact_id FROM deliveries WHERE status = 'sent'"
                f" AND content_id = {_text(cond.content)}))"
            )
        if isinstance(cond, InSegment):
            relation = self.segments.get(cond.segment)
            if relation is None:
                return "FALSE"
            return f"(c.id IN (SELECT id FROM {relation}))"
        if isinstance(cond, RandomBucket):
            digest = f"sha256({_text(cond.salt + ':')} || c.id)"
            bucket = f"((('0x' || substr({digest}, 1, 16))::UBIGINT % 10000) / 100.0)"
            return f"({_double(cond.start)} <= {bucket} AND {bucket} < {_double(cond.stop)})"
        raise NotCompilable(kind, "no SQL form is known for it")

    def query(self, cond: Condition) -> Compiled:
        predicate = self.compile(cond)
        ctes = ",\n".join(f"{name} AS ({sql})" for name, sql in self.ctes.items())
        columns = "".join(f", {c}" for c in self.columns)
        inner = f"SELECT c.*{columns} FROM contacts c {' '.join(self.joins)}"
        head = f"WITH {ctes}\n" if ctes else ""
        # The predicate reads the aggregate and trait columns by name: one level of nesting.
        sql = f"{head}SELECT c.id FROM ({inner}) AS c WHERE {predicate} ORDER BY c.id"
        texts = None
        if self.dates:
            union = " UNION ".join(f"SELECT {d} AS text FROM ({inner}) AS c" for d in self.dates)
            texts = f"{head}SELECT DISTINCT text FROM ({union}) WHERE text IS NOT NULL"
        return Compiled(sql, texts)


@dataclass(frozen=True)
class Compiled:
    """A condition as SQL.

    Attributes:
        sql: The SELECT of member ids (one column, ``id``, ordered).
        date_texts: For date traits: a SELECT of the distinct texts to read as moments.
            Run it, and register their moments (:func:`instants`) as ``_instants``
            before ``sql``: Python's ISO 8601 parser reads them, exactly as the workflow
            does, where DuckDB's casts accept other spellings.
    """

    sql: str
    date_texts: str | None = None


def instants(texts: Iterable[str]) -> pa.Table:
    """The ``_instants`` relation: each text and the moment it reads as (or NULL)."""
    values = list(texts)
    return pa.table(
        {
            "text": pa.array(values, type=pa.string()),
            "at": pa.array([as_instant(t) for t in values], type=pa.timestamp("us")),
        }
    )


def compile_members(
    cond: Condition,
    *,
    now: datetime,
    stages: Sequence[str] = (),
    segments: Mapping[str, str] | None = None,
) -> Compiled:
    """The SQL of the contacts for which ``cond`` holds at ``now``.

    Args:
        now: The instant evaluated (aware or naive UTC).
        stages: The pipeline's stage order (``stage_at_least``).
        segments: Segments ``in_segment`` may name -> a relation of their members' ids.

    Raises:
        NotCompilable: a part of ``cond`` has no exact SQL form (module docstring).
    """
    compiler = _Compiler(now=now, stages=tuple(stages), segments=segments or {})
    return compiler.query(cond)


def members(
    con: duckdb.DuckDBPyConnection,
    cond: Condition,
    *,
    now: datetime,
    stages: Sequence[str] = (),
    segments: Mapping[str, Collection[str]] | None = None,
) -> list[str]:
    """Ids (sorted) of the store's contacts for which ``cond`` holds at ``now``.

    ``segments``: the members of each segment ``in_segment`` may name.

    Raises:
        NotCompilable: see :func:`compile_members`.
    """
    relations: dict[str, str] = {}
    registered: list[str] = []
    try:
        for n, (name, ids) in enumerate(sorted((segments or {}).items())):
            relation = f"_segment_{n}"
            con.register(relation, pa.table({"id": pa.array(sorted(ids), type=pa.string())}))
            registered.append(relation)
            relations[name] = relation
        compiled = compile_members(cond, now=now, stages=stages, segments=relations)
        if compiled.date_texts is not None:
            texts = [row[0] for row in con.execute(compiled.date_texts).fetchall()]
            con.register(INSTANTS, instants(texts))
            registered.append(INSTANTS)
        return [row[0] for row in con.execute(compiled.sql).fetchall()]
    finally:
        for relation in registered:
            con.unregister(relation)


__all__ = [
    "UNCOMPILABLE",
    "Compiled",
    "NotCompilable",
    "as_instant",
    "compare_sql",
    "compile_members",
    "filter_sql",
    "instants",
    "members",
    "truthy_sql",
]
