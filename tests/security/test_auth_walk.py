"""Promise: no route of the API answers a caller without credentials, except an explicit,
reasoned allow-list of public and self-signed routes; and write keys are kept safe.

The walk takes every operation of the app's OpenAPI spec and every route left out of it
(``include_in_schema=False``: the dashboard, the docs), sends each one a request with no
credential, and classifies the refusal by who refused it:

- ``admin``: 401 with ``WWW-Authenticate: Bearer realm="stagecoach"`` (the admin token;
  503 naming the setting while ``STAGECOACH_ADMIN_TOKEN`` is unset);
- ``write key``: 401 with ``WWW-Authenticate: Basic realm="stagecoach"``;
- ``session``: 303 to ``/dashboard/login`` (the dashboard's signed session cookie).

Every route no guard refused must be in :data:`ALLOW_LIST`, with its reason and the
mechanism that protects it instead (a signed token, a request signature, basic auth of
its own, a random capability code), and every allow-list entry must be a route that is
really answered without those guards: the list is asserted exactly, so a new public
route fails here until someone adds it with a reason. Each allow-listed mechanism is
then checked to refuse what it must, wrong credentials of every kind are refused by each
guard, the right credential opens each guarded route (so the refusals are the guards'
and not an accident), and an app with no credential configured opens nothing.

Write keys: stored as SHA-256 only (no table holds the key), a revoked key is refused
(at once through the API that revoked it, elsewhere within the lookup cache's TTL), the
lookup cache stays bounded whatever keys strangers send, and a key scoped to a source
records that source whatever the payload says; a payload cannot name the contact either.

Guessing: wrong admin tokens (bearer, dashboard and codec sign-in) are throttled per
client, 429 with Retry-After; a signed-out session cookie is refused for good; sign-out
is a same-origin POST.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi import FastAPI, Response
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text, update
from sqlmodel import Session, col, select

from stagecoach.connectors.crm import SIGNATURE_HEADER
from stagecoach.engine.api.routes.events import ReservedSource, create_write_key, hash_key
from stagecoach.engine.api.routes.wechat import drain
from stagecoach.engine.api.sessions import COOKIE, Sessions
from stagecoach.engine.domain.content import CLICK, OPEN, UNSUBSCRIBE, LinkSigner
from stagecoach.engine.services.storage.models import Contact, Event, WriteKey
from stagecoach.engine.settings import DEV_LINK_SECRET, Settings
from tests.helpers import migrated_engine
from tests.security._support import (
    ADMIN_TOKEN,
    LINK_SECRET,
    POSTMARK_USER,
    PUBLIC_URL,
    WECHAT_APP,
    WECHAT_TOKEN,
    count,
    make_app,
    make_settings,
    seed_contact,
)

Route = tuple[str, str]
"""(HTTP method, path template) as the app routes it."""
Headers = Mapping[str, str | bytes]


@dataclass(frozen=True)
class Public:
    """An allow-listed route: what protects it instead of a guard, and why it is public.

    ``kind`` is how the walk checks it:

    - ``open``: no credential at all; a request without one succeeds.
    - ``signed link``: the token in the path is the credential (HMAC, purpose-bound,
      expiring); a forged one is refused 403 and a malformed one 400.
    - ``pixel``: a signed link that answers the same GIF whatever the token, and records
      nothing for a forged one.
    - ``wechat signature``: WeChat signs the query (SHA-1 over the app's token); an
      unsigned request is refused 403.
    - ``hmac header``: the body is signed (Stagecoach-Signature); unsigned is 401.
    - ``basic auth``: its own HTTP basic credentials, not the admin token; none is 401.
    - ``capability``: a random 10-character code (50 bits) is the credential; an unknown
      code is 404 and nothing is stored.
    - ``cors preflight``: an OPTIONS request browsers send without credentials; it
      answers an allowed origin with CORS headers only, and refuses any other (403).
    """

    kind: str
    reason: str


ALLOW_LIST: dict[Route, Public] = {
    # --- ops and docs ------------------------------------------------------------------
    ("GET", "/healthz"): Public(
        "open",
        "liveness probes (load balancers, Kubernetes) carry no credentials; it says "
        "only ok/unavailable and the version",
    ),
    ("GET", "/openapi.json"): Public(
        "open",
        "the API's published contract (Segment clients, webhook senders read it); it "
        "holds no data and no secret",
    ),
    ("GET", "/docs"): Public("open", "Swagger UI over /openapi.json: the same public contract"),
    ("GET", "/docs/oauth2-redirect"): Public("open", "a static page of Swagger UI"),
    ("GET", "/redoc"): Public("open", "ReDoc over /openapi.json: the same public contract"),
    **{
        ("GET", f"/docs/static/{name}"): Public(
            "open", "Swagger UI's and ReDoc's own files, served here instead of a CDN"
        )
        for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
    },
    # --- dashboard sign-in and its static files ----------------------------------------
    ("GET", "/dashboard/login"): Public(
        "open", "where a signed-out reader types the admin token; it shows no data"
    ),
    ("POST", "/dashboard/login"): Public(
        "open",
        "checks the admin token (in the form) and sets the session cookie: the "
        "credential is the body, a wrong one is 401",
    ),
    ("POST", "/dashboard/logout"): Public(
        "open",
        "ends the caller's own session (the cookie is the credential); refused from "
        "another origin, so no other site signs anyone out",
    ),
    ("GET", "/dashboard/static/plotly-{version}.min.js"): Public(
        "open", "the plotly.js bundle from the installed package: public code, no data"
    ),
    ("GET", "/dashboard/static/dashboard.js"): Public(
        "open", "the ten-line chart renderer: public code, no data"
    ),
    # --- the Temporal codec server's browser sign-in ------------------------------------
    ("GET", "/codec/login"): Public(
        "open", "where an operator types the admin token for the Web UI's codec; no data"
    ),
    ("POST", "/codec/login"): Public(
        "open", "checks the admin token (in the form) and sets the codec session cookie"
    ),
    ("POST", "/codec/logout"): Public(
        "open", "ends the caller's own codec session; refused from another origin"
    ),
    ("OPTIONS", "/codec/decode"): Public(
        "cors preflight",
        "browsers send CORS preflights without credentials, by the Fetch "
        "standard; it answers only the Temporal Web UI's origin, with headers and no data",
    ),
    ("OPTIONS", "/codec/encode"): Public("cors preflight", "the same preflight, for encode"),
    # --- email touchpoints: the recipient has only the link ----------------------------
    ("GET", "/u/{token}"): Public(
        "signed link",
        "the unsubscribe link in every email (RFC 8058, CAN-SPAM): the "
        "recipient has no account, the signed token says whom it is for",
    ),
    ("POST", "/u/{token}"): Public(
        "signed link", "RFC 8058 one-click unsubscribe from mailbox providers: signed token"
    ),
    ("GET", "/u/{token}/preferences"): Public(
        "signed link", "the preference page behind the unsubscribe link: signed token"
    ),
    ("POST", "/u/{token}/preferences"): Public(
        "signed link", "saves the preference page: the same signed token"
    ),
    ("GET", "/t/c/{token}"): Public(
        "signed link", "click tracking: redirects only to the URL signed into the token"
    ),
    ("GET", "/t/o/{token}"): Public(
        "pixel", "the open pixel in an email: mail clients fetch it without credentials"
    ),
    # --- peers that sign their own calls ---------------------------------------------
    ("POST", "/webhooks/postmark"): Public(
        "basic auth",
        "Postmark's webhook sends HTTP basic auth of its own "
        "(STAGECOACH_POSTMARK_WEBHOOK_USER/PASSWORD), never the admin token",
    ),
    ("GET", "/wechat/{app}"): Public(
        "wechat signature", "WeChat's server URL check, signed with the app's token"
    ),
    ("POST", "/wechat/{app}"): Public(
        "wechat signature",
        "WeChat's callbacks, signed (and in safe mode encrypted) with "
        "the app's token and EncodingAESKey",
    ),
    ("POST", "/v1/handoffs/{handoff_id}/feedback"): Public(
        "hmac header",
        "the CRM answers a hand-off with the hand-off webhook's own HMAC "
        "signature (STAGECOACH_WEBHOOK_SECRET), fresh within five minutes",
    ),
    # --- referral landing: shared with people who are not contacts yet -----------------
    ("GET", "/r/{code}"): Public(
        "capability",
        "the referral link a promoter shares on WeChat: the random code is "
        "the capability; unknown, expired or used-up codes are refused",
    ),
    ("POST", "/r/{code}"): Public(
        "capability",
        "the sign-up form behind the referral link: same code, screened "
        "against self-referral and loops before anything is stored",
    ),
}

SESSION_ALSO_OPENS: dict[Route, str] = {
    ("POST", "/codec/decode"): "the Temporal Web UI cannot send our bearer token, so the "
    "codec also takes the session cookie from /codec/login: the same admin, signed alike",
    ("POST", "/codec/encode"): "the same, for encode",
}
"""Admin routes that a signed-in session opens too (besides the admin bearer token)."""

_OTHER_SECRET = b"not-the-link-secret-of-this-deployment"


@functools.cache
def forged(purpose: str, secret: bytes = _OTHER_SECRET) -> str:
    """A token of the right shape and purpose, signed with a key the server does not hold
    (by default; the published development secret is another such key)."""
    signer = LinkSigner(secret, "https://mkt.example.com", timedelta(days=30))
    payload = {"c": "c_nobody", "m": "newsletter-monthly", "u": "https://evil.example/"}
    return signer.sign(purpose, payload, datetime.now(UTC))


LINK_PURPOSES = {"/u/": UNSUBSCRIBE, "/t/c/": CLICK, "/t/o/": OPEN}
INGESTION = frozenset({"identify", "track", "page", "screen", "alias", "group", "batch"})

PATH_SAMPLES: dict[str, str] = {
    "app": WECHAT_APP,
    "contact_id": "c_000000000000000000000000",
    "handoff_id": "h_0000000000000000",
    "code": "ZZZZZZZZZZ",
    "coupon_code": "REF-ZZZZZZZZZZ",
    "name": "vip-list",
    "broadcast_id": "walk-broadcast",
}


def is_ingestion(path: str) -> bool:
    """``/v1/identify`` and the other Segment routes: the write key's."""
    parts = path.split("/")
    return len(parts) == 3 and parts[1] == "v1" and parts[2] in INGESTION


def concrete(route: Route, *, token: str | None = None) -> str:
    """A request path for ``route``: its parameters filled with harmless samples (a link's
    token forged, or ``token``)."""
    method, template = route
    for prefix, purpose in LINK_PURPOSES.items():
        if template.startswith(prefix):
            value = forged(purpose) if token is None else token
            return template.replace("{token}", value + (".gif" if purpose == OPEN else ""))

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in PATH_SAMPLES, f"{method} {template}: add a sample for {{{name}}}"
        return PATH_SAMPLES[name]

    return re.sub(r"\{(\w+)\}", fill, template)


BODIES: dict[str, Any] = {
    "/v1/": {"userId": "u-walk", "event": "walk.probed", "messageId": "m-walk", "traits": {}},
    "/webhooks/postmark": {
        "RecordType": "Delivery",
        "MessageID": "00000000-0000-0000-0000-000000000000",
        "Recipient": "li.lei@example.cn",
        "DeliveredAt": "2026-11-22T09:00:04Z",
    },
    "/v1/handoffs/": {"decision": "converted"},
    "/r/": {"name": "Walker", "email": "walker@example.cn", "consent": "yes"},
}


def send(
    client: TestClient,
    route: Route,
    *,
    headers: Headers | None = None,
    path: str | None = None,
) -> httpx.Response:
    """``route`` requested as a stranger would (plus ``headers``)."""
    method, template = route
    url = path or concrete(route)
    if template.startswith("/u/"):
        form = "List-Unsubscribe=One-Click" if "preferences" not in template else "form=preferences"
        response: httpx.Response = client.request(
            method,
            url,
            content=form,
            headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
        )
        return response
    body = next((b for prefix, b in BODIES.items() if template.startswith(prefix)), None)
    if method in ("POST", "DELETE", "PUT", "PATCH"):
        response = client.request(method, url, json=body or {}, headers=dict(headers or {}))
    else:
        response = client.request(method, url, headers=dict(headers or {}))
    return response


def routes_of(app: FastAPI) -> dict[Route, bool]:
    """Every (method, path) the app routes, with whether it is in the OpenAPI schema.

    FastAPI 0.16x resolves included routers lazily; ``iter_route_contexts`` flattens
    them (older versions list every route in ``app.routes`` already).
    """
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    found: dict[Route, bool] = {}
    for route in flatten(app.routes) if flatten is not None else app.routes:
        methods = getattr(route, "methods", None)
        path = getattr(route, "path", None)
        unknown = (
            f"{route!r} is a kind of route this walk does not know (a Mount?): teach "
            "routes_of() to enumerate it, so its paths are walked too"
        )
        assert methods, unknown
        assert path, unknown
        for method in methods - {"HEAD"}:
            found[(method, path)] = bool(getattr(route, "include_in_schema", True))
    return found


def allow_listed(route: Route) -> Public | None:
    """The allow-list entry of ``route`` (the plotly bundle's path carries its version)."""
    method, path = route
    versioned = re.sub(r"plotly-[0-9.]+\.min\.js$", "plotly-{version}.min.js", path)
    return ALLOW_LIST.get((method, versioned))


def guard_of(response: httpx.Response) -> str | None:
    """Which guard refused ``response``, if one did."""
    challenge = response.headers.get("www-authenticate", "")
    if response.status_code == 401 and challenge == 'Bearer realm="stagecoach"':
        return "admin"
    if response.status_code == 401 and challenge == 'Basic realm="stagecoach"':
        return "write key"
    location = response.headers.get("location", "")
    if response.status_code == 303 and location.startswith("/dashboard/login?next="):
        return "session"
    return None


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def routes(api: TestClient) -> dict[Route, bool]:
    app = api.app
    assert isinstance(app, FastAPI)
    return routes_of(app)


@pytest.fixture
def write_key(engine: Engine) -> str:
    return create_write_key(engine, "website", source="website")


def _basic(user: str, password: str = "") -> Headers:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def _session_cookie(api: TestClient) -> str:
    response = api.post(
        "/dashboard/login",
        content=f"token={ADMIN_TOKEN}&next=/dashboard",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 303, response.text
    cookie = api.cookies.get(COOKIE)
    assert cookie
    api.cookies.clear()  # each request below says which cookie it carries
    return str(cookie)


def _guards(api: TestClient, routes: dict[Route, bool]) -> dict[Route, str | None]:
    api.cookies.clear()
    return {route: guard_of(send(api, route)) for route in sorted(routes)}


# --- the walk -------------------------------------------------------------------------------


def test_the_walk_covers_every_route_of_the_spec_and_every_hidden_one(
    api: TestClient, routes: dict[Route, bool]
) -> None:
    app = api.app
    assert isinstance(app, FastAPI)
    spec = app.openapi()
    in_spec = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    }
    hidden = {route for route, schema in routes.items() if not schema}
    assert in_spec == {route for route, schema in routes.items() if schema}
    assert in_spec | hidden == set(routes)
    # Sanity: the walk really sees the routes outside the schema, and the spec's bulk.
    assert ("GET", "/dashboard/contacts/{contact_id}") in hidden
    assert ("GET", "/openapi.json") in hidden
    assert len(in_spec) >= 30


def test_every_route_refuses_a_stranger_except_the_allow_list(
    api: TestClient, engine: Engine, routes: dict[Route, bool]
) -> None:
    seed_contact(engine)
    before = (count(engine, Event), count(engine, Contact))

    guards = _guards(api, routes)

    unguarded = {route for route, guard in guards.items() if guard is None}
    listed = {route for route in routes if allow_listed(route) is not None}
    assert unguarded - listed == set(), (
        "routes answer without the admin token, a write key or a dashboard session: guard "
        "them, or add them to ALLOW_LIST with the reason they are public"
    )
    assert listed - unguarded == set(), "allow-listed routes are guarded now: remove them"
    stale = set(ALLOW_LIST) - {
        (m, re.sub(r"plotly-[0-9.]+\.min\.js$", "plotly-{version}.min.js", p)) for m, p in routes
    }
    assert stale == set(), "ALLOW_LIST names routes the app no longer has"
    # Which guard protects what: the admin API, ingestion, the dashboard pages.
    for (method, path), guard in guards.items():
        if guard is None:
            continue
        if is_ingestion(path):
            assert guard == "write key", (method, path)
        elif path.startswith("/dashboard"):
            assert guard == "session", (method, path)
        else:
            assert guard == "admin", (method, path)
    assert (count(engine, Event), count(engine, Contact)) == before  # nothing stored


def test_each_allow_listed_route_refuses_what_its_own_mechanism_refuses(
    api: TestClient, engine: Engine, routes: dict[Route, bool]
) -> None:
    before = count(engine, Event)
    checked: set[str] = set()
    for route in sorted(routes):
        public = allow_listed(route)
        if public is None:
            continue
        checked.add(public.kind)
        method, template = route
        response = send(api, route)
        where = f"{method} {template}: {response.status_code} {response.text[:120]!r}"
        match public.kind:
            case "open" if method == "POST" and template.endswith("/login"):
                assert response.status_code == 401, where  # the form held no token
                assert "set-cookie" not in response.headers, where
            case "open":
                assert response.status_code < 400, where
            case "signed link":
                assert response.status_code == 403, where  # forged: another key signed it
                purpose = next(
                    p for prefix, p in LINK_PURPOSES.items() if template.startswith(prefix)
                )
                published = concrete(route, token=forged(purpose, DEV_LINK_SECRET.encode()))
                assert send(api, route, path=published).status_code == 403, where
                malformed = concrete(route, token="not-a-token")
                assert send(api, route, path=malformed).status_code == 400, where
            case "pixel":
                assert response.status_code == 200, where
                assert response.headers["content-type"] == "image/gif"
            case "wechat signature":
                assert response.status_code == 403, where
                signed_wrong = f"{concrete(route)}?signature=0&timestamp=1&nonce=2"
                assert send(api, route, path=signed_wrong).status_code == 403, where
            case "hmac header":
                assert response.status_code == 401, where
                assert response.headers["www-authenticate"].startswith(SIGNATURE_HEADER)
                stale = {SIGNATURE_HEADER: f"t={int(datetime.now(UTC).timestamp())},v1=00"}
                assert send(api, route, headers=stale).status_code == 401, where
            case "basic auth":
                assert response.status_code == 401, where
                assert response.headers["www-authenticate"] == 'Basic realm="stagecoach-webhooks"'
                assert send(api, route, headers=_basic(POSTMARK_USER, "x")).status_code == 401
                admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
                assert send(api, route, headers=admin).status_code == 401, where
            case "capability":
                assert response.status_code == 404, where
            case "cors preflight":
                assert response.status_code == 403, where  # no Origin: not a browser's
                evil = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
                refused = send(api, route, headers=evil)
                assert refused.status_code == 403, where
                assert "access-control-allow-origin" not in refused.headers, where
                assert refused.content == b"", where
            case _:
                pytest.fail(f"{where}: unknown allow-list kind {public.kind!r}")
    assert checked == {p.kind for p in ALLOW_LIST.values()}
    assert count(engine, Event) == before  # a forged pixel or link records nothing


def _wrong_credentials(api: TestClient, write_key: str) -> dict[str, list[Headers]]:
    """Per guard, credentials that must not open it: wrong ones and other guards' ones."""
    session = _session_cookie(api)
    link_token = forged(UNSUBSCRIBE)
    # A cookie signed for the dashboard's purpose but with the bare link secret: the
    # session key is derived from the link secret *and* the admin token.
    underived = LinkSigner(LINK_SECRET.encode(), "https://mkt.example.com", timedelta(hours=1))
    plain_session = underived.sign("dashboard-session", {"sub": "admin"}, datetime.now(UTC))
    # A well-formed session (signed with the right derived key) whose id was never stored.
    key = hmac.digest(
        LINK_SECRET.encode(),
        b"stagecoach dashboard session key\x00" + ADMIN_TOKEN.encode(),
        "sha256",
    )
    unstored = LinkSigner(key, "https://mkt.example.com", timedelta(hours=1)).sign(
        "dashboard-session", {"sub": "admin", "sid": "never-issued"}, datetime.now(UTC)
    )
    sessionless = LinkSigner(key, "https://mkt.example.com", timedelta(hours=1)).sign(
        "dashboard-session", {"sub": "admin"}, datetime.now(UTC)
    )
    return {
        "admin": (
            [
                {"Authorization": "Bearer wrong-token"},
                {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
                {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
                {"Authorization": "Bearer tökén-ñon-ascii".encode()},  # bytes: httpx sends UTF-8
                {"Authorization": f"Token {ADMIN_TOKEN}"},
                _basic(ADMIN_TOKEN),
                _basic("admin", ADMIN_TOKEN),
                {"Authorization": f"Bearer {write_key}"},
                {"X-Admin-Token": ADMIN_TOKEN},
                {"Cookie": f"{COOKIE}={session}"},  # the dashboard session is not the API's
            ]
        ),
        "write key": (
            [
                _basic("sk_wrong"),
                _basic(write_key + "x"),
                _basic(ADMIN_TOKEN),
                {"Authorization": f"Bearer {ADMIN_TOKEN}"},
                {"Authorization": f"Bearer {write_key}"},
                {"Authorization": "Basic !!!not-base64!!!"},
            ]
        ),
        "session": (
            [
                {"Cookie": f"{COOKIE}=forged"},
                {"Cookie": f"{COOKIE}={session}x"},
                {"Cookie": f"{COOKIE}={link_token}"},
                {"Cookie": f"{COOKIE}={plain_session}"},
                {"Cookie": f"{COOKIE}={unstored}"},
                {"Cookie": f"{COOKIE}={sessionless}"},
                {"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ]
        ),
    }


def test_wrong_and_borrowed_credentials_are_refused_by_every_guard(
    api: TestClient, engine: Engine, routes: dict[Route, bool], write_key: str
) -> None:
    guards = _guards(api, routes)
    before = count(engine, Event)
    wrong = _wrong_credentials(api, write_key)
    for route, guard in guards.items():
        if guard is None:
            continue
        for headers in wrong[guard]:
            if route in SESSION_ALSO_OPENS and "Cookie" in headers and guard == "admin":
                continue  # a valid session is this route's second credential
            api.cookies.clear()
            response = send(api, route, headers=headers)
            assert guard_of(response) == guard, (route, headers, response.status_code)
    # The write key in the body, wrong, is refused like a wrong header.
    response = api.post("/v1/track", json={**BODIES["/v1/"], "writeKey": "sk_wrong"})
    assert response.status_code == 401
    assert count(engine, Event) == before


def test_the_right_credential_opens_each_guarded_route(
    api: TestClient, routes: dict[Route, bool], write_key: str
) -> None:
    """The positive control: each refusal above is its guard's, not an accident."""
    guards = _guards(api, routes)
    session = _session_cookie(api)
    right = {
        "admin": {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        "write key": _basic(write_key),
        "session": {"Cookie": f"{COOKIE}={session}"},
    }
    for route, guard in guards.items():
        if guard is None:
            continue
        api.cookies.clear()
        response = send(api, route, headers=right[guard])
        assert guard_of(response) is None, (route, response.status_code, response.text[:200])
        assert response.status_code not in (401, 403), (route, response.text[:200])
        assert "is not set" not in response.text, route
    for route in SESSION_ALSO_OPENS:
        api.cookies.clear()
        response = send(api, route, headers=right["session"])
        assert guard_of(response) is None, (route, response.status_code)
        assert response.status_code not in (401, 403), route


def test_an_app_without_credentials_configured_opens_nothing(tmp_path: Path) -> None:
    """No admin token, no webhook secrets, no WeChat app: every guarded route stays shut
    (503 naming the setting, never a 2xx), whatever a caller sends."""
    settings = make_settings(tmp_path, configured=False)
    engine = migrated_engine(settings.resolved_database_url)
    guesses: list[Headers] = [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer None"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        _basic(""),
    ]
    try:
        with TestClient(make_app(settings, engine), follow_redirects=False) as api:
            app = api.app
            assert isinstance(app, FastAPI)
            for route in sorted(routes_of(app)):
                template = route[1]
                public = allow_listed(route)
                for headers in guesses:
                    response = send(api, route, headers=headers)
                    status = response.status_code
                    where = (route, headers, status, response.text[:100])
                    if public is None and template.startswith("/dashboard"):
                        assert guard_of(response) == "session", where
                    elif public is None and is_ingestion(template):
                        assert guard_of(response) == "write key", where
                    elif public is None:
                        assert status == 503, where  # admin API and /metrics: off
                        assert "STAGECOACH_ADMIN_TOKEN" in response.text, where
                    elif public.kind in ("basic auth", "hmac header"):
                        assert status == 503, where  # the webhook is off until configured
                    elif public.kind == "wechat signature":
                        assert status == 404, where  # no such app
                    elif template.endswith("/login"):
                        assert status == 503, where  # nobody can sign in
    finally:
        engine.dispose()


def test_a_blank_admin_token_counts_as_unset(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, admin_token="   ")
    engine = migrated_engine(settings.resolved_database_url)
    try:
        with TestClient(make_app(settings, engine), follow_redirects=False) as api:
            for headers in ({}, {"Authorization": "Bearer    "}, {"Authorization": "Bearer  "}):
                response = api.get("/v1/contacts/c_x", headers=headers)
                assert response.status_code == 503, response.text
    finally:
        engine.dispose()


def test_metrics_opens_only_when_the_operator_says_the_port_is_private(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, metrics_public=True)
    engine = migrated_engine(settings.resolved_database_url)
    try:
        with TestClient(make_app(settings, engine), follow_redirects=False) as api:
            assert api.get("/metrics").status_code == 200
            assert guard_of(api.get("/v1/reports/funnel")) == "admin"  # nothing else opens
            assert guard_of(api.get("/v1/contacts/c_x")) == "admin"
    finally:
        engine.dispose()


@pytest.mark.skip(
    reason="the admin token is compared with hmac.compare_digest over SHA-256 digests "
    "(engine/api/auth.py, engine/api/sessions.py): a code-inspection property; a "
    "timing test would be flaky and prove little"
)
def test_admin_token_is_compared_in_constant_time() -> None:
    """Listed so the suite says which promise it leaves to review."""


# --- write keys -------------------------------------------------------------------------------


def test_write_keys_are_stored_only_as_their_hash(engine: Engine, api: TestClient) -> None:
    key = create_write_key(engine, "website", source="website")
    assert key.startswith("sk_")
    assert len(key) >= 32
    with Session(engine) as session:
        [row] = session.exec(select(WriteKey)).all()
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest() == hash_key(key)
    # No column of any table holds the key, whole or in part.
    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        assert raw is not None
        dump = "\n".join(raw.iterdump())
    assert key not in dump
    assert key.removeprefix("sk_")[:16] not in dump
    # ... and the key still works: what is stored is enough to check it.
    response = api.post("/v1/track", json=BODIES["/v1/"], auth=(key, ""))
    assert response.status_code == 200, response.text


def test_a_revoked_write_key_is_refused(engine: Engine, api: TestClient) -> None:
    key = create_write_key(engine, "old-website", source="website")
    app = api.app
    assert isinstance(app, FastAPI)
    clock = [1000.0]
    app.state.clock = lambda: clock[0]
    ok = api.post("/v1/track", json={**BODIES["/v1/"], "messageId": "m-1"}, auth=(key, ""))
    assert ok.status_code == 200, ok.text
    with Session(engine) as session:
        session.execute(
            update(WriteKey)
            .where(col(WriteKey.key_hash) == hash_key(key))
            .values(revoked_at=datetime.now(UTC))
        )
        session.commit()
    clock[0] += 31  # past the lookup cache's TTL (30 s): the revocation is seen
    before = count(engine, Event)
    for auth_kind in ("header", "body"):
        body = {**BODIES["/v1/"], "messageId": f"m-{auth_kind}"}
        if auth_kind == "body":
            response = api.post("/v1/track", json={**body, "writeKey": key})
        else:
            response = api.post("/v1/track", json=body, auth=(key, ""))
        assert response.status_code == 401, response.text
    batch = {"batch": [{**BODIES["/v1/"], "type": "track", "messageId": "m-batch"}]}
    assert api.post("/v1/batch", json=batch, auth=(key, "")).status_code == 401
    assert count(engine, Event) == before


def _sources(engine: Engine) -> dict[str, str]:
    with Session(engine) as session:
        return {e.message_id: e.source for e in session.exec(select(Event)).all()}


def test_a_scoped_write_key_records_its_source_whatever_the_payload_says(
    engine: Engine, api: TestClient
) -> None:
    key = create_write_key(engine, "marketing-site", source="website")
    claims = {
        "source": "wechat",
        "context": {"source": "wechat", "library": {"name": "wechat"}},
        "integrations": {"source": "postmark"},
        "properties": {"source": "unsubscribe_link"},
    }
    for kind in ("identify", "track", "page", "alias", "group"):
        body: dict[str, Any] = {
            **claims,
            "userId": "u-scope",
            "messageId": f"m-scope-{kind}",
            "event": "scope.probed",
            "previousId": "a-scope",
            "groupId": "g-scope",
        }
        response = api.post(f"/v1/{kind}", json=body, auth=(key, ""))
        assert response.status_code == 200, (kind, response.text)
    batch = {
        "batch": [
            {**claims, "type": "track", "userId": "u-scope", "event": "e", "messageId": "m-b1"},
            {**claims, "type": "identify", "userId": "u-scope", "messageId": "m-b2"},
        ],
        "context": {"source": "wechat"},
        "source": "wechat",
    }
    assert api.post("/v1/batch", json=batch, auth=(key, "")).status_code == 200
    # The key in the body instead of the header: the same scope.
    in_body = {**BODIES["/v1/"], **claims, "messageId": "m-body", "writeKey": key}
    assert api.post("/v1/track", json=in_body).status_code == 200
    sources = _sources(engine)
    assert len(sources) == 8
    assert set(sources.values()) == {"website"}


def test_an_unscoped_write_key_records_its_name(engine: Engine, api: TestClient) -> None:
    key = create_write_key(engine, "crm-sync")
    body = {**BODIES["/v1/"], "context": {"source": "website"}, "source": "website"}
    assert api.post("/v1/track", json=body, auth=(key, "")).status_code == 200
    assert set(_sources(engine).values()) == {"crm-sync"}


def test_a_payload_cannot_name_the_contact_it_is_stored_on(engine: Engine, api: TestClient) -> None:
    """``Incoming.contact_id`` is for our own signed links; a Segment body never sets it."""
    victim = seed_contact(engine, user_id="u-victim", email="victim@example.cn")
    key = create_write_key(engine, "website", source="website")
    body = {
        **BODIES["/v1/"],
        "userId": "u-attacker",
        "contact_id": victim,
        "contactId": victim,
        "context": {"contact_id": victim},
    }
    assert api.post("/v1/track", json=body, auth=(key, "")).status_code == 200
    with Session(engine) as session:
        event = session.exec(select(Event).where(col(Event.message_id) == "m-walk")).one()
        assert event.contact_id != victim
        victims = session.exec(select(Event).where(col(Event.contact_id) == victim)).all()
    assert [e.message_id for e in victims] == ["seed-u-victim"]


def test_the_write_keys_table_has_no_plaintext_column(engine: Engine) -> None:
    with engine.connect() as connection:
        columns = [row[1] for row in connection.execute(text("PRAGMA table_info(write_keys)"))]
    assert set(columns) == {"key_hash", "name", "source", "created_at", "revoked_at"}


def test_a_write_key_cannot_record_a_source_only_the_api_itself_attests(
    engine: Engine, api: TestClient
) -> None:
    from stagecoach.engine.services.storage.interactions import (
        SOURCE,
        contact_last_interaction,
    )

    # A key named, or scoped to, a source only the API attests is refused at creation,
    # so no event sent with a key can reopen WeChat's customer-service window.
    for name, source in ((SOURCE, None), ("crm", SOURCE), ("site", "email_tracking")):
        with pytest.raises(ReservedSource, match="cannot record source"):
            create_write_key(engine, name, source=source)
    key = create_write_key(engine, "website", source="web")
    body = {**BODIES["/v1/"], "event": "wechat.message_received"}
    assert api.post("/v1/track", json=body, auth=(key, "")).status_code == 200
    with Session(engine) as session:
        event = session.exec(select(Event).where(col(Event.message_id) == "m-walk")).one()
    assert contact_last_interaction(engine, event.contact_id) is None


# --- WeChat: a signature is usable once, and only now (issue 17) -------------------------


def _wechat_query(timestamp: int, nonce: str) -> dict[str, str]:
    stamp = str(timestamp)
    return {
        "timestamp": stamp,
        "nonce": nonce,
        "signature": hashlib.sha1(
            "".join(sorted((WECHAT_TOKEN, stamp, nonce))).encode(), usedforsecurity=False
        ).hexdigest(),
    }


def _wechat_text(openid: str, content: str) -> bytes:
    return (
        f"<xml><ToUserName>gh_0123456789ab</ToUserName><FromUserName>{openid}</FromUserName>"
        f"<CreateTime>{int(datetime.now(UTC).timestamp())}</CreateTime>"
        f"<MsgType>text</MsgType><Content>{content}</Content><MsgId>{len(content)}</MsgId></xml>"
    ).encode()


def test_a_wechat_signature_is_refused_outside_its_window_and_used_once(
    api: TestClient, engine: Engine
) -> None:
    """The signature WeChat puts on a callback (token, timestamp, nonce; not the body in
    plaintext mode) authenticates one request, now: an hour-old or future one is 403
    on both routes, and a signed URL seen once stores nothing the second time, whatever
    body and sender it carries. Every reply is text that no browser may sniff."""
    path = f"/wechat/{WECHAT_APP}"
    now = int(datetime.now(UTC).timestamp())
    before = count(engine)
    for offset in (-3600, -600, 600, 3600):
        stale = _wechat_query(now + offset, f"stale{offset}")
        refused = api.post(path, params=stale, content=_wechat_text("oVictim01", "hi"))
        assert refused.status_code == 403, (offset, refused.text)
        check = api.get(path, params={**stale, "echostr": "x"})
        assert check.status_code == 403, (offset, check.text)
        assert refused.headers["x-content-type-options"] == "nosniff"
    fresh = _wechat_query(now, "fresh-once")
    first = api.post(path, params=fresh, content=_wechat_text("oVictim01", "hello"))
    assert (first.status_code, first.text) == (200, "success")
    for sender in ("oVictim01", "oOther002"):
        again = api.post(path, params=fresh, content=_wechat_text(sender, "replayed body"))
        assert again.status_code == 200  # WeChat's own retry must not show its user an error
        assert again.headers["x-content-type-options"] == "nosniff"
    echo = api.get(path, params={**_wechat_query(now, "echo"), "echostr": "<b>x</b>"})
    assert echo.headers["x-content-type-options"] == "nosniff"
    assert echo.headers["content-type"].startswith("text/plain")
    assert api.portal is not None
    assert isinstance(api.app, FastAPI)
    api.portal.call(drain, api.app)
    assert count(engine) == before + 1  # the first call only


# --- the API's docs load nothing from another host (issue 17) -----------------------------


def test_the_docs_pages_load_their_scripts_from_this_api(api: TestClient) -> None:
    """Swagger UI and ReDoc came from a CDN without integrity: whoever served them ran
    script beside the API. Every script, style and icon the pages name is now a path of
    this API, and is served with its type and nosniff."""
    for page in ("/docs", "/redoc"):
        response = api.get(page)
        assert response.status_code == 200, page
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", response.text)
        assets = [u for u in urls if not u.startswith("/openapi.json")]
        assert assets, page
        for url in assets:
            assert url.startswith("/docs/static/"), (page, url)
            asset = api.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 1000, url
            assert asset.headers["x-content-type-options"] == "nosniff"
        assert "cdn." not in response.text, page
        assert "fonts.googleapis" not in response.text, page
    script = api.get("/docs/static/swagger-ui-bundle.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert b"SwaggerUIBundle" in script.content
    assert api.get("/docs/static/../../etc/passwd").status_code == 404


def test_a_write_key_revoked_through_the_api_is_refused_at_once(
    engine: Engine, api: TestClient
) -> None:
    """The instance that revokes a key forgets its cached lookup: no 30 s of grace."""
    key = create_write_key(engine, "old-website", source="website")
    app = api.app
    assert isinstance(app, FastAPI)
    app.state.clock = lambda: 1000.0  # time stands still: only the revocation can act
    ok = api.post("/v1/track", json={**BODIES["/v1/"], "messageId": "m-1"}, auth=(key, ""))
    assert ok.status_code == 200, ok.text
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    revoked = api.post("/v1/write-keys/revoke", json={"key": key}, headers=admin)

    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["name"] == "old-website"
    before = count(engine, Event)
    again = api.post("/v1/track", json={**BODIES["/v1/"], "messageId": "m-2"}, auth=(key, ""))
    assert again.status_code == 401, again.text
    assert count(engine, Event) == before
    # Revoking twice answers the same; an unknown key is a 404 that names the fix.
    assert api.post("/v1/write-keys/revoke", json={"key": key}, headers=admin).json() == (
        revoked.json()
    )
    unknown = api.post("/v1/write-keys/revoke", json={"key": "sk_nope"}, headers=admin)
    assert unknown.status_code == 404
    assert "stagecoach keys create" in unknown.text


def test_strangers_keys_do_not_grow_the_lookup_cache_without_bound(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, write_key_cache_size=50)
    engine = migrated_engine(settings.resolved_database_url)
    key = create_write_key(engine, "website", source="website")
    try:
        with TestClient(make_app(settings, engine), follow_redirects=False) as api:
            app = api.app
            assert isinstance(app, FastAPI)
            assert api.post("/v1/track", json=BODIES["/v1/"], auth=(key, "")).status_code == 200
            for n in range(300):
                made_up = _basic(f"sk_made_up_{n:04d}")
                assert api.post("/v1/track", json=BODIES["/v1/"], headers=made_up).status_code == (
                    401
                )
            assert len(app.state.write_keys) <= 50
            # The real key still works (looked up again if it was dropped).
            body = {**BODIES["/v1/"], "messageId": "m-after"}
            assert api.post("/v1/track", json=body, auth=(key, "")).status_code == 200
    finally:
        engine.dispose()


# --- guessing the admin token, and sessions -------------------------------------------------


@pytest.fixture
def throttled(tmp_path: Path) -> Any:
    """An app that lets a client send 3 wrong admin tokens per 60 s, with a movable clock."""
    settings = make_settings(tmp_path, auth_failure_limit=3, auth_failure_window=60)
    engine = migrated_engine(settings.resolved_database_url)
    app = make_app(settings, engine)
    clock = [5000.0]
    app.state.clock = lambda: clock[0]
    try:
        yield app, clock
    finally:
        engine.dispose()


def _sign_in(api: TestClient, where: str, token: str) -> httpx.Response:
    response: httpx.Response = api.post(
        f"/{where}/login",
        content=f"token={token}&next=/{where}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    return response


def _admin_get(api: TestClient, token: str) -> httpx.Response:
    response: httpx.Response = api.get(
        "/v1/reports/funnel", headers={"Authorization": f"Bearer {token}"}
    )
    return response


def _codec_bearer(api: TestClient, token: str) -> httpx.Response:
    response: httpx.Response = api.post(
        "/codec/decode", json={"payloads": []}, headers={"Authorization": f"Bearer {token}"}
    )
    return response


GUESSES = {
    "admin bearer": _admin_get,
    "dashboard sign-in": lambda api, token: _sign_in(api, "dashboard", token),
    "codec sign-in": lambda api, token: _sign_in(api, "codec", token),
    "codec bearer": _codec_bearer,
}


@pytest.mark.parametrize("door", sorted(GUESSES))
def test_wrong_admin_tokens_are_throttled_per_client(throttled: Any, door: str) -> None:
    app, clock = throttled
    guess = GUESSES[door]
    with (
        TestClient(app, follow_redirects=False, client=("203.0.113.7", 4000)) as guesser,
        TestClient(app, follow_redirects=False, client=("198.51.100.9", 4000)) as other,
    ):
        for n in range(3):
            assert guess(guesser, f"wrong-guess-{n}").status_code == 401, n
        refused = guess(guesser, "wrong-guess-4")
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert "too many wrong admin tokens" in refused.text
        # Throttled means unheard: even the right token waits, so the answers say
        # nothing about the guesses.
        assert guess(guesser, ADMIN_TOKEN).status_code == 429
        # Every door shares one count: the admin API is shut to this client too.
        assert _admin_get(guesser, ADMIN_TOKEN).status_code == 429
        # Another client is not slowed by this one.
        assert guess(other, ADMIN_TOKEN).status_code not in (401, 429)
        clock[0] += 61  # the oldest failure leaves the window
        assert guess(guesser, ADMIN_TOKEN).status_code not in (401, 429)


def test_right_tokens_are_never_slowed(throttled: Any) -> None:
    app, _clock = throttled
    with TestClient(app, follow_redirects=False) as api:
        for _ in range(20):
            assert _admin_get(api, ADMIN_TOKEN).status_code == 200
        # Calls that send no token at all guess nothing and are not counted either.
        for _ in range(20):
            assert api.get("/v1/reports/funnel").status_code == 401
        assert _admin_get(api, "wrong").status_code == 401


@pytest.fixture
def browser(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """The app as a browser at its public (https) URL sees it: Secure cookies come back."""
    with TestClient(make_app(settings, engine), base_url=PUBLIC_URL) as client:
        yield client


def _protected_page(client: TestClient, where: str) -> httpx.Response:
    """A request only a session opens: a dashboard page, or a codec call."""
    if where == "dashboard":
        response: httpx.Response = client.get("/dashboard", follow_redirects=False)
    else:
        response = client.post("/codec/decode", json={"payloads": []})
    return response


@pytest.mark.parametrize("where", ["dashboard", "codec"])
def test_a_cookie_is_refused_after_its_session_signed_out(browser: TestClient, where: str) -> None:
    """Logout ends the session on the server: a copy of the cookie (stolen, or kept by
    another tab) is refused from then on, not for the rest of its 12 hours."""
    assert _sign_in(browser, where, ADMIN_TOKEN).status_code in (200, 303)
    cookie = browser.cookies.get(COOKIE)
    assert cookie
    page = functools.partial(_protected_page, browser, where)
    assert page().status_code not in (303, 401)

    signed_out = browser.post(f"/{where}/logout")
    assert signed_out.status_code in (200, 303)

    browser.cookies.set(COOKIE, str(cookie), path=f"/{where}")
    refused = page()
    assert refused.status_code == (303 if where == "dashboard" else 401), refused.text
    if where == "dashboard":
        assert "expired=1" in refused.headers["location"]


@pytest.mark.parametrize("where", ["dashboard", "codec"])
def test_sign_out_is_a_same_origin_post(browser: TestClient, where: str) -> None:
    assert _sign_in(browser, where, ADMIN_TOKEN).status_code in (200, 303)
    cookie = str(browser.cookies.get(COOKIE))
    check = functools.partial(_protected_page, browser, where)
    # A link (GET) signs nobody out.
    assert browser.get(f"/{where}/logout").status_code == 405
    # Another site's form (its Origin, or a cross-site fetch) is refused, the session kept.
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        refused = browser.post(f"/{where}/logout", headers=headers)
        assert refused.status_code == 403, (headers, refused.text)
        browser.cookies.set(COOKIE, cookie, path=f"/{where}")
        assert check().status_code not in (303, 401)
    # From the API's own origin (its public URL), it works.
    ours = browser.post(f"/{where}/logout", headers={"Origin": PUBLIC_URL})
    assert ours.status_code in (200, 303)
    browser.cookies.set(COOKIE, cookie, path=f"/{where}")
    assert check().status_code in (303, 401)


@pytest.mark.parametrize("where", ["dashboard", "codec"])
def test_signing_out_with_an_expired_or_forged_cookie_just_signs_out(
    browser: TestClient, settings: Settings, where: str
) -> None:
    stale = Response()
    Sessions(settings, path=f"/{where}").issue(stale, datetime.now(UTC) - timedelta(days=1))
    expired = stale.headers["set-cookie"].split(";")[0].partition("=")[2]
    for cookie in (expired, "forged"):
        browser.cookies.set(COOKIE, cookie, path=f"/{where}")
        answer = browser.post(f"/{where}/logout", follow_redirects=False)
        assert answer.status_code in (200, 303), answer.text
