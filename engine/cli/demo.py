"""``stagecoach demo``: simulated contacts behaving, so a newcomer can watch them move.

Each contact identifies itself (company, industry, size, role, region, locale, time
zone, email or WeChat), then browses, downloads, views pricing, asks for a demo, and
some buy, with varied intent. The events go through the same path the ingestion API
uses (signal-with-start of the contact workflow), so what the Web UI shows is what a
real contact would do.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from engine.logging import configure_logging
from engine.messages import EventMessage
from engine.settings import Settings, load_settings

INDUSTRIES = ("manufacturing", "software", "finance", "healthcare", "retail", "education")
ROLES = ("cto", "it_director", "engineer", "manager", "ceo", "student")
REGIONS = ("east_china", "north_china", "south_china", "emea", "north_america")
SURNAMES = ("王", "李", "张", "刘", "陈", "Smith", "García", "Müller")

# (event type, properties) sequences by intent, most hesitant first.
JOURNEYS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "browser": [("page.viewed", {"category": "blog"}), ("page.viewed", {"category": "blog"})],
    "researcher": [
        ("page.viewed", {"category": "blog"}),
        ("content.downloaded", {"content_id": "wp-digital-transformation", "kind": "whitepaper"}),
        ("video.watched", {"content_id": "video-product-tour", "percent": 80}),
    ],
    "evaluator": [
        ("page.viewed", {"category": "pricing"}),
        ("content.downloaded", {"content_id": "wp-digital-transformation", "kind": "whitepaper"}),
        ("webinar.attended", {}),
        ("page.viewed", {"category": "pricing"}),
        ("demo.requested", {}),
    ],
    "buyer": [
        ("page.viewed", {"category": "pricing"}),
        ("demo.requested", {}),
        ("trial.started", {}),
        ("sales.accepted", {}),
        ("order.paid", {"amount": 48000, "currency": "CNY"}),
    ],
}


def persona(rng: random.Random, n: int) -> tuple[str, dict[str, Any]]:
    chinese = rng.random() < 0.6
    contact_id = f"demo-{n:05d}-{uuid.uuid4().hex[:6]}"
    traits: dict[str, Any] = {
        "first_name": rng.choice(SURNAMES),
        "company": f"{'华东' if chinese else 'Acme'} {rng.choice(('精密', 'Systems', '智造'))} {n}",
        "industry": rng.choice(INDUSTRIES),
        "company_size": rng.choice((20, 80, 150, 400, 2000)),
        "role": rng.choice(ROLES),
        "region": rng.choice(REGIONS[:3] if chinese else REGIONS[3:]),
        "locale": "zh-CN" if chinese else "en",
        "timezone": "Asia/Shanghai" if chinese else "Europe/Berlin",
        "email": f"{contact_id}@example.com",
    }
    if chinese and rng.random() < 0.7:
        traits["wechat_openid"] = f"o{uuid.uuid4().hex[:27]}"
    return contact_id, traits


async def run_demo(settings: Settings, *, contacts: int, seed: int, pace: float) -> int:
    """Send every simulated contact's behaviour; returns the number of events sent."""
    from engine.gateway import send_event
    from workflows.client import connect

    client = await connect(settings)
    rng = random.Random(seed)  # noqa: S311 (simulation, not security)
    intents = list(JOURNEYS)
    weights = (4, 3, 2, 1)
    sent = 0
    for n in range(contacts):
        contact_id, traits = persona(rng, n)
        script = JOURNEYS[rng.choices(intents, weights)[0]]
        first = True
        for kind, props in script:
            message = EventMessage(
                message_id=uuid.uuid4().hex,
                type=kind,
                occurred_at=datetime.now(UTC),
                properties=dict(props),
                traits=traits if first else {},
                source="demo",
            )
            await send_event(client, settings, contact_id, message)
            first = False
            sent += 1
            await asyncio.sleep(pace)
    return sent


def demo(
    contacts: Annotated[int, typer.Option(help="How many contacts to simulate.", min=1)] = 25,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same people.")] = 7,
    pace: Annotated[float, typer.Option(help="Seconds between events.", min=0)] = 0.05,
) -> None:
    """Send simulated contact behaviour through the public path; watch it in the Web UI."""
    settings = load_settings()
    configure_logging(level="warning", fmt=settings.log_format)
    sent = asyncio.run(run_demo(settings, contacts=contacts, seed=seed, pace=pace))
    ui = f"{settings.temporal_ui_url}/namespaces/{settings.temporal_namespace}/workflows"
    typer.echo(f"sent {sent} events for {contacts} contacts.")
    typer.echo(f"watch them: {ui}")
    typer.echo("find them:  temporal workflow list --query 'Stage=\"lead\"'")
    typer.echo("            temporal workflow list --query 'Journeys=\"b2b_nurture\"'")
