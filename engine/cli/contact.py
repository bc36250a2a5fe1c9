"""``stagecoach contact show|timeline|why``: a contact's live state, its whole story, and
why it did or did not get a journey step's message."""

from __future__ import annotations

import asyncio
import json
from enum import StrEnum
from typing import Annotated, Any

import typer

from engine.settings import load_settings

contact_app = typer.Typer(help="A contact's live state and history.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _connect_and(run: Any) -> Any:
    from engine.logging import configure_logging
    from workflows.client import connect

    settings = load_settings()
    configure_logging(level="warning", fmt=settings.log_format)

    async def go() -> Any:
        return await run(await connect(settings))

    return asyncio.run(go())


@contact_app.command("show")
def show(contact_id: str, json_output: JsonOption = False) -> None:
    """Stage, score, grade, consent, attributes and active journeys, from the workflow."""
    from engine.gateway import contact_view

    view = _connect_and(lambda client: contact_view(client, contact_id))
    state = view.state
    if json_output:
        typer.echo(json.dumps({**view.__dict__}, indent=2, ensure_ascii=False, default=str))
        return
    typer.echo(f"contact   {view.contact_id}")
    typer.echo(f"stage     {view.stage} (since {state['stage_entered_at']})")
    typer.echo(f"score     {view.score}")
    typer.echo(f"grade     {view.grade or '-'}  {', '.join(state.get('grade_rules', []))}")
    consent = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in state["consent"].items())
    typer.echo(f"consent   {consent or 'defaults'}")
    typer.echo(f"tags      {', '.join(state['tags']) or '-'}")
    typer.echo(f"received  {', '.join(state['received_content']) or '-'}")
    for key, value in sorted(state["attributes"].items()):
        typer.echo(f"  {key}: {value}")
    if not view.journeys:
        typer.echo("journeys  none active")
    for j in view.journeys:
        waiting = j.get("waiting") or {}
        until = f" until {waiting['deadline']}" if waiting.get("deadline") else ""
        typer.echo(
            f"journey   {j['journey']} v{str(j['version'])[:12]} #{j['enrolment']} at "
            f"{j['step']} ({waiting.get('kind', 'running')}{until})"
        )


@contact_app.command("timeline")
def timeline(contact_id: str, json_output: JsonOption = False) -> None:
    """The contact's story from its workflow history: events, stages, sends, waits."""
    from engine.gateway import missing_contact
    from engine.timeline import contact_timeline

    async def read(client: Any) -> Any:
        with missing_contact(contact_id):
            return await contact_timeline(client, contact_id)

    entries = _connect_and(read)
    if json_output:
        rows = [
            {"at": e.at.isoformat(), "kind": e.kind, "summary": e.summary, "run_id": e.run_id}
            for e in entries
        ]
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    for entry in entries:
        typer.echo(entry.line())


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


@contact_app.command("why")
def why(
    contact_id: Annotated[str, typer.Argument(metavar="CONTACT_ID", help="The contact id.")],
    journey_step: Annotated[
        str,
        typer.Argument(
            metavar="JOURNEY_STEP",
            help="journey/step_id, e.g. b2b_nurture/awareness-whitepaper (journey:step_id"
            " works too).",
        ),
    ],
    output: Annotated[
        OutputFormat, typer.Option("--format", help="text, or json for machines.")
    ] = OutputFormat.text,
    enrolment: Annotated[
        int | None,
        typer.Option(min=1, help="Explain this enrolment of the journey (default: the newest)."),
    ] = None,
) -> None:
    """Why the contact did or did not get a journey step's message: the decision chain
    from its workflow history (entry, branches, quiet hours, consent, frequency cap,
    delivery), one line per link, with times."""
    from engine.why import contact_why, parse_journey_step

    journey, step_id = parse_journey_step(journey_step)
    answer = _connect_and(
        lambda client: contact_why(client, contact_id, journey, step_id, enrolment=enrolment)
    )
    if output is OutputFormat.json:
        typer.echo(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return
    for line in answer.lines():
        typer.echo(line)
