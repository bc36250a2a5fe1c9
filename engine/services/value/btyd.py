"""The buy-till-you-die models: BG/NBD for how often a customer buys and whether they
are still alive, Gamma-Gamma for how much they spend, fitted with ``lifetimes``.

Why ``lifetimes`` (docs/value.md has the longer answer): it implements exactly the
published maximum-likelihood fits (Fader, Hardie & Lee 2005), installs in seconds from a
pure-Python wheel on Python 3.11 to 3.13 (numpy, scipy, pandas, autograd), and ships the
CDNOW sample the fits are validated on (``tests/engine/services/value/test_btyd.py``,
``tests/bench/test_cdnow.py``). ``btyd``, its maintained fork, publishes no release for
Python 3.10 or later; ``pymc-marketing`` is maintained but brings PyMC, PyTensor (a C
compiler at run time) and matplotlib, and fetches its sample data from the network.
``lifetimes`` has had no release since 2020, so its version is pinned and the CDNOW test
is what tells us a newer numpy or pandas broke it.

Time is measured in weeks, as in the paper.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

WEEK_DAYS = 7.0
PENALTIES = (0.0, 0.001, 0.01, 0.1)
"""L2 penalties tried in turn until a fit converges."""


def lifetimes() -> Any:
    """The ``lifetimes`` package, imported on first use (it loads pandas), without the
    deprecation warning its import gives on pandas 3 (it sets a removed option)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        import lifetimes as package
    return package


def cdnow_sample() -> Any:
    """The CDNOW sample ``lifetimes`` ships, as a DataFrame. Read from the package's
    files: ``lifetimes.datasets`` itself imports ``pkg_resources``, which Python 3.12+
    venvs do not have (setuptools is not installed by default there)."""
    from importlib.resources import files

    import pandas as pd

    with (files("lifetimes") / "datasets" / "CDNOW_sample.txt").open("rb") as data:
        return pd.read_csv(data, header=None, sep=r"\s+")


class FitFailed(Exception):
    """The optimiser did not converge; ``str()`` says why."""


@dataclass(frozen=True)
class Fitted:
    """The two fitted models' parameters, and how to use them."""

    r: float
    alpha: float
    a: float
    b: float
    p: float | None
    q: float | None
    v: float | None
    spend_error: str | None = None
    """Why Gamma-Gamma has no parameters (None when it fitted)."""
    penalty: float = 0.0
    spend_penalty: float = 0.0

    def params(self) -> dict[str, float | None]:
        return {
            "r": self.r,
            "alpha": self.alpha,
            "a": self.a,
            "b": self.b,
            "p": self.p,
            "q": self.q,
            "v": self.v,
            "penalty": self.penalty,
            "spend_penalty": self.spend_penalty,
        }


def fit(
    frequency: Sequence[float],
    recency: Sequence[float],
    age: Sequence[float],
    repeat_value: Sequence[float],
) -> Fitted:
    """Fit BG/NBD on (frequency, recency, T) in weeks, and Gamma-Gamma on the repeat
    buyers' mean transaction value.

    Raises:
        FitFailed: either fit did not converge.
    """
    import numpy as np

    BetaGeoFitter, GammaGammaFitter = lifetimes().BetaGeoFitter, lifetimes().GammaGammaFitter
    f, r, t = np.asarray(frequency), np.asarray(recency), np.asarray(age)
    # Unpenalised first, as published (CDNOW fits so); a small history whose dropout is
    # barely seen leaves a or b drifting to infinity, and a small L2 penalty, as
    # lifetimes advises, keeps them finite. The run records which penalty it took.
    reason = ""
    for penalty in PENALTIES:
        try:  # lifetimes raises ConvergenceError, or numpy errors on degenerate data
            with contextlib.redirect_stdout(io.StringIO()):  # it prints failed fits
                bg = BetaGeoFitter(penalizer_coef=penalty).fit(f, r, t)
            break
        except Exception as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
    else:
        raise FitFailed(f"BG/NBD did not fit: {reason}")
    params = bg.params_
    fitted = Fitted(
        float(params["r"]),
        float(params["alpha"]),
        float(params["a"]),
        float(params["b"]),
        None,
        None,
        None,
        penalty=penalty,
    )
    m = np.asarray(repeat_value)
    # Gamma-Gamma is defined on positive spend: a repeat buyer whose repeat orders were all
    # free (or refunded to nothing) tells it nothing.
    repeat = (f > 0) & (m > 0)
    if repeat.sum() >= 2:
        # Unpenalised first, as published; spend that varies little between customers
        # leaves q and v unidentified (only their ratio is), and a small penalty, as
        # lifetimes advises, settles them without moving the mean spend it predicts.
        reason = ""
        for spend_penalty in PENALTIES:
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    gg = GammaGammaFitter(penalizer_coef=spend_penalty).fit(f[repeat], m[repeat])
                break
            except Exception as exc:
                reason = " ".join(str(exc).split()) or type(exc).__name__
        else:
            # Purchases still predict without spend: keep BG/NBD, give no CLV.
            return replace(fitted, spend_error=f"Gamma-Gamma did not fit: {reason}")
        g = gg.params_
        fitted = replace(
            fitted,
            p=float(g["p"]),
            q=float(g["q"]),
            v=float(g["v"]),
            spend_penalty=spend_penalty,
        )
    return fitted


def _bg(fitted: Fitted) -> Any:
    import pandas as pd

    bg = lifetimes().BetaGeoFitter()
    bg.params_ = pd.Series({"r": fitted.r, "alpha": fitted.alpha, "a": fitted.a, "b": fitted.b})
    return bg


def predict(
    fitted: Fitted,
    frequency: Sequence[float],
    recency: Sequence[float],
    age: Sequence[float],
    repeat_value: Sequence[float],
    *,
    horizon_weeks: float,
    annual_discount: float,
) -> tuple[list[float], list[float], list[float | None]]:
    """Per customer: probability alive now, expected purchases over the horizon, and
    the discounted value of those purchases (CLV; None without a Gamma-Gamma fit).

    CLV is expected purchases in each future week times the expected spend per purchase
    (Gamma-Gamma's conditional mean), discounted weekly at ``annual_discount``.
    """
    import numpy as np

    f, r, t = np.asarray(frequency), np.asarray(recency), np.asarray(age)
    bg = _bg(fitted)
    alive = bg.conditional_probability_alive(f, r, t)
    expected = bg.conditional_expected_number_of_purchases_up_to_time(horizon_weeks, f, r, t)
    clv: list[float | None] = [None] * len(f)
    if fitted.p is not None and fitted.q is not None and fitted.v is not None:
        p, q, v = fitted.p, fitted.q, fitted.v
        m = np.asarray(repeat_value, dtype=float)
        # Gamma-Gamma's conditional expectation of the mean spend; with no repeat purchase
        # it is the population mean p*v/(q-1).
        spend = (p * (v + f * m)) / (p * f + q - 1)
        weekly = (1 + annual_discount) ** (1 / 52) - 1
        total = np.zeros(len(f))
        previous = np.zeros(len(f))
        for week in range(1, int(np.ceil(horizon_weeks)) + 1):
            now = bg.conditional_expected_number_of_purchases_up_to_time(week, f, r, t)
            total += (now - previous) * spend / (1 + weekly) ** week
            previous = now
        clv = [float(x) for x in total]
    return [float(x) for x in alive], [float(x) for x in expected], clv
