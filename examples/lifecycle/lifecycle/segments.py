"""The audiences this project keeps: who they are, decided as events arrive.

Each is a ``Segment``: a condition over what a contact is and did (the same algebra as
stage rules and journey branches), or a manual list fed by upload. The sources ask to
classify contacts and give each class its own strategy and materials (分析、打标、分群):
journeys enter on these (``segment_entered``), broadcasts reach them, the dashboard and
``stagecoach segments`` show them.
"""

from __future__ import annotations

from stagecoach import (
    Segment,
    grade_in,
    last_performed,
    never_performed,
    performed,
    stage_at_least,
    stage_in,
    timedelta,
)

A_GRADE_PIPELINE = Segment(
    "a-grade-pipeline",
    description="A-grade leads and opportunities: the accounts sales should see first",
    when=grade_in("A") & stage_in("lead", "opportunity"),
    # Ops can list their workflows: temporal workflow list --query "Segments='a-grade-pipeline'"
    searchable=True,
)

GONE_QUIET_CUSTOMERS = Segment(
    "gone-quiet-customers",
    description="Customers (and beyond) with no page view for 60 days: the decline period "
    "(衰退期), where win-back starts",
    when=stage_at_least("customer") & last_performed("page.viewed", before=timedelta(days=60)),
)

ENGAGED_PROSPECTS = Segment(
    "engaged-prospects",
    description="Prospects who opened three emails in the last 30 days but never asked for a demo",
    when=stage_in("prospect")
    & performed("email.opened", at_least=3, within=timedelta(days=30))
    & never_performed("demo.requested"),
)

EXPO_2026 = Segment(
    "expo-2026",
    description="Met at the Shanghai expo: the events team uploads the list",
    manual=True,
)

SEGMENTS = [A_GRADE_PIPELINE, GONE_QUIET_CUSTOMERS, ENGAGED_PROSPECTS, EXPO_2026]
