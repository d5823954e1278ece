"""The inputs of the import corpora, in the test's folder: ``src/`` a VTAB-1k task folder (18 PNGs,
labels ``n % 3``) for a case to break, ``out/`` the data root holding ``custom/kept`` (built before:
every refusal must leave it byte for byte), ``outside/x.png`` a real image outside ``src/`` (reading
it would "work" if nothing checked), and the setups that break ``src/`` or build the other layouts."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vptsearch.data import read_manifest

from ..data._cli_run import run
from ..data._folders import class_tree, make_task_folder
from ._corpus import Case, Setup

VTAB = ("data", "import-vtab", "src", "--task", "bent")  # a case's argv; its task goes to out/custom/bent
IMPORTED = r"custom/bent: imported, 3 classes, .* test=6; .*"  # the stdout of an accepted import


def prepare(folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPTSEARCH_DATA", str(folder / "out"))
    make_task_folder(folder / "kept", seed=5)
    assert run(capsys, "data", "import-vtab", folder / "kept", "--task", "kept")[0] == 0
    make_task_folder(folder / "src")
    outside = folder / "outside" / "x.png"
    outside.parent.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(outside)


def set_line(src: Path, file: str, lineno: int, text: str) -> None:
    lines = (src / file).read_text().splitlines()
    lines[lineno - 1] = text
    (src / file).write_bytes(("\n".join(lines) + "\n").encode())


def line(text: str, file: str = "test.txt", lineno: int = 1) -> Setup:
    """Line ``lineno`` of ``src/<file>`` becomes ``text`` (``{folder}`` in it: the test's folder)."""
    return lambda folder: set_line(folder / "src", file, lineno, text.format(folder=folder))


def link(name: str, target: str, text: str | None = None) -> Setup:
    """``src/<name>`` a symlink to ``target`` (``{folder}`` in it: the test's folder); ``text``:
    test.txt's first line then."""

    def setup(folder: Path) -> None:
        path = folder / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target.format(folder=folder), path)
        if text is not None:
            set_line(folder / "src", "test.txt", 1, text)

    return setup


def pets(change: Callable[[Path], object]) -> Setup:
    """``pets/cat`` and ``pets/dog``, 6 images each, for ``data import-folder``; then ``change(pets)``."""

    def setup(folder: Path) -> None:
        class_tree(folder / "pets", ["cat", "dog"], per_class=6)
        change(folder / "pets")

    return setup


def cub(entry: str, split: str = "test", label: int = 1) -> Setup:
    """``cub/`` in the VPT json layout of FGVC (24 images, 4 classes), ``entry`` added to ``split``."""

    def setup(folder: Path) -> None:
        data: dict[str, dict[str, int]] = {"train": {}, "test": {}}
        for i in range(24):
            rel = f"{i % 4:03d}.Bird/img_{i}.png"
            (folder / "cub" / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), i * 5, dtype=np.uint8)).save(folder / "cub" / "images" / rel)
            data["test" if i >= 20 else "train"][rel] = i % 4
        data[split][entry] = label
        for name, d in data.items():
            (folder / "cub" / f"{name}.json").write_text(json.dumps(d))

    return setup


def built(task: str, **want: object) -> Callable[[Path], bool]:
    """The manifest of ``task`` under ``out/`` holds ``want`` (its fields, e.g. class_names)."""
    return lambda folder: all(getattr(read_manifest(task, folder / "out"), k) == v for k, v in want.items())


def vtab(id: str, setup: Setup, err: str | None, *flags: str, **kw: Any) -> Case:
    """A case of ``data import-vtab src --task bent [flags]``, opening files in src/ and out/ only;
    accepted, it prints the import's line and leaves custom/bent built."""
    if err is None:
        kw = {"out": IMPORTED, "then": built("custom/bent"), **kw}
    return Case(id, setup, (*VTAB, *flags), err, opens=("src", "out"), **kw)
