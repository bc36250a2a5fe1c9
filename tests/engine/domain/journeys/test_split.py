from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from stagecoach.engine.domain.conditions import Facts
from stagecoach.engine.domain.journeys import (
    END,
    Exit,
    Journey,
    Start,
    choose_split_target,
    compile_journey,
    holdout,
    send,
    split,
    split_point,
    stage_entered,
    step,
)

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
CONTACTS = [f"contact-{i}" for i in range(10_000)]


def test_split_point_is_deterministic_and_in_unit_interval():
    first = split_point("c-1", "j", "v1", "ab", 1)
    assert first == split_point("c-1", "j", "v1", "ab", 1)
    assert 0 <= first < 1
    others = {split_point("c-1", "j", "v1", "ab", 2), split_point("c-2", "j", "v1", "ab", 1)}
    assert first not in others


def test_same_inputs_take_the_same_branch(ctx):
    spec = compile_journey(
        Journey(
            "ab",
            entry=stage_entered("suspect"),
            steps=[
                split({"a": 1, "b": 1}, id="ab"),
                send("wp", id="a", next=END),
                send("video", id="b"),
            ],
        ),
        ctx,
    )
    runs = {
        step(spec, None, Start(now=T0, facts=Facts(now=T0), contact_id="c-42"))[1][0]
        for _ in range(5)
    }
    assert len(runs) == 1


def test_weights_are_respected_over_many_contacts():
    arms = split({"a": 20, "b": 30, "c": 50}, id="abc")
    counts = Counter(
        choose_split_target(arms, split_point(c, "j", "v1", "abc", 1)) for c in CONTACTS
    )
    for target, share in (("a", 0.2), ("b", 0.3), ("c", 0.5)):
        assert abs(counts[target] / len(CONTACTS) - share) < 0.02, counts


def test_holdout_keeps_out_its_share_and_they_exit(ctx):
    spec = compile_journey(
        Journey("h", entry=stage_entered("suspect"), steps=[holdout(10), send("wp")]), ctx
    )
    outcomes: Counter[str] = Counter()
    for contact in CONTACTS[:4000]:
        _, commands = step(spec, None, Start(now=T0, facts=Facts(now=T0), contact_id=contact))
        outcomes["held out" if commands == (Exit("holdout"),) else "treated"] += 1
    assert abs(outcomes["held out"] / 4000 - 0.10) < 0.02, outcomes
