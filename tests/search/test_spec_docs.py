"""docs/search.md's spec reference is generated from the schema's field metadata and must be current."""

from __future__ import annotations

import dataclasses

import pytest

from vptsearch.spec import PARAMS, Param, SearchSpec
from vptsearch.spec._docs import DOCS, TABLES, block, rewrite
from vptsearch.spec._fields import field_type, key_of


@pytest.mark.parametrize("name", sorted(TABLES))
def test_the_docs_hold_the_generated_table(name: str) -> None:
    assert block(name) in DOCS.read_text(), (
        f"docs/search.md's spec {name} table is stale: run `python -m vptsearch.spec._docs`"
    )


def test_rewrite_is_idempotent() -> None:
    text = DOCS.read_text()
    assert rewrite(text) == text


def _all_fields(cls: type, prefix: str = ""):
    for f in dataclasses.fields(cls):
        yield prefix + f.name, f
        tp, _ = field_type(cls, f)
        if dataclasses.is_dataclass(tp) and tp is not Param:  # a section
            yield from _all_fields(tp, prefix + f.name + ".")


def test_every_key_and_parameter_has_help() -> None:
    names = []
    for name, f in _all_fields(SearchSpec):
        assert key_of(f).help, name
        names.append(name)
    assert "training.epochs" in names and "backbone.model_kwargs" in names
    for name, d in PARAMS.items():
        assert d.help, name
