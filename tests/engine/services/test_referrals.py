"""Referral fission in the engine: codes, screening, attribution, the tree, and rewards
that wait for a first purchase, respect the cap, and sit out the return window."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, delete, update
from sqlmodel import Session, col, select

from stagecoach.engine.domain.content import BUNDLED_CONTENT_DIR, ContentLibrary
from stagecoach.engine.services.ingest import Incoming, Ingestor
from stagecoach.engine.services.referrals import (
    CODE_ALPHABET,
    CODE_LENGTH,
    DEFAULT_POLICY,
    Claimed,
    RedemptionRefused,
    ReferralPolicy,
    ReferralRefused,
    UnknownReferrer,
    ancestors,
    attribute,
    cancel_reward,
    code_refusal,
    coupon_variables,
    decide_reward,
    find_code,
    issue_code,
    new_code,
    normalise_code,
    record_conversion,
    redeem_coupon,
    referral_tree,
    referral_variables,
    release_due_rewards,
    screen_signup,
    share_links,
)
from stagecoach.engine.services.storage.models import (
    Event,
    Outbox,
    Referral,
    ReferralCode,
    Reward,
    StageTransition,
)
from stagecoach.workflows.events import CATALOG

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture
def engine(db_engine: Engine) -> Engine:
    return db_engine


def contact(engine: Engine, name: str, **identities: str) -> str:
    """A stored contact with these identities (default: an email from ``name``)."""
    identities = identities or {"email": f"{name}@example.cn"}
    [[outcome]] = Ingestor(engine).store(
        [
            [
                Incoming(
                    kind="identify",
                    message_id=f"seed-{name}",
                    type="identify",
                    occurred_at=NOW - DAY,
                    identities=identities,
                )
            ]
        ]
    )
    return outcome.contact_id


def refer(
    engine: Engine, referrer: str, name: str, *, at: datetime = NOW, **identities: str
) -> str:
    """``referrer`` brings in a new contact ``name``; its id."""
    code = issue_code(engine, referrer, now=at).code
    claimed = Claimed(email=identities.get("email", f"{name}@example.cn"))
    screened = screen_signup(engine, code, claimed, now=at)
    referee = contact(engine, name, **(identities or {"email": f"{name}@example.cn"}))
    attribute(engine, screened.code, referee, now=at, channel="wechat")
    return referee


def events(engine: Engine, contact_id: str, name: str) -> list[Event]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(Event).where(col(Event.contact_id) == contact_id, col(Event.name) == name)
            ).all()
        )


def lose(engine: Engine, name: str) -> None:
    """Delete the events named ``name`` (and their outbox rows): as if never stored."""
    with Session(engine) as session:
        ids = select(Event.id).where(col(Event.name) == name)
        session.execute(delete(Outbox).where(col(Outbox.event_id).in_(ids)))
        session.execute(delete(Event).where(col(Event.name) == name))
        session.commit()


def became_customer(engine: Engine, contact_id: str, at: datetime) -> None:
    with Session(engine) as session:
        n = len(session.exec(select(StageTransition.id)).all())
        session.add(
            StageTransition(
                key=f"{contact_id}:{n + 2}",
                contact_id=contact_id,
                from_stage="opportunity",
                to_stage="customer",
                reason="purchased",
                source="workflow",
                at=at,
            )
        )
        session.commit()


# --- pure rules ---------------------------------------------------------------------------


def test_codes_are_ten_unambiguous_characters_and_do_not_repeat() -> None:
    codes = {new_code() for _ in range(2000)}
    assert len(codes) == 2000
    for code in codes:
        assert len(code) == CODE_LENGTH
        assert set(code) <= set(CODE_ALPHABET)
    assert not set("ILOU") & set(CODE_ALPHABET)


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("7kq2m9xh4c", "7KQ2M9XH4C"),
        (" 7KQ2-M9XH-4C ", "7KQ2M9XH4C"),
        ("OIL2M9XH4C", "0112M9XH4C"),  # read as the digits they look like
        ("7KQ2M9XH4", None),
        ("7KQ2M9XH4CC", None),
        ("7KQ2M9XH4U", None),
        ("<script>", None),
    ],
)
def test_a_typed_code_is_normalised_or_refused(typed: str, expected: str | None) -> None:
    assert normalise_code(typed) == expected


def test_share_links_tag_the_channel() -> None:
    assert share_links("https://mkt.example.com/", "7KQ2M9XH4C") == {
        "wechat": "https://mkt.example.com/r/7KQ2M9XH4C?ch=wechat",
        "email": "https://mkt.example.com/r/7KQ2M9XH4C?ch=email",
    }


def test_code_refusal_says_expired_before_used_up() -> None:
    assert code_refusal(expires_at=NOW + DAY, uses=0, max_uses=1, now=NOW) is None
    assert code_refusal(expires_at=NOW + DAY, uses=1, max_uses=1, now=NOW) == "used_up"
    assert code_refusal(expires_at=NOW, uses=1, max_uses=1, now=NOW) == "expired_code"
    naive = (NOW + DAY).replace(tzinfo=None)  # as SQLite hands it back
    assert code_refusal(expires_at=naive, uses=0, max_uses=1, now=NOW) is None


@pytest.mark.parametrize(
    ("before", "earned", "available", "reason"),
    [
        (False, 0, True, "rewarded"),
        (False, 9, True, "rewarded"),
        (False, 10, True, "cap_reached"),
        (True, 0, True, "not_first_purchase"),
        (False, 0, False, "reward_unavailable"),
    ],
)
def test_only_a_first_purchase_under_the_cap_earns_a_reward(
    before: bool, earned: int, available: bool, reason: str
) -> None:
    assert (
        decide_reward(
            customer_before_referral=before, rewards_in_period=earned, reward_available=available
        )
        == reason
    )


def test_policy_reads_settings_and_keeps_defaults_for_the_rest() -> None:
    @dataclass
    class Partial:
        referral_reward_cap: int = 3
        referral_return_window_days: int = 30

    policy = ReferralPolicy.from_settings(Partial())
    assert (policy.reward_cap, policy.return_window) == (3, timedelta(days=30))
    assert policy.code_ttl == DEFAULT_POLICY.code_ttl
    assert ReferralPolicy.from_settings(object()) == DEFAULT_POLICY
    with pytest.raises(ValueError, match="max_uses"):
        ReferralPolicy(max_uses=0)


def test_the_events_recorded_are_in_the_catalog_with_their_properties() -> None:
    for name, prop in [
        ("referral.signed_up", "referred_contact_id"),
        ("referral.converted", "referred_contact_id"),
        ("coupon.redeemed", "code"),
    ]:
        assert prop in CATALOG.get(name).properties


# --- codes --------------------------------------------------------------------------------


def test_promoter_gets_one_live_referral_code(engine: Engine) -> None:
    promoter = contact(engine, "promoter")
    first = issue_code(engine, promoter, now=NOW)
    again = issue_code(engine, promoter, now=NOW + 10 * DAY)
    assert again.code == first.code
    assert (first.referrer_id, first.uses, first.generation) == (promoter, 0, 1)
    assert first.expires_at == NOW + timedelta(days=180)
    assert first.created_at == NOW


def test_a_new_code_is_issued_once_the_last_expires_or_is_used_up(engine: Engine) -> None:
    promoter = contact(engine, "promoter")
    first = issue_code(engine, promoter, now=NOW, ttl=7 * DAY)
    second = issue_code(engine, promoter, now=NOW + 7 * DAY)
    assert second.code != first.code
    assert second.generation == 2
    with Session(engine) as session:
        session.execute(
            update(ReferralCode).where(col(ReferralCode.code) == second.code).values(uses=50)
        )
        session.commit()
    third = issue_code(engine, promoter, now=NOW + 8 * DAY)
    assert (third.generation, third.code not in (first.code, second.code)) == (3, True)


def test_a_code_for_an_unknown_contact_is_refused(engine: Engine) -> None:
    with pytest.raises(UnknownReferrer, match="c_nobody"):
        issue_code(engine, "c_nobody", now=NOW)


# --- screening and attribution ------------------------------------------------------------


def test_unknown_expired_and_used_up_codes_are_refused(engine: Engine) -> None:
    promoter = contact(engine, "promoter")
    code = issue_code(engine, promoter, now=NOW, ttl=DAY).code
    with pytest.raises(ReferralRefused) as unknown:
        find_code(engine, "ZZZZZZZZZZ", now=NOW)
    assert unknown.value.reason == "unknown_code"
    with pytest.raises(ReferralRefused) as malformed:
        find_code(engine, "nope", now=NOW)
    assert malformed.value.reason == "unknown_code"
    with pytest.raises(ReferralRefused) as expired:
        find_code(engine, code, now=NOW + DAY)
    assert expired.value.reason == "expired_code"
    assert "ask whoever shared it" in expired.value.one_line()
    with Session(engine) as session:
        session.execute(update(ReferralCode).values(uses=50))
        session.commit()
    with pytest.raises(ReferralRefused) as used:
        screen_signup(engine, code, Claimed(email="new@example.cn"), now=NOW)
    assert used.value.reason == "used_up"


@pytest.mark.parametrize(
    "claimed",
    [
        Claimed(email="promoter@example.cn"),
        Claimed(email="someone@example.cn", phone="+8613800138000"),
        Claimed(email="someone@example.cn", wechat_openid="oWx-promoter-openid"),
        Claimed(email="someone@example.cn", device_id="device-of-the-promoter"),
    ],
    ids=["email", "phone", "openid", "device"],
)
def test_a_referrer_cannot_refer_themselves(engine: Engine, claimed: Claimed) -> None:
    promoter = contact(
        engine,
        "promoter",
        email="promoter@example.cn",
        phone="+8613800138000",
        wechat_openid="oWx-promoter-openid",
        anonymous_id="device-of-the-promoter",
    )
    code = issue_code(engine, promoter, now=NOW).code
    with pytest.raises(ReferralRefused) as refused:
        screen_signup(engine, code, claimed, now=NOW)
    assert refused.value.reason == "self_referral"


def test_the_device_a_referee_signed_up_on_is_theirs_when_they_refer(engine: Engine) -> None:
    root = contact(engine, "root")
    code = issue_code(engine, root, now=NOW).code
    child = contact(engine, "child")
    attribute(engine, code, child, now=NOW, device_id="phone-of-child")
    child_code = issue_code(engine, child, now=NOW).code
    with pytest.raises(ReferralRefused) as refused:
        screen_signup(
            engine,
            child_code,
            Claimed(email="fake@example.cn", device_id="phone-of-child"),
            now=NOW,
        )
    assert refused.value.reason == "self_referral"


def test_attribution_is_once_per_referee_and_counts_one_use(engine: Engine) -> None:
    promoter, other = contact(engine, "promoter"), contact(engine, "other")
    code = issue_code(engine, promoter, now=NOW).code
    friend = contact(engine, "friend")
    first = attribute(engine, code, friend, now=NOW, channel="email", device_id="dev-12345")
    again = attribute(engine, code, friend, now=NOW + DAY)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.referral.id == first.referral.id
    assert (first.referral.referrer_id, first.referral.channel) == (promoter, "email")
    with Session(engine) as session:
        assert session.get(ReferralCode, code).uses == 1  # type: ignore[union-attr]
    # Screening the same person again: the earlier referral, not a refusal.
    screened = screen_signup(engine, code, Claimed(email="friend@example.cn"), now=NOW)
    assert screened.earlier is not None
    assert screened.earlier.id == first.referral.id
    # Another promoter's code: the first referrer keeps them.
    other_code = issue_code(engine, other, now=NOW).code
    with pytest.raises(ReferralRefused) as refused:
        screen_signup(engine, other_code, Claimed(email="friend@example.cn"), now=NOW)
    assert refused.value.reason == "already_referred"
    with pytest.raises(ReferralRefused):
        attribute(engine, other_code, friend, now=NOW)


def test_signing_up_again_through_the_same_referrers_next_code_is_no_new_referral(
    engine: Engine,
) -> None:
    promoter = contact(engine, "promoter")
    first_code = issue_code(engine, promoter, now=NOW, ttl=DAY).code
    friend = contact(engine, "friend")
    first = attribute(engine, first_code, friend, now=NOW)
    next_code = issue_code(engine, promoter, now=NOW + 2 * DAY).code
    assert next_code != first_code
    screened = screen_signup(engine, next_code, Claimed(email="friend@example.cn"), now=NOW)
    assert screened.earlier is not None
    again = attribute(engine, next_code, friend, now=NOW + 2 * DAY)
    assert again.duplicate
    assert again.referral.id == first.referral.id


def test_the_last_use_of_a_code_is_taken_once(engine: Engine) -> None:
    promoter = contact(engine, "promoter")
    code = issue_code(engine, promoter, now=NOW, policy=ReferralPolicy(max_uses=1)).code
    attribute(engine, code, contact(engine, "first"), now=NOW)
    with pytest.raises(ReferralRefused) as refused:
        attribute(engine, code, contact(engine, "second"), now=NOW)
    assert refused.value.reason == "used_up"


def test_a_referrer_cannot_be_referred_by_their_own_referee(engine: Engine) -> None:
    root = contact(engine, "root")
    child = refer(engine, root, "child")
    grandchild = refer(engine, child, "grandchild")
    code = issue_code(engine, grandchild, now=NOW).code
    with pytest.raises(ReferralRefused) as refused:
        screen_signup(engine, code, Claimed(email="root@example.cn"), now=NOW)
    assert refused.value.reason == "referral_loop"
    with pytest.raises(ReferralRefused):
        attribute(engine, code, root, now=NOW)


# --- the tree -----------------------------------------------------------------------------


def test_referrals_form_a_tree_of_any_depth(engine: Engine) -> None:
    root = contact(engine, "root")
    a = refer(engine, root, "a")
    b = refer(engine, root, "b", at=NOW + DAY)
    a1 = refer(engine, a, "a1")
    a11 = refer(engine, a1, "a11")
    tree = referral_tree(engine, root)
    assert tree["contact_id"] == root
    assert [c["contact_id"] for c in tree["children"]] == [a, b]
    [a_node, b_node] = tree["children"]
    assert a_node["children"][0]["contact_id"] == a1
    assert a_node["children"][0]["children"][0]["contact_id"] == a11
    assert (b_node["channel"], b_node["status"], b_node["children"]) == ("wechat", "signed_up", [])
    assert ancestors(engine, a11) == [a1, a, root]
    assert ancestors(engine, root) == []
    assert referral_tree(engine, a11) == {"contact_id": a11, "children": []}


def test_a_merged_referrer_keeps_their_code_and_referrals(engine: Engine) -> None:
    promoter = contact(engine, "promoter", email="promoter@example.cn")
    code = issue_code(engine, promoter, now=NOW).code
    friend = refer(engine, promoter, "friend")
    # The promoter's phone was another contact; an identify with both merges them.
    other = contact(engine, "phone-only", phone="+8613900139000")
    Ingestor(engine).store(
        [
            [
                Incoming(
                    kind="identify",
                    message_id="merge-them",
                    type="identify",
                    occurred_at=NOW,
                    identities={"phone": "+8613900139000", "email": "promoter@example.cn"},
                )
            ]
        ]
    )
    survivor = promoter if ancestors(engine, friend) == [promoter] else other
    assert ancestors(engine, friend) == [survivor]
    assert issue_code(engine, survivor, now=NOW).code == code
    assert [c["contact_id"] for c in referral_tree(engine, survivor)["children"]] == [friend]


# --- conversion and rewards ---------------------------------------------------------------


def test_a_contact_nobody_referred_earns_nobody_anything(engine: Engine) -> None:
    decision = record_conversion(engine, contact(engine, "walk-in"), at=NOW)
    assert (decision.referred, decision.rewarded, decision.reason) == (False, False, "not_referred")


def test_signing_up_earns_nothing_converting_earns_a_held_coupon(engine: Engine) -> None:
    promoter = contact(engine, "promoter")
    friend = refer(engine, promoter, "friend")
    assert events(engine, promoter, "referral.converted") == []
    with Session(engine) as session:
        assert session.exec(select(Reward)).all() == []
    at = NOW + 20 * DAY
    became_customer(engine, friend, at)
    decision = record_conversion(engine, friend, at=at)
    assert (decision.referred, decision.rewarded, decision.reason) == (True, True, "rewarded")
    assert decision.referrer_id == promoter
    assert decision.content_id == "coupon-annual-plan"
    assert decision.hold_until == at + timedelta(days=14)
    assert decision.coupon_code is not None
    assert decision.coupon_code.startswith("REF-")
    [event] = events(engine, promoter, "referral.converted")
    assert event.properties["referred_contact_id"] == friend
    assert event.properties["rewarded"] is True
    with Session(engine) as session:
        reward = session.exec(select(Reward)).one()
        referral = session.exec(select(Referral)).one()
    assert (reward.status, reward.referrer_id, reward.referral_id) == (
        "held",
        promoter,
        referral.id,
    )
    assert (referral.status, referral.outcome) == ("converted", "rewarded")


def test_a_second_conversion_is_the_first_decision_again(engine: Engine) -> None:
    promoter = contact(engine, "promoter")
    friend = refer(engine, promoter, "friend")
    first = record_conversion(engine, friend, at=NOW + DAY)
    lose(engine, "referral.converted")  # the first call's event was lost
    cancel_reward(engine, friend, "returned", at=NOW + 2 * DAY)
    again = record_conversion(engine, friend, at=NOW + 40 * DAY)
    assert (first.reward_status, again.reward_status) == ("held", "cancelled")
    assert again.duplicate
    assert not first.duplicate
    assert (again.reward_id, again.coupon_code) == (first.reward_id, first.coupon_code)
    assert len(events(engine, promoter, "referral.converted")) == 1
    with Session(engine) as session:
        assert len(session.exec(select(Reward)).all()) == 1


def test_a_referee_who_had_bought_before_earns_no_reward(engine: Engine) -> None:
    promoter = contact(engine, "promoter")
    customer = contact(engine, "customer")
    became_customer(engine, customer, NOW - 100 * DAY)
    code = issue_code(engine, promoter, now=NOW).code
    attribute(engine, code, customer, now=NOW)
    decision = record_conversion(engine, customer, at=NOW + DAY)
    assert (decision.referred, decision.rewarded, decision.reason) == (
        True,
        False,
        "not_first_purchase",
    )
    assert events(engine, promoter, "referral.converted") == []


def test_rewards_stop_at_the_cap_per_period_but_conversions_still_count(engine: Engine) -> None:
    policy = ReferralPolicy(reward_cap=2, reward_period=timedelta(days=30))
    promoter = contact(engine, "promoter")
    friends = [refer(engine, promoter, f"friend{n}") for n in range(4)]
    reasons = [
        record_conversion(engine, f, at=NOW + n * DAY, policy=policy).reason
        for n, f in enumerate(friends[:3])
    ]
    assert reasons == ["rewarded", "rewarded", "cap_reached"]
    assert len(events(engine, promoter, "referral.converted")) == 3
    later = record_conversion(engine, friends[3], at=NOW + 31 * DAY, policy=policy)
    assert later.reason == "rewarded"  # the first reward left the window


def test_no_reward_when_the_coupon_content_has_expired(engine: Engine) -> None:
    library = ContentLibrary.load(BUNDLED_CONTENT_DIR)
    promoter = contact(engine, "promoter")
    friend = refer(engine, promoter, "friend")
    late = datetime(2027, 7, 1, tzinfo=UTC)  # coupon-annual-plan expires 2027-06-30
    decision = record_conversion(engine, friend, at=late, library=library)
    assert (decision.rewarded, decision.reason) == (False, "reward_unavailable")
    assert len(events(engine, promoter, "referral.converted")) == 1


def test_rewards_are_released_after_the_return_window(engine: Engine) -> None:
    promoter = contact(engine, "promoter")
    friend = refer(engine, promoter, "friend")
    decision = record_conversion(engine, friend, at=NOW)
    assert release_due_rewards(engine, NOW + 13 * DAY) == []
    [released] = release_due_rewards(engine, NOW + 14 * DAY)
    assert (released.id, released.status) == (decision.reward_id, "released")
    assert release_due_rewards(engine, NOW + 15 * DAY) == []
    [event] = events(engine, promoter, "referral.reward_released")
    assert event.properties["coupon_code"] == decision.coupon_code
    # A release whose event was lost gets it on the next run.
    lose(engine, "referral.reward_released")
    assert release_due_rewards(engine, NOW + 16 * DAY) == []
    assert len(events(engine, promoter, "referral.reward_released")) == 1


def test_a_return_within_the_window_cancels_the_reward(engine: Engine) -> None:
    promoter = contact(engine, "promoter")
    friend = refer(engine, promoter, "friend")
    record_conversion(engine, friend, at=NOW)
    reward = cancel_reward(engine, friend, "order returned", at=NOW + 3 * DAY)
    assert reward is not None
    assert (reward.status, reward.cancel_reason) == ("cancelled", "order returned")
    assert release_due_rewards(engine, NOW + 30 * DAY) == []
    [event] = events(engine, promoter, "referral.reward_cancelled")
    assert event.properties["reason"] == "order returned"
    with Session(engine) as session:
        assert session.exec(select(Referral)).one().status == "returned"
    with pytest.raises(RedemptionRefused) as refused:
        redeem_coupon(engine, reward.coupon_code, at=NOW + 30 * DAY)
    assert refused.value.reason == "cancelled"


def test_a_return_after_the_window_changes_nothing(engine: Engine) -> None:
    promoter = contact(engine, "promoter")
    friend = refer(engine, promoter, "friend")
    record_conversion(engine, friend, at=NOW)
    release_due_rewards(engine, NOW + 14 * DAY)
    reward = cancel_reward(engine, friend, "late return", at=NOW + 20 * DAY)
    assert reward is not None
    assert reward.status == "released"
    assert cancel_reward(engine, contact(engine, "walk-in"), "return") is None


def test_a_released_coupon_is_redeemed_once(engine: Engine) -> None:
    promoter = contact(engine, "promoter")
    friend = refer(engine, promoter, "friend")
    decision = record_conversion(engine, friend, at=NOW)
    assert decision.coupon_code is not None
    with pytest.raises(RedemptionRefused) as held:
        redeem_coupon(engine, decision.coupon_code, at=NOW + DAY)
    assert held.value.reason == "held"
    release_due_rewards(engine, NOW + 14 * DAY)
    first = redeem_coupon(engine, decision.coupon_code.lower(), at=NOW + 15 * DAY)
    again = redeem_coupon(engine, decision.coupon_code, at=NOW + 16 * DAY)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.reward.redeemed_at is not None
    assert again.reward.redeemed_at.replace(tzinfo=UTC) == NOW + 15 * DAY
    assert first.referrer_id == promoter
    with pytest.raises(RedemptionRefused) as unknown:
        redeem_coupon(engine, "REF-NOPE", at=NOW)
    assert unknown.value.reason == "unknown_coupon"


def test_content_gets_the_promoters_code_and_the_referrers_coupon(engine: Engine) -> None:
    promoter = contact(engine, "promoter")
    offer = referral_variables(
        engine, promoter, channel="wechat", base_url="https://mkt.example.com", now=NOW
    )
    code = issue_code(engine, promoter, now=NOW).code
    assert offer == {
        "referral_code": code,
        "referral_url": f"https://mkt.example.com/r/{code}?ch=wechat",
    }
    assert coupon_variables(engine, promoter) == {}
    friend = refer(engine, promoter, "friend")
    decision = record_conversion(engine, friend, at=NOW)
    assert coupon_variables(engine, promoter) == {}  # held
    release_due_rewards(engine, NOW + 14 * DAY)
    assert coupon_variables(engine, promoter) == {"coupon_code": decision.coupon_code}
    assert decision.coupon_code is not None
    redeem_coupon(engine, decision.coupon_code, at=NOW + 15 * DAY)
    assert coupon_variables(engine, promoter) == {}


@pytest.mark.postgres
def test_the_whole_programme_on_postgres(engine: Engine) -> None:
    assert engine.dialect.name == "postgresql"
    promoter = contact(engine, "promoter")
    friend = refer(engine, promoter, "friend")
    assert issue_code(engine, promoter, now=NOW).uses == 1
    decision = record_conversion(engine, friend, at=NOW + DAY)
    assert decision.rewarded
    assert decision.hold_until == NOW + 15 * DAY
    [released] = release_due_rewards(engine, NOW + 15 * DAY)
    assert released.id == decision.reward_id
    assert release_due_rewards(engine, NOW + 16 * DAY) == []
    assert decision.coupon_code is not None
    assert not redeem_coupon(engine, decision.coupon_code, at=NOW + 16 * DAY).duplicate
    assert referral_tree(engine, promoter)["children"][0]["status"] == "converted"
