"""The pure pipeline forecast: a Monte Carlo run of the stages, checked on pipelines
whose answer is known."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stagecoach.engine.domain.forecast import (
    ForecastError,
    ForecastInput,
    StageFlow,
    repeat_rates,
    simulate,
)


def _certain(stays_hours: float, entered: int = 5000) -> StageFlow:
    # Everyone who entered converted, each after exactly ``stays_hours``.
    return StageFlow("lead", entered, entered, (stays_hours,) * 50)


def test_contacts_that_always_convert_arrive_in_the_week_their_stay_ends() -> None:
    inp = ForecastInput(
        flows=(_certain(stays_hours=24 * 9),),  # nine days in stage
        current_ages_hours={"lead": [1.0] * 100},
        arrivals_per_week=0,
        order_values=(100.0,),
        weeks=3,
    )
    result = simulate(inp, runs=200)
    week1, week2, week3 = result.weeks
    assert week1.customers_mean == 0
    assert week2.customers_mean == pytest.approx(100, abs=0.5)  # day 9 is in week 2
    assert week3.customers_mean == 0
    assert week2.revenue_mean == pytest.approx(100 * 100.0, rel=0.01)


def test_contacts_who_waited_longer_than_any_converter_are_not_expected() -> None:
    inp = ForecastInput(
        flows=(StageFlow("lead", 1000, 500, (24.0,) * 100),),
        current_ages_hours={"lead": [24.0 * 30] * 200},  # a month in, converters took a day
        arrivals_per_week=0,
    )
    assert sum(w.customers_mean for w in simulate(inp, runs=100).weeks) == 0


def test_new_contacts_flow_through_every_stage() -> None:
    flows = (
        StageFlow("suspect", 1000, 500, (12.0,) * 10),
        StageFlow("lead", 1000, 500, (12.0,) * 10),
    )
    inp = ForecastInput(flows=flows, current_ages_hours={}, arrivals_per_week=400, weeks=8)
    result = simulate(inp, runs=500)
    # 400 a week, half pass each of two stages within the week: about 100 a week.
    for week in result.weeks:
        assert week.customers_mean == pytest.approx(100, rel=0.1)
        assert week.customers_low < week.customers_mean < week.customers_high
    assert result.conversion["lead"] == pytest.approx(0.5, abs=0.01)


def test_the_interval_widens_with_fewer_observations() -> None:
    def width(entered: int) -> float:
        inp = ForecastInput(
            flows=(StageFlow("lead", entered, entered // 2, (10.0,) * 10),),
            current_ages_hours={"lead": [1.0] * 1000},
            arrivals_per_week=0,
            weeks=1,
        )
        [week] = simulate(inp, runs=1000).weeks
        return week.customers_high - week.customers_low

    assert width(20) > 2 * width(20000)


def test_repeat_rates_are_orders_over_the_customer_weeks_spent_at_each_age() -> None:
    # Three customers, 2.5, 4 and 10 weeks since their first orders; repeat orders at ages
    # 1.2, 1.7 and 3.5 weeks, and one at 9 weeks.
    rates = repeat_rates([2.5, 4.0, 10.0], [1.2, 1.7, 3.5, 9.0], ages=6)
    assert rates[0] == 0.0
    assert rates[1] == pytest.approx(2 / 3)  # all three lived through week 1
    assert rates[2] == pytest.approx(0 / 2.5)  # the first only half of it
    assert rates[3] == pytest.approx(1 / 2)
    assert rates[6] == pytest.approx(1 / 4)  # from 6 weeks on, pooled: the third's 4 weeks
    assert len(rates) == 7
    assert repeat_rates([], [1.0]) == ()
    # An age no one has reached yet takes the rate of the age before.
    assert repeat_rates([1.5], [0.5], ages=4) == (1.0, 0.0, 0.0, 0.0, 0.0)


def test_customers_at_the_origin_and_new_ones_order_again() -> None:
    flows = (StageFlow("lead", 1000, 1000, (0.0,) * 10),)  # converts at once
    steady = (0.1,) * 10  # one order in ten weeks, at every age
    # 1,000 customers already, no new ones: 100 repeat orders a week at 50.
    there = ForecastInput(
        flows=flows, current_ages_hours={}, arrivals_per_week=0, weeks=4,
        customer_ages_weeks=(5.0,) * 1000, repeat_rates=steady, repeat_orders=5000,
        repeat_values=(50.0,),
    )  # fmt: skip
    for week in simulate(there, runs=400).weeks:
        assert week.customers_mean == 0
        assert week.repeat_revenue_mean == pytest.approx(100 * 50, rel=0.03)
        assert week.revenue_mean == week.repeat_revenue_mean
    # No customer yet, 200 new a week (mid-week): week k has 200k + 100 customers ordering.
    new = replace(there, arrivals_per_week=200, customer_ages_weeks=(), order_values=(10.0,))
    for k, week in enumerate(simulate(new, runs=400).weeks):
        assert week.customers_mean == pytest.approx(200, rel=0.05)
        assert week.repeat_revenue_mean == pytest.approx((200 * k + 100) * 0.1 * 50, rel=0.1)
        first = week.revenue_mean - week.repeat_revenue_mean
        assert first == pytest.approx(week.customers_mean * 10.0, rel=0.01)
    # A rate that falls with age: customers of two weeks order, older ones no more.
    fading = replace(there, repeat_rates=(0.0, 0.0, 0.5, 0.0), customer_ages_weeks=(1.0,) * 100)
    weeks = [w.repeat_revenue_mean for w in simulate(fading, runs=400).weeks]
    assert weeks[0] == 0  # one week in
    assert weeks[1] == pytest.approx(100 * 0.5 * 50, rel=0.05)  # two weeks in
    assert weeks[2:] == [0.0, 0.0]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: StageFlow("lead", 10, 11), "converted .11. must lie between 0 and entered"),
        (lambda: StageFlow("lead", 10, 5, (-1.0,)), "stays must be hours >= 0"),
        (
            lambda: ForecastInput(flows=(), current_ages_hours={}, arrivals_per_week=1),
            "no open stage",
        ),
        (
            lambda: ForecastInput(
                flows=(StageFlow("lead", 1, 1),), current_ages_hours={}, arrivals_per_week=-1
            ),
            "arrivals_per_week",
        ),
        (
            lambda: ForecastInput(
                flows=(StageFlow("lead", 1, 1),),
                current_ages_hours={"fan": [1.0]},
                arrivals_per_week=1,
            ),
            "not open",
        ),
        (
            lambda: ForecastInput(
                flows=(StageFlow("lead", 1, 1),),
                current_ages_hours={},
                arrivals_per_week=1,
                weeks=0,
            ),
            "weeks must be 1 to 52",
        ),
        (
            lambda: ForecastInput(
                flows=(StageFlow("lead", 1, 1),),
                current_ages_hours={},
                arrivals_per_week=1,
                repeat_rates=(0.1, -0.1),
            ),
            "repeat_rates must be orders per customer-week >= 0",
        ),
        (
            lambda: ForecastInput(
                flows=(StageFlow("lead", 1, 1),),
                current_ages_hours={},
                arrivals_per_week=1,
                customer_ages_weeks=(3.0, float("nan")),
            ),
            "customer_ages_weeks must be weeks >= 0",
        ),
    ],
)
def test_bad_inputs_are_named(build: object, message: str) -> None:
    with pytest.raises(ForecastError, match=message):
        build()  # type: ignore[operator]
