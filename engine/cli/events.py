"""``stagecoach events``: the event catalog, each event type with its properties and what
they mean, so whoever writes a journey or sends an event need not read the code.

Registered by the CLI's composition root (``app.add_typer(events_app, name="events")``).
The catalog is reached through ``stagecoach.engine.services.publishing``, which turns a
catalog that does not load into a ``StagecoachError`` the root prints as one line.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from stagecoach.engine.domain.events import EventCatalog, EventType

events_app = typer.Typer(
    help="The event catalog: which events exist and what their properties mean.",
    no_args_is_help=True,
)

ANALYTICS_ONLY = "analytics only: stored, never sent to a contact's workflow"


@events_app.command("list")
def list_events(
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List every event type of the project with its description and its properties'
    meaning."""
    from stagecoach.engine.services.publishing import event_catalog
    from stagecoach.engine.settings import load_settings

    catalog = event_catalog(load_settings())
    if json_output:
        typer.echo(json.dumps([as_json(t) for t in catalog], ensure_ascii=False, indent=2))
        return
    typer.echo(as_text(catalog))


def as_json(event: EventType) -> dict[str, object]:
    """One event type for ``--json``: name, description, properties, and ``signal``
    (false: analytics only)."""
    return {
        "name": event.name,
        "description": event.description,
        "properties": dict(event.properties),
        "signal": event.signal,
    }


def as_text(catalog: EventCatalog) -> str:
    """Each event on its own line with its description, its properties indented below."""
    width = max((len(t.name) for t in catalog), default=0)
    lines: list[str] = []
    for event in catalog:
        note = f"  ({ANALYTICS_ONLY})" if not event.signal else ""
        lines.append(f"{event.name:<{width}}  {event.description}{note}")
        if not event.properties:
            lines.append("    (no properties)")
            continue
        prop_width = max(len(p) for p in event.properties)
        lines += [
            f"    {prop:<{prop_width}}  {meaning}" for prop, meaning in event.properties.items()
        ]
    count = len(catalog)
    lines.append(f"{count} event type{'s' if count != 1 else ''}")
    return "\n".join(lines)
