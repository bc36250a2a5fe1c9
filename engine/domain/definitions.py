"""A marketing project's definitions, gathered in one object: the pipeline, the events,
the journeys and the content.

A team's repository names one :class:`Definitions` (``[tool.stagecoach] definitions =
"acme_marketing.definitions:defs"`` in its ``pyproject.toml``); the engine loads it
(``stagecoach.engine.services.project``) instead of importing its own modules. One call,
:meth:`Definitions.problems`, validates the whole project: each journey against the
pipeline's stages, the events and the content, and the pipeline against the events.
Another, :meth:`Definitions.warnings`, lists what is valid but probably unmeant (two
journeys answering one trigger, a wait the journey's own goal pre-empts, a month-long
wait with no way out; ``stagecoach.engine.domain.journeys._warnings``).

Pure: loading the modules a project names, and discovering its journeys, is ordinary
Python importing (``importlib``), not I/O of ours.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import cast

from stagecoach.engine.domain.broadcasts import Broadcast, Catalogues, broadcast_problems
from stagecoach.engine.domain.events import EventCatalog
from stagecoach.engine.domain.hashing import content_hash
from stagecoach.engine.domain.journeys import (
    OVERLAP_WINDOW,
    ContentIndex,
    Journey,
    JourneySpec,
    JourneyValidationError,
    Problem,
    ValidationContext,
    compile_journey,
    journey_warnings,
    overlap_warnings,
)
from stagecoach.engine.domain.pipeline import Pipeline, PipelineDefinitionError
from stagecoach.engine.domain.segments import (
    SEGMENT_EVENTS,
    Segment,
    SegmentSpec,
    segment_problems,
)
from stagecoach.engine.domain.value import Catalog, ValueModel


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
        overlap_window: Two journeys that one trigger makes both send within this
            time of it are warned about (:meth:`warnings`); ``None`` turns that warning
            off. Default: a week.
        intended_overlaps: Pairs of journey names, ``[("nps_survey", "acme_nps")]``,
            whose shared trigger is meant: they are not warned about.
        segments: The project's segments (``Segment(...)``): saved audiences that
            journeys enter on and broadcasts reach.
        broadcasts: The project's broadcasts (``Broadcast(...)``): one-off campaigns to a
            segment. ``deploy`` keeps each as a draft; ``stagecoach broadcasts schedule``
            launches one.
        traits: The contact traits the project uses (``["industry", "region"]``):
            segments' trait names are checked against them (plus the identity traits
            the engine reads). ``None``, the default, leaves trait names unchecked.
        value: How customers are valued (``ValueModel(...)``: the currency, the ABC
            tier's weights and thresholds, the CLV horizon); ``None`` uses the defaults.
        catalog: The products orders may name (``Catalog([Product(...)])``); ``None``
            checks no product names (``stagecoach value refresh --catalog`` imports one).
    """

    pipeline: Pipeline
    events: EventCatalog
    journeys: Iterable[Journey] | Mapping[str, Journey] = ()
    content: str | Path | None = None
    name: str = ""
    overlap_window: timedelta | None = OVERLAP_WINDOW
    intended_overlaps: Iterable[tuple[str, str]] = ()
    segments: Iterable[Segment] = ()
    traits: Iterable[str] | None = None
    broadcasts: Iterable[Broadcast] = ()
    value: ValueModel | None = None
    catalog: Catalog | None = None
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
        window = self.overlap_window
        if window is not None and (not isinstance(window, timedelta) or window <= timedelta(0)):
            raise DefinitionsError(
                f"Definitions(overlap_window=...) got {window!r}: pass a positive"
                " timedelta such as timedelta(days=7), or None to turn the overlap warning off"
            )
        object.__setattr__(self, "intended_overlaps", self._pairs(self.intended_overlaps))
        segments = self.segments
        if isinstance(segments, str | bytes | Segment) or not isinstance(segments, Iterable):
            raise DefinitionsError(
                "Definitions(segments=...) must be a list of Segment objects, e.g."
                ' segments=[Segment("vip", when=grade_in("A"))]'
            )
        listed = tuple(segments)
        for segment in listed:
            if not isinstance(segment, Segment):
                raise DefinitionsError(
                    f"Definitions(segments=...) holds {type(segment).__name__} {segment!r}:"
                    " list Segment(...) objects only"
                )
        object.__setattr__(self, "segments", listed)
        object.__setattr__(self, "broadcasts", self._broadcasts(self.broadcasts))
        if self.value is not None and not isinstance(self.value, ValueModel):
            raise DefinitionsError(
                f"Definitions(value=...) got {type(self.value).__name__}: pass a"
                " ValueModel(...) or leave it out for the defaults"
            )
        if self.catalog is not None and not isinstance(self.catalog, Catalog):
            raise DefinitionsError(
                f"Definitions(catalog=...) got {type(self.catalog).__name__}: pass a"
                " Catalog([Product('sku', category='...'), ...])"
            )
        if self.traits is not None:
            if isinstance(self.traits, str | bytes) or not all(
                isinstance(t, str) for t in self.traits
            ):
                raise DefinitionsError(
                    'Definitions(traits=...) must be a list of trait names, e.g. ["industry"]'
                )
            object.__setattr__(self, "traits", frozenset(self.traits))

    @staticmethod
    def _broadcasts(broadcasts: object) -> tuple[Broadcast, ...]:
        usage = (
            'list Broadcast(...) objects, e.g. broadcasts=[Broadcast("jan-news",'
            ' segment="readers", content="newsletter-monthly")]'
        )
        if isinstance(broadcasts, str | bytes | Broadcast) or not isinstance(broadcasts, Iterable):
            raise DefinitionsError(f"Definitions(broadcasts=...) got {broadcasts!r}: {usage}")
        listed = tuple(broadcasts)
        seen: set[str] = set()
        for broadcast in listed:
            if not isinstance(broadcast, Broadcast):
                raise DefinitionsError(
                    f"Definitions(broadcasts=...) holds {type(broadcast).__name__}"
                    f" {broadcast!r}: {usage}"
                )
            if broadcast.name in seen:
                raise DefinitionsError(
                    f"two broadcasts are named {broadcast.name!r}: give each its own name"
                )
            seen.add(broadcast.name)
        return listed

    def broadcast_problems(self) -> list[Problem]:
        """The project's broadcasts checked against its segments and events (content and
        the audience's locales are checked at launch, against the library and the data)."""
        catalogues = Catalogues(
            segments=frozenset(s.name for s in cast(tuple[Segment, ...], self.segments)),
            content={},
            events=frozenset(self.events.names()),
        )
        found: list[Problem] = []
        for broadcast in cast(tuple[Broadcast, ...], self.broadcasts):
            for message in broadcast_problems(broadcast, catalogues):
                if "is not in the content library" in message:
                    continue  # the library is not known here; the launch checks it
                what, _, fix = message.partition("; ")
                found.append(Problem(BROADCASTS, broadcast.name, what, fix or "correct it"))
        return found

    def _pairs(self, pairs: object) -> tuple[tuple[str, str], ...]:
        usage = 'list pairs of journey names, e.g. intended_overlaps=[("nps_survey", "acme_nps")]'
        if isinstance(pairs, str | bytes) or not isinstance(pairs, Iterable):
            raise DefinitionsError(f"Definitions(intended_overlaps=...) got {pairs!r}: {usage}")
        out: list[tuple[str, str]] = []
        for pair in pairs:
            names = tuple(pair) if isinstance(pair, tuple | list) else ()
            if len(names) != 2 or not all(isinstance(n, str) for n in names):
                raise DefinitionsError(
                    f"Definitions(intended_overlaps=...) holds {pair!r}, not a pair of"
                    f" journey names: {usage}"
                )
            first, second = names
            if first == second:
                raise DefinitionsError(
                    f"Definitions(intended_overlaps=...) pairs {first!r} with itself: name"
                    " the two journeys that share a trigger"
                )
            for name in names:
                if name not in self._by_name:
                    raise DefinitionsError(
                        f"Definitions(intended_overlaps=...) names journey {name!r}, which"
                        f" is not among the project's journeys"
                        f" ({', '.join(repr(n) for n in self._by_name) or 'none'}): correct"
                        " the name, or remove the pair if that journey is gone"
                    )
            out.append((first, second))
        return tuple(out)

    @property
    def journeys_by_name(self) -> Mapping[str, Journey]:
        """The journeys by name, in definition order."""
        return self._by_name

    def segment_specs(self) -> dict[str, SegmentSpec]:
        """The segments as published data, by name (the last of a repeated name wins;
        :meth:`problems` reports the repeat)."""
        return {
            segment.name: segment.spec() for segment in cast(tuple[Segment, ...], self.segments)
        }

    def segment_problems(self, content: ContentIndex | None = None) -> list[Problem]:
        """The segments checked against the events, stages, journeys and traits. (A
        ``received()`` of an unknown item is not checked: the content index answers "has
        this variant", not "which ids"; ``content`` is kept for symmetry with
        :meth:`compile`.)"""
        pipeline = self.pipeline
        traits = cast(frozenset[str] | None, self.traits)
        found = segment_problems(
            [s.spec() for s in cast(tuple[Segment, ...], self.segments)],
            event_types=frozenset(self.events.names()),
            stages=frozenset((*pipeline.stage_names, *pipeline.states)),
            journeys=frozenset(self._by_name),
            traits=traits,
        )
        return [Problem(SEGMENTS, p.segment, p.message, p.fix) for p in found]

    def context(self, content: ContentIndex | None = None) -> ValidationContext:
        """What the project's journeys are validated against.

        Args:
            content: The content library, or ``None`` to skip content checks.
        """
        pipeline = self.pipeline
        known = frozenset(self.events.names())
        return ValidationContext(
            known_event_types=known | SEGMENT_EVENTS if self.segments else known,
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
        segment_names = frozenset(s.name for s in cast(tuple[Segment, ...], self.segments))
        for name, journey in self._by_name.items():
            try:
                specs[name] = compile_journey(journey, ctx)
            except JourneyValidationError as exc:
                problems.extend(exc.problems)
                continue
            for missing in sorted(_segments_named(specs[name].to_dict()) - segment_names):
                problems.append(
                    Problem(
                        name,
                        "segments",
                        f"the journey names segment {missing!r}, which the project does not define",
                        "add Segment(...) to Definitions(segments=[...]), or correct the name",
                    )
                )
        problems.extend(self.segment_problems(content))
        problems.extend(self.broadcast_problems())
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

    def warnings(
        self,
        content: ContentIndex | None = None,
        *,
        specs: Mapping[str, JourneySpec] | None = None,
    ) -> list[Problem]:
        """What is valid but probably not meant, each with the journey, the step and a
        fix; an empty list means nothing to warn about. Warnings never make the project
        invalid (``stagecoach validate --strict`` makes them fail it).

        - Two journeys that one trigger (a stage, or an event both can match) makes both
          send within :attr:`overlap_window`, to a contact who does nothing more: both
          entered on it, or one entered on it and the other waiting for it; unless
          :attr:`intended_overlaps` pairs them.
        - A ``wait_for`` whose event alone meets the journey's goal or exit criteria,
          which are checked first, so the wait's event path never runs.
        - A journey with neither goal nor exit criteria that can keep a contact a month
          or more.

        Only journeys that compile are looked at; see :meth:`problems` for the rest.

        Args:
            content: The content library (as for :meth:`compile`), or ``None``.
            specs: The compiled journeys, when :meth:`compile` already ran.
        """
        if specs is None:
            specs = self.compile(content)[0]
        ordered = [specs[name] for name in self._by_name if name in specs]
        found: list[Problem] = []
        for spec in ordered:
            found.extend(journey_warnings(spec))
        if self.overlap_window is not None:
            intended = {frozenset(pair) for pair in self.intended_overlaps}
            found.extend(overlap_warnings(ordered, self.overlap_window, intended))
        place = {name: n for n, name in enumerate(self._by_name)}
        return sorted(found, key=lambda p: place.get(p.journey, len(place)))


PIPELINE = "(pipeline)"
"""The ``journey`` of a :class:`Problem` that is the pipeline's."""

SEGMENTS = "(segments)"
BROADCASTS = "(broadcasts)"
"""The ``journey`` of a :class:`Problem` that is a segment's (its ``step`` names it)."""


def _segments_named(data: object) -> frozenset[str]:
    """Segment names a journey's JSON form refers to: ``in_segment`` conditions and
    matchers on ``segment.entered``/``segment.exited`` (``segment_entered("x")``)."""
    found: set[str] = set()
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            if item.get("kind") == "in_segment" and isinstance(item.get("segment"), str):
                found.add(item["segment"])
            if item.get("type") in SEGMENT_EVENTS:
                for f in item.get("where") or ():
                    if isinstance(f, Mapping) and f.get("path") == "segment":
                        found.add(str(f.get("value")))
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return frozenset(found)


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
    body: dict[str, object] = {
        "pipeline": definitions.pipeline.to_dict(),
        "events": definitions.events.to_dict(),
        "journeys": {name: spec.version for name, spec in sorted(specs.items())},
    }
    segments = definitions.segment_specs()
    if segments:  # a project without segments keeps the version it had before them
        body["segments"] = {name: spec.version for name, spec in sorted(segments.items())}
    broadcasts = cast(tuple[Broadcast, ...], definitions.broadcasts)
    if broadcasts:  # likewise for broadcasts
        body["broadcasts"] = {b.name: b.version for b in sorted(broadcasts, key=lambda b: b.name)}
    return content_hash(body)


__all__ = [
    "BROADCASTS",
    "PIPELINE",
    "SEGMENTS",
    "Definitions",
    "DefinitionsError",
    "journeys_in",
    "project_version",
]
