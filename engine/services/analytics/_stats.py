"""Statistics and small helpers the analytics reports share.

Significance tests are written here with ``math`` only (the engine carries no SciPy):

- ``two_proportion_z_test``: two arms, pooled standard error, two-sided p from ``erfc``;
- ``chi_square_test``: k arms x (converted, not converted), p from the regularized upper
  incomplete gamma function ``Q(df / 2, x / 2)``; for two arms it equals the z-test's p;
- ``compare_rates`` picks the one that fits the number of arms.

The rest keeps the reports saying the same thing the same way: ``rate`` (rounded, ``None``
without a denominator), ``utc_naive`` and ``period`` (the store holds naive UTC; an empty
period is refused), ``choice`` (a parameter outside its allowed values is a
``ReportError`` naming both) and ``NPS_CATEGORIES_SQL`` (the NPS categories of
``stagecoach.engine.domain.nps.classify`` as a DuckDB table, so SQL never restates the 9-10 / 7-8 /
0-6 thresholds).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from stagecoach.engine.domain.nps import classify
from stagecoach.engine.services.analytics._report import Params, ReportError

SIGNIFICANCE = 0.05
"""The p-value below which a difference between arms is called significant."""

_EPSILON = 1e-15
_TINY = 1e-300
_MAX_ITERATIONS = 10_000


@dataclass(frozen=True)
class TestResult:
    """A test statistic, its degrees of freedom (1 for a z-test) and its p-value."""

    __test__ = False  # not a pytest test class, whatever its name says

    statistic: float
    df: int
    p_value: float


def normal_two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def regularized_gamma_q(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(a, x) = Gamma(a, x) / Gamma(a).

    A power series below ``x = a + 1`` and a continued fraction (modified Lentz) above,
    as in Numerical Recipes' ``gammq``.

    Raises:
        ValueError: ``a`` is not positive or ``x`` is negative.
    """
    if a <= 0 or x < 0:
        raise ValueError(f"Q(a, x) needs a > 0 and x >= 0, not a={a!r}, x={x!r}")
    if x == 0:
        return 1.0
    log_prefix = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(_MAX_ITERATIONS):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPSILON:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    b = x + 1 - a
    c = 1 / _TINY
    d = 1 / b
    h = d
    for i in range(1, _MAX_ITERATIONS):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < _EPSILON:
            break
    return math.exp(log_prefix) * h


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X chi-square distributed with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"a chi-square distribution needs df >= 1, not {df}")
    return regularized_gamma_q(df / 2, max(x, 0.0) / 2)


def two_proportion_z_test(
    converted_a: int, total_a: int, converted_b: int, total_b: int
) -> TestResult | None:
    """Two-sided z-test that two conversion rates differ (pooled standard error).

    ``None`` when the test cannot be computed: an empty arm, or every (or no) contact
    converted in both.
    """
    if total_a <= 0 or total_b <= 0:
        return None
    pooled = (converted_a + converted_b) / (total_a + total_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / total_a + 1 / total_b))
    if se == 0:
        return None
    z = (converted_a / total_a - converted_b / total_b) / se
    return TestResult(z, 1, normal_two_sided_p(z))


def chi_square_test(arms: Sequence[tuple[int, int]]) -> TestResult | None:
    """Pearson's chi-square test of independence of arm and conversion, no correction.

    Args:
        arms: Per arm, ``(converted, total)``.

    Returns:
        The statistic, ``df = arms - 1`` and the p-value; ``None`` with fewer than two
        non-empty arms, or when every (or no) contact converted.
    """
    arms = [(c, n) for c, n in arms if n > 0]
    total = sum(n for _, n in arms)
    converted = sum(c for c, _ in arms)
    if len(arms) < 2 or converted in (0, total):
        return None
    statistic = 0.0
    for c, n in arms:
        for observed, column in ((c, converted), (n - c, total - converted)):
            expected = n * column / total
            statistic += (observed - expected) ** 2 / expected
    df = len(arms) - 1
    return TestResult(statistic, df, chi2_sf(statistic, df))


def compare_rates(arms: Sequence[tuple[int, int]]) -> float | None:
    """The p-value that the arms' conversion rates differ.

    Two arms: the two-proportion z-test; more: the chi-square test; ``None`` if the test
    cannot be computed (see both).

    Args:
        arms: Per arm, ``(converted, total)``.
    """
    if len(arms) == 2:
        (ca, na), (cb, nb) = arms
        result = two_proportion_z_test(ca, na, cb, nb)
    else:
        result = chi_square_test(arms)
    return None if result is None else result.p_value


def rate(part: float, whole: float, digits: int = 4) -> float | None:
    """``part / whole`` rounded; ``None`` when there is no whole to divide by."""
    if not whole:
        return None
    return round(part / whole, digits)


def utc_naive(at: datetime) -> datetime:
    """``at`` as the store keeps times: naive UTC (a naive ``at`` is taken as UTC)."""
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at


def period(params: Params) -> tuple[datetime, datetime]:
    """``[since, until)`` in the store's naive UTC.

    Raises:
        ReportError: ``until`` is not after ``since``.
    """
    since, until = utc_naive(params.since), utc_naive(params.until)
    if until <= since:
        raise ReportError(
            f"until ({params.until.isoformat()}) is not after since ({params.since.isoformat()})",
            fix="give a period whose end comes after its start",
        )
    return since, until


def choice(parameter: str, value: str, allowed: Iterable[str]) -> str:
    """``value`` if it is one of ``allowed``.

    Raises:
        ReportError: naming ``parameter`` and the allowed values.
    """
    options = tuple(allowed)
    if value not in options:
        raise ReportError(
            f"{parameter} cannot be {value!r}",
            fix=f"use one of: {', '.join(options)}",
        )
    return value


NPS_CATEGORIES_SQL = "(VALUES {}) AS nps_categories(score, category)".format(
    ", ".join(f"({score}, '{classify(score)}')" for score in range(11))
)
"""A DuckDB table expression ``nps_categories(score, category)``: the category of every
0-10 answer, from ``stagecoach.engine.domain.nps.classify``. Join it on the answer's score: a score
that is
not a whole number from 0 to 10 matches no row and so counts nowhere."""
