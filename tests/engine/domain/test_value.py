"""Customer value, purely: orders valued or left out with their reason, refunds, RFM,
the ABC tier, repurchase intervals and co-purchase association."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stagecoach import Catalog, Product, Tier, ValueModel
from stagecoach.engine.domain.value import (
    Attitude,
    LeftOut,
    Order,
    ValueModelError,
    apply_refunds,
    associations,
    churn_risk,
    next_purchase_due,
    read_order,
    recommend,
    rfm,
    summarise,
    value_scores,
)

AT = datetime(2026, 6, 1, tzinfo=UTC)
MODEL = ValueModel(currency="CNY")
CATALOG = Catalog((Product("tea", "drinks"), Product("cup", "kitchen"), Product("pot", "kitchen")))


def _item(product: str = "tea", amount: float = 50, **extra: object) -> dict[str, object]:
    return {"product": product, "quantity": 1, "amount": amount, **extra}


def _read(properties: dict[str, object], catalog: Catalog | None = CATALOG) -> Order | LeftOut:
    return read_order("c1", AT, properties, model=MODEL, catalog=catalog, fallback_id="m1")


def test_an_order_with_items_is_valued_with_categories_from_the_catalog() -> None:
    order = _read({"order_id": "o1", "currency": "cny", "items": [_item(), _item("cup", 30)]})
    assert isinstance(order, Order)
    assert order.total == 80
    assert [i.category for i in order.items] == ["drinks", "kitchen"]


@pytest.mark.parametrize(
    ("properties", "flag"),
    [
        ({"amount": 9800}, "no_items"),
        ({"items": []}, "no_items"),
        ({"items": [_item("kettle")]}, "unknown_product"),
        ({"items": [_item(amount=-5)]}, "negative_amount"),
        ({"items": [{"product": "tea", "quantity": 0, "amount": 5}]}, "negative_amount"),
        ({"currency": "CNY", "items": [_item(currency="USD")]}, "mixed_currency"),
        ({"currency": "USD", "items": [_item()]}, "other_currency"),
        ({"items": "tea"}, "malformed"),
        ({"items": [{"product": "tea", "amount": "lots"}]}, "malformed"),
    ],
)
def test_each_kind_of_bad_order_is_left_out_with_its_reason(
    properties: dict[str, object], flag: str
) -> None:
    left = _read(properties)
    assert isinstance(left, LeftOut)
    assert (left.flag, left.order_id) == (flag, "m1")


def test_without_a_catalog_products_are_not_checked() -> None:
    order = _read({"items": [_item("kettle", category="kitchen")]}, catalog=None)
    assert isinstance(order, Order)
    assert order.items[0].category == "kitchen"


def test_refunds_reverse_value_and_a_full_refund_removes_the_purchase() -> None:
    a = Order("o1", "c1", AT, "CNY", (), 100.0)
    b = Order("o2", "c1", AT, "CNY", (), 60.0)
    kept, unknown = apply_refunds(
        [a, b],
        [("c1", "o1", {"amount": 30}), ("c1", "o2", {}), ("c1", "nope", {}), ("c2", "o1", {})],
    )
    assert [(o.order_id, o.total) for o in kept] == [("o1", 70.0)]
    assert [(u.order_id, u.contact_id, u.flag) for u in unknown] == [
        ("nope", "c1", "unknown_order"),
        ("o1", "c2", "unknown_order"),
    ]


def _orders(contact: str, *days_and_totals: tuple[int, float], items: str = "tea") -> list[Order]:
    from stagecoach.engine.domain.value import Item

    return [
        Order(f"{contact}-{d}", contact, AT + timedelta(days=d), "CNY",
              tuple(Item(p, "x", 1, t) for p in items.split(",")), t)
        for d, t in days_and_totals
    ]  # fmt: skip


def test_summaries_count_repeat_days_and_the_repurchase_interval() -> None:
    orders = _orders("c1", (0, 10), (0, 5), (10, 20), (30, 30))
    [s] = summarise(orders, AT + timedelta(days=40)).values()
    assert (s.orders, s.frequency, s.recency, s.age, s.spend) == (4, 2, 30, 40, 65)
    assert s.repeat_value == 25  # the mean of the two repeat days
    assert s.interval_days == 15
    assert next_purchase_due(s) == AT + timedelta(days=45)


def test_rfm_scores_the_recent_frequent_big_spender_highest() -> None:
    orders = [
        *_orders("best", (50, 500), (55, 500), (58, 500)),
        *_orders("mid", (30, 100), (40, 100)),
        *_orders("low", (0, 10)),
    ]
    scores = rfm(summarise(orders, AT + timedelta(days=60)), AT + timedelta(days=60))
    assert scores["best"].code == "555"
    assert scores["low"].code == "111"
    assert scores["best"].recency_days == 2


def test_the_abc_tier_weighs_attitude_behaviour_and_consumption() -> None:
    model = ValueModel(
        weights={"attitude": 1, "behaviour": 1, "consumption": 2},
        tiers=(Tier("A", 0.7), Tier("B", 0.4), Tier("C", 0)),
    )
    spend = {"big": 1000.0, "small": 10.0}
    scores = value_scores(
        model,
        spend,
        engagement={"big": 100.0, "small": 0.0},
        attitude={"big": Attitude(nps=1.0), "small": Attitude(nps=0.2, survey=0.4)},
    )
    assert scores["big"].tier == "A"
    assert scores["big"].score == pytest.approx((1 + 1 + 2 * 0.75) / 4, abs=1e-4)
    assert scores["small"].tier == "C"
    assert scores["small"].parts["attitude"] == pytest.approx(0.3)
    # Nothing said yet: weighed on behaviour and consumption only, not punished.
    quiet = value_scores(model, spend, engagement={"big": 100.0}, attitude={})
    assert quiet["big"].score == pytest.approx((1 + 2 * 0.75) / 3, abs=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"currency": "yuan"}, "ISO 4217"),
        ({"weights": {"loyalty": 1}}, "attitude, behaviour and consumption"),
        ({"weights": {"attitude": 0}}, "at least one above 0"),
        ({"tiers": (Tier("A", 0.2), Tier("B", 0.5), Tier("C", 0))}, "highest first"),
        ({"tiers": (Tier("A", 0.5), Tier("B", 0.1))}, "must start at 0"),
        ({"min_customers": 1}, "at least 2"),
        ({"churn_engagement_weight": 1}, r"churn_engagement_weight=1\) must be a number from 0"),
        ({"churn_engagement_weight": -0.1}, "from 0 to below 1"),
        ({"churn_engagement_weight": "high"}, "from 0 to below 1"),
        ({"churn_levels": (Tier("high", 0.4), Tier("low", 0.7), Tier("x", 0))}, "churn_levels"),
        ({"churn_levels": (Tier("high", 0.7), Tier("low", 0.2))}, r"churn_levels=.*start at 0"),
        ({"churn_levels": ()}, r"churn_levels=\.\.\.\) must list"),
    ],
)
def test_a_malformed_value_model_names_the_field_and_the_fix(
    kwargs: dict[str, object], words: str
) -> None:
    with pytest.raises(ValueModelError, match=words):
        ValueModel(**kwargs)  # type: ignore[arg-type]


def test_churn_risk_weighs_probability_alive_with_recent_engagement() -> None:
    model = ValueModel(engagement_full=100, churn_engagement_weight=0.3)
    silent = churn_risk(model, 0.2, None)
    assert silent == pytest.approx(1 - 0.7 * 0.2)
    # The same buyer who still reads and clicks is at less risk.
    listening = churn_risk(model, 0.2, 80.0)
    assert listening == pytest.approx(1 - (0.7 * 0.2 + 0.3 * 0.8))
    assert model.churn_level_of(silent or 0) == "high"
    assert model.churn_level_of(listening or 0) == "medium"
    assert churn_risk(model, 0.99, 500.0) == pytest.approx(1 - (0.7 * 0.99 + 0.3))  # capped
    assert churn_risk(model, 0.5, -40.0) == churn_risk(model, 0.5, 0.0)  # no below-zero bonus
    # No probability alive (no model: not enough data): no churn risk either.
    assert churn_risk(model, None, 80.0) is None
    # Weight 0: probability alive alone.
    assert churn_risk(ValueModel(churn_engagement_weight=0), 0.2, 80.0) == pytest.approx(0.8)


def test_a_catalog_refuses_duplicates_and_imports_from_rows() -> None:
    with pytest.raises(ValueModelError, match="twice"):
        Catalog((Product("tea", "drinks"), Product("tea", "drinks")))
    catalog = Catalog.from_rows([{"sku": "tea", "category": "drinks", "name": "Green tea"}])
    assert catalog.get("tea") == Product("tea", "drinks", "Green tea")
    with pytest.raises(ValueModelError, match="line 2"):
        Catalog.from_rows([{"sku": "tea", "category": ""}])


def test_co_purchase_association_gives_support_confidence_and_lift() -> None:
    baskets = {
        "a": frozenset({"tea", "cup"}),
        "b": frozenset({"tea", "cup"}),
        "c": frozenset({"tea"}),
        "d": frozenset({"pot"}),
    }
    pairs = associations(baskets, min_customers=2)
    tea_cup = next(p for p in pairs if (p.bought, p.recommend) == ("tea", "cup"))
    assert tea_cup.customers == 2
    assert tea_cup.support == 0.5
    assert tea_cup.confidence == pytest.approx(2 / 3, abs=1e-4)
    assert tea_cup.lift == pytest.approx((2 / 3) / (2 / 4), abs=1e-4)
    # Bought tea, not yet a cup: recommend the cup; never what they already have.
    assert recommend(frozenset({"tea"}), pairs) == ["cup"]
    assert recommend(frozenset({"tea", "cup"}), pairs) == []
    assert associations(baskets, min_customers=3) == []


def test_a_segment_may_read_the_value_traits_in_a_project_that_declares_its_traits() -> None:
    """The value refresh sets ``value_tier``, ``p_alive``... on contacts: engine traits,
    which a project that declares its own traits does not list."""
    from stagecoach import Definitions, Segment, trait
    from stagecoach.workflows.definitions import SEVEN_STAGE

    defs = Definitions(
        pipeline=SEVEN_STAGE.pipeline,
        events=SEVEN_STAGE.events,
        segments=(
            Segment("tier-a", when=trait("value_tier", "eq", "A")),
            Segment("fading", when=trait("p_alive", "lt", 0.3)),
            Segment("churning", when=trait("churn_risk_level", "eq", "high")),
            Segment("typo", when=trait("value_teir", "eq", "A")),
        ),
        traits=["industry"],
    )
    found = "\n".join(str(p) for p in defs.problems())
    assert "tier-a:" not in found
    assert "fading:" not in found
    assert "churning:" not in found
    assert "typo: trait 'value_teir' is not declared" in found
