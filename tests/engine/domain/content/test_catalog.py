"""The bundled starter catalog: complete, valid, and what the bundled journeys need."""

from __future__ import annotations

from stagecoach.engine.domain.content import (
    CHANNELS,
    FUNNEL_STAGES,
    KINDS,
    RenderContact,
)
from stagecoach.engine.domain.journeys import ContentIndex, SendStep, ValidationContext
from stagecoach.workflows.journeys import JOURNEYS, compile_journeys

JOURNEY_CONTENT = {
    "wp-digital-transformation": "whitepaper",
    "video-product-tour": "short_video",
    "case-study-manufacturing": "case_study",
    "comparison-vs-legacy": "competitive_comparison",
    "trial-invitation": "trial",
    "consultation-offer": "consultation",
    "onboarding-welcome": None,
    "onboarding-quickstart": None,
    "onboarding-checklist": None,
    "survey-nps": "survey",
    "referral-offer": "referral_offer",
    "service-apology": "service",
    "customer-story-invite": "case_study",
    "newsletter-monthly": "newsletter",
    "winback-offer": "coupon",
    "replenishment-reminder": "product_sheet",
    "cross-sell-offer": "product_sheet",
}


def test_bundled_catalog_covers_every_kind_and_stage(library):
    assert len(library.items) >= 12
    assert {i.kind for i in library.items} == set(KINDS)
    assert {i.stage for i in library.items} == set(FUNNEL_STAGES)


def test_every_bundled_item_offers_both_channels_in_chinese_and_english(library):
    for item in library.items:
        for locale in ("zh-CN", "en"):
            for channel in CHANNELS:
                assert library.has_variant(item.id, locale, channel), (item.id, locale, channel)


def test_ids_the_bundled_journeys_send_exist_with_the_right_kind(library):
    sent = {
        step.content
        for journey in JOURNEYS.values()
        for step in journey.steps
        if isinstance(step, SendStep) and isinstance(step.content, str)
    }
    assert sent <= set(JOURNEY_CONTENT)
    for content_id, kind in JOURNEY_CONTENT.items():
        item = library.item(content_id)
        if kind is not None:
            assert item.kind == kind


def test_bundled_journeys_validate_against_the_real_library(library):
    assert isinstance(library, ContentIndex)
    stages = frozenset(
        {"suspect", "prospect", "lead", "opportunity", "customer", "fan", "advocate"}
    )
    from stagecoach.workflows.events import CATALOG

    ctx = ValidationContext(
        known_event_types=frozenset(CATALOG.names()), stages=stages, content=library
    )
    assert set(compile_journeys(ctx)) == set(JOURNEYS)


def test_every_bundled_variant_renders_with_defaults(library, now, signer):
    contact = RenderContact("c-1")
    for item in library.items:
        for locale in item.locales:
            email = library.render(
                item.id, channel="email", locale=locale, contact=contact, now=now, signer=signer
            )
            assert email.subject
            assert "{{" not in email.html
            assert "{{" not in email.text
            wechat = library.render(
                item.id, channel="wechat", locale=locale, contact=contact, now=now, signer=signer
            )
            assert wechat.wechat
