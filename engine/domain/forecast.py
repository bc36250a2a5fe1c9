"""The pipeline forecast: new customers and their revenue per week, with intervals.

A Monte Carlo simulation of the contacts in the pipeline now, and of those who will
enter it, moving stage by stage to the target (``customer``):

- each open stage has a conversion rate to the next stage (``StageFlow.entered`` and
  ``converted``, from contacts who entered it long enough ago to have had their chance)
  and the distribution of how long converters stayed (``stays_hours``);
- a contact already in a stage for ``a`` hours converts with probability
  ``p·S(a) / (p·S(a) + 1 - p)``, where ``S(a)`` is the share of converters' stays longer
  than ``a`` (it has not converted yet, which makes converting less likely the longer it
  waits), and then after a stay drawn from those longer than ``a``, less ``a``;
- contacts arriving in a stage during the forecast convert with probability ``p`` after
  a drawn stay;
- new contacts enter the first stage as a Poisson stream at the recent weekly rate;
- each simulated run draws ``p`` from its Beta posterior (uncertainty in the rates, not
  only in who converts), and each new customer's first order from the recent ones;
- customers order again: each customer's repeat orders in a week are Poisson at the
  measured repeat rate for their age (weeks since their first order), for the customers
  at the origin and the new ones the run makes; each repeat order's value is drawn from
  the recent repeat orders. Revenue is first and repeat orders.

Pure: numpy only, no I/O. ``stagecoach.engine.services.prediction.forecast`` reads the
inputs from the analytics store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

HOURS_PER_WEEK = 168.0
AGE_BUCKET_HOURS = 24.0
"""Contacts already in a stage are grouped by whole days in it (at their mean age)."""
INTERVAL = (0.1, 0.9)
"""The interval reported: 80%, from the 10th to the 90th percentile of the runs."""


class ForecastError(ValueError):
    """Inputs a forecast cannot be made from."""


@dataclass(frozen=True)
class StageFlow:
    """How an open stage lets contacts through, as measured on its matured entrants."""

    stage: str
    entered: int
    converted: int
    stays_hours: tuple[float, ...] = ()
    """Completed stays of the converters: hours from entering to the next stage."""

    def __post_init__(self) -> None:
        if self.entered < 0 or not 0 <= self.converted <= self.entered:
            raise ForecastError(
                f"stage {self.stage!r}: converted ({self.converted}) must lie between 0 and "
                f"entered ({self.entered})"
            )
        if any(not np.isfinite(h) or h < 0 for h in self.stays_hours):
            raise ForecastError(f"stage {self.stage!r}: stays must be hours >= 0")


@dataclass(frozen=True)
class ForecastInput:
    flows: tuple[StageFlow, ...]
    """The open stages, in pipeline order; the one after the last is the target."""
    current_ages_hours: Mapping[str, Sequence[float]]
    """Per open stage, how long each contact in it now has been there."""
    arrivals_per_week: float
    """New contacts entering the first open stage per week."""
    order_values: tuple[float, ...] = ()
    """Recent first orders: each new customer's revenue is drawn from them."""
    weeks: int = 8
    customer_ages_weeks: Sequence[float] = ()
    """Every customer at the origin (a contact with an order): weeks since their first."""
    repeat_rates: tuple[float, ...] = ()
    """Repeat orders per customer-week by weeks since the first order (index 0: the first
    week after it); the last applies to every older customer too. Empty: no repeats."""
    repeat_orders: int = 0
    """The repeat orders ``repeat_rates`` were measured on: how sure they are."""
    repeat_values: tuple[float, ...] = ()
    """Recent repeat orders' values: each simulated repeat order is drawn from them (from
    ``order_values`` when there are none)."""

    def __post_init__(self) -> None:
        if not self.flows:
            raise ForecastError("no open stage to forecast from")
        if self.repeat_orders < 0:
            raise ForecastError("repeat_orders must be a count >= 0")
        if any(not np.isfinite(r) or r < 0 for r in self.repeat_rates):
            raise ForecastError("repeat_rates must be orders per customer-week >= 0")
        if any(not np.isfinite(a) or a < 0 for a in self.customer_ages_weeks):
            raise ForecastError("customer_ages_weeks must be weeks >= 0")
        if self.weeks < 1 or self.weeks > 52:
            raise ForecastError(f"weeks must be 1 to 52, not {self.weeks}")
        if not np.isfinite(self.arrivals_per_week) or self.arrivals_per_week < 0:
            raise ForecastError("arrivals_per_week must be a number >= 0")
        known = {f.stage for f in self.flows}
        unknown = sorted(set(self.current_ages_hours) - known)
        if unknown:
            raise ForecastError(f"current contacts in stages that are not open: {unknown}")


@dataclass(frozen=True)
class WeekForecast:
    week: int
    customers_mean: float
    customers_low: float
    customers_median: float
    customers_high: float
    revenue_mean: float
    revenue_low: float
    revenue_high: float
    repeat_revenue_mean: float = 0.0
    """The part of ``revenue_mean`` from customers ordering again."""


@dataclass(frozen=True)
class Forecast:
    weeks: tuple[WeekForecast, ...]
    runs: int
    conversion: dict[str, float] = field(default_factory=dict)
    """Per open stage, the conversion rate used (the posterior mean)."""


def _survival(stays: np.ndarray, ages: np.ndarray) -> np.ndarray:
    """Share of ``stays`` longer than each age."""
    if len(stays) == 0:
        return np.zeros(len(ages))
    ordered = np.sort(stays)
    return 1.0 - np.searchsorted(ordered, ages, side="right") / len(ordered)


def _delay_bins(stays: np.ndarray, offset_hours: float, weeks: int) -> np.ndarray:
    """Probabilities of converting in week 0..weeks-1 after arrival (index ``weeks``:
    later), for stays drawn from ``stays`` starting ``offset_hours`` into a week."""
    bins = np.zeros(weeks + 1)
    if len(stays) == 0:
        bins[weeks] = 1.0
        return bins
    index = np.minimum(((offset_hours + stays) // HOURS_PER_WEEK).astype(int), weeks)
    np.add.at(bins, index, 1.0)
    return np.asarray(bins / bins.sum())


def simulate(inp: ForecastInput, *, runs: int = 2000, seed: int = 0) -> Forecast:
    """Run the pipeline forward ``runs`` times and summarise each week's outcomes."""
    if runs < 10:
        raise ForecastError("runs must be at least 10 for an interval")
    rng = np.random.default_rng(seed)
    weeks = inp.weeks
    # arrivals[k][run, week]: contacts entering open stage k (k == len: the target).
    arrivals = [np.zeros((runs, weeks + 1), dtype=np.int64) for _ in range(len(inp.flows) + 1)]
    arrivals[0][:, :weeks] = rng.poisson(inp.arrivals_per_week, size=(runs, weeks))
    rates: dict[str, float] = {}
    for k, flow in enumerate(inp.flows):
        stays = np.asarray(flow.stays_hours, dtype=np.float64)
        # Uniform prior: a stage never entered converts at an unknown rate, not at zero.
        p = rng.beta(flow.converted + 1, flow.entered - flow.converted + 1, size=runs)
        rates[flow.stage] = (flow.converted + 1) / (flow.entered + 2)
        nxt = arrivals[k + 1]
        # Contacts in the stage now, by whole days in it.
        ages = np.asarray(inp.current_ages_hours.get(flow.stage, ()), dtype=np.float64)
        if len(ages):
            days = np.floor(ages / AGE_BUCKET_HOURS)
            _, where, counts = np.unique(days, return_inverse=True, return_counts=True)
            mean_ages = np.bincount(where, weights=ages) / counts
            for age, count in zip(mean_ages, counts, strict=True):
                left = stays[stays > age] - age
                s = _survival(stays, np.array([age]))[0]
                q = p * s / (p * s + (1.0 - p))
                converting = rng.binomial(int(count), q)
                nxt += rng.multinomial(converting, _delay_bins(left, 0.0, weeks))
        # Contacts arriving during the forecast: mid-week on average.
        bins = _delay_bins(stays, HOURS_PER_WEEK / 2, weeks)
        for w in range(weeks):
            converting = rng.binomial(arrivals[k][:, w], p)
            moved = rng.multinomial(converting, bins)  # (runs, weeks + 1), relative weeks
            span = weeks - w
            nxt[:, w : w + span] += moved[:, :span]
    customers = arrivals[-1][:, :weeks]
    first = _revenue(rng, customers, np.asarray(inp.order_values, dtype=np.float64))
    repeat = _repeat_revenue(rng, inp, customers)
    revenue = first + repeat
    low, high = INTERVAL
    out = tuple(
        WeekForecast(
            week=w + 1,
            customers_mean=float(customers[:, w].mean()),
            customers_low=float(np.quantile(customers[:, w], low)),
            customers_median=float(np.quantile(customers[:, w], 0.5)),
            customers_high=float(np.quantile(customers[:, w], high)),
            revenue_mean=float(revenue[:, w].mean()),
            revenue_low=float(np.quantile(revenue[:, w], low)),
            revenue_high=float(np.quantile(revenue[:, w], high)),
            repeat_revenue_mean=float(repeat[:, w].mean()),
        )
        for w in range(weeks)
    )
    return Forecast(weeks=out, runs=runs, conversion=rates)


def _revenue(rng: np.random.Generator, customers: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each simulated customer's first order drawn from the recent ones, summed per week."""
    if len(values) == 0:
        return np.zeros(customers.shape)
    flat = customers.ravel()
    total = int(flat.sum())
    draws = rng.choice(values, size=total) if total else np.empty(0)
    ends = np.cumsum(flat)
    sums = np.zeros(len(flat))
    starts = ends - flat
    nonzero = flat > 0
    if total:
        cums = np.concatenate([[0.0], np.cumsum(draws)])
        sums[nonzero] = cums[ends[nonzero]] - cums[starts[nonzero]]
    return sums.reshape(customers.shape)


REPEAT_AGES = 104
"""Repeat rates are measured for each week of a customer's first two years; older
customers share one rate."""


def repeat_rates(
    customer_ages_weeks: Sequence[float],
    repeat_ages_weeks: Sequence[float],
    *,
    ages: int = REPEAT_AGES,
) -> tuple[float, ...]:
    """Repeat orders per customer-week at each age (whole weeks since the first order):
    the repeat orders placed at that age over the customer-weeks spent at it. Customers
    are seen only up to their age now, so a young store's old ages have little exposure;
    an age none has reached takes the rate of the age before. The last entry pools every
    age from ``ages`` on."""
    lived = np.asarray(customer_ages_weeks, dtype=np.float64)
    if len(lived) == 0:
        return ()
    placed = np.minimum(np.floor(np.asarray(repeat_ages_weeks, dtype=np.float64)), ages)
    counts = np.bincount(placed.astype(int), minlength=ages + 1)[: ages + 1]
    exposure = np.array(
        [np.clip(lived - a, 0.0, 1.0).sum() for a in range(ages)]
        + [np.maximum(lived - ages, 0.0).sum()]
    )
    rates: list[float] = []
    for count, weeks in zip(counts, exposure, strict=True):
        rates.append(float(count / weeks) if weeks > 0 else (rates[-1] if rates else 0.0))
    return tuple(rates)


def _repeat_revenue(
    rng: np.random.Generator, inp: ForecastInput, customers: np.ndarray
) -> np.ndarray:
    """Each run's revenue per week from customers ordering again (``customers``: the
    run's new customers per week).

    A customer's chance of ordering again in a week is the measured rate at their age
    (weeks since their first order): a replenishment cycle shows as a bump, customers
    drifting away as a fall. Each run scales every rate by one draw of the uncertainty
    in the measured level (a Gamma around 1 as sure as ``repeat_orders`` makes it)."""
    runs, weeks = customers.shape
    if not inp.repeat_rates:
        return np.zeros(customers.shape)
    oldest = len(inp.repeat_rates) - 1
    rates = np.asarray(inp.repeat_rates, dtype=np.float64)

    def rate(age: np.ndarray) -> np.ndarray:
        return np.asarray(rates[np.minimum(age, oldest)])

    # The customers there are: in week k, one of age a (weeks) is at age a + k mid-week.
    ages = np.floor(np.asarray(inp.customer_ages_weeks, dtype=np.float64) + 0.5).astype(int)
    by_age = np.bincount(ages) if len(ages) else np.zeros(1, dtype=np.int64)
    ahead = np.arange(weeks)
    present = np.array([float((by_age * rate(np.arange(len(by_age)) + k)).sum()) for k in ahead])
    # New customers of week j join mid-week: half a week at age 0 in week j, then mid-week
    # half-way between two ages.
    join = np.zeros((weeks, weeks))
    for j in range(weeks):
        join[j, j] = 0.5 * rates[0]
        later = ahead[j + 1 :] - j
        join[j, j + 1 :] = 0.5 * (rate(later - 1) + rate(later))
    level = np.asarray(rng.gamma(inp.repeat_orders + 1, 1.0 / (inp.repeat_orders + 1), size=runs))
    expected = level[:, None] * (present[None, :] + customers @ join)
    orders = np.asarray(rng.poisson(expected), dtype=np.int64)
    values = inp.repeat_values or inp.order_values
    return _revenue(rng, orders, np.asarray(values, dtype=np.float64))
