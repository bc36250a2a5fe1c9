"""Prediction, measured on synthetic history with a known generating process.

1. **Propensity against the rule score.** A training store of
   ``STAGECOACH_BENCH_PROPENSITY_CONTACTS`` contacts (default 50,000) generated with
   ``fit_signal=0.5`` (company size and industry move how far a contact goes: see
   ``stagecoach.engine.services.analytics.synthetic.generate``), the model trained on it
   as the retrain does; then a second store from the same process with another seed:
   its contacts were never seen. At a cut-off 30 days before its end, every contact
   short of ``customer`` is scored by the model and by the bundled lifecycle's rule score
   (``examples/lifecycle``: engagement points with a 30-day half-life, replayed from the
   contact's events before the cut-off), and labelled with whether it became a customer
   within 30 days. Printed: AUC of each, and expected calibration error (10 bins) of the
   model and of the rule score mapped to a probability by Platt scaling (a logistic fit
   on one half of the contacts, measured on the other, both ways round). Goal: the
   model's AUC at least 0.05 above the rule score's.
2. **Forecast backtest.** ``STAGECOACH_BENCH_FORECAST_CONTACTS`` contacts (default
   50,000) appearing over 300 days; from origins every two weeks from week 20 to week 32,
   the forecast for the next 8 weeks, made from what the store held before the origin,
   against what happened. Printed: MAPE of the expected new customers and of the
   expected revenue (new customers' first orders and every customer's repeat orders) per
   week, and the share of weeks whose actual fell in the 80% interval. Goals, for both:
   MAPE under 15%, coverage at least 75%.
3. **Full refresh at scale.** ``STAGECOACH_BENCH_REFRESH_CONTACTS`` contacts (default
   1,000,000, about 10 events each) in a DuckDB file; a model trained on a 50,000-contact
   store; then, three times: every candidate's features, probability and top features,
   and the scores written to a SQLite database (the refresh the retrain publishes).
   Printed: seconds per step and the process's peak memory. Goal: under 60 s (printed,
   not asserted: the machine is shared, and timings say more than a pass).

Run with ``pytest tests/bench/test_prediction.py --run-bench -s -q``; figures in
``docs/concepts/prediction.md``.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pytest

from stagecoach.engine.domain.conditions import EventRecord
from stagecoach.engine.domain.scoring import ScoreState, apply_event, score_at
from stagecoach.engine.services.analytics.pipeline import STAGES
from stagecoach.engine.services.analytics.store import create_tables
from stagecoach.engine.services.analytics.synthetic import DEFAULT_START, generate
from stagecoach.engine.services.prediction.features import frame
from stagecoach.engine.services.prediction.forecast import actuals, run_forecast
from stagecoach.engine.services.prediction.model import auc, calibration_error
from stagecoach.engine.services.prediction.propensity import (
    Trained,
    TrainingConfig,
    fit_on_store,
    publish,
    score_store,
)
from stagecoach.engine.services.storage import make_engine, upgrade
from stagecoach.examples.lifecycle.lifecycle.pipeline import SCORING
from tests.bench._support import env_int, machine

PROPENSITY_CONTACTS = env_int("STAGECOACH_BENCH_PROPENSITY_CONTACTS", 50_000)
FORECAST_CONTACTS = env_int("STAGECOACH_BENCH_FORECAST_CONTACTS", 50_000)
REFRESH_CONTACTS = env_int("STAGECOACH_BENCH_REFRESH_CONTACTS", 1_000_000)
AS_OF = (DEFAULT_START + timedelta(days=150)).replace(tzinfo=UTC)
HORIZON = timedelta(days=30)


def _store(
    contacts: int, seed: int, path: str = ":memory:", **kw: object
) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(path)
    create_tables(con)
    generate(con, contacts, seed=seed, **kw)  # type: ignore[arg-type]
    return con


def _trained(contacts: int) -> Trained:
    con = _store(contacts, seed=1, events_per_contact=10, fit_signal=0.5)
    try:
        return fit_on_store(con, STAGES, TrainingConfig(), AS_OF)
    finally:
        con.close()


def _rule_scores(con: duckdb.DuckDBPyConnection, ids: list[str], cut: datetime) -> np.ndarray:
    """Each contact's rule score at ``cut`` from its events before it, as the workflow
    would have it (the bundled lifecycle's scoring model)."""
    rows = con.execute(
        """
        SELECT contact_id, name, occurred_at, properties::VARCHAR FROM events
        WHERE occurred_at < $cut AND contact_id IN (SELECT unnest($ids))
        ORDER BY contact_id, occurred_at, id
        """,
        {"cut": cut.replace(tzinfo=None), "ids": ids},
    ).fetchall()
    import json

    states: dict[str, ScoreState] = {}
    for contact_id, name, at, props in rows:
        state = states.get(contact_id) or ScoreState(as_of=at.replace(tzinfo=UTC))
        record = EventRecord(type=name, at=at.replace(tzinfo=UTC), properties=json.loads(props))
        states[contact_id], _ = apply_event(SCORING, state, record)
    return np.array(
        [score_at(SCORING, states[i], cut) if i in states else 0.0 for i in ids], dtype=np.float64
    )


def _platt_ece(score: np.ndarray, y: np.ndarray) -> float:
    """Calibration error of a score mapped to a probability by a logistic fit, fitted on
    one half of the contacts and measured on the other, both ways round."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    half = rng.random(len(y)) < 0.5
    p = np.empty(len(y))
    for fit_on in (half, ~half):
        model = LogisticRegression().fit(score[fit_on].reshape(-1, 1), y[fit_on])
        p[~fit_on] = model.predict_proba(score[~fit_on].reshape(-1, 1))[:, 1]
    return calibration_error(y, p)


@pytest.mark.bench
def test_propensity_beats_the_rule_score_on_unseen_contacts() -> None:
    print(f"\nmachine: {machine()}")
    started = time.perf_counter()
    trained = _trained(PROPENSITY_CONTACTS)
    print(
        f"trained on {PROPENSITY_CONTACTS:,} contacts: {trained.rows:,} rows, "
        f"{trained.customers:,} customers, {time.perf_counter() - started:.1f} s"
    )
    unseen = _store(PROPENSITY_CONTACTS // 2, seed=2, events_per_contact=10, fit_signal=0.5)
    cut = AS_OF - HORIZON
    rows = frame(unseen, trained.model.vocab, cut, horizon=HORIZON)
    assert rows.y is not None
    y = rows.y.astype(np.float64)
    p = trained.model.probability(rows.x)
    rule = _rule_scores(unseen, rows.ids, cut)
    unseen.close()
    model_auc, rule_auc = auc(y, p), auc(y, rule)
    model_ece, rule_ece = calibration_error(y, p), _platt_ece(rule, y)
    print(f"held-out contacts: {len(y):,} ({int(y.sum()):,} became customers in 30 days)")
    print(f"  propensity: AUC {model_auc:.3f}, calibration error {model_ece:.4f}")
    print(f"  rule score: AUC {rule_auc:.3f}, calibration error {rule_ece:.4f} (after Platt)")
    print(f"  AUC gain {model_auc - rule_auc:+.3f} (goal >= +0.05)")
    assert model_auc >= rule_auc + 0.05


@pytest.mark.bench
def test_forecast_backtest_over_a_rolling_window() -> None:
    print(f"\nmachine: {machine()}")
    con = _store(FORECAST_CONTACTS, seed=5, events_per_contact=6, days=300)
    errors: list[float] = []
    revenue_errors: list[float] = []
    inside: list[bool] = []
    revenue_inside: list[bool] = []
    repeat_share: list[float] = []
    for week in range(20, 33, 2):
        origin = (DEFAULT_START + timedelta(weeks=week)).replace(tzinfo=UTC)
        started = time.perf_counter()
        result = run_forecast(con, origin, runs=2000)
        seconds = time.perf_counter() - started
        seen = actuals(con, origin, 8)
        for wf, (_, n, revenue) in zip(result.weeks, seen, strict=True):
            errors.append(abs(wf.customers_mean - n) / n)
            inside.append(wf.customers_low <= n <= wf.customers_high)
            revenue_errors.append(abs(wf.revenue_mean - revenue) / revenue)
            revenue_inside.append(wf.revenue_low <= revenue <= wf.revenue_high)
            repeat_share.append(wf.repeat_revenue_mean / wf.revenue_mean)
        print(
            f"origin week {week}: {seconds:.2f} s; actual {[n for _, n, _ in seen]}; "
            f"expected {[round(w.customers_mean) for w in result.weeks]}"
        )
    con.close()
    mape, coverage = float(np.mean(errors)), float(np.mean(inside))
    print(
        f"customers: MAPE {mape:.1%} (goal < 15%), 80% interval held the actual "
        f"{coverage:.0%} of {len(inside)} weeks (goal >= 75%)"
    )
    revenue_mape, revenue_coverage = float(np.mean(revenue_errors)), float(np.mean(revenue_inside))
    print(
        f"revenue (first and repeat orders): MAPE {revenue_mape:.1%}, 80% interval held the "
        f"actual {revenue_coverage:.0%}; repeat orders {np.mean(repeat_share):.0%} of the "
        "expected revenue"
    )
    assert mape < 0.15
    assert coverage >= 0.75
    assert revenue_mape < 0.15
    assert revenue_coverage >= 0.75


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.bench
def test_a_full_refresh_of_a_million_contacts(tmp_path: Path) -> None:
    print(f"\nmachine: {machine()}")
    trained = _trained(50_000)
    started = time.perf_counter()
    path = tmp_path / "big.duckdb"
    # Generated in another process, so the peak memory below is the refresh's own
    # (DuckDB holds gigabytes while it generates ten million events).
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import duckdb, sys\n"
            "from stagecoach.engine.services.analytics.store import create_tables\n"
            "from stagecoach.engine.services.analytics.synthetic import generate\n"
            "con = duckdb.connect(sys.argv[1]); create_tables(con)\n"
            "con.execute('SET enable_progress_bar = false')\n"
            "generate(con, int(sys.argv[2]), events_per_contact=10, seed=9, fit_signal=0.5)\n"
            "con.close()\n",
            str(path),
            str(REFRESH_CONTACTS),
        ],
        check=True,
    )
    big = duckdb.connect(str(path))
    events = big.execute("SELECT count(*) FROM events").fetchall()[0][0]
    print(
        f"generated {REFRESH_CONTACTS:,} contacts, {events:,} events in "
        f"{time.perf_counter() - started:.0f} s (another process); peak memory after "
        f"training on 50,000: {_peak_mib():,.0f} MiB"
    )
    db = make_engine(f"sqlite:///{tmp_path / 'stagecoach.db'}")
    upgrade(db)
    at = AS_OF
    for run in range(1, 4):
        started = time.perf_counter()
        scores = score_store(big, trained.model, at)
        scored = time.perf_counter()
        publish(db, trained, scores, now=datetime.now(UTC))
        done = time.perf_counter()
        print(
            f"run {run}: {len(scores.ids):,} contacts scored; features + probability + top "
            f"features {scored - started:.1f} s, written {done - scored:.1f} s, total "
            f"{done - started:.1f} s (goal < 60 s); peak memory {_peak_mib():,.0f} MiB; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
    big.close()
    db.dispose()
