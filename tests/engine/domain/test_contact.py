from datetime import UTC, datetime, timedelta

import pytest

from stagecoach.engine.domain.conditions import EventRecord
from stagecoach.engine.domain.contact import (
    ContactState,
    event_problem,
    facts,
    new_contact,
    observe,
)
from stagecoach.workflows.pipeline import DEFAULT

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def _observe(state: ContactState, type: str, mid: str, **kw: object):
    props = kw.pop("properties", {})
    traits = kw.pop("traits", {})
    at = kw.pop("at", NOW)
    return observe(
        state,
        DEFAULT,
        message_id=mid,
        event=EventRecord(type, at, props),  # type: ignore[arg-type]
        traits=traits,  # type: ignore[arg-type]
        now=at,  # type: ignore[arg-type]
        source="test",
    )


def test_new_contact_starts_at_the_first_stage() -> None:
    assert new_contact("c", DEFAULT, NOW).stage == "suspect"


def test_download_moves_suspect_to_prospect_with_reason_and_trigger() -> None:
    seen = _observe(new_contact("c", DEFAULT, NOW), "content.downloaded", "m1")
    assert seen.transition is not None
    assert (seen.transition.from_stage, seen.transition.to_stage) == ("suspect", "prospect")
    assert seen.transition.trigger_message_id == "m1"


def test_same_message_id_is_a_duplicate_and_changes_nothing() -> None:
    first = _observe(
        new_contact("c", DEFAULT, NOW), "page.viewed", "m1", properties={"category": "pricing"}
    )
    again = _observe(first.state, "page.viewed", "m1", properties={"category": "pricing"})
    assert again.duplicate
    assert again.state == first.state


def test_traits_become_attributes_and_grade_the_contact() -> None:
    seen = _observe(
        new_contact("c", DEFAULT, NOW),
        "page.viewed",
        "m1",
        traits={"industry": "manufacturing", "company_size": 500, "role": "cto", "email": "a@b.cn"},
    )
    assert seen.state.attributes["email"] == "a@b.cn"
    assert seen.state.grade == "A"
    assert "decision_maker" in seen.state.grade_rules


def test_unsubscribe_withdraws_email_consent_and_resubscribe_restores_wechat() -> None:
    state = _observe(
        new_contact("c", DEFAULT, NOW),
        "page.viewed",
        "m0",
        traits={"email": "a@b.cn", "wechat_openid": "oX1"},
    ).state
    assert state.consented("email")
    assert not state.consented("wechat")  # WeChat needs a follow
    state = _observe(state, "email.unsubscribed", "m1").state
    state = _observe(state, "wechat.subscribed", "m2").state
    assert not state.consented("email")
    assert state.consented("wechat")


@pytest.mark.parametrize(("locale", "expected"), [("zh-CN", "wechat"), ("en", "email")])
def test_preferred_channel_follows_locale_when_both_are_open(locale: str, expected: str) -> None:
    state = _observe(
        new_contact("c", DEFAULT, NOW),
        "wechat.subscribed",
        "m0",
        traits={"email": "a@b.cn", "wechat_openid": "oX1", "locale": locale},
    ).state
    assert state.preferred_channel() == expected


def test_score_decays_with_the_half_life_in_facts() -> None:
    state = _observe(new_contact("c", DEFAULT, NOW), "content.downloaded", "m1").state
    assert facts(state, DEFAULT, NOW).score == pytest.approx(15)
    assert facts(state, DEFAULT, NOW + timedelta(days=30)).score == pytest.approx(7.5)


def test_state_round_trips_for_continue_as_new() -> None:
    state = _observe(
        new_contact("c", DEFAULT, NOW),
        "content.downloaded",
        "m1",
        traits={"email": "a@b.cn", "consent": {"wechat": True}},
    ).state
    assert ContactState.from_dict(state.to_dict()) == state


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("message_id", {"message_id": ""}),
        ("type", {"type": " "}),
        ("occurred_at", {"occurred_at": "yesterday"}),
        ("occurred_at", {"occurred_at": datetime(2026, 1, 1)}),
        ("properties", {"properties": ["not", "an", "object"]}),
        ("traits.consent", {"traits": {"consent": "yes"}}),
    ],
)
def test_malformed_event_names_the_field_and_the_fix(field: str, kwargs: dict[str, object]) -> None:
    event: dict[str, object] = {
        "message_id": "m",
        "type": "page.viewed",
        "occurred_at": NOW,
        "properties": {},
        "traits": {},
    }
    event.update(kwargs)
    problem = event_problem(**event)
    assert problem is not None
    assert problem.startswith(field)
    assert ":" in problem
