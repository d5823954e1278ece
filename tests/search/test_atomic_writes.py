"""The launch's own records (spec.yaml, results.json, tracking.json) are written whole or not at all."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from vptsearch._atomic import write_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "spec.yaml"
    target.write_text("name: old\n")
    real_fsync = os.fsync

    def full(fd: int) -> None:  # the disk fills up before the bytes are safe
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as raised:
        write_atomic(target, "name: new\n" * 1000)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert target.read_text() == "name: old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
    monkeypatch.setattr(os, "fsync", real_fsync)
    write_atomic(target, b"name: new\n")
    assert target.read_text() == "name: new\n"


def test_the_spec_and_results_files_go_through_it(tmp_path: Path, monkeypatch, base_raw: dict) -> None:
    from vptsearch.spec import spec_from_dict

    spec = spec_from_dict(base_raw)
    path = spec.dump(tmp_path / "spec.yaml")
    before = path.read_bytes()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OSError):
        spec.dump(path)
    assert path.read_bytes() == before  # a resume can still read it
