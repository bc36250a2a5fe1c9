"""``Definitions.warnings``: what is valid but probably not meant, each rule with the
cases it must warn about and the look-alikes it must leave alone."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from stagecoach import (
    END,
    Definitions,
    Journey,
    PropertyFilter,
    all_of,
    branch,
    event,
    exit_to,
    goal,
    on_event,
    score_at_least,
    send,
    stage_entered,
    time,
    timedelta,
    wait,
    wait_for,
    wait_until,
)
from stagecoach.engine.domain.definitions import DefinitionsError
from stagecoach.engine.domain.journeys import Problem
from stagecoach.workflows.definitions import B2B, SEVEN_STAGE
from stagecoach.workflows.events import CATALOG
from stagecoach.workflows.pipeline import DEFAULT

UNSUBSCRIBED = event("email.unsubscribed")
THREE_DAYS = timedelta(days=3)


def _defs(*journeys: Journey, **options: object) -> Definitions:
    return Definitions(pipeline=DEFAULT, events=CATALOG, journeys=journeys, **options)  # type: ignore[arg-type]


def _warnings(*journeys: Journey, **options: object) -> list[Problem]:
    defs = _defs(*journeys, **options)
    assert defs.problems() == []  # every case here is a valid project
    return defs.warnings()


def _survey(name: str, *, entry: object = None, delay: timedelta = THREE_DAYS) -> Journey:
    """A post-purchase survey like the bundled one: sent ``delay`` after the order."""
    return Journey(
        name,
        entry=entry if entry is not None else on_event("order.paid"),  # type: ignore[arg-type]
        exit_when=UNSUBSCRIBED,
        steps=[wait(delay, id="settle"), send("survey-nps", id="survey")],
    )


def _where(warnings: Sequence[Problem]) -> list[tuple[str, str]]:
    return [(w.journey, w.step) for w in warnings]


# The bundled examples.


@pytest.mark.parametrize("defs", [SEVEN_STAGE, B2B], ids=["seven-stage", "b2b"])
def test_the_bundled_examples_have_nothing_to_warn_about(defs: Definitions) -> None:
    # Both b2b_nurture and onboarding wait for their own goal event: that wait leads to
    # a goal() step, the same ending the goal gives, so it is not a pre-empted wait.
    assert defs.warnings() == []


# Two journeys answering one trigger.


def test_two_journeys_entered_on_one_event_that_both_send_within_a_week_warn() -> None:
    mine = Journey(
        "acme_nps",
        entry=on_event("order.paid"),
        exit_when=UNSUBSCRIBED,
        steps=[send("survey-nps", id="ask")],
    )
    warnings = _warnings(_survey("nps_survey"), mine)
    # On the journey whose send comes second: the survey three days after the order.
    assert _where(warnings) == [("nps_survey", "step 'survey'")]
    (warning,) = warnings
    assert warning.message == (
        "event order.paid makes this journey send 'survey-nps' 3d later (its entry) and"
        " journey 'acme_nps' send 'survey-nps' at once (its entry): a contact gets both"
        " within 7d"
    )
    assert "intended_overlaps=[('acme_nps', 'nps_survey')]" in warning.fix


def test_a_journey_waiting_for_the_event_another_is_entered_on_warns() -> None:
    # The case: a nurture that sends its own NPS survey once the order it waits
    # for is paid, beside the bundled survey entered on order.paid.
    nurture = Journey(
        "sources_nurture",
        entry=stage_entered("prospect"),
        exit_when=UNSUBSCRIBED,
        steps=[
            send("trial-invitation", id="trial"),
            wait_for("order.paid", timeout=timedelta(days=30), on_timeout=END, id="await-order"),
            send("survey-nps", id="nps"),
        ],
    )
    defs = SEVEN_STAGE
    bundled = Definitions(
        pipeline=defs.pipeline, events=defs.events, journeys=[*defs.journeys, nurture]
    )
    assert bundled.problems() == []
    (warning,) = bundled.warnings()
    assert (warning.journey, warning.step) == ("nps_survey", "step 'survey'")
    assert warning.message == (
        "event order.paid makes this journey send 'survey-nps' 3d later (its entry) and"
        " journey 'sources_nurture' send 'survey-nps' at once (its step 'await-order'"
        " waits for it): a contact gets both within 7d"
    )
    # A goal on the order ends the nurture as the order arrives: no second survey then
    # (and the wait is reported as pre-empted instead).
    converting = Journey(
        "sources_nurture",
        entry=nurture.entry,
        goal=event("order.paid"),
        steps=nurture.steps,
    )
    found = Definitions(
        pipeline=defs.pipeline, events=defs.events, journeys=[*defs.journeys, converting]
    ).warnings()
    assert _where(found) == [("sources_nurture", "step 'await-order'")]


def test_two_journeys_entered_on_one_stage_warn_and_a_tie_names_the_later() -> None:
    first = Journey("welcome_a", entry=stage_entered("customer"), steps=[send("a", id="a")])
    second = Journey("welcome_b", entry=stage_entered("customer"), steps=[send("b", id="b")])
    assert _where(_warnings(first, second)) == [("welcome_b", "step 'b'")]
    assert _where(_warnings(second, first)) == [("welcome_a", "step 'a'")]


def test_a_send_counts_only_when_every_way_a_quiet_contact_takes_leads_to_it() -> None:
    survey = _survey("nps_survey")
    # Sent only if onboarding finishes first: a contact who does nothing more times out.
    eager = Journey(
        "eager",
        entry=on_event("order.paid"),
        steps=[
            wait_for("onboarding.finished", timeout=timedelta(days=20), on_timeout=END),
            send("survey-nps", id="after-onboarding"),
        ],
    )
    # Sent only on one arm of a branch (the bundled survey's referral offer is too).
    some = Journey(
        "some",
        entry=on_event("order.paid"),
        steps=[branch(score_at_least(80), then=[send("referral-offer", id="refer")], else_=END)],
    )
    assert _warnings(survey, eager, some) == []
    # Every arm sends, the slower one in 2 days: counted, at 2 days.
    every = Journey(
        "every",
        entry=on_event("order.paid"),
        steps=[
            branch(
                score_at_least(80),
                then=[send("referral-offer", id="refer")],
                else_=[wait(timedelta(days=2), id="pause"), send("survey-nps", id="ask")],
            )
        ],
    )
    (warning,) = _warnings(survey, every)
    assert (warning.journey, warning.step) == ("nps_survey", "step 'survey'")
    assert "journey 'every' send 'survey-nps' 2d later (its entry)" in warning.message


def test_filters_one_event_can_meet_together_overlap() -> None:
    pricing = Journey(
        "pricing",
        entry=on_event("page.viewed", where={"category": "pricing"}),
        steps=[send("a", id="a")],
    )
    any_page = Journey("any_page", entry=on_event("page.viewed"), steps=[send("b", id="b")])
    (warning,) = _warnings(pricing, any_page)
    assert warning.message == (
        "event page.viewed makes this journey send 'b' at once (its entry) and journey"
        " 'pricing' send 'a' at once (its entry, on event page.viewed[category ="
        " 'pricing']): a contact gets both within 7d"
    )


@pytest.mark.parametrize(
    ("theirs", "mine"),
    [
        # NPS passives and promoters: no score is both 7-8 and 9 or more.
        (
            [PropertyFilter("score", "gte", 7), PropertyFilter("score", "lte", 8)],
            [PropertyFilter("score", "gte", 9)],
        ),
        ([PropertyFilter("score", "lt", 7)], [PropertyFilter("score", "gte", 7)]),
        (
            [PropertyFilter("touchpoint", "eq", "order")],
            [PropertyFilter("touchpoint", "eq", "ticket")],
        ),
        (
            [PropertyFilter("touchpoint", "in", ["order", "onboarding"])],
            [PropertyFilter("touchpoint", "in", ["ticket"])],
        ),
        (
            [PropertyFilter("touchpoint", "eq", "order")],
            [PropertyFilter("touchpoint", "ne", "order")],
        ),
        ([PropertyFilter("comment", "exists", True)], [PropertyFilter("comment", "exists", False)]),
        ([PropertyFilter("score", "eq", 10)], [PropertyFilter("score", "lte", 8)]),
    ],
)
def test_filters_no_event_meets_together_do_not_overlap(
    theirs: list[PropertyFilter], mine: list[PropertyFilter]
) -> None:
    a = Journey("a", entry=on_event("nps.answered", where=theirs), steps=[send("x", id="x")])
    b = Journey("b", entry=on_event("nps.answered", where=mine), steps=[send("y", id="y")])
    assert _warnings(a, b) == []


@pytest.mark.parametrize(
    ("theirs", "mine"),
    [
        ([PropertyFilter("score", "gte", 7)], [PropertyFilter("score", "lte", 8)]),
        ([PropertyFilter("score", "gte", 9)], [PropertyFilter("score", "eq", 9)]),
        (
            [PropertyFilter("touchpoint", "in", ["order", "ticket"])],
            [PropertyFilter("touchpoint", "ne", "order")],
        ),
        ([PropertyFilter("comment", "contains", "slow")], [PropertyFilter("score", "lt", 7)]),
    ],
)
def test_filters_one_event_can_meet_together_still_overlap(
    theirs: list[PropertyFilter], mine: list[PropertyFilter]
) -> None:
    a = Journey("a", entry=on_event("nps.answered", where=theirs), steps=[send("x", id="x")])
    b = Journey("b", entry=on_event("nps.answered", where=mine), steps=[send("y", id="y")])
    assert _where(_warnings(a, b)) == [("b", "step 'y'")]


def test_what_does_not_overlap() -> None:
    survey = _survey("nps_survey")
    # Another trigger.
    trial = _survey("trial_survey", entry=on_event("trial.started"))
    # The same trigger, but its first send comes after the window.
    late = _survey("late", delay=timedelta(days=8))
    # The same trigger, but the trigger meets its goal: it ends before its first step.
    done = Journey(
        "done",
        entry=on_event("order.paid"),
        goal=event("order.paid"),
        steps=[send("survey-nps", id="never")],
    )
    # The same trigger, but it never sends.
    silent = Journey(
        "silent",
        entry=on_event("order.paid"),
        steps=[wait(timedelta(days=1), id="pause"), goal(id="done")],
    )
    # Two journeys waiting for one event: whether a contact waits in both at once
    # depends on when each began, not on the definitions.
    waiting = [
        Journey(
            f"waits_in_{stage}",
            entry=stage_entered(stage),
            exit_when=UNSUBSCRIBED,
            steps=[
                wait_for("demo.requested", timeout=timedelta(days=7), on_timeout=END, id="a"),
                send("onboarding-quickstart", id="tips"),
            ],
        )
        for stage in ("lead", "opportunity")
    ]
    assert _warnings(survey, trial, late, done, silent, *waiting) == []


def test_the_window_is_declared_and_an_intended_overlap_is_declared_too() -> None:
    survey, late = _survey("nps_survey"), _survey("late", delay=timedelta(days=8))
    assert _warnings(survey, late) == []
    assert _where(_warnings(survey, late, overlap_window=timedelta(days=8))) == [
        ("late", "step 'survey'")
    ]
    assert (
        _warnings(
            survey,
            late,
            overlap_window=timedelta(days=14),
            intended_overlaps=[("late", "nps_survey")],
        )
        == []
    )
    assert _warnings(_survey("a"), _survey("b"), overlap_window=None) == []


def test_a_malformed_overlap_declaration_names_the_field_and_the_fix() -> None:
    a, b = _survey("a"), _survey("b")
    with pytest.raises(DefinitionsError, match=r"overlap_window=\.\.\.\) got 7: pass a positive"):
        _defs(a, b, overlap_window=7)
    with pytest.raises(DefinitionsError, match=r"got datetime.timedelta\(0\): pass a positive"):
        _defs(a, b, overlap_window=timedelta(0))
    with pytest.raises(DefinitionsError, match=r"intended_overlaps=\.\.\.\) got 'ab': list pairs"):
        _defs(a, b, intended_overlaps="ab")
    with pytest.raises(DefinitionsError, match=r"holds \('a',\), not a pair of journey names"):
        _defs(a, b, intended_overlaps=[("a",)])
    with pytest.raises(DefinitionsError, match="pairs 'a' with itself"):
        _defs(a, b, intended_overlaps=[("a", "a")])
    with pytest.raises(
        DefinitionsError, match=r"names journey 'nps', which is not among the project's journeys"
    ):
        _defs(a, b, intended_overlaps=[("a", "nps")])


# A wait the journey's own goal or exit criteria pre-empt.


def test_a_wait_for_the_goal_event_that_goes_on_to_more_steps_warns() -> None:
    journey = Journey(
        "upsell",
        entry=stage_entered("lead"),
        goal=event("order.paid"),
        steps=[
            send("trial-invitation", id="invite"),
            wait_for("order.paid", timeout=timedelta(days=14), on_timeout=END, id="await-order"),
            send("onboarding-welcome", id="thank-you"),
        ],
    )
    (warning,) = _warnings(journey)
    assert _where([warning]) == [("upsell", "step 'await-order'")]
    assert "waits for order.paid to go on to 'thank-you'" in warning.message
    assert "meets the journey's goal (event order.paid)" in warning.message
    assert "'thank-you' never runs" in warning.message
    assert "point the wait at a goal() step" in warning.fix


def test_a_wait_for_an_exit_event_warns_and_so_does_a_conversion_counted_as_an_exit() -> None:
    exit_when = event("demo.requested") | UNSUBSCRIBED
    goes_on = Journey(
        "demo_follow_up",
        entry=stage_entered("lead"),
        exit_when=exit_when,
        steps=[
            wait_for("demo.requested", timeout=timedelta(days=7), on_timeout=END, id="await-demo"),
            send("case-study-manufacturing", id="case-study"),
        ],
    )
    converts = Journey(
        "demo_goal",
        entry=stage_entered("lead"),
        exit_when=exit_when,
        steps=[
            wait_for("demo.requested", timeout=timedelta(days=7), on_timeout=END, id="await-demo"),
            goal(id="booked"),
        ],
    )
    first, second = _warnings(goes_on, converts)
    assert (first.journey, first.step) == ("demo_follow_up", "step 'await-demo'")
    assert "meets the journey's exit criteria (event demo.requested or" in first.message
    assert "the contact leaves the journey and 'case-study' never runs" in first.message
    assert (second.journey, second.step) == ("demo_goal", "step 'await-demo'")
    assert "counted as leaving, not as converting" in second.message
    assert "make the event the journey's goal" in second.fix


def test_a_filtered_wait_under_an_unfiltered_goal_warns_but_not_the_other_way() -> None:
    def journey(name: str, goal_where: object, wait_where: object) -> Journey:
        return Journey(
            name,
            entry=stage_entered("lead"),
            goal=event("order.paid", where=goal_where),  # type: ignore[arg-type]
            steps=[
                wait_for(
                    on_event("order.paid", where=wait_where).matcher,  # type: ignore[arg-type]
                    timeout=timedelta(days=7),
                    on_timeout=END,
                    id="await-order",
                ),
                send("onboarding-welcome", id="welcome"),
            ],
        )

    assert _where(_warnings(journey("narrow_wait", None, {"plan": "pro"}))) == [
        ("narrow_wait", "step 'await-order'")
    ]
    # Only a pro order meets the goal; any other order goes on to the welcome.
    assert _warnings(journey("narrow_goal", {"plan": "pro"}, None)) == []


def test_criteria_the_event_alone_does_not_meet_do_not_warn() -> None:
    def journey(name: str, **criteria: object) -> Journey:
        return Journey(
            name,
            entry=stage_entered("lead"),
            steps=[
                wait_for("order.paid", timeout=timedelta(days=7), on_timeout=END, id="await"),
                send("onboarding-welcome", id="welcome"),
            ],
            **criteria,  # type: ignore[arg-type]
        )

    quiet = [
        # A window: a late event can fall outside it.
        journey("windowed", goal=event("order.paid", within=timedelta(days=30))),
        # Twice: the first order goes on to the welcome.
        journey("twice", goal=event("order.paid", count=2)),
        # Together with something else the contact may lack.
        journey("and_score", goal=all_of(event("order.paid"), score_at_least(80))),
        # A filter the wait does not require: an order of another plan goes on.
        journey("pro_only", exit_when=event("order.paid", where={"plan": "pro"})),
        # Another event.
        journey("other", goal=event("trial.started"), exit_when=UNSUBSCRIBED),
    ]
    assert _warnings(*quiet, overlap_window=None) == []


def test_a_wait_for_the_goal_event_that_leads_to_the_same_ending_does_not_warn() -> None:
    journey = Journey(
        "trial",
        entry=stage_entered("lead"),
        goal=event("trial.started"),
        exit_when=event("email.unsubscribed"),
        steps=[
            wait_for("demo.requested", timeout=timedelta(days=7), on_timeout=END, id="a"),
            goal(id="started"),
        ],
    )
    ends = Journey(
        "leave",
        entry=stage_entered("lead"),
        exit_when=event("email.unsubscribed"),
        steps=[
            wait_for(
                "email.unsubscribed",
                timeout=timedelta(days=7),
                next=exit_to("unsubscribed"),
                on_timeout=END,
                id="b",
            ),
        ],
    )
    assert _warnings(journey, ends) == []


# A month-long wait with no way out.


def test_a_journey_without_goal_or_exit_that_can_hold_a_contact_a_month_warns() -> None:
    journey = Journey(
        "newsletter",
        entry=stage_entered("customer"),
        steps=[
            send("newsletter-monthly", id="first"),
            wait(timedelta(days=20), id="pause"),
            send("newsletter-monthly", id="second"),
            wait(timedelta(days=15), id="pause-again"),
            send("newsletter-monthly", id="third"),
        ],
    )
    (warning,) = _warnings(journey)
    assert (warning.journey, warning.step) == ("newsletter", "step 'pause-again'")
    assert "can still be waiting here 35d after entering" in warning.message
    assert "no goal and no exit criteria" in warning.message
    assert "give the journey goal=..." in warning.fix
    assert "exit_when=..." in warning.fix


def test_the_longest_path_counts_event_timeouts_and_times_of_day() -> None:
    # 29 days of waits, then up to a day to the next 09:00: 30 days.
    morning = Journey(
        "morning",
        entry=stage_entered("customer"),
        steps=[
            wait(timedelta(days=29), id="pause"),
            wait_until(time(9), id="nine"),
            send("newsletter-monthly", id="send"),
        ],
    )
    # An event may come a moment before its timeout: the path through it takes as long.
    waits = Journey(
        "waits",
        entry=stage_entered("customer"),
        steps=[
            wait_for("order.paid", timeout=timedelta(days=20), id="await-order"),
            send("newsletter-monthly", id="news"),
            wait(timedelta(days=10), id="pause"),
            send("newsletter-monthly", id="more-news"),
        ],
    )
    assert _where(_warnings(morning, waits)) == [
        ("morning", "step 'nine'"),
        ("waits", "step 'pause'"),
    ]


def test_a_loop_through_a_wait_without_goal_or_exit_warns() -> None:
    journey = Journey(
        "reminders",
        entry=stage_entered("lead"),
        steps=[
            send("trial-invitation", id="remind"),
            wait(timedelta(days=2), id="pause"),
            branch(score_at_least(80), then=END, else_="remind", id="ready"),
        ],
    )
    (warning,) = _warnings(journey)
    assert (warning.journey, warning.step) == ("reminders", "step 'pause'")
    assert "can loop back through this wait without end" in warning.message


def test_a_short_journey_or_one_with_a_goal_or_exit_does_not_warn() -> None:
    def long(name: str, **criteria: object) -> Journey:
        return Journey(
            name,
            entry=stage_entered("customer"),
            steps=[wait(timedelta(days=45), id="pause"), send("newsletter-monthly", id="s")],
            **criteria,  # type: ignore[arg-type]
        )

    short = Journey(
        "short",
        entry=stage_entered("lead"),
        steps=[
            wait(timedelta(days=14), id="pause"),
            send("trial-invitation", id="s"),
            wait(timedelta(days=15, hours=23), id="pause-2"),
            send("trial-invitation", id="t"),
        ],
    )
    assert (
        _warnings(
            long("with_goal", goal=event("order.paid")),
            long("with_exit", exit_when=UNSUBSCRIBED),
            short,
        )
        == []
    )
