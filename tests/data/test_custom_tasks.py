"""Users' own tasks: `vptsearch data import-vtab DIR --task NAME` with VTAB-1k or plain list files.

Every case runs the real CLI on a tiny folder of PNGs generated here; errors must be one line on
stderr (exit 2, no traceback) and leave every task already built as it was.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from vptsearch._errors import ConfigError, DataError
from vptsearch.data import get_task, list_tasks, load_split, read_manifest, resolve_tasks

from ._cli_run import one_line_error, run, tree_digest
from ._folders import make_task_folder

PLAIN = {"train": 9, "val": 3, "test": 6}


@pytest.fixture()
def out(tmp_path, monkeypatch):
    root = tmp_path / "out"
    monkeypatch.setenv("VPTSEARCH_DATA", str(root))
    return root


# --- item 1: VTAB-1k list files under any task name ------------------------------------------------


def test_import_vtab_any_name_keeps_splits_and_class_names(tmp_path, out, capsys):
    src = tmp_path / "src" / "colours"
    pixels, lists = make_task_folder(src)
    (src / "classes.txt").write_text("red\ngreen\nblue\n")
    rc, stdout, err = run(capsys, "data", "import-vtab", str(src), "--task", "colours")
    assert rc == 0, err
    assert "custom/colours: imported, 3 classes" in stdout
    m = read_manifest("custom/colours", out)
    assert m.class_names == ("red", "green", "blue") and m.task.num_classes == 3
    assert m.counts == {"train800": 9, "val200": 3, "train800val200": 12, "test": 6}
    assert m.task.search_splits == ("train800", "val200") and m.task.final_splits == (
        "train800val200",
        "test",
    )
    for split, lines in lists.items():  # the given splits, in the given order, pixel for pixel
        x, y = load_split("custom/colours", split, out)
        want = np.stack([pixels[line.split()[0]] for line in lines])
        assert torch.equal(x, torch.from_numpy(want).permute(0, 3, 1, 2))
        assert y.tolist() == [int(line.split()[1]) for line in lines]


def test_class_names_flag_file_or_list_and_inferred_count(tmp_path, out, capsys):
    src = tmp_path / "a"
    make_task_folder(src, k=4)
    rc, _, err = run(capsys, "data", "import-vtab", str(src), "--task", "a", "--class-names", "w,x,y,z")
    assert rc == 0, err
    assert read_manifest("custom/a", out).class_names == ("w", "x", "y", "z")
    (tmp_path / "names.txt").write_text("n0\nn1\nn2\nn3\n")
    rc, _, err = run(capsys, "data", "import-vtab", str(src), "--task", "b", "--class-names",
                     str(tmp_path / "names.txt"))  # fmt: skip
    assert rc == 0, err
    assert read_manifest("custom/b", out).class_names == ("n0", "n1", "n2", "n3")
    rc, _, err = run(capsys, "data", "import-vtab", str(src), "--task", "c")  # no names: inferred 4 classes
    assert rc == 0, err
    m = read_manifest("custom/c", out)
    assert m.task.num_classes == 4 and m.class_names == ("0", "1", "2", "3")


def test_several_folders_at_once_and_known_vtab_names(tmp_path, out, capsys):
    make_task_folder(tmp_path / "one" / "apples", k=2)
    make_task_folder(tmp_path / "two" / "pears", k=3, seed=1)
    # a folder named like a VTAB-1k task (with all of its classes) still becomes vtab1k/<task>
    make_task_folder(tmp_path / "two" / "kitti", counts={"train800": 8, "val200": 2, "test": 4}, k=4, seed=2)
    rc, stdout, err = run(
        capsys, "data", "import-vtab", str(tmp_path / "one" / "apples"), str(tmp_path / "two")
    )
    assert rc == 0, err
    assert "3 task(s) imported" in stdout
    assert set(list_tasks("custom", out)) == {"custom/apples", "custom/pears"}
    assert read_manifest("vtab1k/kitti", out).counts["train800"] == 8
    assert get_task("apples", out).num_classes == 2 and get_task("pears", out).num_classes == 3


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("rm val200.txt", r"missing split list .*val200\.txt"),
        (
            "line test.txt 2 images/test/15.png",
            r"test\.txt:2: expected '<image path> <label>'.*got 'images/test/15\.png'",
        ),
        ("line test.txt 1 images/test/15.png x", r"test\.txt:1: expected '<image path> <label>'"),
        (
            "line test.txt 3 images/test/nope.png 1",
            r"cannot read image .*nope\.png \(listed in test\): no such file",
        ),
        ("line test.txt 1 images/test/15.png -1", r"test\.txt:1: expected"),
        (
            "line test.txt 1 images/test/15.png 7",
            r"no image has label 3 .*labels 0\.\.7, each used at least once",
        ),
        ("names a,b", r"2 class names given .*labels go up to 2 .*accepted: exactly 3 names"),
        ("names a,b,c,d", r"no image has label 3 .*4 class names; accepted: labels 0\.\.3"),
        ("names a,b,a", r"names class 'a' twice"),
        ("task+names dtd a,b,c", r"3 class names given .*'vtab1k/dtd' has 47 classes.*--task custom/dtd\)"),
        ("task mini/colours", r"'mini/colours' is not one of the registered mini tasks.*custom/colours"),
        ("task mini/digits", r"'mini/digits' is built by `vptsearch data build-mini`.*--task custom/digits"),
        ("task vtab1k/dtd", r"no image has label 3 .*'vtab1k/dtd' has 47 classes.*--task custom/dtd"),
        ("task dtd", r"this is not the data of 'vtab1k/dtd'"),
        ("task fgvc/cub", r"this is not the data of 'fgvc/cub'"),
        ("task bad/na me", r"task name 'bad/na me' .*is not a valid name"),
    ],
)
def test_import_errors_are_one_line_and_write_nothing(tmp_path, out, capsys, breakage, message):
    make_task_folder(tmp_path / "kept", seed=5)  # a task built before: must survive every failure
    assert run(capsys, "data", "import-vtab", str(tmp_path / "kept"), "--task", "kept")[0] == 0
    before = tree_digest(out)
    src = tmp_path / "src"
    make_task_folder(src)
    argv = ["data", "import-vtab", str(src), "--task", "colours"]
    kind, _, rest = breakage.partition(" ")
    if kind == "rm":
        (src / rest).unlink()
    elif kind == "line":
        file, lineno, text = rest.split(" ", 2)
        lines = (src / file).read_text().splitlines()
        lines[int(lineno) - 1] = text
        (src / file).write_text("\n".join(lines) + "\n")
    elif kind == "names":
        argv += ["--class-names", rest]
    elif kind == "task":
        argv[4] = rest
    elif kind == "task+names":
        argv[4], names = rest.split(" ")
        argv += ["--class-names", names]
    err = one_line_error(capsys, *argv)
    assert re.search(message, err), err
    assert tree_digest(out) == before  # nothing written, nothing replaced, no temp folder left
    assert read_manifest("custom/kept", out).counts["test"] == 6


def test_existing_task_needs_overwrite_and_a_failed_overwrite_keeps_it(tmp_path, out, capsys):
    src = tmp_path / "colours"
    make_task_folder(src)
    assert run(capsys, "data", "import-vtab", str(src))[0] == 0  # the folder name is the task name
    before = tree_digest(out)
    err = one_line_error(capsys, "data", "import-vtab", str(src))
    assert "'custom/colours' is already built" in err and "--overwrite" in err
    # an image that only fails when it is written (it does not decode): the old build stays whole
    (src / "images" / "test" / "14.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    err = one_line_error(capsys, "data", "import-vtab", str(src), "--overwrite")
    assert "14.png does not decode" in err
    assert tree_digest(out) == before
    make_task_folder(src, k=2)  # new labels: an overwrite that succeeds replaces the task
    rc, _, err = run(capsys, "data", "import-vtab", str(src), "--overwrite")
    assert rc == 0, err
    assert read_manifest("custom/colours", out).task.num_classes == 2
    assert not [p for p in (out / "custom").iterdir() if p.name.startswith(".")]


def test_several_folders_are_all_checked_before_any_is_written(tmp_path, out, capsys):
    make_task_folder(tmp_path / "src" / "good")
    make_task_folder(tmp_path / "src" / "worse", seed=1)
    (tmp_path / "src" / "worse" / "val200.txt").write_text("images/val200/1009.png zero\n")
    err = one_line_error(capsys, "data", "import-vtab", str(tmp_path / "src"))
    assert "worse/val200.txt:1:" in err
    assert not out.exists() or not list(out.rglob("manifest.parquet"))
    err = one_line_error(capsys, "data", "import-vtab", str(tmp_path / "src"), "--task", "x")
    assert "--task names one task, but 2 task folders were found" in err


# --- item 2: plain train/val/test.txt, and train+test with a held-out val ----------------------------


def test_plain_layout_keeps_val_and_documents_the_rule(tmp_path, out, capsys):
    src = tmp_path / "plain"
    _pixels, lists = make_task_folder(src, counts=PLAIN, trainval=None)
    assert run(capsys, "data", "import-vtab", str(src), "--task", "plain")[0] == 0
    m = read_manifest("custom/plain", out)
    assert m.counts == {"train": 9, "val": 3, "trainval": 12, "test": 6}
    _, y = load_split("custom/plain", "trainval", out)
    assert y.tolist() == [int(line.split()[1]) for line in lists["train"] + lists["val"]]
    rc, stdout, _ = run(capsys, "data", "info", "plain")
    assert rc == 0
    assert "a launch:      searches train -> val, retrains the winner on trainval, tests on test" in stdout
    assert m.params["splits_from"] == {"train": "train.txt", "val": "val.txt", "trainval": "train + val",
                                       "test": "test.txt"}  # fmt: skip


def test_plain_layout_without_val_holds_out_a_seeded_fraction(tmp_path, out, capsys):
    src = tmp_path / "p"
    make_task_folder(src, counts={"train": 20, "test": 6}, trainval=None)
    rc, _stdout, err = run(capsys, "data", "import-vtab", str(src), "--task", "p", "--val-fraction", "0.25",
                          "--seed", "3")  # fmt: skip
    assert rc == 0, err
    m = read_manifest("custom/p", out)
    assert m.counts == {"train": 15, "val": 5, "trainval": 20, "test": 6}
    keys = {s: set() for s in m.splits}
    for split in m.splits:
        x, _ = load_split("custom/p", split, out)
        keys[split] = {t.numpy().tobytes() for t in x}
    assert not keys["train"] & keys["val"] and keys["train"] | keys["val"] == keys["trainval"]
    assert "seeded hold-out of train.txt (seed 3, fraction 0.25)" in m.params["splits_from"]["val"]
    assert run(capsys, "data", "info", "custom/p")[1].count("searches train -> val, retrains the winner on "
                                                          "trainval, tests on test") == 1  # fmt: skip
    err = one_line_error(capsys, "data", "import-vtab", str(src), "--task", "q", "--val-fraction", "1.5")
    assert "--val-fraction 1.5 is not in (0, 1)" in err


def test_vtab_info_line_names_the_vtab_splits(tmp_path, out, capsys):
    make_task_folder(tmp_path / "v")
    assert run(capsys, "data", "import-vtab", str(tmp_path / "v"), "--task", "v")[0] == 0
    stdout = run(capsys, "data", "info", "v")[1]
    assert "searches train800 -> val200, retrains the winner on train800val200, tests on test" in stdout


def test_lists_that_overlap_are_refused(tmp_path, out, capsys):
    src = tmp_path / "o"
    _, lists = make_task_folder(src)
    (src / "test.txt").write_text("\n".join(lists["test"] + lists["val200"][:1]) + "\n")
    err = one_line_error(capsys, "data", "import-vtab", str(src), "--task", "o")
    assert "is listed in both val200 and test" in err


# --- item 3: info / list / resolve / search spaces know custom tasks ---------------------------------


def test_info_list_and_unknown_task_errors_know_custom_tasks(tmp_path, out, capsys):
    make_task_folder(tmp_path / "colours")
    assert run(capsys, "data", "import-vtab", str(tmp_path / "colours"))[0] == 0
    for name in ("colours", "custom/colours"):
        rc, stdout, err = run(capsys, "data", "info", name)
        assert rc == 0, err
        assert stdout.startswith("task:          custom/colours (custom, 3 classes, preprocessing vtab)")
        built_by = next(line for line in stdout.splitlines() if line.startswith("built by:"))
        assert re.search(r'"test\.txt": "[0-9a-f]{12}\.\.\."', built_by), built_by  # digests abridged
    rc, stdout, _ = run(capsys, "data", "list")
    assert rc == 0 and "custom/colours" in stdout and "train800=9 val200=3 train800val200=12 test=6" in stdout
    rows = {r["task"]: r for r in json.loads(run(capsys, "data", "list", "--suite", "custom", "--json")[1])}
    assert list(rows) == ["custom/colours"] and rows["custom/colours"]["classes"] == 3
    err = one_line_error(capsys, "data", "info", "colour")
    assert "unknown task 'colour'" in err and "did you mean" in err and "custom/colours" in err
    err = one_line_error(capsys, "data", "info", "custom/colour")
    assert "accepted:" in err and "custom/colours" in err


def test_resolve_tasks_and_a_search_space_naming_a_custom_task(tmp_path, out, capsys):
    from vptsearch.spec import load_spec

    make_task_folder(tmp_path / "colours")
    assert run(capsys, "data", "import-vtab", str(tmp_path / "colours"))[0] == 0
    assert resolve_tasks("colours", out) == ["custom/colours"]
    assert resolve_tasks(["custom/colours", "mini/digits"], out) == ["custom/colours", "mini/digits"]
    assert resolve_tasks("custom", out) == ["custom/colours"]
    for suite in ("colours", "[custom/colours]", "custom"):
        space = tmp_path / "space.yaml"
        space.write_text(f"name: mine\nsuite: {suite}\nbackbone: {{name: vptsearch-tiny-sup}}\n")
        spec = load_spec(space)
        names = spec.suite if isinstance(spec.suite, str) else list(spec.suite)
        assert resolve_tasks(names, out) == ["custom/colours"]
    with pytest.raises(ConfigError, match=r"unknown task 'custom/colors' \(did you mean 'custom/colours'"):
        resolve_tasks("custom/colors", out)
    with pytest.raises(DataError, match="no custom task is built under"):
        resolve_tasks("custom", tmp_path / "empty")


def test_vtab_layout_without_train800val200_uses_the_union(tmp_path, out, capsys):
    src = tmp_path / "u"
    _, lists = make_task_folder(src, trainval=None)
    rc, _, err = run(capsys, "data", "import-vtab", str(src), "--task", "u")
    assert rc == 0, err
    m = read_manifest("custom/u", out)
    assert (
        m.counts["train800val200"] == 12 and m.params["splits_from"]["train800val200"] == "train800 + val200"
    )
    _, y = load_split("custom/u", "train800val200", out)
    assert y.tolist() == [int(line.split()[1]) for line in lists["train800"] + lists["val200"]]


def test_lists_with_crlf_blank_lines_and_spaces_in_paths(tmp_path, out, capsys):
    src = tmp_path / "w"
    _, lists = make_task_folder(src)
    (src / "images" / "test" / "15.png").rename(src / "images" / "test" / "my photo 15.png")
    lines = [line.replace("images/test/15.png", "images/test/my photo 15.png") for line in lists["test"]]
    (src / "test.txt").write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode())  # made on Windows
    rc, _, err = run(capsys, "data", "import-vtab", str(src), "--task", "w")
    assert rc == 0, err
    _, y = load_split("custom/w", "test", out)
    assert y.tolist() == [int(line.split()[-1]) for line in lines]
