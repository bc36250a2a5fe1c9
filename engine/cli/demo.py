"""``stagecoach demo``: simulated contacts behaving, so a newcomer can watch them move.

Each contact identifies itself (company, industry, size, role, region, locale, time
zone, email or WeChat), arrives from a campaign (WeChat, search, LinkedIn, newsletter,
referral), then browses, downloads, views pricing, asks for a demo, and some buy, with
varied intent. The events are posted to the running API as a website would (Segment
batches with a write key of source ``demo``), so they are stored, forwarded to the
contact workflows by the outbox, and counted by the reports and the dashboard.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from stagecoach.engine.domain.errors import StagecoachError
from stagecoach.engine.logging import configure_logging
from stagecoach.engine.settings import Settings, load_settings

INDUSTRIES = ("manufacturing", "software", "finance", "healthcare", "retail", "education")
ROLES = ("cto", "it_director", "engineer", "manager", "ceo", "student")
REGIONS = ("east_china", "north_china", "south_china", "emea", "north_america")
CAMPAIGNS = ("wechat", "baidu", "google", "linkedin", "newsletter", "referral")
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
    """Post every simulated contact's behaviour to the API; returns the events accepted.

    Raises:
        TemporalUnavailable: the API does not answer (nothing was sent).
    """
    import httpx

    from stagecoach.engine.api.routes.events import create_write_key
    from stagecoach.engine.domain.errors import StagecoachError
    from stagecoach.engine.services.storage import make_engine, upgrade

    db = make_engine(settings.resolved_database_url)
    try:
        upgrade(db)
        key = create_write_key(db, "demo", source="demo")
    finally:
        db.dispose()
    rng = random.Random(seed)  # noqa: S311 (simulation, not security)
    intents = list(JOURNEYS)
    weights = (4, 3, 2, 1)
    sent = 0
    url = f"{settings.api_base_url}/v1/batch"
    async with httpx.AsyncClient(auth=(key, ""), timeout=30) as http:
        for n in range(contacts):
            contact_id, traits = persona(rng, n)
            campaign = {"source": rng.choice(CAMPAIGNS), "medium": "demo"}
            script = JOURNEYS[rng.choices(intents, weights)[0]]
            batch: list[dict[str, Any]] = [
                {
                    "type": "identify",
                    "userId": contact_id,
                    "messageId": uuid.uuid4().hex,
                    "traits": traits,
                    "context": {"campaign": campaign},
                }
            ]
            for kind, props in script:
                batch.append(
                    {
                        "type": "track",
                        "userId": contact_id,
                        "messageId": uuid.uuid4().hex,
                        "event": kind,
                        "properties": dict(props),
                        "context": {"campaign": campaign},
                        "timestamp": datetime.now(UTC).isoformat(),
                    }
                )
            try:
                response = await http.post(url, json={"batch": batch})
            except httpx.TransportError as exc:
                raise StagecoachError(
                    f"the API at {settings.api_base_url} does not answer ({exc})",
                    fix="start Stagecoach with 'stagecoach up' (or 'make run') first",
                ) from exc
            if response.status_code >= 300:
                raise StagecoachError(
                    f"the API refused the demo's events: {response.status_code} {response.text}",
                    fix="check the API's log (.stagecoach/logs/api.log)",
                )
            sent += len(batch)
            await asyncio.sleep(pace)
    return sent


def demo(
    contacts: Annotated[int, typer.Option(help="How many contacts to simulate.", min=1)] = 25,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same people.")] = 7,
    pace: Annotated[float, typer.Option(help="Seconds between events.", min=0)] = 0.05,
) -> None:
    """Post simulated contacts' behaviour to the running API, as a website would; watch
    them in the Web UI and the dashboard."""
    settings = load_settings()
    configure_logging(level="warning", fmt=settings.log_format)
    try:
        sent = asyncio.run(run_demo(settings, contacts=contacts, seed=seed, pace=pace))
    except StagecoachError as exc:
        typer.echo(f"stagecoach: error: {exc.one_line()}", err=True)
        raise typer.Exit(2) from None
    ui = f"{settings.temporal_ui_url}/namespaces/{settings.temporal_namespace}/workflows"
    typer.echo(f"sent {sent} events for {contacts} contacts.")
    typer.echo(f"watch them: {ui}")
    typer.echo("find them:  temporal workflow list --query 'Stage=\"lead\"'")
    typer.echo("            temporal workflow list --query 'Journeys=\"b2b_nurture\"'")
    typer.echo(f"see them:   {settings.api_base_url}/dashboard, stagecoach report funnel")
