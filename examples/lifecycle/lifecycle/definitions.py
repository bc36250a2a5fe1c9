"""Everything this project runs, in one object (named in ``pyproject.toml``).

``content`` is left unset: the journeys send the content bundled with Stagecoach
(``stagecoach/content``), or ``STAGECOACH_CONTENT_DIR`` when that is set. A team's own
project keeps its content beside its code (``content="content"``), as ``stagecoach init``
writes it.
"""

from __future__ import annotations

from stagecoach import Definitions, journeys_in

from . import journeys
from .broadcasts import BROADCASTS
from .events import EVENTS
from .pipeline import DEFAULT
from .segments import SEGMENTS
from .value import CATALOG, VALUE

defs = Definitions(
    name="seven-stage lifecycle (example)",
    pipeline=DEFAULT,
    events=EVENTS,
    # Every Journey defined in a module under journeys/.
    journeys=journeys_in(journeys),
    # Saved audiences (segments.py): decided as events arrive, entered by journeys.
    segments=SEGMENTS,
    # One-off campaigns to a segment (broadcasts.py): deploy keeps them as drafts.
    broadcasts=BROADCASTS,
    # Customer value (value.py): the product catalog, the ABC tier and the CLV horizon.
    value=VALUE,
    catalog=CATALOG,
)
