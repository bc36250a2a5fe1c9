"""The custom search attributes every contact workflow carries, as plain data.

The names and types live here, free of Temporal imports, so the CLI can print the
registration commands and ``stagecoach up`` can pass them to the dev server; the
``workflows`` package turns them into typed SDK keys.
"""

from __future__ import annotations

SEARCH_ATTRIBUTES: dict[str, str] = {
    "Stage": "Keyword",
    "Score": "Double",
    "Grade": "Keyword",
    "Journeys": "KeywordList",
    "Locale": "Keyword",
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
