"""The documentation site: it builds strictly, its generated parts match the code, its
examples print what the pages say they print, and the README's links lead somewhere."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _docs_site() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_site", ROOT / "scripts" / "docs_site.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        # Material's notice about its successor is not a warning about this site.
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def _config_for(docs_dir: Path, tmp_path: Path) -> Path:
    """``mkdocs.yml`` pointed at another copy of the pages (the hook stays the project's)."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert "docs_dir: docs\n" in text
    assert "  - scripts/docs_site.py\n" in text
    text = text.replace("docs_dir: docs\n", f"docs_dir: {docs_dir}\n").replace(
        "  - scripts/docs_site.py\n", f"  - {ROOT / 'scripts' / 'docs_site.py'}\n"
    )
    config = tmp_path / "mkdocs.yml"
    config.write_text(text, encoding="utf-8")
    return config


def test_the_site_builds_strictly_with_the_generated_api_reference(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = _build(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, result.stderr
    assert not re.search(r"^(WARNING|ERROR)", result.stderr, re.M), result.stderr
    # The published spec is the app's own, and every route has its section.
    spec = json.loads((site / "api" / "openapi.json").read_text(encoding="utf-8"))
    assert spec == json.loads(json.dumps(_docs_site().openapi_spec()))
    reference = (site / "api" / "reference.html").read_text(encoding="utf-8")
    for path, operations in spec["paths"].items():
        for method in operations:
            assert f"{method.upper()} <code>{path}</code>" in reference, (method, path)
    # Lists written for GitHub (two-space nesting, no blank line before a list) run into
    # the paragraph above them here: no rendered paragraph may hold a list marker.
    for built in site.rglob("*.html"):
        html = re.sub(r"<pre.*?</pre>|<code>.*?</code>", "", built.read_text("utf-8"), flags=re.S)
        for block in re.findall(r"<(?:p|li)>(.*?)</(?:p|li)>", html, flags=re.S):
            text = " ".join(re.sub(r"<[^>]+>", " ", block).split())
            assert not re.search(r"[.;:,] (- |\d\. )[A-Za-z]", text), (built, text[:200])
    # Every page of the nav was written, and no page reaches out for a script or a font.
    for page in ("events", "cli", "settings", "promises/faults", "benchmarks/email-throughput"):
        html = (site / f"{page}.html").read_text(encoding="utf-8")
        assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?://", html), page


def test_a_broken_link_or_a_page_left_out_fails_the_build(tmp_path: Path) -> None:
    copy = tmp_path / "docs"
    subprocess.run(["cp", "-r", str(DOCS), str(copy)], check=True)
    with (copy / "events.md").open("a", encoding="utf-8") as page:
        page.write("\nSee [the missing page](missing.md) and [this](cli.md#no-such-heading).\n")
    (copy / "orphan.md").write_text("# Not in the nav\n", encoding="utf-8")
    result = _build(_config_for(copy, tmp_path), tmp_path / "site")
    assert result.returncode != 0
    # Strict mode reports every problem before it gives up.
    for complaint in ("missing.md", "no-such-heading", "orphan.md"):
        assert complaint in result.stderr, result.stderr


def test_the_event_catalog_page_is_the_catalog() -> None:
    """docs/events.md prints the generated table: a changed catalog, rule or journey fails
    here until ``.venv/bin/python scripts/docs_site.py`` has rewritten the page."""
    site = _docs_site()
    text = (DOCS / "events.md").read_text(encoding="utf-8")
    documented = text.split(site.EVENTS_START, 1)[1].split(site.EVENTS_END, 1)[0]
    table = site.events_table()
    assert documented == table
    from stagecoach.workflows.events import CATALOG

    for name in CATALOG.names():
        assert f"| `{name}` |" in table
    assert "stage rule `raised_hand` (→ prospect)" in table
    assert "journey `nps_survey`" in table


EXAMPLE = re.compile(r"```python\n(?P<code>.*?)```\n\n```text\n(?P<output>.*?)```", re.S)


def _examples() -> list[tuple[str, str, str]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for i, match in enumerate(EXAMPLE.finditer(page.read_text(encoding="utf-8"))):
            found.append((f"{page.relative_to(DOCS)}#{i + 1}", match["code"], match["output"]))
    return found


def test_the_authoring_pages_have_examples() -> None:
    pages = {name.split("#")[0] for name, _, _ in _examples()}
    assert {"authoring/pipelines.md", "authoring/journeys.md"} <= pages


@pytest.mark.parametrize(("where", "code", "output"), _examples(), ids=[e[0] for e in _examples()])
def test_each_example_prints_what_its_page_says(where: str, code: str, output: str) -> None:
    result = subprocess.run(
        [sys.executable, "-"],
        input=code,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{where}: {result.stderr}"
    assert result.stdout == output, where


def test_every_relative_link_in_the_readme_leads_to_a_file() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    relative = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert relative, "the README links nowhere onward"
    for link in relative:
        assert (ROOT / link).exists(), link


def _documented_settings(page: str) -> set[str]:
    """Every variable the settings table names, with ``_SUFFIX`` shorthands expanded: in
    "`STAGECOACH_WEBHOOK_URL`, `_SECRET`" the second is ``STAGECOACH_WEBHOOK_SECRET``, so a
    shorthand stands for the first name with one of its trailing parts replaced."""
    names: set[str] = set()
    for line in page.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        tokens = re.findall(r"`([A-Z_][A-Z0-9_]*)`", cell)
        if not tokens:
            continue
        full = tokens[0]
        names.add(full)
        cuts = [i for i, c in enumerate(full) if c == "_"]
        for token in tokens[1:]:
            if token.startswith("_"):
                names.update(full[:i] + token for i in cuts)
            else:
                names.add(token)
    return names


def test_the_settings_page_documents_every_setting() -> None:
    from stagecoach.engine.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    documented = _documented_settings((DOCS / "settings.md").read_text(encoding="utf-8"))
    missing = []
    for name, field in Settings.model_fields.items():
        variable = field.validation_alias if isinstance(field.validation_alias, str) else None
        variable = variable or f"{prefix}{name}".upper()
        if variable not in documented:
            missing.append(variable)
    assert not missing, f"add a row to docs/settings.md for each of {missing}"


def test_the_settings_page_gives_the_defaults_the_code_has() -> None:
    """Where the page gives a default as one literal (`8`, `sink`, `true`), it is the
    code's; defaults in words (unset, `<data_dir>/...`) are left to the prose."""
    from stagecoach.engine.settings import Settings

    prefix = str(Settings.model_config.get("env_prefix", "")).upper()
    checked = 0
    for line in (DOCS / "settings.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z_][A-Z0-9_]*)`", cells[0])
        defaults = [d.strip() for d in cells[1].split(", ")] if len(names) > 1 else [cells[1]]
        if len(defaults) != len(names):
            continue
        full = names[0]
        for name, documented in zip(names, defaults, strict=True):
            literal = re.fullmatch(r"`([^`<]*)`", documented)
            if literal is None:
                continue
            candidates = [full[:i] + name for i, c in enumerate(full) if c == "_"]
            variable = next(
                (
                    v
                    for v in ([name] if not name.startswith("_") else candidates)
                    if v.removeprefix(prefix).lower() in Settings.model_fields
                ),
                None,
            )
            assert variable is not None, f"docs/settings.md names an unknown setting {name}"
            default = Settings.model_fields[variable.removeprefix(prefix).lower()].default
            if isinstance(default, bool):
                code = str(default).lower()
            elif isinstance(default, float) and default.is_integer():
                code = str(int(default))
            elif isinstance(default, str | int | float):
                code = str(default)
            else:
                continue
            assert literal[1] == code, f"{variable}: the page says {documented}, the code {code}"
            checked += 1
    assert checked > 40


def test_the_cli_page_lists_every_command() -> None:
    """Every ``stagecoach`` command the CLI registers has a row on docs/cli.md (a row may
    cover siblings, as ``stagecoach content list | show ID | ...`` does)."""
    import typer.main

    from stagecoach.engine.cli import app

    def walk(command: object, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        children = getattr(command, "commands", None)
        if not children:
            return [path]
        return [p for name, sub in children.items() for p in walk(sub, (*path, name))]

    commands = walk(typer.main.get_command(app), ())
    assert ("journeys", "simulate") in commands
    rows = [
        line.split(" | ")[0]
        for line in (DOCS / "cli.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| `stagecoach ")
    ]
    for first, *rest in commands:
        documented = [row for row in rows if row.startswith(f"| `stagecoach {first}")]
        assert documented, f"docs/cli.md has no row for stagecoach {first}"
        if rest:
            word = re.compile(rf"(stagecoach {first} |\\\| ){re.escape(rest[0])}\b")
            assert any(word.search(row) for row in documented), f"stagecoach {first} {rest[0]}"
