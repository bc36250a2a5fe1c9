"""Customer value (pure): orders and refunds read from events, RFM, the ABC value tier,
repurchase intervals and co-purchase association for cross-sell.

The delight phase (悦旧) is where most of a customer's value lies: repurchase, cross-sell,
noticing decline. This module decides, from a contact's stored ``order.paid`` and
``order.refunded`` events, what each order is worth, and from everyone's orders how each
contact ranks. Fitting the buy-till-you-die models (BG/NBD, Gamma-Gamma) is the service's
job (``stagecoach.engine.services.value``); it reads the summaries made here.

Orders (``order.paid``): ``order_id``, ``currency`` and ``items``, each item a mapping of
``product``, ``category``, ``quantity`` and ``amount`` (the line total, in the order's
currency). An order that cannot be valued is kept (it is a stored event like any other)
but left out of every model, with the reason (:data:`FLAGS`): no items, an unknown
product (when the project declares a catalog), a negative amount or quantity, items in
another currency than the order, or an order in another currency than the project's value
model (we convert nothing: no exchange rate is right for every project). A refund
(``order.refunded``: ``order_id``, and ``amount`` for a partial refund) takes its amount
off the order; a fully refunded order no longer counts as a purchase.

Errors: :class:`ValueModelError` (a malformed declaration; the message names the field
and the fix).
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import combinations, pairwise
from typing import Any, Literal

ORDER_PAID = "order.paid"
ORDER_REFUNDED = "order.refunded"
VALUE_SCORED = "value.scored"
"""The event that carries a contact's computed value traits to its workflow."""

Flag = Literal[
    "no_items",
    "unknown_product",
    "negative_amount",
    "mixed_currency",
    "other_currency",
    "malformed",
]
FLAGS: Mapping[str, str] = {
    "no_items": "the order lists no items",
    "unknown_product": "an item names a product the catalog does not have",
    "negative_amount": "an item has a negative amount or a quantity below 1",
    "mixed_currency": "an item is in another currency than its order",
    "other_currency": "the order is in another currency than the value model's",
    "malformed": "items is not a list of mappings, or an amount is not a number",
}
"""Why an order is left out of the models, by flag."""

TRAITS = (
    "value_tier",
    "value_score",
    "rfm",
    "frequency",
    "monetary",
    "clv",
    "p_alive",
    "churn_risk",
    "churn_risk_level",
    "expected_purchases",
    "repurchase_interval_days",
    "next_purchase_due",
    "replenishment_due",
    "products_bought",
    "last_product",
    "cross_sell",
    "cross_sell_name",
    "cross_sell_products",
    "value_as_of",
    "value_model",
)
"""The computed traits a value refresh sets on each contact it scores."""


class ValueModelError(ValueError):
    """A catalog or value model is malformed; the message names the field and the fix."""


# --- declarations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Product:
    """A product of the catalog: its id (``sku``), the category cross-sell groups by."""

    sku: str
    category: str
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.sku, str) or not self.sku.strip():
            raise ValueModelError("Product(sku=...) is empty: give the product id orders use")
        if not isinstance(self.category, str) or not self.category.strip():
            raise ValueModelError(
                f"Product({self.sku!r}) has no category: pass category='...' (cross-sell and"
                " reports group by it)"
            )


@dataclass(frozen=True)
class Catalog:
    """The products orders may name. Declared in the project, or read from CSV
    (:meth:`from_rows`: columns ``sku``, ``category``, ``name``)."""

    products: tuple[Product, ...] = ()

    def __post_init__(self) -> None:
        products = tuple(self.products)
        seen: set[str] = set()
        for p in products:
            if not isinstance(p, Product):
                raise ValueModelError(
                    f"Catalog(products=...) holds {type(p).__name__}: list Product(...) objects"
                )
            if p.sku in seen:
                raise ValueModelError(f"the catalog lists product {p.sku!r} twice: keep one")
            seen.add(p.sku)
        object.__setattr__(self, "products", products)

    def get(self, sku: str) -> Product | None:
        for p in self.products:
            if p.sku == sku:
                return p
        return None

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, str]]) -> Catalog:
        """A catalog from CSV rows (``csv.DictReader``); a row without ``sku`` or
        ``category`` raises, naming its line."""
        products = []
        for line, row in enumerate(rows, start=2):
            sku, category = (row.get("sku") or "").strip(), (row.get("category") or "").strip()
            if not sku or not category:
                raise ValueModelError(
                    f"catalog line {line}: sku and category are required (got {dict(row)!r})"
                )
            products.append(Product(sku, category, (row.get("name") or "").strip()))
        return cls(tuple(products))


@dataclass(frozen=True)
class Tier:
    """A value tier: contacts whose value score is at least ``min_score`` (0 to 1)."""

    name: str
    min_score: float


@dataclass(frozen=True)
class ValueModel:
    """How a project values its customers: declared in ``Definitions(value=...)``.

    Attributes:
        currency: The currency every valued order must be in (ISO 4217).
        weights: The ABC tier's weights for ``attitude`` (NPS and survey answers),
            ``behaviour`` (the pipeline's engagement score) and ``consumption`` (spend).
            They need not add up to 1; a contact missing a part (no NPS answer yet) is
            weighed on the parts it has.
        tiers: Highest first; a contact gets the first tier whose ``min_score`` its value
            score reaches. The last tier's ``min_score`` must be 0.
        engagement_full: The engagement score that counts as full behaviour (1.0).
        horizon: The period lifetime value (CLV) is predicted over.
        annual_discount: The yearly discount rate applied to future spend.
        min_customers: Customers with a repeat purchase the BG/NBD and Gamma-Gamma fits
            need; with fewer, no CLV, probability alive or churn risk is computed ("not enough
            data").
        min_pair_customers: Cross-sell pairs bought together by fewer customers are
            left out (noise).
        min_lift: Cross-sell pairs with a lower lift are not recommended.
        churn_engagement_weight: How much recent engagement counts in churn risk, from 0
            (probability alive alone) to below 1; the rest is probability alive's.
        churn_levels: Highest first, like ``tiers``: a customer's ``churn_risk_level`` is
            the first level whose ``min_score`` its churn risk reaches.
    """

    currency: str = "CNY"
    weights: Mapping[str, float] = field(
        default_factory=lambda: {"attitude": 0.3, "behaviour": 0.3, "consumption": 0.4}
    )
    tiers: tuple[Tier, ...] = (Tier("A", 0.7), Tier("B", 0.4), Tier("C", 0.0))
    engagement_full: float = 100.0
    horizon: timedelta = timedelta(days=365)
    annual_discount: float = 0.10
    min_customers: int = 20
    min_pair_customers: int = 2
    min_lift: float = 1.0
    churn_engagement_weight: float = 0.3
    churn_levels: tuple[Tier, ...] = (Tier("high", 0.7), Tier("medium", 0.4), Tier("low", 0.0))

    def __post_init__(self) -> None:
        if not isinstance(self.currency, str) or len(self.currency) != 3:
            raise ValueModelError(
                f"ValueModel(currency={self.currency!r}): use an ISO 4217 code such as 'CNY'"
            )
        object.__setattr__(self, "currency", self.currency.upper())
        weights = dict(self.weights)
        unknown = set(weights) - {"attitude", "behaviour", "consumption"}
        if unknown:
            raise ValueModelError(
                f"ValueModel(weights=...) has {sorted(unknown)}: use attitude, behaviour and"
                " consumption"
            )
        if any(not isinstance(w, int | float) or w < 0 for w in weights.values()) or not any(
            weights.values()
        ):
            raise ValueModelError(
                "ValueModel(weights=...) must be non-negative numbers, at least one above 0"
            )
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "tiers", _levels("tiers", self.tiers, 'Tier("A", 0.7)'))
        object.__setattr__(
            self, "churn_levels", _levels("churn_levels", self.churn_levels, 'Tier("high", 0.7)')
        )
        weight = self.churn_engagement_weight
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < 1:
            raise ValueModelError(
                f"ValueModel(churn_engagement_weight={weight!r}) must be a number from 0 to"
                " below 1 (0: probability alive alone)"
            )
        if self.engagement_full <= 0:
            raise ValueModelError("ValueModel(engagement_full=...) must be above 0")
        if self.horizon <= timedelta(0):
            raise ValueModelError("ValueModel(horizon=...) must be a positive timedelta")
        if not 0 <= self.annual_discount < 1:
            raise ValueModelError("ValueModel(annual_discount=...) must be from 0 to below 1")
        if self.min_customers < 2:
            raise ValueModelError("ValueModel(min_customers=...) must be at least 2")

    def tier_of(self, score: float) -> str:
        return _level_of(self.tiers, score)

    def churn_level_of(self, risk: float) -> str:
        return _level_of(self.churn_levels, risk)


def _levels(name: str, given: Sequence[Tier], example: str) -> tuple[Tier, ...]:
    levels = tuple(given)
    if not levels or any(not isinstance(t, Tier) for t in levels):
        raise ValueModelError(f"ValueModel({name}=...) must list {example}-style levels")
    scores = [t.min_score for t in levels]
    if scores != sorted(scores, reverse=True) or len(set(scores)) != len(scores):
        raise ValueModelError(
            f"ValueModel({name}=...) thresholds {scores} must fall strictly, highest first"
        )
    if scores[-1] != 0:
        raise ValueModelError(
            f"ValueModel({name}=...): the last one ({levels[-1].name!r}) must start at 0,"
            " so every customer gets one"
        )
    return levels


def _level_of(levels: Sequence[Tier], score: float) -> str:
    for level in levels:
        if score >= level.min_score:
            return level.name
    return levels[-1].name


# --- orders ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    product: str
    category: str
    quantity: int
    amount: float


@dataclass(frozen=True)
class Order:
    """A valued order: ``total`` is what it is worth after refunds."""

    order_id: str
    contact_id: str
    at: datetime
    currency: str
    items: tuple[Item, ...]
    total: float


@dataclass(frozen=True)
class LeftOut:
    """An order event no model uses, and why."""

    order_id: str
    contact_id: str
    flag: str
    detail: str


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def read_order(
    contact_id: str,
    at: datetime,
    properties: Mapping[str, Any],
    *,
    model: ValueModel,
    catalog: Catalog | None,
    fallback_id: str = "",
) -> Order | LeftOut:
    """Value one ``order.paid`` event, or say why it cannot be valued.

    ``catalog`` None checks no product names (an item's own ``category`` is used); with a
    catalog, each item's product must be in it and its category comes from it.
    """
    order_id = str(properties.get("order_id") or fallback_id)

    def left(flag: Flag, detail: str) -> LeftOut:
        return LeftOut(order_id, contact_id, flag, detail)

    currency = str(properties.get("currency") or model.currency).upper()
    raw = properties.get("items")
    if raw is None or raw == []:
        return left("no_items", "no items")
    if not isinstance(raw, list) or not all(isinstance(i, Mapping) for i in raw):
        return left("malformed", "items must be a list of {product, quantity, amount}")
    items: list[Item] = []
    for n, entry in enumerate(raw):
        product = str(entry.get("product") or "").strip()
        amount = _number(entry.get("amount"))
        quantity = _number(entry.get("quantity", 1))
        if not product or amount is None or quantity is None:
            return left("malformed", f"items[{n}] needs product and numeric amount, quantity")
        if amount < 0 or quantity < 1:
            return left("negative_amount", f"items[{n}] amount {amount:g}, quantity {quantity:g}")
        item_currency = entry.get("currency")
        if item_currency is not None and str(item_currency).upper() != currency:
            return left("mixed_currency", f"items[{n}] in {item_currency}, order in {currency}")
        category = str(entry.get("category") or "").strip()
        if catalog is not None:
            known = catalog.get(product)
            if known is None:
                return left("unknown_product", f"items[{n}] product {product!r}")
            category = known.category
        items.append(Item(product, category or "(none)", int(quantity), amount))
    if currency != model.currency:
        return left("other_currency", f"{currency}, model in {model.currency}")
    return Order(order_id, contact_id, at, currency, tuple(items), sum(i.amount for i in items))


def apply_refunds(
    orders: Sequence[Order], refunds: Iterable[tuple[str, str, Mapping[str, Any]]]
) -> tuple[list[Order], list[LeftOut]]:
    """Take each refund ``(contact_id, order_id, properties)`` off its order: ``amount``
    for a partial refund, the whole order without one. Refunded-to-nothing orders drop
    out; a refund naming no known order of that contact is returned as left out."""
    by_key = {(o.contact_id, o.order_id): o for o in orders}
    refunded: dict[tuple[str, str], float] = defaultdict(float)
    unknown: list[LeftOut] = []
    for contact_id, order_id, properties in refunds:
        order = by_key.get((contact_id, order_id))
        if order is None:
            unknown.append(
                LeftOut(order_id, contact_id, "unknown_order", "refund of an unknown order")
            )
            continue
        amount = _number(properties.get("amount"))
        refunded[contact_id, order_id] += order.total if amount is None else max(amount, 0.0)
    kept: list[Order] = []
    for o in orders:
        net = o.total - refunded.get((o.contact_id, o.order_id), 0.0)
        if net > 1e-9:
            kept.append(o if net == o.total else _with_total(o, net))
    return kept, unknown


def _with_total(order: Order, total: float) -> Order:
    return Order(order.order_id, order.contact_id, order.at, order.currency, order.items, total)


# --- per-contact summaries ---------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """One customer's purchases, as RFM and the BG/NBD models read them.

    ``frequency`` counts repeat purchase days (purchases on one day are one transaction,
    as in Fader, Hardie and Lee's CDNOW data); ``recency`` and ``age`` are in days from
    the first purchase to the last, and to ``as_of``; ``repeat_value`` is the mean value
    of the repeat transactions (Gamma-Gamma's input).
    """

    contact_id: str
    orders: int
    frequency: int
    recency: float
    age: float
    spend: float
    repeat_value: float
    first: datetime
    last: datetime
    interval_days: float | None
    products: frozenset[str]
    last_product: str = ""


def summarise(orders: Iterable[Order], as_of: datetime) -> dict[str, Summary]:
    """Each contact's summary from their valued orders placed before ``as_of``."""
    by_contact: dict[str, list[Order]] = defaultdict(list)
    for o in orders:
        if o.at <= as_of:
            by_contact[o.contact_id].append(o)
    out: dict[str, Summary] = {}
    for contact_id, mine in by_contact.items():
        mine.sort(key=lambda o: o.at)
        days: dict[Any, float] = defaultdict(float)
        for o in mine:
            days[o.at.date()] += o.total
        day_list = sorted(days)
        first, last = mine[0].at, mine[-1].at
        repeat = [days[d] for d in day_list[1:]]
        gaps = [(b - a).days for a, b in pairwise(day_list)]
        out[contact_id] = Summary(
            contact_id=contact_id,
            orders=len(mine),
            frequency=len(day_list) - 1,
            recency=(day_list[-1] - day_list[0]).days,
            age=(as_of - first).total_seconds() / 86400,
            spend=sum(o.total for o in mine),
            repeat_value=sum(repeat) / len(repeat) if repeat else 0.0,
            first=first,
            last=last,
            interval_days=float(statistics.median(gaps)) if gaps else None,
            products=frozenset(i.product for o in mine for i in o.items),
            last_product=mine[-1].items[0].product if mine[-1].items else "",
        )
    return out


def _percentiles(values: Mapping[str, float]) -> dict[str, float]:
    """Each key's mid-rank percentile in 0..1 (ties share a rank)."""
    ordered = sorted(values.values())
    n = len(ordered)
    out: dict[str, float] = {}
    for key, v in values.items():
        below = bisect_left(ordered, v)
        equal = bisect_right(ordered, v) - below
        out[key] = (below + equal / 2) / n
    return out


def _quintile(p: float) -> int:
    return min(5, 1 + int(p * 5))


@dataclass(frozen=True)
class Rfm:
    recency_days: float
    frequency: int
    monetary: float
    r: int
    f: int
    m: int

    @property
    def code(self) -> str:
        return f"{self.r}{self.f}{self.m}"


def rfm(summaries: Mapping[str, Summary], as_of: datetime) -> dict[str, Rfm]:
    """RFM per customer: recency in days since the last purchase, number of orders, net
    spend; each scored 1 to 5 by quintile among this population (5 best: most recent,
    most frequent, highest spend)."""
    if not summaries:
        return {}
    recency = {k: (as_of - s.last).total_seconds() / 86400 for k, s in summaries.items()}
    r = _percentiles({k: -v for k, v in recency.items()})
    f = _percentiles({k: float(s.orders) for k, s in summaries.items()})
    m = _percentiles({k: s.spend for k, s in summaries.items()})
    return {
        k: Rfm(
            round(recency[k], 1),
            s.orders,
            round(s.spend, 2),
            _quintile(r[k]),
            _quintile(f[k]),
            _quintile(m[k]),
        )
        for k, s in summaries.items()
    }


# --- the ABC value tier ------------------------------------------------------------------


@dataclass(frozen=True)
class Attitude:
    """What a contact said: the latest NPS answer (0-10) and survey answer (score of
    ``max``), either possibly missing."""

    nps: float | None = None
    survey: float | None = None

    def score(self) -> float | None:
        parts = [p for p in (self.nps, self.survey) if p is not None]
        return sum(parts) / len(parts) if parts else None


def survey_score(properties: Mapping[str, Any]) -> float | None:
    """A ``survey.answered`` event's answer on 0..1: ``score`` out of ``max`` (default
    5, a five-point scale); None when either is missing or out of range."""
    score, top = _number(properties.get("score")), _number(properties.get("max", 5))
    if score is None or top is None or top <= 0 or not 0 <= score <= top:
        return None
    return score / top


def nps_score(properties: Mapping[str, Any]) -> float | None:
    score = _number(properties.get("score"))
    return None if score is None or not 0 <= score <= 10 else score / 10


@dataclass(frozen=True)
class ValueScore:
    score: float
    tier: str
    parts: Mapping[str, float]
    """The parts the score was weighed on, each 0..1 (a missing part is absent)."""


def value_scores(
    model: ValueModel,
    spend: Mapping[str, float],
    engagement: Mapping[str, float],
    attitude: Mapping[str, Attitude],
) -> dict[str, ValueScore]:
    """The ABC tier of every customer in ``spend``: attitude, behaviour and consumption,
    each on 0..1, weighed by the model. Consumption is the contact's spend percentile
    among customers; behaviour its engagement score over ``engagement_full`` (capped at
    1); attitude its mean of NPS/10 and survey score. Missing parts are left out and the
    weights of the rest renormalised, so an unsurveyed customer is not punished for it."""
    consumption = _percentiles(dict(spend)) if spend else {}
    out: dict[str, ValueScore] = {}
    for contact_id in spend:
        parts: dict[str, float] = {"consumption": consumption[contact_id]}
        if contact_id in engagement:
            parts["behaviour"] = min(max(engagement[contact_id], 0.0) / model.engagement_full, 1)
        said = attitude.get(contact_id)
        if said is not None and said.score() is not None:
            parts["attitude"] = float(said.score() or 0.0)
        weighed = {k: model.weights.get(k, 0.0) for k in parts}
        total = sum(weighed.values())
        score = sum(parts[k] * w for k, w in weighed.items()) / total if total else 0.0
        out[contact_id] = ValueScore(round(score, 4), model.tier_of(score), parts)
    return out


# --- churn risk ---------------------------------------------------------------------------


def churn_risk(model: ValueModel, p_alive: float | None, engagement: float | None) -> float | None:
    """How likely the customer is to be lost, 0 to 1: one minus a weighed mean of
    probability alive (BG/NBD: are they still buying?) and recent engagement (the
    pipeline's decaying engagement score over ``engagement_full``: are they still
    listening?), weighed ``1 - churn_engagement_weight`` and ``churn_engagement_weight``.

    A customer the model gives up on but who still reads every email is at less risk
    than one who has gone silent too. None without a probability alive (no model was
    fitted: not enough data), because engagement alone says nothing about buying."""
    if p_alive is None:
        return None
    engaged = min(max(engagement or 0.0, 0.0) / model.engagement_full, 1.0)
    weight = model.churn_engagement_weight
    return min(max(1.0 - ((1.0 - weight) * p_alive + weight * engaged), 0.0), 1.0)


# --- repurchase --------------------------------------------------------------------------


def next_purchase_due(summary: Summary) -> datetime | None:
    """When a repeat buyer is due to buy again: the last purchase plus their own median
    interval between purchase days. None for one-time buyers (no interval yet)."""
    if summary.interval_days is None:
        return None
    return summary.last + timedelta(days=summary.interval_days)


# --- cross-sell: item-to-item association ------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """``bought`` -> ``recommend``: support (share of customers with both), confidence
    (share of ``bought``'s buyers who also bought ``recommend``) and lift (confidence over
    ``recommend``'s own share: above 1, buying one makes the other likelier)."""

    bought: str
    recommend: str
    customers: int
    support: float
    confidence: float
    lift: float


def associations(baskets: Mapping[str, frozenset[str]], *, min_customers: int = 2) -> list[Pair]:
    """Item-to-item association over each customer's set of products bought: both
    directions of every pair bought together by at least ``min_customers`` customers,
    strongest lift first (then support, then names)."""
    n = len(baskets)
    if n == 0:
        return []
    single: Counter[str] = Counter()
    both: Counter[tuple[str, str]] = Counter()
    for products in baskets.values():
        single.update(products)
        both.update(combinations(sorted(products), 2))
    pairs: list[Pair] = []
    for (x, y), count in both.items():
        if count < min_customers:
            continue
        for a, b in ((x, y), (y, x)):
            confidence = count / single[a]
            lift = confidence / (single[b] / n)
            pairs.append(Pair(a, b, count, count / n, round(confidence, 4), round(lift, 4)))
    pairs.sort(key=lambda p: (-p.lift, -p.support, p.bought, p.recommend))
    return pairs


def recommend(
    bought: frozenset[str], pairs: Sequence[Pair], *, min_lift: float = 1.0, top: int = 3
) -> list[str]:
    """Products to cross-sell to a customer who bought ``bought``: "bought X, not yet Y",
    by the strongest lift from any X they bought, Y never bought, lift above ``min_lift``."""
    best: dict[str, float] = {}
    for p in pairs:
        if p.bought in bought and p.recommend not in bought and p.lift > min_lift:
            best[p.recommend] = max(best.get(p.recommend, 0.0), p.lift)
    return sorted(best, key=lambda y: (-best[y], y))[:top]
