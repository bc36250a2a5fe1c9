"""The engine: the pure domain, the protocol that crosses the Temporal boundary, the
services over storage, the Temporal client side, and the API, dashboard and CLI on top.

Installed as ``stagecoach.engine``; see ``docs/design.md`` for the rooms and the direction
of their imports.
"""

from stagecoach import __version__

__all__ = ["__version__"]
