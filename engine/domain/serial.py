"""The pure domain's one serialisation helper: dataclasses to JSON-able dicts and back.

Definitions (pipelines, journey specs, scoring and sales models) and runtime values
(contact state, cursors, transitions...) cross the Temporal boundary, land in recorded
histories and the database, and definitions are hashed into versions. Their JSON forms
are therefore fixed: this module reproduces them exactly, from the dataclass fields.

A dataclass opts in by subclassing :class:`Record`, which gives it ``to_dict`` and
``from_dict``. The generic form is each field under its own name, in declaration order;
``datetime``/``date``/``time`` as ISO 8601 strings; ``timedelta`` as seconds (a float);
tuples as lists; nested records, conditions, steps... through their own ``to_dict`` /
``from_dict``. Decoding ignores unknown keys (newer writers) and gives a missing key its
field's default (older writers). :func:`fields` adjusts one class: a key renamed from
its field (``cool_down`` stored as ``cool_down_seconds``), a field left out while it
holds its default (so a definition that does not use a newer field keeps its version),
a key's value when older data lacks it, or the key order when the form predates the
field order. :func:`register` gives one field type (a union such as a send's content,
a fixed tuple such as a score cap) its own form. A class whose form has more logic (a
tagged union by ``kind``, a flattened part, a validated kind, a checked version) keeps
a small hand-written method, overriding :class:`Record`'s, and the helper calls that
method wherever the class is nested.

Why cattrs: it is maintained, works on the plain (frozen, slotted, keyword-only)
dataclasses the domain already has, generates one converter function per class once and
then runs it at the speed of hand-written code, and has per-field renames and
omit-if-default built in, which is what keeping the existing forms byte-identical needs.
pydantic's ``TypeAdapter`` validates and coerces on its own terms (tuples, datetimes
with ``Z``, field order in its own schema), so matching today's bytes would take more
custom serialisers than it saves; ``msgspec`` offers renames and omitted defaults only
as options of its own ``Struct`` base class, so every domain type would have to change.
cattrs imports nothing from Temporal, databases or the network, so the domain stays
pure (``tests/engine/domain/test_purity.py``). One caveat, handled below: cattrs puts fields
left out when default after the others, hence ``order`` where such a field is not last.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import fields as dataclass_fields
from datetime import date, datetime, time, timedelta
from typing import Any, Literal, Self, TypeVar, get_origin, get_type_hints

from cattrs import Converter
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

T = TypeVar("T")

converter = Converter(detailed_validation=False, unstruct_collection_overrides={tuple: list})
"""The shared converter. Missing keys raise ``KeyError`` (not cattrs' grouped errors), as
the hand-written decoders did, so callers that name the missing field keep working."""

for _type in (datetime, date, time):
    converter.register_unstructure_hook(_type, _type.isoformat)
    converter.register_structure_hook(_type, lambda raw, cls: cls.fromisoformat(raw))
converter.register_unstructure_hook(timedelta, timedelta.total_seconds)
converter.register_structure_hook(timedelta, lambda raw, _: timedelta(seconds=float(raw)))


def _as_given(value: Any) -> Any:
    """An ``Any`` field (an attribute value, a filter's operand) is already JSON data:
    written as given, tuples as lists. Anything else (a ``datetime`` a marketer passed to
    ``set_attribute``) stays as it is, so the content hash refuses it and validation
    names the step, rather than being turned into a string here unnoticed."""
    if isinstance(value, tuple | list):
        return [_as_given(v) for v in value]
    return value


converter.register_unstructure_hook(Any, _as_given)
# Text stays text and a number becomes its text, as the hand-written decoders did; a
# null is kept (not turned into "None"), so a recorded value decodes as it always has.
converter.register_structure_hook(str, lambda raw, _: raw if raw is None else str(raw))
# Lists of names and ids (seen message ids, tags, stages) are the longest lists carried:
# taken as stored, with no per-item call, as the hand-written decoders did.
converter.register_structure_hook_func(lambda t: t == tuple[str, ...], lambda raw, _: tuple(raw))
converter.register_unstructure_hook_func(lambda t: t == tuple[str, ...], list)
# Free-form JSON objects (event properties, contact attributes) likewise, one per event.
converter.register_structure_hook_func(lambda t: t == Mapping[str, Any], lambda raw, _: dict(raw))
converter.register_unstructure_hook_func(lambda t: t == Mapping[str, Any], dict)
_LITERAL: Any = Literal
# A ``Literal`` field (an operator, a policy, a kind) reaches its class as stored: the
# class's own validation names the field and the choices, as it did before this helper.
converter.register_structure_hook_func(lambda t: get_origin(t) is _LITERAL, lambda raw, _: raw)


class _Options:
    __slots__ = ("missing", "omit_if_default", "order", "rename")

    def __init__(
        self,
        rename: Mapping[str, str],
        omit_if_default: tuple[str, ...],
        missing: Mapping[str, Any],
        order: tuple[str, ...],
    ) -> None:
        self.rename = dict(rename)
        self.omit_if_default = omit_if_default
        self.missing = dict(missing)
        self.order = tuple(rename.get(name, name) for name in order)


_OPTIONS: dict[type, _Options] = {}


def fields(
    *,
    rename: Mapping[str, str] | None = None,
    omit_if_default: tuple[str, ...] = (),
    missing: Mapping[str, Any] | None = None,
    order: tuple[str, ...] = (),
) -> Callable[[type[T]], type[T]]:
    """Class decorator (above ``@dataclass``) adjusting a :class:`Record`'s JSON form.

    Args:
        rename: Field name to the key it is stored under.
        omit_if_default: Fields left out of the form while they hold their default.
        missing: Field name to the value decoding uses when older data lacks its key and
            the field has no default of its own (or a different one).
        order: Every field, in the order its key appears in the form, when that is not
            the declaration order (the form predates a reordering of the fields).
    """

    def apply(cls: type[T]) -> type[T]:
        _OPTIONS[cls] = _Options(rename or {}, omit_if_default, missing or {}, order)
        return cls

    return apply


def _overrides(cls: type, omit: bool) -> dict[str, Any]:
    options = _OPTIONS.get(cls)
    out: dict[str, Any] = {}
    if options is None:
        return out
    for f in dataclass_fields(cls):
        renamed = options.rename.get(f.name)
        dropped = omit and f.name in options.omit_if_default
        if renamed is not None or dropped:
            out[f.name] = override(rename=renamed, omit_if_default=dropped or None)
    return out


_Encoder = Callable[[Any], dict[str, Any]]
_Decoder = Callable[[Mapping[str, Any], type], Any]
_ENCODERS: dict[type, _Encoder] = {}
_DECODERS: dict[type, _Decoder] = {}
# Each class's functions are generated on first use and kept: a race between two threads
# only generates the same function twice.


def _encoder(cls: type) -> _Encoder:
    fn = _ENCODERS.get(cls)
    if fn is None:
        fn = _ENCODERS[cls] = _make_encoder(cls)
    return fn


def _decoder(cls: type) -> _Decoder:
    fn = _DECODERS.get(cls)
    if fn is None:
        fn = _DECODERS[cls] = _make_decoder(cls)
    return fn


_MODULE_GLOBALS: dict[type, dict[str, Any]] = {}
"""Each record class's module namespace, captured when the class is created."""
_RESOLVED: set[type] = set()


def _resolve_annotations(cls: type) -> None:
    """Replace ``cls``'s string annotations (``from __future__ import annotations``) by
    the types they name, evaluated in the namespace the class was defined in.

    cattrs would evaluate them through ``sys.modules``; inside Temporal's workflow sandbox
    that is the sandbox's own table, which lacks the domain modules passed through to it,
    so a converter first needed during a workflow task would fail to build.
    """
    for klass in reversed(cls.__mro__):
        own = inspect.get_annotations(klass)
        if klass in _RESOLVED or not own:
            continue
        namespace = _MODULE_GLOBALS.get(klass) or vars(sys.modules[klass.__module__])
        hints = get_type_hints(klass, globalns=namespace)
        klass.__annotations__ = {name: hints[name] for name in own}
        _RESOLVED.add(klass)


def _make_encoder(cls: type) -> _Encoder:
    _resolve_annotations(cls)
    fn: Callable[[Any], dict[str, Any]] = make_dict_unstructure_fn(
        cls, converter, **_overrides(cls, omit=True)
    )
    options = _OPTIONS.get(cls)
    if options is None or not options.order:
        return fn
    order = options.order
    keys = {options.rename.get(f.name, f.name) for f in dataclass_fields(cls)}
    if keys != set(order):
        raise TypeError(f"{cls.__name__}: serial order {order} must list every key {keys}")

    def in_order(value: Any) -> dict[str, Any]:
        out = fn(value)
        return {key: out[key] for key in order if key in out}

    return in_order


def _make_decoder(cls: type) -> _Decoder:
    _resolve_annotations(cls)
    fn: _Decoder = make_dict_structure_fn(cls, converter, **_overrides(cls, omit=False))
    options = _OPTIONS.get(cls)
    if options is None or not options.missing:
        return fn
    fill = {options.rename.get(k, k): v for k, v in options.missing.items()}

    def with_missing(data: Mapping[str, Any], target: type) -> Any:
        return fn({**fill, **data}, target)

    return with_missing


def encode(value: Any) -> dict[str, Any]:
    """The generic form of a dataclass instance (what :meth:`Record.to_dict` returns)."""
    return _encoder(type(value))(value)


def decode(cls: type[T], data: Mapping[str, Any]) -> T:
    """Rebuild ``cls`` from its generic form (what :meth:`Record.from_dict` does)."""
    result: T = _decoder(cls)(data, cls)
    return result


class Record:
    """Mixin for dataclasses whose JSON form is the generic one (see the module doc)."""

    __slots__ = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        module = sys.modules.get(cls.__module__)
        if module is not None:
            _MODULE_GLOBALS[cls] = vars(module)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return encode(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`to_dict` output; unknown keys are ignored, missing keys
        take their defaults."""
        return decode(cls, data)


def _has(name: str) -> Callable[[Any], bool]:
    return lambda cls: isinstance(cls, type) and callable(getattr(cls, name, None))


_GENERIC_FROM_DICT = Record.__dict__["from_dict"]


def _unstructure_hook(cls: type) -> Callable[[Any], Any]:
    if getattr(cls, "to_dict", None) is Record.to_dict and not cls.__subclasses__():
        return _encoder(cls)
    return _call_to_dict


def _structure_hook(cls: type) -> Callable[[Any, type], Any]:
    if inspect.getattr_static(cls, "from_dict") is _GENERIC_FROM_DICT:
        return _decoder(cls)
    return _call_from_dict


def _call_to_dict(value: Any) -> Any:
    return value.to_dict()


def _call_from_dict(data: Any, target: Any) -> Any:
    return target.from_dict(data)


# Wherever a class with its own ``to_dict``/``from_dict`` is nested, those methods do the
# work: a hand-written one keeps its logic, and an abstract field type (``Condition``,
# ``Step``) dispatches on the value's own class. A generic record's generated functions
# are used directly (the same work, without the method call per nested value).
converter.register_unstructure_hook_factory(_has("to_dict"), _unstructure_hook)
converter.register_structure_hook_factory(_has("from_dict"), _structure_hook)


def register(
    type_: Any,
    to_json: Callable[[Any], Any] | None = None,
    from_json: Callable[[Any], Any] | None = None,
) -> None:
    """Give fields annotated exactly ``type_`` (a union, a fixed-size tuple...) their own
    form: the one place a module states a form with real logic."""
    if to_json is not None:
        converter.register_unstructure_hook_func(lambda t: t == type_, to_json)
    if from_json is not None:
        decode_raw = from_json
        converter.register_structure_hook_func(lambda t: t == type_, lambda raw, _: decode_raw(raw))


__all__ = ["Record", "converter", "decode", "encode", "fields", "register"]
