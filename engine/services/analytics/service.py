"""Reports as the JSON API and the dashboard serve them, fresh enough and computed once,
and the text forms of their parameters, shared with ``stagecoach report``.

``Numbers`` keeps the analytics store (a copy of the database) at most
``STAGECOACH_DASHBOARD_CACHE_SECONDS`` old: when asked and the copy is older, it copies
again in the background and keeps answering from the copy it has; each report is
computed once per (report, parameters, copy). Every report says when its copy was taken
(``as_of``). ``stagecoach report`` copies in the foreground instead (or with
``--fresh``), since a command has no previous answers to serve.

``parse_time``, ``parse_where`` and ``text_options`` give the CLI and the API one
spelling for every option and one message for each bad one. A period lies within
``EARLIEST`` and ``LATEST``: nothing before 2000 is ever stored (ingestion refuses it),
and the bound keeps date arithmetic far from Python's year 1 and 9999, where it
overflowed into a 500 (``since=99999999d``, ``until=0001-01-01``).

A request a report refuses (an eleven-step conversion) is never remembered as recently
asked for, so the refresh after the next sync does not compute it again and fail.

CSV cells that a spreadsheet would run as a formula (text starting with ``=``, ``+``,
``-``, ``@``, tab or carriage return: OWASP's CSV injection list) are written with a
leading ``'``, which spreadsheets show as text. Event, campaign and journey names come
from senders and marketers, so any text cell may hold one.
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Engine

from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.services.analytics import (
    Params,
    Report,
    ReportError,
    Section,
    run_report,
)
from stagecoach.engine.services.analytics._stats import choice
from stagecoach.engine.settings import Settings

if TYPE_CHECKING:
    # duckdb and pyarrow load with the store: only a report that runs needs them.
    from stagecoach.engine.services.analytics.store import AnalyticsStore

_log = structlog.get_logger("stagecoach.analytics")

_RELATIVE = re.compile(r"^(\d+)\s*([dhw])$")
_WHERE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(!=|>=|<=|=|>|<|~)\s*(.*?)\s*$")
_UNITS = {"d": timedelta(days=1), "h": timedelta(hours=1), "w": timedelta(weeks=1)}
_OPS = {"=": "eq", "!=": "neq", ">": "gt", "<": "lt", "~": "contains"}

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
"""The earliest ``since``: ingestion stores nothing older."""
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
"""The latest ``until``."""
_RANGE = f"from {EARLIEST.date().isoformat()} to {LATEST.date().isoformat()}"


def _out_of_range(name: str, value: str) -> ReportError:
    return ReportError(
        f"{name}={value!r} is outside the dates reports cover ({_RANGE})",
        fix=f"give {name} between {EARLIEST.date().isoformat()} and "
        f"{LATEST.date().isoformat()}, or a number of days, hours or weeks ago that lands there",
    )


def parse_time(value: str | None, name: str, *, now: datetime, default: datetime) -> datetime:
    """``2026-11-01``, ``2026-11-01T08:00:00+08:00`` or ``30d``/``12h``/``2w`` before now.

    Raises:
        ReportError: naming ``name`` and the forms it takes.
    """
    if value is None or not value.strip():
        return default
    text = value.strip()
    relative = _RELATIVE.match(text)
    if relative:
        n, unit = int(relative[1]), relative[2]
        try:
            at = now - _UNITS[unit] * n
        except OverflowError:  # more days than timedelta holds, or before year 1
            raise _out_of_range(name, value) from None
    else:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ReportError(
                f"{name}={value!r} is not a date or time",
                fix=f"give {name} as 2026-11-01, 2026-11-01T08:00:00+08:00, or 30d / 12h / 2w ago",
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        try:
            at = parsed.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+08:00 is before year 1 in UTC
            raise _out_of_range(name, value) from None
    if not EARLIEST <= at <= LATEST:
        raise _out_of_range(name, value)
    return at


def parse_where(text: str) -> dict[str, Any]:
    """``traits.plan=pro``, ``properties.amount>100``, ``source!=api``, ``channel=wechat|email``
    (any of), ``properties.url~pricing`` (contains) -> a conversion-funnel filter.

    Raises:
        ReportError: the filter is not ``<field><op><value>``.
    """
    found = _WHERE.match(text)
    if not found or found[2] in (">=", "<="):
        raise ReportError(
            f"where={text!r} is not a filter",
            fix="write <field><op><value>, op one of = != > < ~ (contains), e.g. "
            "traits.plan=pro, properties.amount>100, channel=wechat|email",
        )
    field, op, raw = found[1], found[2], found[3]
    if op == "=" and "|" in raw:
        return {"field": field, "op": "in", "value": [_scalar(v) for v in raw.split("|")]}
    return {"field": field, "op": _OPS[op], "value": raw if op == "~" else _scalar(raw)}


def _scalar(raw: str) -> Any:
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw


def text_options(
    *,
    steps: str | None = None,
    window_days: int | None = None,
    where: Sequence[str] = (),
    goal: str | None = None,
    length: int | None = None,
    top: int | None = None,
    journey: str | None = None,
    metric: str | None = None,
    period: str | None = None,
    stages: str | None = None,
) -> dict[str, Any]:
    """The report options from their text forms; only those given are set."""
    options: dict[str, Any] = {}
    if steps:
        options["steps"] = [s.strip() for s in steps.split(",") if s.strip()]
    if stages:
        options["stages"] = [s.strip() for s in stages.split(",") if s.strip()]
    if where:
        options["filters"] = [parse_where(w) for w in where]
    for key, value in (
        ("window_days", window_days),
        ("goal", goal),
        ("length", length),
        ("top", top),
        ("journey", journey),
        ("metric", metric),
        ("period", period),
    ):
        if value is not None:
            options[key] = value
    return options


def make_params(
    *,
    since: str | None,
    until: str | None,
    by: str | None,
    options: Mapping[str, Any],
    now: datetime | None = None,
    default_days: int = 30,
    include_rehearsals: bool = False,
) -> Params:
    """Params from text: the period defaults to the last ``default_days`` days;
    rehearsal contacts are left out unless ``include_rehearsals``."""
    end = now or datetime.now(UTC)
    until_at = parse_time(until, "until", now=end, default=end)
    period_start = max(until_at - timedelta(days=default_days), EARLIEST)
    since_at = parse_time(since, "since", now=end, default=period_start)
    if since_at >= until_at:
        raise ReportError(
            f"since ({since_at.isoformat()}) is not before until ({until_at.isoformat()})",
            fix="give a since earlier than until",
        )
    return Params(
        since=since_at,
        until=until_at,
        by=by or None,
        options=dict(options),
        include_rehearsals=include_rehearsals,
    )


# --- the report cache: each report computed once per copy --------------------------

_ParamsKey = tuple[str, str, str, str | None, str, bool]
_Key = tuple[str, str, str, str | None, str, bool, datetime | None]


def _params_key(name: str, params: Params) -> _ParamsKey:
    options = json.dumps(params.options, sort_keys=True, default=str)
    return (
        name,
        params.since.isoformat(),
        params.until.isoformat(),
        params.by,
        options,
        params.include_rehearsals,
    )


@dataclass(frozen=True)
class Freshness:
    """How fresh the numbers on a page are."""

    as_of: datetime | None
    """The end of the analytics store's last sync: every number is as of then."""
    every: float
    """The store syncs at most this often (seconds), when a page asks."""
    syncing: bool = False
    """A sync or a warm-up is running; the page shows the numbers before it."""
    error: str | None = None
    """Why the last sync failed, if it did."""


Wanted = Sequence[tuple[str, Params]]
"""Reports by name and parameters."""


class Numbers:
    """Reports for the pages, each computed once per (report, params, store as-of).

    The analytics store is a copy of the database (``AnalyticsStore.sync``). When a page
    asks (or the login page is shown) and the copy is older than ``sync_every`` seconds,
    a sync starts in the background and pages are answered at once from the copy they
    have. After the sync, the ``defaults`` (the pages' reports for their default period)
    and the reports asked for recently are computed on the new copy, and only then do
    pages switch to it. The defaults are also computed in the background when nobody has
    asked for them yet (a freshly started API), so the first signed-in page is ready.

    So numbers are at most ``sync_every`` seconds plus one sync old; a page waits for a
    sync only on a store that was never synced, and for report queries only when it asks
    for a period nobody asked for since the last sync.

    Args:
        store: Opens the analytics store (called once, at first use).
        sync_every: Seconds between syncs (``STAGECOACH_DASHBOARD_CACHE_SECONDS``).
        defaults: The reports worth computing before anyone asks.
        keep: Reports kept at most (least recently used go first).
        warm: Recently asked-for reports recomputed after each sync.
        clock: The time now (tests move it).
    """

    def __init__(
        self,
        store: Callable[[], AnalyticsStore],
        *,
        sync_every: float,
        defaults: Callable[[], Wanted] = lambda: (),
        keep: int = 64,
        warm: int = 12,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._open = store
        self._store: AnalyticsStore | None = None
        self.sync_every = sync_every
        self._defaults = defaults
        self._keep = keep
        self._warm = warm
        self._clock = clock
        self._lock = threading.Lock()
        self._compute = threading.Lock()
        self._known = False
        self._as_of: datetime | None = None
        self._attempted: datetime | None = None
        self._warmed: tuple[datetime | None, tuple[object, ...]] | None = None
        self._cache: OrderedDict[_Key, Report] = OrderedDict()
        self._recent: OrderedDict[_ParamsKey, tuple[str, Params]] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._again: Engine | None = None
        """A sync asked for while one ran: started when that one ends."""
        self._force = False
        """A sync is due whatever the copy's age (``sync_soon``)."""
        self._error: str | None = None
        self.computed = 0
        """Reports computed so far (cache misses and warm-ups): for tests and benchmarks."""

    @property
    def store(self) -> AnalyticsStore:
        if self._store is None:
            self._store = self._open()
        return self._store

    def prepare(self, database: Engine) -> bool:
        """Start what is due in the background, never waiting for it: a sync when the
        copy is older than ``sync_every``, else a warm-up when the default reports of
        this copy are not computed yet. Returns whether background work is running.

        Raises:
            DatabaseError: The analytics store stayed busy past its lock timeout.
        """
        with self._lock:
            known = self._known
        if not known:
            as_of = self.store.as_of
            with self._lock:
                if not self._known:
                    self._as_of = self._attempted = as_of
                    self._known = True
        now = self._clock()
        with self._lock:
            if self._thread is None:
                since = None if self._attempted is None else now - self._attempted
                due = (
                    self._force
                    or since is None
                    or since.total_seconds() >= max(self.sync_every, 0.0)
                )
                marker = self._marker()
                cold = bool(marker[1]) and marker != self._warmed
                if due or cold:
                    if due:
                        self._attempted = now
                        self._force = False
                    self._warmed = marker  # a failing warm-up is not retried at once
                    self._thread = threading.Thread(
                        target=self._background, args=(database, due), name="report-numbers"
                    )
                    self._thread.daemon = True
                    self._thread.start()
            return self._thread is not None

    def sync_soon(self, database: Engine) -> None:
        """Sync in the background now, or right after the sync already running (which
        may have read the database before the change that asks for this one). An
        erasure asks, so the copy forgets the person without waiting for a page.

        Raises:
            DatabaseError: The analytics store stayed busy past its lock timeout.
        """
        with self._lock:
            self._force = True
            if self._thread is not None:
                self._again = database
                return
        self.prepare(database)

    def freshness(self, database: Engine) -> Freshness:
        """The numbers' age, after :meth:`prepare`; on a store that was never synced,
        waits for the first sync."""
        running = self.prepare(database)
        if running and self._as_of is None:
            self.wait()
            running = self.prepare(database)
        with self._lock:
            return Freshness(self._as_of, self.sync_every, running, self._error)

    def reports(self, wanted: Wanted) -> list[Report]:
        """The reports ``wanted`` (name, params), from the cache or computed now.

        Only reports that were answered count as recently asked for (and are
        recomputed after each sync): a refused one would fail every refresh.

        Raises:
            ReportError: A report refused its parameters.
            DatabaseError: The analytics store stayed busy past its lock timeout.
        """
        with self._lock:
            found = [self._cached(name, params) for name, params in wanted]
        if all(r is not None for r in found):
            self._remember(wanted)
            return [r for r in found if r is not None]
        with self._compute:  # one computation at a time: DuckDB parallelises each query
            with self._lock:
                found = [self._cached(name, params) for name, params in wanted]
            missing = [w for w, r in zip(wanted, found, strict=True) if r is None]
            if not missing:
                self._remember(wanted)
                return [r for r in found if r is not None]
            computed = iter(self._compute_into_cache(missing))
            merged = [r if r is not None else next(computed) for r in found]
            if len({r.as_of for r in merged}) > 1:  # synced meanwhile: all from the new copy
                merged = self._compute_into_cache(wanted)
            self._remember(wanted)
            return merged

    def _remember(self, wanted: Wanted) -> None:
        """Note ``wanted`` as recently asked for (and answered)."""
        with self._lock:
            for name, params in wanted:
                pk = _params_key(name, params)
                self._recent[pk] = (name, params)
                self._recent.move_to_end(pk)
            while len(self._recent) > self._warm:
                self._recent.popitem(last=False)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for running background work (tests, benchmarks, the first sync)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _marker(self) -> tuple[datetime | None, tuple[object, ...]]:
        """What the warm-up is for: this copy and today's default periods."""
        return self._as_of, tuple(_params_key(n, p) for n, p in self._defaults())

    def _cached(self, name: str, params: Params) -> Report | None:
        key = (*_params_key(name, params), self._as_of)
        report = self._cache.get(key)
        if report is not None:
            self._cache.move_to_end(key)
        return report

    def _run(self, wanted: Wanted) -> tuple[datetime | None, list[Report]]:
        from stagecoach.engine.services.analytics.store import synced_at

        with self.store.read() as con:
            as_of = synced_at(con)
            done = [run_report(name, con, params, as_of=as_of) for name, params in wanted]
        self.computed += len(done)
        return as_of, done

    def _run_answerable(self, wanted: Wanted) -> tuple[datetime | None, Wanted, list[Report]]:
        """``_run``, leaving out (and forgetting) the reports that refuse their
        parameters, so that one of them never keeps the others from refreshing."""
        from stagecoach.engine.services.analytics.store import synced_at

        kept: list[tuple[str, Params]] = []
        done: list[Report] = []
        with self.store.read() as con:
            as_of = synced_at(con)
            for name, params in wanted:
                try:
                    done.append(run_report(name, con, params, as_of=as_of))
                except ReportError as exc:
                    _log.info("report left out of the refresh", report=name, error=exc.one_line())
                    with self._lock:
                        self._recent.pop(_params_key(name, params), None)
                    continue
                kept.append((name, params))
        self.computed += len(done)
        return as_of, kept, done

    def _adopt(self, as_of: datetime | None, wanted: Wanted, done: Sequence[Report]) -> None:
        """Cache ``done`` under ``as_of`` and make that copy the pages' current one."""
        with self._lock:
            if as_of != self._as_of:
                self._as_of = as_of
                for key in [k for k in self._cache if k[-1] != as_of]:
                    del self._cache[key]
            for (name, params), report in zip(wanted, done, strict=True):
                self._cache[(*_params_key(name, params), as_of)] = report
            while len(self._cache) > self._keep:
                self._cache.popitem(last=False)

    def _compute_into_cache(self, wanted: Wanted) -> list[Report]:
        """Compute ``wanted`` on the store as it is now (a sync here or by another process
        moves its as-of), cache them and return them."""
        as_of, done = self._run(wanted)
        self._adopt(as_of, wanted, done)
        return done

    def _background(self, database: Engine, sync: bool) -> None:
        try:
            if sync:
                result = self.store.sync(database)
                with self._lock:
                    recent = list(self._recent.values())
                everything = [*self._defaults(), *recent]
                warm = list({_params_key(n, p): (n, p) for n, p in everything}.values())
                # Computed beside the pages, which keep the previous copy's numbers meanwhile.
                as_of, answered, done = self._run_answerable(warm)
                self._adopt(as_of, answered, done)
                _log.info(
                    "analytics store synced",
                    seconds=round(result.seconds, 3),
                    rows=result.total,
                    reports_warmed=len(answered),
                )
            else:
                for name, params in self._defaults():
                    with self._compute:  # a page asking for the same waits, then finds it
                        with self._lock:
                            cached = self._cached(name, params) is not None
                        if not cached:
                            self._compute_into_cache([(name, params)])
            with self._lock:
                self._error = None
                self._warmed = self._marker()
        except Exception as exc:  # the old numbers stay, and pages say why
            message = exc.one_line() if isinstance(exc, StagecoachError) else str(exc)
            _log.warning("report numbers not refreshed", error=message)
            with self._lock:
                self._error = message
        finally:
            with self._lock:
                self._thread = None
                again, self._again = self._again, None
            if again is not None:
                try:
                    self.prepare(again)
                except Exception as exc:  # the next page's prepare tries again
                    _log.warning("report numbers not refreshed", error=str(exc))


def pick_section(report: Report, name: str | None) -> Section | None:
    """The section ``name`` of ``report`` (None when no name is given).

    Raises:
        ReportError: the report has no such section; the fix lists those it has.
    """
    if name is None:
        return None
    return report.section(choice("section", name, [s.name for s in report.sections]))


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a cell as a formula (OWASP, CSV injection)."""


def csv_cell(value: Any) -> Any:
    """A cell as CSV writes it: text a spreadsheet would run as a formula gets a
    leading ``'``; numbers (``-3`` included) and everything else stay as they are."""
    plain = to_plain(value)
    if isinstance(plain, str) and plain.startswith(_FORMULA_START):
        return "'" + plain
    return plain


def section_csv(section: Section) -> str:
    """One section as CSV: a header row, then its rows as JSON would write them, each
    text cell that a spreadsheet would take for a formula made plain text."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([csv_cell(c) for c in section.columns])
    writer.writerows([csv_cell(v) for v in row] for row in section.rows)
    return out.getvalue()


def to_plain(value: Any) -> Any:
    """A report cell as JSON and CSV write it."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 6)
    return value


def reports_for(settings: Settings, *, defaults: Callable[[], Wanted] = tuple) -> Numbers:
    """This deployment's reports: its store file, synced at most every
    ``STAGECOACH_DASHBOARD_CACHE_SECONDS``; ``defaults`` are worth computing early."""
    from stagecoach.engine.services.analytics.store import AnalyticsStore, default_path

    path = settings.analytics_path or default_path(settings.data_dir)
    return Numbers(
        lambda: AnalyticsStore(path), sync_every=settings.dashboard_cache_seconds, defaults=defaults
    )
