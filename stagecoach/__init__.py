"""Stagecoach: lifecycle marketing automation on durable Temporal workflows.

The installed package has one name. Its rooms are the repository's top-level folders
(``engine/``, ``workflows/``, ``connectors/``, ``content/``), linked in here so that the
source tree and the wheel agree: ``stagecoach.engine``, ``stagecoach.workflows``,
``stagecoach.connectors``, and the bundled content as package data.
"""

__version__ = "0.1.0"
