"""The documentation site's generated parts, and the MkDocs hook that builds them.

Two pages are derived from code so they cannot drift from it:

* ``docs/events.md`` carries the event catalog table (``events_table``) between markers,
  committed like ``docs/scoring.md``'s rules; ``tests/docs/test_site.py`` fails until
  ``.venv/bin/python scripts/docs_site.py`` has rewritten it after a catalog change.
* ``docs/api/reference.md`` is filled at build time from the API's own OpenAPI spec
  (``create_app(...).openapi()``), and the spec itself is published as
  ``api/openapi.json``. The spec changes with every route, so it is generated on each
  build rather than committed.

MkDocs loads this file through ``hooks:`` in ``mkdocs.yml``.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EVENTS_PAGE = ROOT / "docs" / "events.md"
EVENTS_START = "<!-- events:start -->\n"
EVENTS_END = "<!-- events:end -->"
ENDPOINTS_MARKER = "<!-- openapi:endpoints -->"
REFERENCE_PAGE = "api/reference.md"
SPEC_FILE = "api/openapi.json"

if str(ROOT) not in sys.path:  # MkDocs imports hooks by path, not from the project
    sys.path.insert(0, str(ROOT))


# --- the event catalog ---------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _names(items: Iterable[str]) -> str:
    return ", ".join(f"`{name}`" for name in sorted(set(items)))


def events_table() -> str:
    """The bundled catalog as Markdown: each event, its properties and what reacts to it."""
    from stagecoach.engine.domain.journeys import ValidationContext
    from stagecoach.workflows.events import CATALOG
    from stagecoach.workflows.journeys import compile_journeys
    from stagecoach.workflows.pipeline import DEFAULT

    stages = frozenset(DEFAULT.stage_names)
    specs = compile_journeys(ValidationContext(frozenset(CATALOG.names()), stages))
    users: dict[str, list[str]] = {name: [] for name in CATALOG.names()}

    def mark(types: Iterable[str], who: str) -> None:
        for name in sorted(types):
            if who not in users.setdefault(name, []):
                users[name].append(who)

    for rule in DEFAULT.rules:
        mark(rule.when.event_types(), f"stage rule `{rule.name}` (→ {rule.to_stage})")
    for score_rule in DEFAULT.scoring.rules:
        mark({score_rule.matcher.type}, f"score rule `{score_rule.name}`")
    mark(DEFAULT.grading.event_types(), "grading")
    mark(DEFAULT.mql.event_types(), "MQL")
    for name, spec in sorted(specs.items()):
        mark(spec.event_types(), f"journey `{name}`")

    lines = [
        "| event | what happened | properties | reaches the workflow | reacted to by |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in CATALOG.names():
        event = CATALOG.get(name)
        props = "<br>".join(
            f"`{prop}`: {_cell(meaning)}" for prop, meaning in event.properties.items()
        )
        lines.append(
            f"| `{name}` | {_cell(event.description)} | {props or '—'} "
            f"| {'yes' if event.signal else 'no (analytics only)'} "
            f"| {'<br>'.join(users.get(name, [])) or '—'} |"
        )
    return "\n".join(lines) + "\n"


def write_events_page(path: Path = EVENTS_PAGE) -> bool:
    """Rewrite the table in ``path``; True when it changed."""
    text = path.read_text(encoding="utf-8")
    head, rest = text.split(EVENTS_START, 1)
    _, tail = rest.split(EVENTS_END, 1)
    new = head + EVENTS_START + events_table() + EVENTS_END + tail
    if new == text:
        return False
    path.write_text(new, encoding="utf-8")
    return True


# --- the HTTP API --------------------------------------------------------------------------


def openapi_spec() -> dict[str, Any]:
    """The API's OpenAPI document, built from the app as ``stagecoach api`` builds it.

    Nothing is served and no database is opened: an in-memory SQLite Engine is passed as ``db`` so
    the app can be assembled on a machine with no Stagecoach data directory.
    """
    from sqlalchemy import create_engine

    from stagecoach.engine.app import create_app
    from stagecoach.engine.settings import Settings

    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app(Settings(data_dir=Path(data_dir)), db=create_engine("sqlite://"))
        return app.openapi()


_CODE = re.compile(r"(`[^`]*`)")


def _text(text: str | None) -> str:
    """Prose from docstrings, with ``<token>``-style words kept out of the HTML."""
    if not text:
        return ""
    text = text.replace("``", "`")
    parts = _CODE.split(text)
    return "".join(
        part if part.startswith("`") else part.replace("<", "&lt;").replace(">", "&gt;")
        for part in parts
    )


def _schema_words(schema: Mapping[str, Any] | None) -> str:
    if not schema:
        return ""
    if "$ref" in schema:
        return f"`{str(schema['$ref']).rsplit('/', 1)[-1]}`"
    for combo in ("anyOf", "oneOf"):
        if combo in schema:
            return " or ".join(_schema_words(s) for s in schema[combo])
    kind = schema.get("type", "")
    if kind == "array":
        return f"array of {_schema_words(schema.get('items'))}"
    return f"`{kind}`" if kind else ""


def _resolve(spec: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        resolved: Mapping[str, Any] = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        return resolved
    return schema


def _body(media: str, schema: Mapping[str, Any], spec: Mapping[str, Any]) -> list[str]:
    """The request body's top-level fields, or its type when it has none."""
    fields: Mapping[str, Any] = schema.get("properties", {})
    if not fields:
        return [f"Body: `{media}` {_schema_words(schema)}.".replace(" .", "."), ""]
    required = set(schema.get("required", []))
    out = [
        f"Body (`{media}`):",
        "",
        "| field | type | required | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for name, field in fields.items():
        field = _resolve(spec, field)
        meaning = field.get("description") or ""
        out.append(
            f"| `{name}` | {_schema_words(field)} | {'yes' if name in required else 'no'} "
            f"| {_cell(_text(meaning))} |"
        )
    return [*out, ""]


def _auth(op: Mapping[str, Any]) -> str:
    names = [name for requirement in op.get("security", []) for name in requirement]
    if not names:
        return "—"
    return ", ".join("admin token" if n == "adminToken" else f"`{n}`" for n in names)


def endpoint_reference(spec: Mapping[str, Any]) -> str:
    """Markdown for every operation in ``spec``: a summary table per tag, then each route."""
    by_tag: dict[str, list[tuple[str, str, Mapping[str, Any]]]] = {}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            tag = (op.get("tags") or ["other"])[0]
            by_tag.setdefault(tag, []).append((method.upper(), path, op))
    out: list[str] = []
    for tag, ops in by_tag.items():
        out += [f"## {tag}", "", "| method | path | what | auth |", "| --- | --- | --- | --- |"]
        for method, path, op in ops:
            summary = _cell(_text(op.get("summary")))
            out.append(f"| {method} | `{path}` | {summary} | {_auth(op)} |")
        out.append("")
        for method, path, op in ops:
            out += [f"### {method} `{path}`", ""]
            if op.get("description"):
                out += [_text(op["description"]).strip(), ""]
            params = op.get("parameters", [])
            if params:
                out += [
                    "| parameter | in | required | type | meaning |",
                    "| --- | --- | --- | --- | --- |",
                ]
                for p in params:
                    meaning = p.get("description") or p.get("schema", {}).get("description")
                    out.append(
                        f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} "
                        f"| {_schema_words(p.get('schema'))} "
                        f"| {_cell(_text(meaning))} |"
                    )
                out.append("")
            for media, content in op.get("requestBody", {}).get("content", {}).items():
                out += _body(media, _resolve(spec, content.get("schema", {})), spec)
            responses = op.get("responses", {})
            if responses:
                out.append(
                    "Answers: "
                    + "; ".join(
                        f"**{code}** {_text(r.get('description'))}".rstrip()
                        for code, r in sorted(responses.items())
                    )
                    + "."
                )
                out.append("")
    return "\n".join(out)


# --- MkDocs hooks --------------------------------------------------------------------------

_spec_cache: dict[str, Any] = {}


def _spec() -> dict[str, Any]:
    if not _spec_cache:
        _spec_cache.update(openapi_spec())
    return _spec_cache


def on_files(files: Any, config: Any) -> Any:
    """Publish the OpenAPI document beside the reference page."""
    import json

    from mkdocs.structure.files import File

    files.append(File.generated(config, SPEC_FILE, content=json.dumps(_spec(), indent=2) + "\n"))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Fill the API reference page from the spec."""
    if page.file.src_uri == REFERENCE_PAGE:
        if ENDPOINTS_MARKER not in markdown:
            raise ValueError(f"{REFERENCE_PAGE} lost its {ENDPOINTS_MARKER} marker")
        markdown = markdown.replace(ENDPOINTS_MARKER, endpoint_reference(_spec()))
    return markdown


if __name__ == "__main__":
    changed = write_events_page()
    print(f"{EVENTS_PAGE.relative_to(ROOT)}: {'rewritten' if changed else 'already current'}")
