"""The seven-stage lifecycle: stages, stage rules, detours, scoring, grading and MQL.

Edit this file to change how contacts move. Everything here is checked against the
project's events (``events.py``) when the module is imported, so a typo fails
``stagecoach validate``, not a contact.

Acquisition 获新 takes a contact from suspect to customer; delight 悦旧 from customer to
advocate. Qualified leads go to one sales organisation (:data:`ROUTING`): A-grade leads
to the key-accounts team, B-grade leads in turn to the inside-sales pool, overseas
contacts to the international pool in London; four business hours to answer, four more
before the lead hears of it. A rejection recycles the lead to nurture (:data:`RECYCLE`)
and costs it the ``sales_rejected`` points.
"""

from __future__ import annotations

from stagecoach import (
    BusinessHours,
    Detour,
    EventMatcher,
    GradeRule,
    GradingModel,
    Mql,
    Owner,
    Phase,
    Pipeline,
    Pool,
    PropertyFilter,
    Recycle,
    Routing,
    ScoreRule,
    ScoringModel,
    Sla,
    Stage,
    StageRule,
    Team,
    Territory,
    all_of,
    any_of,
    attribute,
    event,
    grade_at_least,
    last_performed,
    score_at_least,
    time,
    timedelta,
    trait,
)

from .events import EVENTS

DAY = timedelta(days=1)
WEEK = timedelta(days=7)

REFERRALS_FOR_ADVOCATE = 2
"""Converted referrals that make a fan (or customer) an advocate."""

PROMOTER_NPS = 9
"""NPS answers at or above this are promoters."""

DORMANT_RISK = 0.7
"""Churn risk (from ``stagecoach value refresh``: probability alive weighed with recent
engagement) at or above which a customer is dormant: the value model's ``high`` level."""

DORMANT_AFTER = 180 * DAY
"""No order for this long makes a customer dormant, whatever the model says."""


def _on(event_type: str, *where: PropertyFilter) -> EventMatcher:
    return EventMatcher(event_type, tuple(where))


# Engagement: first matching rule scores an event, so specific rules come first.
SCORING = ScoringModel(
    rules=(
        ScoreRule(
            "pricing_page_viewed",
            _on("page.viewed", PropertyFilter("category", "eq", "pricing")),
            10,
            cap_per_period=(30, WEEK),
        ),
        ScoreRule("page_viewed", _on("page.viewed"), 1, cap_per_period=(10, WEEK)),
        ScoreRule("content_downloaded", _on("content.downloaded"), 15, cap_per_rule=60),
        ScoreRule(
            "video_watched",
            _on("video.watched", PropertyFilter("percent", "gte", 50)),
            5,
            cap_per_period=(20, WEEK),
        ),
        ScoreRule("email_clicked", _on("email.clicked"), 5, cap_per_period=(20, WEEK)),
        ScoreRule("email_opened", _on("email.opened"), 1, cap_per_period=(5, WEEK)),
        ScoreRule("form_submitted", _on("form.submitted"), 10, cap_per_period=(20, WEEK)),
        ScoreRule("webinar_attended", _on("webinar.attended"), 20),
        ScoreRule("trial_started", _on("trial.started"), 25, cap_per_rule=25),
        ScoreRule("trial_activated", _on("trial.activated"), 15, cap_per_rule=30),
        ScoreRule("demo_requested", _on("demo.requested"), 30, cap_per_period=(30, 30 * DAY)),
        ScoreRule(
            "consultation_booked",
            _on("consultation.booked"),
            30,
            cap_per_period=(30, 30 * DAY),
        ),
        ScoreRule("wechat_subscribed", _on("wechat.subscribed"), 5, cap_per_rule=5),
        ScoreRule("wechat_scanned", _on("wechat.scanned"), 5, cap_per_period=(10, WEEK)),
        ScoreRule("email_unsubscribed", _on("email.unsubscribed"), -20),
        ScoreRule("email_bounced", _on("email.bounced"), -10, cap_per_rule=30),
        ScoreRule("email_complained", _on("email.complained"), -50),
        ScoreRule("sales_rejected", _on("sales.rejected"), -30),
    ),
    half_life=30 * DAY,
    top_n=10,
)

# Fit: points add up; A >= 75, B >= 50, C >= 25, else D.
GRADING = GradingModel(
    rules=(
        GradeRule(
            "target_industry",
            attribute("industry", "in", ["manufacturing", "software", "finance", "healthcare"]),
            30,
        ),
        GradeRule("large_company", attribute("company_size", "gte", 200), 30),
        GradeRule(
            "mid_size_company",
            all_of(attribute("company_size", "gte", 50), attribute("company_size", "lt", 200)),
            15,
        ),
        GradeRule(
            "decision_maker",
            attribute("role", "in", ["ceo", "cto", "cio", "it_director", "vp_engineering"]),
            25,
        ),
        GradeRule("practitioner", attribute("role", "in", ["engineer", "manager"]), 10),
        GradeRule(
            "served_region",
            attribute("region", "in", ["east_china", "north_china", "south_china"]),
            15,
        ),
        GradeRule("student", attribute("role", "eq", "student"), -30),
    ),
    thresholds={"A": 75, "B": 50, "C": 25},
)

MQL = Mql(score_at_least(60) & grade_at_least("B"))

# Rejected by sales: back to nurture with sales' reason, no new hand-off for 30 days, and
# the sales_rejected score rule above takes its points.
RECYCLE = Recycle(detour="recycled", cool_down=30 * DAY, event="sales.rejected")

# A recycled lead keeps its history; without this guard a still-high score would bounce it
# straight back to lead (or development) on its next page view.
_RECENTLY_REJECTED = RECYCLE.recently_rejected()

KEY_ACCOUNTS = Team(
    "key-accounts",
    owners=("zhang.wei", "liu.yang"),
    lead="li.na",
    timezone="Asia/Shanghai",
)
"""A-grade leads: the team takes them as a whole; li.na hears of escalations."""

INSIDE_SALES = Pool(
    "inside-sales",
    owners=(Owner("wang.fang"), Owner("chen.jing"), Owner("zhao.lei")),
    lead="sun.li",
    timezone="Asia/Shanghai",
)
"""B-grade leads, one owner in turn."""

INTERNATIONAL = Pool(
    "international",
    owners=(Owner("emma.clarke"), Owner("james.patel")),
    lead="olivia.hughes",
    timezone="Europe/London",
)
"""Every qualified overseas lead (region ``overseas``), in turn, on London hours."""

ROUTING = Routing(
    teams={"A": KEY_ACCOUNTS},
    pools={"B": INSIDE_SALES},
    territories={"overseas": Territory(pools={"A": INTERNATIONAL, "B": INTERNATIONAL})},
    sla=Sla(
        first_response=timedelta(hours=4),
        escalate_after=timedelta(hours=4),
        # Public holidays (and China's swapped weekend workdays, extra_workdays=) are
        # added here once a year, when the State Council publishes them.
        business_hours=BusinessHours(start=time(9), end=time(18), weekdays=(0, 1, 2, 3, 4)),
    ),
    territory_attribute="region",
    owner_attribute="sales_owner",
    # Detractors (NPS 0-6) are called by customer service within 24 hours, any day.
    service=Team(
        "customer-care", owners=("gao.yan", "xu.jie"), lead="he.min", timezone="Asia/Shanghai"
    ),
    service_sla=Sla(
        first_response=timedelta(hours=24),
        escalate_after=timedelta(hours=12),
        business_hours=BusinessHours(
            start=time(0), end=time(23, 59), weekdays=(0, 1, 2, 3, 4, 5, 6)
        ),
    ),
)
"""Who gets qualified leads (and detractors), and by when they answer."""

DEFAULT = Pipeline(
    name="default",
    label="Customer lifecycle",
    stages=(
        Stage("suspect", "Suspect", label_zh="怀疑者", phase="acquisition"),
        Stage("prospect", "Prospect", label_zh="潜在客户", phase="acquisition"),
        Stage("lead", "Lead", label_zh="线索", phase="acquisition"),
        Stage("opportunity", "Opportunity", label_zh="商机", phase="acquisition"),
        Stage("customer", "Customer", label_zh="客户", phase="acquisition"),
        Stage("fan", "Fan", label_zh="粉丝", phase="delight"),
        Stage("advocate", "Advocate", label_zh="鼓吹者", phase="delight"),
    ),
    phases=(
        Phase("acquisition", "Acquisition", label_zh="获新", first="suspect", last="customer"),
        Phase("delight", "Delight", label_zh="悦旧", first="customer", last="advocate"),
    ),
    states=("disqualified", "dormant"),
    rules=(
        StageRule(
            "prospect",
            any_of(
                event("content.downloaded"),
                event("form.submitted"),
                event("webinar.attended"),
                event("wechat.subscribed"),
            ),
            name="raised_hand",
        ),
        StageRule(
            "lead",
            any_of(
                score_at_least(40) & ~_RECENTLY_REJECTED,
                event("demo.requested", within=90 * DAY),
                event("consultation.booked", within=90 * DAY),
                event("trial.started", within=90 * DAY),
            ),
            name="engaged",
        ),
        StageRule("opportunity", event("sales.accepted"), name="sales_accepted"),
        StageRule(
            "customer",
            any_of(event("order.paid"), event("sales.converted")),
            name="purchased",
        ),
        StageRule(
            "fan",
            event(
                "nps.answered",
                where=[PropertyFilter("score", "gte", PROMOTER_NPS)],
                within=180 * DAY,
            ),
            name="promoter",
            from_stages=("customer",),
        ),
        StageRule(
            "advocate",
            event("referral.converted", count=REFERRALS_FOR_ADVOCATE),
            name="referrer",
            from_stages=("customer", "fan"),
        ),
    ),
    detours=(
        Detour("recycled", ("lead", "opportunity"), "prospect", reason_required=True),
        Detour("disqualified", (), "disqualified", reason_required=True),
        Detour("reactivated", ("disqualified",), "suspect", reason_required=True),
        # The decline period (衰退期): taken by itself when the value refresh says the
        # customer is at high risk of churning (has probably stopped buying and no longer
        # engages), or they simply have not ordered for long; never within a month of an
        # order (a churn risk from before it is stale), and only once a value refresh has
        # scored the customer: an import of old orders makes no one dormant by itself.
        Detour(
            "dormant",
            ("customer", "fan", "advocate"),
            "dormant",
            when=(
                trait("churn_risk", "gte", DORMANT_RISK)
                | last_performed("order.paid", before=DORMANT_AFTER)
            )
            & ~event("order.paid", within=30 * DAY)
            & trait("value_as_of", "exists"),
        ),
        # An order from a dormant customer wins them back.
        Detour("won_back", ("dormant",), "customer", when=event("order.paid", within=DAY)),
    ),
    mql=MQL,
    scoring=SCORING,
    grading=GRADING,
    routing=ROUTING,
    recycle=RECYCLE,
    catalog=EVENTS,
)
"""The seven-stage lifecycle: suspect 怀疑者 to advocate 鼓吹者."""
