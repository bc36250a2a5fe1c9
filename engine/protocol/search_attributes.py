"""The custom search attributes every contact workflow carries: their names and types,
defined once, as plain data.

They live here, free of Temporal imports, so the pure domain can name them
(:func:`search_values`), the CLI can print the registration commands and
``stagecoach up`` can pass them to the dev server. ``stagecoach.engine.protocol.search_keys`` turns
them into the SDK's typed keys for the workflow, the gateway and the registration call.
No personal data goes in them: they are indexed by the server, never encrypted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stagecoach.engine.domain.contact import ContactState

STAGE = "Stage"
SCORE = "Score"
GRADE = "Grade"
JOURNEYS = "Journeys"
LOCALE = "Locale"
SEGMENTS = "Segments"

SEARCH_ATTRIBUTES: dict[str, str] = {
    STAGE: "Keyword",
    SCORE: "Double",
    GRADE: "Keyword",
    JOURNEYS: "KeywordList",
    LOCALE: "Keyword",
    SEGMENTS: "KeywordList",
}
"""Name -> Temporal search attribute type, as the ``temporal`` CLI spells it."""


def dev_server_args() -> list[str]:
    """``--search-attribute`` flags for ``temporal server start-dev``."""
    args: list[str] = []
    for name, kind in SEARCH_ATTRIBUTES.items():
        args += ["--search-attribute", f"{name}={kind}"]
    return args


def registration_commands(namespace: str) -> list[str]:
    """The ``temporal operator`` commands that register them on a self-hosted server."""
    return [
        f"temporal operator search-attribute create --namespace {namespace} "
        f"--name {name} --type {kind}"
        for name, kind in SEARCH_ATTRIBUTES.items()
    ]


def search_values(
    state: ContactState, journeys: Iterable[str] = (), searchable: Iterable[str] = ()
) -> dict[str, Any]:
    """The contact's search attributes (the names above). ``searchable``: the segments
    published as searchable (``Segment(searchable=True)``); only those of the contact's
    segments are listed, so others cost no upsert when membership changes.

    The score is as of the last scored event: decay is applied on read (contact show,
    rules), so the attribute changes only when behaviour changes it, and a timer firing
    never costs an upsert."""
    return {
        STAGE: state.stage,
        SCORE: round(state.score.value, 1),
        GRADE: state.grade or "",
        JOURNEYS: sorted(journeys),
        LOCALE: state.locale or "",
        SEGMENTS: sorted(set(state.segments) & set(searchable)),
    }
