"""BG/NBD on the CDNOW sample beside Fader, Hardie & Lee (2005), and a value refresh's
cost on a synthetic shop.

Printed:

1. the fitted BG/NBD parameters next to the published ones, and the Gamma-Gamma ones;
2. weeks 40-78 (the holdout): actual and predicted repeat transactions in total, and the
   mean per customer by calibration-period repeat transactions (0 to 6, 7+);
3. the time a full ``refresh_values`` takes on ``STAGECOACH_BENCH_VALUE_CUSTOMERS``
   synthetic customers (default 2,000; SQLite in memory), reading, fitting, scoring and
   storing.

The same closeness the test asserts (``tests/engine/services/value/test_btyd.py``) is
asserted here. Run with ``pytest tests/bench/test_cdnow.py --run-bench -s -q``.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest
from sqlalchemy import Engine

from stagecoach import ValueModel
from stagecoach.engine.services.ingest import Ingestor
from stagecoach.engine.services.value import cdnow, refresh_values
from tests.engine.services.value.test_refresh import CATALOG, NOW, history
from tests.helpers import migrated_engine

pytestmark = pytest.mark.bench


def test_cdnow_side_by_side_with_the_published_fit() -> None:
    started = time.perf_counter()
    result = cdnow.validate()
    took = time.perf_counter() - started
    fitted = result.fitted.params()
    print(f"\nCDNOW sample: {result.customers} customers, fit and holdout in {took:.2f} s")
    print(f"{'parameter':<10}{'published':>12}{'stagecoach':>12}")
    for name, published in cdnow.PUBLISHED.items():
        print(f"{name:<10}{published:>12.3f}{fitted[name]:>12.3f}")
        assert fitted[name] == pytest.approx(published, rel=0.005)
    print(f"Gamma-Gamma: p={result.fitted.p:.3f} q={result.fitted.q:.3f} v={result.fitted.v:.3f}")
    print(
        f"\nweeks 40-78: {result.actual_holdout} repeat transactions, predicted"
        f" {result.predicted_holdout:,.0f}"
        f" ({result.predicted_holdout / result.actual_holdout - 1:+.1%})"
    )
    print(f"{'x (wk 1-39)':<12}{'customers':>10}{'actual':>9}{'predicted':>11}")
    for label, n, actual, predicted in result.by_frequency:
        print(f"{label:<12}{n:>10}{actual:>9.2f}{predicted:>11.2f}")
    assert result.predicted_holdout == pytest.approx(result.actual_holdout, rel=0.15)


def test_a_full_value_refresh_cost(tmp_path: object) -> None:
    customers = int(os.environ.get("STAGECOACH_BENCH_VALUE_CUSTOMERS", "2000"))
    db: Engine = migrated_engine("sqlite://")
    orders = history(customers)
    Ingestor(db).store([orders])
    from stagecoach.examples.lifecycle.lifecycle.definitions import defs

    started = time.perf_counter()
    result = refresh_values(db, replace(defs, catalog=CATALOG, value=ValueModel()), as_of=NOW)
    took = time.perf_counter() - started
    print(
        f"\nvalue refresh: {customers} customers, {len(orders)} orders: {result.run.status}"
        f" in {took:.2f} s ({customers / took:,.0f} customers a second),"
        f" {result.signalled} value.scored events"
    )
    assert result.scored == customers
