"""A customer-value refresh: read every order, value every customer, store the run and
tell each customer's workflow its new value traits.

One call, :func:`refresh_values`, does it all, in this order:

1. read ``order.paid`` and ``order.refunded`` (and ``nps.answered``,
   ``survey.answered`` and the events the pipeline scores) from the database, following
   merges and leaving journey rehearsals' contacts out;
2. value each order (``stagecoach.engine.domain.value.read_order``), count the ones left
   out by reason, take refunds off;
3. RFM, the ABC tier, the repurchase interval and the cross-sell pairs (pure);
4. BG/NBD and Gamma-Gamma (``btyd``) when there are at least ``min_customers`` repeat
   buyers; with fewer the run says "not enough data: N customers, need M" and no CLV,
   probability alive or churn risk is given: no model is built on noise; churn risk
   weighs probability alive with the engagement score of step 3's behaviour part;
5. store a ``value_runs`` row (the model version, its parameters, what was left out) and
   each customer's ``contact_values`` row;
6. ingest one ``value.scored`` event per customer whose value traits changed, with the
   traits, so segments, journeys, detours and hand-offs see them as ordinary traits.

A refresh is safe to repeat: its events' message ids derive from the run's version and
the contact, and a contact whose traits did not change gets no event.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from stagecoach.engine.domain import value as domain
from stagecoach.engine.domain.conditions import EventRecord
from stagecoach.engine.domain.definitions import Definitions
from stagecoach.engine.domain.hashing import content_hash
from stagecoach.engine.domain.scoring import ScoreState, apply_event, score_at
from stagecoach.engine.services.ingest import Incoming, Ingestor
from stagecoach.engine.services.ingest._store import survivors
from stagecoach.engine.services.storage.models import Contact, ContactValue, Event, ValueRun
from stagecoach.engine.services.value import btyd

_log = structlog.get_logger("stagecoach.value")

SURVEY_ANSWERED = "survey.answered"
TOP_PAIRS = 100
"""Cross-sell pairs kept on a run, strongest lift first."""


@dataclass
class RunResult:
    """What a refresh did: the stored run, the customers it scored, the events it sent."""

    run: ValueRun
    scored: int
    signalled: int
    values: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.run.version


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _events(db: Engine, names: Iterable[str], until: datetime) -> list[tuple[str, Event]]:
    """Events of ``names`` up to ``until``, each with its contact's surviving id, oldest
    first; journey rehearsals' contacts left out."""
    with Session(db) as session:
        rows = session.exec(
            select(Event)
            .join(Contact, col(Contact.id) == col(Event.contact_id))
            .where(
                col(Event.name).in_(list(names)),
                col(Event.occurred_at) <= until,
                col(Contact.rehearsal).is_(False),
            )
            .order_by(col(Event.occurred_at), col(Event.id))
        ).all()
        named = survivors(session.connection(), {r.contact_id for r in rows})
    return [(named.get(r.contact_id, r.contact_id), r) for r in rows]


def _orders(
    rows: Sequence[tuple[str, Event]], model: domain.ValueModel, catalog: domain.Catalog | None
) -> tuple[list[domain.Order], list[domain.LeftOut]]:
    orders: list[domain.Order] = []
    left: list[domain.LeftOut] = []
    refunds: list[tuple[str, str, Mapping[str, Any]]] = []
    for contact_id, e in rows:
        if e.name == domain.ORDER_PAID:
            read = domain.read_order(
                contact_id,
                _aware(e.occurred_at),
                e.properties,
                model=model,
                catalog=catalog,
                fallback_id=e.message_id,
            )
            (orders if isinstance(read, domain.Order) else left).append(read)  # type: ignore[arg-type]
        else:
            refunds.append((contact_id, str(e.properties.get("order_id") or ""), e.properties))
    kept, unknown = domain.apply_refunds(orders, refunds)
    return kept, left + unknown


def _scores(
    db: Engine, definitions: Definitions, customers: set[str], as_of: datetime
) -> dict[str, float]:
    """Each customer's engagement score at ``as_of``: the pipeline's own scoring model
    applied to their stored events, as their workflow scores them."""
    model = definitions.pipeline.scoring
    states: dict[str, ScoreState] = {}
    for contact_id, e in _events(db, model.event_types(), as_of):
        if contact_id in customers:
            record = EventRecord(e.name, _aware(e.occurred_at), dict(e.properties))
            states[contact_id], _ = apply_event(model, states.get(contact_id, ScoreState()), record)
    return {c: score_at(model, s, as_of) for c, s in states.items()}


def _attitudes(rows: Sequence[tuple[str, Event]]) -> dict[str, domain.Attitude]:
    latest: dict[str, dict[str, float]] = defaultdict(dict)
    for contact_id, e in rows:  # oldest first: the last answer wins
        if e.name == "nps.answered":
            score = domain.nps_score(e.properties)
            if score is not None:
                latest[contact_id]["nps"] = score
        else:
            score = domain.survey_score(e.properties)
            if score is not None:
                latest[contact_id]["survey"] = score
    return {c: domain.Attitude(d.get("nps"), d.get("survey")) for c, d in latest.items()}


def refresh_values(
    db: Engine,
    definitions: Definitions,
    *,
    as_of: datetime | None = None,
    catalog: domain.Catalog | None = None,
    ingestor: Ingestor | None = None,
    signal: bool = True,
) -> RunResult:
    """Value every customer as of ``as_of`` (now by default) and store the run.

    ``catalog`` overrides the project's (an imported one); ``signal`` False stores the
    values without sending ``value.scored`` events (a dry run for reports).
    """
    as_of = _aware(as_of or datetime.now(UTC))
    model = definitions.value or domain.ValueModel()
    catalog = catalog or definitions.catalog
    rows = _events(db, (domain.ORDER_PAID, domain.ORDER_REFUNDED), as_of)
    orders, left = _orders(rows, model, catalog)
    summaries = domain.summarise(orders, as_of)
    customers = set(summaries)
    rfm = domain.rfm(summaries, as_of)
    engagement = _scores(db, definitions, customers, as_of)
    said = _attitudes(_events(db, ("nps.answered", SURVEY_ANSWERED), as_of))
    scores = domain.value_scores(
        model, {c: s.spend for c, s in summaries.items()}, engagement, said
    )
    pairs = domain.associations(
        {c: s.products for c, s in summaries.items()}, min_customers=model.min_pair_customers
    )

    repeat_buyers = sum(1 for s in summaries.values() if s.frequency > 0)
    notes: list[str] = []
    status, fitted = "not_enough_data", None
    if repeat_buyers < model.min_customers:
        notes.append(
            f"not enough data: {repeat_buyers} customers with a repeat purchase, need"
            f" {model.min_customers}; no CLV, probability alive or churn risk"
        )
    else:
        ids = sorted(summaries)
        weeks = btyd.WEEK_DAYS
        columns = (
            [summaries[c].frequency for c in ids],
            [summaries[c].recency / weeks for c in ids],
            [summaries[c].age / weeks for c in ids],
            [summaries[c].repeat_value for c in ids],
        )
        try:
            fitted = btyd.fit(*columns)
            status = "fitted"
            if fitted.spend_error:
                notes.append(f"{fitted.spend_error}; no CLV this run")
        except btyd.FitFailed as exc:
            status = "failed"
            notes.append(f"{exc}; no CLV, probability alive or churn risk this run")
    predictions: dict[str, tuple[float, float, float | None]] = {}
    if fitted is not None:
        alive, expected, clv = btyd.predict(
            fitted,
            *columns,
            horizon_weeks=model.horizon / timedelta(days=7),
            annual_discount=model.annual_discount,
        )
        predictions = {c: (alive[i], expected[i], clv[i]) for i, c in enumerate(ids)}

    flags: dict[str, int] = defaultdict(int)
    for out in left:
        flags[out.flag] += 1
    params = fitted.params() if fitted else {}
    version = (
        "value-"
        + content_hash({"as_of": as_of.isoformat(), "params": params, "orders": len(orders)})[:12]
    )
    summary = {
        "customers": len(summaries),
        "repeat_customers": repeat_buyers,
        "orders_valued": len(orders),
        "orders_left_out": len(left),
        "left_out": dict(sorted(flags.items())),
        "left_out_examples": [
            {"order_id": o.order_id, "contact_id": o.contact_id, "flag": o.flag, "detail": o.detail}
            for o in left[:20]
        ],
        "notes": notes,
        "currency": model.currency,
        "horizon_days": model.horizon.days,
        "pairs": [
            {
                "bought": p.bought,
                "recommend": p.recommend,
                "customers": p.customers,
                "support": round(p.support, 4),
                "confidence": p.confidence,
                "lift": p.lift,
            }
            for p in pairs[:TOP_PAIRS]
        ],
    }
    names = {p.sku: p.name or p.sku for p in catalog.products} if catalog else {}
    values: dict[str, dict[str, Any]] = {}
    churn: dict[str, int] = defaultdict(int)
    for contact_id, s in summaries.items():
        score = scores[contact_id]
        p_alive, expect, worth = predictions.get(contact_id, (None, None, None))
        due = domain.next_purchase_due(s)
        cross = domain.recommend(s.products, pairs, min_lift=model.min_lift)
        risk = domain.churn_risk(model, p_alive, engagement.get(contact_id))
        level = None if risk is None else model.churn_level_of(risk)
        churn[level or "unscored"] += 1
        traits: dict[str, Any] = {
            "value_tier": score.tier,
            "value_score": round(score.score, 3),
            "rfm": rfm[contact_id].code,
            "frequency": s.orders,
            "monetary": round(s.spend, 2),
            "clv": None if worth is None else round(worth, 2),
            "p_alive": None if p_alive is None else round(p_alive, 3),
            "churn_risk": None if risk is None else round(risk, 3),
            "churn_risk_level": level,
            "expected_purchases": None if expect is None else round(expect, 2),
            "repurchase_interval_days": (
                None if s.interval_days is None else round(s.interval_days)
            ),
            "next_purchase_due": due.isoformat() if due else None,
            "replenishment_due": due is not None and due <= as_of,
            "products_bought": sorted(s.products),
            "last_product": names.get(s.last_product, s.last_product),
            "cross_sell": cross[0] if cross else None,
            "cross_sell_name": names.get(cross[0], cross[0]) if cross else None,
            "cross_sell_products": cross,
        }
        values[contact_id] = traits
    # Customers by churn level ("unscored": no probability alive, no model this run).
    summary["churn"] = {
        **{level.name: churn[level.name] for level in model.churn_levels},
        "unscored": churn["unscored"],
    }
    with Session(db, expire_on_commit=False) as session:
        run = ValueRun(version=version, as_of=as_of, status=status, params=params, summary=summary)
        session.add(run)
        session.flush()
        # Every stored row in one read (an IN list of every customer would outgrow the
        # database's parameter limit), and no query per contact after it.
        stored = {v.contact_id: v for v in session.exec(select(ContactValue)).all()}
        before = {contact_id: row.traits for contact_id, row in stored.items()}
        changed: list[str] = []
        for contact_id, traits in values.items():
            # ``traits`` on the row are the values last sent to the workflow (what its
            # segments and journeys see), so small drifts add up until they are sent.
            previous = before.get(contact_id)
            stamped = {**traits, "value_as_of": as_of.isoformat(), "value_model": version}
            kept = previous
            if (
                previous is None
                or not previous.get("value_sent", False)
                or _comparable(previous) != _comparable(traits)
            ):
                changed.append(contact_id)
                kept = {**stamped, "value_sent": signal} if signal or previous is None else None
            fields: dict[str, Any] = {
                "run_id": run.id or 0,
                "model_version": version,
                "as_of": as_of,
                "tier": traits["value_tier"],
                "score": traits["value_score"],
                "clv": traits["clv"],
                "p_alive": traits["p_alive"],
                "traits": kept if kept is not None else previous,
            }
            row = stored.get(contact_id)
            if row is None:
                session.add(ContactValue(contact_id=contact_id, **fields))
            else:
                for name, field_value in fields.items():
                    setattr(row, name, field_value)
                session.add(row)
        session.commit()
    signalled = 0
    if signal and changed:
        events = [
            Incoming(
                kind="track",
                message_id=f"{version}:{contact_id}",
                type=domain.VALUE_SCORED,
                occurred_at=as_of,
                contact_id=contact_id,
                properties=_properties(version, status, values[contact_id]),
                traits={
                    **values[contact_id],
                    "value_as_of": as_of.isoformat(),
                    "value_model": version,
                },
                source="value",
            )
            for contact_id in sorted(changed)
        ]
        (ingestor or Ingestor(db)).store([events])
        signalled = len(events)
    _log.info(
        "value.refreshed",
        version=version,
        status=status,
        customers=len(summaries),
        left_out=len(left),
        signalled=signalled,
    )
    return RunResult(run=run, scored=len(values), signalled=signalled, values=values)


def _properties(version: str, status: str, traits: Mapping[str, Any]) -> dict[str, Any]:
    """The ``value.scored`` event's properties, for journeys to enter on: the tier, the
    cross-sell product (only when there is one) and whether the customer's own
    repurchase interval has passed (``replenishment_due``)."""
    out: dict[str, Any] = {"model": version, "status": status, "value_tier": traits["value_tier"]}
    if traits.get("cross_sell"):
        out["cross_sell"] = traits["cross_sell"]
    if traits.get("churn_risk_level"):
        out["churn_risk_level"] = traits["churn_risk_level"]
    out["replenishment_due"] = bool(traits.get("replenishment_due"))
    return out


COARSE = {"p_alive": 2, "churn_risk": 2, "value_score": 2, "clv": 0, "expected_purchases": 1}
"""Decimals a value must move by to be worth a new ``value.scored`` event: each event is
a signal (a Temporal action), and p_alive drifts a little every day for everyone."""


def _comparable(traits: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in traits.items() if k not in ("value_as_of", "value_model", "value_sent")}
    for name, places in COARSE.items():
        if isinstance(out.get(name), float):
            out[name] = round(out[name], places)
    return out
