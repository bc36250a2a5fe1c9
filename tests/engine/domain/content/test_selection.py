"""Next-best-item selection: filters, the marketer's priority, interests, determinism."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from stagecoach.engine.domain.content import ContentError, ContentLibrary, funnel_stage_for


@pytest.mark.parametrize(
    ("stage", "funnel"),
    [
        ("suspect", "awareness"),
        ("prospect", "awareness"),
        ("lead", "evaluation"),
        ("opportunity", "purchase"),
        ("customer", "retention"),
        ("fan", "advocacy"),
        ("advocate", "advocacy"),
        ("evaluation", "evaluation"),
        ("verification", "evaluation"),
        ("proposal", "purchase"),
    ],
)
def test_pipeline_stages_map_to_funnel_stages(stage, funnel):
    assert funnel_stage_for(stage) == funnel


def test_an_unknown_stage_is_an_error_naming_the_known_ones():
    with pytest.raises(ContentError, match="'lost'") as caught:
        funnel_stage_for("lost")
    assert "suspect" in caught.value.fix


def select(library: ContentLibrary, now: datetime, **kw: Any) -> str | None:
    """The id select_next picks (English email, nothing received, unless overridden)."""
    args: dict[str, Any] = {"stage": None, "locale": "en", "channel": "email", "received": ()}
    args.update(kw)
    item = library.select_next(now=now, **args)
    return None if item is None else item.id


def test_a_lead_gets_the_highest_priority_evaluation_item(library, now):
    assert select(library, now, stage="lead") == "case-study-manufacturing"


def test_received_items_are_skipped_until_the_contact_is_exhausted(library, now):
    received: set[str] = set()
    order = []
    while (item := select(library, now, stage="suspect", received=received)) is not None:
        order.append(item)
        received.add(item)
    assert order == [
        "wp-digital-transformation",
        "video-product-tour",
        "ebook-predictive-maintenance",
    ]


def test_kinds_and_tags_filter_candidates(library, now):
    assert select(library, now, stage="opportunity", kinds=["coupon"]) == "coupon-annual-plan"
    assert select(library, now, tags=["nps"]) == "survey-nps"
    assert select(library, now, stage="awareness", kinds=["coupon"]) is None


def test_an_expired_item_is_never_selected(library, now):
    coupon = library.item("coupon-annual-plan")
    assert coupon.expires is not None
    after = coupon.expires + timedelta(seconds=1)
    assert select(library, coupon.expires - timedelta(days=1), kinds=["coupon"]) == coupon.id
    # Another coupon (the win-back offer) may be picked then; never the expired one.
    assert select(library, after, kinds=["coupon"]) != coupon.id


def test_interests_break_ties_between_equal_priorities(write_item, now):
    write_item("a-energy", topics=["energy"], priority=5)
    write_item("b-oee", topics=["oee"], priority=5)
    root = write_item("c-top", topics=["other"], priority=9)
    library = ContentLibrary.load(root)
    assert select(library, now) == "c-top"
    received = {"c-top"}
    assert select(library, now, received=received) == "a-energy"  # tie: by id
    assert select(library, now, received=received, interests=["oee"]) == "b-oee"
    assert select(library, now, received=received, interests="oee, energy") == "a-energy"
    assert select(library, now, received=received, interests="oee") == "b-oee"


def test_items_without_the_locale_or_channel_are_skipped(write_item, now):
    root = write_item("email-only", channels=["email"], files={"wechat.en.template.yaml": None})
    library = ContentLibrary.load(root)
    assert select(library, now, channel="wechat") is None
    assert select(library, now, locale="zh-CN") is None
    assert select(library, now) == "email-only"


def test_selection_is_deterministic(library, now):
    picks = {select(library, now, stage="customer", interests=["oee"]) for _ in range(20)}
    assert picks == {"survey-nps"}
