"""A data root that cannot be written (read-only HOME under the default root, a file in the way, a
full disk) ends a build or import in one line naming the root and the way out; an existing build
stays intact and no temp folder is left."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from vptsearch._errors import DataError
from vptsearch.data import _writer, write_task

from ._cli_run import one_line_error, tree_digest


def test_build_mini_into_a_root_blocked_by_a_file_is_one_line(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    err = one_line_error(capsys, "data", "build-mini", "--root", blocker / "shards", "--tasks", "digits")
    assert f"cannot write shards under data root {blocker / 'shards'} (" in err
    assert "$VPTSEARCH_DATA" in err and blocker.read_text() == "x"


def test_a_read_only_root_is_named_with_its_errno(tmp_path: Path, monkeypatch, tiny) -> None:
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(DataError, match=r"\(Read-only file system: .*\); point \$VPTSEARCH_DATA"):
        write_task(tiny.task, tiny.splits(), class_names=list("abcde"), builder="t", root=tmp_path)


def test_a_full_disk_mid_write_keeps_the_old_build_and_no_temp_folder(
    tmp_path: Path, monkeypatch, tiny
) -> None:
    write_task(tiny.task, tiny.splits(), class_names=list("abcde"), builder="t", root=tmp_path)
    before = tree_digest(tmp_path)
    real = _writer._write_split

    def fills_up(tmp, info, split, *args):
        if split == "test":
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "test-000000.tar"))
        return real(tmp, info, split, *args)

    monkeypatch.setattr(_writer, "_write_split", fills_up)
    with pytest.raises(DataError) as exc:
        write_task(tiny.task, tiny.splits(), class_names=list("abcde"), builder="t", root=tmp_path)
    line = str(exc.value)
    assert "\n" not in line and "(No space left on device: " in line and "free space there or point" in line
    assert tree_digest(tmp_path) == before  # the old build byte for byte, no .tmp folder beside it
