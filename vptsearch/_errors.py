"""Errors vptsearch raises for bad input.

Every error is one line that names the bad value (or file) and what would be accepted; the CLI
prints it without a traceback and exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VptsearchError(Exception):
    """Base class for user-facing errors (bad input, missing data, unreachable services)."""


class ConfigError(VptsearchError, ValueError):
    """A value given by the user (argument, YAML key, CLI flag) is not acceptable."""


class DataError(VptsearchError):
    """Data is missing, corrupt or inconsistent."""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" (did you mean 'a', 'b'?)"`` for close matches of ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    if not close:
        return ""
    return " (did you mean " + ", ".join(repr(c) for c in close) + "?)"


def unknown(kind: str, name: str, choices: Iterable[str]) -> ConfigError:
    """A ConfigError for an unknown registry entry, listing what is accepted and close names."""
    choices = sorted(choices)
    return ConfigError(f"unknown {kind} {name!r}{suggest(name, choices)}; accepted: {', '.join(choices)}")


def refuse_control_characters(what: str, value: str) -> None:
    """A URI or path with a newline, tab or other control character is a pasting slip: refused
    (``sqlite:///mlflow.db\\n`` would become a file name ending in a newline)."""
    bad = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ConfigError(f"{what} {value!r} contains control character {bad!r}; accepted: printable text")
