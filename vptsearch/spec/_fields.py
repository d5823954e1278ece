"""How a spec key is declared and checked: a dataclass field whose annotation is its type and whose
metadata (:class:`Key`) says what else it accepts; :func:`parse_fields` checks a mapping against them.

Types: ``int``, ``float`` (ints accepted), ``bool``, ``str`` (non-empty), ``X | None`` where null is
accepted, ``tuple[int, ...]`` for a non-empty list, ``Mapping`` for a mapping, a dataclass for a
nested section. Then, in this order: choices, range, and the key's own ``rule``. What involves two
keys is checked after the whole spec is built (``_load._check_combinations``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from vptsearch._errors import ConfigError
from vptsearch.spec._messages import TYPE_WORDS, err, expect, list_name, type_name, unknown_key

# A name that becomes one folder (``runs/<name>/``, ``exports/<name>/``, a task's bundle folder):
# a ``/``, ``..`` or a leading dot would put the folder elsewhere (``name: ../../x``) or hide it.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
SAFE_NAME_RULE = "one folder name of letters, digits, '.', '_' and '-', not starting with '.'"


_NAME_MAX = 255  # bytes in one folder name (Linux, macOS): a longer one fails every stat and mkdir


def unsafe_name(value: str) -> str | None:
    """What is wrong with ``value`` as one folder name (see ``_SAFE_NAME``), or None."""
    if isinstance(value, str) and _SAFE_NAME.fullmatch(value):
        if len(value) <= _NAME_MAX:  # the characters allowed are ASCII: one byte each
            return None
        return f"{value[:20]!r}... is {len(value)} characters long; accepted: at most {_NAME_MAX}"
    return f"{value!r} is not a safe folder name; accepted: {SAFE_NAME_RULE}"


@dataclass(frozen=True)
class Key:
    """What a spec key accepts beyond its type, and what it means (the field's ``metadata["spec"]``)."""

    help: str
    choices: tuple[Any, ...] = ()  # the accepted values (None: null)
    notes: Mapping[str, str] | None = None  # a few words per choice, in the error and the docs
    ge: float | None = None  # lowest accepted value
    gt: float | None = None  # accepted values are above this
    lt: float | None = None  # with ge: accepted values are in [ge, lt)
    note: str = ""  # said after the bound in the error, e.g. " (fractions allowed)"
    rule: Callable[[Any], str | None] | None = None  # one more check: the problem, or None
    what: str | None = None  # the expected value in words, for lists and mappings
    shown_default: str | None = None  # the default as the docs show it, where another key sets it
    parse: Callable[[Any, Mapping[str, Any]], Any] | None = None  # (raw, fields parsed so far) -> value

    def accepted(self) -> str:
        """The choices as the errors list them: ``sgd (the VPT paper recipe), adamw (...)``."""
        notes = self.notes or {}
        return ", ".join(
            "null" if c is None else f"{c} ({notes[c]})" if c in notes else str(c) for c in self.choices
        )


def about(help: str, **accepts: Any) -> dict[str, Key]:
    """A field's metadata: its ``help`` and :class:`Key` options."""
    spec = Key(help, **accepts)
    if spec.notes is not None and set(spec.notes) != set(spec.choices):
        raise TypeError(f"notes {sorted(spec.notes)} do not match choices {list(spec.choices)}")
    return {"spec": spec}


def key(default: Any = dataclasses.MISSING, help: str = "", **accepts: Any) -> Any:
    """A dataclass field for a scalar spec key: ``default`` (none: required), ``help``, :class:`Key` options.

    (Sections and other dataclass defaults use ``field(default=..., metadata=about(...))``.)"""
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=about(help, **accepts))
    return field(default=default, metadata=about(help, **accepts))


def key_of(f: dataclasses.Field[Any]) -> Key:
    return f.metadata["spec"]


@functools.cache
def _types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_type(cls: type, f: dataclasses.Field[Any]) -> tuple[Any, bool]:
    """A field's type without ``| None``, and whether null is accepted."""
    tp = _types(cls)[f.name]
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def parse_fields(cls: type, raw: Any, path: str, *, source: str = "<spec>") -> Any:
    """Check a mapping's keys and values against the fields of ``cls`` and build it (``path``: the
    section's key, ``""`` for the top level, where a field without default is required)."""
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise err(path, f"expected a mapping, got {type_name(raw)}")
    names = [f.name for f in fields(cls)]
    for k in raw:
        if k not in names:
            raise unknown_key(path, str(k), names)
    for f in fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in raw:
            raise ConfigError(f"{f.name}: missing required key in {source}")
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in raw:
            if f.default_factory is not dataclasses.MISSING:
                values[f.name] = f.default_factory()
            else:
                values[f.name] = f.default
            continue
        where = f"{path}.{f.name}" if path else f.name
        spec = key_of(f)
        if spec.parse is not None:  # it may read the fields before it (params reads method)
            values[f.name] = spec.parse(raw[f.name], values)
        else:
            values[f.name] = _parse_value(cls, f, raw[f.name], where)
    return cls(**values)


def _parse_value(cls: type, f: dataclasses.Field[Any], v: Any, where: str) -> Any:
    tp, nullable = field_type(cls, f)
    spec = key_of(f)
    if dataclasses.is_dataclass(tp):
        return parse_fields(typing.cast(type, tp), v, where)
    if v is None and nullable:
        return None
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(v, list) or not v:
            raise err(where, f"expected {spec.what or 'a non-empty list'}, got {list_name(v)}")
        item = typing.get_args(tp)[0].__name__
        value: Any = tuple(expect(f"{where}[{i}]", x, item) for i, x in enumerate(v))
    elif origin is Mapping:
        if not isinstance(v, Mapping):
            raise err(where, f"expected {spec.what or 'a mapping'}, got {type_name(v)}")
        value = dict(v)
    else:
        value = expect(where, v, tp.__name__)
    problem = _problem(spec, value, f.name, TYPE_WORDS.get(getattr(tp, "__name__", "")), nullable)
    if problem:
        raise err(where, problem)
    return value


def _problem(spec: Key, v: Any, name: str, words: str | None, nullable: bool) -> str | None:
    """What is wrong with a value of the right type: not a choice, out of range, or its rule."""
    if spec.choices and v not in spec.choices:
        return f"unknown {v!r}; accepted: {spec.accepted()}"
    if spec.lt is not None and not typing.cast(float, spec.ge) <= v < spec.lt:
        return f"expected {spec.ge} <= {name} < {spec.lt}, got {v}"
    null = " or null" if nullable else ""
    if spec.lt is None and spec.ge is not None and v < spec.ge:
        return f"expected {words} >= {spec.ge}{null}{spec.note}, got {v}"
    if spec.gt is not None and v <= spec.gt:
        return f"expected {words} > {spec.gt}{null}{spec.note}, got {v}"
    return spec.rule(v) if spec.rule is not None else None
