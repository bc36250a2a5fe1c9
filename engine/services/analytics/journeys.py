"""Journey and content performance: per-step delivery funnel, holdout lift, split tests
and the flow between steps.

Which enrolments: those started in ``[since, until)``; ``options["journey"]`` keeps one
journey. Every count below is of enrolments (a contact enrolled twice counts twice),
except ``sent`` to ``clicked``, which count deliveries.

Definitions:

- **steps**: one row per journey, version, step, channel and content item delivered.
  ``sent``: deliveries with status ``sent`` (the provider accepted them; ``sending`` is
  recorded before the send and stays on a retry, ``blocked``/``failed`` never left).
  ``delivered``: deliveries with an ``email.delivered`` event quoting their digest (or a
  ``delivered`` status). ``opened``/``clicked``: deliveries with an ``email.opened`` /
  ``email.clicked`` event whose ``delivery`` is the delivery's digest; an event quoting no
  delivery of these enrolments counts nowhere. ``converted``/``exited``: enrolments with a
  delivery at the step that reached the goal (reason ``goal``) / finished ``exited``.
  ``blocked``/``failed``: deliveries with that status.
- **conversion** (lift and splits), ``options["metric"]``: ``goal`` (default: the
  enrolment finished with reason ``goal``), ``clicked`` (a delivery of the enrolment was
  clicked) or the name of a stored event such as ``order.paid`` (the contact did it
  within ``options["window_days"]``, default 14, of the enrolment's start).
- **lift**: per journey version with held-out enrolments. Held out: reason ``holdout``, an
  arm ``holdout`` in ``arms``, or an arm that left the journey (the enrolment exited with
  the arm's name as its reason: ``arms`` names an exit arm by its reason); treatment:
  every other enrolment.
  ``lift`` = treatment rate - holdout rate, ``relative_lift`` = lift / holdout rate,
  ``p_value`` from the two-proportion z-test. A held-out enrolment exits at the split, so
  it cannot reach the journey's goal: lift means something on an event metric.
- **splits**: per split step recorded in ``arms`` (holdout splits excluded: a step where
  some enrolment was held out, or the step named ``holdout``), per arm: enrolments,
  conversions, rate; ``p_value`` across the step's arms (z-test for two, chi-square for
  more); ``winner`` marks the best arm only when ``p_value < 0.05``.
- **flow**: per consecutive pair of ``trail`` steps, the enrolments that moved from
  ``source`` to ``target``; each trail ends in an edge to ``goal``, ``end``,
  ``exit:<reason>`` or ``active``. A step passed twice in a row (a send entered, then
  its result) is one step; the ``$goal``/``$exit`` passages are left to that last edge.
  Ready for a Sankey diagram (a journey that loops back draws a cycle).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

import duckdb

from stagecoach.engine.services.analytics._report import Params, Report, ReportError, Section
from stagecoach.engine.services.analytics._stats import (
    SIGNIFICANCE,
    compare_rates,
    period,
    rate,
)

HOLDOUT = "holdout"
"""The arm label, exit reason and default step id of
``stagecoach.engine.domain.journeys.holdout``."""

DEFAULT_WINDOW_DAYS = 14
"""How long after enrolling an event-metric conversion still counts."""

_ENROLMENTS = """
enrolments AS (
    SELECT e.*
    FROM journey_enrolments AS e
    WHERE e.started_at >= $since AND e.started_at < $until
      AND ($journey IS NULL OR e.journey = $journey)
),
arms AS (
    SELECT
        e.id,
        e.journey,
        e.version,
        a.key AS step_id,
        a.value ->> '$' AS arm,
        -- An arm that leaves the journey names the exit reason: that is a holdout.
        coalesce(
            a.value ->> '$' = $holdout OR (e.status = 'exited' AND e.reason = a.value ->> '$'),
            false
        ) AS held_out
    FROM enrolments AS e, json_each(e.arms) AS a
)"""

_CONVERTED = {
    "goal": "coalesce(e.reason = 'goal', false)",
    "clicked": """EXISTS (
        SELECT 1
        FROM deliveries AS d
        JOIN events AS ev ON ev.delivery = d.digest AND ev.name = 'email.clicked'
        WHERE d.contact_id = e.contact_id AND d.journey = e.journey
          AND d.journey_version = e.version AND d.enrolment = e.enrolment
    )""",
    "event": """EXISTS (
        SELECT 1
        FROM events AS ev
        WHERE ev.contact_id = e.contact_id AND ev.name = $metric
          AND ev.occurred_at >= e.started_at
          AND ev.occurred_at < e.started_at + to_days($window_days)
    )""",
}
"""How an enrolment converts, per kind of metric; chosen by the code, never user text."""

_OUTCOMES = """
WITH {enrolments},
outcomes AS (
    SELECT
        e.id,
        e.journey,
        e.version,
        coalesce(e.reason = $holdout, false)
            OR e.id IN (SELECT arms.id FROM arms WHERE arms.held_out) AS in_holdout,
        {converted} AS converted
    FROM enrolments AS e
)"""

_STEPS = """
WITH scoped AS (
    SELECT d.*, e.id AS enrolment_id, e.status AS enrolment_status, e.reason
    FROM deliveries AS d
    LEFT JOIN journey_enrolments AS e
        ON e.contact_id = d.contact_id AND e.journey = d.journey
        AND e.version = d.journey_version AND e.enrolment = d.enrolment
    -- A delivery whose enrolment has not synced yet counts by its own time.
    WHERE coalesce(e.started_at, d.created_at) >= $since
      AND coalesce(e.started_at, d.created_at) < $until
      AND ($journey IS NULL OR d.journey = $journey)
),
tracked AS (
    SELECT
        ev.delivery,
        bool_or(ev.name = 'email.delivered') AS delivered,
        bool_or(ev.name = 'email.opened') AS opened,
        bool_or(ev.name = 'email.clicked') AS clicked
    FROM events AS ev
    WHERE ev.delivery IN (SELECT scoped.digest FROM scoped)
      AND ev.name IN ('email.delivered', 'email.opened', 'email.clicked')
    GROUP BY ev.delivery
)
SELECT
    s.journey,
    s.journey_version,
    s.step_id,
    s.channel,
    s.content_id,
    count(*) FILTER (WHERE s.status = 'sent') AS sent,
    count(*) FILTER (WHERE s.status = 'delivered' OR t.delivered) AS delivered,
    count(*) FILTER (WHERE t.opened) AS opened,
    count(*) FILTER (WHERE t.clicked) AS clicked,
    count(DISTINCT s.enrolment_id) FILTER (WHERE s.reason = 'goal') AS converted,
    count(DISTINCT s.enrolment_id) FILTER (WHERE s.enrolment_status = 'exited') AS exited,
    count(*) FILTER (WHERE s.status = 'blocked') AS blocked,
    count(*) FILTER (WHERE s.status = 'failed') AS failed
FROM scoped AS s
LEFT JOIN tracked AS t ON t.delivery = s.digest
GROUP BY ALL
ORDER BY s.journey, s.journey_version, min(s.created_at), s.step_id, s.channel, s.content_id
"""

_LIFT = """
SELECT
    o.journey,
    o.version,
    count(*) FILTER (WHERE o.in_holdout) AS holdout,
    count(*) FILTER (WHERE o.in_holdout AND o.converted) AS holdout_converted,
    count(*) FILTER (WHERE NOT o.in_holdout) AS treatment,
    count(*) FILTER (WHERE NOT o.in_holdout AND o.converted) AS treatment_converted
FROM outcomes AS o
GROUP BY o.journey, o.version
HAVING count(*) FILTER (WHERE o.in_holdout) > 0
ORDER BY o.journey, o.version
"""

_SPLITS = """
SELECT
    a.journey,
    a.version,
    a.step_id,
    a.arm,
    count(DISTINCT o.id) AS contacts,
    count(DISTINCT o.id) FILTER (WHERE o.converted) AS conversions
FROM arms AS a
JOIN outcomes AS o ON o.id = a.id
WHERE a.step_id <> $holdout
  AND NOT EXISTS (
      SELECT 1
      FROM arms AS h
      WHERE h.journey = a.journey AND h.version = a.version AND h.step_id = a.step_id
        AND h.held_out
  )
GROUP BY ALL
ORDER BY a.journey, a.version, a.step_id, a.arm
"""

_FLOW = """
WITH {enrolments},
trail AS (
    SELECT
        e.id,
        e.journey,
        e.version,
        CASE
            WHEN e.status = 'active' THEN 'active'
            WHEN e.status = 'exited' THEN 'exit:' || coalesce(e.reason, 'unknown')
            WHEN e.reason = 'goal' THEN 'goal'
            ELSE 'end'
        END AS finish,
        CAST(t.key AS INTEGER) AS position,
        t.value ->> 'step' AS step
    FROM enrolments AS e, json_each(e.trail) AS t
    -- "$goal"/"$exit" passages (the goal condition, the exit criteria) are not steps:
    -- the final edge to the outcome stands for them.
    WHERE NOT starts_with(coalesce(t.value ->> 'step', '$'), '$')
),
steps AS (
    -- A send or an event wait is passed twice (entered, then its result): once is a step.
    SELECT tr.*
    FROM trail AS tr
    QUALIFY tr.step IS DISTINCT FROM lag(tr.step) OVER (PARTITION BY tr.id ORDER BY tr.position)
),
edges AS (
    SELECT
        tr.id,
        tr.journey,
        tr.version,
        tr.step AS source,
        coalesce(lead(tr.step) OVER next_step, tr.finish) AS target
    FROM steps AS tr
    WINDOW next_step AS (PARTITION BY tr.id ORDER BY tr.position)
)
SELECT ed.journey, ed.version, ed.source, ed.target, count(DISTINCT ed.id) AS contacts
FROM edges AS ed
GROUP BY ALL
ORDER BY ed.journey, ed.version, contacts DESC, ed.source, ed.target
"""


def _metric(con: duckdb.DuckDBPyConnection, options: dict[str, Any]) -> tuple[str, str]:
    """The metric option and the kind of conversion it names (goal, clicked, event).

    Any text can be an event name, so an event metric must name an event the store holds:
    a typo is an error, not a column of zeros.
    """
    metric = options.get("metric", "goal")
    if metric in ("goal", "clicked"):
        return metric, metric
    if (
        isinstance(metric, str)
        and metric
        and con.execute(
            "SELECT 1 FROM events WHERE name = $name LIMIT 1", {"name": metric}
        ).fetchone()
    ):
        return metric, "event"
    raise ReportError(
        f"options.metric cannot be {metric!r}: it is neither goal, clicked nor a stored event",
        fix="use one of: goal, clicked, or the name of a stored event such as order.paid",
    )


def _window_days(options: dict[str, Any]) -> int:
    days = options.get("window_days", DEFAULT_WINDOW_DAYS)
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ReportError(
            f"options.window_days cannot be {days!r}",
            fix="use a whole number of days, 1 or more (default 14)",
        )
    return days


def _journey(options: dict[str, Any]) -> str | None:
    journey = options.get("journey")
    if journey is not None and not isinstance(journey, str):
        raise ReportError(
            f"options.journey cannot be {journey!r}", fix="use a journey name, or leave it out"
        )
    return journey or None


def _splits(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Add each arm's rate, and the step's p-value and winner."""
    steps: dict[tuple[str, str, str], list[tuple[str, int, int]]] = defaultdict(list)
    for journey, version, step_id, arm, contacts, conversions in rows:
        steps[(journey, version, step_id)].append((arm, contacts, conversions))
    out: list[tuple[Any, ...]] = []
    for (journey, version, step_id), arms in steps.items():
        p_value = compare_rates([(conversions, contacts) for _, contacts, conversions in arms])
        rates = {arm: conversions / contacts for arm, contacts, conversions in arms}
        leaders = [arm for arm, r in rates.items() if r == max(rates.values())]
        significant = p_value is not None and p_value < SIGNIFICANCE
        winner = leaders[0] if significant and len(leaders) == 1 else None
        out.extend(
            (
                journey,
                version,
                step_id,
                arm,
                contacts,
                conversions,
                rate(conversions, contacts),
                arm == winner,
                p_value,
            )
            for arm, contacts, conversions in arms
        )
    return out


def _lift(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for journey, version, held, held_converted, treated, treated_converted in rows:
        held_rate = held_converted / held
        treated_rate = treated_converted / treated if treated else None
        lift = None if treated_rate is None else treated_rate - held_rate
        p_value = compare_rates([(treated_converted, treated), (held_converted, held)])
        out.append(
            (
                journey,
                version,
                held,
                held_converted,
                round(held_rate, 4),
                treated,
                treated_converted,
                None if treated_rate is None else round(treated_rate, 4),
                None if lift is None else round(lift, 4),
                None if lift is None or not held_rate else round(lift / held_rate, 4),
                p_value,
            )
        )
    return out


def journeys_report(
    con: duckdb.DuckDBPyConnection, params: Params, *, as_of: datetime | None = None
) -> Report:
    """Per-step delivery funnel, holdout lift, split tests and step-to-step flow.

    Options: ``journey`` (one journey's name), ``metric`` (``goal``, ``clicked`` or a
    stored event's name), ``window_days`` (for an event metric, default 14).

    Sections:
        steps: journey, version, step_id, channel, content_id, sent, delivered, opened,
            clicked, converted, exited, blocked, failed.
        lift: journey, version, holdout, holdout_converted, holdout_rate, treatment,
            treatment_converted, treatment_rate, lift, relative_lift, p_value.
        splits: journey, version, step_id, arm, contacts, conversions, rate, winner,
            p_value.
        flow: journey, version, source, target, contacts.

    Raises:
        ReportError: an empty period, or an option outside its allowed values.
    """
    since, until = period(params)
    journey = _journey(params.options)
    window_days = _window_days(params.options)
    metric, kind = _metric(con, params.options)
    scope: dict[str, Any] = {"since": since, "until": until, "journey": journey}
    enrolled: dict[str, Any] = {**scope, "holdout": HOLDOUT}
    outcome_params = dict(enrolled)
    if kind == "event":
        outcome_params |= {"metric": metric, "window_days": window_days}
    # Only module constants are interpolated: the metric itself travels as a parameter.
    outcomes = _OUTCOMES.format(enrolments=_ENROLMENTS, converted=_CONVERTED[kind])

    steps = con.execute(_STEPS, scope).fetchall()
    lift = _lift(con.execute(outcomes + _LIFT, outcome_params).fetchall())
    splits = _splits(con.execute(outcomes + _SPLITS, outcome_params).fetchall())
    flow = con.execute(_FLOW.format(enrolments=_ENROLMENTS), enrolled).fetchall()

    within = f" within {window_days} days of enrolling" if kind == "event" else ""
    notes = [f"conversion metric: {metric}{within}"]
    if lift and kind != "event":
        notes.append(
            "held-out enrolments exit at the holdout split, so they cannot reach the goal or"
            f" click a message: lift on {metric!r} is not a comparison; pass"
            " options.metric=<the goal's event>, e.g. order.paid"
        )
    return Report(
        name="journeys",
        title="Journey and content performance",
        params=params,
        as_of=as_of,
        notes=notes,
        sections=[
            Section(
                "steps",
                (
                    "journey",
                    "version",
                    "step_id",
                    "channel",
                    "content_id",
                    "sent",
                    "delivered",
                    "opened",
                    "clicked",
                    "converted",
                    "exited",
                    "blocked",
                    "failed",
                ),
                steps,
                title="Deliveries per step and content: sent, delivered, opened, clicked",
            ),
            Section(
                "lift",
                (
                    "journey",
                    "version",
                    "holdout",
                    "holdout_converted",
                    "holdout_rate",
                    "treatment",
                    "treatment_converted",
                    "treatment_rate",
                    "lift",
                    "relative_lift",
                    "p_value",
                ),
                lift,
                title=f"Treatment against holdout, on {metric}",
            ),
            Section(
                "splits",
                (
                    "journey",
                    "version",
                    "step_id",
                    "arm",
                    "contacts",
                    "conversions",
                    "rate",
                    "winner",
                    "p_value",
                ),
                splits,
                title=f"Split tests, on {metric}",
            ),
            Section(
                "flow",
                ("journey", "version", "source", "target", "contacts"),
                flow,
                title="Enrolments moving from step to step",
            ),
        ],
    )
