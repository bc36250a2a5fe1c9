"""The content library's value types: items, contacts to render for, rendered messages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from stagecoach.engine.domain import serial

from ._errors import ContentError

KINDS = (
    "whitepaper",
    "ebook",
    "short_video",
    "product_sheet",
    "case_study",
    "competitive_comparison",
    "webinar",
    "trial",
    "demo",
    "consultation",
    "coupon",
    "survey",
    "referral_offer",
    "newsletter",
    "service",
)
"""Every content kind an item may declare."""

PROMOTIONAL_KINDS = frozenset({"coupon", "referral_offer", "trial", "consultation", "demo"})
"""Offers: never sent to a contact whose service recovery is open (a detractor)."""

FUNNEL_STAGES = ("awareness", "evaluation", "purchase", "retention", "advocacy")
"""The funnel stages content is written for, in funnel order."""

CHANNELS = ("email", "wechat")
"""Channels an item may offer."""

GATINGS = ("none", "email", "form")
"""How an item's asset is gated: open, behind an email address, behind a lead form."""

_PIPELINE_TO_FUNNEL = {
    "suspect": "awareness",
    "prospect": "awareness",
    "lead": "evaluation",
    "opportunity": "purchase",
    "customer": "retention",
    "fan": "advocacy",
    "advocate": "advocacy",
    # The bundled b2b_funnel pipeline: every stage there is already a sales conversation.
    "verification": "evaluation",
    "development": "evaluation",
    "proposal": "purchase",
    "closing": "purchase",
}


def funnel_stage_for(pipeline_stage: str) -> str:
    """The funnel stage whose content fits a contact in ``pipeline_stage``.

    A funnel stage name maps to itself, so selectors may name either. The stages of the
    bundled ``b2b_funnel`` pipeline map too (verification and development to evaluation,
    proposal and closing to purchase).

    Raises:
        ContentError: Neither a default-pipeline stage nor a funnel stage.
    """
    if pipeline_stage in FUNNEL_STAGES:
        return pipeline_stage
    try:
        return _PIPELINE_TO_FUNNEL[pipeline_stage]
    except KeyError:
        known = ", ".join((*_PIPELINE_TO_FUNNEL, *FUNNEL_STAGES))
        raise ContentError(
            f"no funnel stage is known for stage {pipeline_stage!r}",
            fix=f"name one of {known}, or add the stage to engine/domain/content/_model.py",
        ) from None


@dataclass(frozen=True)
class ContentItem:
    """One catalog entry: what it is, who it is for, and how to render it.

    Attributes:
        id: Stable id (the item's directory name); journeys refer to it.
        kind: One of ``KINDS``.
        stage: Funnel stage, one of ``FUNNEL_STAGES``.
        title: Title per locale.
        locales: Locales offered on every channel the item offers.
        channels: Channels offered (``"email"``, ``"wechat"``).
        topics: Subjects the item covers; matched against a contact's interests.
        tags: Free labels for selectors (``NextBestItem.tags``).
        asset_url: The asset itself (PDF, video, landing page, booking page).
        expires: When the item stops being sent (UTC), or ``None``.
        gating: ``"none"``, ``"email"`` or ``"form"``.
        priority: The marketer's ranking for next-best selection; higher goes first.
        variables: Declared personalization variables and their default per locale.
        wechat_forms: Per locale, ``"template"`` (template message) or ``"cs"``
            (customer-service message).
        version: sha256 of the front matter and every template source the item uses.
        path: The item's directory.
        notes: The Markdown body under the front matter: notes for marketers, never sent.
    """

    id: str
    kind: str
    stage: str
    title: Mapping[str, str]
    locales: tuple[str, ...]
    channels: tuple[str, ...]
    topics: tuple[str, ...]
    tags: tuple[str, ...]
    asset_url: str
    expires: datetime | None
    gating: str
    priority: int
    variables: Mapping[str, Mapping[str, str]]
    wechat_forms: Mapping[str, str]
    version: str
    path: Path
    notes: str = ""

    def has_variant(self, locale: str, channel: str) -> bool:
        """True when this item renders for ``locale`` on ``channel``."""
        return locale in self.locales and channel in self.channels

    def is_live(self, now: datetime) -> bool:
        """False once ``expires`` has passed."""
        return self.expires is None or now < self.expires

    def summary(self) -> dict[str, Any]:
        """JSON-able description (for ``content show`` and listings)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "stage": self.stage,
            "title": dict(self.title),
            "locales": list(self.locales),
            "channels": list(self.channels),
            "topics": list(self.topics),
            "tags": list(self.tags),
            "asset_url": self.asset_url,
            "expires": None if self.expires is None else self.expires.isoformat(),
            "gating": self.gating,
            "priority": self.priority,
            "variables": {k: dict(v) for k, v in self.variables.items()},
            "wechat_forms": dict(self.wechat_forms),
            "version": self.version,
        }


@dataclass(frozen=True)
class RenderContact:
    """The contact a message is rendered for.

    Attributes:
        contact_id: Stagecoach contact id (goes into signed tokens, never into copy).
        attributes: Contact attributes; those named like a declared variable personalise
            the copy. They are data: HTML in them is escaped, Jinja syntax stays text.
        email: Email address, when known.
        openid: WeChat openid, when known.
    """

    contact_id: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    email: str | None = None
    openid: str | None = None


@serial.fields(missing={"kind": ""})
@dataclass(frozen=True)
class RenderedMessage(serial.Record):
    """Exactly what is sent: the delivery activity hands it to a connector as is.

    Attributes:
        content_id: The item.
        content_version: The item's version at render time (recorded on the delivery).
        channel: ``"email"`` or ``"wechat"``.
        locale: Locale rendered.
        kind: The item's kind.
        subject: Email subject (empty for WeChat).
        text: Plain-text email body (empty for WeChat).
        html: HTML email body, CSS inlined, links rewritten (empty for WeChat).
        headers: Extra email headers: Message-ID, Date, List-Unsubscribe,
            List-Unsubscribe-Post.
        wechat: The WeChat API body without the recipient: a template message
            (``template_id``, ``data``, ``url``) or a customer-service message
            (``msgtype`` ``text`` or ``news``). ``None`` for email.
    """

    content_id: str
    content_version: str
    channel: str
    locale: str
    kind: str
    subject: str = ""
    text: str = ""
    html: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    wechat: Mapping[str, Any] | None = None

    def to_mime(self, from_addr: str, to_addr: str) -> EmailMessage:
        """A multipart/alternative email (text, then HTML) with every header set.

        The default policy writes non-ASCII subjects as RFC 2047 encoded words, which any
        SMTP server accepts, SMTPUTF8 or not.

        Raises:
            ContentError: This is not an email message.
        """
        if self.channel != "email":
            raise ContentError(
                f"{self.content_id} was rendered for {self.channel}, not email",
                fix="render the item with channel='email' to build a MIME message",
            )
        message = EmailMessage(policy=default_policy)
        message["From"] = from_addr
        message["To"] = to_addr
        message["Subject"] = self.subject
        for name, value in self.headers.items():
            message[name] = value
        message.set_content(self.text, subtype="plain", charset="utf-8")
        message.add_alternative(self.html, subtype="html", charset="utf-8")
        return message
