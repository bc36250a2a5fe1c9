"""The custom search attributes every contact workflow carries: their names and types,
defined once, as plain data.

They live here, free of Temporal imports, so the pure domain can name them
(``engine.contact.search_values``), the CLI can print the registration commands and
``stagecoach up`` can pass them to the dev server. ``engine.search_keys`` turns them
into the SDK's typed keys for the workflow, the gateway and the registration call.
No personal data goes in them: they are indexed by the server, never encrypted.
"""

from __future__ import annotations

STAGE = "Stage"
SCORE = "Score"
GRADE = "Grade"
JOURNEYS = "Journeys"
LOCALE = "Locale"

SEARCH_ATTRIBUTES: dict[str, str] = {
    STAGE: "Keyword",
    SCORE: "Double",
    GRADE: "Keyword",
    JOURNEYS: "KeywordList",
    LOCALE: "Keyword",
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
