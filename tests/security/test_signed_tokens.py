"""Promise: every signed credential in a URL or a request is accepted only as issued,
only for its purpose, only while fresh; and a replay does no more than the design allows.

Per credential:

- **Unsubscribe links** (``/u/<token>``, the preference page): changing any character
  of the token, its payload or its MAC is refused (400/403) and changes nothing; a token
  signed for another purpose (click, open) or with another key is refused; an expired one
  is refused 410. Replay: unsubscribing twice is idempotent and harmless (one event, one
  suppression, 200 both times), since mailbox providers retry one-click POSTs.
- **Click tracking** (``/t/c/<token>``): the same tampering rules; a click replayed within
  the same minute records no second ``email.clicked`` (one event per token per minute, by
  design), a click a minute later does. Open redirect: only the URL signed into the token
  is ever a ``Location``; a token carrying another URL is refused, and even a validly
  signed ``javascript:``, ``data:``, scheme-relative (``//evil.example``) or header-
  splitting URL is refused without a redirect. Every tracked link of a really rendered
  email leads back to a link the template had.
- **Open pixel** (``/t/o/<token>.gif``): always the GIF; only a valid, unexpired token
  records ``email.opened``, at most once a minute.
- **Referral codes** (``/r/<code>``): random capabilities, not signatures; any changed
  character is an unknown code (404); an expired code is refused 410 and a used-up one
  409, before anything is stored; re-posting the same sign-up is a duplicate, not a
  second referral.
- **Hand-off feedback** (``Stagecoach-Signature: t=..,v1=..``): a changed body, time or
  MAC, or another secret is refused 401; a signature more than five minutes old (or
  ahead) is refused, so a captured request cannot be replayed later; a replay inside the
  window is answered as a duplicate and records nothing new.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

import stagecoach.engine.api.routes.tracking as email_routes
from stagecoach.connectors.crm import SIGNATURE_HEADER, sign
from stagecoach.engine.domain.content import (
    BUNDLED_CONTENT_DIR,
    CLICK,
    ContentLibrary,
    LinkSigner,
    RenderContact,
    TokenInvalid,
)
from stagecoach.engine.domain.errors import ConfigurationError
from stagecoach.engine.services.referrals import issue_code
from stagecoach.engine.services.storage.models import (
    Contact,
    Event,
    Handoff,
    Referral,
    ReferralCode,
    Suppression,
)
from stagecoach.engine.settings import load_settings
from tests.helpers import migrated_engine
from tests.security._support import (
    CONTACT_EMAIL,
    PUBLIC_URL,
    WEBHOOK_SECRET,
    count,
    make_app,
    make_settings,
    seed_contact,
)

TARGET = "https://www.ironbridge-iot.example/whitepapers/oee?utm_source=email&x=1"
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class _FrozenClock(datetime):
    """``datetime`` with a settable ``now()``: the tracking routes read the minute from it."""

    at: ClassVar[datetime] = datetime.now(UTC)

    @classmethod
    def now(cls, tz: Any = None) -> _FrozenClock:
        moment = cls.at if tz is None else cls.at.astimezone(tz)
        return cls.fromtimestamp(moment.timestamp(), moment.tzinfo)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> type[_FrozenClock]:
    """Freezes the email routes' clock at the start of a minute (tokens check against it)."""
    start = datetime.now(UTC).replace(second=5, microsecond=0)
    monkeypatch.setattr(_FrozenClock, "at", start)
    monkeypatch.setattr(email_routes, "datetime", _FrozenClock)
    return _FrozenClock


@pytest.fixture
def signer(api: TestClient) -> LinkSigner:
    """The signer the app verifies with (the workers sign with the same settings)."""
    app = api.app
    assert isinstance(app, FastAPI)
    found: LinkSigner = app.state.link_signer
    return found


@pytest.fixture
def contact(engine: Engine) -> str:
    return seed_contact(engine)


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[-1].removesuffix(".gif")


def mutations(token: str) -> Iterator[tuple[str, str]]:
    """Every single-character change of ``token`` (each position, one other character),
    and structural ones: truncations, swapped or dropped parts, padding, case."""
    for n, ch in enumerate(token):
        replacement = "A" if ch != "A" else "B"
        yield f"char {n} ({ch!r})", token[:n] + replacement + token[n + 1 :]
    payload, _, mac = token.partition(".")
    yield "no mac", payload + "."
    yield "no payload", "." + mac
    yield "mac only", mac
    yield "payload only", payload
    yield "truncated mac", f"{payload}.{mac[:-1]}"
    yield "longer mac", f"{payload}.{mac}A"
    yield "padded payload", f"{payload}==.{mac}"
    yield "swapped", f"{mac}.{payload}"
    yield "upper case", token.upper()
    yield "two dots", f"{payload}.{mac}.{mac}"


def reencoded(token: str, **changes: Any) -> str:
    """``token`` with its payload decoded, changed and encoded again, the MAC kept: what
    an attacker who reads the (unencrypted) payload would try."""
    payload, _, mac = token.partition(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(changes)
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + mac


def refused(response: httpx.Response) -> bool:
    return response.status_code in (400, 403) and "location" not in response.headers


# --- unsubscribe ----------------------------------------------------------------------------


def _unsubscribe(api: TestClient, token: str, *, page: bool = False) -> httpx.Response:
    form = "confirm=unsubscribe" if page else "List-Unsubscribe=One-Click"
    response: httpx.Response = api.post(
        f"/u/{token}", content=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    return response


def _unsubscribe_token(signer: LinkSigner, contact: str, now: datetime | None = None) -> str:
    return token_of(
        signer.unsubscribe_url(
            contact_id=contact,
            content_id="newsletter-monthly",
            channel="email",
            now=now or datetime.now(UTC),
        )
    )


def test_a_changed_unsubscribe_token_is_refused_and_changes_nothing(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    victim = seed_contact(engine, user_id="u-victim", email="victim@example.cn")
    token = _unsubscribe_token(signer, contact)
    before = (count(engine, Event), count(engine, Suppression))
    attempts = [
        *mutations(token),
        ("another contact", reencoded(token, c=victim)),
        ("another channel", reencoded(token, ch="wechat")),
        ("no expiry", reencoded(token, exp=None)),
        ("later expiry", reencoded(token, exp=4_102_444_800)),
    ]
    for what, bad in attempts:
        for response in (
            api.get(f"/u/{bad}"),
            _unsubscribe(api, bad),
            api.get(f"/u/{bad}/preferences"),
            api.post(
                f"/u/{bad}/preferences",
                content="form=preferences",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ),
        ):
            assert refused(response), (what, bad, response.status_code)
    assert (count(engine, Event), count(engine, Suppression)) == before


def test_a_token_for_another_purpose_or_from_another_key_is_refused(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    now = datetime.now(UTC)
    click = token_of(signer.click_url(TARGET, contact_id=contact, content_id="x", now=now))
    pixel = token_of(signer.open_url(contact_id=contact, content_id="x", message_id="<m>", now=now))
    unsubscribe = _unsubscribe_token(signer, contact)
    stranger = LinkSigner(b"somebody-elses-secret-0123456789", PUBLIC_URL, signer.ttl)
    before = count(engine, Event)
    # A click or pixel token cannot unsubscribe anyone, nor another key's token.
    for token in (click, pixel, _unsubscribe_token(stranger, contact)):
        assert _unsubscribe(api, token).status_code == 403
        assert api.get(f"/u/{token}/preferences").status_code == 403
    # An unsubscribe or pixel token is no click token: no redirect.
    for token in (unsubscribe, pixel):
        response = api.get(f"/t/c/{token}")
        assert response.status_code == 403
        assert "location" not in response.headers
    # A click token is no pixel token: the GIF, and nothing recorded.
    assert api.get(f"/t/o/{click}.gif").headers["content-type"] == "image/gif"
    # A session cookie's purpose is no link purpose either.
    session_like = signer.sign("dashboard-session", {"c": contact, "m": "x"}, now)
    assert _unsubscribe(api, session_like).status_code == 403
    assert count(engine, Event) == before


def test_an_expired_link_is_refused(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    issued = datetime.now(UTC) - signer.ttl - timedelta(seconds=1)
    unsubscribe = _unsubscribe_token(signer, contact, issued)
    click = token_of(signer.click_url(TARGET, contact_id=contact, content_id="x", now=issued))
    pixel = signer.open_url(contact_id=contact, content_id="x", message_id="<m>", now=issued)
    before = (count(engine, Event), count(engine, Suppression))
    assert api.get(f"/u/{unsubscribe}").status_code == 410
    assert _unsubscribe(api, unsubscribe).status_code == 410
    assert api.get(f"/u/{unsubscribe}/preferences").status_code == 410
    response = api.get(f"/t/c/{click}")
    assert response.status_code == 410
    assert "location" not in response.headers
    assert api.get(urlsplit(pixel).path).status_code == 200  # the GIF, recording nothing
    assert (count(engine, Event), count(engine, Suppression)) == before
    # One second before expiry the same link still works (the boundary is the expiry).
    fresh = _unsubscribe_token(signer, contact, datetime.now(UTC) - signer.ttl + timedelta(5))
    assert api.get(f"/u/{fresh}").status_code == 200


def test_an_unsubscribe_replay_is_idempotent_and_harmless(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    token = _unsubscribe_token(signer, contact)
    answers = [_unsubscribe(api, token) for _ in range(3)] + [_unsubscribe(api, token, page=True)]
    assert [a.status_code for a in answers] == [200, 200, 200, 200]
    with Session(engine) as session:
        unsubscribed = session.exec(
            select(Event).where(col(Event.name) == "email.unsubscribed")
        ).all()
        suppressions = session.exec(select(Suppression)).all()
    assert len(unsubscribed) == 1
    assert [(s.channel, s.address, s.reason) for s in suppressions] == [
        ("email", CONTACT_EMAIL, "unsubscribe")
    ]


def test_a_validly_signed_link_for_a_contact_we_do_not_have_does_nothing(
    api: TestClient, engine: Engine, signer: LinkSigner
) -> None:
    token = _unsubscribe_token(signer, "c_erased000000000000000000")
    before = (count(engine, Event), count(engine, Contact), count(engine, Suppression))
    assert _unsubscribe(api, token).status_code == 404
    assert (count(engine, Event), count(engine, Contact), count(engine, Suppression)) == before


# --- click and open tracking ------------------------------------------------------------------


def _events(engine: Engine, name: str) -> list[Event]:
    with Session(engine) as session:
        return list(session.exec(select(Event).where(col(Event.name) == name)).all())


def test_a_changed_click_token_never_redirects(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    token = token_of(
        signer.click_url(TARGET, contact_id=contact, content_id="x", now=datetime.now(UTC))
    )
    attempts = [
        *mutations(token),
        ("another url", reencoded(token, u="https://evil.example/login")),
        ("javascript url", reencoded(token, u="javascript:alert(document.cookie)")),
        ("scheme-relative url", reencoded(token, u="//evil.example/")),
        ("another contact", reencoded(token, c="c_someone_else")),
    ]
    for what, bad in attempts:
        response = api.get(f"/t/c/{bad}")
        assert refused(response), (what, response.status_code, response.headers)
    assert _events(engine, "email.clicked") == []


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(document.cookie)",
        "JaVaScRiPt:alert(1)",
        " javascript:alert(1)",
        "\tjavascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox(1)",
        "//evil.example/",
        "///evil.example/",
        "/\\evil.example/",
        "\\\\evil.example",
        "https:evil.example",
        "https:/evil.example",
        "https://",
        "/local/path",
        "evil.example",
        "ftp://evil.example/",
        "https://ok.example/\r\nSet-Cookie: session=stolen",
        "https://ok.example/\nLocation: https://evil.example",
        "https://ok.example/\x00",
        "https://ok exa mple/",
        "",
    ],
)
def test_even_a_validly_signed_click_never_leaves_for_an_unsafe_target(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str, url: str
) -> None:
    """Defence in depth: the workers only rewrite http(s) links, and were one of these
    signed anyway (a template bug), the endpoint still refuses to redirect to it."""
    token = token_of(
        signer.click_url(url, contact_id=contact, content_id="x", now=datetime.now(UTC))
    )
    response = api.get(f"/t/c/{token}")
    assert response.status_code == 400, response.status_code
    assert "location" not in response.headers
    assert _events(engine, "email.clicked") == []


def test_a_click_follows_exactly_the_signed_url(
    api: TestClient, signer: LinkSigner, contact: str
) -> None:
    for url in (TARGET, "HTTPS://EXAMPLE.COM/", "https://example.cn/a?b=%E4%B8%AD&c=<d>"):
        token = token_of(
            signer.click_url(url, contact_id=contact, content_id="x", now=datetime.now(UTC))
        )
        response = api.get(f"/t/c/{token}")
        assert response.status_code == 302
        assert response.headers["location"] == url
        assert response.headers["referrer-policy"] == "no-referrer"


def test_a_click_to_a_non_ascii_url_redirects_to_it_percent_encoded(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    """Found by this suite: a zh-CN template's link with a Chinese path (an IRI) was
    signed as written, and the redirect's Location header could not carry it: a 500 for
    the reader and no click recorded. Now the IRI is percent-encoded (RFC 3987) and the
    click is recorded with the URL as the template had it."""
    url = "https://www.ironbridge-iot.example/白皮书/下载?主题=能源#第二章"
    token = token_of(
        signer.click_url(url, contact_id=contact, content_id="x", now=datetime.now(UTC))
    )
    response = api.get(f"/t/c/{token}")
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.isascii()
    assert unquote(location) == url
    assert urlsplit(location).netloc == "www.ironbridge-iot.example"  # the same host
    [clicked] = _events(engine, "email.clicked")
    assert clicked.properties["url"] == url


def test_every_tracked_link_of_a_rendered_email_leads_to_a_link_the_template_had(
    api: TestClient, signer: LinkSigner, contact: str
) -> None:
    library = ContentLibrary.load(BUNDLED_CONTENT_DIR)
    hrefs = re.compile(r'href="([^"]+)"')
    now = datetime.now(UTC)
    for item in ("newsletter-monthly", "referral-offer", "wp-digital-transformation"):
        for locale in ("en", "zh-CN"):
            recipient = RenderContact(contact, {"first_name": "Lei"}, email=CONTACT_EMAIL)
            kwargs: dict[str, Any] = {"channel": "email", "locale": locale, "contact": recipient}
            plain = library.render(item, now=now, **kwargs)
            sent = library.render(item, now=now, signer=signer, idempotency_key="k", **kwargs)
            original = {h.replace("&amp;", "&") for h in hrefs.findall(plain.html)}
            tracked = [h.replace("&amp;", "&") for h in hrefs.findall(sent.html) if "/t/c/" in h]
            assert tracked, item
            for link in tracked:
                response = api.get(urlsplit(link).path)
                assert response.status_code == 302, (item, link)
                assert response.headers["location"] in original, (item, link)


def test_a_click_replay_records_at_most_one_event_a_minute(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str, clock: type[_FrozenClock]
) -> None:
    token = token_of(signer.click_url(TARGET, contact_id=contact, content_id="x", now=clock.at))
    start = clock.at
    for seconds in (0, 1, 20, 54):  # the same minute: redirects every time, one event
        clock.at = start + timedelta(seconds=seconds)
        assert api.get(f"/t/c/{token}").status_code == 302
    assert len(_events(engine, "email.clicked")) == 1
    clock.at = start + timedelta(seconds=60)  # the next minute: a click again
    assert api.get(f"/t/c/{token}").status_code == 302
    assert len(_events(engine, "email.clicked")) == 2


def test_an_open_is_recorded_only_for_a_valid_token_and_once_a_minute(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str, clock: type[_FrozenClock]
) -> None:
    pixel = urlsplit(
        signer.open_url(contact_id=contact, content_id="x", message_id="<m@x>", now=clock.at)
    ).path
    token = token_of(pixel)
    for what, bad in [*mutations(token), ("another contact", reencoded(token, c="c_other"))]:
        response = api.get(f"/t/o/{bad}.gif")
        assert response.status_code == 200, what
        assert response.headers["content-type"] == "image/gif"
    assert _events(engine, "email.opened") == []
    for seconds in (0, 30):
        clock.at = clock.at + timedelta(seconds=seconds)
        assert api.get(pixel).status_code == 200
    assert len(_events(engine, "email.opened")) == 1


# --- referral codes ---------------------------------------------------------------------------


@pytest.fixture
def code(engine: Engine) -> str:
    promoter = seed_contact(engine, user_id="u-promoter", email="wang.fang@example.cn")
    return issue_code(engine, promoter, now=datetime.now(UTC)).code


FRIEND = {"name": "李雷", "email": "friend@example.cn", "consent": "yes"}


def _signup(api: TestClient, code: str, person: dict[str, str] = FRIEND) -> httpx.Response:
    response: httpx.Response = api.post(
        f"/r/{code}", json=person, headers={"Accept": "application/json"}
    )
    return response


def test_a_changed_referral_code_is_an_unknown_code(
    api: TestClient, engine: Engine, code: str
) -> None:
    before = (count(engine, Event), count(engine, Referral))
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    changed = [
        code[:n] + next(c for c in alphabet if c != code[n]) + code[n + 1 :]
        for n in range(len(code))
    ]
    for bad in [*changed, code[:-1], code + "7", code[::-1], "", "%00" + code]:
        if bad == code:
            continue
        assert api.get(f"/r/{bad}", headers={"Accept": "application/json"}).status_code in (
            404,
            405,
        )
        assert _signup(api, bad).status_code in (404, 405)
    assert (count(engine, Event), count(engine, Referral)) == before
    # What the code's design forgives is not tampering: case and hyphens (people retype it).
    assert api.get(f"/r/{code.lower()[:5]}-{code.lower()[5:]}").status_code == 200


def test_an_expired_or_used_up_code_is_refused_before_anything_is_stored(
    api: TestClient, engine: Engine, code: str
) -> None:
    before = (count(engine, Event), count(engine, Contact), count(engine, Referral))
    with Session(engine) as session:
        session.execute(
            update(ReferralCode)
            .where(col(ReferralCode.code) == code)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        session.commit()
    assert api.get(f"/r/{code}").status_code == 410
    assert _signup(api, code).json()["reason"] == "expired_code"
    with Session(engine) as session:
        session.execute(
            update(ReferralCode)
            .where(col(ReferralCode.code) == code)
            .values(expires_at=datetime.now(UTC) + timedelta(days=1), uses=50, max_uses=50)
        )
        session.commit()
    response = _signup(api, code)
    assert response.status_code == 409
    assert response.json()["reason"] == "used_up"
    assert (count(engine, Event), count(engine, Contact), count(engine, Referral)) == before


def test_a_replayed_sign_up_is_a_duplicate_not_a_second_referral(
    api: TestClient, engine: Engine, code: str
) -> None:
    first = _signup(api, code)
    assert first.status_code == 200, first.text
    assert first.json()["duplicate"] is False
    events = count(engine, Event)
    for _ in range(2):
        again = _signup(api, code)
        assert again.status_code == 200
        assert again.json()["duplicate"] is True
    assert count(engine, Referral) == 1
    assert count(engine, Event) == events
    with Session(engine) as session:
        [row] = session.exec(select(ReferralCode)).all()
    assert row.uses == 1


# --- hand-off feedback signatures -------------------------------------------------------------

HANDOFF = "h_7f3a9c2e41d7b3a8"
OTHER_HANDOFF = "h_0badc0ffee000001"


@pytest.fixture
def handoffs(engine: Engine) -> str:
    contact = seed_contact(engine, user_id="u-lead", email="lead@example.cn")
    with Session(engine) as session:
        for handoff_id in (HANDOFF, OTHER_HANDOFF):
            session.add(
                Handoff(
                    id=handoff_id,
                    idempotency_key=f"{contact}:{handoff_id}",
                    contact_id=contact,
                    reason="mql",
                )
            )
        session.commit()
    return contact


def _feedback(
    api: TestClient,
    body: bytes,
    *,
    signature: str | None = None,
    at: datetime | None = None,
    secret: str = WEBHOOK_SECRET,
    handoff_id: str = HANDOFF,
) -> httpx.Response:
    stamp = int((at or datetime.now(UTC)).timestamp())
    header = signature if signature is not None else sign(secret, body, timestamp=stamp)
    response: httpx.Response = api.post(
        f"/v1/handoffs/{handoff_id}/feedback",
        content=body,
        headers={SIGNATURE_HEADER: header, "Content-Type": "application/json"},
    )
    return response


def _status(engine: Engine, handoff_id: str = HANDOFF) -> str:
    with Session(engine) as session:
        row = session.get(Handoff, handoff_id)
        assert row is not None
        return row.status


ACCEPTED = b'{"handoff_id": "%s", "decision": "accepted", "owner": "wang.wei"}' % HANDOFF.encode()


def test_a_changed_feedback_request_is_refused(
    api: TestClient, engine: Engine, handoffs: str
) -> None:
    stamp = int(datetime.now(UTC).timestamp())
    good = sign(WEBHOOK_SECRET, ACCEPTED, timestamp=stamp)
    mac = good.partition("v1=")[2]
    attempts: list[tuple[str, bytes, str]] = [
        ("body changed", b'{"decision": "converted", "owner": "wang.wei"}', good),
        ("body appended", ACCEPTED + b" ", good),
        ("time changed", ACCEPTED, f"t={stamp - 1},v1={mac}"),
        ("mac changed", ACCEPTED, f"t={stamp},v1={mac[:-1]}{'0' if mac[-1] != '0' else '1'}"),
        ("mac truncated", ACCEPTED, f"t={stamp},v1={mac[:32]}"),
        ("no mac", ACCEPTED, f"t={stamp}"),
        ("no time", ACCEPTED, f"v1={mac}"),
        ("unknown scheme only", ACCEPTED, f"t={stamp},v2={mac}"),
        ("another secret", ACCEPTED, sign("not-the-secret-0123456789", ACCEPTED, timestamp=stamp)),
        ("empty", ACCEPTED, ""),
        ("garbage", ACCEPTED, "t=now,v1=yes"),
    ]
    before = count(engine, Event)
    for what, body, header in attempts:
        response = _feedback(api, body, signature=header)
        assert response.status_code == 401, (what, response.status_code, response.text)
    assert count(engine, Event) == before
    assert _status(engine) == "sent"


def test_a_feedback_signature_outside_the_five_minute_window_is_refused(
    api: TestClient, engine: Engine, handoffs: str
) -> None:
    now = datetime.now(UTC)
    for at in (
        now - timedelta(minutes=5, seconds=5),
        now + timedelta(minutes=5, seconds=5),
        now - timedelta(days=30),
    ):
        assert _feedback(api, ACCEPTED, at=at).status_code == 401, at
    assert _status(engine) == "sent"
    # Inside the window, early or late, it is accepted.
    assert _feedback(api, ACCEPTED, at=now - timedelta(minutes=4)).status_code == 200
    assert _status(engine) == "accepted"


def test_a_captured_feedback_request_replayed_is_refused_late_and_a_duplicate_early(
    api: TestClient, engine: Engine, handoffs: str
) -> None:
    captured_at = datetime.now(UTC) - timedelta(minutes=5, seconds=30)
    header = sign(WEBHOOK_SECRET, ACCEPTED, timestamp=int(captured_at.timestamp()))
    # Late: the same bytes, byte for byte, after the window: refused.
    late = _feedback(api, ACCEPTED, signature=header)
    assert late.status_code == 401
    assert "old" in late.json()["error"]
    assert _status(engine) == "sent"
    # Early: within the window a replay is the same decision again: a duplicate.
    fresh = sign(WEBHOOK_SECRET, ACCEPTED, timestamp=int(datetime.now(UTC).timestamp()))
    first = _feedback(api, ACCEPTED, signature=fresh)
    events = count(engine, Event)
    replay = _feedback(api, ACCEPTED, signature=fresh)
    assert (first.status_code, replay.status_code) == (200, 200)
    assert (first.json()["duplicate"], replay.json()["duplicate"]) == (False, True)
    assert count(engine, Event) == events


def test_feedback_signed_with_a_rotated_out_secret_is_refused(
    api: TestClient, engine: Engine, handoffs: str
) -> None:
    response = _feedback(api, ACCEPTED, secret="whsec-the-secret-before-rotation-0123")
    assert response.status_code == 401
    assert _status(engine) == "sent"


def test_a_feedback_signature_is_bound_to_its_hand_off(
    api: TestClient, engine: Engine, handoffs: str
) -> None:
    """A decision captured in transit, replayed within the five minutes against another
    hand-off's URL: the signature covers the body, and the body names its hand-off."""
    stamp = int(datetime.now(UTC).timestamp())
    header = sign(WEBHOOK_SECRET, ACCEPTED, timestamp=stamp)
    assert _feedback(api, ACCEPTED, signature=header).status_code == 200
    moved = _feedback(api, ACCEPTED, signature=header, handoff_id=OTHER_HANDOFF)
    assert moved.status_code == 401
    assert _status(engine, OTHER_HANDOFF) == "sent"


def test_signing_covers_the_raw_bytes_not_the_json_meaning(
    api: TestClient, engine: Engine, handoffs: str
) -> None:
    """Re-serialised JSON with the same meaning is a different body: refused."""
    stamp = int(datetime.now(UTC).timestamp())
    header = sign(WEBHOOK_SECRET, ACCEPTED, timestamp=stamp)
    same_meaning = json.dumps(json.loads(ACCEPTED), separators=(",", ":")).encode()
    assert same_meaning != ACCEPTED
    assert _feedback(api, same_meaning, signature=header).status_code == 401
    assert _status(engine) == "sent"


# --- the link secret: rotation ---------------------------------------------------------------

OLD_SECRET = "the-link-secret-before-rotation-0123456789"
NEW_SECRET = "the-link-secret-after-rotation-9876543210ab"


def _rotated_api(tmp_path: Path, previous: str | None) -> Iterator[TestClient]:
    settings = make_settings(
        tmp_path,
        link_secret=SecretStr(NEW_SECRET),
        link_secret_previous=SecretStr(previous) if previous is not None else None,
    )
    db = migrated_engine(settings.resolved_database_url)
    try:
        with TestClient(make_app(settings, db), follow_redirects=False) as client:
            yield client
    finally:
        db.dispose()


def _click_token(secret: str, contact: str, now: datetime) -> str:
    old = LinkSigner(secret.encode(), PUBLIC_URL, timedelta(days=60))
    return token_of(old.click_url(TARGET, contact_id=contact, content_id="x", now=now))


@pytest.mark.parametrize(
    ("previous", "verifies"),
    [
        (None, False),  # rotated with no grace: old links die at once
        (OLD_SECRET, True),  # kept without an end: verifies until removed
        (f"{OLD_SECRET}@2999-01-01", True),  # inside its grace period
        (f"{OLD_SECRET}@2000-01-01", False),  # after it
        (f"other-former-secret-0123456789, {OLD_SECRET}@2999-01-01T00:00:00+08:00", True),
    ],
)
def test_a_link_signed_with_the_previous_secret_verifies_only_during_its_grace(
    tmp_path: Path, previous: str | None, verifies: bool
) -> None:
    """Rotation: links already in inboxes keep working while the old secret is listed in
    STAGECOACH_LINK_SECRET_PREVIOUS (until its '@' date), and new links use the new one."""
    for api in _rotated_api(tmp_path, previous):
        contact = seed_contact(api.app.state.db)  # type: ignore[attr-defined]
        token = _click_token(OLD_SECRET, contact, datetime.now(UTC))
        response = api.get(f"/t/c/{token}")
        if verifies:
            assert response.status_code == 302, response.text
            assert response.headers["location"] == TARGET
        else:
            assert refused(response), response.text
        # The app signs with the new secret only: its own links verify under it alone.
        signer: LinkSigner = api.app.state.link_signer  # type: ignore[attr-defined]
        fresh = token_of(
            signer.click_url(TARGET, contact_id=contact, content_id="x", now=datetime.now(UTC))
        )
        assert api.get(f"/t/c/{fresh}").status_code == 302
        with pytest.raises(TokenInvalid):
            LinkSigner(OLD_SECRET.encode(), PUBLIC_URL, timedelta(days=1)).verify(
                CLICK, fresh, datetime.now(UTC)
            )


@pytest.mark.parametrize(
    "previous", ["old-secret-0123456789@next-tuesday", "short@2027-01-01", "tiny"]
)
def test_a_malformed_previous_secret_is_refused_naming_the_setting(
    tmp_path: Path, previous: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(data_dir=tmp_path, link_secret=NEW_SECRET, link_secret_previous=previous)
    line = caught.value.one_line()
    assert "STAGECOACH_LINK_SECRET_PREVIOUS" in line
    assert "Fix:" in line
