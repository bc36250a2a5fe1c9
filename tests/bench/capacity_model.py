"""The capacity model of ``docs/capacity.md``: measured per-contact figures scaled to a
contact base, as plain arithmetic (no Temporal, no database).

Every input is either measured on this machine (``Measured``, with the benchmark that
measured it) or an assumption a team should replace with its own (``Assumptions``).
``model(contacts)`` returns one ``Row``; ``python -m tests.bench.capacity_model`` prints
the table for 100k, 1M and 10M contacts. ``tests/bench/test_capacity_model.py`` checks
the arithmetic on a hand-computed case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

SECONDS_PER_MONTH = 30 * 86_400
GBH_PER_GB_MONTH = 744
"""Temporal Cloud bills storage in GB-hours and counts a GB held for a month as 744."""


@dataclass(frozen=True)
class Measured:
    """Per-contact figures measured here (``docs/capacity.md`` names each benchmark)."""

    first_month_actions: dict[str, float] = field(
        default_factory=lambda: {"silent": 11, "engaged": 27, "customer": 29}
    )
    """Temporal Cloud actions in a contact's first month, by kind
    (``tests/bench/test_contact_month.py``)."""
    first_month_history_bytes: dict[str, float] = field(
        default_factory=lambda: {"silent": 47_622, "engaged": 57_007, "customer": 138_276}
    )
    """History bytes after that month (same benchmark)."""
    actions_per_visit: float = 2
    """A quiet contact's event: a signal and a search-attribute upsert (same benchmark)."""
    history_bytes_per_visit: float = 526
    postgres_bytes_per_history_byte: float = 2.41
    """PostgreSQL growth over history bytes, the higher of the cluster runs (62 kB for
    25.7 kB of history; ``docs/capacity.md``)."""
    server_cpu_ms_per_action: float = 3.3
    """The Temporal server's CPU per action, the highest run (``docs/capacity.md``)."""
    worker_actions_per_second: float = 57
    """One worker process (one core): 8.15 contacts/s through the nurture at 7 actions
    each (``docs/benchmarks/journey-throughput.md``)."""
    worker_cpu_ms_per_event: float = 3.33
    """The worker's CPU per signalled event on a contact with no journey step to run
    (``docs/benchmarks/event-cost.md``)."""
    broadcast_actions_per_recipient: float = 0.0010
    """``docs/benchmarks/broadcasts.md``, the million run."""
    broadcast_recipients_per_second_per_core: float = 2_000
    """``docs/benchmarks/broadcasts.md``: 1,814/s in the 100k run, 1,346-1,558/s at 10k,
    890/s over a million."""


@dataclass(frozen=True)
class Assumptions:
    """What the model cannot measure: the shape of a team's month. Replace with yours."""

    new_share: float = 0.10
    """Contacts in their first month (new or re-entering a journey), of the base."""
    mix: dict[str, float] = field(
        default_factory=lambda: {"silent": 0.70, "engaged": 0.20, "customer": 0.10}
    )
    """How those first-month contacts split by kind."""
    visits_per_quiet_contact: float = 1.0
    """Events a month from a contact no journey is running for."""
    broadcasts_per_month: float = 4
    """Broadcasts to everyone a month."""
    peak_to_average: float = 3.0
    """The busiest hour's journey rate over the month's average (traffic in one region's
    working day)."""
    reactions_per_recipient: float = 0.25
    """Events a broadcast brings back per recipient (opens, clicks), each signalled to the
    contact's workflow."""
    reaction_window_seconds: float = 3_600
    """The reactions come in over the send time or this long, whichever is longer (opens
    trail delivery)."""
    actions_per_shard_per_second: float = 30
    """A shard's budget in the shard rule (see ``shards``)."""
    min_shards: int = 512
    worker_headroom: float = 2.0
    """Workers sized for this multiple of the peak: one can die, a deploy can roll."""
    broadcast_rate: float | None = None
    """The broadcast task queue's rate limit, messages a second (``broadcast_rate``)."""
    broadcast_spread_seconds: float = 0
    """Sends spread over this long (local time over zones spreads a day); 0: none."""
    broadcast_workers: int = 1


@dataclass(frozen=True)
class Tier:
    up_to_millions: float
    dollars_per_million: float


CLOUD_TIERS: Sequence[Tier] = (
    Tier(5, 50),
    Tier(10, 45),
    Tier(20, 40),
    Tier(50, 35),
    Tier(100, 30),
    Tier(200, 25),
)
"""Temporal Cloud pay-as-you-go action prices, Business plan and up (docs/capacity.md
cites the page). Above 200M the price is by contract: the model keeps $25."""
CLOUD_INCLUDED_ACTIONS = 2_500_000
CLOUD_INCLUDED_ACTIVE_GB = 2.5
CLOUD_ACTIVE_DOLLARS_PER_GBH = 0.042
CLOUD_PLAN_MINIMUM = 500.0
CLOUD_PLAN_SHARE = 0.10


def action_cost(actions: float) -> float:
    """Dollars for ``actions`` billable actions through the tiers."""
    cost, floor = 0.0, 0.0
    for tier in CLOUD_TIERS:
        top = tier.up_to_millions * 1e6
        cost += max(min(actions, top) - floor, 0.0) / 1e6 * tier.dollars_per_million
        floor = top
    cost += max(actions - floor, 0.0) / 1e6 * CLOUD_TIERS[-1].dollars_per_million
    return cost


def shards(peak_actions_per_second: float, a: Assumptions) -> int:
    """Next power of two over both the minimum and the peak at the per-shard budget.

    The count is fixed when a cluster is created, so it is chosen for the largest size
    planned; an idle shard costs little, a missing one means a new cluster."""
    need = max(a.min_shards, math.ceil(peak_actions_per_second / a.actions_per_shard_per_second))
    return 1 << (need - 1).bit_length()


@dataclass(frozen=True)
class Broadcast:
    """One broadcast to every contact."""

    recipients_per_second: float
    seconds: float
    actions: float
    reactions_per_second: float
    """The contacts' reactions (opens, clicks) signalled to their workflows, spread over
    the send time or the reaction window, whichever is longer."""
    actions_per_second: float
    """The batches' actions and the reactions' actions, a second, while it sends."""


def broadcast_peak(contacts: int, m: Measured, a: Assumptions) -> Broadcast:
    rate = a.broadcast_workers * m.broadcast_recipients_per_second_per_core
    if a.broadcast_rate is not None:
        rate = min(rate, a.broadcast_rate)
    if a.broadcast_spread_seconds > 0:
        rate = min(rate, contacts / a.broadcast_spread_seconds)
    seconds = contacts / rate
    reactions = contacts * a.reactions_per_recipient / max(seconds, a.reaction_window_seconds)
    return Broadcast(
        recipients_per_second=rate,
        seconds=seconds,
        actions=contacts * m.broadcast_actions_per_recipient,
        reactions_per_second=reactions,
        actions_per_second=rate * m.broadcast_actions_per_recipient
        + reactions * m.actions_per_visit,
    )


@dataclass(frozen=True)
class Row:
    contacts: int
    actions_per_contact_month: float
    actions_per_month: float
    average_actions_per_second: float
    peak_actions_per_second: float
    cloud_action_dollars: float
    active_storage_gb: float
    cloud_storage_dollars: float
    cloud_plan_dollars: float
    shards: int
    postgres_gb: float
    postgres_growth_gb_per_month: float
    postgres_write_kb_per_second: float
    server_cores: float
    workers: int
    broadcast: Broadcast

    @property
    def cloud_dollars(self) -> float:
        return self.cloud_action_dollars + self.cloud_storage_dollars + self.cloud_plan_dollars


def model(contacts: int, m: Measured | None = None, a: Assumptions | None = None) -> Row:
    m = m or Measured()
    a = a or Assumptions()
    first = sum(a.mix[k] * m.first_month_actions[k] for k in a.mix)
    first_bytes = sum(a.mix[k] * m.first_month_history_bytes[k] for k in a.mix)
    quiet = a.visits_per_quiet_contact * m.actions_per_visit
    per_contact = (
        a.new_share * first
        + (1 - a.new_share) * quiet
        + a.broadcasts_per_month * m.broadcast_actions_per_recipient
    )
    actions = contacts * per_contact
    average = actions / SECONDS_PER_MONTH
    busiest = average * a.peak_to_average
    blast = broadcast_peak(contacts, m, a)
    # The peak is the busier of the journeys' busiest hour and a broadcast on top of an
    # average hour.
    peak = max(busiest, average + blast.actions_per_second)
    billable = max(actions - CLOUD_INCLUDED_ACTIONS, 0.0)
    action_dollars = action_cost(billable)
    # Contact workflows never close, so every history stays active storage; continue-as-
    # new (after 2,000 events) is rare enough to leave retained storage out.
    active_gb = contacts * first_bytes / 1e9
    storage_dollars = (
        max(active_gb - CLOUD_INCLUDED_ACTIVE_GB, 0.0)
        * GBH_PER_GB_MONTH
        * CLOUD_ACTIVE_DOLLARS_PER_GBH
    )
    plan = max(CLOUD_PLAN_MINIMUM, CLOUD_PLAN_SHARE * (action_dollars + storage_dollars))
    growth_bytes = contacts * (
        a.new_share * first_bytes
        + (1 - a.new_share) * a.visits_per_quiet_contact * m.history_bytes_per_visit
    )
    growth = growth_bytes * m.postgres_bytes_per_history_byte
    journey_rate = growth / SECONDS_PER_MONTH
    reaction_rate = (
        blast.reactions_per_second * m.history_bytes_per_visit * m.postgres_bytes_per_history_byte
    )
    write_rate = max(journey_rate * a.peak_to_average, journey_rate + reaction_rate)
    # Journey work at the measured journey rate; a broadcast's reactions at the event
    # cost; the broadcast's own batches on workers of their own.
    cores = max(
        busiest / m.worker_actions_per_second,
        average / m.worker_actions_per_second
        + blast.reactions_per_second * m.worker_cpu_ms_per_event / 1e3,
    )
    workers = math.ceil(cores * a.worker_headroom)
    return Row(
        contacts=contacts,
        actions_per_contact_month=per_contact,
        actions_per_month=actions,
        average_actions_per_second=average,
        peak_actions_per_second=peak,
        cloud_action_dollars=action_dollars,
        active_storage_gb=active_gb,
        cloud_storage_dollars=storage_dollars,
        cloud_plan_dollars=plan,
        shards=shards(peak, a),
        postgres_gb=contacts * first_bytes * m.postgres_bytes_per_history_byte / 1e9,
        postgres_growth_gb_per_month=growth / 1e9,
        postgres_write_kb_per_second=write_rate / 1e3,
        server_cores=peak * m.server_cpu_ms_per_action / 1e3,
        workers=max(workers, 2),
        broadcast=blast,
    )


def table(rows: Sequence[Row]) -> str:
    """The Markdown table ``docs/capacity.md`` shows."""
    head = "| | " + " | ".join(f"{r.contacts:,} contacts" for r in rows) + " |"
    lines = [head, "| --- |" + " ---: |" * len(rows)]

    def line(label: str, cells: Sequence[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    line("actions per contact-month", [f"{r.actions_per_contact_month:.2f}" for r in rows])
    line("actions per month", [f"{r.actions_per_month / 1e6:,.2f}M" for r in rows])
    line("actions/s, average / peak", [
        f"{r.average_actions_per_second:.1f} / {r.peak_actions_per_second:,.1f}" for r in rows
    ])  # fmt: skip
    line("Temporal Cloud: actions, $/month", [f"${r.cloud_action_dollars:,.0f}" for r in rows])
    line("Temporal Cloud: active storage", [
        f"{r.active_storage_gb:,.1f} GB: ${r.cloud_storage_dollars:,.0f}" for r in rows
    ])  # fmt: skip
    line("Temporal Cloud: plan (Business), $/month", [
        f"${r.cloud_plan_dollars:,.0f}" for r in rows
    ])  # fmt: skip
    line("Temporal Cloud: total, $/month", [f"**${r.cloud_dollars:,.0f}**" for r in rows])
    line("self-hosted: history shards", [f"{r.shards:,}" for r in rows])
    line("self-hosted: PostgreSQL size", [f"{r.postgres_gb:,.1f} GB" for r in rows])
    line("self-hosted: PostgreSQL growth", [
        f"{r.postgres_growth_gb_per_month:,.1f} GB/month" for r in rows
    ])  # fmt: skip
    line("self-hosted: PostgreSQL writes, peak", [
        f"{r.postgres_write_kb_per_second:,.1f} kB/s" for r in rows
    ])  # fmt: skip
    line("self-hosted: server CPU, peak", [f"{r.server_cores:.2f} cores" for r in rows])
    line("contact workers (one core each)", [f"{r.workers}" for r in rows])
    line("broadcast to everyone: send time", [
        f"{r.broadcast.seconds / 60:,.0f} min at {r.broadcast.recipients_per_second:,.0f}/s"
        for r in rows
    ])  # fmt: skip
    line("broadcast: its own actions / actions/s while it sends", [
        f"{r.broadcast.actions:,.0f} / {r.broadcast.actions_per_second:,.0f}" for r in rows
    ])  # fmt: skip
    return "\n".join(lines)


SIZES = (100_000, 1_000_000, 10_000_000)

FLATTENING: dict[str, Assumptions] = {
    "1 broadcast worker, no limit": Assumptions(),
    "4 broadcast workers, no limit": Assumptions(broadcast_workers=4),
    "4 workers, task-queue rate limit 500/s": Assumptions(broadcast_workers=4, broadcast_rate=500),
    "4 workers, local time over 24 zones (a day)": Assumptions(
        broadcast_workers=4, broadcast_spread_seconds=86_400
    ),
}


def flattening(contacts: int) -> str:
    """How the rate limit and spreading the sends flatten one broadcast's peak."""
    lines = [
        "| broadcast to everyone | send rate | send time | reactions/s | actions/s | "
        "peak actions/s | contact workers |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, a in FLATTENING.items():
        r = model(contacts, a=a)
        b = r.broadcast
        lines.append(
            f"| {label} | {b.recipients_per_second:,.0f}/s | {b.seconds / 3600:,.1f} h | "
            f"{b.reactions_per_second:,.0f} | {b.actions_per_second:,.0f} | "
            f"{r.peak_actions_per_second:,.0f} | {r.workers} |"
        )
    return "\n".join(lines)


def main() -> None:
    print(table([model(n) for n in SIZES]))
    print()
    print(f"{SIZES[-1]:,} contacts:")
    print(flattening(SIZES[-1]))


if __name__ == "__main__":
    main()
