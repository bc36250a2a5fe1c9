"""The event catalog: which behaviours Stagecoach knows about and what their properties mean.

Every rule in the engine (stage rules, scoring rules, MQL, journey waits and branches) names
event types as strings. The catalog is the one list those strings are checked against when
definitions are built, so a typo such as ``content.downlaoded`` fails at deploy time with a
suggestion instead of silently never matching in production.

``signal`` says whether an event type is worth a Temporal signal at all: events that no rule
can use are stored for analytics only (see ARCHITECTURE.md, "Only events that some rule,
score or wait can use are signalled").

    catalog = EventCatalog([EventType("content.downloaded", "A whitepaper was downloaded")])
    catalog.get("content.downloaded").description
    "content.downloaded" in catalog                 # -> True
    catalog.get("content.downlaoded")               # UnknownEventError naming the closest name

Errors::

    ValueError
    └── EventCatalogError            a type or the catalog itself is malformed
        └── UnknownEventError        (also a LookupError) a name is not in the catalog
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from stagecoach.engine.domain import serial

_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


class EventCatalogError(ValueError):
    """An event type or catalog is malformed; the message names the event and the fix."""


class UnknownEventError(EventCatalogError, LookupError):
    """An event name is not in the catalog; the message lists the closest known names."""

    def __init__(self, message: str, *, name: str, suggestions: tuple[str, ...]) -> None:
        super().__init__(message)
        self.name = name
        self.suggestions = suggestions


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise EventCatalogError(
            f"{what} {name!r} is not a valid event name; use lowercase dotted words such as"
            " 'content.downloaded' (letters, digits and '_' per word, at least one '.')"
        )


@dataclass(frozen=True)
class EventType(serial.Record):
    """One kind of behaviour a contact can show.

    Attributes:
        name: Lowercase dotted name, object first then past-tense verb: ``order.paid``.
        description: What happened, in a sentence a marketer understands.
        properties: Property name to its meaning, e.g. ``{"amount": "order total"}``.
        signal: Whether the event is forwarded to the contact's workflow as a signal. False
            means it is stored for analytics only.
    """

    name: str
    description: str
    properties: Mapping[str, str] = field(default_factory=dict)
    signal: bool = True

    def __post_init__(self) -> None:
        _check_name(self.name, "event type")
        if not self.description.strip():
            raise EventCatalogError(
                f"event type {self.name!r} has no description; say in a sentence what happened"
            )
        for prop, meaning in self.properties.items():
            if not prop or not isinstance(prop, str):
                raise EventCatalogError(
                    f"event type {self.name!r} has an empty property name; name each property"
                )
            if not isinstance(meaning, str):
                raise EventCatalogError(
                    f"event type {self.name!r}: property {prop!r} must map to a description string"
                )
        # A read-only copy: the caller's dict must not change a built catalog behind its back.
        object.__setattr__(self, "properties", MappingProxyType(dict(self.properties)))


class EventCatalog:
    """An immutable, validated set of :class:`EventType`, in declaration order.

    Args:
        types: The event types. Duplicate names are an error.

    Raises:
        EventCatalogError: a name is duplicated or an entry is not an ``EventType``.
    """

    def __init__(self, types: Iterable[EventType]) -> None:
        by_name: dict[str, EventType] = {}
        for item in types:
            if not isinstance(item, EventType):
                raise EventCatalogError(
                    f"event catalog entry {item!r} is not an EventType; wrap it in EventType(...)"
                )
            if item.name in by_name:
                raise EventCatalogError(
                    f"event type {item.name!r} is declared twice; keep one declaration"
                )
            by_name[item.name] = item
        self._types: Mapping[str, EventType] = MappingProxyType(by_name)

    def names(self) -> tuple[str, ...]:
        """All event names, in declaration order."""
        return tuple(self._types)

    def signal_names(self) -> frozenset[str]:
        """Names of the event types that may be signalled to a contact workflow."""
        return frozenset(n for n, t in self._types.items() if t.signal)

    def get(self, name: str) -> EventType:
        """The event type called ``name``.

        Raises:
            UnknownEventError: ``name`` is not in the catalog; the message names it and the
                closest known names.
        """
        try:
            return self._types[name]
        except KeyError:
            raise self.unknown(name) from None

    def unknown(self, name: str, *, where: str = "") -> UnknownEventError:
        """Build (not raise) the error for an unknown ``name``, with close-match suggestions.

        Args:
            name: The unknown event name.
            where: Optional prefix saying who used the name, e.g. ``"pipeline 'default',
                rule 'engaged'"``.
        """
        suggestions = tuple(difflib.get_close_matches(name, self.names(), n=3, cutoff=0.6))
        hint = (
            f"did you mean {', '.join(repr(s) for s in suggestions)}?"
            if suggestions
            else "add it to the event catalog (workflows/events.py) or fix the name"
        )
        prefix = f"{where}: " if where else ""
        return UnknownEventError(
            f"{prefix}event type {name!r} is not in the event catalog; {hint}",
            name=name,
            suggestions=suggestions,
        )

    def check(self, names: Iterable[str], *, where: str = "") -> None:
        """Raise :class:`UnknownEventError` for the first name (sorted) not in the catalog."""
        for name in sorted(set(names)):
            if name not in self._types:
                raise self.unknown(name, where=where)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: ``{"types": [...]}`` in declaration order."""
        return {"types": [t.to_dict() for t in self._types.values()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EventCatalog:
        """Rebuild from :meth:`to_dict` output."""
        return cls(EventType.from_dict(t) for t in data.get("types", ()))

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[EventType]:
        return iter(self._types.values())

    def __len__(self) -> int:
        return len(self._types)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EventCatalog):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EventCatalog({len(self)} types)"
