"""Names that become folders (the spec's ``name``, a task's bundle folder, a launch stamp) are one
safe folder name each: ``../../x``, ``a/b``, ``..``, ``.x`` and the empty name are refused with one
line naming the value and the rule, and nothing is created outside (or inside) ``runs/``/``exports/``.
``launch --set name=...`` and a spec file's name are in tests/fuzz/test_specs_and_stores.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from vptsearch._errors import ConfigError
from vptsearch.search._bundle_format import task_dirname
from vptsearch.search._rundir import allocate_run_dir, launches_dir, prepare_run_dir
from vptsearch.spec import spec_from_dict

BAD = ["../../x", "a/b", "..", ".", ".hidden", "", "a\\b", "x\n", "a b", "/abs"]
RULE = "accepted: one folder name of letters, digits, '.', '_' and '-', not starting with '.'"


@pytest.mark.parametrize("name", BAD)
def test_the_spec_name_must_be_one_safe_folder_name(name, base_raw) -> None:
    with pytest.raises(ConfigError) as info:
        spec_from_dict({**base_raw, "name": name})
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("name: ")
    if name:  # the empty string is refused as "a non-empty string" by its type first
        assert repr(name) in msg and RULE in msg


@pytest.mark.parametrize("name", ["smoke", "vtab_deep", "mini-deep.v2", "A1", "_x", "-x", "a..b"])
def test_valid_names_map_to_the_same_folders_as_before(name, base_raw) -> None:
    spec = spec_from_dict({**base_raw, "name": name, "export": {}})
    assert launches_dir(spec) == Path(base_raw["run_dir"]).resolve() / name
    assert spec.export_dir == f"exports/{name}"


def test_run_dirs_are_guarded_where_they_are_formed(base_raw, tmp_path) -> None:
    """Defence in depth: a spec whose name got past parsing (built with dataclasses.replace) and a
    bad stamp are refused by _rundir itself, and no folder is created."""
    import dataclasses

    spec = dataclasses.replace(spec_from_dict(base_raw), name="../escaped")
    for resume in (False, True):
        with pytest.raises(ConfigError, match=r"^name: '\.\./escaped' is not a safe folder name; accepted"):
            prepare_run_dir(spec, resume=resume)
    with pytest.raises(ConfigError, match=r"^launch stamp: '\.\./s' is not a safe folder name"):
        allocate_run_dir(tmp_path / "base", "../s")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "base").exists()
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "s").exists()


@pytest.mark.parametrize("task", ["../x", "mini/a b", ".x/y", "a\\b"])
def test_task_folder_leaves_must_be_safe(task) -> None:
    with pytest.raises(ConfigError) as info:
        task_dirname(task)
    msg = str(info.value)
    assert "\n" not in msg and repr(task) in msg and RULE in msg


def test_task_folder_leaves_of_valid_tasks_are_unchanged() -> None:
    from vptsearch.data import list_tasks

    for task in list_tasks():
        assert task_dirname(task) == task.replace("/", "__")


def test_a_re_export_names_its_folder_by_the_resolved_launch_stamp(base_raw, tmp_path) -> None:
    from vptsearch.search._export import export_bundles

    from ._fake_launch import TASK, make_launch

    run_dir, _ = make_launch(base_raw, tmp_path, seeds=(0,))
    out = tmp_path / "out"
    bundles = export_bundles(run_dir / "final" / "..", out)  # `..` would have been the stamp
    assert bundles[TASK].parent == out / run_dir.name
    assert sorted(p.name for p in out.iterdir()) == sorted(["LATEST", "latest", run_dir.name])
