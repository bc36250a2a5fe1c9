"""The content library: load and validate the catalog, select the next best item, render."""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import css_inline
from jinja2 import Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

import stagecoach

from ._errors import ContentValidationError, RenderError, UnknownContentError
from ._fastpath import Skeleton, build_skeleton
from ._loader import (
    EMAIL_PARTS,
    LAYOUT_DIR,
    ParsedItem,
    Problems,
    WechatSpec,
    check_template,
    read_item,
    read_layouts,
)
from ._model import ContentItem, RenderContact, RenderedMessage, funnel_stage_for
from ._render import (
    BUILTIN_NAMES,
    WECHAT_FIELD_LIMIT,
    add_pixel,
    fit_wechat_field,
    make_environment,
    make_inliner,
    one_line,
    rewrite_links,
)
from ._signing import LinkSigner

BUNDLED_CONTENT_DIR = Path(stagecoach.__file__).parent / "content"
"""The starter catalog and the page layouts: the repository's ``content/`` folder, shipped in
the wheel as ``stagecoach/content``."""

_TEXT_URL = re.compile(r"(?i:https?)://[^\s<>\"'，。、）]+")
_BLANK_RUN = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_VALIDATION_TIME = datetime(2000, 1, 1, tzinfo=UTC)
_SAMPLE_UNSUBSCRIBE = "https://unsubscribe.example.invalid/u/sample-token"
_PREVIEW_UNSUBSCRIBE = "#unsubscribe-link-added-at-send-time"


@dataclass(frozen=True)
class _Compiled:
    """One item with its templates compiled once, at load."""

    item: ContentItem
    email: Mapping[tuple[str, str], Template]
    """(locale, part) to template; part is subject, html or txt."""
    wechat: Mapping[str, tuple[WechatSpec, Mapping[str, Template]]]


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise RenderError(
            "a naive datetime was given as 'now'",
            fix="pass a timezone-aware datetime (workflow.now() or datetime.now(UTC))",
        )
    return now


class ContentLibrary:
    """The validated catalog, with every template compiled once.

    Load it once per process (``ContentLibrary.load``); it is immutable and safe to share
    between concurrent activities. A template edit reaches sends after ``reload()`` (or a
    worker restart), with a new version recorded on every delivery.
    """

    def __init__(
        self,
        root: Path,
        compiled: Sequence[_Compiled],
        *,
        html_env: ImmutableSandboxedEnvironment,
        text_env: ImmutableSandboxedEnvironment,
    ) -> None:
        self.root = root
        self._compiled = {c.item.id: c for c in sorted(compiled, key=lambda c: c.item.id)}
        self._html_env = html_env
        self._text_env = text_env
        self._inliner: css_inline.CSSInliner = make_inliner()
        self._skeletons: dict[tuple[str, str], Skeleton | None] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, root: Path) -> ContentLibrary:
        """Read, compile and validate every item under ``root``.

        Each template is compiled once and rendered once with the declared defaults (so an
        undefined variable, a sandbox violation or an oversized WeChat field is found now,
        not at a contact's send).

        Raises:
            ContentValidationError: Listing every problem, each with file, field and fix.
        """
        root = Path(root)
        problems = Problems(root)
        if not root.is_dir():
            problems.add(
                root,
                "directory",
                "the content directory does not exist",
                "pass the catalog's directory (the repository's content/)",
            )
            raise ContentValidationError(problems.found)
        layouts = read_layouts(root, problems)
        parsed: list[ParsedItem] = []
        for directory in sorted(root.iterdir()):
            if directory.is_dir() and not directory.name.startswith((".", "_")):
                result = read_item(directory, problems, layouts)
                if result is not None:
                    parsed.append(result)
        templates = dict(layouts)
        for p in parsed:
            templates.update({f"{p.item.id}/{name}": src for name, src in p.sources.items()})
        html_env = make_environment(templates, html_mode=True)
        text_env = make_environment(templates, html_mode=False)
        for name, source in layouts.items():
            env = html_env if name.endswith(".html.j2") else text_env
            check_template(env, name, source, BUILTIN_NAMES, root / name, "layout", problems)
        compiled = [c for p in parsed if (c := _compile(p, html_env, text_env, problems))]
        library = cls(root, compiled, html_env=html_env, text_env=text_env)
        # Items are independent: sample-render every item that compiled, even when another
        # item is broken, so one run reports every problem there is.
        library._sample_render_all(problems)
        if not problems.found:
            library._build_skeletons()
        if problems.found:
            raise ContentValidationError(problems.found)
        return library

    def reload(self) -> ContentLibrary:
        """A fresh library from the same directory (picks up edits; new versions)."""
        return ContentLibrary.load(self.root)

    def _sample_render_all(self, problems: Problems) -> None:
        # Render every variant once with the declared defaults, through the same code path a
        # send takes, so the sandbox and StrictUndefined see real execution.
        for compiled in self._compiled.values():
            item = compiled.item
            contact = RenderContact(contact_id="validation")
            for locale in item.locales:
                for channel in item.channels:
                    try:
                        message = self._render(
                            compiled,
                            channel=channel,
                            locale=locale,
                            contact=contact,
                            now=_VALIDATION_TIME,
                            signer=None,
                            idempotency_key="validation",
                            open_pixel=False,
                            unsubscribe_url=_SAMPLE_UNSUBSCRIBE,
                            fit=False,
                        )
                    except Exception as exc:
                        # Anything a template can raise (a sandbox refusal, an undefined name,
                        # a division by zero) must stop the load, never a contact's send.
                        problems.add(
                            self._culprit(compiled, channel, locale),
                            f"{channel}.{locale}",
                            f"rendering with the declared defaults failed: {exc}",
                            "declare every variable with a default and use only filters",
                        )
                        continue
                    if channel == "email":
                        for part, body in (("html", message.html), ("txt", message.text)):
                            if _SAMPLE_UNSUBSCRIBE not in body:
                                problems.add(
                                    item.path / f"email.{locale}.{part}.j2",
                                    "unsubscribe_url",
                                    "the body has no visible unsubscribe link",
                                    f"print {{{{ unsubscribe_url }}}} in the body, or extend "
                                    f"{LAYOUT_DIR}/email.{locale}.{part}.j2 which does",
                                )
                    elif message.wechat is not None:
                        _check_wechat_fit(item, locale, message.wechat, problems)

    def _culprit(self, compiled: _Compiled, channel: str, locale: str) -> Path:
        """The template file of a variant that fails to render (the item if none alone does)."""
        item = compiled.item
        context = self._context(item, locale, RenderContact("validation"), _SAMPLE_UNSUBSCRIBE)
        if channel == "wechat":
            return item.path / f"wechat.{locale}.{item.wechat_forms[locale]}.yaml"
        for (loc, part), template in compiled.email.items():
            if loc == locale:
                try:
                    template.render(context)
                except Exception:
                    return item.path / f"email.{locale}.{part}.j2"
        return item.path

    def _build_skeletons(self) -> None:
        for compiled in self._compiled.values():
            item = compiled.item
            per_contact = frozenset(item.variables) | {"unsubscribe_url"}
            for (locale, part), template in compiled.email.items():
                if part != "html":
                    continue
                context = self._context(item, locale, RenderContact("skeleton"), "")
                self._skeletons[(item.id, locale)] = build_skeleton(
                    self._html_env,
                    f"{item.id}/email.{locale}.html.j2",
                    template,
                    context,
                    per_contact,
                    self._inliner,
                )

    def uses_compiled_html(self, content_id: str, locale: str) -> bool:
        """True when sends of this email splice values into HTML whose CSS was inlined at
        load (the fast path); False when each send renders and inlines in full."""
        return self._skeletons.get((content_id, locale)) is not None

    # ------------------------------------------------------------------ lookup

    @property
    def items(self) -> tuple[ContentItem, ...]:
        """Every item, by id."""
        return tuple(c.item for c in self._compiled.values())

    def item(self, content_id: str) -> ContentItem:
        """The item with ``content_id``.

        Raises:
            UnknownContentError: No such item (the message names the closest ids).
        """
        return self._get(content_id).item

    def _get(self, content_id: str) -> _Compiled:
        try:
            return self._compiled[content_id]
        except KeyError:
            close = difflib.get_close_matches(content_id, list(self._compiled), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see 'stagecoach content list'"
            raise UnknownContentError(
                f"no content item {content_id!r} in {self.root}", fix=hint
            ) from None

    def has_variant(self, content_id: str, locale: str, channel: str) -> bool:
        """True when ``content_id`` renders for ``locale`` on ``channel`` (``ContentIndex``)."""
        compiled = self._compiled.get(content_id)
        return compiled is not None and compiled.item.has_variant(locale, channel)

    # ------------------------------------------------------------------ selection

    def select_next(
        self,
        *,
        stage: str | None,
        kinds: Sequence[str] = (),
        tags: Sequence[str] = (),
        interests: Sequence[str] = (),
        locale: str,
        channel: str,
        received: Collection[str],
        now: datetime,
    ) -> ContentItem | None:
        """The next best item for a contact, or ``None`` when nothing is left for them.

        Candidates match the stage (a pipeline stage or a funnel stage), the kinds (any of
        them), the tags (all of them), offer ``locale`` on ``channel``, are not in
        ``received`` and have not expired at ``now``. The marketer's ``priority`` ranks them
        (higher first); among equal priorities, more topics shared with ``interests`` goes
        first; then the id decides, so the same inputs always give the same item.
        """
        _aware(now)
        funnel = None if stage is None else funnel_stage_for(stage)
        wanted_kinds = frozenset(kinds)
        wanted_tags = frozenset(tags)
        # Contact attributes often hold interests as "oee, energy": a bare string is a list,
        # not a sequence of characters.
        if isinstance(interests, str):
            interests = [t.strip() for t in interests.replace(";", ",").split(",")]
        interest_set = frozenset(t for t in interests if t)
        best: tuple[tuple[int, int, str], ContentItem] | None = None
        for compiled in self._compiled.values():
            item = compiled.item
            if (
                (funnel is not None and item.stage != funnel)
                or (wanted_kinds and item.kind not in wanted_kinds)
                or not wanted_tags <= frozenset(item.tags)
                or not item.has_variant(locale, channel)
                or item.id in received
                or not item.is_live(now)
            ):
                continue
            key = (-item.priority, -len(interest_set.intersection(item.topics)), item.id)
            if best is None or key < best[0]:
                best = (key, item)
        return None if best is None else best[1]

    # ------------------------------------------------------------------ rendering

    def render(
        self,
        content_id: str,
        *,
        channel: str,
        locale: str,
        contact: RenderContact,
        now: datetime,
        signer: LinkSigner | None = None,
        idempotency_key: str = "",
        open_pixel: bool = True,
        unsubscribe_mailto: str | None = None,
        message_id_domain: str | None = None,
    ) -> RenderedMessage:
        """Exactly what is sent to ``contact``.

        Args:
            content_id: The item.
            channel: ``"email"`` or ``"wechat"``.
            locale: One of the item's locales.
            contact: Whom it is for; declared variables come from its attributes, with the
                declared defaults for missing or empty ones.
            now: Send time: signs tokens (expiry counts from it) and dates the email.
            signer: Signs the unsubscribe link and rewrites links for click tracking.
                ``None`` renders a preview: links untouched, no pixel, no unsubscribe
                headers. Real sends always pass one.
            idempotency_key: The delivery's key; makes the Message-ID stable across retries.
            open_pixel: Add the open-tracking pixel (with a signer).
            unsubscribe_mailto: Address for a ``mailto:`` in List-Unsubscribe, if any.
            message_id_domain: Right-hand side of the Message-ID (use the sending domain);
                default: the signer's host.

        Raises:
            UnknownContentError: No such item.
            RenderError: The item does not offer that locale or channel, has expired, or
                a template fails for this contact's values (e.g. the sandbox refuses it).
        """
        compiled = self._get(content_id)
        item = compiled.item
        _aware(now)
        if not item.has_variant(locale, channel):
            raise RenderError(
                f"{content_id} has no {channel} variant in {locale} "
                f"(it offers {', '.join(item.channels)} in {', '.join(item.locales)})",
                fix="pick an offered locale/channel, or add the templates to the item",
            )
        if not item.is_live(now):
            raise RenderError(
                f"{content_id} expired at {item.expires}",
                fix="extend 'expires' in its item.md, or send another item",
            )
        unsubscribe_url = _PREVIEW_UNSUBSCRIBE
        if signer is not None:
            unsubscribe_url = signer.unsubscribe_url(
                contact_id=contact.contact_id, content_id=content_id, channel=channel, now=now
            )
        try:
            return self._render(
                compiled,
                channel=channel,
                locale=locale,
                contact=contact,
                now=now,
                signer=signer,
                idempotency_key=idempotency_key,
                open_pixel=open_pixel,
                unsubscribe_url=unsubscribe_url,
                unsubscribe_mailto=unsubscribe_mailto,
                message_id_domain=message_id_domain,
                fit=True,
            )
        except TemplateError as exc:
            # A branch the declared defaults never took (the sandbox refusing it, say):
            # retrying renders the same failure, so the send must fail for good.
            raise RenderError(
                f"{content_id} ({channel}, {locale}) failed to render: {exc}",
                fix="correct the template; load-time validation only runs the defaults' branch",
            ) from exc

    def _context(
        self, item: ContentItem, locale: str, contact: RenderContact, unsubscribe_url: str
    ) -> dict[str, Any]:
        context: dict[str, Any] = {}
        for name, defaults in item.variables.items():
            value = contact.attributes.get(name)
            # Attributes are data: always a plain string by the time a template sees it,
            # so no object of the caller's can expose methods to the template.
            context[name] = defaults[locale] if value is None or value == "" else str(value)
        context.update(
            content_id=item.id,
            kind=item.kind,
            locale=locale,
            title=item.title[locale],
            asset_url=item.asset_url,
            unsubscribe_url=unsubscribe_url,
        )
        return context

    def _render(
        self,
        compiled: _Compiled,
        *,
        channel: str,
        locale: str,
        contact: RenderContact,
        now: datetime,
        signer: LinkSigner | None,
        idempotency_key: str,
        open_pixel: bool,
        unsubscribe_url: str,
        unsubscribe_mailto: str | None = None,
        message_id_domain: str | None = None,
        fit: bool,
    ) -> RenderedMessage:
        item = compiled.item
        context = self._context(item, locale, contact, unsubscribe_url)

        def track(url: str) -> str | None:
            if signer is None or url.startswith(signer.base_url + "/"):
                return None
            return signer.click_url(url, contact_id=contact.contact_id, content_id=item.id, now=now)

        if channel == "wechat":
            spec, fields = compiled.wechat[locale]
            rendered = {key: tmpl.render(context) for key, tmpl in fields.items()}
            supplied = [context[name] for name in item.variables if contact.attributes.get(name)]
            return RenderedMessage(
                content_id=item.id,
                content_version=item.version,
                channel=channel,
                locale=locale,
                kind=item.kind,
                wechat=_wechat_body(spec, rendered, track, fit=fit, supplied=supplied),
            )

        subject = one_line(compiled.email[(locale, "subject")].render(context))
        skeleton = self._skeletons.get((item.id, locale))
        if skeleton is not None:
            markup = skeleton.render(context, track)
        else:
            markup = self._inliner.inline(compiled.email[(locale, "html")].render(context))
            markup = rewrite_links(markup, track)
        # Blocks and layouts leave runs of blank lines; one blank line separates paragraphs.
        text = _BLANK_RUN.sub("\n\n", compiled.email[(locale, "txt")].render(context)).strip()
        text += "\n"
        key = idempotency_key or f"{contact.contact_id}|{item.id}|{item.version}|{now.isoformat()}"
        domain = message_id_domain or "stagecoach.invalid"
        if signer is not None and message_id_domain is None:
            domain = urlsplit(signer.base_url).hostname or domain
        message_id = f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@{domain}>"
        headers = {"Message-ID": message_id, "Date": format_datetime(now)}
        if signer is not None:
            if open_pixel:
                pixel = signer.open_url(
                    contact_id=contact.contact_id,
                    content_id=item.id,
                    message_id=message_id,
                    now=now,
                )
                markup = add_pixel(markup, pixel)
            targets = [f"<{unsubscribe_url}>"]
            if unsubscribe_mailto:
                token = unsubscribe_url.rsplit("/", 1)[-1]
                targets.insert(0, f"<mailto:{unsubscribe_mailto}?subject=unsubscribe%20{token}>")
            headers["List-Unsubscribe"] = ", ".join(targets)
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        return RenderedMessage(
            content_id=item.id,
            content_version=item.version,
            channel=channel,
            locale=locale,
            kind=item.kind,
            subject=subject,
            text=text,
            html=markup,
            headers=headers,
        )


def _compile(
    parsed: ParsedItem,
    html_env: ImmutableSandboxedEnvironment,
    text_env: ImmutableSandboxedEnvironment,
    problems: Problems,
) -> _Compiled | None:
    item = parsed.item
    allowed = BUILTIN_NAMES | frozenset(item.variables)
    before = len(problems.found)
    email: dict[tuple[str, str], Template] = {}
    wechat: dict[str, tuple[WechatSpec, Mapping[str, Template]]] = {}
    for locale in item.locales:
        if "email" in item.channels:
            for part in EMAIL_PARTS:
                file = f"email.{locale}.{part}.j2"
                env = html_env if part == "html" else text_env
                tmpl = check_template(
                    env,
                    f"{item.id}/{file}",
                    parsed.sources[file],
                    allowed,
                    item.path / file,
                    "template",
                    problems,
                )
                if tmpl is not None:
                    email[(locale, part)] = tmpl
        if "wechat" in item.channels and locale in parsed.wechat:
            spec = parsed.wechat[locale]
            file = f"wechat.{locale}.{spec.form}.yaml"
            fields: dict[str, Template] = {}
            for key, source in spec.fields.items():
                tmpl = check_template(
                    text_env, "", source, allowed, item.path / file, key, problems
                )
                if tmpl is not None:
                    fields[key] = tmpl
            wechat[locale] = (spec, fields)
    if len(problems.found) > before:
        return None
    return _Compiled(item=item, email=email, wechat=wechat)


def _wechat_body(
    spec: WechatSpec,
    rendered: Mapping[str, str],
    track: Callable[[str], str | None],
    *,
    fit: bool,
    supplied: Sequence[str] = (),
) -> dict[str, Any]:
    """The WeChat API body; ``supplied`` are the contact's own values in ``rendered``."""

    def url(key: str) -> str:
        value = rendered.get(key, "").strip()
        tracked = track(value) if value.startswith(("https://", "http://")) else None
        return tracked or value

    if spec.form == "template":
        data = {
            key.removeprefix("data."): {"value": fit_wechat_field(v) if fit else v}
            for key, v in rendered.items()
            if key.startswith("data.")
        }
        body: dict[str, Any] = {"template_id": spec.static["template_id"], "data": data}
        if "url" in rendered:
            body["url"] = url("url")
        return body
    if spec.static["msgtype"] == "text":
        text = rendered["content"]
        # A link that starts inside a contact's value (a "name" that is a URL) stays as
        # written: signing it would mint a redirect on our domain to wherever it points.
        theirs = [(at, at + len(v)) for v in supplied for at in _occurrences(text, v)]

        def link(match: re.Match[str]) -> str:
            if any(start <= match.start() < end for start, end in theirs):
                return match.group(0)
            return track(match.group(0)) or match.group(0)

        content = _TEXT_URL.sub(link, text)
        return {"msgtype": "text", "text": {"content": content.strip()}}
    article = {
        "title": one_line(rendered["title"]),
        "description": rendered["description"].strip(),
        "url": url("url"),
        "picurl": rendered["picurl"].strip(),
    }
    return {"msgtype": "news", "news": {"articles": [article]}}


def _occurrences(text: str, value: str) -> list[int]:
    """Where ``value`` starts in ``text``, every time (none for an empty value)."""
    found: list[int] = []
    at = text.find(value) if value else -1
    while at != -1:
        found.append(at)
        at = text.find(value, at + 1)
    return found


def _check_wechat_fit(
    item: ContentItem, locale: str, body: Mapping[str, Any], problems: Problems
) -> None:
    if "data" not in body:
        return
    file = item.path / f"wechat.{locale}.template.yaml"
    for key, entry in body["data"].items():
        value = str(entry["value"])
        if "\n" in value or "\r" in value:
            problems.add(
                file,
                f"data.{key}",
                f"{item.id} ({locale}): the field has a line break, which WeChat template "
                "messages do not allow",
                "keep each field on one line",
            )
        elif len(value) > WECHAT_FIELD_LIMIT:
            problems.add(
                file,
                f"data.{key}",
                f"{item.id} ({locale}): {len(value)} characters with the declared defaults, "
                f"over WeChat's limit of {WECHAT_FIELD_LIMIT} ({value!r})",
                f"shorten the text (and long defaults) to {WECHAT_FIELD_LIMIT} characters",
            )
