"""The propensity model's features, computed in DuckDB over the analytics store.

One SQL query gives every contact's features as of a time ``at``, from what the store
held before it: the stage and how long the contact has been in it, detours taken, how
old the contact is, how recently and how often it did each of the most common events
(overall and in the last 30 days), how much distinct content it consumed, its
acquisition source and its traits (numeric ones as signed logarithms, text ones as one
flag per common value). Training asks for it at several past cut-off dates and labels
each row with whether the contact reached the target stage within the horizon after
it; scoring asks for it once, at the store's ``as_of``. The same query serves both, so
what the model was trained on is what it is scored on.

Which events, traits and sources become features is learned from the data at training
time (``Vocabulary``) and saved with the model, so a later refresh builds exactly the
columns the model expects even when new event names have appeared since.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import duckdb
import numpy as np

from stagecoach.engine.domain.propensity import PROPENSITY_SCORED
from stagecoach.engine.domain.propensity import TRAITS as PROPENSITY_TRAITS
from stagecoach.engine.domain.value import TRAITS as VALUE_TRAITS
from stagecoach.engine.domain.value import VALUE_SCORED
from stagecoach.engine.services.analytics._stats import utc_naive
from stagecoach.engine.services.analytics.pipeline import time_order

MAX_EVENTS = 14
"""The most common event names that get their own count features."""
MAX_NUMERIC_TRAITS = 4
MAX_TEXT_TRAITS = 4
MAX_TEXT_VALUES = 6
MAX_SOURCES = 6
MIN_SHARE = 0.05
"""A trait becomes a feature when at least this share of contacts has it."""
RECENT = timedelta(days=30)
OWN_EVENTS = frozenset({PROPENSITY_SCORED, VALUE_SCORED})
"""Events the engine itself sends, which the model never sees (not counted, not "last
active"), nor the traits they set (``OWN_TRAITS``): the model would learn from its own
earlier scores, every contact told would look freshly active, and the value refresh's
traits are as of its last run, not as of a training snapshot's cut-off."""
OWN_TRAITS = frozenset(PROPENSITY_TRAITS) | frozenset(VALUE_TRAITS)
_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
"""Trait keys and event names that may be spelled into SQL (others are left out)."""


class FeatureError(ValueError):
    """The store cannot give features as asked (an unknown target stage, say)."""


@dataclass(frozen=True)
class Vocabulary:
    """What the feature columns are: learned at training time and stored with the model."""

    stages: tuple[str, ...]
    """The pipeline's stages in order."""
    target: str
    """The stage a conversion reaches (``customer``); it and the stages after it end a
    contact's candidacy."""
    events: tuple[str, ...] = ()
    numeric_traits: tuple[str, ...] = ()
    text_traits: tuple[tuple[str, tuple[str, ...]], ...] = ()
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.target not in self.stages:
            raise FeatureError(
                f"target stage {self.target!r} is not a stage of the pipeline "
                f"({', '.join(self.stages)})"
            )
        if self.stages.index(self.target) == 0:
            raise FeatureError(f"target stage {self.target!r} is the first stage: nothing converts")

    @property
    def open_stages(self) -> tuple[str, ...]:
        """The stages a candidate is in: those before the target."""
        return self.stages[: self.stages.index(self.target)]

    @property
    def reached(self) -> tuple[str, ...]:
        """The target and every stage after it."""
        return self.stages[self.stages.index(self.target) :]

    def columns(self) -> list[Column]:
        """Every feature column, in the model's order."""
        cols: list[Column] = [
            Column(f"stage:{s}", f"(f.stage = {_lit(s)})::DOUBLE", "flag") for s in self.open_stages
        ]
        cols += [
            Column("days_in_stage", "ln(1 + f.days_in_stage)", "log_days"),
            Column("age_days", "ln(1 + f.age_days)", "log_days"),
            Column("detours", "f.detours::DOUBLE", "count"),
            Column("days_since_last_event", "ln(1 + coalesce(f.quiet_days, 365))", "log_days"),
            Column("events_30d", "ln(1 + coalesce(f.recent, 0))", "log_count"),
            Column("content_consumed", "ln(1 + coalesce(f.content, 0))", "log_count"),
        ]
        for i, name in enumerate(self.events):
            cols.append(Column(f"events:{name}", f"ln(1 + coalesce(f.e{i}, 0))", "log_count"))
            cols.append(Column(f"events_30d:{name}", f"ln(1 + coalesce(f.r{i}, 0))", "log_count"))
        for key in self.numeric_traits:
            value = f"TRY_CAST(json_extract_string(f.traits, {_lit('$.' + key)}) AS DOUBLE)"
            cols.append(
                Column(
                    f"trait:{key}",
                    f"coalesce(sign({value}) * ln(1 + abs({value})), 0)",
                    "log_number",
                )
            )
            cols.append(Column(f"trait_missing:{key}", f"({value} IS NULL)::DOUBLE", "flag"))
        for key, values in self.text_traits:
            text = f"json_extract_string(f.traits, {_lit('$.' + key)})"
            for v in values:
                cols.append(
                    Column(
                        f"trait:{key}={v}", f"coalesce({text} = {_lit(v)}, false)::DOUBLE", "flag"
                    )
                )
        for source in self.sources:
            cols.append(
                Column(
                    f"source:{source}",
                    f"coalesce(f.acquired_source = {_lit(source)}, false)::DOUBLE",
                    "flag",
                )
            )
        return cols

    def names(self) -> list[str]:
        return [c.name for c in self.columns()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stages": list(self.stages),
            "target": self.target,
            "events": list(self.events),
            "numeric_traits": list(self.numeric_traits),
            "text_traits": [[k, list(vs)] for k, vs in self.text_traits],
            "sources": list(self.sources),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Vocabulary:
        def names(value: Any, what: str) -> tuple[str, ...]:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise FeatureError(f"model artifact: {what} is not a list of names")
            return tuple(value)

        text = raw.get("text_traits", [])
        if not isinstance(text, list) or not all(
            isinstance(t, list) and len(t) == 2 and isinstance(t[0], str) for t in text
        ):
            raise FeatureError("model artifact: text_traits is not a list of [key, values]")
        vocab = cls(
            stages=names(raw.get("stages"), "stages"),
            target=str(raw.get("target")),
            events=names(raw.get("events", []), "events"),
            numeric_traits=names(raw.get("numeric_traits", []), "numeric_traits"),
            text_traits=tuple((k, names(vs, f"text trait {k}")) for k, vs in text),
            sources=names(raw.get("sources", []), "sources"),
        )
        spelled = [*vocab.events, *vocab.numeric_traits, *(k for k, _ in vocab.text_traits)]
        if not all(_KEY.match(n) for n in spelled):
            raise FeatureError("model artifact: an event name or trait key is not plain")
        return vocab


@dataclass(frozen=True)
class Column:
    name: str
    sql: str
    kind: str
    """How a value reads to a person (``model.top_rows``): flag, count, log_count,
    log_days (counts and days stored as ln(1 + n)), log_number (signed)."""


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def learn_vocabulary(
    con: duckdb.DuckDBPyConnection, stages: Sequence[str], target: str, before: datetime
) -> Vocabulary:
    """The events, traits and sources common enough (before ``before``) to be features."""
    at = utc_naive(before)
    events = [
        str(r[0])
        for r in con.execute(
            "SELECT name, count(*) AS n FROM events WHERE occurred_at < $at "
            "GROUP BY name ORDER BY n DESC, name LIMIT $k",
            {"at": at, "k": MAX_EVENTS * 2},
        ).fetchall()
        if _KEY.match(str(r[0])) and str(r[0]) not in OWN_EVENTS
    ][:MAX_EVENTS]
    total = int(
        con.execute("SELECT count(*) FROM contacts WHERE created_at < $at", {"at": at}).fetchall()[
            0
        ][0]
    )
    keys = con.execute(
        """
        WITH kv AS (
            SELECT unnest(json_keys(traits)) AS key, traits FROM contacts
            WHERE created_at < $at AND traits IS NOT NULL AND json_type(traits) = 'OBJECT'
        )
        SELECT key, count(*) AS n,
            count(*) FILTER (WHERE json_type(traits, '$."' || key || '"')
                IN ('BIGINT', 'UBIGINT', 'DOUBLE')) AS numeric
        FROM kv GROUP BY key ORDER BY n DESC, key
        """,
        {"at": at},
    ).fetchall()
    numeric: list[str] = []
    text: list[tuple[str, tuple[str, ...]]] = []
    for key, n, num in keys:
        if not _KEY.match(str(key)) or key in OWN_TRAITS or n < MIN_SHARE * max(total, 1):
            continue
        if num >= 0.9 * n and len(numeric) < MAX_NUMERIC_TRAITS:
            numeric.append(str(key))
        elif num == 0 and len(text) < MAX_TEXT_TRAITS:
            values = [
                str(r[0])
                for r in con.execute(
                    f"SELECT json_extract_string(traits, {_lit('$.' + str(key))}) AS v, "
                    "count(*) AS n FROM contacts WHERE created_at < $at AND v IS NOT NULL "
                    "GROUP BY v ORDER BY n DESC, v LIMIT $k",
                    {"at": at, "k": MAX_TEXT_VALUES},
                ).fetchall()
            ]
            if len(values) >= 2:
                text.append((str(key), tuple(values)))
    sources = tuple(
        str(r[0])
        for r in con.execute(
            "SELECT acquired_source AS s, count(*) AS n FROM contacts "
            "WHERE created_at < $at AND s IS NOT NULL GROUP BY s ORDER BY n DESC, s LIMIT $k",
            {"at": at, "k": MAX_SOURCES},
        ).fetchall()
    )
    return Vocabulary(
        stages=tuple(stages),
        target=target,
        events=tuple(events),
        numeric_traits=tuple(numeric),
        text_traits=tuple(text),
        sources=sources,
    )


@dataclass
class Frame:
    """Feature rows: one per candidate contact, with the label when one was asked for."""

    ids: list[str]
    x: np.ndarray
    y: np.ndarray | None = None
    at: list[datetime] = field(default_factory=list)


def frame(
    con: duckdb.DuckDBPyConnection,
    vocab: Vocabulary,
    at: datetime,
    *,
    horizon: timedelta | None = None,
) -> Frame:
    """Every candidate's features as of ``at``: contacts created before it, not
    rehearsals, whose stage then was before the target and who had never reached it.

    With ``horizon``, each row is labelled 1 if the contact first reached the target
    (or beyond) in ``(at, at + horizon]``."""
    cut = utc_naive(at)
    cols = vocab.columns()
    event_aggs = ", ".join(
        [
            f"count(*) FILTER (WHERE name = {_lit(n)}) AS e{i}, "
            f"count(*) FILTER (WHERE name = {_lit(n)} AND occurred_at >= $recent) AS r{i}"
            for i, n in enumerate(vocab.events)
        ]
        or ["0 AS unused"]
    )
    label, labels = "NULL::INTEGER", ""
    if horizon is not None:
        label = "coalesce(hit.first_at <= $until, false)::INTEGER"
        labels = """LEFT JOIN (
                SELECT contact_key, min("at") AS first_at FROM stage_transitions
                WHERE "at" >= $at AND list_contains($reached, to_stage) GROUP BY contact_key
            ) hit ON hit.contact_key = f.contact_key"""
    sql = f"""
        WITH st AS (
            SELECT contact_key,
                arg_max(to_stage, {time_order('"at"')}) AS stage,
                max("at") AS stage_at,
                count(*) FILTER (WHERE kind = 'detour') AS detours,
                bool_or(list_contains($reached, to_stage)) AS reached
            FROM stage_transitions WHERE "at" < $at GROUP BY contact_key
        ),
        ev AS (
            SELECT contact_key, max(occurred_at) AS last_at,
                count(*) FILTER (WHERE occurred_at >= $recent) AS recent,
                count(DISTINCT json_extract_string(properties, '$.content_id')) AS content,
                {event_aggs}
            FROM events WHERE occurred_at < $at AND NOT list_contains($own, name)
            GROUP BY contact_key
        ),
        f AS (
            SELECT c.id, c.contact_key, c.traits, c.acquired_source, st.stage, st.detours,
                greatest(0, date_diff('second', st.stage_at, $at) / 86400.0) AS days_in_stage,
                greatest(0, date_diff('second', c.created_at, $at) / 86400.0) AS age_days,
                greatest(0, date_diff('second', ev.last_at, $at) / 86400.0) AS quiet_days,
                ev.* EXCLUDE (contact_key, last_at)
            FROM contacts c
            JOIN st ON st.contact_key = c.contact_key
            LEFT JOIN ev ON ev.contact_key = c.contact_key
            WHERE c.created_at < $at AND NOT c.rehearsal AND NOT st.reached
                AND list_contains($open, st.stage)
        )
        SELECT f.id, {label} AS label, {", ".join(f"({c.sql})::FLOAT" for c in cols)}
        FROM f {labels} ORDER BY f.contact_key
    """
    binds: dict[str, Any] = {
        "at": cut,
        "recent": cut - RECENT,
        "reached": list(vocab.reached),
        "open": list(vocab.open_stages),
        "own": sorted(OWN_EVENTS),
    }
    if horizon is not None:
        binds["until"] = cut + horizon
    table = con.sql(sql, params=binds).to_arrow_table()
    ids = [str(v) for v in table.column(0).to_pylist()]
    n = len(ids)
    x = np.empty((n, len(cols)), dtype=np.float32)
    for j in range(len(cols)):
        x[:, j] = table.column(2 + j).to_numpy(zero_copy_only=False)
    y = None
    if horizon is not None:
        y = np.nan_to_num(
            table.column(1).to_numpy(zero_copy_only=False).astype(np.float64), nan=0.0
        ).astype(np.int8)
    return Frame(ids=ids, x=x, y=y, at=[at] * n)
