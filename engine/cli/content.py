"""``stagecoach content``: list, show, validate and preview the content library.

Registered by the CLI's composition root (``app.add_typer(content_app, name="content")``).
Errors are ``StagecoachError``s, which the root prints as one line with their fix.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from stagecoach.engine.domain.content import (
    DEFAULT_TOKEN_TTL,
    ContentError,
    ContentItem,
    ContentLibrary,
    ContentValidationError,
    LinkSigner,
    RenderContact,
)

content_app = typer.Typer(
    help="The content library: list, show, validate and preview items.",
    no_args_is_help=True,
)

ContentDir = Annotated[
    Path | None,
    typer.Option(
        "--content-dir",
        help="Catalog directory (default: STAGECOACH_CONTENT_DIR, else content/).",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _default_dir() -> Path:
    """The catalog the worker uses: STAGECOACH_CONTENT_DIR, else the project's content,
    else the bundled catalog."""
    from stagecoach.engine.services.project import load_project
    from stagecoach.engine.settings import load_settings

    settings = load_settings()
    return load_project(settings).content_dir(settings)


def _load(content_dir: Path | None) -> ContentLibrary:
    return ContentLibrary.load(content_dir or _default_dir())


def _expiry(item: ContentItem) -> str:
    # The last day it is sent: a date-only 'expires' ends at the following midnight.
    return "-" if item.expires is None else (item.expires - timedelta(seconds=1)).date().isoformat()


@content_app.command("list")
def list_items(content_dir: ContentDir = None, json_output: JsonFlag = False) -> None:
    """List every item: id, kind, funnel stage, priority, locales, channels, expiry."""
    library = _load(content_dir)
    if json_output:
        typer.echo(json.dumps([i.summary() for i in library.items], ensure_ascii=False, indent=2))
        return
    rows = [("ID", "KIND", "STAGE", "PRIO", "LOCALES", "CHANNELS", "LAST DAY")]
    rows += [
        (
            i.id,
            i.kind,
            i.stage,
            str(i.priority),
            ",".join(i.locales),
            ",".join(i.channels),
            _expiry(i),
        )
        for i in library.items
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k}: {v}" for k, v in value.items()) + ")"
    return str(value)


@content_app.command()
def show(
    content_id: Annotated[str, typer.Argument(help="Item id.")],
    content_dir: ContentDir = None,
    json_output: JsonFlag = False,
) -> None:
    """Show one item's front matter, version, variables and files."""
    library = _load(content_dir)
    item = library.item(content_id)
    summary = item.summary()
    summary["files"] = sorted(p.name for p in item.path.iterdir() if p.is_file())
    if json_output:
        typer.echo(json.dumps(summary, ensure_ascii=False, indent=2))
        return
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={_flat(v)}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        typer.echo(f"{key + ':':<14}{'-' if value is None else value}")


@content_app.command()
def validate(
    path: Annotated[
        Path | None, typer.Argument(help="Catalog directory (default: the active one).")
    ] = None,
) -> None:
    """Load and check every item; print each problem with its file, field and fix."""
    root = path or _default_dir()
    try:
        library = ContentLibrary.load(root)
    except ContentValidationError as exc:
        for problem in exc.problems:
            typer.echo(problem.one_line(), err=True)
        count = len(exc.problems)
        typer.echo(f"{count} problem{'s' if count != 1 else ''} in {root}", err=True)
        raise typer.Exit(1) from None
    variants = sum(len(i.locales) * len(i.channels) for i in library.items)
    typer.echo(f"ok: {len(library.items)} items, {variants} variants in {root}")


def _attributes(pairs: list[str]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ContentError(
                f"--attr {pair!r} is not NAME=VALUE", fix="write e.g. --attr first_name=Ana"
            )
        attributes[name.strip()] = value
    return attributes


def _preview_signer() -> LinkSigner:
    # Links look exactly like a real send's, but are signed with a throwaway key, so a
    # preview can never produce a working unsubscribe or redirect for a real contact.
    from stagecoach.engine.settings import load_settings

    return LinkSigner(os.urandom(32), load_settings().api_base_url, DEFAULT_TOKEN_TTL)


def _contact_attributes(contact_id: str) -> dict[str, Any]:
    """The contact's attributes from its workflow's ``state`` query."""
    import asyncio

    from stagecoach.engine.settings import load_settings
    from stagecoach.engine.temporal.gateway import contact_view
    from stagecoach.workflows.client import connect

    settings = load_settings()

    async def read() -> dict[str, Any]:
        view = await contact_view(await connect(settings), contact_id)
        return dict(view.state["attributes"])

    return asyncio.run(read())


@content_app.command()
def preview(
    content_id: Annotated[str, typer.Argument(help="Item id.")],
    contact: Annotated[
        str | None,
        typer.Option(
            "--contact",
            help="Render for this contact: its attributes and locale are read from its "
            "workflow (needs Temporal). Without it, a sample contact.",
        ),
    ] = None,
    attr: Annotated[
        list[str] | None,
        typer.Option("--attr", "--contact-attr", help="Contact attribute NAME=VALUE; repeatable."),
    ] = None,
    locale: Annotated[
        str | None, typer.Option(help="Locale to render (default: the contact's, else zh-CN).")
    ] = None,
    channel: Annotated[str, typer.Option(help="email or wechat.")] = "email",
    html_out: Annotated[
        Path | None, typer.Option("--html-out", help="Write the email's HTML here.")
    ] = None,
    content_dir: ContentDir = None,
    json_output: JsonFlag = False,
) -> None:
    """Render ITEM for a contact exactly as it would be sent (links signed with a throwaway
    key, so nothing in a preview can unsubscribe or track anyone).

    With --contact the contact's live attributes and locale come from its workflow, as
    the delivery activity sees them; --attr overrides or adds attributes.
    """
    library = _load(content_dir)
    attributes = _contact_attributes(contact) if contact else {}
    attributes.update(_attributes(attr or []))
    chosen_locale = locale or str(attributes.get("locale") or "zh-CN")
    contact_id = contact or "preview"
    message = library.render(
        content_id,
        channel=channel,
        locale=chosen_locale,
        contact=RenderContact(
            contact_id=contact_id,
            attributes=attributes,
            email=attributes.get("email"),
            openid=attributes.get("wechat_openid"),
        ),
        now=datetime.now(UTC),
        signer=_preview_signer(),
        idempotency_key=f"preview|{contact_id}|{content_id}",
    )
    if json_output:
        typer.echo(json.dumps(message.to_dict(), ensure_ascii=False, indent=2))
        return
    typer.echo(f"content:  {message.content_id} ({message.kind}) version {message.content_version}")
    typer.echo(f"channel:  {message.channel} {message.locale}")
    if message.wechat is not None:
        typer.echo(json.dumps(message.wechat, ensure_ascii=False, indent=2))
        return
    typer.echo(f"Subject: {message.subject}")
    for name, value in message.headers.items():
        typer.echo(f"{name}: {value}")
    typer.echo("\n--- text/plain ---")
    typer.echo(message.text)
    if html_out is not None:
        html_out.write_text(message.html, encoding="utf-8")
        typer.echo(f"--- text/html written to {html_out} ({len(message.html)} characters) ---")
    else:
        typer.echo("--- text/html ---")
        typer.echo(message.html)
