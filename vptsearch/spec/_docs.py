"""The spec reference tables of docs/search.md, generated from the schema's field metadata.

``python -m vptsearch.spec._docs`` rewrites the generated blocks of docs/search.md in place;
tests/search/test_spec_docs.py fails when they differ from what the schema says.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vptsearch._catalogue import METHODS
from vptsearch.spec._fields import field_type, key_of
from vptsearch.spec._messages import TYPE_WORDS
from vptsearch.spec._schema import SearchSpec
from vptsearch.spec._spaces import PARAMS, Param, ParamDef

DOCS = Path(__file__).resolve().parents[2] / "docs" / "search.md"
BEGIN = "<!-- generated: spec {name} (python -m vptsearch.spec._docs) -->"
END = "<!-- end generated: spec {name} -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Param):
        return _value(v.to_yaml())
    if isinstance(v, tuple):
        return "[" + ", ".join(map(str, v)) + "]"
    return "{}" if isinstance(v, dict) and not v else str(v)


def _default(f: dataclasses.Field[Any]) -> str:
    shown = key_of(f).shown_default
    if shown is not None:
        return f"`{shown}`"
    if f.default_factory is not dataclasses.MISSING:
        return f"`{_value(f.default_factory())}`"
    return "required" if f.default is dataclasses.MISSING else f"`{_value(f.default)}`"


def _accepts(cls: type, f: dataclasses.Field[Any]) -> str:
    spec = key_of(f)
    tp, nullable = field_type(cls, f)
    if spec.what is not None:
        return spec.what
    if spec.choices:
        notes = spec.notes or {}
        return " | ".join(
            "null" if c is None else f"`{c}` ({notes[c]})" if c in notes else f"`{c}`" for c in spec.choices
        )
    words = TYPE_WORDS[tp.__name__]
    if spec.lt is not None:
        words += f" in [{spec.ge}, {spec.lt})"
    elif spec.ge is not None:
        words += f" >= {spec.ge}"
    elif spec.gt is not None:
        words += f" > {spec.gt}"
    return words + (" or null" if nullable else "")


def _key_rows(cls: type, prefix: str = "") -> Iterator[str]:
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        tp, _ = field_type(cls, f)
        if dataclasses.is_dataclass(tp) and tp is not Param:
            yield f"| `{name}` | | a mapping | {_cell(key_of(f).help)} |"
            yield from _key_rows(typing.cast(type, tp), name + ".")
        else:
            row = (f"`{name}`", _default(f), _cell(_accepts(cls, f)), _cell(key_of(f).help))
            yield "| " + " | ".join(row) + " |"


def _param_accepts(d: ParamDef) -> str:
    return " | ".join(f"`{c}`" for c in d.choices) if d.choices else d.accepted


def keys_table() -> str:
    """Every key of a search space: its default, what it accepts, what it does."""
    head = ["| key | default | accepts | meaning |", "|---|---|---|---|"]
    return "\n".join([*head, *_key_rows(SearchSpec)])


def params_table() -> str:
    """Every hyper-parameter under ``params``: the methods it applies to, its default, what it accepts."""
    rows = ["| parameter | applies to | default | accepts | meaning |", "|---|---|---|---|---|"]
    for name, d in PARAMS.items():
        applies = "all" if d.methods == METHODS else ", ".join(d.methods)
        default = f"`{_value(d.default)}`" + "".join(
            f" ({m}: `{_value(v)}`)" for m, v in d.method_defaults
        )
        cells = (f"`{name}`", applies, default, _cell(_param_accepts(d)), _cell(d.help))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


TABLES = {"keys": keys_table, "params": params_table}


def block(name: str) -> str:
    """A generated block as it stands in the docs, between its two marker lines."""
    return "\n".join([BEGIN.format(name=name), TABLES[name](), END.format(name=name)])


def rewrite(text: str) -> str:
    """``text`` (docs/search.md) with every generated block replaced by the current one."""
    for name in TABLES:
        pattern = re.escape(BEGIN.format(name=name)) + ".*?" + re.escape(END.format(name=name))
        found = list(re.finditer(pattern, text, flags=re.S))
        if len(found) != 1:
            raise SystemExit(f"{DOCS}: expected one generated block {name!r}, found {len(found)}")
        text = text[: found[0].start()] + block(name) + text[found[0].end() :]
    return text


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DOCS
    path.write_text(rewrite(path.read_text()))
