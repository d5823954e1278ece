"""Labels and class names an import refuses (issue 31: C1, W4).

C1: a label that is huge (``99999999999999999999999``, 100000, 5000 digits), negative, signed, not
a plain integer (``1.0``, ``0x1``, ``1e3``, ``1_0``, non-ASCII digits) or missing is refused in one
line naming it, within seconds and without allocating anything sized by it (a
``set(range(k))`` of the largest label once grew to 23 GB). Tabs, padding and leading zeros import.
W4: a class name with a newline, tab, NUL, escape or other control character, an empty or blank
one, or one named twice (classes.txt, ``--class-names``, a class folder's name) is refused in one
line; CRLF files and non-ASCII names import with the names as written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ._corpus import Case, check, nothing, params
from ._tasks import built, line, pets, prepare, vtab

BAD_LINE = r"test\.txt:1: expected '<image path> <label>' with a label 0, 1, 2, \.\.\."
# (C1) what is not a plain non-negative integer, after the image path of test.txt's first line
NOT_A_LABEL = {
    "minus-1": " -1",
    "minus-0": " -0",
    "minus-huge": " -99999999999999999999999",
    "plus-1": " +1",
    "float": " 1.0",
    "exponent": " 1e3",
    "hex": " 0x1",
    "underscore": " 1_0",
    "arabic-digit": " \u0661",
    "superscript": " \u00b2",
    "fullwidth-digit": " \uff11",
    "missing": "",
    "comment": " 0 # a comment",
}
CONTROL = r"contains control character {}; accepted: distinct, non-empty names without newlines, tabs"


def label(id: str, text: str, err: str | None) -> Case:
    """test.txt's first line labelled ``text``; a refusal must be fast."""
    return vtab(id, line(f"images/test/12.png{text}"), err, fast=err is not None)


def classes_file(id: str, text: str, err: str | None, *names: str) -> Case:
    """src/classes.txt holding ``text``; accepted: the manifest holds ``names``."""

    def setup(folder: Path) -> None:
        (folder / "src" / "classes.txt").write_bytes(text.encode())

    return vtab(id, setup, err, then=built("custom/bent", class_names=names) if err is None else None)


def classes_flag(id: str, names: str, err: str) -> Case:
    return vtab(id, nothing, err, "--class-names", names)


def class_folder(id: str, name: str, err: str) -> Case:
    """pets/'s first class folder renamed ``name``: refused as label 0's name, then ``err``."""

    def rename(src: Path) -> None:
        os.rename(src / "cat", src / name)

    err = rf"class name {re.escape(repr(name))} of label 0 \(class folders of pets\) {err}"
    return Case(
        id, pets(rename), ("data", "import-folder", "pets", "--task", "pets"), err, opens=("pets", "out")
    )


CORPUS = [
    # (C1) huge labels: refused without allocating anything from them
    label(
        "huge-label",
        " 99999999999999999999999",
        r"no image has label 3 \(99999999999999999999996 of labels 0\.\.99999999999999999999999 unused\)",
    ),
    label("label-100000", " 100000", r"no image has label 3 \(99997 of labels 0\.\.100000"),
    label("label-2-to-the-64", f" {2**64}", r"no image has label 3 \(18446744073709551613 of labels"),
    label(
        "label-5000-digits",
        " " + "9" * 5000,
        r"test\.txt:1: label 9{20}\.\.\. \(5000 digits\) is out of range; accepted: labels 0, 1, 2",
    ),
    Case(
        "huge-label-of-a-registered-task",
        line("images/test/12.png 99999999999999999999999"),
        ("data", "import-vtab", "src", "--task", "dtd"),
        r"label 99999999999999999999999 of .*12\.png is out of range for task 'vtab1k/dtd'; "
        r"accepted: integers 0\.\.46",
        fast=True,
    ),
    # (C1) not a plain non-negative integer (NOT_A_LABEL)
    *(label(f"label-{name}", text, BAD_LINE) for name, text in NOT_A_LABEL.items()),
    label("extra-field", " 0 1", r"cannot read image .*12\.png 0 \(listed in test\)"),
    # accepted spellings of a line
    label("tab-separated", "\t0", None),
    label("padded-with-spaces", "   0   ", None),
    label("leading-zeros", " 000", None),
    # (W4) class names, from classes.txt
    classes_file(
        "file-tab", "red\nbl\tue\ngreen\n", r"class name 'bl\\tue' of label 1 .*" + CONTROL.format(r"'\\t'")
    ),
    # a lone CR ends a line (old Mac files, Python's universal newlines): 4 names for 3 classes
    classes_file("file-lone-cr", "red\nbl\rue\ngreen\n", r"no image has label 3 .* but 4 class names"),
    classes_file("file-file-separator", "red\nbl\x1cue\ngreen\n", CONTROL.format(r"'\\x1c'")),
    classes_file("file-line-separator", "red\nbl\u2028ue\ngreen\n", CONTROL.format(r"'\\u2028'")),
    classes_file("file-nul", "red\nbl\x00ue\ngreen\n", CONTROL.format(r"'\\x00'")),
    classes_file("file-escape", "red\n\x1b[31mblue\ngreen\n", CONTROL.format(r"'\\x1b'")),
    classes_file("file-delete", "red\nblue\x7f\ngreen\n", CONTROL.format(r"'\\x7f'")),
    classes_file("file-blank-line", "red\n\ngreen\n", r"empty class name \(line/item 2\)"),
    classes_file("file-duplicate", "red\nblue\nred\n", r"names class 'red' twice"),
    classes_file("file-too-many", "red\nblue\ngreen\nblack\n", r"no image has label 3 .* but 4 class names"),
    classes_file("file-crlf", "red\r\nblue\r\ngreen\r\n", None, "red", "blue", "green"),
    classes_file("file-unicode", "rød\ngrün blau\n青\n", None, "rød", "grün blau", "青"),
    # (W4) class names, from --class-names
    classes_flag(
        "flag-newline", "red,bl\nue,green", r"class name 'bl\\nue' of label 1 \(--class-names\) contains"
    ),
    classes_flag("flag-tab", "red,bl\tue,green", CONTROL.format(r"'\\t'")),
    classes_flag("flag-empty", "red,,green", r"empty class name \(line/item 2\)"),
    classes_flag("flag-blank", "red, ,green", r"empty class name \(line/item 2\)"),
    classes_flag("flag-duplicate", "red,green,red", r"names class 'red' twice"),
    classes_flag(
        "flag-too-few",
        "red,green",
        r"2 class names given for src, but its labels go up to 2 .*accepted: exactly 3 names",
    ),
    # (W4) class names, from the image folder's class folders
    class_folder("folder-newline", "ca\nt", CONTROL.format(r"'\\n'")),
    class_folder("folder-tab", "ca\tt", CONTROL.format(r"'\\t'")),
    class_folder("folder-delete", "ca\x7ft", CONTROL.format(r"'\\x7f'")),
    class_folder("folder-blank", " ", r"is empty; accepted: distinct, non-empty names"),
]


@pytest.mark.parametrize("case", params(CORPUS))
def test_label_and_class_name_corpus(case: Case, tmp_path: Path, capsys, monkeypatch) -> None:
    prepare(tmp_path, capsys, monkeypatch)
    check(case, tmp_path, capsys, monkeypatch)
