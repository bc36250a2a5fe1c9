"""The capacity model's arithmetic against cases computed by hand (not a benchmark: it
runs in ``make test``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.capacity_model import (
    SIZES,
    Assumptions,
    Measured,
    action_cost,
    broadcast_peak,
    flattening,
    model,
    shards,
    table,
)

ROOT = Path(__file__).resolve().parents[2]

# One kind of contact, round numbers, so every figure below is checkable on paper.
SIMPLE = Measured(
    first_month_actions={"only": 10},
    first_month_history_bytes={"only": 100_000},
    actions_per_visit=2,
    history_bytes_per_visit=500,
    postgres_bytes_per_history_byte=2.0,
    server_cpu_ms_per_action=4.0,
    worker_actions_per_second=50,
    worker_cpu_ms_per_event=5.0,
    broadcast_actions_per_recipient=0.001,
    broadcast_recipients_per_second_per_core=2_000,
)
HALF_NEW = Assumptions(
    new_share=0.5,
    mix={"only": 1.0},
    visits_per_quiet_contact=1,
    broadcasts_per_month=0,
    peak_to_average=3,
    reactions_per_recipient=0.25,
    reaction_window_seconds=3_600,
    broadcast_rate=500,
)


def test_action_cost_matches_the_pricing_pages_own_example() -> None:
    # Temporal's page: 11.25M actions = 5M x $50 + 5M x $45 + 1.25M x $40 = $525.
    assert action_cost(11_250_000) == pytest.approx(525.0)
    assert action_cost(0) == 0
    # Past the last listed tier the model keeps its price: the first 200M cost
    # 250 + 225 + 400 + 1,050 + 1,500 + 2,500 = $5,925, and 10M more at $25 = $250.
    assert action_cost(200_000_000) == pytest.approx(5_925)
    assert action_cost(210_000_000) == pytest.approx(5_925 + 250)


def test_shards_are_the_next_power_of_two_over_the_minimum_and_the_load() -> None:
    rule = Assumptions(actions_per_shard_per_second=30, min_shards=512)
    assert shards(10, rule) == 512  # the minimum
    assert shards(20_000, rule) == 1_024  # 667 shards' worth, rounded up to a power of two
    assert shards(30 * 512, rule) == 512  # exactly the minimum's budget


def test_a_rate_limited_broadcast_to_a_million() -> None:
    b = broadcast_peak(1_000_000, SIMPLE, HALF_NEW)
    assert b.recipients_per_second == 500  # the limit, under the worker's 2,000/s
    assert b.seconds == 2_000
    assert b.actions == pytest.approx(1_000)
    # 250,000 reactions over the hour (longer than the 2,000 s send): 69.44/s.
    assert b.reactions_per_second == pytest.approx(250_000 / 3_600)
    assert b.actions_per_second == pytest.approx(0.5 + 2 * 250_000 / 3_600)


def test_a_million_contacts_half_of_them_new_by_hand() -> None:
    row = model(1_000_000, SIMPLE, HALF_NEW)
    # Half new at 10 actions, half quiet with one visit at 2: 6 a contact, 6M a month.
    assert row.actions_per_contact_month == pytest.approx(6.0)
    assert row.actions_per_month == pytest.approx(6_000_000)
    average = 6_000_000 / (30 * 86_400)  # 2.3148/s
    assert row.average_actions_per_second == pytest.approx(average)
    # Busiest hour 6.94/s; a broadcast on an average hour 2.31 + 139.39: the broadcast.
    peak = average + 0.5 + 2 * 250_000 / 3_600
    assert row.peak_actions_per_second == pytest.approx(peak)
    # 6M less the 2.5M included: 3.5M at $50.
    assert row.cloud_action_dollars == pytest.approx(175.0)
    # 100 GB of open histories less 2.5 GB included, 744 GBh a GB-month at $0.042.
    assert row.active_storage_gb == pytest.approx(100.0)
    assert row.cloud_storage_dollars == pytest.approx(97.5 * 744 * 0.042)
    # 10% of $3,221.68 is under the $500 minimum.
    assert row.cloud_plan_dollars == 500
    assert row.cloud_dollars == pytest.approx(175 + 97.5 * 744 * 0.042 + 500)
    assert row.shards == 512
    # Size: 100 GB of history at 2 bytes of PostgreSQL per byte. Growth: half new
    # (100 kB) and half one visit (500 B): 50.25 GB of history, 100.5 GB of PostgreSQL.
    assert row.postgres_gb == pytest.approx(200.0)
    assert row.postgres_growth_gb_per_month == pytest.approx(100.5)
    journey_rate = 100.5e9 / (30 * 86_400)
    reaction_rate = 250_000 / 3_600 * 500 * 2.0
    assert row.postgres_write_kb_per_second == pytest.approx(
        max(3 * journey_rate, journey_rate + reaction_rate) / 1e3
    )
    assert row.server_cores == pytest.approx(peak * 4.0 / 1e3)
    # Cores: max(6.94 / 50, 2.31 / 50 + 69.44 x 5 ms) = 0.394; twice that, rounded up: 1,
    # and never fewer than 2.
    assert row.workers == 2


def test_the_printed_table_has_a_column_per_size() -> None:
    text = table([model(n) for n in (100_000, 10_000_000)])
    assert "| 100,000 contacts | 10,000,000 contacts |" in text
    assert text.count("\n") == 16


def test_the_capacity_page_shows_what_the_model_prints() -> None:
    # The page's tables are the model's output: a changed input or formula that is not
    # carried to docs/capacity.md fails here.
    page = (ROOT / "docs" / "capacity.md").read_text(encoding="utf-8")
    assert table([model(n) for n in SIZES]) in page
    assert flattening(SIZES[-1]) in page
