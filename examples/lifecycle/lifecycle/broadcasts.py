"""The campaigns this project sends once to a whole segment: ``Broadcast(...)``.

``stagecoach deploy`` keeps each as a draft; nothing goes out until someone runs
``stagecoach broadcasts preview NAME`` and ``stagecoach broadcasts schedule NAME``. A
broadcast sends each member of its segment at most once, under the same consent,
suppression, quiet hours and frequency cap as the journeys (docs/authoring/broadcasts.md).
"""

from __future__ import annotations

from stagecoach import ABTest, Broadcast, Variant, time, timedelta

MONTHLY_NEWSLETTER = Broadcast(
    "newsletter-2027-01",
    segment="engaged-prospects",
    content="newsletter-monthly",
    description="January's newsletter to prospects who read but have not asked for a demo",
    # 09:00 in each reader's own zone, on launch day; a zone already past 09:00 when it
    # is scheduled gets it at once.
    local_time=time(9, 0),
    when_passed="send",
    conversion="demo.requested",
    attribution=timedelta(days=7),
)

EXPO_WEBINAR = Broadcast(
    "expo-webinar-invite",
    segment="expo-2026",
    content="webinar-oee-masterclass",
    description="The OEE masterclass invitation to the people met at the expo",
    # Two subject lines to 10% each; after four hours the one with more clicks goes to
    # the rest, or the default when the difference is not significant.
    ab=ABTest(
        variants=(
            Variant("a"),
            Variant("b", subject="Raise OEE 10 points: a 45-minute masterclass"),
        ),
        default="a",
        sample=0.1,
        window=timedelta(hours=4),
        metric="clicked",
    ),
    conversion="webinar.attended",
)

BROADCASTS = [MONTHLY_NEWSLETTER, EXPO_WEBINAR]
