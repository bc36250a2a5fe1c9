"""The email touchpoints through HTTP: links from a really rendered email are followed,
bad links are refused without storing anything, and Postmark's webhooks suppress."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from stagecoach.engine.api.routes.events import create_write_key
from stagecoach.engine.api.routes.postmark_webhook import (
    WebhookCredentials,
    bounce_policy,
    postmark_webhook_credentials,
)
from stagecoach.engine.app import create_app
from stagecoach.engine.domain.bounces import (
    METADATA_CONTACT,
    METADATA_KEY,
    BouncePolicy,
    key_digest,
)
from stagecoach.engine.domain.content import (
    BUNDLED_CONTENT_DIR,
    ContentLibrary,
    LinkSigner,
    RenderContact,
)
from stagecoach.engine.domain.errors import ConfigurationError
from stagecoach.engine.services.consent import PREFERENCE_TOPICS
from stagecoach.engine.services.links import link_signer
from stagecoach.engine.services.storage.models import (
    Consent,
    Contact,
    Event,
    Identity,
    Merge,
    Suppression,
)
from stagecoach.engine.settings import Settings
from tests.helpers import migrated_engine

ADDRESS = "li.lei@example.cn"
DELIVERY_KEY = "c|b2b_nurture|v1|welcome|1"
WEBHOOK_AUTH = ("postmark-hooks", "correct horse battery staple")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = migrated_engine(f"sqlite:///{tmp_path}/email.db")
    yield db
    db.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path}/email.db",
        link_secret=SecretStr("test-link-secret-of-32-bytes-xx"),
        public_url="https://mkt.example.com",
    )


@pytest.fixture
def signer(settings: Settings) -> LinkSigner:
    return link_signer(settings)


@pytest.fixture
def db_engine(engine: Engine) -> Engine:
    """The shared ``api`` fixture is built on this module's database file."""
    return engine


@pytest.fixture
def api_app(api_app: FastAPI) -> FastAPI:
    """The shared app, with Postmark's webhook credentials configured."""
    api_app.dependency_overrides[postmark_webhook_credentials] = lambda: WebhookCredentials(
        *WEBHOOK_AUTH
    )
    return api_app


@pytest.fixture
def contact(api: TestClient, engine: Engine) -> str:
    """A contact known by user id, email and WeChat openid, through the ingestion API."""
    key = create_write_key(engine, "web", source="web")
    response = api.post(
        "/v1/identify",
        json={
            "userId": "u-1001",
            "messageId": "m-seed",
            "traits": {"email": "Li.Lei@Example.cn", "wechat_openid": "o-abc123"},
        },
        auth=(key, ""),
    )
    assert response.status_code == 200, response.text
    with Session(engine) as session:
        owner = session.get(Identity, ("email", ADDRESS))
        assert owner is not None
        return owner.contact_id


@dataclass(frozen=True)
class Email:
    click: str
    pixel: str
    unsubscribe: str
    target: str


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def render(signer: LinkSigner, contact_id: str, now: datetime | None = None) -> Email:
    """The links of a really rendered email, as the delivery activity would send it."""
    library = ContentLibrary.load(BUNDLED_CONTENT_DIR)
    kwargs: dict[str, Any] = {
        "channel": "email",
        "locale": "en",
        "contact": RenderContact(contact_id, {"first_name": "Lei"}, email=ADDRESS),
        "now": now or datetime.now(UTC),
    }
    plain = library.render("newsletter-monthly", **kwargs)
    sent = library.render(
        "newsletter-monthly", signer=signer, idempotency_key=DELIVERY_KEY, **kwargs
    )
    clicks = re.findall(r'href="([^"]*/t/c/[^"]+)"', sent.html)
    [pixel] = re.findall(r'src="([^"]*/t/o/[^"]+)"', sent.html)
    [unsubscribe] = re.findall(r"<(https?://[^>]+)>", sent.headers["List-Unsubscribe"])
    assert sent.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert f'href="{unsubscribe}"' in sent.html  # the footer link is the same one
    targets = re.findall(r'class="cta" href="([^"]+)"', plain.html)
    cta = re.findall(r'class="cta" href="([^"]+)"', sent.html)
    assert clicks
    assert cta
    return Email(
        click=_path(html.unescape(cta[0])),
        pixel=_path(html.unescape(pixel)),
        unsubscribe=_path(unsubscribe),
        target=html.unescape(targets[0]),
    )


def events(engine: Engine, name: str | None = None) -> list[Event]:
    with Session(engine) as session:
        query = select(Event).where(col(Event.message_id) != "m-seed").order_by(col(Event.id))
        if name is not None:
            query = query.where(col(Event.name) == name)
        return list(session.exec(query).all())


def suppressions(engine: Engine) -> dict[tuple[str, str], Suppression]:
    with Session(engine) as session:
        return {(s.channel, s.address): s for s in session.exec(select(Suppression)).all()}


def consents(engine: Engine) -> list[Consent]:
    with Session(engine) as session:
        return list(session.exec(select(Consent).order_by(col(Consent.id))).all())


def nothing_stored(engine: Engine) -> None:
    assert events(engine) == []
    assert suppressions(engine) == {}
    assert consents(engine) == []


def tamper(path: str) -> str:
    """The same link with one character of the signed payload changed."""
    head, _, token = path.rpartition("/")
    swapped = ("B" if token[5] == "A" else "A").join((token[:5], token[6:]))
    return f"{head}/{swapped}"


def one_click(api: TestClient, path: str) -> Response:
    response: Response = api.post(path, data={"List-Unsubscribe": "One-Click"})
    return response


# --- links from a rendered email ------------------------------------------------------------


def test_click_in_rendered_email_redirects_to_its_url_and_records_the_click(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    email = render(signer, contact)
    response = api.get(email.click)
    assert response.status_code == 302
    assert response.headers["location"] == email.target
    assert "no-store" in response.headers["cache-control"]
    [event] = events(engine)
    assert (event.name, event.contact_id, event.source) == (
        "email.clicked",
        contact,
        "email_tracking",
    )
    assert event.properties["url"] == email.target
    assert event.properties["content_id"] == "newsletter-monthly"


def test_open_pixel_in_rendered_email_is_a_gif_and_records_the_open_with_the_delivery(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    email = render(signer, contact)
    response = api.get(email.pixel)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.content.startswith(b"GIF89a")
    assert "no-cache" in response.headers["cache-control"]
    assert response.headers["pragma"] == "no-cache"
    [event] = events(engine)
    assert (event.name, event.contact_id) == ("email.opened", contact)
    assert event.properties == {
        "content_id": "newsletter-monthly",
        "message_id": key_digest(DELIVERY_KEY),
    }


def test_one_click_unsubscribe_answers_200_without_page_and_suppresses(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    email = render(signer, contact)
    response = one_click(api, email.unsubscribe)
    assert response.status_code == 200
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/plain")
    [event] = events(engine)
    assert (event.name, event.contact_id, event.source) == (
        "email.unsubscribed",
        contact,
        "unsubscribe_link",
    )
    assert event.properties["content_id"] == "newsletter-monthly"
    row = suppressions(engine)[("email", ADDRESS)]
    assert (row.reason, row.contact_id) == ("unsubscribe", contact)
    [consent] = consents(engine)
    assert (consent.channel, consent.granted, consent.source) == (
        "email",
        False,
        "unsubscribe_link",
    )


def test_one_click_retried_by_the_mailbox_provider_records_once(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    email = render(signer, contact)
    assert one_click(api, email.unsubscribe).status_code == 200
    assert one_click(api, email.unsubscribe).status_code == 200
    assert len(events(engine, "email.unsubscribed")) == 1
    assert len(suppressions(engine)) == 1


def test_one_click_as_multipart_form_data_is_accepted(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    email = render(signer, contact)
    body = (
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
        b"One-Click\r\n"
        b"--b0undary--\r\n"
    )
    response = api.post(
        email.unsubscribe,
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    assert response.status_code == 200, response.text
    assert ("email", ADDRESS) in suppressions(engine)


def test_unsubscribe_page_shows_a_form_and_changes_nothing(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    email = render(signer, contact)
    response = api.get(email.unsubscribe)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<form method="post">' in response.text
    assert "<script" not in response.text
    assert "l***@example.cn" in response.text  # recognisable, not harvestable
    assert response.headers["referrer-policy"] == "no-referrer"
    nothing_stored(engine)


def test_unsubscribe_page_form_post_unsubscribes_and_links_to_preferences(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    email = render(signer, contact)
    response = api.post(email.unsubscribe, data={"confirm": "unsubscribe"})
    assert response.status_code == 200
    assert "You are unsubscribed" in response.text
    assert f"{email.unsubscribe}/preferences" in response.text
    [event] = events(engine)
    assert (event.name, event.properties["method"]) == ("email.unsubscribed", "page")
    assert ("email", ADDRESS) in suppressions(engine)


def test_unsubscribe_post_without_the_one_click_body_is_400_and_stores_nothing(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    email = render(signer, contact)
    response = api.post(email.unsubscribe, data={"List-Unsubscribe": "Two-Clicks"})
    assert response.status_code == 400
    assert "List-Unsubscribe=One-Click" in response.text
    nothing_stored(engine)


# --- bad links ------------------------------------------------------------------------------


def test_tampered_links_are_403_with_no_redirect_and_nothing_stored(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    email = render(signer, contact)
    click = api.get(tamper(email.click))
    assert click.status_code == 403
    assert "location" not in click.headers
    assert "changed after we sent it" in click.text
    assert one_click(api, tamper(email.unsubscribe)).status_code == 403
    assert api.get(tamper(email.unsubscribe) + "/preferences").status_code == 403
    nothing_stored(engine)


def test_unsigned_or_foreign_click_links_are_no_open_redirect(
    api: TestClient, engine: Engine, settings: Settings, contact: str
) -> None:
    unsigned = base64.urlsafe_b64encode(b'{"u":"https://evil.example"}').decode().rstrip("=")
    response = api.get(f"/t/c/{unsigned}")
    assert response.status_code == 400
    assert "location" not in response.headers
    other = LinkSigner(b"another-secret-entirely-32-bytes", settings.api_base_url, timedelta(1))
    forged = other.click_url(
        "https://evil.example", contact_id=contact, content_id="x", now=datetime.now(UTC)
    )
    response = api.get(_path(forged))
    assert response.status_code == 403
    assert "location" not in response.headers
    assert events(engine) == []


def test_a_link_works_only_for_its_purpose(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    email = render(signer, contact)
    click_token = email.click.rsplit("/", 1)[1]
    assert one_click(api, f"/u/{click_token}").status_code == 403
    assert suppressions(engine) == {}


def test_expired_links_are_410_and_say_what_to_do(
    api: TestClient, engine: Engine, signer: LinkSigner, settings: Settings, contact: str
) -> None:
    sent = datetime.now(UTC) - timedelta(days=settings.link_ttl_days + 1)
    email = render(signer, contact, now=sent)
    response = one_click(api, email.unsubscribe)
    assert response.status_code == 410
    assert "expired" in response.text
    assert "more recent message" in response.text
    page = api.get(email.unsubscribe)
    assert page.status_code == 410
    click = api.get(email.click)
    assert click.status_code == 410
    assert "location" not in click.headers
    nothing_stored(engine)


@pytest.mark.parametrize("token", ["not-a-token", "abc.def", "a" * 20 + "." + "b" * 42])
def test_malformed_tokens_are_400(api: TestClient, engine: Engine, token: str) -> None:
    assert api.get(f"/t/c/{token}").status_code == 400
    assert api.get(f"/u/{token}").status_code == 400
    assert one_click(api, f"/u/{token}").status_code == 400
    assert events(engine) == []


def test_open_pixel_with_a_bad_token_is_still_a_gif_and_records_nothing(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    email = render(signer, contact)
    for path in (tamper(email.pixel), "/t/o/garbage.gif"):
        response = api.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/gif"
        assert response.content.startswith(b"GIF89a")
    assert events(engine) == []


def test_a_link_for_a_contact_we_no_longer_know_is_404(
    api: TestClient, engine: Engine, signer: LinkSigner
) -> None:
    email = render(signer, "c_gone")
    assert one_click(api, email.unsubscribe).status_code == 404
    assert api.get(email.click).status_code == 302  # a click still lands
    nothing_stored(engine)


def test_a_link_for_a_merged_contact_records_on_the_survivor(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    with Session(engine) as session:
        session.add(Contact(id="c_merged", stage="merged"))
        session.add(Merge(merged_id="c_merged", into_id=contact, reason="test"))
        session.commit()
    email = render(signer, "c_merged")
    assert api.get(email.click).status_code == 302
    [event] = events(engine)
    assert event.contact_id == contact


def test_a_link_names_its_contact_so_nothing_is_merged_or_created(
    api: TestClient, engine: Engine, signer: LinkSigner
) -> None:
    """The event names the contact by id (``Incoming.contact_id``): a contact with no
    identity still gets its click, and no identity stands in for it."""
    with Session(engine) as session:
        session.add(Contact(id="c_no_identity"))
        session.commit()
    email = render(signer, "c_no_identity")
    assert api.get(email.click).status_code == 302
    assert one_click(api, email.unsubscribe).status_code == 200
    assert [(e.name, e.contact_id) for e in events(engine)] == [
        ("email.clicked", "c_no_identity"),
        ("email.unsubscribed", "c_no_identity"),
    ]
    with Session(engine) as session:
        assert session.exec(select(Identity)).all() == []
        assert len(session.exec(select(Contact)).all()) == 1


# --- preferences ----------------------------------------------------------------------------


def test_preference_page_shows_channels_and_topics(
    api: TestClient, signer: LinkSigner, contact: str
) -> None:
    email = render(signer, contact)
    response = api.get(email.unsubscribe + "/preferences")
    assert response.status_code == 200
    assert 'name="email" value="on" checked' in response.text
    assert 'name="wechat" value="on" checked' in response.text  # the contact has an openid
    for topic in PREFERENCE_TOPICS:
        assert f'name="topic" value="{topic}" checked' in response.text
    assert "<script" not in response.text


def test_saving_preferences_records_an_identify_with_consent_and_topics(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    email = render(signer, contact)
    path = email.unsubscribe + "/preferences"
    response = api.post(
        path, data={"form": "preferences", "email": "on", "topic": ["newsletter", "event"]}
    )
    assert response.status_code == 200, response.text
    assert "Saved." in response.text
    [event] = events(engine)
    assert (event.kind, event.name, event.source, event.contact_id) == (
        "identify",
        "identify",
        "preference_page",
        contact,
    )
    assert event.context["traits"] == {
        "consent": {"email": True, "wechat": False},
        "topics": ["newsletter", "event"],
    }
    assert {(c.channel, c.granted) for c in consents(engine)} == {
        ("email", True),
        ("wechat", False),
    }
    assert ("wechat", "o-abc123") in suppressions(engine)
    shown = api.get(path).text
    assert 'name="wechat" value="on">' in shown
    assert 'name="topic" value="newsletter" checked' in shown
    assert 'name="topic" value="offer">' in shown


def test_turning_email_back_on_lifts_the_unsubscribe_but_never_a_bounce(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    with Session(engine) as session:
        session.add(Suppression(channel="email", address="old@example.cn", reason="hard_bounce"))
        session.add(Identity(kind="email", value="old@example.cn", contact_id=contact))
        session.commit()
    email = render(signer, contact)
    assert one_click(api, email.unsubscribe).status_code == 200
    assert suppressions(engine)[("email", ADDRESS)].reason == "unsubscribe"
    response = api.post(
        email.unsubscribe + "/preferences", data={"form": "preferences", "email": "on"}
    )
    assert response.status_code == 200
    assert set(suppressions(engine)) == {("email", "old@example.cn"), ("wechat", "o-abc123")}
    # Unsubscribing again with the same link works after the re-subscription.
    assert one_click(api, email.unsubscribe).status_code == 200
    assert len(events(engine, "email.unsubscribed")) == 2


@pytest.mark.parametrize(
    ("form", "named"),
    [
        ({"form": "preferences", "topic": "astrology"}, "astrology"),
        ({"form": "preferences", "email": "yes"}, "email"),
        ({"email": "on"}, "form=preferences"),
    ],
)
def test_bad_preference_forms_are_400_and_store_nothing(
    api: TestClient,
    engine: Engine,
    signer: LinkSigner,
    contact: str,
    form: dict[str, str],
    named: str,
) -> None:
    email = render(signer, contact)
    response = api.post(email.unsubscribe + "/preferences", data=form)
    assert response.status_code == 400
    assert named in response.text
    nothing_stored(engine)


# --- Postmark webhooks ----------------------------------------------------------------------


def postmark(api: TestClient, payload: Any, auth: tuple[str, str] = WEBHOOK_AUTH) -> Response:
    response: Response = api.post("/webhooks/postmark", json=payload, auth=auth)
    return response


def bounce(kind: str, bounce_id: int, at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "RecordType": "Bounce",
        "ID": bounce_id,
        "Type": kind,
        "TypeCode": 1,
        "MessageID": f"pm-{bounce_id}",
        "Email": "Li.Lei@Example.cn",
        "BouncedAt": at.isoformat(),
        "Inactive": False,
        **fields,
    }


def test_webhook_with_wrong_or_missing_credentials_is_401_and_records_nothing(
    api: TestClient, engine: Engine, contact: str
) -> None:
    payload = bounce("HardBounce", 1, datetime.now(UTC))
    assert postmark(api, payload, auth=(WEBHOOK_AUTH[0], "wrong")).status_code == 401
    response = api.post("/webhooks/postmark", json=payload)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    nothing_stored(engine)


def test_webhook_credentials_come_from_settings_and_unset_means_503(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    unset = create_app(settings, db=engine)
    with TestClient(unset) as client:
        assert postmark(client, {}).status_code == 503
    configured = settings.model_copy(
        update={
            "postmark_webhook_user": WEBHOOK_AUTH[0],
            "postmark_webhook_password": SecretStr(WEBHOOK_AUTH[1]),
        }
    )
    app = create_app(configured, db=engine)
    with TestClient(app) as client:
        assert postmark(client, {"RecordType": "Open"}).status_code == 200
        assert postmark(client, {}, auth=("x", "y")).status_code == 401


def test_delivery_webhook_records_email_delivered(
    api: TestClient, engine: Engine, contact: str
) -> None:
    payload = {
        "RecordType": "Delivery",
        "MessageID": "pm-1",
        "Recipient": "Li.Lei@Example.cn",
        "DeliveredAt": "2026-11-22T09:00:04-05:00",
        "Details": "smtp;250 2.0.0 OK",
        "Metadata": {METADATA_CONTACT: contact, METADATA_KEY: key_digest(DELIVERY_KEY)},
    }
    response = postmark(api, payload)
    assert response.status_code == 200, response.text
    assert postmark(api, payload).json()["duplicate"] is True  # Postmark retried
    [event] = events(engine)
    assert (event.name, event.contact_id, event.source) == ("email.delivered", contact, "postmark")
    assert event.properties["message_id"] == key_digest(DELIVERY_KEY)
    assert suppressions(engine) == {}


def test_hard_bounce_suppresses_at_once_and_records_email_bounced(
    api: TestClient, engine: Engine, contact: str
) -> None:
    response = postmark(api, bounce("HardBounce", 7, datetime.now(UTC)))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "success": True,
        "event": "email.bounced",
        "duplicate": False,
        "suppressed": 1,
    }
    assert suppressions(engine)[("email", ADDRESS)].reason == "hard_bounce"
    [event] = events(engine)
    assert (event.name, event.properties["kind"]) == ("email.bounced", "hard")
    assert postmark(api, bounce("HardBounce", 7, datetime.now(UTC))).json()["duplicate"]
    assert len(events(engine)) == 1


def test_soft_bounces_suppress_only_at_the_limit_within_the_window(
    api: TestClient, engine: Engine, contact: str
) -> None:
    api.app.dependency_overrides[bounce_policy] = lambda: BouncePolicy(  # type: ignore[attr-defined]
        soft_limit=3, soft_window=timedelta(days=7)
    )
    now = datetime.now(UTC)
    postmark(api, bounce("SoftBounce", 1, now - timedelta(days=30)))  # outside the window
    postmark(api, bounce("SoftBounce", 2, now - timedelta(days=2)))
    assert postmark(api, bounce("SoftBounce", 2, now - timedelta(days=2))).json()["duplicate"]
    postmark(api, bounce("Transient", 3, now - timedelta(days=1)))
    assert suppressions(engine) == {}
    response = postmark(api, bounce("SoftBounce", 4, now))
    assert response.json()["suppressed"] == 1
    assert suppressions(engine)[("email", ADDRESS)].reason == "soft_bounce_limit:3"
    assert len(events(engine, "email.bounced")) == 4


def test_spam_complaint_suppresses_every_channel_and_records_email_complained(
    api: TestClient, engine: Engine, contact: str
) -> None:
    payload = bounce("SpamComplaint", 9, datetime.now(UTC), RecordType="SpamComplaint")
    response = postmark(api, payload)
    assert response.status_code == 200, response.text
    assert {k: s.reason for k, s in suppressions(engine).items()} == {
        ("email", ADDRESS): "complaint",
        ("wechat", "o-abc123"): "complaint",
    }
    [event] = events(engine)
    assert (event.name, event.contact_id) == ("email.complained", contact)


def test_bounce_for_an_unknown_address_suppresses_it_without_an_event(
    api: TestClient, engine: Engine
) -> None:
    payload = bounce("HardBounce", 11, datetime.now(UTC), Email="nobody@example.cn")
    response = postmark(api, payload)
    assert response.status_code == 200
    assert response.json()["event"] is None
    assert suppressions(engine)[("email", "nobody@example.cn")].contact_id is None
    assert events(engine) == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"RecordType": "Bounce", "ID": 1, "Type": "HardBounce", "Email": "x@y.cn"}, "BouncedAt"),
        ({"RecordType": "Delivery", "MessageID": "m", "Recipient": "x@y.cn"}, "DeliveredAt"),
        ([1, 2], "body"),
        ({"nothing": "here"}, "RecordType"),
    ],
)
def test_malformed_webhooks_are_400_naming_the_field(
    api: TestClient, engine: Engine, contact: str, payload: Any, field: str
) -> None:
    response = postmark(api, payload)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == field
    nothing_stored(engine)


def test_webhook_body_that_is_not_json_is_400(api: TestClient) -> None:
    response = api.post(
        "/webhooks/postmark",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
        auth=WEBHOOK_AUTH,
    )
    assert response.status_code == 400


# --- one canonical address (issue 17) -------------------------------------------------------


def identify(api: TestClient, engine: Engine, message_id: str, **traits: Any) -> Response:
    key = create_write_key(engine, f"web-{message_id}", source="web")
    body = {"userId": f"user-{message_id}", "messageId": message_id, "traits": traits}
    response: Response = api.post("/v1/identify", json=body, auth=(key, ""))
    return response


def email_identities(engine: Engine) -> dict[str, str]:
    with Session(engine) as session:
        rows = session.exec(select(Identity).where(col(Identity.kind) == "email")).all()
        return {i.value: i.contact_id for i in rows}


def test_an_address_with_a_zero_width_space_is_refused_after_the_real_one_unsubscribed(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str
) -> None:
    assert one_click(api, render(signer, contact).unsubscribe).status_code == 200
    before = email_identities(engine)

    # IDNA would drop the invisible character and mail li.lei@example.cn: refused instead.
    response = identify(api, engine, "m-zw", email="li.lei@exa\u200bmple.cn")

    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert error["field"] == "traits.email"
    assert "ZERO WIDTH SPACE" in error["message"]
    assert email_identities(engine) == before
    assert suppressions(engine).keys() == {("email", ADDRESS)}


@pytest.mark.parametrize(
    "variant",
    [
        "li.lei@ｅｘａｍｐｌｅ.cn",  # full-width domain: IDNA folds it to example.cn
        "ＬＩ．ＬＥＩ@ＥＸＡＭＰＬＥ．ＣＮ",  # full-width everything, full-width dots
        "Li.Lei@Example.cn.",  # the DNS root's trailing dot
        " LI.LEI@EXAMPLE.CN ",
    ],
)
def test_a_variant_of_an_unsubscribed_address_is_the_same_contact_still_unsubscribed(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str, variant: str
) -> None:
    assert one_click(api, render(signer, contact).unsubscribe).status_code == 200

    response = identify(api, engine, "m-variant", email=variant)

    assert response.status_code == 200, response.text
    assert email_identities(engine) == {ADDRESS: contact}  # no second contact
    [event] = events(engine, "identify")
    assert event.contact_id == contact
    assert suppressions(engine).keys() == {("email", ADDRESS)}
    assert [c.granted for c in consents(engine)] == [False]


def test_a_bounce_for_a_variant_of_the_address_suppresses_the_canonical_one(
    api: TestClient, engine: Engine, contact: str
) -> None:
    payload = bounce("HardBounce", 21, datetime.now(UTC), Email="LI.LEI@ＥＸＡＭＰＬＥ.CN")

    response = postmark(api, payload)

    assert response.status_code == 200, response.text
    assert response.json()["event"] == "email.bounced"
    assert set(suppressions(engine)) == {("email", ADDRESS)}
    [event] = events(engine, "email.bounced")
    assert event.contact_id == contact


def test_a_bounce_for_an_address_with_an_invisible_character_is_400_naming_email(
    api: TestClient, engine: Engine, contact: str
) -> None:
    payload = bounce("HardBounce", 22, datetime.now(UTC), Email="li.lei@exa\u200bmple.cn")

    response = postmark(api, payload)

    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["field"] == "Email"
    assert "ZERO WIDTH SPACE" in error["message"]
    nothing_stored(engine)


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("li.lei@example", "should have a period"),
        ("li.lei@@example.cn", "@"),
        ("\u202eli.lei@example.cn", "RIGHT-TO-LEFT OVERRIDE"),
        ("li\u00adlei@example.cn", "SOFT HYPHEN"),
        ("li.lei@example..cn", "two periods"),
        ('"li lei"@example.cn', "Quoting"),
        ("li.lei@[10.0.0.1]", "bracketed IP address"),
    ],
)
def test_malformed_addresses_are_400_naming_the_trait_and_store_nothing(
    api: TestClient, engine: Engine, address: str, says: str
) -> None:
    response = identify(api, engine, "m-bad", email=address)

    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert error["field"] == "traits.email"
    assert says in error["message"]
    assert "name@domain" in error["message"]
    assert email_identities(engine) == {}
    nothing_stored(engine)


# --- documentation --------------------------------------------------------------------------


def test_every_route_has_a_summary_in_the_openapi_document(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    paths = {
        "/u/{token}": ("get", "post"),
        "/u/{token}/preferences": ("get", "post"),
        "/t/c/{token}": ("get",),
        "/t/o/{token}": ("get",),
        "/webhooks/postmark": ("post",),
    }
    for path, methods in paths.items():
        for method in methods:
            assert spec["paths"][path][method]["summary"], (path, method)
    webhook = spec["paths"]["/webhooks/postmark"]["post"]["requestBody"]["content"]
    assert "hard-bounce" in webhook["application/json"]["examples"]


# --- the pages' copy, in zh-CN and en -------------------------------------------------------

PAGE_COPY = {
    "zh-CN": {
        "confirm": ("退订", "不再向"),
        "done": ("您已退订", "管理您的偏好设置"),
        "preferences": ("您的偏好设置", "月度简报", "微信消息"),
        "saved": "已保存。",
        "unsubscribe_wording": "通过我们邮件中的退订链接退订。",
        "preferences_wording": "在偏好设置页面选择了接收渠道和主题。",
    },
    "en": {
        "confirm": ("Unsubscribe", "Stop all email to"),
        "done": ("You are unsubscribed", "Manage your preferences"),
        "preferences": ("Your preferences", "Monthly newsletter", "WeChat messages"),
        "saved": "Saved.",
        "unsubscribe_wording": "Unsubscribed with the link in a message we sent.",
        "preferences_wording": "Chose channels and topics on the preference page.",
    },
}


def _speaks(engine: Engine, contact_id: str, locale: str) -> None:
    """The contact's locale as the contact workflow stores it on the contact row."""
    with Session(engine) as session:
        row = session.get(Contact, contact_id) or Contact(id=contact_id)
        row.locale = locale
        session.add(row)
        session.commit()


@pytest.mark.parametrize("locale", ["zh-CN", "en"])
def test_the_unsubscribe_and_preference_pages_speak_the_contacts_language(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str, locale: str
) -> None:
    _speaks(engine, contact, locale)
    copy = PAGE_COPY[locale]
    email = render(signer, contact)
    # The browser asks for the other language: the contact's own, the one our messages
    # are written in, wins.
    other = {"Accept-Language": "en" if locale == "zh-CN" else "zh-CN"}

    page = api.get(email.unsubscribe, headers=other)
    assert page.status_code == 200
    assert f'<html lang="{locale}">' in page.text
    for sentence in copy["confirm"]:
        assert sentence in page.text
    assert "l***@example.cn" in page.text

    done = api.post(email.unsubscribe, data={"confirm": "unsubscribe"}, headers=other)
    assert done.status_code == 200
    for sentence in copy["done"]:
        assert sentence in done.text
    [withdrawn] = events(engine, "email.unsubscribed")
    assert withdrawn.context["consent_wording"] == copy["unsubscribe_wording"]

    path = email.unsubscribe + "/preferences"
    form = api.get(path, headers=other)
    for sentence in copy["preferences"]:
        assert sentence in form.text
    saved = api.post(path, data={"form": "preferences", "email": "on"}, headers=other)
    assert saved.status_code == 200
    assert copy["saved"] in saved.text
    [chosen] = [e for e in events(engine, "identify") if e.source == "preference_page"]
    assert chosen.context["consent_wording"] == copy["preferences_wording"]


@pytest.mark.parametrize(
    ("accept", "lang", "title"),
    [
        ("zh-CN,zh;q=0.9", "zh-CN", "链接无法验证"),
        ("en-GB", "en", "This link cannot be trusted"),
        (None, "en", "This link cannot be trusted"),  # the pages were English-only before
    ],
)
def test_a_refused_link_is_explained_in_the_browsers_language(
    api: TestClient,
    engine: Engine,
    signer: LinkSigner,
    contact: str,
    accept: str | None,
    lang: str,
    title: str,
) -> None:
    email = render(signer, contact)
    headers = {"Accept-Language": accept} if accept else {}
    for path in (tamper(email.unsubscribe), tamper(email.click)):
        response = api.get(path, headers=headers)
        assert response.status_code == 403
        assert f'<html lang="{lang}">' in response.text
        assert f"<h1>{title}</h1>" in response.text
    nothing_stored(engine)


@pytest.mark.parametrize("locale", ["zh-CN", "en"])
def test_the_consent_wording_stored_is_the_templates(
    api: TestClient, engine: Engine, signer: LinkSigner, contact: str, locale: str
) -> None:
    """The wording lives with the content layouts, where it is translated and reviewed."""
    _speaks(engine, contact, locale)
    source = (BUNDLED_CONTENT_DIR / "_layouts" / "pages" / f"consent.{locale}.j2").read_text()
    email = render(signer, contact)
    assert api.post(email.unsubscribe, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    [withdrawn] = events(engine, "email.unsubscribed")
    wording = withdrawn.context["consent_wording"]
    assert f'set unsubscribe = "{wording}"' in source


def test_a_projects_content_directory_overrides_the_page_copy(
    engine: Engine, settings: Settings, signer: LinkSigner, contact: str, tmp_path: Path
) -> None:
    """A team rewords its unsubscribe page in its own content directory; the bundled
    files fill in every page it leaves out, and a broken copy stops the API at start."""
    pages = tmp_path / "project-content" / "_layouts" / "pages"
    pages.mkdir(parents=True)
    (pages / "unsubscribe.en.html.j2").write_text(
        '{% extends "pages/page.html.j2" %}{% set title = "Leaving Ironbridge news?" %}'
        '{% block body %}<form method="post"><input type="hidden" name="confirm" '
        'value="unsubscribe"><button type=submit>Yes, stop</button></form>{% endblock %}'
    )
    own = settings.model_copy(update={"content_dir": tmp_path / "project-content"})
    with TestClient(create_app(own, db=engine)) as client:
        email = render(signer, contact)
        page = client.get(email.unsubscribe)
        assert "<h1>Leaving Ironbridge news?</h1>" in page.text
        assert "Your preferences" in client.get(email.unsubscribe + "/preferences").text

    (pages / "consent.en.j2").write_text('{% set referral = "I agree." %}')
    broken = settings.model_copy(update={"content_dir": tmp_path / "project-content"})
    with pytest.raises(ConfigurationError) as refused:
        create_app(broken, db=engine)
    assert "consent.en.j2 sets no unsubscribe" in refused.value.message
    assert "_layouts/pages" in refused.value.fix
