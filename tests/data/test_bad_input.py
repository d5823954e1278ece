"""Bad input, round 2 (issue 31), where it needs more than the CLI corpora of tests/fuzz (list
files, symlinks, labels and class names through the importers live there): ``write_task`` refusing
bad class names itself, and a closed stdout (P1), which needs a real pipe.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vptsearch._errors import DataError
from vptsearch.cli import main
from vptsearch.data import TaskInfo, write_task


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
