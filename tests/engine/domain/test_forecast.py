"""The pure pipeline forecast: a Monte Carlo run of the stages, checked on pipelines
whose answer is known."""

from __future__ import annotations

import pytest

from stagecoach.engine.domain.forecast import (
    ForecastError,
    ForecastInput,
    StageFlow,
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
    ],
)
def test_bad_inputs_are_named(build: object, message: str) -> None:
    with pytest.raises(ForecastError, match=message):
        build()  # type: ignore[operator]
