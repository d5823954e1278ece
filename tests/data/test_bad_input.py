"""Bad luck and bad input, round 2 (issue 31): a fuzz-like corpus of list files, symlinks, labels and
class names, each run through the real CLI.

Every refused case must exit 2 with one line on stderr naming the bad value and what is accepted,
write nothing (a task built before stays byte for byte, no temporary folder) and open no file
outside the task folder. The accepted variations must import.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from vptsearch._errors import DataError
from vptsearch.cli import main
from vptsearch.data import TaskInfo, read_manifest, write_task

from ._cli_run import one_line_error, run, tree_digest
from ._folders import class_tree

VTAB = {"train800": 9, "val200": 3, "test": 6}  # images 0..8, 9..11, 12..17; label n % 3


def make_task_folder(base, counts=VTAB, k=3, size=8):
    """``base/images/<split>/<n>.png`` plus ``<split>.txt`` lists (label ``n % k``) and train800val200.txt."""
    lists, n = {}, 0
    for split, count in counts.items():
        lines = []
        for _ in range(count):
            rel = f"images/{split}/{n}.png"
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.random.default_rng(n).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                base / rel
            )
            lines.append(f"{rel} {n % k}")
            n += 1
        lists[split] = lines
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, lines in lists.items():
        (base / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return lists


@pytest.fixture()
def out(tmp_path, monkeypatch):
    root = tmp_path / "out"
    monkeypatch.setenv("VPTSEARCH_DATA", str(root))
    return root


@pytest.fixture()
def opened(monkeypatch):
    """Every path opened through pathlib (list files, images) while the test runs."""
    seen: list[pathlib.Path] = []
    real_open = pathlib.Path.open

    def spy(self, *args, **kwargs):
        seen.append(pathlib.Path(os.path.abspath(self)))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", spy)
    return seen


def _set_line(src, file: str, lineno: int, text: str) -> None:
    lines = (src / file).read_text().splitlines()
    lines[lineno - 1] = text
    (src / file).write_text("\n".join(lines) + "\n")


def _outside(tmp_path) -> pathlib.Path:
    """A real image outside the task folder: importing it would "work" if nothing checked."""
    path = tmp_path / "outside" / "x.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)
    return path


# Each mutation gets (task folder, outside image) and breaks (or bends) the folder; None: imports.
def _line(text: str, file: str = "test.txt", lineno: int = 1):
    return lambda src, x: _set_line(src, file, lineno, text.format(src=src, x=x))


def _symlink(link: str, target: str, text: str):
    def mutate(src, x):
        (src / link).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target.format(src=src, x=x, xdir=x.parent), src / link)
        _set_line(src, "test.txt", 1, text)

    return mutate


OUTSIDE = r"resolves to '.*', outside .*; accepted: paths relative to .*, staying inside it"
ABSOLUTE = r"is an absolute path; accepted: paths relative to"
BAD_LINE = r"test\.txt:1: expected '<image path> <label>' with a label 0, 1, 2, \.\.\."
CORPUS = [
    # (S1) entries that leave the task folder
    ("dotdot", _line("../outside/x.png 0"), r"image '\.\./outside/x\.png' \(test\.txt:1\) " + OUTSIDE),
    ("dotdot-etc-passwd", _line("../../../../../../../../../etc/passwd 0"), r"resolves to '/etc/passwd'"),
    ("dotdot-in-then-out", _line("images/../../outside/x.png 0"), OUTSIDE),
    ("dotdot-in-val200", _line("../outside/x.png 0", "val200.txt", 2), r"\(val200\.txt:2\) " + OUTSIDE),
    ("absolute-outside", _line("{x} 0"), r"image '/.*/outside/x\.png' \(test\.txt:1\) " + ABSOLUTE),
    ("absolute-etc-passwd", _line("/etc/passwd 0"), r"image '/etc/passwd' \(test\.txt:1\) " + ABSOLUTE),
    ("absolute-inside", _line("{src}/images/test/12.png 0"), ABSOLUTE),
    ("symlinked-image-out", _symlink("images/test/link.png", "{x}", "images/test/link.png 0"), OUTSIDE),
    ("symlinked-dir-out", _symlink("images/ext", "{xdir}", "images/ext/x.png 0"), OUTSIDE),
    ("symlink-loop", _symlink("images/loop.png", "loop.png", "images/loop.png 0"), r"cannot be resolved"),
    ("nul-byte", _line("images/test/1\x002.png 0"), r"'images/test/1\\x002\.png' .*cannot be resolved"),
    # (S1) accepted: these stay inside
    ("dotdot-stays-inside", _line("images/train800/../test/12.png 0"), None),
    ("symlink-inside", _symlink("images/test/alias.png", "12.png", "images/test/alias.png 0"), None),
    # (W3) one image in train and test under two spellings
    (
        "dot-slash-overlap",
        _line("./images/train800/0.png 0"),
        r"image 'images/train800/0\.png' is listed in both train800 and test "
        r"\(as '\./images/train800/0\.png' in test\)",
    ),
    ("double-slash-overlap", _line("images//train800/0.png 0"), r"listed in both train800 and test"),
    ("dotdot-overlap", _line("images/test/../train800/0.png 0"), r"listed in both train800 and test"),
    (
        "symlink-overlap",
        _symlink("images/test/copy.png", "../train800/0.png", "images/test/copy.png 0"),
        r"'images/train800/0\.png' is listed in both train800 and test \(as 'images/test/copy\.png'",
    ),
    ("val-test-overlap", _line("images/test/../val200/9.png 0"), r"listed in both val200 and test"),
    (
        "twice-in-one-split",
        _line("./images/test/12.png 0", lineno=2),
        r"image '\./images/test/12\.png' is listed twice in test \(also as 'images/test/12\.png'\)",
    ),
    # (C1) labels: huge ones are refused without allocating anything from them
    (
        "huge-label",
        _line("images/test/12.png 99999999999999999999999"),
        r"no image has label 3 \(99999999999999999999996 of labels 0\.\.99999999999999999999999 unused\)",
    ),
    (
        "label-100000",
        _line("images/test/12.png 100000"),
        r"no image has label 3 \(99997 of labels 0\.\.100000",
    ),
    (
        "label-5000-digits",
        _line("images/test/12.png " + "9" * 5000),
        r"test\.txt:1: label 9{20}\.\.\. \(5000 digits\) is out of range; accepted: labels 0, 1, 2",
    ),
    ("label-minus-1", _line("images/test/12.png -1"), BAD_LINE),
    ("label-plus-1", _line("images/test/12.png +1"), BAD_LINE),
    ("label-float", _line("images/test/12.png 1.0"), BAD_LINE),
    ("label-arabic-digit", _line("images/test/12.png \u0661"), BAD_LINE),
    ("label-missing", _line("images/test/12.png"), BAD_LINE),
    ("extra-field", _line("images/test/12.png 0 1"), r"cannot read image .*12\.png 0 \(listed in test\)"),
    # accepted spellings of a line
    ("tab-separated", _line("images/test/12.png\t0"), None),
    ("padded-with-spaces", _line("   images/test/12.png   0   "), None),
    ("leading-zeros", _line("images/test/12.png 000"), None),
]


@pytest.mark.parametrize(("mutate", "message"), [pytest.param(m, e, id=i) for i, m, e in CORPUS])
def test_list_file_corpus(tmp_path, out, capsys, opened, mutate, message):
    make_task_folder(tmp_path / "kept")  # built before: must survive every failure
    assert run(capsys, "data", "import-vtab", tmp_path / "kept", "--task", "kept")[0] == 0
    before = tree_digest(out)
    src, outside = tmp_path / "src", _outside(tmp_path)
    make_task_folder(src)
    mutate(src, outside)
    opened.clear()
    if message is None:
        rc, _, err = run(capsys, "data", "import-vtab", src, "--task", "bent")
        assert rc == 0, err
        assert read_manifest("custom/bent", out).counts["test"] == 6
    else:
        err = one_line_error(capsys, "data", "import-vtab", src, "--task", "bent")
        assert re.search(message, err), err
        assert tree_digest(out) == before  # nothing written, nothing replaced, no temp folder left
    assert not _strays(opened, src, out), "opened outside the task folder"


def _strays(opened, *allowed) -> list[pathlib.Path]:
    roots = [a.resolve() for a in allowed]
    return [p for p in opened if not any(p.resolve().is_relative_to(r) for r in roots)]


def test_huge_label_allocates_nothing_from_it(tmp_path, out, capsys):
    src = tmp_path / "src"
    make_task_folder(src)
    _set_line(src, "test.txt", 1, "images/test/12.png 99999999999999999999999")
    tracemalloc.start()
    try:
        err = one_line_error(capsys, "data", "import-vtab", src, "--task", "huge")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "no image has label 3" in err
    assert peak < 64 << 20, f"peak {peak / 2**20:.0f} MiB"  # set(range(k)) grew to 23 GB
    assert not out.exists() or not list(out.rglob("*"))


def test_huge_label_of_a_registered_task_is_out_of_range(tmp_path, out, capsys):
    src = tmp_path / "dtd"
    make_task_folder(src)
    _set_line(src, "test.txt", 1, "images/test/12.png 99999999999999999999999")
    err = one_line_error(capsys, "data", "import-vtab", src, "--task", "dtd")
    assert re.search(r"label 99999999999999999999999 of .*12\.png is out of range for task 'vtab1k/dtd'; "
                     r"accepted: integers 0\.\.46", err), err  # fmt: skip


def test_symlinked_task_folder_is_followed(tmp_path, out, capsys):
    make_task_folder(tmp_path / "real")
    os.symlink(tmp_path / "real", tmp_path / "linked")  # the folder itself may live elsewhere
    rc, _, err = run(capsys, "data", "import-vtab", tmp_path / "linked", "--task", "linked")
    assert rc == 0, err


# --- (S1) the json and folder importers -----------------------------------------------------------


def _fgvc_tree(root, n=24):
    data = {"train": {}, "test": {}}
    for i in range(n):
        rel = f"{i % 4:03d}.Bird/img_{i}.png"
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), i * 5, dtype=np.uint8)).save(root / "images" / rel)
        data["test" if i >= n - 4 else "train"][rel] = i % 4
    return data


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("../../outside/x.png", r"image '\.\./\.\./outside/x\.png' \(listed in test\.json\) resolves to"),
        ("/etc/passwd", r"image '/etc/passwd' \(listed in test\.json\) is an absolute path"),
    ],
)
def test_fgvc_json_entries_stay_inside_the_images_folder(tmp_path, out, capsys, opened, entry, message):
    src, _ = tmp_path / "cub", _outside(tmp_path)
    data = _fgvc_tree(src)
    data["test"][entry] = 1
    for name, d in data.items():
        (src / f"{name}.json").write_text(json.dumps(d))
    opened.clear()
    err = one_line_error(capsys, "data", "import-fgvc", src, "--task", "cub")
    assert re.search(message, err), err
    assert not _strays(opened, src, out), "opened outside the source folder"
    assert tree_digest(out) == {}


def test_image_folder_symlink_out_is_refused(tmp_path, out, capsys):
    src = tmp_path / "src"
    class_tree(src, ["cat", "dog"], per_class=6)
    os.symlink(_outside(tmp_path), src / "cat" / "stray.png")
    err = one_line_error(capsys, "data", "import-folder", src, "--task", "pets")
    assert re.search(r"image 'cat/stray\.png' \(in the image folder\) resolves to '.*outside/x\.png'", err)
    assert tree_digest(out) == {}


# --- (W4) class names -----------------------------------------------------------------------------


CONTROL = r"contains control character {}; accepted: distinct, non-empty names without newlines, tabs"
NAMES = [
    (
        "file-tab",
        "file",
        "red\nbl\tue\ngreen\n",
        r"class name 'bl\\tue' of label 1 .*" + CONTROL.format(r"'\\t'"),
    ),
    # a lone CR ends a line (old Mac files, Python's universal newlines): 4 names for 3 classes
    ("file-lone-cr", "file", "red\nbl\rue\ngreen\n", r"no image has label 3 .* but 4 class names"),
    ("file-file-separator", "file", "red\nbl\x1cue\ngreen\n", CONTROL.format(r"'\\x1c'")),
    ("file-line-separator", "file", "red\nbl\u2028ue\ngreen\n", CONTROL.format(r"'\\u2028'")),
    ("file-nul", "file", "red\nbl\x00ue\ngreen\n", CONTROL.format(r"'\\x00'")),
    ("file-escape", "file", "red\n\x1b[31mblue\ngreen\n", CONTROL.format(r"'\\x1b'")),
    (
        "flag-newline",
        "flag",
        "red,bl\nue,green",
        r"class name 'bl\\nue' of label 1 \(--class-names\) contains",
    ),
    ("flag-empty", "flag", "red,,green", r"empty class name \(line/item 2\)"),
    ("flag-blank", "flag", "red, ,green", r"empty class name \(line/item 2\)"),
    ("flag-duplicate", "flag", "red,green,red", r"names class 'red' twice"),
    ("file-blank-line", "file", "red\n\ngreen\n", r"empty class name \(line/item 2\)"),
    # accepted
    ("file-crlf", "file", "red\r\nblue\r\ngreen\r\n", None),
    ("file-unicode", "file", "rød\ngrün blau\n青\n", None),
]


@pytest.mark.parametrize(("how", "names", "message"), [pytest.param(h, n, m, id=i) for i, h, n, m in NAMES])
def test_class_name_corpus(tmp_path, out, capsys, how, names, message):
    src = tmp_path / "src"
    make_task_folder(src)
    argv = ["data", "import-vtab", src, "--task", "named"]
    if how == "file":
        (src / "classes.txt").write_bytes(names.encode())
    else:
        argv += ["--class-names", names]
    if message is None:
        rc, _, err = run(capsys, *argv)
        assert rc == 0, err
        wanted = tuple(n.strip() for n in names.split("\n") if n.strip())
        assert read_manifest("custom/named", out).class_names == wanted
        return
    err = one_line_error(capsys, *argv)
    assert re.search(message, err), err
    assert tree_digest(out) == {}


@pytest.mark.parametrize("bad", ["ca\nt", "ca\tt", "ca\x7ft"])
def test_image_folder_class_folder_with_control_character(tmp_path, out, capsys, bad):
    src = tmp_path / "src"
    class_tree(src, [bad, "dog"], per_class=6)
    err = one_line_error(capsys, "data", "import-folder", src, "--task", "pets")
    assert f"class name {bad!r} of label 0 (class folders of {src}) contains control character" in err, err
    assert tree_digest(out) == {}


def test_write_task_refuses_bad_class_names(tmp_path):
    info = TaskInfo(name="test/names", suite="test", group="custom", num_classes=2, build_hint="(test)")
    for names, message in ((["a", "b\nc"], r"'b\\nc' of label 1 \(task 'test/names'\) contains"),
                           (["a", ""], r"class name '' of label 1 .* is empty"),
                           (["a", "a"], r"class name 'a' .* is given to labels 0 and 1")):  # fmt: skip
        with pytest.raises(DataError, match=message):
            splits = {s: [] for s in info.splits}  # never read: the names are refused first
            write_task(info, splits, class_names=names, builder="test", root=tmp_path)
    assert not list(tmp_path.iterdir())


# --- (P1) a closed stdout -------------------------------------------------------------------------


def test_closed_pipe_is_quiet(tmp_path):
    """`vptsearch data list | head -1`: the reader is gone before the output is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE, deterministically
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "vptsearch", "data", "list", "--root", str(tmp_path)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == "" and proc.returncode == 1, proc.stderr


def test_broken_pipe_in_process_is_quiet(tmp_path, capsys, monkeypatch):
    class Closed:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    capsys.readouterr()
    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["data", "list", "--root", str(tmp_path)]) == 1
    monkeypatch.undo()
    assert capsys.readouterr().err == ""
