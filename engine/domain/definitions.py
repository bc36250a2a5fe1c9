"""A marketing project's definitions, gathered in one object: the pipeline, the events,
the journeys and the content.

A team's repository names one :class:`Definitions` (``[tool.stagecoach] definitions =
"acme_marketing.definitions:defs"`` in its ``pyproject.toml``); the engine loads it
(``stagecoach.engine.services.project``) instead of importing its own modules. One call,
:meth:`Definitions.problems`, validates the whole project: each journey against the
pipeline's stages, the events and the content, and the pipeline against the events.

Pure: loading the modules a project names, and discovering its journeys, is ordinary
Python importing (``importlib``), not I/O of ours.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType

from stagecoach.engine.domain.events import EventCatalog
from stagecoach.engine.domain.hashing import content_hash
from stagecoach.engine.domain.journeys import (
    ContentIndex,
    Journey,
    JourneySpec,
    JourneyValidationError,
    Problem,
    ValidationContext,
    compile_journey,
)
from stagecoach.engine.domain.pipeline import Pipeline, PipelineDefinitionError


class DefinitionsError(ValueError):
    """A ``Definitions`` object is malformed; the message names the field and the fix."""


@dataclass(frozen=True)
class Definitions:
    """Everything a marketing project defines, validated as a whole.

    Attributes:
        pipeline: The project's pipeline (its stages, rules, scoring and routing).
        events: The project's event catalog: every event its rules and journeys name,
            with the properties each carries.
        journeys: The project's journeys: a sequence (see :func:`journeys_in` to find
            them in a package) or a mapping by name. Names must be unique.
        content: The project's content directory (items and layouts), relative to the
            project's root (the folder holding its ``pyproject.toml``); ``None`` uses
            the engine's setting (``STAGECOACH_CONTENT_DIR``) or its bundled content.
        name: A label for people: ``stagecoach validate`` and ``up`` print it.
    """

    pipeline: Pipeline
    events: EventCatalog
    journeys: Iterable[Journey] | Mapping[str, Journey] = ()
    content: str | Path | None = None
    name: str = ""
    _by_name: Mapping[str, Journey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.pipeline, Pipeline):
            raise DefinitionsError(
                f"Definitions(pipeline=...) got {type(self.pipeline).__name__}: pass a "
                "Pipeline(...)"
            )
        if not isinstance(self.events, EventCatalog):
            raise DefinitionsError(
                f"Definitions(events=...) got {type(self.events).__name__}: pass an "
                "EventCatalog([...])"
            )
        items = (
            list(self.journeys.values()) if isinstance(self.journeys, Mapping) else self.journeys
        )
        if isinstance(items, str | bytes) or not isinstance(items, Iterable):
            raise DefinitionsError(
                "Definitions(journeys=...) must be a list of Journey objects (or "
                "journeys_in('your_package.journeys'))"
            )
        by_name: dict[str, Journey] = {}
        for journey in items:
            if not isinstance(journey, Journey):
                raise DefinitionsError(
                    f"Definitions(journeys=...) holds {type(journey).__name__} {journey!r}: "
                    "list Journey(...) objects only"
                )
            if journey.name in by_name and by_name[journey.name] is not journey:
                raise DefinitionsError(
                    f"two journeys are named {journey.name!r}: give each journey its own name"
                )
            by_name[journey.name] = journey
        if isinstance(self.journeys, Mapping):
            for key, journey in self.journeys.items():
                if key != journey.name:
                    raise DefinitionsError(
                        f"Definitions(journeys=...) lists journey {journey.name!r} under the "
                        f"key {key!r}: use the journey's own name as its key, or pass a list"
                    )
        object.__setattr__(self, "journeys", tuple(by_name.values()))
        object.__setattr__(self, "_by_name", MappingProxyType(by_name))

    @property
    def journeys_by_name(self) -> Mapping[str, Journey]:
        """The journeys by name, in definition order."""
        return self._by_name

    def context(self, content: ContentIndex | None = None) -> ValidationContext:
        """What the project's journeys are validated against.

        Args:
            content: The content library, or ``None`` to skip content checks.
        """
        pipeline = self.pipeline
        return ValidationContext(
            known_event_types=frozenset(self.events.names()),
            stages=frozenset((*pipeline.stage_names, *pipeline.states)),
            content=content,
            known_journeys=frozenset(self._by_name),
        )

    def compile(
        self, content: ContentIndex | None = None
    ) -> tuple[dict[str, JourneySpec], list[Problem]]:
        """Compile every journey, collecting every problem instead of stopping at the first.

        Returns:
            The specs of the journeys that compiled, and the problems of the project: the
            pipeline's (as journey ``"(pipeline)"``) and every journey's.
        """
        problems = self.pipeline_problems()
        ctx = self.context(content)
        specs: dict[str, JourneySpec] = {}
        for name, journey in self._by_name.items():
            try:
                specs[name] = compile_journey(journey, ctx)
            except JourneyValidationError as exc:
                problems.extend(exc.problems)
        return specs, problems

    def pipeline_problems(self) -> list[Problem]:
        """The pipeline checked against the project's events."""
        try:
            self.pipeline.check_events(self.events)
        except PipelineDefinitionError as exc:
            return [
                Problem(
                    PIPELINE,
                    self.pipeline.name,
                    str(exc),
                    "add the event to the project's EventCatalog, or correct its name",
                )
            ]
        return []

    def problems(self, content: ContentIndex | None = None) -> list[Problem]:
        """Every problem of the project; an empty list means it is valid."""
        return self.compile(content)[1]


PIPELINE = "(pipeline)"
"""The ``journey`` of a :class:`Problem` that is the pipeline's."""


def journeys_in(package: str | ModuleType) -> tuple[Journey, ...]:
    """Every ``Journey`` defined at module level in ``package`` and its submodules.

    A project keeps one journey per module (or several) under a package and never lists
    them by hand: adding a module is adding a journey. Modules are imported in name order
    and journeys kept in that order, each once, however many modules import it.

    Args:
        package: The package, or its dotted name (``"acme_marketing.journeys"``).

    Raises:
        DefinitionsError: ``package`` is a plain module, not a package.
        ImportError: A module fails to import (the loader reports its file and line).
    """
    root = importlib.import_module(package) if isinstance(package, str) else package
    paths = getattr(root, "__path__", None)
    if paths is None:
        raise DefinitionsError(
            f"journeys_in({root.__name__!r}) needs a package (a folder with __init__.py), "
            "not a module: pass the folder's dotted name"
        )
    modules = [root]
    for info in sorted(
        pkgutil.walk_packages(paths, prefix=f"{root.__name__}."), key=lambda i: i.name
    ):
        modules.append(importlib.import_module(info.name))
    found: dict[int, Journey] = {}
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, Journey) and id(value) not in found:
                found[id(value)] = value
    return tuple(found.values())


def project_version(definitions: Definitions, specs: Mapping[str, JourneySpec]) -> str:
    """The version of a whole project: a content hash over its pipeline, its events and
    the versions of its compiled journeys. Two checkouts that define the same things have
    the same version, whatever their files look like."""
    return content_hash(
        {
            "pipeline": definitions.pipeline.to_dict(),
            "events": definitions.events.to_dict(),
            "journeys": {name: spec.version for name, spec in sorted(specs.items())},
        }
    )


__all__ = ["PIPELINE", "Definitions", "DefinitionsError", "journeys_in", "project_version"]
