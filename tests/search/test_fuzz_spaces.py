"""Fuzz corpus of malformed search spaces through `vptsearch launch` (in-process, default suite).

Every case must: exit 2, print exactly one line on stderr that names the file or key and says what
is wrong or accepted, print no traceback, never start Ray, and leave what is already computed (an
earlier launch's run dir, the MLflow store, exported bundles) byte for byte as it was.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from vptsearch.cli import main


def _raw(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = {**base}
    for key, value in changes.items():
        node = out
        parts = key.split("__")
        for part in parts[:-1]:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node[parts[-1]] = value
    return out


# name -> (file content: bytes, or a function of base_raw giving the YAML mapping; words in the error)
CASES: dict[str, tuple[Any, list[str]]] = {
    "unclosed_list": (b"name: x\nsuite: [mini/digits\n", ["{file}", "malformed YAML", "line 3"]),
    "tab_indent": (b"name: x\nsearch:\n\ttrials_per_task: 2\n", ["{file}", "malformed YAML"]),
    "non_utf8": (b"name: smoke\nsuite: mini\n# caf\xe9 cr\xe8me\n", ["{file}", "not UTF-8", "0xe9"]),
    "binary_garbage": (bytes(range(256)) * 4, ["{file}", "not UTF-8"]),
    "empty_file": (b"", ["{file}", "empty"]),
    "top_level_list": (b"- name: x\n- suite: mini\n", ["{file}", "expected a YAML mapping"]),
    "unknown_top_key": (lambda b: _raw(b, schedular={}), ["schedular", "scheduler", "accepted:"]),
    "unknown_param": (lambda b: _raw(b, params__prompt_lenght={"choice": [1]}),
                      ["prompt_lenght", "accepted:"]),
    "wrong_type": (lambda b: _raw(b, search__trials_per_task="four"), ["search.trials_per_task", "integer"]),
    "empty_choice": (lambda b: _raw(b, params={"prompt.length": {"choice": []}}),
                     ["params.prompt.length.choice", "an empty list"]),
    "empty_final_seeds": (lambda b: _raw(b, protocol__final_seeds=[]),
                          ["protocol.final_seeds", "an empty list"]),
    "reversed_range": (lambda b: _raw(b, params={"optim.base_lr": {"loguniform": [1.0, 0.1]}}),
                       ["params.optim.base_lr.loguniform", "low must be < high"]),
    "range_not_pair": (lambda b: _raw(b, params={"optim.base_lr": {"uniform": [0.1]}}),
                       ["params.optim.base_lr.uniform", "[low, high]"]),
    "unknown_method": (lambda b: _raw(b, method="vtp"), ["method", "'vtp'", "accepted:"]),
    "unknown_task": (lambda b: _raw(b, suite=["mini/digitz"]), ["mini/digitz"]),
    "unknown_backbone": (lambda b: _raw(b, backbone={"name": "vit-nope-16"}), ["vit-nope-16"]),
    "directory": (None, ["{file}", "is a directory", "accepted:"]),
    "missing_file": ("missing", ["{file}", "does not exist", "accepted:"]),
}  # fmt: skip


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}  # fmt: skip


@pytest.fixture()
def computed(tmp_path: Path) -> Path:
    """What earlier launches left: a run dir with results, an MLflow store, exported bundles."""
    run = tmp_path / "runs" / "smoke" / "20261201-080000"
    run.mkdir(parents=True)
    (run / "spec.yaml").write_text("name: smoke\nsuite: mini\n")
    (run / "results.json").write_text('{"launch_id": "smoke/20261201-080000", "tasks": {}, "rows": []}')
    (tmp_path / "mlflow.db").write_bytes(b"SQLite format 3\x00" + bytes(100))
    bundle = tmp_path / "exports" / "20261201-080000" / "mini__digits"
    bundle.mkdir(parents=True)
    (bundle / "bundle.json").write_text("{}")
    return tmp_path


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_space_is_one_line_and_loses_nothing(case, base_raw, computed, capsys) -> None:
    import ray

    content, words = CASES[case]
    space = computed / "spaces" / f"{case}.yaml"
    space.parent.mkdir()
    if content is None:
        space.mkdir()
    elif isinstance(content, bytes):
        space.write_bytes(content)
    elif callable(content):
        space.write_text(yaml.safe_dump(content(base_raw)))
    before = _snapshot(computed)
    assert main(["launch", "--no-dashboard", "--space", str(space)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("vptsearch: error: ") and "\n" not in err, err
    assert "Traceback" not in captured.err + captured.out
    for word in words:
        assert word.replace("{file}", str(space)) in err, (word, err)
    assert not ray.is_initialized()  # refused before Ray starts
    assert _snapshot(computed) == before
