"""Path escapes and one image under two names, through the importers (issue 31: S1, W3).

S1: a list-file entry, FGVC json entry, image-folder entry or ``--task`` name that leads out of its
folder (``../outside/x.png``, an absolute path, ``../../etc/passwd``, a symlink out, a loop, a NUL)
is refused in one line naming it; nothing is imported and no file outside the source folder and the
data root is opened. Paths that stay inside, through ``..`` or a symlink, import.
W3: one image in train and test (or twice in one split) under two spellings (``./images/a.png`` and
``images/a.png``, ``//``, ``x/../``, a symlink, a symlinked class folder) is refused in one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ._corpus import Case, Setup, check, nothing, params
from ._tasks import IMPORTED, built, cub, line, link, pets, prepare, vtab

OUTSIDE = r"resolves to '.*', outside .*; accepted: paths relative to .*, staying inside it"
ABSOLUTE = r"is an absolute path; accepted: paths relative to"
BAD_TASK = r"task name '{}' \(for .*\) is not a valid name; accepted: <name> or <suite>/<name>"


def fgvc(id: str, entry: str, err: str) -> Case:
    """``data import-fgvc cub --task cub`` with ``entry`` added to test.json."""
    return Case(id, cub(entry), ("data", "import-fgvc", "cub", "--task", "cub"), err, opens=("cub", "out"))


def folder(id: str, setup: Setup, err: str, task: str = "pets") -> Case:
    """``data import-folder pets --task TASK`` after ``setup``, opening files in pets/ and out/ only."""
    return Case(id, setup, ("data", "import-folder", "pets", "--task", task), err, opens=("pets", "out"))


def link_to(name: str, target: str) -> Setup:
    """pets/ (two classes of 6 images) with ``pets/<name>`` a symlink to ``target``."""
    return pets(lambda p: os.symlink(target, p / name))


PETS = pets(lambda p: None)


def _bom(path: Path) -> None:
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())


CORPUS = [
    # (S1) list-file entries that leave the task folder
    vtab("dotdot", line("../outside/x.png 0"), r"image '\.\./outside/x\.png' \(test\.txt:1\) " + OUTSIDE),
    vtab("dotdot-etc-passwd", line("../../../../../../../../../etc/passwd 0"), r"resolves to '/etc/passwd'"),
    vtab("dotdot-in-then-out", line("images/../../outside/x.png 0"), OUTSIDE),
    vtab("dotdot-in-val200", line("../outside/x.png 0", "val200.txt", 2), r"\(val200\.txt:2\) " + OUTSIDE),
    vtab("dotdot-to-the-built-task", line("../out/custom/kept/manifest.parquet 0"), OUTSIDE),
    vtab("absolute-outside", line("{folder}/outside/x.png 0"), r"image '/.*/outside/x\.png' .*" + ABSOLUTE),
    vtab("absolute-etc-passwd", line("/etc/passwd 0"), r"image '/etc/passwd' \(test\.txt:1\) " + ABSOLUTE),
    vtab("absolute-inside", line("{folder}/src/images/test/12.png 0"), ABSOLUTE),
    vtab(
        "symlinked-image-out",
        link("images/test/l.png", "{folder}/outside/x.png", "images/test/l.png 0"),
        OUTSIDE,
    ),
    vtab("symlinked-dir-out", link("images/ext", "{folder}/outside", "images/ext/x.png 0"), OUTSIDE),
    vtab(
        "symlink-to-etc-passwd",
        link("images/p.png", "/etc/passwd", "images/p.png 0"),
        r"image 'images/p\.png' .*resolves to '/etc/passwd'",
    ),
    vtab("dangling-symlink", link("images/d.png", "/nonexistent/d.png", "images/d.png 0"), OUTSIDE),
    vtab("symlink-loop", link("images/loop.png", "loop.png", "images/loop.png 0"), r"cannot be resolved"),
    vtab("nul-byte", line("images/test/1\x002.png 0"), r"'images/test/1\\x002\.png' .*cannot be resolved"),
    vtab("home-tilde-is-a-name", line("~/x.png 0"), r"cannot read image .*src/~/x\.png \(listed in test\)"),
    # (S1) accepted: these stay inside
    vtab("dotdot-stays-inside", line("images/train800/../test/12.png 0"), None),
    vtab("symlink-inside", link("images/test/alias.png", "12.png", "images/test/alias.png 0"), None),
    # a byte-order mark (Windows editors write one) is not part of the first line's path
    vtab("list-file-with-a-bom", lambda f: _bom(f / "src" / "test.txt"), None),
    Case(
        "symlinked-task-folder",
        lambda f: os.symlink(f / "src", f / "linked"),
        ("data", "import-vtab", "linked", "--task", "bent"),
        None,
        out=IMPORTED,
        then=built("custom/bent"),
    ),
    # (S1) the task name is one folder under the data root
    Case(
        "task-dotdot", nothing, ("data", "import-vtab", "src", "--task", "../x"), BAD_TASK.format(r"\.\./x")
    ),
    Case(
        "task-absolute",
        nothing,
        ("data", "import-vtab", "src", "--task", "{folder}/x"),
        BAD_TASK.format("/.*/x"),
    ),
    Case(
        "task-three-parts",
        nothing,
        ("data", "import-vtab", "src", "--task", "a/b/c"),
        BAD_TASK.format("a/b/c"),
    ),
    # (W3) one image in train and test under two spellings
    vtab(
        "dot-slash-overlap",
        line("./images/train800/0.png 0"),
        r"image 'images/train800/0\.png' is listed in both train800 and test "
        r"\(as '\./images/train800/0\.png' in test\)",
    ),
    vtab("double-slash-overlap", line("images//train800/0.png 0"), r"listed in both train800 and test"),
    vtab("dotdot-overlap", line("images/test/../train800/0.png 0"), r"listed in both train800 and test"),
    vtab(
        "symlink-overlap",
        link("images/test/copy.png", "../train800/0.png", "images/test/copy.png 0"),
        r"'images/train800/0\.png' is listed in both train800 and test \(as 'images/test/copy\.png'",
    ),
    vtab("val-test-overlap", line("images/test/../val200/9.png 0"), r"listed in both val200 and test"),
    vtab(
        "twice-in-one-split",
        line("./images/test/12.png 0", lineno=2),
        r"image '\./images/test/12\.png' is listed twice in test \(also as 'images/test/12\.png'\)",
    ),
    # (S1) FGVC json entries stay inside the images folder
    fgvc(
        "fgvc-dotdot",
        "../../outside/x.png",
        r"image '\.\./\.\./outside/x\.png' \(listed in test\.json\) resolves to",
    ),
    fgvc("fgvc-absolute", "/etc/passwd", r"image '/etc/passwd' \(listed in test\.json\) is an absolute path"),
    # (S1, W3) image folders: no symlink out, no image twice, the task under the data root
    folder(
        "folder-symlink-out",
        link_to("cat/s.png", "../../outside/x.png"),
        r"image 'cat/s\.png' \(in the image folder\) resolves to '.*outside/x\.png', outside",
    ),
    folder(
        "folder-class-symlinked-out",
        link_to("bird", "../outside"),
        r"image 'bird/x\.png' \(in the image folder\) resolves to '.*outside/x\.png', outside",
    ),
    folder(
        "folder-symlink-loop",
        link_to("cat/loop.png", "loop.png"),
        r"image 'cat/loop\.png' \(in the image folder\) cannot be resolved \(Symlink loop",
    ),
    folder(
        "folder-image-twice",
        link_to("cat/also-dog.png", "../dog/0.png"),
        r"image 'dog/0\.png' in pets is the same file as 'cat/also-dog\.png' \(through a symlink\)",
    ),
    folder(
        "folder-class-twice",
        link_to("kitty", "cat"),
        r"image 'kitty/0\.png' in pets is the same file as 'cat/0\.png' \(through a symlink\)",
    ),
    folder("folder-task-dotdot", PETS, BAD_TASK.format(r"\.\./x"), task="../x"),
    folder("folder-task-absolute", PETS, BAD_TASK.format("/.*/x"), task="{folder}/x"),
]


@pytest.mark.parametrize("case", params(CORPUS))
def test_path_corpus(case: Case, tmp_path: Path, capsys, monkeypatch) -> None:
    prepare(tmp_path, capsys, monkeypatch)
    check(case, tmp_path, capsys, monkeypatch)
