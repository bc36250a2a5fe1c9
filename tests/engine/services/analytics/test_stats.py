"""The reports' statistics against published values (SciPy's tables and examples)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from stagecoach.engine.services.analytics._report import Params, ReportError
from stagecoach.engine.services.analytics._stats import (
    NPS_CATEGORIES_SQL,
    chi2_sf,
    chi_square_test,
    choice,
    compare_rates,
    normal_two_sided_p,
    period,
    rate,
    regularized_gamma_q,
    two_proportion_z_test,
)


@pytest.mark.parametrize(
    ("x", "df", "p"),
    [
        # scipy.stats.chi2.ppf(1 - p, df): the critical values of the usual tables.
        (3.841458820694124, 1, 0.05),
        (6.6348966010212145, 1, 0.01),
        (5.991464547107979, 2, 0.05),
        (7.814727903251178, 3, 0.05),
        (11.070497693516351, 5, 0.05),
        (18.307038053275146, 10, 0.05),
        (43.77297182574219, 30, 0.05),
    ],
)
def test_chi2_sf_matches_the_critical_value_table(x: float, df: int, p: float) -> None:
    assert chi2_sf(x, df) == pytest.approx(p, rel=1e-9)


def test_chi2_sf_of_zero_is_one() -> None:
    assert chi2_sf(0.0, 3) == 1.0


@pytest.mark.parametrize(("z", "p"), [(1.959963984540054, 0.05), (2.5758293035489004, 0.01)])
def test_normal_two_sided_p_matches_the_z_table(z: float, p: float) -> None:
    assert normal_two_sided_p(z) == pytest.approx(p, rel=1e-12)
    assert normal_two_sided_p(-z) == pytest.approx(p, rel=1e-12)


@pytest.mark.parametrize(("a", "x"), [(1.0, 2.0), (3.0, 2.5), (3.0, 10.0), (5.0, 0.5)])
def test_gamma_q_matches_the_closed_form_for_whole_a(a: float, x: float) -> None:
    closed = math.exp(-x) * sum(x**k / math.factorial(k) for k in range(int(a)))
    assert regularized_gamma_q(a, x) == pytest.approx(closed, rel=1e-12)


def test_gamma_q_at_one_half_is_erfc() -> None:
    # scipy.special.gammaincc(0.5, 1.0) == erfc(1) == 0.1572992070502851
    assert regularized_gamma_q(0.5, 1.0) == pytest.approx(0.1572992070502851, rel=1e-12)


def test_gamma_q_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="a > 0"):
        regularized_gamma_q(0, 1)


def test_chi_square_test_matches_scipy_chi2_contingency_example() -> None:
    # scipy.stats.chi2_contingency([[10, 10, 20], [20, 20, 20]]): statistic 2.7777...,
    # pvalue 0.24935220877729619, dof 2. Columns are arms: (converted, total).
    result = chi_square_test([(10, 30), (10, 30), (20, 40)])
    assert result is not None
    assert result.statistic == pytest.approx(2.7777777777777777, rel=1e-12)
    assert result.df == 2
    assert result.p_value == pytest.approx(0.24935220877729619, rel=1e-12)


def test_two_proportion_z_test_known_value() -> None:
    # statsmodels proportions_ztest([45, 30], [100, 100]): z 2.1908902300206643,
    # p 0.02845973691631...; the 2x2 chi-square (4.8, df 1) gives the same p.
    result = two_proportion_z_test(45, 100, 30, 100)
    assert result is not None
    assert result.statistic == pytest.approx(2.1908902300206643, rel=1e-12)
    assert result.p_value == pytest.approx(0.028459736916310915, rel=1e-9)
    chi = chi_square_test([(45, 100), (30, 100)])
    assert chi is not None
    assert chi.statistic == pytest.approx(4.8, rel=1e-12)
    assert chi.p_value == pytest.approx(result.p_value, rel=1e-12)


def test_tests_without_variation_or_arms_give_none() -> None:
    assert two_proportion_z_test(0, 10, 0, 10) is None
    assert two_proportion_z_test(1, 0, 1, 10) is None
    assert chi_square_test([(5, 5), (3, 3), (2, 2)]) is None
    assert chi_square_test([(1, 4)]) is None
    assert compare_rates([(1, 4)]) is None


def test_compare_rates_picks_the_test_by_arm_count() -> None:
    assert compare_rates([(45, 100), (30, 100)]) == pytest.approx(0.028459736916310915, rel=1e-9)
    assert compare_rates([(10, 30), (10, 30), (20, 40)]) == pytest.approx(
        0.24935220877729619, rel=1e-12
    )


def test_rate_rounds_and_has_no_value_without_a_denominator() -> None:
    assert rate(1, 3) == 0.3333
    assert rate(1, 0) is None


def test_choice_names_the_parameter_and_allowed_values() -> None:
    assert choice("by", "source", ("source", "channel")) == "source"
    with pytest.raises(ReportError) as caught:
        choice("by", "colour", ("source", "channel"))
    assert "by" in caught.value.message
    assert "'colour'" in caught.value.message
    assert caught.value.fix == "use one of: source, channel"


def test_nps_categories_follow_engine_nps_classify() -> None:
    assert "(6, 'detractor')" in NPS_CATEGORIES_SQL
    assert "(7, 'passive')" in NPS_CATEGORIES_SQL
    assert "(8, 'passive')" in NPS_CATEGORIES_SQL
    assert "(9, 'promoter')" in NPS_CATEGORIES_SQL


def test_period_is_naive_utc_and_never_empty() -> None:
    since = datetime(2026, 3, 1, 8, tzinfo=timezone(timedelta(hours=8)))
    assert period(Params(since, datetime(2026, 4, 1))) == (
        datetime(2026, 3, 1),
        datetime(2026, 4, 1),
    )
    with pytest.raises(ReportError) as caught:
        period(Params(datetime(2026, 4, 1), datetime(2026, 4, 1)))
    assert "until" in caught.value.message
