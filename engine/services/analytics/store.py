"""The analytics store: a DuckDB file holding a columnar replica of the database.

Reports never query the operational database: ``AnalyticsStore.sync`` copies what
changed since the last sync into DuckDB (tables in
``stagecoach.engine.services.analytics._schema``), and
reports read the copy. A report says how fresh it is with ``as_of``: the start of the
last sync, so the copy holds everything the database had committed by then.

How each table stays correct without re-reading everything:

==================  ==============================================================
table               scheme
==================  ==============================================================
events,             Append-only: rows with ``id`` above the watermark. The last
stage_transitions   ``ID_OVERLAP`` ids below it are read again and the ones already
                    here ignored, because in PostgreSQL an id is taken at insert and
                    seen at commit: a transaction that commits late shows an id below
                    ids already copied. (SQLite commits one writer at a time.)
contacts            Mutable, stamped: rows with ``updated_at`` at or after the
                    watermark less ``TIME_OVERLAP`` (late commits again) replace their
                    copies. Every writer of a contact row sets ``updated_at``.
deliveries,         Mutable, unstamped, settling: rows above the id watermark, plus
journey_enrolments  every copied row not yet final, by id (a delivery is final once
                    ``sent``; an enrolment once ``finished_at`` is set). Only unsettled
                    rows can still change, and they are few.
handoffs,           Small and mutable: read whole each time.
referrals
merges              Read whole each time (one row per merge); see below.
==================  ==============================================================

Merges: ``merges`` says ``merged_id`` lives on as ``into_id``, and a survivor may merge
again later, so ids are resolved to the end of the chain. The store keeps the resolved
map (``merge_map``); when a merge arrives or a chain grows, the rows already copied for
the changed ids are re-pointed, the merged contact's own row is dropped, and rows read
from then on are mapped as they load.

Erasure (``DELETE /v1/contacts/{id}``) re-points a person's rows in the database to a
pseudonym ``erased-<sha256(id)[:16]>`` with their personal columns emptied, deletes the
contact row and writes a pseudonymous one instead. The sync sees that row (it is
stamped), finds the copied ids whose pseudonym it is (DuckDB's ``sha256``: the
database keeps no list of erased ids, by design), deletes everything copied under them
(contact, events, transitions, deliveries, enrolments, merge map, key), and reads the
pseudonym's rows again as the database now has them, so the copy keeps the same
anonymous counts and nothing personal. This happens in the first sync after the erasure
(the erasure itself asks the API's report cache for one), and again, harmlessly, while
the pseudonymous row stays within ``TIME_OVERLAP``.

Acquisition (``contacts.acquired_*``) is the source, channel and campaign of the
contact's first event by ``occurred_at`` (then id). Contacts are copied last, and the
acquisition is recomputed, from the copied events, for every contact whose row or events
changed in the sync, or that a merge touched: a late event can be the earliest one.

Loading: the source is streamed in chunks of ``CHUNK_ROWS`` as Arrow tables. Changed
rows are deleted and inserted rather than upserted: DuckDB's ``INSERT OR REPLACE`` is
two orders of magnitude slower when many keys clash.

Concurrency: DuckDB lets one process write a file, or any number read it, never both.
The store coordinates processes (API, CLI, worker) with a lock file next to the database
(``analytics.duckdb.lock``): ``sync`` holds it exclusively and opens the file read-write;
``read`` holds it shared and opens the file read-only, for the length of one ``with``
block. A reader waits for a running sync (up to ``lock_timeout``) and a sync waits for
open readers. An in-memory store (tests) keeps one connection and hands out cursors.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from stagecoach.engine.domain.bounces import key_digest
from stagecoach.engine.domain.errors import DatabaseError
from stagecoach.engine.services.analytics._schema import INDEXES, TABLES
from stagecoach.engine.services.analytics._stats import utc_naive
from stagecoach.engine.services.analytics.pipeline import time_order
from stagecoach.engine.services.lookup import ERASED_PREFIX

try:  # POSIX; elsewhere a store is used by one process at a time
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

MEMORY = ":memory:"
CHUNK_ROWS = 50_000
"""Rows read from the database per round trip and loaded into DuckDB as one Arrow table."""
ID_OVERLAP = 10_000
"""Ids below the watermark read again each sync, for late commits (module docstring)."""
TIME_OVERLAP = timedelta(minutes=10)
"""Time below the ``updated_at`` watermark read again each sync, for late commits."""
_REREAD_BATCH = 1_000

STORE_TABLES: dict[str, str] = {
    "merge_map": """
        CREATE TABLE IF NOT EXISTS merge_map (
            merged_id VARCHAR PRIMARY KEY,
            into_id VARCHAR NOT NULL
        )""",
    "contact_keys": """
        CREATE TABLE IF NOT EXISTS contact_keys (
            id VARCHAR PRIMARY KEY,
            key INTEGER NOT NULL
        )""",
}
"""The store's own bookkeeping next to the replica tables: merged id -> final survivor,
and contact id -> ``contact_key``."""

KEYED: dict[str, str] = {
    "contacts": "id",
    "events": "contact_id",
    "stage_transitions": "contact_id",
}
"""Tables carrying ``contact_key``, and the column holding the contact id it stands for."""


def default_path(data_dir: Path) -> Path:
    """Where the analytics store lives by convention: ``<data_dir>/analytics.duckdb``."""
    return data_dir / "analytics.duckdb"


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create every analytics table (and index) that does not exist yet."""
    for ddl in (*TABLES.values(), *STORE_TABLES.values()):
        con.execute(ddl)
    for ddl in INDEXES:
        con.execute(ddl)


@functools.cache
def _expected_columns() -> dict[str, list[str]]:
    con = duckdb.connect(MEMORY)
    try:
        create_tables(con)
        return {t: column_names(con, t) for t in (*TABLES, *STORE_TABLES)}
    finally:
        con.close()


def schema_is_current(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the store behind ``con`` is empty or has exactly today's tables."""
    found = {
        name: column_names(con, name)
        for (name,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
            " AND schema_name = 'main'"
        ).fetchall()
    }
    expected = _expected_columns()
    return not found or all(found.get(t) == cols for t, cols in expected.items())


def assign_keys(con: duckdb.DuckDBPyConnection, ids: str) -> None:
    """Give every contact id that ``ids`` (a SELECT of one column) yields and the store
    does not know yet its ``contact_key``: the next integers, in id order."""
    con.execute(
        f"""
        INSERT INTO contact_keys
        SELECT id, (SELECT coalesce(max(key), 0) FROM contact_keys)
            + row_number() OVER (ORDER BY id)
        FROM (SELECT DISTINCT * FROM ({ids}) AS t(id)) AS n
        WHERE id IS NOT NULL AND id NOT IN (SELECT id FROM contact_keys)
        """
    )


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return utc_naive(value)
    if isinstance(value, dict | list):
        import json

        return json.dumps(value, separators=(",", ":"), default=str)
    return value


def insert_rows(
    con: duckdb.DuckDBPyConnection, table: str, rows: Sequence[Mapping[str, Any]]
) -> int:
    """Append rows (dicts keyed by column name) to an analytics table.

    Missing columns take their default (NULL), except ``contact_key``, which is looked
    up (or assigned) for the row's contact; dicts and lists become JSON; aware times
    are converted to naive UTC, as the schema stores them. For tests and small loads:
    ``sync`` and ``stagecoach.engine.services.analytics.synthetic`` load in bulk. Returns the rows
    inserted.

    Raises:
        ValueError: ``table`` is not an analytics table.
    """
    if table not in TABLES and table not in STORE_TABLES:
        raise ValueError(f"unknown analytics table {table!r}")
    if not rows:
        return 0
    names: list[str] = []
    for row in rows:
        names.extend(k for k in row if k not in names)
    data = pa.table({n: [_plain(row.get(n)) for row in rows] for n in names})
    cols = ", ".join(f'"{n}"' for n in names)
    values = ", ".join(f'r."{n}"' for n in names)
    join = ""
    con.register("_insert_rows", data)
    try:
        person = KEYED.get(table)
        if person and "contact_key" not in names and person in names:
            assign_keys(con, f"SELECT {person} FROM _insert_rows")
            cols, values = f"{cols}, contact_key", f"{values}, k.key"
            join = f"LEFT JOIN contact_keys k ON k.id = r.{person}"
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {values} FROM _insert_rows r {join}")
    finally:
        con.unregister("_insert_rows")
    return len(rows)


def first_events_sql(where: str = "") -> str:
    """A SELECT of (contact_id, first): each contact's acquisition, the source, channel
    and campaign of its first event, over the events ``where`` (a WHERE clause) keeps."""
    campaign = (
        "coalesce(json_extract_string(context, '$.campaign.source'), "
        "json_extract_string(properties, '$.utm_source'))"
    )
    return f"""
        SELECT contact_id, arg_min(
            {{'source': source, 'channel': channel, 'campaign': {campaign}}},
            {time_order()}) AS first
        FROM events {where}
        GROUP BY contact_id
    """


# --- reading the operational database ---------------------------------------------------

Kind = Literal["str", "int", "ts", "json", "bool"]


@dataclass(frozen=True)
class _Source:
    """An operational table: its columns as read, and how the sync keeps its copy."""

    name: str
    columns: tuple[tuple[str, Kind], ...]
    scheme: Literal["append", "stamped", "settling", "whole"]
    unsettled: str = ""
    """Settling tables: the SQL condition (on the copy) of rows that may still change."""

    @functools.cached_property
    def table(self) -> sa.TableClause:
        types: dict[Kind, Any] = {
            "str": sa.String(),
            "int": sa.BigInteger(),
            "ts": sa.DateTime(timezone=True),
            "json": sa.Text(),
            "bool": sa.Boolean(),
        }
        return sa.table(self.name, *(sa.column(c, types[k]) for c, k in self.columns))

    def select(self, text_times: bool = False) -> sa.Select[Any]:
        """The columns as read. JSON arrives as its text: DuckDB parses it faster than
        ``json.loads``; with ``text_times`` (SQLite, which stores times as text) times
        do too, and DuckDB casts them."""
        t = self.table

        def read(c: str, k: Kind) -> Any:
            if k == "json":
                return sa.cast(t.c[c], sa.Text()).label(c)
            if k == "ts" and text_times:
                return sa.type_coerce(t.c[c], sa.String()).label(c)
            return t.c[c]

        return sa.select(*(read(c, k) for c, k in self.columns))


def _columns(spec: str) -> tuple[tuple[str, Kind], ...]:
    """``"id:int name created_at:ts"`` -> ((id, int), (name, str), (created_at, ts))."""
    kinds: dict[str, Kind] = {
        "str": "str",
        "int": "int",
        "ts": "ts",
        "json": "json",
        "bool": "bool",
    }
    return tuple((n, kinds[k or "str"]) for n, _, k in (w.partition(":") for w in spec.split()))


SOURCES: tuple[_Source, ...] = (
    _Source(
        "events",
        _columns(
            "id:int contact_id kind name properties:json context:json source channel "
            "occurred_at:ts received_at:ts"
        ),
        "append",
    ),
    _Source(
        "stage_transitions",
        _columns(
            "id:int contact_id from_stage to_stage kind reason source trigger_event_type at:ts"
        ),
        "append",
    ),
    _Source(
        "deliveries",
        _columns(
            "id:int idempotency_key contact_id journey journey_version step_id enrolment:int "
            "channel content_id status created_at:ts sent_at:ts"
        ),
        "settling",
        unsettled="status <> 'sent'",
    ),
    _Source(
        "journey_enrolments",
        _columns(
            "id:int contact_id journey version enrolment:int status reason arms:json trail:json "
            "started_at:ts finished_at:ts"
        ),
        "settling",
        unsettled="finished_at IS NULL",
    ),
    _Source(
        "handoffs",
        _columns(
            "id contact_id grade team owner status created_at:ts reminded_at:ts escalated_at:ts "
            "feedback_at:ts"
        ),
        "whole",
    ),
    _Source(
        "referrals",
        _columns("id:int code referrer_id referee_id channel status created_at:ts converted_at:ts"),
        "whole",
    ),
    _Source(
        "contacts",
        _columns("id stage locale timezone traits:json created_at:ts updated_at:ts rehearsal:bool"),
        "stamped",
    ),
)
"""What the sync copies, in order: contacts last, when their first events are known."""

_PEOPLE = ("contact_id", "referrer_id", "referee_id")


def _arrow_column(kind: Kind, values: Sequence[Any]) -> pa.Array:
    if kind == "ts" and any(isinstance(v, str) for v in values):
        return pa.array(values, type=pa.string())  # text times: DuckDB casts them
    if kind == "ts":
        try:
            array = pa.array(values, type=None) if any(v is not None for v in values) else None
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # aware and naive mixed
            array = pa.array([utc_naive(v) if v is not None else None for v in values])
        if array is None:
            return pa.nulls(len(values), pa.timestamp("us"))
        # Aware values (PostgreSQL) arrive as UTC instants; naive ones (SQLite) are UTC.
        return array.cast(pa.timestamp("us"))
    if kind == "int":
        return pa.array(values, type=pa.int64())
    if kind == "bool":  # SQLite answers 0/1, PostgreSQL a boolean
        return pa.array([None if v is None else bool(v) for v in values], type=pa.bool_())
    return pa.array(values, type=pa.string())


def _arrow(source: _Source, rows: Sequence[Sequence[Any]]) -> pa.Table:
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in source.columns]
    data = {c: _arrow_column(k, col) for (c, k), col in zip(source.columns, columns, strict=True)}
    if source.name == "deliveries":
        # Tracking events quote this digest (stagecoach.engine.domain.bounces.key_digest), never
        # the key.
        data["digest"] = pa.array([key_digest(k) for k in columns[1]], type=pa.string())
    return pa.table(data)


def _select_sql(source: _Source, targets: Sequence[str]) -> str:
    """SELECT of the registered chunk ``_chunk`` as the copy's ``targets``, ids resolved."""
    kinds = dict(source.columns)
    joins: list[str] = []
    exprs: list[str] = []
    for col in targets:
        if col in _PEOPLE:
            alias = f"m_{col}"
            joins.append(f"LEFT JOIN merge_map {alias} ON {alias}.merged_id = s.{col}")
            exprs.append(f"coalesce({alias}.into_id, s.{col})")
        elif col == "delivery":
            # What email tracking records in properties.message_id: the delivery's digest.
            exprs.append("json_extract_string(TRY_CAST(s.properties AS JSON), '$.message_id')")
        elif col == "digest":
            exprs.append("s.digest")
        elif col == "contact_key":
            exprs.append("k.key")
        elif kinds.get(col) == "json":
            exprs.append(f"TRY_CAST(s.{col} AS JSON)")
        elif kinds.get(col) == "ts":
            exprs.append(f'CAST(s."{col}" AS TIMESTAMP)')
        elif col in kinds:
            exprs.append(f's."{col}"')
        else:
            exprs.append("NULL")
    if source.name in KEYED:
        joins.append(f"LEFT JOIN contact_keys k ON k.id = {_person(source)}")
    where = ""
    if source.name == "contacts":
        where = "WHERE s.id NOT IN (SELECT merged_id FROM merge_map)"
    return f"SELECT {', '.join(exprs)} FROM _chunk s {' '.join(joins)} {where}"


def _person(source: _Source) -> str:
    """The SQL of a chunk row's contact id, resolved through merges (``m_contact_id``)."""
    return "s.id" if source.name == "contacts" else "coalesce(m_contact_id.into_id, s.contact_id)"


def _keys_sql(source: _Source) -> str:
    """A SELECT of the resolved contact ids of the chunk, for ``assign_keys``."""
    if source.name == "contacts":
        return "SELECT id FROM _chunk"
    return (
        "SELECT coalesce(m.into_id, s.contact_id) FROM _chunk s "
        "LEFT JOIN merge_map m ON m.merged_id = s.contact_id"
    )


def column_names(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """The columns of an analytics table, in order."""
    return [d[0] for d in con.execute(f"SELECT * FROM {table} LIMIT 0").description]


@dataclass(frozen=True)
class SyncResult:
    """What one sync copied: rows read per table (re-reads included) and the time taken."""

    rows: dict[str, int]
    seconds: float
    added: dict[str, int] = field(default_factory=dict)
    """Rows the copy holds now that it did not before, per table (negative: fewer)."""
    merges_changed: int = 0
    """Merged ids whose survivor changed (their copied rows were re-pointed)."""
    skipped: tuple[str, ...] = ()
    """Operational tables that do not exist (yet) in this database."""
    as_of: datetime | None = None
    notes: list[str] = field(default_factory=list)
    erased: int = 0
    """Copied contact ids found erased in the database: their rows were replaced."""

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def _stream(conn: Connection, stmt: sa.Executable, chunk: int) -> Iterator[Sequence[Any]]:
    result = conn.execution_options(stream_results=True, yield_per=chunk).execute(stmt)
    yield from result.partitions(chunk)


def _watermark(con: duckdb.DuckDBPyConnection, name: str) -> int:
    rows = con.execute("SELECT watermark FROM sync_state WHERE name = ?", [name]).fetchall()
    return int(rows[0][0]) if rows else 0


def _set_watermark(con: duckdb.DuckDBPyConnection, name: str, value: int, at: datetime) -> None:
    con.execute("INSERT OR REPLACE INTO sync_state VALUES (?, ?, ?)", [name, value, at])


def _micros(value: datetime) -> int:
    return int((utc_naive(value) - datetime(1970, 1, 1)).total_seconds() * 1_000_000)


def _from_micros(value: int) -> datetime:
    return datetime(1970, 1, 1) + timedelta(microseconds=value)


class _Sync:
    """One sync: reads ``conn`` (the operational database) into ``con`` (DuckDB)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        conn: Connection,
        *,
        chunk: int,
        id_overlap: int,
        time_overlap: timedelta,
    ) -> None:
        self.con = con
        self.conn = conn
        self.chunk = chunk
        self.id_overlap = id_overlap
        self.time_overlap = time_overlap
        self.text_times = conn.dialect.name == "sqlite"
        self.added: dict[str, int] = {}
        self.rows: dict[str, int] = {}
        self.now = utc_naive(datetime.now(UTC))
        self._sql: dict[str, str] = {}
        self.mark = 0
        """The watermark of the append-only table being read."""
        self.erased = 0
        self.tombstones: list[str] = []
        """Pseudonymous contact rows read in this sync: erasures to apply."""

    def run(self) -> tuple[int, tuple[str, ...]]:
        con = self.con
        con.execute("CREATE OR REPLACE TEMP TABLE _touched (id VARCHAR)")
        con.execute("CREATE OR REPLACE TEMP TABLE _contact_rows AS FROM contacts LIMIT 0")
        inspector = sa.inspect(self.conn)
        changed = self.merges() if inspector.has_table("merges") else 0
        skipped: list[str] = []
        for source in SOURCES:
            if not inspector.has_table(source.name):
                skipped.append(source.name)
                continue
            loader = getattr(self, source.scheme)
            before = self._count(source.name)
            self.rows[source.name] = loader(source)
            if source.name == "contacts":
                self.erasures(inspector)
                self.settle_contacts()
            self.added[source.name] = self._count(source.name) - before
        for table in ("_touched", "_contact_rows"):
            con.execute(f"DROP TABLE {table}")
        _set_watermark(con, "sync", 0, self.now)
        return changed, tuple(skipped)

    def _count(self, table: str) -> int:
        return int(self.con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])

    def _load(self, source: _Source, rows: Sequence[Sequence[Any]], mode: str = "") -> None:
        """Load one chunk. DuckDB's INSERT OR REPLACE is slow when many keys clash, so
        changed rows are deleted and inserted, and re-read ids are filtered out."""
        con = self.con
        con.register("_chunk", _arrow(source, rows))
        try:
            select = self._sql.get(source.name)
            if select is None:
                targets = column_names(con, source.name)
                select = self._sql[source.name] = _select_sql(source, targets)
            if source.name in KEYED:
                assign_keys(con, _keys_sql(source))
            if source.scheme == "stamped":
                self.tombstones += [
                    r[0]
                    for r in con.execute(
                        "SELECT id FROM _chunk WHERE starts_with(id, ?)", [ERASED_PREFIX]
                    ).fetchall()
                ]
                con.execute(f"INSERT INTO _contact_rows {select}")
                return
            if source.scheme == "settling":
                con.execute(f"DELETE FROM {source.name} WHERE id IN (SELECT id FROM _chunk)")
            if source.scheme == "append":
                # Ids above the watermark are new; the re-read ones below it may be here.
                low = self.mark - self.id_overlap
                select = (
                    f"{select} WHERE s.id > {self.mark} OR s.id NOT IN "
                    f"(SELECT id FROM {source.name} WHERE id > {low})"
                )
            con.execute(f"INSERT INTO {source.name} {select}")
            if source.name == "events":
                con.execute("INSERT INTO _touched SELECT DISTINCT contact_id FROM _chunk")
        finally:
            with contextlib.suppress(duckdb.TransactionException):  # keep the first error
                con.unregister("_chunk")

    def _select(self, source: _Source) -> sa.Select[Any]:
        return source.select(text_times=self.text_times)

    def _read(self, stmt: sa.Select[Any]) -> Iterator[Sequence[Sequence[Any]]]:
        yield from _stream(self.conn, stmt, self.chunk)

    def append(self, source: _Source) -> int:
        self.mark = mark = _watermark(self.con, source.name)
        return self._from_watermark(source, mark)

    def _from_watermark(self, source: _Source, mark: int) -> int:
        """Copy the rows with ids past ``mark`` (less the overlap) and move the mark."""
        t = source.table
        stmt = self._select(source).where(t.c.id > mark - self.id_overlap).order_by(t.c.id)
        count, top = 0, mark
        for rows in self._read(stmt):
            self._load(source, rows)
            count += len(rows)
            top = max(top, rows[-1][0])
        _set_watermark(self.con, source.name, top, self.now)
        return count

    def stamped(self, source: _Source) -> int:
        """Read changed contacts into ``_contact_rows``; ``settle_contacts`` stores them."""
        mark = _watermark(self.con, source.name)
        t = source.table
        stmt = self._select(source)
        if mark:
            since = (_from_micros(mark) - self.time_overlap).replace(tzinfo=UTC)
            stmt = stmt.where(t.c.updated_at >= since)
        stamp = [c for c, _ in source.columns].index("updated_at")
        count, top = 0, mark
        for rows in self._read(stmt.order_by(t.c.updated_at, t.c.id)):
            self._load(source, rows)
            count += len(rows)
            last = rows[-1][stamp]
            top = max(top, _micros(datetime.fromisoformat(last) if isinstance(last, str) else last))
        _set_watermark(self.con, source.name, top, self.now)
        return count

    def settle_contacts(self) -> None:
        """Store the changed contact rows, and the acquisition of every contact whose row,
        events or merges changed; a row is rewritten only if something in it changed."""
        con = self.con
        touched = """
            WHERE contact_id IN (
                SELECT coalesce(m.into_id, t.id) FROM _touched t
                LEFT JOIN merge_map m ON m.merged_id = t.id
                UNION SELECT id FROM _contact_rows)
        """
        con.execute(f"CREATE OR REPLACE TEMP TABLE _first AS {first_events_sql(touched)}")
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _rewrite AS
            SELECT r.* REPLACE (
                f.first.source AS acquired_source,
                f.first.channel AS acquired_channel,
                f.first.campaign AS acquired_campaign)
            FROM _contact_rows r LEFT JOIN _first f ON f.contact_id = r.id
            UNION ALL BY NAME
            SELECT c.* REPLACE (
                f.first.source AS acquired_source,
                f.first.channel AS acquired_channel,
                f.first.campaign AS acquired_campaign)
            FROM contacts c JOIN _first f ON f.contact_id = c.id
            WHERE c.id NOT IN (SELECT id FROM _contact_rows)
                AND (c.acquired_source IS DISTINCT FROM f.first.source
                    OR c.acquired_channel IS DISTINCT FROM f.first.channel
                    OR c.acquired_campaign IS DISTINCT FROM f.first.campaign)
            """
        )
        con.execute("DELETE FROM contacts WHERE id IN (SELECT id FROM _rewrite)")
        con.execute("INSERT INTO contacts BY NAME SELECT * FROM _rewrite")
        con.execute("DROP TABLE _rewrite")
        con.execute("DROP TABLE _first")

    def erasures(self, inspector: sa.Inspector) -> None:
        """Replace the copied rows of contacts erased since (module docstring)."""
        con = self.con
        tombstones = list(dict.fromkeys(self.tombstones))
        if not tombstones:
            return
        con.register("_tombstones", pa.table({"alias": pa.array(tombstones, pa.string())}))
        try:
            con.execute(
                """
                CREATE OR REPLACE TEMP TABLE _erased AS
                SELECT id FROM (
                    SELECT id FROM contacts
                    UNION SELECT merged_id FROM merge_map
                    UNION SELECT into_id FROM merge_map)
                WHERE ? || left(sha256(id), 16) IN (SELECT alias FROM _tombstones)
                """,
                [ERASED_PREFIX],
            )
            # A merged contact's rows count for its survivor; so do its pseudonym's, the
            # link kept here between two pseudonyms only (the database drops merges).
            con.execute(
                """
                CREATE OR REPLACE TEMP TABLE _links AS
                SELECT DISTINCT ? || left(sha256(merged_id), 16) AS merged_id,
                    ? || left(sha256(into_id), 16) AS into_id
                FROM merge_map WHERE merged_id IN (SELECT id FROM _erased)
                """,
                [ERASED_PREFIX, ERASED_PREFIX],
            )
            gone = "(SELECT id FROM _erased UNION ALL SELECT alias FROM _tombstones)"
            for table in ("events", "stage_transitions", "deliveries", "journey_enrolments"):
                con.execute(f"DELETE FROM {table} WHERE contact_id IN {gone}")
            con.execute("DELETE FROM contacts WHERE id IN (SELECT id FROM _erased)")
            con.execute(
                "DELETE FROM merge_map WHERE merged_id IN (SELECT id FROM _erased) "
                "OR into_id IN (SELECT id FROM _erased)"
            )
            con.execute("DELETE FROM contact_keys WHERE id IN (SELECT id FROM _erased)")
            con.execute("DELETE FROM merge_map WHERE merged_id IN (SELECT merged_id FROM _links)")
            con.execute("INSERT INTO merge_map SELECT merged_id, into_id FROM _links")
            con.execute("DELETE FROM _contact_rows WHERE id IN (SELECT merged_id FROM merge_map)")
            con.execute("DROP TABLE _links")
            self.erased += int(con.execute("SELECT count(*) FROM _erased").fetchall()[0][0])
            con.execute("DROP TABLE _erased")
        finally:
            con.unregister("_tombstones")
        for source in SOURCES:
            if source.scheme not in ("append", "settling") or not inspector.has_table(source.name):
                continue
            self.mark = _watermark(con, source.name)
            t = source.table
            for start in range(0, len(tombstones), _REREAD_BATCH):
                stmt = self._select(source).where(
                    t.c.contact_id.in_(tombstones[start : start + _REREAD_BATCH])
                )
                for rows in self._read(stmt.order_by(t.c.id)):
                    self._load(source, rows)

    def settling(self, source: _Source) -> int:
        mark = _watermark(self.con, source.name)
        t = source.table
        unsettled = [
            r[0]
            for r in self.con.execute(
                f"SELECT id FROM {source.name} WHERE id <= ? AND {source.unsettled} ORDER BY id",
                [mark - self.id_overlap],
            ).fetchall()
        ]
        count = 0
        for start in range(0, len(unsettled), _REREAD_BATCH):
            ids = unsettled[start : start + _REREAD_BATCH]
            found = [
                tuple(r) for r in self.conn.execute(self._select(source).where(t.c.id.in_(ids)))
            ]
            if found:
                self._load(source, found)
                count += len(found)
        return count + self._from_watermark(source, mark)

    def whole(self, source: _Source) -> int:
        self.con.execute(f"DELETE FROM {source.name}")
        count = 0
        for rows in self._read(self._select(source)):
            self._load(source, rows)
            count += len(rows)
        _set_watermark(self.con, source.name, count, self.now)
        return count

    def merges(self) -> int:
        """Resolve merge chains, store the map, re-point copied rows of changed ids."""
        m = sa.table("merges", sa.column("merged_id", sa.String()), sa.column("into_id"))
        into = {a: b for a, b in self.conn.execute(sa.select(m.c.merged_id, m.c.into_id)).all()}
        self.rows["merges"] = len(into)
        resolved: dict[str, str] = {}
        for merged in into:
            seen = {merged}
            root = into[merged]
            while root in into and root not in seen:  # a cycle stops where it closes
                seen.add(root)
                root = into[root]
            resolved[merged] = root
        known = dict(self.con.execute("SELECT merged_id, into_id FROM merge_map").fetchall())
        changed = {a: b for a, b in resolved.items() if known.get(a) != b}
        if not changed:
            return 0
        con = self.con
        data = pa.table(
            {"merged_id": list(changed), "into_id": list(changed.values())},
            schema=pa.schema([("merged_id", pa.string()), ("into_id", pa.string())]),
        )
        con.register("_changed", data)
        try:
            con.execute("DELETE FROM merge_map WHERE merged_id IN (SELECT merged_id FROM _changed)")
            con.execute("INSERT INTO merge_map SELECT merged_id, into_id FROM _changed")
            assign_keys(con, "SELECT into_id FROM _changed")
            for table in ("events", "stage_transitions"):
                con.execute(
                    f"UPDATE {table} SET contact_id = c.into_id, contact_key = k.key "
                    f"FROM _changed c JOIN contact_keys k ON k.id = c.into_id "
                    f"WHERE {table}.contact_id = c.merged_id"
                )
            for table in ("deliveries", "journey_enrolments"):
                con.execute(
                    f"UPDATE {table} SET contact_id = c.into_id FROM _changed c "
                    f"WHERE {table}.contact_id = c.merged_id"
                )
            people = (("handoffs", "contact_id"), ("referrals", "referrer_id"))
            for table, col in (*people, ("referrals", "referee_id")):
                con.execute(
                    f"UPDATE {table} SET {col} = c.into_id FROM _changed c "
                    f"WHERE {table}.{col} = c.merged_id"
                )
            con.execute("DELETE FROM contacts WHERE id IN (SELECT merged_id FROM _changed)")
            con.execute("INSERT INTO _touched SELECT into_id FROM _changed")
        finally:
            con.unregister("_changed")
        return len(changed)


class AnalyticsStore:
    """The analytics store at ``path`` (a DuckDB file), or in memory (``":memory:"``).

    Args:
        path: The DuckDB file (by convention ``default_path(settings.data_dir)``), or
            ``":memory:"`` for a store that lives as long as this object.
        chunk_rows: Rows read from the database per round trip.
        lock_timeout: Seconds a reader waits for a running sync (and a sync for readers)
            before giving up with a DatabaseError.
        id_overlap: Ids below a watermark read again each sync (late commits).
        time_overlap: Time below the ``updated_at`` watermark read again each sync.
    """

    def __init__(
        self,
        path: Path | str = MEMORY,
        *,
        chunk_rows: int = CHUNK_ROWS,
        lock_timeout: float = 30.0,
        id_overlap: int = ID_OVERLAP,
        time_overlap: timedelta = TIME_OVERLAP,
    ) -> None:
        self.path: Path | None = None if str(path) == MEMORY else Path(path)
        self.chunk_rows = chunk_rows
        self.lock_timeout = lock_timeout
        self.id_overlap = id_overlap
        self.time_overlap = time_overlap
        self._memory: duckdb.DuckDBPyConnection | None = None
        if self.path is None:
            self._memory = duckdb.connect(MEMORY)
            create_tables(self._memory)

    def close(self) -> None:
        if self._memory is not None:
            self._memory.close()
            self._memory = None

    def __enter__(self) -> AnalyticsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- locking -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        assert self.path is not None
        if fcntl is None:  # pragma: no cover
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        with lock.open("a") as handle:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(handle, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        what = "a sync is running" if not exclusive else "reports are reading"
                        raise DatabaseError(
                            f"the analytics store {self.path} is busy: {what}",
                            fix="try again when it finishes, or raise lock_timeout",
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._memory is not None:
            yield self._memory
            return
        assert self.path is not None
        with self._locked(exclusive=True):
            fresh = not self.path.exists()
            con = duckdb.connect(str(self.path))
            if fresh:
                # Before any table is written: the copy holds contacts' personal data.
                self.path.chmod(0o600)
            try:
                if not schema_is_current(con):
                    # A copy made by an older version: it is derived data, so start over
                    # and let this sync read everything again.
                    for table in (*TABLES, *STORE_TABLES):
                        con.execute(f"DROP TABLE IF EXISTS {table}")
                create_tables(con)
                yield con
            finally:
                con.close()

    # --- public --------------------------------------------------------------------------

    @contextlib.contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for queries, valid inside the ``with`` block.

        In a file store it is read-only and a sync waits until the block ends; in
        memory it is a cursor of the store's one connection.
        """
        if self._memory is not None:
            cursor = self._memory.cursor()
            try:
                yield cursor
            finally:
                cursor.close()
            return
        assert self.path is not None
        if not self.path.exists():
            with self._writer():
                pass  # create the file and its tables: a never-synced store reads empty
        with self._locked(exclusive=False):
            con = duckdb.connect(str(self.path), read_only=True)
            try:
                yield con
            finally:
                con.close()

    @property
    def as_of(self) -> datetime | None:
        """When the last sync finished (UTC); None if the store was never synced."""
        with self.read() as con:
            return synced_at(con)

    def sync(self, db: sa.Engine) -> SyncResult:
        """Copy what changed in the database ``db`` since the last sync.

        One DuckDB transaction: a sync that fails leaves the previous copy as it was.
        On PostgreSQL the source is read in one REPEATABLE READ snapshot, so the tables
        copied agree with each other.
        """
        started = time.perf_counter()
        with self._writer() as con, db.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            job = _Sync(
                con,
                conn,
                chunk=self.chunk_rows,
                id_overlap=self.id_overlap,
                time_overlap=self.time_overlap,
            )
            con.execute("BEGIN TRANSACTION")
            try:
                with conn.begin():
                    changed, skipped = job.run()
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return SyncResult(
            rows=job.rows,
            added=job.added,
            seconds=time.perf_counter() - started,
            merges_changed=changed,
            skipped=skipped,
            as_of=job.now.replace(tzinfo=UTC),
            erased=job.erased,
        )


def synced_at(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """The end of the last sync recorded in this store's ``sync_state`` (UTC), if any."""
    # fetchall: DuckDB 2 refuses new work on a connection with a result left unread.
    rows = con.execute("SELECT synced_at FROM sync_state WHERE name = 'sync'").fetchall()
    return rows[0][0].replace(tzinfo=UTC) if rows else None
