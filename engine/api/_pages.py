"""Small server-rendered pages for the email and referral touchpoints: no JavaScript, no
assets, in zh-CN or en.

The copy lives with the content layouts, in ``content/_layouts/pages/``: one template per
page and locale (``unsubscribe.en.html.j2``), each extending the shared document
(``page.html.j2``), and the consent wording stored with each consent
(``consent.<locale>.j2``). A content directory's own ``_layouts/pages`` overrides the
bundled files one by one. They are rendered with the content library's sandboxed Jinja
environment, autoescaping on, so callers pass plain text. The headers keep the signed
token in the URL from leaking (``no-referrer``), from being cached, and from being
indexed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import TemplateError

from stagecoach.engine.domain.content import BUNDLED_CONTENT_DIR
from stagecoach.engine.domain.content._render import make_environment
from stagecoach.engine.domain.errors import ConfigurationError
from stagecoach.engine.services.links import Refused

Locale = Literal["zh-CN", "en"]
LOCALES: tuple[Locale, ...] = ("zh-CN", "en")

PAGES_DIR = BUNDLED_CONTENT_DIR / "_layouts" / "pages"
"""The bundled page templates (``<page>.<locale>.html.j2``) and consent wording."""

PAGES: tuple[str, ...] = (
    "link-problem",
    "unsubscribe",
    "unsubscribed",
    "preferences",
    "referral",
    "referral-thanks",
    "referral-problem",
)
"""Every page the API renders; each needs a template per locale."""

CONSENT_PURPOSES: tuple[str, ...] = ("referral", "unsubscribe", "preferences")
"""The consent wordings ``consent.<locale>.j2`` must set."""

PAGE_HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}
"""Sent with every page, including error pages."""

EMAIL_DEFAULT_LOCALE: Locale = "en"
"""The email pages' locale for a reader whose contact has none and whose browser names
neither (they were English-only before they had templates)."""


class Pages:
    """The page templates of ``folders``, a later folder's file replacing an earlier one
    of the same name: a project that puts ``_layouts/pages/unsubscribe.zh-CN.html.j2`` in
    its content directory gets its own wording, and the bundled file for the rest.

    Raises:
        ConfigurationError: a page, a locale or a consent wording is missing, or a
            template does not compile. The API refuses to start rather than answer an
            unsubscribe link with a 500.
    """

    def __init__(self, *folders: Path) -> None:
        templates: dict[str, str] = {}
        for folder in folders:
            if folder.is_dir():
                for path in sorted(folder.glob("*.j2")):
                    templates[f"pages/{path.name}"] = path.read_text("utf-8")
        self.folders = folders
        self._env = make_environment(templates, html_mode=True)
        try:
            self._wording = {
                (purpose, locale): self._read_wording(purpose, locale)
                for purpose in CONSENT_PURPOSES
                for locale in LOCALES
            }
            for page in PAGES:
                for locale in LOCALES:
                    self._env.get_template(f"pages/{page}.{locale}.html.j2")
        except (TemplateError, LookupError) as exc:
            where = " and ".join(str(f) for f in folders) or "no folder"
            raise ConfigurationError(
                f"the page templates in {where} are incomplete: {exc}",
                fix="copy content/_layouts/pages from the Stagecoach repository into "
                "<STAGECOACH_CONTENT_DIR>/_layouts/pages and edit the copy",
            ) from exc

    @classmethod
    def for_content(cls, content_dir: Path) -> Pages:
        """The bundled pages, overridden by ``content_dir/_layouts/pages``; read now."""
        folders = (PAGES_DIR.resolve(), (content_dir / "_layouts" / "pages").resolve())
        return cls(*dict.fromkeys(folders))

    def _read_wording(self, purpose: str, locale: Locale) -> str:
        module = self._env.get_template(f"pages/consent.{locale}.j2").module
        wording = getattr(module, purpose, None)
        if not isinstance(wording, str) or not wording.strip():
            raise LookupError(f"consent.{locale}.j2 sets no {purpose}")
        return wording

    def render(
        self, page: str, locale: Locale, *, status: int = 200, **values: Any
    ) -> HTMLResponse:
        """``pages/<page>.<locale>.html.j2`` with ``values``, as a complete response."""
        template = self._env.get_template(f"pages/{page}.{locale}.html.j2")
        document = template.render(locale=locale, **values)
        return HTMLResponse(document, status_code=status, headers=dict(PAGE_HEADERS))

    def consent_wording(self, purpose: str, locale: Locale) -> str:
        """The sentence stored with a consent decision made on a page (``referral``,
        ``unsubscribe``, ``preferences``), exactly as ``consent.<locale>.j2`` words it."""
        return self._wording[(purpose, locale)]


@functools.cache
def bundled() -> Pages:
    """The bundled pages alone, read once."""
    return Pages(PAGES_DIR)


def pages(request: Request) -> Pages:
    """The app's pages (``app.state.pages``), made from its settings on first use."""
    found: Pages | None = getattr(request.app.state, "pages", None)
    if found is None:
        found = Pages.for_content(request.app.state.settings.resolved_content_dir)
        request.app.state.pages = found
    return found


def locale_of(tag: str | None) -> Locale | None:
    """zh-CN for any Chinese tag (``zh``, ``zh-Hans-CN``), en for any English one."""
    tag = (tag or "").strip().lower()
    if tag.startswith("zh"):
        return "zh-CN"
    if tag.startswith("en"):
        return "en"
    return None


def negotiate_locale(
    accept_language: str | None, override: str | None = None, *, default: Locale = "zh-CN"
) -> Locale:
    """zh-CN or en: ``override`` when it is one, else the reader's preferred of the two
    by Accept-Language q-values (earlier wins a tie), else ``default``."""
    if override in LOCALES:
        return override
    best: tuple[float, Locale] | None = None
    for part in (accept_language or "").split(","):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        locale = locale_of(tag)
        if locale is not None and q > 0 and (best is None or q > best[0]):
            best = (q, locale)
    return best[1] if best else default


def email_page_locale(accept_language: str | None, contact_locale: str | None = None) -> Locale:
    """The locale of an unsubscribe, preference or link page: the contact's (the one our
    messages are written in) when it is zh or en, else the browser's, else English."""
    return locale_of(contact_locale) or negotiate_locale(
        accept_language, default=EMAIL_DEFAULT_LOCALE
    )


def render(
    request: Request, page: str, locale: Locale, *, status: int = 200, **values: Any
) -> HTMLResponse:
    """The app's ``page`` in ``locale`` (see :meth:`Pages.render`)."""
    return pages(request).render(page, locale, status=status, **values)


def refusal_page(
    request: Request, refused: Refused, locale: Locale, page: str = "link-problem"
) -> HTMLResponse:
    """What went wrong and what the reader can do about it, with the refusal's status."""
    response = render(
        request, page, locale, status=refused.status, reason=refused.reason, **refused.details
    )
    if refused.status == 503:
        response.headers["Retry-After"] = "30"
    return response


def consent_wording(request: Request, purpose: str, locale: Locale) -> str:
    """The app's consent wording (see :meth:`Pages.consent_wording`)."""
    return pages(request).consent_wording(purpose, locale)


def mask_address(address: str) -> str:
    """``l***@example.cn``: enough to recognise one's own address, not to harvest it."""
    local, at, domain = address.partition("@")
    if not at:
        return address[:1] + "***"
    return f"{local[:1]}***@{domain}"


def masked(addresses: Iterable[str]) -> list[str]:
    return [mask_address(a) for a in addresses]
