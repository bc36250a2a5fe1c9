"""Plain-Python reference answers for the pipeline, conversion and paths reports.

Row by row, with dicts and loops, from ``SELECT *`` of the store's tables: no SQL
cleverness, so that when the report's SQL and this code agree on synthetic data, both
say what the reports' docstrings say. Used by the analytics tests and the benchmark.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import duckdb

NOT_BEHAVIOUR = {"identify", "alias", "group"}


def table(con: duckdb.DuckDBPyConnection, name: str) -> list[dict[str, Any]]:
    cursor = con.execute(f"SELECT * FROM {name}")  # noqa: S608 (test code, fixed names)
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def quantile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (DuckDB's quantile_cont)."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def pipeline(
    con: duckdb.DuckDBPyConnection, since: datetime, until: datetime, stages: Sequence[str]
) -> dict[str, Any]:
    """width rows, conversion rows and {stage: (stays, median, p90)} of completed stays."""
    contacts = table(con, "contacts")
    transitions = table(con, "stage_transitions")
    by_contact: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in transitions:
        by_contact[t["contact_id"]].append(t)
    for moves in by_contact.values():
        moves.sort(key=lambda t: (t["at"], t["id"]))

    now = Counter(c["stage"] for c in contacts if c["stage"] is not None)
    entered = Counter(t["to_stage"] for t in transitions if since <= t["at"] < until)

    stays: dict[str, list[float]] = defaultdict(list)
    for moves in by_contact.values():
        for here, after in itertools.pairwise(moves):
            if since <= here["at"] < until:
                hours = (after["at"] - here["at"]).total_seconds() / 3600
                stays[here["to_stage"]].append(hours)

    extra = sorted((set(now) | set(entered) | set(stays)) - set(stages))
    order = [*stages, *extra]
    width = [(s, now.get(s, 0), entered.get(s, 0)) for s in order]

    position = {s: k for k, s in enumerate(stages, start=1)}
    conversion = []
    for k in range(1, len(stages)):
        n = done = 0
        for moves in by_contact.values():
            entries = [
                t["at"]
                for t in moves
                if t["to_stage"] == stages[k - 1] and since <= t["at"] < until
            ]
            if not entries:
                continue
            n += 1
            first = min(entries)
            if any(position.get(t["to_stage"], 0) > k and t["at"] >= first for t in moves):
                done += 1
        conversion.append((stages[k - 1], stages[k], n, done, ratio(done, n)))

    length = {
        s: (len(stays.get(s, [])), quantile(stays.get(s, []), 0.5), quantile(stays.get(s, []), 0.9))
        for s in order
    }
    return {"width": width, "conversion": conversion, "length": length}


def conversion(
    con: duckdb.DuckDBPyConnection,
    since: datetime,
    until: datetime,
    steps: Sequence[str],
    window: timedelta,
) -> list[tuple[int, float | None]]:
    """(contacts, median seconds from the previous step) per step of an ordered funnel."""
    times: dict[str, dict[str, list[datetime]]] = defaultdict(lambda: defaultdict(list))
    for e in table(con, "events"):
        if e["name"] in steps:
            times[e["contact_id"]][e["name"]].append(e["occurred_at"])
    reached = [0] * len(steps)
    gaps: list[list[float]] = [[] for _ in steps]
    for by_name in times.values():
        starts = [t for t in by_name.get(steps[0], []) if since <= t < until]
        if not starts:
            continue
        anchor = previous = min(starts)
        reached[0] += 1
        for k in range(1, len(steps)):
            later = [t for t in by_name.get(steps[k], []) if previous < t <= anchor + window]
            if not later:
                break
            step_at = min(later)
            reached[k] += 1
            gaps[k].append((step_at - previous).total_seconds())
            previous = step_at
    return [(reached[k], quantile(gaps[k], 0.5) if k else None) for k in range(len(steps))]


def paths(
    con: duckdb.DuckDBPyConnection,
    since: datetime,
    until: datetime,
    goal: str,
    length: int,
    top: int,
) -> dict[str, list[tuple[str, int, float | None]]]:
    """The top paths to ``goal`` and the drop-off, as the paths report defines them."""
    history: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in table(con, "events"):
        history[e["contact_id"]].append(e)
    found: Counter[str] = Counter()
    last: Counter[str] = Counter()
    for events in history.values():
        events.sort(key=lambda e: (e["occurred_at"], e["id"]))
        goals = [e for e in events if e["name"] == goal and since <= e["occurred_at"] < until]
        if goals:
            first = goals[0]
            names: list[str] = []
            for e in events:
                if (e["occurred_at"], e["id"]) >= (first["occurred_at"], first["id"]):
                    break
                if e["kind"] not in NOT_BEHAVIOUR:
                    names.append(e["name"])
            names.append(goal)
            collapsed = [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]
            found[" > ".join(collapsed[-(length + 1) :])] += 1
            continue
        active = [
            e
            for e in events
            if since <= e["occurred_at"] < until and e["kind"] not in NOT_BEHAVIOUR
        ]
        if active:
            last[active[-1]["name"]] += 1

    def ranked(counts: Counter[str]) -> list[tuple[str, int, float | None]]:
        total = sum(counts.values())
        rows = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
        return [(name, n, ratio(n, total)) for name, n in rows]

    return {"paths": ranked(found), "drop_off": ranked(last)}


# --- comparing a report with the reference ---------------------------------------------


def assert_pipeline_matches(report: Any, expected: dict[str, Any]) -> None:
    """The pipeline report's width, conversion and length agree with ``pipeline``."""
    assert report.section("width").rows == expected["width"]
    assert report.section("conversion").rows == expected["conversion"]
    for stage, stays, median, p90 in report.section("length").rows[:-1]:
        want_stays, want_median, want_p90 = expected["length"][stage]
        assert stays == want_stays, stage
        assert _close(median, want_median, 1e-3), (stage, median, want_median)
        assert _close(p90, want_p90, 1e-3), (stage, p90, want_p90)


def assert_conversion_matches(report: Any, expected: list[tuple[int, float | None]]) -> None:
    """The conversion report's steps agree with ``conversion``."""
    rows = report.section("steps").rows
    assert [r[2] for r in rows] == [n for n, _ in expected]
    for row, (_, median) in zip(rows, expected, strict=True):
        assert _close(row[5], median, 0.05), (row, median)


def assert_paths_match(report: Any, expected: dict[str, Any]) -> None:
    """The paths report's paths and drop-off agree with ``paths``."""
    assert report.section("paths").rows == expected["paths"]
    assert report.section("drop_off").rows == expected["drop_off"]


def _close(got: float | None, want: float | None, tolerance: float) -> bool:
    if got is None or want is None:
        return got is None and want is None
    return abs(got - want) <= tolerance
