"""The one-line errors of the spec: ``<key path>: <what is wrong>; accepted: ...``."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from vptsearch._errors import ConfigError, suggest

# what a scalar of each type must be, in the words of the errors
TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a non-empty string", "bool": "true or false"}


def err(path: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {msg}")


def unknown_key(path: str, key: str, accepted: Iterable[str]) -> ConfigError:
    accepted = list(accepted)
    where = f"{path}.{key}" if path else key
    return ConfigError(f"{where}: unknown key{suggest(key, accepted)}; accepted: {', '.join(accepted)}")


def type_name(v: Any) -> str:
    return repr(v) if not isinstance(v, (dict, list)) else type(v).__name__


def list_name(v: Any) -> str:
    """What a value that should be a non-empty list is: "an empty list" beats "list"."""
    if isinstance(v, list) and not v:
        return "an empty list"
    return "null" if v is None else type_name(v)


def expect(path: str, v: Any, kind: str) -> Any:
    """Check a scalar's type (``int``, ``float``, ``str``, ``bool``); ints are accepted as floats."""
    ok = {
        "int": isinstance(v, int) and not isinstance(v, bool),
        "float": isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        "str": isinstance(v, str) and v != "",
        "bool": isinstance(v, bool),
    }[kind]
    if not ok:
        raise err(path, f"expected {TYPE_WORDS[kind]}, got {type_name(v)}")
    if kind == "str" and "\x00" in v:  # every path holding one fails in os calls with a ValueError
        raise err(path, f"{v!r} contains a NUL byte; accepted: text without NUL")
    return float(v) if kind == "float" else v
