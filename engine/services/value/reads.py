"""What the CLI, the API and the dashboard read of customer value: the latest run's
reports (``value``, ``cross-sell``) in the analytics reports' shape, and one contact's
value with its "as of" and model version."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from stagecoach.engine.domain.value import FLAGS
from stagecoach.engine.services.analytics import Params, Report, Section
from stagecoach.engine.services.storage.models import ContactValue, ValueRun

NEVER = (
    "no value refresh has run yet: run `stagecoach value refresh` (it values every customer"
    " from their orders)"
)
CLV_BUCKETS = 10
TIERS = ("tier", "customers", "share", "avg_clv", "total_clv", "avg_p_alive")
CLV = ("clv_from", "clv_to", "customers")
MODEL = ("name", "value")
LEFT_OUT = ("flag", "orders", "meaning")
CUSTOMERS = ("contact_id", "tier", "score", "rfm", "clv", "p_alive", "orders", "spend")
PAIRS = ("bought", "recommend", "customers", "support", "confidence", "lift")
CHURN = ("level", "customers", "share")
VALUE_SECTIONS = (
    ("tiers", TIERS, "Value tiers (ABC: attitude, behaviour, consumption)"),
    ("churn", CHURN, "Churn risk (probability alive and recent engagement)"),
    ("clv_distribution", CLV, "CLV distribution"),
    ("model", MODEL, "Model (BG/NBD + Gamma-Gamma)"),
    ("left_out", LEFT_OUT, "Orders left out, and why"),
    ("customers", CUSTOMERS, "Top customers by CLV"),
)
CROSS_SECTIONS = (
    ("pairs", PAIRS, "Bought X, also bought Y (strongest lift first)"),
    ("left_out", LEFT_OUT, "Orders left out, and why"),
)


def latest_run(db: Engine) -> ValueRun | None:
    with Session(db) as session:
        return session.exec(select(ValueRun).order_by(col(ValueRun.id).desc())).first()


def contact_value(db: Engine, contact_id: str) -> dict[str, Any] | None:
    """The contact's value traits from the latest refresh that scored them, with
    ``value_as_of`` and ``value_model``; None if never scored."""
    with Session(db) as session:
        row = session.get(ContactValue, contact_id)
    return None if row is None else dict(row.traits)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _params(run: ValueRun | None) -> Params:
    at = _aware(run.as_of) if run else datetime.now(UTC)
    return Params(since=at, until=at)


def _left_out(run: ValueRun) -> tuple[Section, list[str]]:
    left = run.summary.get("left_out", {})
    rows = [
        (flag, count, FLAGS.get(flag, "a refund naming no order of the contact's"))
        for flag, count in left.items()
    ]
    notes = []
    total = run.summary.get("orders_left_out", 0)
    if total:
        why = ", ".join(f"{count} {flag}" for flag, count in left.items())
        notes.append(f"{total} order event(s) left out of the models: {why}")
    return Section(
        "left_out", ("flag", "orders", "meaning"), rows, "Orders left out, and why"
    ), notes


def value_report(db: Engine) -> Report:
    """Value tiers, the CLV distribution, the model and what it left out, the top
    customers by CLV; from the latest refresh."""
    run = latest_run(db)
    if run is None:
        empty = [Section(name, columns, [], title) for name, columns, title in VALUE_SECTIONS]
        return Report("value", "Customer value", _params(None), None, empty, [NEVER])
    with Session(db) as session:
        tiers = session.execute(
            sa_select(
                col(ContactValue.tier),
                func.count(),
                func.avg(ContactValue.clv),
                func.sum(ContactValue.clv),
                func.avg(ContactValue.p_alive),
            )
            .where(col(ContactValue.run_id) == run.id)
            .group_by(col(ContactValue.tier))
            .order_by(col(ContactValue.tier))
        ).all()
        clvs = sorted(
            float(v or 0.0)
            for v in session.exec(
                select(col(ContactValue.clv)).where(
                    col(ContactValue.run_id) == run.id, col(ContactValue.clv).is_not(None)
                )
            ).all()
        )
        top = session.exec(
            select(ContactValue)
            .where(col(ContactValue.run_id) == run.id)
            .order_by(col(ContactValue.clv).desc(), col(ContactValue.score).desc())
            .limit(50)
        ).all()
    scored = sum(int(t[1]) for t in tiers) or 1
    tier_rows = [
        (
            tier,
            int(n),
            int(n) / scored,
            None if avg is None else round(float(avg), 2),
            None if total is None else round(float(total), 2),
            None if alive is None else round(float(alive), 3),
        )
        for tier, n, avg, total, alive in tiers
    ]
    buckets: list[tuple[Any, ...]] = []
    if clvs:
        low, high = clvs[0], clvs[-1]
        width = (high - low) / CLV_BUCKETS or 1.0
        counts = [0] * CLV_BUCKETS
        for v in clvs:
            counts[min(int((v - low) / width), CLV_BUCKETS - 1)] += 1
        buckets = [
            (round(low + i * width, 2), round(low + (i + 1) * width, 2), n)
            for i, n in enumerate(counts)
        ]
    model_rows: list[tuple[Any, ...]] = [
        ("version", run.version),
        ("status", run.status),
        ("as_of", _aware(run.as_of).isoformat(timespec="seconds")),
        ("customers", run.summary.get("customers", 0)),
        ("repeat_customers", run.summary.get("repeat_customers", 0)),
        ("orders_valued", run.summary.get("orders_valued", 0)),
        ("orders_left_out", run.summary.get("orders_left_out", 0)),
        ("currency", run.summary.get("currency", "")),
        *((name, value) for name, value in run.params.items()),
    ]
    left, notes = _left_out(run)
    churn = run.summary.get("churn", {})
    churn_total = sum(churn.values()) or 1
    churn_rows = [(level, n, n / churn_total) for level, n in churn.items()]
    customers = [
        (v.contact_id, v.tier, v.score, v.traits.get("rfm"), v.clv, v.p_alive,
         v.traits.get("frequency"), v.traits.get("monetary"))
        for v in top
    ]  # fmt: skip
    return Report(
        "value",
        "Customer value",
        _params(run),
        _aware(run.as_of),
        [
            Section(
                "tiers",
                ("tier", "customers", "share", "avg_clv", "total_clv", "avg_p_alive"),
                tier_rows,
                "Value tiers (ABC: attitude, behaviour, consumption)",
            ),
            Section(
                "churn", CHURN, churn_rows, "Churn risk (probability alive and recent engagement)"
            ),
            Section(
                "clv_distribution", ("clv_from", "clv_to", "customers"), buckets, "CLV distribution"
            ),
            Section("model", ("name", "value"), model_rows, "Model (BG/NBD + Gamma-Gamma)"),
            left,
            Section(
                "customers",
                ("contact_id", "tier", "score", "rfm", "clv", "p_alive", "orders", "spend"),
                customers,
                "Top customers by CLV",
            ),
        ],
        [*run.summary.get("notes", []), *notes],
    )


def cross_sell_report(db: Engine) -> Report:
    """Co-purchase pairs ("bought X, also bought Y") with support, confidence and lift,
    from the latest refresh."""
    run = latest_run(db)
    if run is None:
        empty = [Section(name, columns, [], title) for name, columns, title in CROSS_SECTIONS]
        return Report("cross-sell", "Cross-sell pairs", _params(None), None, empty, [NEVER])
    pairs = [
        (p["bought"], p["recommend"], p["customers"], p["support"], p["confidence"], p["lift"])
        for p in run.summary.get("pairs", [])
    ]
    left, notes = _left_out(run)
    if not pairs:
        notes.append(
            "no product pair was bought together by enough customers yet"
            " (ValueModel(min_pair_customers=...))"
        )
    return Report(
        "cross-sell",
        "Cross-sell pairs",
        _params(run),
        _aware(run.as_of),
        [
            Section(
                "pairs",
                ("bought", "recommend", "customers", "support", "confidence", "lift"),
                pairs,
                "Bought X, also bought Y (strongest lift first)",
            ),
            left,
        ],
        notes,
    )
