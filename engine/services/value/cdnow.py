"""The BG/NBD fit on CDNOW, beside the published one (Fader, Hardie & Lee 2005).

The data is the 1/10 sample of CDNOW's first-quarter-1997 cohort (2,357 customers) that
``lifetimes`` ships as ``CDNOW_sample.txt``: one row per customer, date, CDs and spend.
As in the paper, weeks 1-39 (1 January to 30 September 1997) calibrate the model and
weeks 40-78 (to 30 June 1998) are the holdout; purchases on one day are one transaction.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta

from stagecoach.engine.services.value import btyd

PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
"""Fader, Hardie & Lee (2005), "Counting your customers the easy way", Marketing
Science 24(2): the BG/NBD parameters estimated on this sample."""

START = date(1997, 1, 1)
CALIBRATION_END = START + timedelta(weeks=39, days=-1)
HOLDOUT_END = START + timedelta(weeks=78, days=-1)


@dataclass(frozen=True)
class Validation:
    fitted: btyd.Fitted
    customers: int
    actual_holdout: int
    predicted_holdout: float
    by_frequency: list[tuple[str, int, float, float]]
    """(calibration repeat transactions, customers, actual and predicted mean holdout
    transactions per customer), 0 to 6 and "7+", as the paper's conditional-expectation
    figure groups them."""


def validate() -> Validation:
    """Fit on weeks 1-39 of the CDNOW sample and predict weeks 40-78."""
    raw = btyd.cdnow_sample()
    days: dict[int, set[date]] = defaultdict(set)
    spend: dict[tuple[int, date], float] = defaultdict(float)
    for customer, stamp, amount in zip(raw[1], raw[2], raw[4], strict=True):
        text = str(stamp)
        day = date(int(text[:4]), int(text[4:6]), int(text[6:]))
        days[int(customer)].add(day)
        spend[int(customer), day] += float(amount)
    ids = sorted(days)
    freq, rec, age, value, holdout = [], [], [], [], []
    for c in ids:
        calibration = sorted(d for d in days[c] if d <= CALIBRATION_END)
        freq.append(len(calibration) - 1)
        rec.append((calibration[-1] - calibration[0]).days / 7)
        age.append((CALIBRATION_END - calibration[0]).days / 7)
        repeats = [spend[c, d] for d in calibration[1:]]
        value.append(sum(repeats) / len(repeats) if repeats else 0.0)
        holdout.append(sum(1 for d in days[c] if CALIBRATION_END < d <= HOLDOUT_END))
    fitted = btyd.fit(freq, rec, age, value)
    _, expected, _ = btyd.predict(
        fitted, freq, rec, age, value, horizon_weeks=39, annual_discount=0.0
    )
    groups: list[tuple[str, int, float, float]] = []
    for k in range(8):
        chosen = [i for i, f in enumerate(freq) if (f == k if k < 7 else f >= 7)]
        groups.append(
            (
                str(k) if k < 7 else "7+",
                len(chosen),
                sum(holdout[i] for i in chosen) / len(chosen),
                sum(expected[i] for i in chosen) / len(chosen),
            )
        )
    return Validation(fitted, len(ids), sum(holdout), sum(expected), groups)
