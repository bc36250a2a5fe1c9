"""The referral landing page and coupon redemption through HTTP: a sign-up is attributed
with its consent wording, every refusal says why (and stores nothing), and a released
coupon's redemption is a touchpoint on the referrer."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, func, update
from sqlmodel import Session, col, select

from stagecoach.engine.api.routes.events import create_write_key
from stagecoach.engine.api.routes.referrals import (
    CONSENT_WORDING,
    DEVICE_COOKIE,
    negotiate_locale,
    parse_signup,
    router,
)
from stagecoach.engine.app import create_app
from stagecoach.engine.domain.content import BUNDLED_CONTENT_DIR
from stagecoach.engine.services.ingest import Incoming, Ingestor
from stagecoach.engine.services.referrals import (
    issue_code,
    record_conversion,
    referral_tree,
    release_due_rewards,
)
from stagecoach.engine.services.storage.models import (
    Consent,
    Contact,
    Event,
    Identity,
    Referral,
    ReferralCode,
    Reward,
)
from stagecoach.engine.settings import Settings
from tests.helpers import migrated_engine

ADMIN = "admin-token-for-referral-tests-0123456789"
PROMOTER_EMAIL = "wang.fang@example.cn"
PROMOTER_PHONE = "+8613800138000"
PROMOTER_DEVICE = "device-of-wang-fang"
FRIEND = {"name": "李雷", "email": "li.lei@example.cn", "consent": "yes"}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = migrated_engine(f"sqlite:///{tmp_path}/referrals.db")
    yield db
    db.dispose()


def make_app(engine: Engine, tmp_path: Path) -> FastAPI:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path}/referrals.db",
        admin_token=SecretStr(ADMIN),
        public_url="https://mkt.example.com",
    )
    app = create_app(settings, db=engine)
    if not any(getattr(r, "path", None) == "/r/{code}" for r in app.routes):
        app.include_router(router)  # until create_app includes it
    return app


@pytest.fixture
def api(engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(make_app(engine, tmp_path)) as client:
        yield client


@pytest.fixture
def promoter(engine: Engine) -> str:
    [[outcome]] = Ingestor(engine).store(
        [
            [
                Incoming(
                    kind="identify",
                    message_id="seed-promoter",
                    type="identify",
                    occurred_at=datetime.now(UTC) - timedelta(days=30),
                    identities={
                        "email": PROMOTER_EMAIL,
                        "phone": PROMOTER_PHONE,
                        "wechat_openid": "oWx-wang-fang-openid",
                        "anonymous_id": PROMOTER_DEVICE,
                    },
                )
            ]
        ]
    )
    return outcome.contact_id


@pytest.fixture
def code(engine: Engine, promoter: str) -> str:
    return issue_code(engine, promoter, now=datetime.now(UTC)).code


def counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as session:
        return {
            model.__name__: session.exec(select(func.count()).select_from(model)).one()
            for model in (Contact, Identity, Event, Consent, Referral)
        }


def json_errors(response: Any) -> list[str]:
    return [e["field"] for e in response.json()["errors"]]


# --- the page -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        (None, "zh-CN"),
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        ("en-US,en;q=0.9", "en"),
        ("fr-FR, en;q=0.5, zh;q=0.4", "en"),
        ("de-DE", "zh-CN"),
        ("en;q=0.3, zh-TW;q=0.7", "zh-CN"),
    ],
)
def test_the_page_speaks_the_readers_language(header: str | None, lang: str) -> None:
    assert negotiate_locale(header) == lang
    assert negotiate_locale(header, "en") == "en"


@pytest.mark.parametrize(("accept", "lang"), [("zh-CN,zh;q=0.9", "zh-CN"), ("en-GB", "en")])
def test_the_landing_page_is_a_form_without_javascript(
    api: TestClient, code: str, accept: str, lang: str
) -> None:
    response = api.get(f"/r/{code}?ch=wechat", headers={"Accept-Language": accept})
    assert response.status_code == 200
    page = response.text
    assert f'<html lang="{lang}">' in page
    assert "<script" not in page
    assert '<form method="post">' in page
    assert CONSENT_WORDING[lang] in page  # type: ignore[index]
    assert 'name="consent"' in page
    assert '<input type="hidden" name="ch" value="wechat">' in page
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    device = response.cookies.get(DEVICE_COOKIE)
    assert device is not None
    assert f'name="device_id" value="{device}"' in page


def test_a_json_client_gets_the_codes_state(api: TestClient, code: str) -> None:
    response = api.get(f"/r/{code.lower()}", headers={"Accept": "application/json"})
    assert response.status_code == 200
    assert response.json()["code"] == code


# --- sign-up ------------------------------------------------------------------------------


def test_a_signup_is_attributed_with_its_consent_wording(
    api: TestClient, engine: Engine, code: str, promoter: str
) -> None:
    response = api.post(
        f"/r/{code}",
        data={**FRIEND, "phone": "13900139000", "ch": "wechat", "lang": "zh-CN"},
    )
    assert response.status_code == 200, response.text
    assert "注册成功" in response.text
    with Session(engine) as session:
        referral = session.exec(select(Referral)).one()
        assert (referral.code, referral.referrer_id, referral.channel, referral.status) == (
            code,
            promoter,
            "wechat",
            "signed_up",
        )
        friend = referral.referee_id
        assert friend != promoter
        identify = session.exec(
            select(Event).where(col(Event.contact_id) == friend, col(Event.name) == "identify")
        ).one()
        traits = identify.context["traits"]
        assert traits["email"] == "li.lei@example.cn"
        assert traits["phone"] == "+8613900139000"
        assert traits["name"] == "李雷"
        assert traits["referred_by"] == promoter
        assert traits["referral_code"] == code
        assert traits["consent"] == {"email": True, "phone": True}
        assert traits["consent_wording"] == CONSENT_WORDING["zh-CN"]
        consents = session.exec(select(Consent).where(col(Consent.contact_id) == friend)).all()
        assert {(c.channel, c.granted, c.wording) for c in consents} == {
            ("email", True, CONSENT_WORDING["zh-CN"]),
            ("phone", True, CONSENT_WORDING["zh-CN"]),
        }
        signed_up = session.exec(select(Event).where(col(Event.name) == "referral.signed_up")).one()
        assert signed_up.contact_id == promoter
        assert signed_up.properties["referred_contact_id"] == friend
        assert session.get(ReferralCode, code).uses == 1  # type: ignore[union-attr]


def test_posting_the_same_form_again_records_nothing_new(
    api: TestClient, engine: Engine, code: str
) -> None:
    first = api.post(f"/r/{code}", json={**FRIEND, "consent": True})
    before = counts(engine)
    again = api.post(f"/r/{code}", json={**FRIEND, "consent": True})
    assert (first.status_code, again.status_code) == (200, 200)
    assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
    assert counts(engine) == before
    with Session(engine) as session:
        assert session.get(ReferralCode, code).uses == 1  # type: ignore[union-attr]


def test_missing_consent_is_refused_naming_the_field(
    api: TestClient, engine: Engine, code: str
) -> None:
    before = counts(engine)
    as_json = api.post(f"/r/{code}", json={"name": "李雷", "email": "li.lei@example.cn"})
    assert as_json.status_code == 400
    assert json_errors(as_json) == ["consent"]
    as_page = api.post(
        f"/r/{code}",
        data={"name": "Li Lei", "email": "li.lei@example.cn", "lang": "en"},
    )
    assert as_page.status_code == 400
    assert "tick the box" in as_page.text
    assert 'value="li.lei@example.cn"' in as_page.text  # what was typed is kept
    assert counts(engine) == before


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"email": "li.lei@example.cn", "consent": True}, ["name"]),
        ({"name": "Li", "consent": True}, ["email"]),
        ({"name": "Li", "email": "not-an-address", "consent": True}, ["email"]),
        ({"name": "Li", "phone": "12", "consent": True}, ["phone"]),
        ({"name": "Li", "email": "li@example.cn", "consent": "no"}, ["consent"]),
        ({"name": "x" * 129, "email": "li@example.cn", "consent": True}, ["name"]),
        (
            {"name": "Li", "email": "li@example.cn", "consent": True, "device_id": "a b"},
            ["device_id"],
        ),
        ({}, ["name", "email", "consent"]),
    ],
)
def test_bad_fields_are_refused_by_name(
    api: TestClient, engine: Engine, code: str, body: dict[str, Any], fields: list[str]
) -> None:
    before = counts(engine)
    response = api.post(f"/r/{code}", json=body)
    assert response.status_code == 400
    assert json_errors(response) == fields
    assert counts(engine) == before


def test_a_body_that_is_no_form_is_refused(api: TestClient, code: str) -> None:
    response = api.post(
        f"/r/{code}", content=b"[1, 2]", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert json_errors(response) == ["body"]


def test_parse_signup_reads_a_chinese_mobile_without_country_code() -> None:
    signup = parse_signup({"name": "李雷", "phone": "139 0013 9000", "consent": "on"})
    assert not isinstance(signup, list)
    assert (signup.phone, signup.email) == ("+8613900139000", None)


# --- refusals -----------------------------------------------------------------------------


def test_an_unknown_code_is_404_on_the_page_and_for_a_client(
    api: TestClient, engine: Engine
) -> None:
    page = api.get("/r/ZZZZZZZZZZ", headers={"Accept-Language": "en"})
    assert page.status_code == 404
    assert "does not work" in page.text
    client = api.post("/r/ZZZZZZZZZZ", json={**FRIEND, "consent": True})
    assert client.status_code == 404
    assert client.json()["reason"] == "unknown_code"
    assert "no referral code" in client.json()["error"]
    assert api.get("/r/not-a-code").status_code == 404


def test_an_expired_code_is_410(api: TestClient, engine: Engine, code: str) -> None:
    with Session(engine) as session:
        session.execute(
            update(ReferralCode).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        session.commit()
    before = counts(engine)
    page = api.get(f"/r/{code}")
    assert page.status_code == 410
    assert "邀请已过期" in page.text
    client = api.post(f"/r/{code}", json={**FRIEND, "consent": True})
    assert (client.status_code, client.json()["reason"]) == (410, "expired_code")
    assert counts(engine) == before


def test_a_used_up_code_is_409(api: TestClient, engine: Engine, code: str) -> None:
    with Session(engine) as session:
        session.execute(update(ReferralCode).values(max_uses=1))
        session.commit()
    assert api.post(f"/r/{code}", json={**FRIEND, "consent": True}).status_code == 200
    before = counts(engine)
    second = api.post(
        f"/r/{code}", json={"name": "Han Meimei", "email": "han@example.cn", "consent": True}
    )
    assert (second.status_code, second.json()["reason"]) == (409, "used_up")
    assert api.get(f"/r/{code}", headers={"Accept": "application/json"}).status_code == 409
    assert counts(engine) == before
    # The one who used it last may post again: that is not a new use.
    assert api.post(f"/r/{code}", json={**FRIEND, "consent": True}).json()["duplicate"] is True


@pytest.mark.parametrize(
    ("extra", "cookie"),
    [
        ({"email": PROMOTER_EMAIL}, None),
        ({"email": "other@example.cn", "phone": PROMOTER_PHONE}, None),
        ({"email": "other@example.cn", "wechat_openid": "oWx-wang-fang-openid"}, None),
        ({"email": "other@example.cn", "device_id": PROMOTER_DEVICE}, None),
        ({"email": "other@example.cn"}, PROMOTER_DEVICE),
    ],
    ids=["email", "phone", "openid", "device-field", "device-cookie"],
)
def test_self_referral_is_refused_and_records_nothing(
    api: TestClient, engine: Engine, code: str, extra: dict[str, str], cookie: str | None
) -> None:
    if cookie:
        api.cookies.set(DEVICE_COOKIE, cookie)
    before = counts(engine)
    response = api.post(f"/r/{code}", json={"name": "Wang", "consent": True, **extra})
    assert response.status_code == 403
    assert response.json()["reason"] == "self_referral"
    assert counts(engine) == before
    page = api.post(f"/r/{code}", data={"name": "Wang", "consent": "yes", "lang": "en", **extra})
    assert page.status_code == 403
    assert "your own invitation" in page.text
    assert counts(engine) == before


def _referrer_code(api: TestClient, engine: Engine, email: str) -> str:
    """A referrer who signed up through the ingestion API, and their code."""
    key = create_write_key(engine, "shop", source="shop")
    body = {"userId": "referrer", "messageId": "referrer-identify", "traits": {"email": email}}
    assert api.post("/v1/identify", json=body, auth=(key, "")).status_code == 200
    with Session(engine) as session:
        referrer = session.exec(select(Identity).where(col(Identity.kind) == "user_id")).one()
    return issue_code(engine, referrer.contact_id, now=datetime.now(UTC)).code


@pytest.mark.parametrize(
    ("referrer", "variant"),
    [
        ("Wang.Fang@gmail.com", "wang.fang+friend@gmail.com"),  # Gmail sub-address
        ("Wang.Fang@gmail.com", "wangfang@gmail.com"),  # Gmail ignores dots
        ("Wang.Fang@gmail.com", "w.a.n.g.fang+x@GoogleMail.com"),  # googlemail is gmail
        ("Wang.Fang@gmail.com", "wang.fang@gmail.com."),  # the DNS root's trailing dot
        ("Wang.Fang@gmail.com", "ｗａｎｇ．ｆａｎｇ@ｇｍａｉｌ．ｃｏｍ"),  # full-width
        ("wang.fang@outlook.com", "Wang.Fang+promo@Outlook.com"),  # Outlook sub-address
        ("wang.fang@icloud.com", "wang.fang+x@icloud.com"),
        ("wang.fang@example.cn", "WANG.FANG@ＥＸＡＭＰＬＥ.cn."),  # case, width, root dot
    ],
)
def test_a_variant_of_the_referrers_own_address_is_refused_as_self_referral(
    api: TestClient, engine: Engine, referrer: str, variant: str
) -> None:
    code = _referrer_code(api, engine, referrer)
    before = counts(engine)

    response = api.post(f"/r/{code}", json={"name": "Wang", "email": variant, "consent": True})

    assert response.status_code == 403, response.text
    assert response.json()["reason"] == "self_referral"
    assert counts(engine) == before


@pytest.mark.parametrize(
    ("referrer", "friend"),
    [
        ("wang.fang@outlook.com", "wangfang@outlook.com"),  # dots matter at Outlook
        ("wang.fang@example.cn", "wang.fang+x@example.cn"),  # no documented tag rule
        ("wang.fang@example.cn", "wang.fang@example.com"),
    ],
)
def test_an_address_of_another_mailbox_is_not_self_referral(
    api: TestClient, engine: Engine, referrer: str, friend: str
) -> None:
    code = _referrer_code(api, engine, referrer)

    response = api.post(f"/r/{code}", json={"name": "Li", "email": friend, "consent": True})

    assert response.status_code == 200, response.text


def test_an_address_with_a_zero_width_space_is_a_400_naming_email(
    api: TestClient, engine: Engine, code: str
) -> None:
    before = counts(engine)

    response = api.post(
        f"/r/{code}", json={"name": "Wang", "email": "wang.fang@exa\u200bmple.cn", "consent": True}
    )

    assert response.status_code == 400
    assert json_errors(response) == ["email"]
    assert "ZERO WIDTH SPACE" in response.json()["errors"][0]["message"]
    assert counts(engine) == before


def test_someone_referred_before_stays_with_the_first_referrer(
    api: TestClient, engine: Engine, code: str, promoter: str
) -> None:
    assert api.post(f"/r/{code}", json={**FRIEND, "consent": True}).status_code == 200
    with Session(engine) as session:
        friend = session.exec(select(Referral)).one().referee_id
    other = (
        Ingestor(engine)
        .store(
            [
                [
                    Incoming(
                        kind="identify",
                        message_id="seed-other",
                        type="identify",
                        occurred_at=datetime.now(UTC),
                        identities={"email": "zhao@example.cn"},
                    )
                ]
            ]
        )[0][0]
        .contact_id
    )
    other_code = issue_code(engine, other, now=datetime.now(UTC)).code
    before = counts(engine)
    response = api.post(f"/r/{other_code}", json={**FRIEND, "consent": True})
    assert (response.status_code, response.json()["reason"]) == (409, "already_referred")
    assert counts(engine) == before
    assert [c["contact_id"] for c in referral_tree(engine, promoter)["children"]] == [friend]


# --- the chain ----------------------------------------------------------------------------


def test_a_referee_shares_their_own_code_and_the_tree_grows(
    api: TestClient, engine: Engine, code: str, promoter: str
) -> None:
    assert api.post(f"/r/{code}", json={**FRIEND, "consent": True}).status_code == 200
    with Session(engine) as session:
        friend = session.exec(select(Referral)).one().referee_id
    friend_code = issue_code(engine, friend, now=datetime.now(UTC)).code
    response = api.post(
        f"/r/{friend_code}",
        json={"name": "Han Meimei", "phone": "+8613700137000", "consent": True, "ch": "email"},
    )
    assert response.status_code == 200
    tree = referral_tree(engine, promoter)
    [child] = tree["children"]
    [grandchild] = child["children"]
    assert (child["contact_id"], grandchild["channel"]) == (friend, "email")
    # The promoter cannot come back in through their own referee's link.
    loop = api.post(
        f"/r/{friend_code}",
        json={
            "name": "Wang",
            "email": "someone@example.cn",
            "phone": PROMOTER_PHONE,
            "consent": True,
        },
    )
    assert (loop.status_code, loop.json()["reason"]) == (409, "referral_loop")


# --- coupons ------------------------------------------------------------------------------


def rewarded(api: TestClient, engine: Engine, code: str) -> tuple[str, str]:
    """A friend signs up and buys: (friend's contact id, the held coupon code)."""
    assert api.post(f"/r/{code}", json={**FRIEND, "consent": True}).status_code == 200
    with Session(engine) as session:
        friend = session.exec(select(Referral)).one().referee_id
    decision = record_conversion(engine, friend, at=datetime.now(UTC))
    assert decision.coupon_code is not None
    return friend, decision.coupon_code


def redeem(api: TestClient, coupon: str, token: str | None = ADMIN) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return api.post(f"/v1/coupons/{coupon}/redeem", headers=headers)


def test_a_released_coupon_redeemed_is_a_touchpoint_on_the_referrer(
    api: TestClient, engine: Engine, code: str, promoter: str
) -> None:
    _, coupon = rewarded(api, engine, code)
    held = redeem(api, coupon)
    assert (held.status_code, held.json()["reason"]) == (409, "held")
    release_due_rewards(engine, datetime.now(UTC) + timedelta(days=15))
    first = redeem(api, coupon)
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["duplicate"], body["referrer_id"], body["event"]) == (
        False,
        promoter,
        "coupon.redeemed",
    )
    again = redeem(api, coupon)
    assert again.json()["duplicate"] is True
    with Session(engine) as session:
        [event] = session.exec(select(Event).where(col(Event.name) == "coupon.redeemed")).all()
        assert (event.contact_id, event.properties["code"]) == (promoter, coupon)


def test_redeeming_needs_the_admin_token(api: TestClient, engine: Engine, code: str) -> None:
    _, coupon = rewarded(api, engine, code)
    assert redeem(api, coupon, token=None).status_code == 401
    assert redeem(api, coupon, token="wrong").status_code == 401


def test_unknown_and_cancelled_coupons_are_refused(
    api: TestClient, engine: Engine, code: str
) -> None:
    assert redeem(api, "REF-0000000000").status_code == 404
    _, coupon = rewarded(api, engine, code)
    with Session(engine) as session:
        session.execute(update(Reward).values(status="cancelled", cancel_reason="returned"))
        session.commit()
    response = redeem(api, coupon)
    assert (response.status_code, response.json()["reason"]) == (410, "cancelled")
    assert re.search("returned", response.json()["error"])


# --- admin: codes and the tree ------------------------------------------------------------


def admin(api: TestClient, method: str, path: str) -> Any:
    return api.request(method, path, headers={"Authorization": f"Bearer {ADMIN}"})


def test_a_promoter_gets_one_code_and_share_links(api: TestClient, promoter: str) -> None:
    first = admin(api, "POST", f"/v1/contacts/{promoter}/referral-code")
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["links"] == {
        "wechat": f"https://mkt.example.com/r/{body['code']}?ch=wechat",
        "email": f"https://mkt.example.com/r/{body['code']}?ch=email",
    }
    assert (body["uses"], body["max_uses"]) == (0, 50)
    again = admin(api, "POST", f"/v1/contacts/{promoter}/referral-code")
    assert again.json()["code"] == body["code"]
    # The link works.
    assert api.get(f"/r/{body['code']}?ch=email").status_code == 200
    assert admin(api, "POST", "/v1/contacts/c_nobody/referral-code").status_code == 404
    assert api.post(f"/v1/contacts/{promoter}/referral-code").status_code == 401


def test_the_tree_and_ancestors_over_http(
    api: TestClient, engine: Engine, code: str, promoter: str
) -> None:
    assert api.post(f"/r/{code}", json={**FRIEND, "consent": True}).status_code == 200
    with Session(engine) as session:
        friend = session.exec(select(Referral)).one().referee_id
    top = admin(api, "GET", f"/v1/contacts/{promoter}/referrals").json()
    assert top["ancestors"] == []
    assert [c["contact_id"] for c in top["tree"]["children"]] == [friend]
    below = admin(api, "GET", f"/v1/contacts/{friend}/referrals").json()
    assert (below["ancestors"], below["tree"]["children"]) == ([promoter], [])


# --- the pages' copy, in zh-CN and en -------------------------------------------------------

REFERRAL_COPY = {
    "zh-CN": {
        "form": ("您收到一份邀请", "您的朋友邀请您加入", "手机号", "邮箱和手机号至少填写一项。"),
        "problems": ("请修改以下内容：", "请勾选同意条款", "请填写姓名"),
        "thanks": ("谢谢！", "注册成功，我们会尽快与您联系。"),
        "unknown": ("邀请链接无效", "找不到这个邀请码。"),
    },
    "en": {
        "form": ("You're invited", "A friend invited you", "Mobile phone", "at least one."),
        "problems": ("Please correct the following:", "tick the box", "name is required"),
        "thanks": ("Thank you", "You're signed up."),
        "unknown": ("This invitation link does not work", "We cannot find this invitation"),
    },
}


@pytest.mark.parametrize("lang", ["zh-CN", "en"])
def test_every_referral_page_has_its_copy_in_both_locales(
    api: TestClient, engine: Engine, code: str, lang: str
) -> None:
    copy = REFERRAL_COPY[lang]
    form = api.get(f"/r/{code}?lang={lang}").text
    for sentence in copy["form"]:
        assert sentence in html.unescape(form)
    wrong = api.post(f"/r/{code}", data={"email": "li.lei@example.cn", "lang": lang})
    assert wrong.status_code == 400
    for sentence in copy["problems"]:
        assert sentence in wrong.text
    done = api.post(f"/r/{code}", data={**FRIEND, "lang": lang})
    assert done.status_code == 200, done.text
    for sentence in copy["thanks"]:
        assert sentence in html.unescape(done.text)
    unknown = api.get(f"/r/ZZZZZZZZZZ?lang={lang}")
    assert unknown.status_code == 404
    for sentence in copy["unknown"]:
        assert sentence in unknown.text
    for page in (form, wrong.text, done.text, unknown.text):
        assert f'<html lang="{lang}">' in page


@pytest.mark.parametrize("lang", ["zh-CN", "en"])
def test_the_referral_consent_wording_is_the_templates(lang: str) -> None:
    """The checkbox's sentence, stored with each consent, lives with the content layouts."""
    source = (BUNDLED_CONTENT_DIR / "_layouts" / "pages" / f"consent.{lang}.j2").read_text()
    assert f'set referral = "{CONSENT_WORDING[lang]}"' in source  # type: ignore[index]
