"""Definitions parsed once per process: the same pipeline or journey spec data, arriving
in every contact workflow's input, is validated and built once.

Every new contact workflow run (a new contact, a continue-as-new, a replay after the
worker's cache evicted a contact) rebuilds its pipeline and the published journeys from
the definitions it carries. Building validates them, which costs milliseconds, and the
data is the same for thousands of contacts. :class:`Parsed` keys what it built by the
data's exact content (canonical JSON), so equal data gets the object built from it and
different data is built afresh; what is built is immutable, so sharing it across
workflows changes nothing they can observe. Pure: no Temporal, no I/O.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import orjson

T = TypeVar("T")


class Parsed(Generic[T]):
    """``parse(data)``, remembered for the ``size`` most recent distinct ``data``.

    Data that is not JSON-serializable (it would not have come through Temporal) is
    parsed every time. A parse that raises is not remembered: it raises again.
    """

    def __init__(self, parse: Callable[[Mapping[str, Any]], T], *, size: int = 32) -> None:
        self._parse = parse
        self._size = size
        self._built: OrderedDict[bytes, T] = OrderedDict()
        # Workflow activations run on several threads.
        self._lock = threading.Lock()

    def __call__(self, data: Mapping[str, Any]) -> T:
        try:
            key = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            return self._parse(data)
        with self._lock:
            built = self._built.get(key)
            if built is not None:
                self._built.move_to_end(key)
                return built
        built = self._parse(data)
        with self._lock:
            self._built[key] = built
            while len(self._built) > self._size:
                self._built.popitem(last=False)
        return built
