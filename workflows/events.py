"""The bundled event catalog: every behaviour the default pipeline, scoring and journeys use.

Marketers add event types here; pipelines and journeys are validated against ``CATALOG``
when they are built, so a rule can only name an event listed below. Property descriptions
are the contract with whoever sends the event (the tracking snippet, the CRM webhook, the
WeChat callback).
"""

from __future__ import annotations

from stagecoach.engine.domain.events import EventCatalog, EventType

CATALOG = EventCatalog(
    [
        # Web
        EventType(
            "page.viewed",
            "A page of the website was viewed",
            {"path": "URL path, e.g. /pricing", "category": 'page category, e.g. "pricing"'},
        ),
        EventType(
            "form.submitted",
            "A web form was submitted",
            {"form": "form id, e.g. contact-us"},
        ),
        # Email
        EventType(
            "email.delivered",
            "The provider accepted an email for delivery",
            {"message_id": "Stagecoach delivery id"},
            signal=False,  # analytics only: no rule should depend on an inbox accepting mail
        ),
        EventType("email.opened", "An email was opened", {"message_id": "Stagecoach delivery id"}),
        EventType(
            "email.clicked",
            "A link in an email was clicked",
            {"message_id": "Stagecoach delivery id", "content_id": "content behind the link"},
        ),
        EventType(
            "email.unsubscribed",
            "The contact unsubscribed from email",
            {"message_id": "Stagecoach delivery id"},
        ),
        EventType(
            "email.bounced",
            "An email bounced",
            {"message_id": "Stagecoach delivery id", "kind": "hard or soft"},
        ),
        EventType(
            "email.complained",
            "The contact marked an email as spam",
            {"message_id": "Stagecoach delivery id"},
        ),
        # Content
        EventType(
            "content.downloaded",
            "A piece of gated content was downloaded",
            {"content_id": "content library id", "kind": "whitepaper, case_study, ebook, ..."},
        ),
        EventType(
            "video.watched",
            "A video was watched",
            {"content_id": "content library id", "percent": "share watched, 0 to 100"},
        ),
        EventType(
            "webinar.attended",
            "The contact attended a webinar",
            {"webinar_id": "webinar id"},
        ),
        # Product and purchase
        EventType("trial.started", "A product trial was started", {"plan": "trial plan"}),
        EventType(
            "trial.activated",
            "The trial reached its activation milestone",
            {"milestone": "which milestone"},
        ),
        EventType("demo.requested", "A product demo was requested"),
        EventType("consultation.booked", "A consultation with an expert was booked"),
        EventType(
            "order.paid",
            "An order was paid",
            {
                "amount": "order total, a number",
                "currency": "ISO 4217 code, e.g. CNY",
                "order_id": "the shop's order id (refunds name it)",
                "items": "list of {product, category, quantity, amount}; amount is the line total",
            },
        ),
        EventType(
            "order.refunded",
            "An order was refunded, in whole or in part",
            {"order_id": "the refunded order", "amount": "refunded amount; none: all of it"},
        ),
        EventType(
            "value.scored",
            "A value refresh computed the customer's value (traits: value_tier, clv, p_alive,"
            " churn_risk)",
            {
                "model": "the value model version",
                "status": "fitted, not_enough_data or failed",
                "value_tier": "the ABC tier",
                "cross_sell": "the product to recommend, when there is one",
                "churn_risk_level": "high, medium or low, when there is a churn risk",
                "replenishment_due": "true once the customer's own repurchase interval passed",
            },
        ),
        EventType(
            "propensity.scored",
            "A propensity retrain moved the contact's score by a step or across a band"
            " (traits: propensity, propensity_version, propensity_as_of)",
            {
                "propensity": "the chance of converting within the horizon, 0 to 1, rounded",
                "previous": "the value sent before; none on the first score",
                "model_version": "the propensity model version that scored it",
                "band": "how many band edges the score is at or above (0 to 3 with 0.2, 0.5, 0.8)",
            },
        ),
        EventType("onboarding.finished", "The customer finished onboarding"),
        EventType(
            "ticket.closed",
            "A support ticket was closed",
            {"ticket_id": "helpdesk ticket id"},
        ),
        EventType(
            "service.resolved",
            "A service-recovery case (a detractor's complaint) was resolved",
            {"ticket_id": "helpdesk ticket id"},
        ),
        EventType(
            "nps.answered",
            "A Net Promoter Score survey was answered",
            {
                "score": "0 to 10",
                "comment": "free text",
                "touchpoint": "what the survey followed, e.g. onboarding",
            },
        ),
        EventType(
            "survey.answered",
            "A survey question was answered on a scale (the value tier's attitude reads it)",
            {
                "score": "the answer, a number from 0 to max",
                "max": "the top of the scale, a number above 0; none: 5 (a five-point scale)",
                "survey": "survey id, e.g. csat-2026-q4",
                "question": "question id, e.g. overall-satisfaction",
                "comment": "free text",
            },
        ),
        # Sales feedback
        EventType("sales.accepted", "Sales accepted a handed-off lead"),
        EventType(
            "sales.rejected",
            "Sales rejected a handed-off lead",
            {"reason": "why, e.g. no_budget, wrong_contact"},
        ),
        EventType("sales.converted", "Sales closed the deal"),
        # Referral and promotions
        EventType(
            "referral.signed_up",
            "Someone this contact referred signed up",
            {"referred_contact_id": "the new contact"},
        ),
        EventType(
            "referral.converted",
            "Someone this contact referred became a customer",
            {"referred_contact_id": "the new customer"},
        ),
        EventType(
            "referral.reward_released",
            "A referral reward passed its return window and was released",
            {"reward_id": "reward", "coupon_code": "the coupon", "content_id": "coupon item"},
        ),
        EventType(
            "referral.reward_cancelled",
            "A referral reward was cancelled (the purchase was returned)",
            {"reward_id": "reward", "reason": "why"},
        ),
        EventType("coupon.redeemed", "A coupon was redeemed", {"code": "coupon code"}),
        # WeChat Official Account
        EventType("wechat.subscribed", "The contact followed the Official Account"),
        EventType("wechat.unsubscribed", "The contact unfollowed the Official Account"),
        EventType(
            "wechat.scanned",
            "A parametric QR code was scanned",
            {"scene": "QR scene value, e.g. expo-2026"},
        ),
        EventType(
            "wechat.menu_clicked",
            "A custom menu item was clicked",
            {"key": "menu key"},
        ),
        EventType(
            "wechat.message_received",
            "The contact sent a message to the Official Account",
            {"msg_type": "text, image, voice, ..."},
        ),
    ]
)
"""The bundled catalog; ``active_pipeline`` and the journeys are validated against it."""
