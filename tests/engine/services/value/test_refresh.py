"""A value refresh over stored orders: tiers, RFM, CLV and probability alive for every
customer, bad orders counted by reason (never a crash), too little history refused
plainly, refunds taken off, and the value traits sent to the contacts as an event."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from stagecoach import Catalog, Product, ValueModel
from stagecoach.engine.services.ingest import Incoming, Ingestor
from stagecoach.engine.services.storage.models import Event, Outbox
from stagecoach.engine.services.value import (
    contact_value,
    cross_sell_report,
    refresh_values,
    value_report,
)
from stagecoach.examples.lifecycle.lifecycle.definitions import defs

NOW = datetime(2026, 12, 1, tzinfo=UTC)
CATALOG = Catalog(
    (Product("tea", "drinks", "Green tea"), Product("cup", "kitchen", "Tea cup"),
     Product("pot", "kitchen", "Teapot"))
)  # fmt: skip
DEFS = replace(defs, value=ValueModel(min_customers=10), catalog=CATALOG)


def order(contact: str, at: datetime, *items: tuple[str, float], **props: Any) -> Incoming:
    n = f"{contact}-{at.timestamp():.0f}-{len(items)}"
    return Incoming(
        kind="track",
        message_id=f"order-{n}",
        type="order.paid",
        occurred_at=at,
        identities={"email": f"{contact}@example.cn"},
        properties={
            "order_id": n,
            "currency": "CNY",
            "items": [{"product": p, "quantity": 1, "amount": a} for p, a in items],
            **props,
        },
    )


def history(customers: int, seed: int = 7) -> list[Incoming]:
    """Customers buying tea every few weeks for a while, most of them with a cup too."""
    rng = random.Random(seed)
    out: list[Incoming] = []
    for i in range(customers):
        at = NOW - timedelta(days=rng.randint(200, 360))
        lifetime = at + timedelta(days=rng.randint(0, 300))
        first = True
        while first or at < min(lifetime, NOW):
            basket = [("tea", float(rng.randint(40, 120)))]
            if first and i % 3:
                basket.append(("cup", 30.0))
            out.append(order(f"c{i}", at, *basket))
            at += timedelta(days=rng.randint(10, 60))
            first = False
    return out


def test_orders_give_every_customer_a_tier_rfm_clv_and_probability_alive(
    db_engine: Engine,
) -> None:
    Ingestor(db_engine).store([history(40)])
    bad = [
        order("odd", NOW - timedelta(days=5)),  # no items
        order("odd", NOW - timedelta(days=4), ("kettle", 10)),
        order("odd", NOW - timedelta(days=3), ("tea", -10)),
        order("odd", NOW - timedelta(days=2), ("tea", 10), currency="USD"),
    ]
    Ingestor(db_engine).store([bad])
    result = refresh_values(db_engine, DEFS, as_of=NOW)

    assert result.run.status == "fitted"
    assert set(result.run.params) >= {"r", "alpha", "a", "b", "p", "q", "v"}
    assert result.run.summary["left_out"] == {
        "negative_amount": 1,
        "no_items": 1,
        "other_currency": 1,
        "unknown_product": 1,
    }
    assert "odd" not in {c.split("@")[0] for c in result.values}
    value = next(iter(result.values.values()))
    assert value["value_tier"] in ("A", "B", "C")
    assert value["clv"] is not None
    assert value["clv"] >= 0
    assert 0 <= value["p_alive"] <= 1
    assert len(value["rfm"]) == 3

    # Every scored customer's workflow hears its value traits, once.
    with Session(db_engine) as session:
        scored = session.exec(select(Event).where(col(Event.name) == "value.scored")).all()
        assert len(scored) == result.scored == 40
        assert scored[0].context["traits"]["value_model"] == result.version
        assert session.exec(select(Outbox)).all()  # traits always reach the workflow
    again = refresh_values(db_engine, DEFS, as_of=NOW)
    assert again.signalled == 0  # nothing changed: no second event

    some = scored[0].contact_id
    shown = contact_value(db_engine, some)
    assert shown is not None
    assert shown["value_as_of"] == NOW.isoformat()

    report = value_report(db_engine)
    tiers = {row[0]: row[1] for row in report.sections[0].rows}
    assert sum(tiers.values()) == 40
    assert any("4 order event(s) left out" in n for n in report.notes)
    pairs = cross_sell_report(db_engine).sections[0].records()
    assert {(p["bought"], p["recommend"]) for p in pairs} == {("tea", "cup"), ("cup", "tea")}


def _engaged(contact: str, at: datetime) -> list[Incoming]:
    """A demo request, a webinar and a download: 65 points of the lifecycle's scoring."""
    return [
        Incoming(
            kind="track",
            message_id=f"{name}-{contact}",
            type=name,
            occurred_at=at,
            identities={"email": f"{contact}@example.cn"},
        )
        for name in ("demo.requested", "webinar.attended", "content.downloaded")
    ]


def test_churn_risk_comes_from_probability_alive_and_recent_engagement(
    db_engine: Engine,
) -> None:
    # Two customers with the same orders (so the same probability alive); one of them
    # still engages.
    twins = [
        order(who, NOW - timedelta(days=days), ("tea", 60))
        for who in ("silent", "listening")
        for days in (300, 280, 260, 240)
    ]
    Ingestor(db_engine).store([history(30), twins, _engaged("listening", NOW - timedelta(days=1))])
    result = refresh_values(db_engine, DEFS, as_of=NOW)
    assert result.run.status == "fitted"
    emails = _emails(db_engine)
    by_email = {emails[c]: v for c, v in result.values.items()}
    silent, listening = by_email["silent@example.cn"], by_email["listening@example.cn"]
    assert silent["p_alive"] == listening["p_alive"] < 0.5
    # Nothing scored but orders: churn risk is probability alive's complement, weighed.
    assert silent["churn_risk"] == pytest.approx(1 - 0.7 * silent["p_alive"], abs=2e-3)
    assert silent["churn_risk_level"] == "high"
    assert listening["churn_risk"] < silent["churn_risk"] - 0.1
    for value in result.values.values():
        level = DEFS.value.churn_level_of(value["churn_risk"])  # type: ignore[union-attr]
        assert value["churn_risk_level"] == level
    # The report counts the customers by level; the event carries the level for journeys.
    churn = {row[0]: row[1] for row in value_report(db_engine).section("churn").rows}
    assert set(churn) == {"high", "medium", "low", "unscored"}
    assert sum(churn.values()) == result.scored == 32
    assert churn["unscored"] == 0
    with Session(db_engine) as session:
        levels = {
            e.properties.get("churn_risk_level")
            for e in session.exec(select(Event).where(col(Event.name) == "value.scored"))
        }
    assert "high" in levels
    # Engagement weighed at 0: probability alive alone, the twins alike.
    alone = refresh_values(
        db_engine, replace(DEFS, value=ValueModel(min_customers=10, churn_engagement_weight=0)),
        as_of=NOW, signal=False,
    )  # fmt: skip
    twins_alone = {emails[c]: v["churn_risk"] for c, v in alone.values.items()}
    assert twins_alone["silent@example.cn"] == twins_alone["listening@example.cn"]


def _emails(db: Engine) -> dict[str, str]:
    """Contact id to email address."""
    from stagecoach.engine.services.storage.models import Identity

    with Session(db) as session:
        rows = session.exec(select(Identity).where(col(Identity.kind) == "email")).all()
    return {i.contact_id: i.value for i in rows}


def test_too_little_history_builds_no_model_and_says_how_much_is_needed(
    db_engine: Engine,
) -> None:
    Ingestor(db_engine).store([history(3)])
    result = refresh_values(db_engine, DEFS, as_of=NOW)
    assert result.run.status == "not_enough_data"
    [note] = result.run.summary["notes"]
    assert note.startswith("not enough data: ")
    assert "need 10" in note
    value = next(iter(result.values.values()))
    assert value["clv"] is None
    assert value["p_alive"] is None
    assert value["churn_risk"] is None
    assert value["churn_risk_level"] is None
    assert result.run.summary["churn"]["unscored"] == 3
    assert value["value_tier"]  # the tier needs no model


def test_a_refund_reverses_the_orders_value(db_engine: Engine) -> None:
    paid = order("r1", NOW - timedelta(days=10), ("tea", 100), ("cup", 30))
    Ingestor(db_engine).store([[paid]])
    before = refresh_values(db_engine, DEFS, as_of=NOW - timedelta(days=1)).values
    [contact] = before
    assert before[contact]["monetary"] == 130
    refund = Incoming(
        kind="track",
        message_id="refund-1",
        type="order.refunded",
        occurred_at=NOW - timedelta(hours=2),
        contact_id=contact,
        properties={"order_id": paid.properties["order_id"], "amount": 30},
    )
    Ingestor(db_engine).store([[refund]])
    assert refresh_values(db_engine, DEFS, as_of=NOW).values[contact]["monetary"] == 100
