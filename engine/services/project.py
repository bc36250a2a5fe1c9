"""Finding and loading a marketing project's definitions.

Where the definitions come from, first match wins:

1. ``--definitions module:attribute`` on any command, or ``STAGECOACH_DEFINITIONS`` (the
   option sets the variable, so ``up``'s worker and API inherit it);
2. ``[tool.stagecoach] definitions = "module:attribute"`` in the nearest
   ``pyproject.toml`` from the working directory up: the project's own repository;
3. the bundled example (``stagecoach.workflows.definitions``), picked by
   ``STAGECOACH_PIPELINE``.

A project's root (the folder of its ``pyproject.toml``, and its ``src/`` if it has one)
goes first on ``sys.path``, so its package imports without being installed. Whatever the
user's code does while loading (a syntax error, an exception, a missing name) becomes
one :class:`ProjectError` naming the file and line and the fix.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stagecoach.engine.domain.definitions import Definitions, DefinitionsError
from stagecoach.engine.domain.errors import ConfigurationError
from stagecoach.engine.settings import Settings

ENV_NAME = "STAGECOACH_DEFINITIONS"
PYPROJECT_KEY = "[tool.stagecoach] definitions"
BUNDLED_MODULE = "stagecoach.workflows.definitions"


class ProjectError(ConfigurationError):
    """The project's definitions cannot be found or loaded."""


@dataclass(frozen=True)
class Project:
    """A loaded project.

    Attributes:
        definitions: What the project defines.
        ref: ``module:attribute``, or ``bundled:<pipeline>`` for the bundled example.
        origin: Where the reference came from, for people.
        root: The project's folder (its ``pyproject.toml``'s), ``None`` for the bundled
            example or a reference given without one.
    """

    definitions: Definitions
    ref: str
    origin: str
    root: Path | None = None
    _sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def bundled(self) -> bool:
        return self.ref.startswith("bundled:")

    def content_dir(self, settings: Settings) -> Path:
        """The content this project uses: its own ``content`` folder when it declares one
        (relative to its root), else the setting, else the bundled content."""
        declared = self.definitions.content
        if declared is not None and "content_dir" not in settings.model_fields_set:
            path = Path(declared)
            if not path.is_absolute():
                path = (self.root or Path.cwd()) / path
            return path
        return settings.resolved_content_dir

    def source_of(self, journey: str) -> str | None:
        """``file:line`` where journey ``journey`` is written, when it can be found."""
        return self._sources.get(journey)


@dataclass(frozen=True)
class _Ref:
    ref: str
    origin: str
    root: Path | None


def find_pyproject(start: Path) -> tuple[Path, str] | None:
    """The nearest ``pyproject.toml`` from ``start`` up that names definitions, and the
    reference it names.

    Raises:
        ProjectError: That file is not valid TOML, or its setting is not a string.
    """
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if not candidate.is_file():
            continue
        try:
            data = tomllib.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ProjectError(
                f"{candidate} is not valid TOML: {exc}", fix="correct the file"
            ) from exc
        table = data.get("tool", {}).get("stagecoach")
        if not isinstance(table, dict) or "definitions" not in table:
            continue
        value = table["definitions"]
        if not isinstance(value, str) or not value.strip():
            raise ProjectError(
                f"{candidate}: {PYPROJECT_KEY} is {value!r}",
                fix='set it to "your_package.definitions:defs" (module:attribute)',
            )
        return candidate, value.strip()
    return None


def environment_settings(project: Project, name: str, settings: Settings) -> Settings:
    """``settings`` with the overrides of environment ``name``: the table
    ``[tool.stagecoach.environments.<name>]`` of the project's ``pyproject.toml``.

    Keys are setting names (``database_url``, ``temporal_address``, ...); ``${VAR}`` in a
    value is read from the environment, so secrets stay out of the repository. ``local``
    is always there: these settings as they are.

    Raises:
        ProjectError: No such environment (the message lists the declared ones), a key
            that is no setting, a ``${VAR}`` that is unset, or a value the setting refuses.
    """
    declared: dict[str, Any] = {}
    if project.root is not None:
        data = tomllib.loads((project.root / "pyproject.toml").read_text(encoding="utf-8"))
        declared = data.get("tool", {}).get("stagecoach", {}).get("environments", {}) or {}
    if name not in declared:
        if name == "local":
            return settings
        where = project.root / "pyproject.toml" if project.root else "the project's pyproject.toml"
        known = ", ".join(sorted({"local", *declared}))
        raise ProjectError(
            f"no environment {name!r} in {where} (known: {known})",
            fix=f"add a [tool.stagecoach.environments.{name}] table with its database_url, "
            "or deploy --to one of those",
        )
    table = declared[name]
    if not isinstance(table, dict):
        raise ProjectError(
            f"[tool.stagecoach.environments.{name}] is not a table",
            fix="write it as a table: [tool.stagecoach.environments.staging] then lines "
            'like database_url = "${STAGING_DATABASE_URL}"',
        )
    fields = set(Settings.model_fields)
    overrides: dict[str, Any] = {}
    for key, raw in table.items():
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=3)
            raise ProjectError(
                f"[tool.stagecoach.environments.{name}] sets {key!r}, which is no setting",
                fix=f"use a setting name ({', '.join(close) or 'see docs/settings.md'})",
            )
        value = raw
        if isinstance(raw, str):
            for var in re.findall(r"\$\{(\w+)\}", raw):
                if var not in os.environ:
                    raise ProjectError(
                        f"[tool.stagecoach.environments.{name}] {key} needs ${{{var}}}, "
                        "which is not set",
                        fix=f"export {var} before deploying",
                    )
            value = re.sub(r"\$\{(\w+)\}", lambda m: os.environ[m.group(1)], raw)
        overrides[key] = value
    try:
        return Settings.model_validate({**settings.model_dump(exclude_unset=True), **overrides})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ProjectError(
            f"[tool.stagecoach.environments.{name}] {'.'.join(map(str, first['loc']))}: "
            f"{first['msg']}",
            fix="correct that value",
        ) from exc


def git_commit(root: Path | None) -> str | None:
    """The project's short git commit, with ``*`` when the work tree has changes; ``None``
    outside a git repository."""
    if root is None or shutil.which("git") is None:
        return None
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short=7", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if head.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain"],
        capture_output=True,
        text=True,
        check=False,
    )
    return head.stdout.strip() + ("*" if dirty.stdout.strip() else "")


def _resolve(settings: Settings, cwd: Path) -> _Ref:
    if settings.definitions:
        return _Ref(settings.definitions.strip(), f"{ENV_NAME} (or --definitions)", None)
    found = find_pyproject(cwd)
    if found is not None:
        path, ref = found
        return _Ref(ref, f"{PYPROJECT_KEY} in {path}", path.parent)
    return _Ref(
        f"bundled:{settings.pipeline}",
        f"the bundled example (STAGECOACH_PIPELINE={settings.pipeline!r})",
        None,
    )


_cache: dict[tuple[str, Path | None], Project] = {}
_lock = threading.Lock()

PROVIDED_PREFIX = "provided:"
_provided: dict[str, Project] = {}


def provide(definitions: Definitions, *, root: Path | None = None) -> str:
    """Make ``definitions``, an object in hand rather than a module a project names,
    loadable: the returned reference, set as ``Settings.definitions``, selects it.

    ``stagecoach.testing`` runs a team's journeys this way, from the ``Definitions`` its
    test passes in. ``root`` is the folder its ``content`` is relative to. Registered
    until :func:`withdraw`; :func:`forget_loaded` leaves it registered.
    """
    if not isinstance(definitions, Definitions):
        raise ProjectError(
            f"expected a Definitions, got {type(definitions).__name__}",
            fix="pass the project's Definitions(...) object (e.g. your_package.definitions.defs)",
        )
    ref = f"{PROVIDED_PREFIX}{uuid.uuid4().hex}"
    project = Project(definitions, ref, "passed in", root, _sources(definitions))
    with _lock:
        _provided[ref] = project
    return ref


def withdraw(ref: str) -> None:
    """Forget definitions registered by :func:`provide`."""
    with _lock:
        _provided.pop(ref, None)
        for key in [k for k in _cache if k[0] == ref]:
            del _cache[key]


def load_project(settings: Settings, *, cwd: Path | None = None) -> Project:
    """The project ``settings`` and the working directory point at, loaded once per process.

    Raises:
        ProjectError: The reference is malformed, its module does not import (the message
            names the file and line), its attribute is missing or not a ``Definitions``,
            or the bundled pipeline named does not exist.
    """
    where = _resolve(settings, (cwd or Path.cwd()).resolve())
    key = (where.ref, where.root)
    with _lock:
        if key not in _cache:
            _cache[key] = _load(where)
        return _cache[key]


def forget_loaded() -> None:
    """Drop what :func:`load_project` remembered (tests load several projects)."""
    with _lock:
        _cache.clear()


def _load(where: _Ref) -> Project:
    if where.ref.startswith(PROVIDED_PREFIX):
        provided = _provided.get(where.ref)
        if provided is None:
            raise ProjectError(
                f"definitions {where.ref!r} (from {where.origin}) are no longer registered",
                fix="use them inside the JourneyTest (or provide()) that registered them",
            )
        return provided
    if where.ref.startswith("bundled:"):
        name = where.ref.removeprefix("bundled:")
        bundled = importlib.import_module(BUNDLED_MODULE)
        if name not in bundled.BUNDLED:
            choices = ", ".join(repr(n) for n in sorted(bundled.BUNDLED))
            raise ProjectError(
                f"STAGECOACH_PIPELINE={name!r} names no bundled example",
                fix=f"set it to one of {choices}, or name your project's definitions "
                f"with {ENV_NAME}",
            )
        definitions = bundled.BUNDLED[name]
        return Project(definitions, where.ref, where.origin, None, _sources(definitions))
    module_name, sep, attribute = where.ref.partition(":")
    if (
        not sep
        or not module_name
        or not attribute
        or not all(part.isidentifier() for part in (*module_name.split("."), *attribute.split(".")))
    ):
        raise ProjectError(
            f"definitions {where.ref!r} (from {where.origin}) is not module:attribute",
            fix='write it like "acme_marketing.definitions:defs"',
        )
    if where.root is not None:
        for folder in (where.root / "src", where.root):
            if folder.is_dir() and str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
    elif os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = _import(module_name, where)
    value: object = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            names = sorted(n for n in vars(module) if not n.startswith("_"))
            raise ProjectError(
                f"{module_name} has no {attribute!r} (definitions {where.ref!r}, from "
                f"{where.origin})",
                fix=f"define {attribute} = Definitions(...) in {module_name}, or name one of "
                f"{', '.join(names[:8]) or 'its names'}",
            )
        value = getattr(value, part)
    if not isinstance(value, Definitions):
        raise ProjectError(
            f"{where.ref} is a {type(value).__name__}, not a Definitions",
            fix=f"make {attribute} = Definitions(pipeline=..., events=..., journeys=...)",
        )
    return Project(value, where.ref, where.origin, where.root, _sources(value))


def _import(module_name: str, where: _Ref) -> object:
    try:
        return importlib.import_module(module_name)
    except SyntaxError as exc:
        raise ProjectError(
            f"{exc.filename}:{exc.lineno}: {exc.msg}", fix="correct the syntax there"
        ) from exc
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            searched = where.root or Path.cwd()
            raise ProjectError(
                f"no module {exc.name!r} for definitions {where.ref!r} (from {where.origin}; "
                f"looked in {searched})",
                fix="check the module name, or run from the project's folder",
            ) from exc
        raise ProjectError(
            _located(exc), fix="install the missing package, or correct the import"
        ) from exc
    except DefinitionsError as exc:
        raise ProjectError(_located(exc), fix=str(exc).rpartition(": ")[2] or "correct it") from exc
    except Exception as exc:
        raise ProjectError(_located(exc), fix="correct the code at that line") from exc


def _located(exc: BaseException) -> str:
    """``file:line: Type: message`` at the deepest frame outside Stagecoach itself."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = Path(__file__).resolve().parents[2]
    theirs = [
        f
        for f in frames
        if not Path(f.filename).resolve().is_relative_to(ours)
        and "importlib" not in f.filename
        and not f.filename.startswith("<")
    ]
    frame = theirs[-1] if theirs else (frames[-1] if frames else None)
    where = f"{frame.filename}:{frame.lineno}: " if frame is not None else ""
    return f"{where}{type(exc).__name__}: {exc}"


def _sources(definitions: Definitions) -> dict[str, str]:
    """``file:line`` of each journey's ``Journey(...)`` call, read from its module's source.

    Found by the journey's name as a string literal in a ``Journey(...)`` call in the
    modules that define journeys; a journey built another way has no entry."""
    found: dict[str, str] = {}
    wanted = {id(j) for j in definitions.journeys_by_name.values()}
    files: set[str] = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and any(id(v) in wanted for v in list(vars(module).values())):
            files.add(path)
    for path in sorted(files):
        try:
            tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)
        except (OSError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _called(node) == "Journey"):
                continue
            name = _name_argument(node)
            if name is not None and name in definitions.journeys_by_name and name not in found:
                found[name] = f"{path}:{node.lineno}"
    return found


def _called(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _name_argument(node: ast.Call) -> str | None:
    for keyword in node.keywords:
        if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
            return str(keyword.value.value)
    if node.args and isinstance(node.args[0], ast.Constant):
        return str(node.args[0].value)
    return None


__all__ = [
    "ENV_NAME",
    "Project",
    "ProjectError",
    "environment_settings",
    "find_pyproject",
    "forget_loaded",
    "git_commit",
    "load_project",
    "provide",
    "withdraw",
]
