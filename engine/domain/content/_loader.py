"""Reading and validating the catalog on disk: one directory per item.

    content/
      _layouts/email.<locale>.html.j2        shared chrome (optional), used via {% extends %}
      _layouts/email.<locale>.txt.j2
      <id>/item.md                           YAML front matter between '---' lines, notes below
      <id>/email.<locale>.subject.j2
      <id>/email.<locale>.html.j2
      <id>/email.<locale>.txt.j2
      <id>/wechat.<locale>.template.yaml     template message (field mapping), or
      <id>/wechat.<locale>.cs.yaml           customer-service message (text or news)

Every problem is collected, each with the file, the field and the fix, before one
``ContentValidationError`` is raised.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Template, TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from stagecoach.engine.domain.hashing import content_hash

from ._errors import ContentProblem
from ._model import CHANNELS, FUNNEL_STAGES, GATINGS, KINDS, ContentItem
from ._render import BUILTIN_NAMES, internals_access

ITEM_FILE = "item.md"
LAYOUT_DIR = "_layouts"
EMAIL_PARTS = ("subject", "html", "txt")
WECHAT_FORMS = ("template", "cs")

_LOCALE = r"[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*"
_EMAIL_FILE = re.compile(rf"^email\.({_LOCALE})\.(subject|html|txt)\.j2$")
_WECHAT_FILE = re.compile(rf"^wechat\.({_LOCALE})\.(template|cs)\.yaml$")
_LOCALE_RE = re.compile(rf"^{_LOCALE}$")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_VAR_RE = re.compile(r"^[a-z][a-z0-9_]*$")

_REQUIRED = ("id", "kind", "stage", "title", "locales", "channels", "asset_url")
_OPTIONAL = ("topics", "tags", "expires", "gating", "priority", "variables")


@dataclass
class WechatSpec:
    """A WeChat variant: its form and its field templates (dotted path to source)."""

    form: str
    static: dict[str, str]
    fields: dict[str, str]


@dataclass
class ParsedItem:
    """An item read from disk, before its templates are compiled."""

    item: ContentItem
    sources: dict[str, str]
    """Template file name (``email.en.html.j2``) to source."""
    wechat: dict[str, WechatSpec] = field(default_factory=dict)


@dataclass
class Problems:
    """Collects problems, each with file, field and fix."""

    root: Path
    found: list[ContentProblem] = field(default_factory=list)

    def add(self, path: Path, field_name: str, message: str, fix: str) -> None:
        try:
            shown = str(path.relative_to(self.root.parent))
        except ValueError:
            shown = str(path)
        self.found.append(ContentProblem(shown, field_name, message, fix))


# libyaml's safe loader when the wheel has it (it does on our platforms): same safety, and
# parsing the catalog's YAML is most of the load time in pure Python.
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a safe loader, see above


def split_front_matter(text: str) -> tuple[str, str] | None:
    """(front matter, body) of a ``---``-delimited document, or ``None`` without one."""
    lines = text.lstrip("\ufeff").splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return None
    for index in range(1, len(lines)):
        if lines[index].strip() == "---":
            return "".join(lines[1:index]), "".join(lines[index + 1 :])
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _expiry(value: Any) -> datetime | None:
    # A bare date means "last day it may be sent": it expires at the following midnight UTC.
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value + timedelta(days=1), time(), tzinfo=UTC)
    raise ValueError(value)


def _str_list(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    return None


def read_layouts(root: Path, problems: Problems) -> dict[str, str]:
    """Layout templates (``_layouts/<file>``) by loader name."""
    layouts: dict[str, str] = {}
    folder = root / LAYOUT_DIR
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix == ".j2":
                try:
                    layouts[f"{LAYOUT_DIR}/{path.name}"] = path.read_text("utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    problems.add(path, "file", f"cannot be read ({exc})", "save it as UTF-8")
    return layouts


def read_item(directory: Path, problems: Problems, layouts: Mapping[str, str]) -> ParsedItem | None:
    """Read and check one item directory; ``None`` when it is too broken to use."""
    item_path = directory / ITEM_FILE
    before = len(problems.found)
    if not item_path.is_file():
        problems.add(
            directory,
            ITEM_FILE,
            "the item has no item.md",
            "add item.md with YAML front matter between '---' lines (copy another item's)",
        )
        return None
    try:
        text = item_path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(item_path, "file", f"cannot be read ({exc})", "save it as UTF-8")
        return None
    split = split_front_matter(text)
    if split is None:
        problems.add(
            item_path,
            "front matter",
            "no front matter: the file must start with '---', the YAML, then '---'",
            "put the item's fields between two '---' lines at the top of item.md",
        )
        return None
    raw, notes = split
    try:
        fm = _load_yaml(raw)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 2}" if where is not None else ""
        problems.add(
            item_path,
            "front matter",
            f"the YAML does not parse{line}: {getattr(exc, 'problem', exc)}",
            "fix the YAML syntax (indentation, a missing ':' or an unclosed quote)",
        )
        return None
    if not isinstance(fm, dict):
        problems.add(
            item_path,
            "front matter",
            "the front matter is not a mapping of fields",
            "write 'field: value' lines (id, kind, stage, title, locales, channels...)",
        )
        return None

    def bad(field_name: str, message: str, fix: str) -> None:
        problems.add(item_path, field_name, message, fix)

    for name in _REQUIRED:
        if name not in fm:
            bad(name, "the field is missing", f"add '{name}:' to the front matter")
    for name in fm:
        if name not in _REQUIRED and name not in _OPTIONAL:
            bad(
                str(name),
                "unknown field",
                f"remove it or correct the spelling; fields are {', '.join(_REQUIRED + _OPTIONAL)}",
            )

    item_id = fm.get("id")
    if "id" in fm and (not isinstance(item_id, str) or not _ID_RE.match(item_id)):
        bad("id", f"{item_id!r} is not a valid id", "use lowercase letters, digits and '-'")
    elif isinstance(item_id, str) and item_id != directory.name:
        bad(
            "id",
            f"id {item_id!r} differs from the directory name {directory.name!r}",
            "keep ids stable: name the directory after the id",
        )
    kind = fm.get("kind")
    if "kind" in fm and kind not in KINDS:
        bad("kind", f"unknown kind {kind!r}", f"use one of {', '.join(KINDS)}")
    stage = fm.get("stage")
    if "stage" in fm and stage not in FUNNEL_STAGES:
        bad(
            "stage",
            f"unknown funnel stage {stage!r}",
            f"use one of {', '.join(FUNNEL_STAGES)}",
        )
    locales = _str_list(fm.get("locales"))
    if "locales" in fm and (not locales or not all(_LOCALE_RE.match(x) for x in locales)):
        bad("locales", "must be a non-empty list of locales", "write e.g. 'locales: [zh-CN, en]'")
        locales = None
    channels = _str_list(fm.get("channels"))
    if "channels" in fm and (not channels or not set(channels) <= set(CHANNELS)):
        bad("channels", "must be a non-empty list of channels", "use email and/or wechat")
        channels = None
    title = fm.get("title")
    if "title" in fm and not (
        isinstance(title, dict) and all(isinstance(v, str) and v for v in title.values())
    ):
        bad("title", "must map each locale to a title", "write 'title: {zh-CN: ..., en: ...}'")
        title = None
    elif locales and isinstance(title, dict):
        for loc in locales:
            if loc not in title:
                bad(f"title.{loc}", "no title for this locale", f"add 'title.{loc}'")
    asset_url = fm.get("asset_url")
    if "asset_url" in fm and not (
        isinstance(asset_url, str) and asset_url.startswith(("https://", "http://"))
    ):
        bad("asset_url", "must be an http(s) URL", "write the asset's full https:// address")
    topics = _str_list(fm.get("topics", []))
    if topics is None and fm.get("topics"):
        bad("topics", "must be a list of words", "write e.g. 'topics: [predictive-maintenance]'")
    tags = _str_list(fm.get("tags", []))
    if tags is None and fm.get("tags"):
        bad("tags", "must be a list of words", "write e.g. 'tags: [flagship]'")
    expires: datetime | None = None
    if fm.get("expires") is not None:
        try:
            expires = _expiry(fm["expires"])
        except ValueError:
            bad("expires", "not a date", "write 'expires: 2027-06-30' (last day it is sent)")
    gating = fm.get("gating", "none")
    if gating not in GATINGS:
        bad("gating", f"unknown gating {gating!r}", f"use one of {', '.join(GATINGS)}")
    priority = fm.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        bad("priority", "must be a whole number", "write e.g. 'priority: 50' (higher first)")
        priority = 0

    variables: dict[str, dict[str, str]] = {}
    declared = fm.get("variables") or {}
    if not isinstance(declared, dict):
        bad("variables", "must map names to defaults", "write 'variables: {first_name: ...}'")
        declared = {}
    for name, default in declared.items():
        where = f"variables.{name}"
        if not isinstance(name, str) or not _VAR_RE.match(name):
            bad(where, "not a valid variable name", "use lowercase letters, digits and '_'")
            continue
        if name in BUILTIN_NAMES:
            bad(where, "this name is provided by the library", "pick another name")
            continue
        if isinstance(default, str | int | float) and not isinstance(default, bool):
            variables[name] = {loc: str(default) for loc in locales or ()}
        elif isinstance(default, dict) and all(isinstance(v, str | int) for v in default.values()):
            variables[name] = {str(k): str(v) for k, v in default.items()}
            for loc in locales or ():
                if loc not in variables[name]:
                    bad(
                        f"{where}.{loc}",
                        "no default for this locale",
                        f"add a default for {loc}; a message never goes out with a blank",
                    )
        else:
            bad(
                where,
                "the default must be text, or a mapping of locale to text",
                f"write '{name}: {{zh-CN: ..., en: ...}}'",
            )

    # Templates: every file that looks like one must follow the naming scheme.
    sources: dict[str, str] = {}
    wechat: dict[str, WechatSpec] = {}
    present: set[tuple[str, str, str]] = set()
    for path in sorted(directory.iterdir()):
        if path.name == ITEM_FILE or path.name.startswith(".") or path.is_dir():
            continue
        email_match = _EMAIL_FILE.match(path.name)
        wechat_match = _WECHAT_FILE.match(path.name)
        if not email_match and not wechat_match:
            if path.suffix in (".j2", ".yaml", ".yml") or path.name.startswith("wechat"):
                problems.add(
                    path,
                    "file name",
                    "not a recognised template name",
                    "name it email.<locale>.subject|html|txt.j2 or "
                    "wechat.<locale>.template|cs.yaml",
                )
            continue
        try:
            source = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.add(path, "file", f"cannot be read ({exc})", "save it as UTF-8")
            continue
        sources[path.name] = source
        if email_match:
            present.add(("email", email_match.group(1), email_match.group(2)))
        else:
            assert wechat_match is not None
            loc, form = wechat_match.group(1), wechat_match.group(2)
            if loc in wechat:
                problems.add(
                    path,
                    "file name",
                    f"a second WeChat variant for {loc}",
                    "keep either the template or the cs file for a locale, not both",
                )
                continue
            present.add(("wechat", loc, form))
            spec = _read_wechat(path, source, form, problems)
            if spec is not None:
                wechat[loc] = spec

    # Missing and stray variants.
    for channel in channels or ():
        for loc in locales or ():
            if channel == "email":
                for part in EMAIL_PARTS:
                    if ("email", loc, part) not in present:
                        bad(
                            "locales",
                            f"declares {loc} and channel email but has no email.{loc}.{part}.j2",
                            f"add email.{loc}.{part}.j2, or remove {loc} from locales",
                        )
            elif not any(("wechat", loc, form) in present for form in WECHAT_FORMS):
                bad(
                    "locales",
                    f"declares {loc} and channel wechat but has no wechat.{loc}.template.yaml "
                    f"or wechat.{loc}.cs.yaml",
                    f"add one of them, or remove {loc} from locales",
                )
    for channel, loc, _part in sorted(present):
        if locales and loc not in locales:
            bad(
                "locales",
                f"has {channel} templates for {loc} but does not declare it",
                f"add {loc} to locales, or delete its templates",
            )
        elif channels and channel not in channels:
            bad(
                "channels",
                f"has {channel} templates but does not offer {channel}",
                f"add {channel} to channels, or delete its templates",
            )

    if len(problems.found) > before:
        return None
    # Every check above passed, so the fields have the types they were checked for.
    assert isinstance(item_id, str)
    assert isinstance(kind, str)
    assert isinstance(stage, str)
    assert locales
    assert channels
    assert isinstance(title, dict)
    assert isinstance(asset_url, str)
    used_layouts = {
        name: layouts[name]
        for source in sources.values()
        for name in _referenced(source)
        if name in layouts
    }
    version = content_hash(
        {
            "front_matter": _jsonable(fm),
            "templates": sources,
            "layouts": dict(sorted(used_layouts.items())),
        }
    )
    item = ContentItem(
        id=item_id,
        kind=kind,
        stage=stage,
        title={str(k): str(v) for k, v in title.items()},
        locales=locales,
        channels=tuple(c for c in CHANNELS if c in channels),
        topics=topics or (),
        tags=tags or (),
        asset_url=asset_url,
        expires=expires,
        gating=str(gating),
        priority=priority,
        variables=variables,
        wechat_forms={loc: spec.form for loc, spec in sorted(wechat.items())},
        version=version,
        path=directory,
        notes=notes.strip(),
    )
    return ParsedItem(item=item, sources=sources, wechat=wechat)


_EXTENDS = re.compile(r"""{%-?\s*(?:extends|include|import|from)\s+["']([^"']+)["']""")


def _referenced(source: str) -> list[str]:
    # Cheap textual scan, used only to decide which layouts go into the version hash; the
    # compiled AST is checked properly in check_template.
    return _EXTENDS.findall(source)


def _read_wechat(path: Path, source: str, form: str, problems: Problems) -> WechatSpec | None:
    try:
        data = _load_yaml(source)
    except yaml.YAMLError as exc:
        problems.add(path, "yaml", f"does not parse: {exc}", "fix the YAML syntax")
        return None
    if not isinstance(data, dict):
        problems.add(path, "yaml", "is not a mapping", "write 'field: value' lines")
        return None
    static: dict[str, str] = {}
    fields: dict[str, str] = {}
    if form == "template":
        template_id = data.get("template_id")
        if not isinstance(template_id, str) or not template_id:
            problems.add(
                path,
                "template_id",
                "missing",
                "add the template id from the Official Account's template library",
            )
        else:
            static["template_id"] = template_id
        entries = data.get("data")
        if not isinstance(entries, dict) or not entries:
            problems.add(path, "data", "missing", "map each template field to its text")
        else:
            for key, value in entries.items():
                if not isinstance(value, str):
                    problems.add(path, f"data.{key}", "must be text", "quote the value")
                else:
                    fields[f"data.{key}"] = value
        if "url" in data:
            fields["url"] = str(data["url"])
        unknown = set(data) - {"template_id", "data", "url"}
    else:
        msgtype = data.get("msgtype")
        static["msgtype"] = str(msgtype)
        if msgtype == "text":
            if not isinstance(data.get("content"), str):
                problems.add(path, "content", "missing", "add 'content:' with the message text")
            else:
                fields["content"] = data["content"]
            unknown = set(data) - {"msgtype", "content"}
        elif msgtype == "news":
            for key in ("title", "description", "url", "picurl"):
                if not isinstance(data.get(key), str):
                    problems.add(path, key, "missing", f"add '{key}:' (news needs all four)")
                else:
                    fields[key] = data[key]
            unknown = set(data) - {"msgtype", "title", "description", "url", "picurl"}
        else:
            problems.add(path, "msgtype", f"unknown msgtype {msgtype!r}", "use text or news")
            return None
    for key in sorted(map(str, unknown)):
        problems.add(path, key, "unknown field", "remove it or correct the spelling")
    return WechatSpec(form=form, static=static, fields=fields)


def check_template(
    env: ImmutableSandboxedEnvironment,
    name: str,
    source: str,
    allowed: frozenset[str],
    path: Path,
    where: str,
    problems: Problems,
) -> Template | None:
    """Compile one template and check it statically; ``None`` (and a problem) if it is bad."""
    try:
        ast = env.parse(source, name=name)
    except TemplateSyntaxError as exc:
        problems.add(
            path,
            f"{where} line {exc.lineno}",
            f"template syntax error: {exc.message}",
            "close every {{ }} and {% %} and match each {% block %}/{% if %} with its end",
        )
        return None
    reached = internals_access(ast)
    if reached:
        problems.add(
            path,
            where,
            f"the template reaches for Python internals ({', '.join(reached)})",
            "templates may only print variables and use filters; remove those expressions",
        )
        return None
    try:
        # This runs Jinja's code generator, which refuses what the parser lets through:
        # an unknown filter, a block defined twice, an extends inside a block.
        undeclared = meta.find_undeclared_variables(ast)
    except TemplateSyntaxError as exc:
        problems.add(
            path,
            f"{where} line {exc.lineno}",
            f"template error: {exc.message}",
            "use only Jinja's built-in filters and tests, define each block once, and put "
            "{% extends %} first in the file",
        )
        return None
    missing = sorted(undeclared - allowed)
    if missing:
        problems.add(
            path,
            where,
            f"undefined variable{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
            "declare each under 'variables:' in item.md with a default per locale, "
            f"or use a built-in ({', '.join(sorted(BUILTIN_NAMES))})",
        )
        return None
    for ref in meta.find_referenced_templates(ast):
        if ref is None or not ref.startswith(f"{LAYOUT_DIR}/"):
            problems.add(
                path,
                where,
                f"extends or includes {ref or 'a computed name'}, which is not a layout",
                f"extend a file under content/{LAYOUT_DIR}/ by its literal name",
            )
            return None
        if env.loader is not None and ref not in env.loader.list_templates():
            problems.add(path, where, f"layout {ref} does not exist", "correct the name")
            return None
    try:
        # Compile the AST already parsed (and checked) above rather than parsing again.
        return env.from_string(ast)
    except TemplateSyntaxError as exc:
        problems.add(path, f"{where} line {exc.lineno}", exc.message or "syntax error", "fix it")
        return None
