"""Synthetic lifecycle data, generated inside DuckDB: for benchmarks, demos and tests.

``generate`` fills an analytics store's tables with contacts that behave the way a B2B
pipeline does: most stay suspects or prospects, fewer become leads, opportunities and
customers, a few fans and advocates; some leads and opportunities are recycled back to
prospect (some of those come back), some suspects are disqualified. Each stage change
has the event that triggered it just before it (a download, a demo request, a payment,
a promoter's NPS answer, ...), amid a background of page views, video views and WeChat
messages. Every contact's first event carries its acquisition (UTM source wechat,
google, linkedin, newsletter, referral, or none). Two journeys enrol a share of
contacts: ``welcome`` (a 10% holdout and a subject-line A/B split, and the treated
progress further) and ``b2b_nurture`` (leads, 10% holdout); their emails are opened and
clicked at plausible rates, and those events quote the delivery's digest, as tracking
events do. Contacts acquired by referral have a referral from a fan or an advocate.

Everything is SQL over ``range()`` with ``hash()`` for randomness, so the data depend
only on the arguments (and the DuckDB version). On two cores a million contacts with
twenty million events take about half a minute in memory, under a minute to a file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import duckdb
import sqlalchemy as sa

from stagecoach.engine.services.analytics._stats import utc_naive
from stagecoach.engine.services.analytics.pipeline import STAGES
from stagecoach.engine.services.analytics.store import first_events_sql

DEFAULT_START = datetime(2025, 1, 1)
SOURCES: tuple[tuple[str | None, float], ...] = (
    ("wechat", 0.30),
    ("google", 0.25),
    ("linkedin", 0.15),
    ("newsletter", 0.15),
    ("referral", 0.10),
    (None, 0.05),
)
"""Acquisition UTM sources and their shares (None: direct, no campaign)."""
TOP_STAGE: tuple[float, ...] = (0.45, 0.25, 0.12, 0.07, 0.06, 0.03, 0.02)
"""Share of contacts whose furthest stage is each of STAGES."""
BACKGROUND: tuple[tuple[str, float], ...] = (
    ("page.viewed", 0.78),
    ("video.watched", 0.07),
    ("wechat.message_received", 0.08),
    ("wechat.menu_clicked", 0.07),
)
"""Events that move no stage, and their shares of a contact's background activity."""
_SCALE = "18446744073709551616.0"  # 2**64: hash() is a UBIGINT
_DAY_US = 86_400_000_000
_MIN_US = 60_000_000


def _cases(column: str, choices: tuple[tuple[str | None, float], ...]) -> str:
    """A CASE picking a choice by cumulative share of the uniform ``column``."""
    parts, total = [], 0.0
    for value, share in choices[:-1]:
        total += share
        parts.append(f"WHEN {column} < {total!r} THEN {_literal(value)}")
    return f"CASE {' '.join(parts)} ELSE {_literal(choices[-1][0])} END"


def _literal(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def generate(
    con: duckdb.DuckDBPyConnection,
    contacts: int,
    events_per_contact: float = 20,
    seed: int = 0,
    *,
    start: datetime = DEFAULT_START,
    days: int = 180,
    fit_signal: float = 0.0,
) -> dict[str, int]:
    """Append synthetic data to the store's tables (created beforehand) behind ``con``.

    Args:
        con: A connection to an analytics store whose tables exist (``create_tables``).
        contacts: How many contacts; they are created evenly over ``days`` from ``start``.
        events_per_contact: The average number of events per contact (the stage
            triggers and email opens included).
        seed: Different seeds give different, equally plausible data.
        start: When the first contact appears (naive times are UTC).
        days: Over how many days contacts appear; their lives run on after it.
        fit_signal: How strongly a contact's fit decides how far it goes (0: not at
            all, the default). With it, the draw that picks the furthest stage moves by
            ``fit_signal * (size - 0.5 + 0.5 * target_industry - 0.25)``, where ``size``
            is the uniform draw behind the ``employees`` trait (10 to 10,000, log-uniform)
            and ``target_industry`` is 1 for software and finance: the known generating
            process the propensity benchmark recovers. The rule score sees none of it.

    Returns:
        The rows added per table.
    """
    if contacts < 0 or events_per_contact < 1 or days < 1 or not 0 <= fit_signal <= 1:
        raise ValueError(
            "contacts >= 0, events_per_contact >= 1, days >= 1 and 0 <= fit_signal <= 1, please"
        )
    start = utc_naive(start)
    before = {t: _count(con, t) for t in _TABLES}
    seed_sql = str(int(seed))
    con.execute(f"CREATE OR REPLACE TEMP MACRO syn_u(a, b) AS (hash(a, b, {seed_sql}) / {_SCALE})")
    con.execute("CREATE OR REPLACE TEMP MACRO syn_stage(k) AS (" + _stage_list() + "[k])")
    offset = before["contacts"]  # a second call adds new people
    _contacts(con, contacts, events_per_contact, start, days, offset, fit_signal)
    _transitions(con)
    _journeys(con)
    _events(con)
    _finish(con, offset)
    for table in ("syn_c", "syn_t", "syn_e", "syn_j", "syn_d"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    return {t: _count(con, t) - before[t] for t in _TABLES}


_TABLES = (
    "contacts",
    "events",
    "stage_transitions",
    "deliveries",
    "journey_enrolments",
    "referrals",
)


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])


def _stage_list() -> str:
    return "[" + ", ".join(_literal(s) for s in STAGES) + "]"


def _contacts(
    con: duckdb.DuckDBPyConnection,
    contacts: int,
    events_per_contact: float,
    start: datetime,
    days: int,
    offset: int,
    fit_signal: float = 0.0,
) -> None:
    spread = max(0.0, 2 * events_per_contact - 3)  # background ~ events_per_contact - 1
    stages = tuple((str(k), share) for k, share in enumerate(TOP_STAGE, start=1))
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE syn_c AS
        WITH base AS (
            SELECT i, syn_u(i, 1) AS r_created, syn_u(i, 3) AS r_src,
                syn_u(i, 4) AS r_detour, syn_u(i, 5) AS r_n, syn_u(i, 6) AS r_size,
                syn_u(i, 300) < 0.2 AS welcome,
                CASE WHEN syn_u(i, 301) < 0.1 THEN 'holdout' ELSE 'treatment' END AS arm,
                CASE WHEN syn_u(i, 302) < 0.5 THEN 'variant-a' ELSE 'variant-b' END AS variant,
                -- the welcome journey works: treated contacts go further, variant b more so
                least(0.999999, greatest(0.0, syn_u(i, 2) + CASE WHEN welcome AND arm = 'treatment'
                    THEN 0.04 + 0.03 * (variant = 'variant-b')::INTEGER ELSE 0 END
                    + {float(fit_signal)!r} * (syn_u(i, 6) - 0.5
                        + 0.5 * (i % 4 IN (0, 3))::INTEGER - 0.25))) AS r_stage
            FROM range({offset}, {offset + contacts}) t(i)
        )
        SELECT i, printf('c%08d', i) AS id,
            $start + to_microseconds(CAST(r_created * {days * _DAY_US} AS BIGINT)) AS created_at,
            CAST({_cases("r_stage", stages)} AS INTEGER) AS top,
            {_cases("r_src", SOURCES)} AS utm,
            r_detour,
            greatest(1, 1 + CAST(floor(r_n * {spread!r}) AS INTEGER)) AS n_bg,
            CAST(10 * pow(1000, r_size) AS INTEGER) AS employees,
            welcome, arm, variant
        FROM base
        """,
        {"start": start},
    )


def _gap(i: str, tag: str, max_days: int) -> str:
    """A random gap in microseconds: an hour to ``max_days``, most of them short."""
    return f"CAST((3600 + pow(syn_u({i}, {tag}), 2) * {max_days * 86_400}) * 1e6 AS BIGINT)"


def _transitions(con: duckdb.DuckDBPyConnection) -> None:
    """Stage by stage up to each contact's top stage; then detours."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE syn_t AS
        WITH steps AS (
            SELECT i, id, created_at, top, r_detour, unnest(range(1, top + 1)) AS k FROM syn_c
        ),
        timed AS (
            SELECT i, id, top, r_detour, k,
                created_at + to_microseconds(CAST(sum(
                    CASE WHEN k = 1 THEN 0 ELSE {_gap("i", "100 + k", 40)} END
                ) OVER (PARTITION BY i ORDER BY k) AS BIGINT)) AS ts
            FROM steps
        ),
        progress AS (
            SELECT i, id, CASE WHEN k = 1 THEN NULL ELSE syn_stage(k - 1) END AS from_stage,
                syn_stage(k) AS to_stage, CASE WHEN k = 1 THEN 'manual' ELSE 'rule' END AS kind,
                CASE WHEN k = 1 THEN 'opened' ELSE 'rule' END AS reason, ts, k AS seq
            FROM timed
        ),
        last AS (SELECT * FROM timed WHERE k = top),
        recycled AS (
            SELECT i, id, syn_stage(top) AS from_stage, 'prospect' AS to_stage,
                'detour' AS kind, 'recycled: no budget this quarter' AS reason,
                ts + to_microseconds({_gap("i", "200", 30)}) AS ts, 10 AS seq, r_detour
            FROM last WHERE top IN (3, 4) AND r_detour < 0.25
        ),
        returned AS (
            SELECT i, id, 'prospect' AS from_stage, 'lead' AS to_stage, 'rule' AS kind,
                'rule' AS reason, ts + to_microseconds({_gap("i", "201", 30)}) AS ts, 11 AS seq
            FROM recycled WHERE r_detour < 0.10
        ),
        disqualified AS (
            SELECT i, id, syn_stage(top) AS from_stage, 'disqualified' AS to_stage,
                'detour' AS kind, 'disqualified: not a buyer' AS reason,
                ts + to_microseconds({_gap("i", "202", 20)}) AS ts, 12 AS seq
            FROM last WHERE top IN (1, 2) AND r_detour < 0.05
        )
        SELECT * FROM progress
        UNION ALL SELECT * EXCLUDE (r_detour) FROM recycled
        UNION ALL SELECT * FROM returned
        UNION ALL SELECT * FROM disqualified
        """
    )


def _journeys(con: duckdb.DuckDBPyConnection) -> None:
    """Enrolments in ``welcome`` and ``b2b_nurture``, and the deliveries they sent."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE syn_j AS
        SELECT i, id, 'welcome' AS journey, 'welcome-v1' AS version,
            created_at + to_microseconds({5 * _MIN_US}) AS started_at, arm, variant,
            2 AS sends, 3 AS spacing_days, utm
        FROM syn_c WHERE welcome
        UNION ALL
        SELECT c.i, c.id, 'b2b_nurture', 'nurture-v3',
            t.ts + to_microseconds({10 * _MIN_US}),
            CASE WHEN syn_u(c.i, 311) < 0.1 THEN 'holdout' ELSE 'treatment' END,
            NULL, 3, 7, c.utm
        FROM syn_c c JOIN syn_t t ON t.i = c.i AND t.to_stage = 'lead' AND t.seq = 3
        WHERE syn_u(c.i, 310) < 0.5
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE syn_d AS
        WITH sends AS (
            SELECT *, unnest(range(1, sends + 1)) AS n FROM syn_j WHERE arm = 'treatment'
        ),
        shaped AS (
            SELECT i, id, journey, version, journey || '-' || n AS step_id,
                CASE WHEN journey = 'b2b_nurture' AND utm = 'wechat' THEN 'wechat'
                    ELSE 'email' END AS channel,
                CASE WHEN journey = 'welcome' AND n = 1 THEN 'welcome-' || variant
                    ELSE journey || '-content-' || n END AS content_id,
                started_at + to_microseconds(CAST((n - 1) * spacing_days AS BIGINT)
                    * {_DAY_US}) AS created_at,
                syn_u(i, 400 + n + (journey = 'welcome')::INTEGER * 10) AS r
            FROM sends
        )
        SELECT *, id || ':' || version || ':' || step_id || ':1' AS idempotency_key,
            CASE WHEN r < 0.93 THEN 'sent' WHEN r < 0.98 THEN 'blocked' ELSE 'failed' END
                AS status
        FROM shaped
        """
    )


def _events(con: duckdb.DuckDBPyConnection) -> None:
    """Background activity, stage triggers, purchases, NPS answers, email opens."""
    background = _cases("syn_u(i, 1000 + j)", BACKGROUND)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE syn_e AS
        WITH life AS (
            SELECT c.i, c.id, c.created_at, c.utm, c.n_bg,
                date_diff('microsecond', c.created_at, max(t.ts)) + 45 * {_DAY_US} AS span
            FROM syn_c c JOIN syn_t t ON t.i = c.i
            GROUP BY c.i, c.id, c.created_at, c.utm, c.n_bg
        ),
        bg AS (SELECT *, unnest(range(n_bg)) AS j FROM life),
        background AS (
            SELECT i, id, 1000 + j AS tag,
                CASE WHEN j = 0 THEN 'page.viewed' ELSE {background} END AS name,
                CASE WHEN j = 0 THEN created_at
                    ELSE created_at + to_microseconds({_MIN_US}
                        + CAST(syn_u(i, 2000 + j) * span AS BIGINT)) END AS ts,
                CASE WHEN j = 0 THEN coalesce(utm, 'web') ELSE 'web' END AS source,
                CASE WHEN j > 0 THEN 'web' WHEN utm = 'wechat' THEN 'wechat'
                    WHEN utm = 'newsletter' THEN 'email' ELSE 'web' END AS channel,
                CASE WHEN j = 0 AND utm IS NOT NULL THEN
                    json_object('utm_source', utm, 'path', '/')
                    ELSE NULL END AS properties,
                CASE WHEN j = 0 AND utm IS NOT NULL THEN
                    json_object('campaign', json_object('source', utm))
                    ELSE NULL END AS context,
                NULL AS delivery
            FROM bg
        ),
        triggers AS (
            SELECT i, id, 100 + seq AS tag,
                CASE to_stage
                    WHEN 'prospect' THEN CASE WHEN syn_u(i, 500 + seq) < 0.6
                        THEN 'content.downloaded' ELSE 'form.submitted' END
                    WHEN 'lead' THEN CASE WHEN syn_u(i, 500 + seq) < 0.5
                        THEN 'demo.requested' ELSE 'trial.started' END
                    WHEN 'opportunity' THEN 'sales.accepted'
                    WHEN 'customer' THEN 'order.paid'
                    WHEN 'fan' THEN 'nps.answered'
                    ELSE 'referral.converted' END AS name,
                ts - to_microseconds(CAST((1 + 29 * syn_u(i, 600 + seq)) * {_MIN_US}
                    AS BIGINT)) AS ts,
                'web' AS source, 'web' AS channel,
                CASE to_stage
                    WHEN 'customer' THEN json_object('amount',
                        CAST(500 + 9500 * syn_u(i, 700) AS INTEGER), 'currency', 'CNY')
                    WHEN 'fan' THEN json_object('score', 9 + CAST(syn_u(i, 701) < 0.5 AS INTEGER))
                    ELSE NULL END AS properties,
                NULL AS context, NULL AS delivery
            FROM syn_t WHERE kind = 'rule'
        ),
        customers AS (SELECT * FROM syn_t WHERE to_stage = 'customer'),
        answers AS (
            SELECT i, id, 200 AS tag, 'nps.answered' AS name,
                ts + to_microseconds({_gap("i", "800", 60)}) AS ts, 'web', 'web',
                json_object('score', CAST(floor(syn_u(i, 801) * 9) AS INTEGER)), NULL, NULL
            FROM customers c
            WHERE syn_u(i, 802) < 0.6
                AND NOT EXISTS (SELECT 1 FROM syn_t f WHERE f.i = c.i AND f.to_stage = 'fan')
        ),
        repeats AS (
            SELECT i, id, 201, 'order.paid', ts + to_microseconds({_gap("i", "810", 120)}),
                'web', 'web', json_object('amount', CAST(500 + 9500 * syn_u(i, 811) AS INTEGER),
                'currency', 'CNY'), NULL, NULL
            FROM customers WHERE syn_u(i, 812) < 0.3
        ),
        signups AS (
            SELECT i, id, 202, 'referral.signed_up',
                created_at + to_microseconds({2 * _MIN_US}), 'referral', 'web', NULL, NULL, NULL
            FROM syn_c WHERE utm = 'referral'
        ),
        opens AS (
            SELECT i, id, 300 + row_number() OVER (PARTITION BY i ORDER BY created_at) AS tag,
                'email.opened', created_at + to_microseconds(CAST(syn_u(i, 900 + hash(step_id)
                    % 1000) * 2 * {_DAY_US} AS BIGINT)) AS ts,
                'email_tracking' AS source, 'email' AS channel,
                json_object('message_id', left(sha256(idempotency_key), 32),
                    'content_id', content_id) AS properties,
                NULL AS context, left(sha256(idempotency_key), 32) AS delivery,
                syn_u(i, 950 + hash(step_id) % 1000) AS r
            FROM syn_d WHERE channel = 'email' AND status = 'sent'
        ),
        opened AS (SELECT * EXCLUDE (r) FROM opens WHERE r < 0.4),
        clicked AS (
            SELECT i, id, tag + 50, 'email.clicked', ts + to_microseconds({2 * _MIN_US}),
                'email_tracking', 'email', properties, NULL, delivery
            FROM opens WHERE r < 0.12
        )
        SELECT * FROM background
        UNION ALL SELECT * FROM triggers
        UNION ALL SELECT * FROM answers
        UNION ALL SELECT * FROM repeats
        UNION ALL SELECT * FROM signups
        UNION ALL SELECT * FROM opened
        UNION ALL SELECT * FROM clicked
        """
    )


def _finish(con: duckdb.DuckDBPyConnection, offset: int) -> None:
    """Append to the store's tables with ids in time order, as a sync leaves them (a
    primary key also takes ascending ids several times faster than scattered ones)."""
    base = {t: _max_id(con, t) + 1 for t in _TABLES if t != "contacts"}
    top = con.execute("SELECT coalesce(max(key), 0) FROM contact_keys").fetchall()[0][0]
    first_key = int(top) + 1 - offset
    key = f"({first_key} + i)"  # contact i's contact_key
    con.execute(f"INSERT INTO contact_keys SELECT id, {key} FROM syn_c")
    con.execute(
        f"""
        INSERT INTO events
        SELECT {base["events"]} + row_number() OVER (ORDER BY ts, i, tag), id,
            CASE WHEN name = 'page.viewed' THEN 'page' ELSE 'track' END, name,
            coalesce(properties, '{{}}'), coalesce(context, '{{}}'), source, channel,
            delivery, ts, ts + INTERVAL 2 SECOND, {key}
        FROM syn_e
        """
    )
    con.execute(
        f"""
        INSERT INTO contacts
        SELECT c.id, arg_max(t.to_stage, (t.ts, t.seq)),
            CASE WHEN c.utm = 'wechat' THEN 'zh-CN' ELSE 'en' END,
            CASE WHEN c.utm = 'wechat' THEN 'Asia/Shanghai' ELSE 'Europe/London' END,
            json_object('employees', c.employees, 'industry',
                ['software', 'manufacturing', 'retail', 'finance'][1 + c.i % 4]),
            c.created_at, max(t.ts),
            any_value(f.first.source), any_value(f.first.channel), any_value(f.first.campaign),
            {first_key} + c.i, false
        FROM syn_c c JOIN syn_t t ON t.i = c.i
        LEFT JOIN ({first_events_sql(f"WHERE id >= {base['events']}")}) f
            ON f.contact_id = c.id
        GROUP BY c.id, c.utm, c.employees, c.i, c.created_at
        ORDER BY c.created_at
        """
    )
    con.execute(
        f"""
        INSERT INTO stage_transitions
        SELECT {base["stage_transitions"]} + row_number() OVER (ORDER BY ts, i, seq), id,
            from_stage, to_stage, kind, reason, 'workflow',
            CASE WHEN kind = 'rule' THEN 'event' END, ts, {key}
        FROM syn_t
        """
    )
    con.execute(
        f"""
        INSERT INTO journey_enrolments
        SELECT {base["journey_enrolments"]} + row_number() OVER (ORDER BY started_at, i, journey),
            id, journey, version, 1, 'completed', NULL,
            CASE WHEN variant IS NULL THEN json_object('holdout', arm)
                ELSE json_object('holdout', arm, 'subject-test', variant) END,
            json_array(json_object('step', 'holdout', 'kind', 'split', 'outcome', arm)),
            started_at, started_at + to_microseconds(CAST(sends * spacing_days AS BIGINT)
                * {_DAY_US})
        FROM syn_j
        """
    )
    con.execute(
        f"""
        INSERT INTO deliveries
        SELECT {base["deliveries"]} + row_number() OVER (ORDER BY created_at, i, step_id),
            left(sha256(idempotency_key), 32), id, journey, version, step_id, 1, channel,
            content_id, status, created_at,
            CASE WHEN status = 'sent' THEN created_at + INTERVAL 3 SECOND END
        FROM syn_d
        """
    )
    _referrals(con, base["referrals"])


def _referrals(con: duckdb.DuckDBPyConnection, first_id: int) -> None:
    """Contacts acquired by referral were referred by a fan or an advocate (picked at
    random); the referral converted if they became a customer."""
    con.execute(
        f"""
        INSERT INTO referrals
        WITH promoters AS (
            SELECT id, row_number() OVER (ORDER BY i) AS n FROM syn_c WHERE top >= 6
        ),
        referees AS (
            SELECT c.i, c.id, c.created_at,
                1 + CAST(floor(syn_u(c.i, 1100) * (SELECT count(*) FROM promoters)) AS BIGINT)
                    AS pick
            FROM syn_c c WHERE c.utm = 'referral'
        ),
        converted AS (SELECT i, min(ts) AS ts FROM syn_t WHERE to_stage = 'customer' GROUP BY i)
        SELECT {first_id} + row_number() OVER (ORDER BY r.created_at, r.i),
            'REF' || upper(left(md5(p.id), 8)), p.id, r.id,
            CASE WHEN syn_u(r.i, 1101) < 0.6 THEN 'wechat' ELSE 'email' END,
            CASE WHEN v.ts IS NULL THEN 'signed_up' ELSE 'converted' END,
            r.created_at + to_microseconds({2 * _MIN_US}), v.ts
        FROM referees r JOIN promoters p ON p.n = r.pick
        LEFT JOIN converted v ON v.i = r.i
        WHERE p.id <> r.id
        """
    )


def _max_id(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(con.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchall()[0][0])


def to_database(
    con: duckdb.DuckDBPyConnection, db: sa.Engine, *, until: datetime | None = None
) -> dict[str, int]:
    """Copy generated contacts, events and stage transitions into the operational
    database (migrated), as if the engine had recorded them: a demo or a test then has
    months of history that a sync copies back into a store like any other.

    Generated lives run on past the days contacts appear in. With ``until``, only what
    happened before it is copied (contacts created before it, at the stage they had
    reached by then): history up to now, with the future still to come.

    Returns:
        The rows written per table.
    """
    from stagecoach.engine.services.storage.models import Contact, Event, StageTransition

    end = utc_naive(until) if until is not None else datetime(9999, 1, 1)
    queries = {
        Contact: """SELECT c.id, arg_max(t.to_stage, t."at") AS stage, c.locale, c.timezone,
            c.traits::VARCHAR AS traits, c.created_at,
            greatest(c.created_at, max(t."at")) AS updated_at, c.rehearsal
            FROM contacts c JOIN stage_transitions t ON t.contact_id = c.id AND t."at" < $end
            WHERE c.created_at < $end
            GROUP BY c.id, c.locale, c.timezone, c.traits::VARCHAR, c.created_at, c.rehearsal
            ORDER BY c.created_at, c.id""",
        Event: """SELECT 'syn-' || id AS message_id, contact_id, kind, name,
            properties::VARCHAR AS properties, context::VARCHAR AS context,
            coalesce(source, 'api') AS source, channel, occurred_at, received_at
            FROM events WHERE received_at < $end
                AND contact_id IN (SELECT contact_id FROM stage_transitions WHERE "at" < $end)
            ORDER BY id""",
        StageTransition: """SELECT contact_id || ':syn:' || id AS key, contact_id, from_stage,
            to_stage, kind, coalesce(reason, kind) AS reason, coalesce(source, 'workflow')
            AS source, trigger_event_type, "at"
            FROM stage_transitions WHERE "at" < $end ORDER BY id""",
    }
    written: dict[str, int] = {}
    with db.begin() as conn:
        for model, sql in queries.items():
            table = model.__table__  # type: ignore[attr-defined]
            cursor = con.execute(sql, {"end": end})
            names = [d[0] for d in cursor.description or ()]
            total = 0
            while rows := cursor.fetchmany(10_000):
                records = [dict(zip(names, row, strict=True)) for row in rows]
                for record in records:
                    for key, value in record.items():
                        if key in ("traits", "properties", "context"):
                            record[key] = json.loads(value or "{}")
                        elif isinstance(value, datetime):
                            record[key] = value.replace(tzinfo=UTC)
                conn.execute(sa.insert(table), records)
                total += len(records)
            written[str(table.name)] = total
    return written
